"""A simulated node's local world: its byte store, worker processes and transfers.

Why its own module: this is the part of the simulated cluster that carries
out one node's local commands (``StartWorker``, ``Execute``, ``Fetch``,
spilling ...) and feeds their completions back in as events, with the
interface of pluggable task execution (``Executor``, ``Outcome``) it calls.
``SimCluster`` (``penumbra.sim.cluster``) builds one ``SimNode`` per node
address and registers ``_NODE_COMMANDS`` as the node host's handlers; a node
reaches its cluster only through what ``NodeCluster`` lists, so this module
does not import the cluster.

Theory of operation
-------------------
The node-local world (``SimNode``, one per node address)
    * **the byte store**: ``store[object_id] = (size, value)``: what the node's
      shared-memory store holds (the core's ``StoreAccounting`` decides, this
      holds);
    * **worker processes** (``SimWorker``), which talk to the node over
      their own connections: their events (and those of transfers) are
      delivered ``urgent``, ahead of the network messages queued at the
      node, as the real daemon serves its connections fairly and does not
      keep its workers waiting behind a flood of submissions.
      ``StartWorker`` takes
      ``worker_start`` seconds; ``Execute`` asks the *executor* for an
      ``Outcome`` and completes after ``task_overhead + duration`` (scaled by
      the host's slowdown) plus the time to write the outputs;
      ``KillWorker``, ``InterruptTask`` and ``CheckpointActor`` act on the
      worker.  A completion is dropped if its worker was killed meanwhile.
    * **transfers**: ``Fetch`` fails at once if the source node is dead or
      lacks the object, or if the pair is partitioned; otherwise the bytes
      cross ``network.transfer`` (a data channel of the pair: FIFO behind
      other transfers, not behind control messages), and the fetch fails if
      the source died or got cut off meanwhile.

Executors (pluggable task execution)
    ``executor.execute(node, worker, cmd) -> Outcome | None`` decides what a
    task does.  The default, ``workloads.ModelExecutor``, runs the
    ``TaskModel`` carried in ``spec.args.data``.  An executor that runs real
    Python code returns ``None`` and later calls ``node.complete(worker,
    cmd, outcome)`` (at the simulated time the work ends).  Optional hooks:
    ``start_worker(node, wid) -> seconds | None`` (``None``: the start
    fails), ``checkpoint(node, worker, cmd) -> Payload``, ``worker_gone(node,
    worker)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from penumbra.core.ids import ObjectId, TaskId
from penumbra.core.layout import NodeShape
from penumbra.core.messages import (
    ActorCheckpointed,
    CheckpointActor,
    DeleteSpilled,
    Evict,
    Execute,
    Fetch,
    FetchCompleted,
    FetchFailed,
    InterruptTask,
    KillWorker,
    ObjectRestored,
    ObjectsSpilled,
    RestoreFailed,
    RestoreObject,
    SpillFailed,
    SpillObjects,
    StartWorker,
    StopNode,
    StoreError,
    TaskFinished,
    TaskRaised,
    WorkerCrashed,
    WorkerStarted,
    WorkerStartFailed,
)
from penumbra.core.records import ErrorInfo, ErrorKind
from penumbra.core.specs import Payload, TaskSpec

if TYPE_CHECKING:  # pragma: no cover
    from .costs import CostModel
    from .endpoints import Host
    from .kernel import SimKernel

__all__ = ["SimNode", "SimWorker", "Outcome", "Executor", "NodeCluster"]


class NodeCluster(Protocol):
    """What a ``SimNode`` uses of its cluster (``SimCluster`` is the one).

    Why a protocol: the cluster builds its nodes, so an import of the
    cluster here would be a circle.
    """

    kernel: SimKernel
    costs: CostModel
    executor: Any  # an ``Executor`` (duck-typed)
    nodes: dict[str, SimNode]
    disk_bytes: int
    on_task_done: list[Callable[[SimNode, TaskSpec, int, float], Any]]
    direct: Any  # the direct-call world (``penumbra.sim.direct.SimDirect``)

    def crash_node(self, address: str, restart_after: float | None = None) -> bool: ...


# ===========================================================================
# outcomes and executors


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a task did: ``kind`` is ``"ok"``, ``"raise"``, ``"crash"`` (the
    worker process dies) or ``"hang"`` (never completes).

    ``values``/``sizes``: one per return value (missing sizes: 8 bytes).
    ``duration``: seconds of work (before the cost model's overheads).
    """

    kind: str
    duration: float = 0.0
    values: tuple = ()
    sizes: tuple[int, ...] = ()
    error: ErrorInfo | None = None
    retryable: bool = False


