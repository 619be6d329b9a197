"""An in-memory network that wires core machines together, for tests.

In the spirit of etcd-io/raft's test network: no threads, no real time, no
SimPy.  Everything that would be I/O is an entry in one priority queue
ordered by (virtual time, sequence), so a run is a pure function of what the
test does.  The test can ``drop`` messages by predicate, ``cut`` a link,
``isolate`` an address, add ``delay`` to a link, ``crash`` a machine, and
step or run the network until it is quiet.

It also plays the part of the node-local world the core asks for with
commands: worker processes (``StartWorker``, ``Execute``, ``KillWorker``),
each node's byte store (``Fetch``, ``Evict``, ``StoreError``) and client
inboxes.  What a task does when executed is decided by ``behaviour``: a
callable ``(spec, attempt) -> Outcome`` (default: succeed at once with 8-byte
outputs).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core.messages import (
    ActorCheckpointed,
    CheckpointActor,
    Command,
    Event,
    Evict,
    Execute,
    Fetch,
    FetchCompleted,
    FetchFailed,
    FlushRows,
    InterruptTask,
    KillWorker,
    LoadRows,
    Log,
    Message,
    RowsLoaded,
    Send,
    SetTimer,
    StartWorker,
    StopNode,
    StoreError,
    TaskFinished,
    TaskRaised,
    TimerFired,
    WorkerCrashed,
    WorkerStarted,
)
from ..core.records import ErrorInfo, ErrorKind
from ..core.specs import Payload, TaskSpec

__all__ = ["MemNet", "Outcome", "ok", "raises", "crashes"]


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str  # "ok" | "raise" | "crash" | "hang"
    duration: float = 0.0
    sizes: tuple[int, ...] | None = None
    error: ErrorInfo | None = None
    retryable: bool = False


def ok(duration: float = 0.0, sizes: tuple[int, ...] | None = None) -> Outcome:
    return Outcome("ok", duration, sizes)


def raises(message: str = "boom", retryable: bool = False, duration: float = 0.0) -> Outcome:
    return Outcome("raise", duration, error=ErrorInfo(ErrorKind.TASK_ERROR, message, Payload(len(message))), retryable=retryable)


def crashes(duration: float = 0.0) -> Outcome:
    return Outcome("crash", duration)


Behaviour = Callable[[TaskSpec, int], Outcome]


@dataclass(order=True, slots=True)
class _Item:
    at: float
    seq: int
    to: str = field(compare=False)
    event: Event = field(compare=False)
    src: str = field(compare=False, default="")
    incarnation: int = field(compare=False, default=0)


class MemNet:
    def __init__(self, behaviour: Behaviour | None = None, latency: float = 0.0, validate: bool = True) -> None:
        self.now = 0.0
        self.latency = latency
        self.behaviour: Behaviour = behaviour or (lambda spec, attempt: ok())
        self.validate_each_step = validate
        self.machines: dict[str, Any] = {}
        self.incarnations: dict[str, int] = {}
        self.inboxes: dict[str, list[Message]] = {}
        self.queue: list[_Item] = []
        self.seq = 0
        self.cut_links: set[tuple[str, str]] = set()
        self.isolated: set[str] = set()
        self.link_delay: dict[tuple[str, str], float] = {}
        self.drop_fn: Callable[[str, str, Message], bool] | None = None
        self.stores: dict[str, dict[bytes, int]] = {}  # node -> object -> size
        self.workers: dict[str, tuple[str, bool]] = {}  # worker -> (node, alive)
        self.running: dict[str, set] = {}  # worker -> task ids running
        self.logs: list[tuple[str, Log]] = []
        self.delivered = 0
        self.dropped = 0
        self.trace: list[tuple[float, str, str]] = []
        # the GCS's flushed rows: (shard, segment) -> {(table, key): row}
        self.disk: dict[tuple[int, int], dict] = {}

    # ------------------------------------------------------------------ wiring
    def add(self, address: str, machine: Any) -> None:
        """Add a machine and run its ``start`` (if it has one)."""
        self.machines[address] = machine
        self.incarnations[address] = self.incarnations.get(address, 0) + 1
        self.stores.setdefault(address, {})
        start = getattr(machine, "start", None)
        if start is not None:
            self._execute(address, start(self.now))

    def add_client(self, address: str) -> list[Message]:
        self.inboxes[address] = []
        return self.inboxes[address]

    def crash(self, address: str) -> None:
        """The machine vanishes with its in-flight work and its store."""
        self.machines.pop(address, None)
        self.incarnations[address] = self.incarnations.get(address, 0) + 1
        self.stores[address] = {}
        for wid, (node, alive) in list(self.workers.items()):
            if node == address:
                self.workers[wid] = (node, False)

    def cut(self, a: str, b: str) -> None:
        self.cut_links.add((a, b))
        self.cut_links.add((b, a))

    def heal(self) -> None:
        self.cut_links.clear()
        self.isolated.clear()

    def isolate(self, address: str) -> None:
        self.isolated.add(address)

    def delay(self, a: str, b: str, seconds: float) -> None:
        self.link_delay[(a, b)] = seconds

    # ------------------------------------------------------------------ injecting
    def inject(self, to: str, event: Event, src: str = "test") -> None:
        """Deliver ``event`` to ``to`` at the current time (queued)."""
        self._push(self.now, to, event, src)

    def send(self, src: str, to: str, msg: Message) -> None:
        self._route(src, Send(to=to, msg=msg))

    def _push(self, at: float, to: str, event: Event, src: str = "") -> None:
        self.seq += 1
        heapq.heappush(self.queue, _Item(at, self.seq, to, event, src, self.incarnations.get(to, 0)))

    # ------------------------------------------------------------------ running
    def step(self) -> bool:
        """Deliver the next queued event; False when nothing is queued."""
        if not self.queue:
            return False
        item = heapq.heappop(self.queue)
        self.now = max(self.now, item.at)
        if item.to in self.inboxes:
            if isinstance(item.event, Message):
                self.inboxes[item.to].append(item.event)
            return True
        m = self.machines.get(item.to)
        if m is None or item.incarnation != self.incarnations.get(item.to):
            self.dropped += 1
            return True
        self.delivered += 1
        self.trace.append((self.now, item.to, type(item.event).__name__))
        cmds = m.handle(item.event, self.now)
        self._execute(item.to, cmds)
        if self.validate_each_step:
            v = getattr(m, "validate", None)
            if v is not None:
                v()
        return True

    def run(self, until: float | None = None, max_steps: int = 1_000_000) -> int:
        """Deliver events (advancing virtual time) until quiet or ``until``."""
        steps = 0
        while self.queue and steps < max_steps:
            if until is not None and self.queue[0].at > until:
                self.now = until
                break
            self.step()
            steps += 1
        else:
            if until is not None and not self.queue:
                self.now = max(self.now, until)
        if steps >= max_steps:
            raise RuntimeError(f"memnet did not settle within {max_steps} steps")
        return steps

    def run_for(self, seconds: float, max_steps: int = 1_000_000) -> int:
        return self.run(until=self.now + seconds, max_steps=max_steps)

    def run_until(self, predicate: Callable[[], bool], timeout: float = 60.0, max_steps: int = 1_000_000) -> None:
        deadline = self.now + timeout
        steps = 0
        while not predicate():
            if not self.queue or self.queue[0].at > deadline:
                raise TimeoutError(f"condition not met by virtual time {deadline:.3f}")
            self.step()
            steps += 1
            if steps > max_steps:
                raise RuntimeError("too many steps")

    # ------------------------------------------------------------------ commands
    def _route(self, src: str, cmd: Send) -> None:
        to = cmd.to
        if (src, to) in self.cut_links or src in self.isolated or to in self.isolated:
            self.dropped += 1
            return
        if self.drop_fn is not None and self.drop_fn(src, to, cmd.msg):
            self.dropped += 1
            return
        d = self.link_delay.get((src, to), self.latency if src != to else 0.0)
        self._push(self.now + d, to, cmd.msg, src)

    def _execute(self, src: str, cmds: list[Command]) -> None:
        for c in cmds:
            t = type(c)
            if t is Send:
                self._route(src, c)
            elif t is SetTimer:
                self._push(max(c.at, self.now), src, TimerFired(key=c.key, stimulus_id=c.stimulus_id), src)
            elif t is Log:
                self.logs.append((src, c))
            elif t is StartWorker:
                self.workers[c.worker_id] = (src, True)
                self.running[c.worker_id] = set()
                self._push(self.now, src, WorkerStarted(worker_id=c.worker_id, stimulus_id=c.stimulus_id))
            elif t is Execute:
                self._run_task(src, c)
            elif t is KillWorker:
                node, alive = self.workers.get(c.worker_id, (src, False))
                if alive:
                    self.workers[c.worker_id] = (node, False)
                    self._push(self.now, src, WorkerCrashed(worker_id=c.worker_id, reason=c.reason, stimulus_id=c.stimulus_id))
            elif t is InterruptTask:
                self._push(self.now, src, TaskRaised(worker_id=c.worker_id, task_id=c.task_id, error=ErrorInfo(ErrorKind.TASK_CANCELLED, "cancelled"), stimulus_id=c.stimulus_id))
            elif t is Fetch:
                src_store = self.stores.get(c.from_node, {})
                alive = c.from_node in self.machines and (src, c.from_node) not in self.cut_links
                if alive and c.object_id in src_store:
                    self.stores[src][c.object_id] = src_store[c.object_id]
                    self._push(self.now + self.latency, src, FetchCompleted(object_id=c.object_id, size=src_store[c.object_id], stimulus_id=c.stimulus_id))
                else:
                    self._push(self.now + self.latency, src, FetchFailed(object_id=c.object_id, from_node=c.from_node, reason="not there", stimulus_id=c.stimulus_id))
            elif t is Evict:
                self.stores[src].pop(c.object_id, None)
            elif t is StoreError:
                pass  # errors live in the GCS rows; nothing to hold in memory
            elif t is StopNode:
                self.crash(src)
            elif t is FlushRows:
                self.disk.setdefault((c.shard, c.segment), {(tb, k): r for tb, k, r in c.rows})
            elif t is LoadRows:
                rows = tuple((tb, k, seg[(tb, k)]) for tb, k, s in c.wants
                             if (seg := self.disk.get((c.shard, s), {})) and (tb, k) in seg)
                self._push(self.now + self.latency, src, RowsLoaded(token=c.token, rows=rows, stimulus_id=c.stimulus_id))
            elif t is CheckpointActor:
                self._push(self.now, src, ActorCheckpointed(worker_id=c.worker_id, actor_id=c.actor_id, index=c.index, payload=Payload(16, c.index), stimulus_id=c.stimulus_id))
            else:
                raise TypeError(f"memnet: no handler for command {c!r} from {src}")

    def _run_task(self, node: str, c: Execute) -> None:
        if not self.workers.get(c.worker_id, (node, True))[1]:
            return  # a killed worker runs nothing (its WorkerCrashed is queued)
        spec = c.spec
        out = self.behaviour(spec, c.attempt)
        at = self.now + out.duration
        sid = c.stimulus_id
        if out.kind == "hang":
            return
        if out.kind == "crash":
            self.workers[c.worker_id] = (node, False)
            self._push(at, node, WorkerCrashed(worker_id=c.worker_id, reason="crashed (memnet)", stimulus_id=sid))
            return
        if out.kind == "raise":
            self._push(at, node, TaskRaised(worker_id=c.worker_id, task_id=spec.task_id, error=out.error, retryable=out.retryable, stimulus_id=sid))
            return
        sizes = out.sizes or tuple(8 for _ in spec.return_ids)
        outputs = tuple(zip(spec.return_ids, sizes))
        store = self.stores[node]
        for oid, size in outputs:
            store[oid] = size
        self._push(at, node, TaskFinished(worker_id=c.worker_id, task_id=spec.task_id, outputs=outputs, duration=out.duration, stimulus_id=sid))

    def put_bytes(self, node: str, oid: bytes, size: int) -> None:
        """A client wrote an object into ``node``'s store (before PutObject)."""
        self.stores[node][oid] = size