class Executor:
    """The interface of pluggable task execution (duck-typed; see the module
    docstring).  Subclass it or provide the same methods."""

    def start_worker(self, node: "SimNode", worker_id: str) -> float | None:
        return node.cluster.costs.worker_start

    def execute(self, node: "SimNode", worker: "SimWorker", cmd: Execute) -> Outcome | None:
        raise NotImplementedError

    def checkpoint(self, node: "SimNode", worker: "SimWorker", cmd: CheckpointActor) -> Payload:
        return Payload(64, worker.actor_state)

    def worker_gone(self, node: "SimNode", worker: "SimWorker") -> None:
        pass


class SimWorker:
    """A simulated worker process on a node."""

    __slots__ = ("worker_id", "alive", "started", "running", "actor_state", "tasks_run", "next_token", "sequential",
                 "free_at", "actor_async", "cancelled", "began", "incarnation", "direct")

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.alive = True
        self.started = False
        self.running: dict[TaskId, int] = {}  # task -> token of its pending completion
        self.actor_state: Any = None
        self.tasks_run = 0
        self.next_token = 0
        # hosts an actor that runs one call at a time (max_concurrency 1),
        # as a real worker does: its node sends calls ahead (core.actors)
        self.sequential = False
        self.free_at = 0.0  # (sequential) when its last call ends
        self.actor_async: bool | None = None  # hosts an actor: an async one?
        # calls of a sync or threaded actor that ``cancel`` asked for: they
        # run on, as in Ray, and see is_canceled(); not started yet, they
        # never run (see PythonExecutor)
        self.cancelled: set[TaskId] = set()
        # task -> when this worker began it, if an executor said so before
        # its completion (one that runs code and may block: the run's bar
        # on the timeline starts there, see ``SimNode.complete``)
        self.began: dict[TaskId, float] = {}
        # hosts an actor: the incarnation its creation started (as the node
        # hosts it), and, once it takes direct calls, its inbox and endpoint
        # (``penumbra.sim.direct``)
        self.incarnation = 0
        self.direct: Any = None

    def __repr__(self) -> str:
        return f"<SimWorker {self.worker_id} {'alive' if self.alive else 'dead'} running={len(self.running)}>"


def _error(kind: ErrorKind, text: str, name: str = "") -> ErrorInfo:
    return ErrorInfo(kind, text, task_name=name)


_EIGHT = (8,)


class SimNode:
    """The node-local world of one node address: byte store and workers.

    ``host`` is the kernel host running the node's ``NodeMachine``
    (``machine``).  ``store`` maps object ids to ``(size, value)``.
    """

    def __init__(self, cluster: NodeCluster, address: str, index: int, shape: NodeShape, rack: Any) -> None:
        self.cluster = cluster
        self.address = address
        self.index = index
        self.shape = shape
        self.rack = rack
        self.host: Host | None = None
        self.alive = True
        self.born_at = cluster.kernel.now
        self.died_at: float | None = None
        self.store: dict[ObjectId, tuple[int, Any]] = {}
        # the node's local disk: spilled objects, and when it is next free
        # (one spill or restore at a time, as the real daemon does)
        self.spilled: dict[ObjectId, tuple[int, Any]] = {}
        self.disk_free_at = 0.0
        self.workers: dict[str, SimWorker] = {}
        self.finished = 0  # tasks completed successfully on this node
        self.fetched_bytes = 0

    @property
    def machine(self):
        return self.host.machine if self.host is not None else None

    def value(self, oid: ObjectId) -> Any:
        """The value of ``oid`` in this node's store (KeyError if absent)."""
        return self.store[oid][1]

    def __repr__(self) -> str:
        return f"<SimNode {self.address} {'alive' if self.alive else 'dead'} workers={len(self.workers)} objects={len(self.store)}>"

    # ------------------------------------------------------------------ commands
    def on_start_worker(self, host: Host, cmd: StartWorker) -> None:
        w = SimWorker(cmd.worker_id)
        self.workers[cmd.worker_id] = w
        delay = self.cluster.executor.start_worker(self, cmd.worker_id)
        if delay is None:
            w.alive = False
            del self.workers[cmd.worker_id]
            host.deliver_at(host.now, WorkerStartFailed(worker_id=cmd.worker_id, reason="the executor refused to start it", stimulus_id=cmd.stimulus_id), urgent=True)
            return
        host.call_at(host.now + delay * host.cpu_factor, self._worker_up, w, cmd.stimulus_id)

    def _worker_up(self, w: SimWorker, sid: str) -> None:
        if not w.alive:
            return
        w.started = True
        self.host.deliver_now(WorkerStarted(worker_id=w.worker_id, stimulus_id=sid), urgent=True)

    def on_execute(self, host: Host, cmd: Execute) -> None:
        w = self.workers.get(cmd.worker_id)
        if w is None or not w.alive:
            return  # a killed worker runs nothing (its WorkerCrashed is on its way)
        a = cmd.spec.actor_creation
        if a is not None:
            w.sequential = a.max_concurrency <= 1
            w.actor_async = a.is_async
            # (the incarnation this creation starts, as the node hosts it:
            # the worker names it in direct calls, as the real daemon's Run does)
            t = host.machine.scheduler.tasks.get(cmd.spec.task_id)
            start = getattr(t, "actor", None)
            w.incarnation = start.entry.incarnation if start is not None else 0
        # (behind the call before it on a sequential actor; an executor
        # that starts it later says so itself)
        w.began[cmd.spec.task_id] = w.free_at if w.sequential and w.free_at > host.now else host.now
        out = self.cluster.executor.execute(self, w, cmd)
        if out is not None:
            self.complete(w, cmd, out)

    def complete(self, w: SimWorker, cmd: Execute, out: Outcome, at: float | None = None) -> None:
        """Finish ``cmd`` on ``w`` with ``out``: the completion event reaches
        the node after the worker-side time (or at ``at``, for executors that
        measured it themselves)."""
        host = self.host
        if host is None or not self.alive or not w.alive:
            return
        costs = self.cluster.costs
        # (called from a command handler, host.now is the time; from
        # elsewhere, e.g. an executor's callback, the host may be idle since
        # an earlier time)
        now = host.now
        env_now = self.cluster.kernel.env._now
        if env_now > now:
            now = env_now
        if at is None:
            start = now
            if w.sequential and w.free_at > start:
                start = w.free_at  # behind the call before it
            t = start + (costs.task_overhead + out.duration) * host.cpu_factor
            if out.kind == "ok":
                sizes = out.sizes or _EIGHT
                for i in range(len(cmd.spec.return_ids)):
                    t += costs.store_write_time(sizes[i] if i < len(sizes) else 8)
        else:
            t = at if at > now else now
        if out.kind == "hang":
            w.running[cmd.spec.task_id] = -1
            return
        if t > w.free_at:
            w.free_at = t
        token = w.next_token = w.next_token + 1
        w.running[cmd.spec.task_id] = token
        # the run's bar (``TaskFinished.span``): from when the worker began
        # it -- after the call before it, for a sequential actor -- or, for
        # an executor's task that blocked on the way, from its real start
        began = w.began.pop(cmd.spec.task_id, None)
        if began is None or began >= now:
            began = start if at is None else now
        host.call_at(t, self._completed, w, cmd, out, token, t - now, (began, t))

    def _completed(self, w: SimWorker, cmd: Execute, out: Outcome, token: int, elapsed: float,
                   span: tuple[float, float] | None = None) -> None:
        spec = cmd.spec
        tid = spec.task_id
        if not w.alive or w.running.get(tid) != token:
            return
        del w.running[tid]
        w.cancelled.discard(tid)
        w.tasks_run += 1
        host = self.host
        sid = cmd.stimulus_id
        kind = out.kind
        c = self.cluster
        if kind != "crash" and w.direct is not None and tid in w.direct.inbox.running:
            c.direct.finished(self, w, cmd, out, elapsed, span)  # answered to its caller, reported to the node
            return
        if kind == "ok":
            rids = spec.return_ids
            sizes = out.sizes or _EIGHT
            values = out.values
            store = self.store
            outputs = []
            for i, oid in enumerate(rids):
                size = sizes[i] if i < len(sizes) else 8
                store[oid] = (size, values[i] if i < len(values) else None)
                outputs.append((oid, size))
            self.finished += 1
            if c.on_task_done:
                for hook in c.on_task_done:
                    hook(self, spec, cmd.attempt, host.now)
            host.deliver_now(TaskFinished(worker_id=w.worker_id, task_id=tid, outputs=tuple(outputs),
                                          duration=elapsed, span=span, stimulus_id=sid), urgent=True)
            a = spec.actor_creation
            if a is not None and not a.replay and c.direct.enabled and w.alive and w.direct is None:
                # callers may call it directly now (after its creation's result)
                c.direct.serve(self, w, spec, w.incarnation, cmd.gpu_ids, sid)
        elif kind == "raise":
            err = out.error or _error(ErrorKind.TASK_ERROR, f"{spec.display_name()} raised", spec.display_name())
            host.deliver_now(TaskRaised(worker_id=w.worker_id, task_id=tid, error=err,
                                        retryable=out.retryable, duration=elapsed, span=span, stimulus_id=sid),
                             urgent=True)
        elif kind == "crash":
            self._kill(w)
            host.deliver_now(WorkerCrashed(worker_id=w.worker_id, reason="the worker process died while running "
                                           f"{spec.display_name()} (modelled crash)", stimulus_id=sid), urgent=True)
        else:
            raise ValueError(f"unknown outcome kind {kind!r} (ok, raise, crash, hang)")

    def _kill(self, w: SimWorker) -> None:
        w.alive = False
        w.running.clear()
        w.began.clear()
        self.workers.pop(w.worker_id, None)
        self.cluster.executor.worker_gone(self, w)
        if w.direct is not None:
            self.cluster.direct.worker_gone(w)

    def on_kill_worker(self, host: Host, cmd: KillWorker) -> None:
        w = self.workers.get(cmd.worker_id)
        if w is None or not w.alive:
            return
        self._kill(w)
        host.deliver_at(host.now, WorkerCrashed(worker_id=cmd.worker_id, reason=cmd.reason or "killed", stimulus_id=cmd.stimulus_id), urgent=True)

    def on_interrupt(self, host: Host, cmd: InterruptTask) -> None:
        w = self.workers.get(cmd.worker_id)
        if w is None or not w.alive or cmd.task_id not in w.running:
            return  # it already ended; its completion is on its way
        if w.actor_async is False:
            # a sync or threaded actor's call is not interrupted (Ray's
            # rule: actors have state); it only sees is_canceled()
            w.cancelled.add(cmd.task_id)
            return
        del w.running[cmd.task_id]
        w.began.pop(cmd.task_id, None)
        interrupt = getattr(self.cluster.executor, "interrupt", None)  # (executors that run code)
        if interrupt is not None:
            interrupt(w, cmd.task_id)
        host.deliver_at(host.now, TaskRaised(
            worker_id=cmd.worker_id, task_id=cmd.task_id,
            error=_error(ErrorKind.TASK_CANCELLED, "the task was interrupted (cancelled)"),
            stimulus_id=cmd.stimulus_id), urgent=True)

    def on_checkpoint(self, host: Host, cmd: CheckpointActor) -> None:
        w = self.workers.get(cmd.worker_id)
        if w is None or not w.alive:
            return
        payload = self.cluster.executor.checkpoint(self, w, cmd)
        t = host.now + self.cluster.costs.store_write_time(payload.size) * host.cpu_factor
        host.call_at(t, self._checkpointed, w, cmd, payload)

    def _checkpointed(self, w: SimWorker, cmd: CheckpointActor, payload: Payload) -> None:
        if w.alive:
            self.host.deliver_now(ActorCheckpointed(worker_id=w.worker_id, actor_id=cmd.actor_id, index=cmd.index,
                                                    payload=payload, stimulus_id=cmd.stimulus_id), urgent=True)

    def on_fetch(self, host: Host, cmd: Fetch) -> None:
        c = self.cluster
        net = c.kernel.network
        src = c.nodes.get(cmd.from_node)
        oid = cmd.object_id
        me = self.address
        on_disk = src is not None and oid not in src.store and oid in src.spilled
        if src is None or not src.alive or (oid not in src.store and not on_disk):
            reason = ("no such node" if src is None else "the source node is dead" if not src.alive
                      else "the source node does not hold the object")
            rtt = 2 * net.latency(me, cmd.from_node) if src is not None else 0.0
            host.deliver_at(host.now + rtt, FetchFailed(object_id=oid, from_node=cmd.from_node, reason=reason, stimulus_id=cmd.stimulus_id), urgent=True)
            return
        item = src.spilled[oid] if on_disk else src.store[oid]
        size = item[0]
        start = host.now + net.latency(me, src.address)  # the request reaches the source
        if on_disk:  # spilled there: served from the file
            start = src._disk(start, c.costs.disk_read_time(size))
        done = None if net.is_cut(me, src.address) else net.transfer(src.address, me, size, start)
        if done is None:
            host.deliver_at(host.now, FetchFailed(object_id=oid, from_node=cmd.from_node, reason="partitioned from the source node", stimulus_id=cmd.stimulus_id), urgent=True)
            return
        done += c.costs.store_put_overhead
        host.call_at(done, self._fetched, src, oid, item, cmd.stimulus_id)

    def _fetched(self, src: "SimNode", oid: ObjectId, item: tuple, sid: str) -> None:
        net = self.cluster.kernel.network
        if not src.alive or net.is_cut(src.address, self.address):
            self.host.deliver_now(FetchFailed(object_id=oid, from_node=src.address,
                                              reason="the source node died or was cut off during the transfer", stimulus_id=sid), urgent=True)
            return
        self.store[oid] = item
        self.fetched_bytes += item[0]
        self.host.deliver_now(FetchCompleted(object_id=oid, size=item[0], stimulus_id=sid), urgent=True)

    def on_evict(self, host: Host, cmd: Evict) -> None:
        self.store.pop(cmd.object_id, None)

    # ------------------------------------------------------------------ spilling (the local disk)
    def _disk(self, start: float, busy: float) -> float:
        """The disk is a queue: an operation of ``busy`` seconds that may
        start at ``start`` ends at the returned time."""
        begin = max(start, self.disk_free_at)
        self.disk_free_at = begin + busy
        return self.disk_free_at

    def on_spill(self, host: Host, cmd: SpillObjects) -> None:
        costs = self.cluster.costs
        done = self._disk(host.now, sum(costs.disk_write_time(n) for n in cmd.sizes))
        host.call_at(done, self._spilled, cmd)

    def _spilled(self, cmd: SpillObjects) -> None:
        if not self.alive:
            return
        disk = self.cluster.disk_bytes
        if disk and sum(s for s, _ in self.spilled.values()) + sum(cmd.sizes) > disk:
            self.host.deliver_now(SpillFailed(object_ids=cmd.object_ids, stimulus_id=cmd.stimulus_id, reason=(
                f"No space left on device: the simulated disk of {disk} bytes cannot take {sum(cmd.sizes)} more")),
                urgent=True)
            return
        store = self.store
        for oid in cmd.object_ids:
            item = store.get(oid)
            if item is not None:
                self.spilled[oid] = item
        self.host.deliver_now(ObjectsSpilled(object_ids=cmd.object_ids, stimulus_id=cmd.stimulus_id), urgent=True)

    def on_restore(self, host: Host, cmd: RestoreObject) -> None:
        done = self._disk(host.now, self.cluster.costs.disk_read_time(cmd.size))
        host.call_at(done, self._restored, cmd)

    def _restored(self, cmd: RestoreObject) -> None:
        if not self.alive:
            return
        oid = cmd.object_id
        item = self.spilled.get(oid)
        if item is None:
            self.host.deliver_now(RestoreFailed(object_id=oid, reason="no spill file", stimulus_id=cmd.stimulus_id),
                                  urgent=True)
            return
        self.store[oid] = item
        self.host.deliver_now(ObjectRestored(object_id=oid, size=item[0], stimulus_id=cmd.stimulus_id), urgent=True)

    def on_delete_spilled(self, host: Host, cmd: DeleteSpilled) -> None:
        for oid in cmd.object_ids:
            self.spilled.pop(oid, None)

    def on_store_error(self, host: Host, cmd: StoreError) -> None:
        for oid in cmd.object_ids:
            self.store[oid] = (0, cmd.error)

    def crashed(self, now: float) -> None:
        self.alive = False
        self.died_at = now
        self.store.clear()
        self.spilled.clear()
        ex = self.cluster.executor
        for w in list(self.workers.values()):
            w.alive = False
            w.running.clear()
            ex.worker_gone(self, w)
            if w.direct is not None:
                self.cluster.direct.worker_gone(w)
        self.workers.clear()


def _on_stop_node(node: SimNode, host: Host, cmd: StopNode) -> None:
    """The node was declared dead (fenced): it stops, as a crash would (the
    crash is scheduled, not done inside the machine's own step)."""
    host.call_at(host.now, node.cluster.crash_node, node.address)


_NODE_COMMANDS = {
    StopNode: _on_stop_node,
    StartWorker: SimNode.on_start_worker,
    Execute: SimNode.on_execute,
    KillWorker: SimNode.on_kill_worker,
    InterruptTask: SimNode.on_interrupt,
    CheckpointActor: SimNode.on_checkpoint,
    Fetch: SimNode.on_fetch,
    Evict: SimNode.on_evict,
    StoreError: SimNode.on_store_error,
    SpillObjects: SimNode.on_spill,
    RestoreObject: SimNode.on_restore,
    DeleteSpilled: SimNode.on_delete_spilled,
}

