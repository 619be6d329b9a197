"""An in-memory world for worker leases: submitters, nodes, leased workers, faults.

Built on ``MemNet`` (a real head, GCS chain and ``NodeMachine``s wired by an
in-memory priority queue; no threads, no real time), it adds:

* **submitters**: a ``LeaseSubmitter`` (core/task_leases.py) at an address
  of its home node (``node:0/s1``), fed the lease messages, its timers and
  ``lost`` when a connection to a worker breaks;
* **leased workers**: every worker a node starts gets a ``LeaseWorker``
  (core/lease_worker.py) at its id (its endpoint); it runs pushed tasks for
  ``durations`` and returns ``"<task id>:<attempt>"`` (inline, or in its
  node's store for every third task), or crashes on the attempts planned to;
* **faults**: ``drop(n)`` loses the next ``n`` lease-control messages (the
  node/head <-> submitter protocol); ``cut`` breaks a submitter's
  connection to a worker (what is on it is lost, the submitter hears
  ``lost``); ``kill_worker`` kills a worker (its node hears
  ``WorkerCrashed``, its connections break); ``kill_submitter`` kills a
  submitter (its node hears ``ClientDisconnected``, the others
  ``SubmitterGone``); routed tasks (``SubmitTask``) share the nodes.

``check`` (after every step) holds the properties of leases; ``settle``
heals the drops and runs until every live submitter is idle, then checks
that every task ended and every lease was returned or reclaimed:

* every task ends exactly once for its submitter, with the value of a run
  of its own (``TaskResolved``) or an error naming the cause (``TaskFailed``);
* a task runs at most ``max_retries + 1`` times;
* resources are never over-committed: what runs on a node's workers at
  once (leased or routed) fits the node's total, and a leased task runs only
  while its node books the lease to the submitter that pushed it;
* no task is pushed on a lease more than ``hold`` after its grant (no
  submitter keeps a worker from the others past the bound), and the nodes
  grant in arrival order;
* spillback follows the scheduler's rule: a node forwards a request exactly
  when the rule says (infeasible / strategy / overloaded; placed: only
  infeasible), and the head sends a submitter only to a node that fits;
* lineage: when an escape is ready, the spec of every task of the
  submitter behind the escaping refs is in the GCS task table.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

from ..core.ids import ObjectId, TaskId, child_task_id, driver_task_id
from ..core.layout import ClusterLayout, NodeShape, build_machines, make_node
from ..core.lease_worker import LeaseWorker, RunTask
from ..core.messages import ClientDisconnected, Event, Execute, KillWorker, Send, StartWorker, SubmitTask, TaskFinished, TimerFired, WorkerCrashed
from ..core.msg_direct import DirectOutput
from ..core.msg_leases import (
    LeaseForward,
    LeaseGranted,
    LeaseLost,
    LeaseReturned,
    LeaseSpillback,
    LeaseTasksRecorded,
    PushReply,
    PushTask,
    RecordTasks,
    RequestLease,
    ReturnLease,
    SubmitterGone,
)
from ..core.placement import SPREAD
from ..core.records import ErrorInfo, ErrorKind
from ..core.scheduler import SchedulerConfig
from ..core.specs import FunctionDescriptor, ResourceSet, TaskSpec
from ..core.tables import key_shard
from ..core.task_leases import EscapeReady, LeaseConfig, LeaseSubmitter, TaskFailed, TaskResolved
from .memnet import MemNet

__all__ = ["LeaseNet", "Broken", "SHAPES"]

# the messages ``drop`` may lose (between submitters and nodes or the head)
CONTROL = (RequestLease, LeaseGranted, LeaseSpillback, LeaseForward, ReturnLease, LeaseReturned, LeaseLost,
           RecordTasks, LeaseTasksRecorded)

# task shapes: (resources, strategy); node:0 has no GPU, so a GPU task spills
SHAPES = (
    (ResourceSet.of(CPU=1), None),
    (ResourceSet.of(CPU=2), None),
    (ResourceSet.of(CPU=1, GPU=1), None),
    (ResourceSet.of(CPU=1), SPREAD),
)


class Broken(AssertionError):
    """A property of worker leases does not hold."""


class _Lost(Event):
    """(world -> submitter) the connection to ``endpoint`` broke."""

    endpoint: str


class _NodeDied(Event):
    """(world -> submitter) node ``node`` is dead (its node tells a client)."""

    node: str


class _Done(Event):
    """(world -> worker) the task it runs is over."""

    task_id: TaskId


@dataclass
class _Run:
    spec: TaskSpec
    attempt: int
    submitter: str
    req_id: int
    node: str


class _SubmitterHost:
    """A submitter process: its machine, and what the world watches of it."""

    def __init__(self, net: "LeaseNet", address: str, home: str, config: LeaseConfig) -> None:
        self.net = net
        self.address = address
        self.machine = LeaseSubmitter(address, home, config)
        self.granted_at: dict[int, float] = {}  # req id -> when the grant it took arrived

    def handle(self, ev, now: float) -> list:
        m = self.machine
        t = type(ev)
        if t is TimerFired:
            cmds = m.timer(ev.key, now, ev.stimulus_id)
        elif t is _Lost:
            cmds = m.lost(ev.endpoint, now, ev.stimulus_id)
        elif t is _NodeDied:
            cmds = m.node_died(ev.node, now, ev.stimulus_id)
        else:
            before = set(m.leases)
            cmds = m.handle(ev, now)
            if t is LeaseGranted and ev.req_id in m.leases and ev.req_id not in before:
                self.granted_at[ev.req_id] = now
        return self.net._from_submitter(self.address, cmds)

    def validate(self) -> None:
        self.machine.validate()


class _WorkerHost:
    """A worker process: the leased side (a ``LeaseWorker``)."""

    def __init__(self, net: "LeaseNet", wid: str, node: str) -> None:
        self.net = net
        self.wid = wid
        self.node = node
        self.machine = LeaseWorker(wid, node)

    def handle(self, ev, now: float) -> list:
        t = type(ev)
        if t is PushTask:
            cmds = self.machine.push(ev, now)
        elif t is TimerFired:
            cmds = self.machine.timer(ev.key, now, ev.stimulus_id)
        elif t is _Done:
            cmds = self.net._finish(self, ev.task_id, now)
        else:
            raise TypeError(f"lease_net: worker {self.wid} got {ev!r}")
        return self.net._from_worker(self, cmds)

    def validate(self) -> None:
        self.machine.validate()


class LeaseNet(MemNet):
    def __init__(self, config: LeaseConfig = LeaseConfig(pipeline=2, hold=0.3, resend_after=0.1),
                 max_retries: int = 1, threshold: int = 3, seed: int = 0,
                 submitters: tuple[tuple[str, str], ...] = (("node:0/s1", "node:0"), ("node:1/s2", "node:1"),
                                                            ("node:0/s3", "node:0"))) -> None:
        super().__init__(latency=0.001)
        self.config = config
        self.max_retries = max_retries
        self.rng = random.Random(seed)
        layout = ClusterLayout(nodes=(NodeShape(ResourceSet.of(CPU=2)), NodeShape(ResourceSet.of(CPU=2, GPU=1))),
                               scheduler=SchedulerConfig(forward_queue_threshold=threshold), timeline_limit=0)
        self.threshold = threshold
        self.hosts: dict[str, _SubmitterHost] = {}
        self.live: set[str] = set()
        self.homes: dict[str, str] = dict(submitters)
        # -- the world's records
        self.root = driver_task_id(1)
        self.count = 0
        self.specs: dict[TaskId, TaskSpec] = {}
        self.owner: dict[TaskId, str] = {}
        self.crash_on: dict[TaskId, set[int]] = {}  # attempts that crash their worker
        self.raise_on: dict[TaskId, set[int]] = {}  # attempts that raise
        self.durations: dict[TaskId, float] = {}
        self.outcomes: dict[TaskId, object] = {}
        self.runs: dict[TaskId, list[int]] = {}
        self.ran: set[tuple[TaskId, int]] = set()  # runs that returned
        self.leased_runs: dict[str, _Run] = {}  # worker -> leased task running there
        self.routed: dict[str, tuple[ResourceSet, float]] = {}  # worker -> routed task (resources, end)
        self.conns: set[tuple[str, str]] = set()  # (submitter, worker) connections
        self.escapes: dict[tuple[str, int], tuple[ObjectId, ...]] = {}
        self.next_escape = 0
        self.drop_budget = 0
        self.routed_count = 0
        self.drop_fn = self._drop
        self._expect = None
        self._forwarded = None
        self.layout = layout
        self.node_killed = False
        for address, machine in build_machines(layout, self.rng).items():
            self.add(address, machine)
        self.run_for(0.05)
        for address, home in submitters:
            self.hosts[address] = h = _SubmitterHost(self, address, home, config)
            self.live.add(address)
            self.add(address, h)

    # ------------------------------------------------------------------ the workload
    def submit(self, submitter: str, shape: int, crash: int = 0, duration: float = 0.01,
               raises: int = 0) -> TaskSpec | None:
        """A task of ``shape`` (index into SHAPES) whose first ``crash``
        attempts kill their worker, and whose next ``raises`` attempts raise
        (retryable: ``retry_exceptions``)."""
        if submitter not in self.live:
            return None
        self.count += 1
        res, strategy = SHAPES[shape % len(SHAPES)]
        spec = TaskSpec(task_id=child_task_id(self.root, self.count), job_id=1, parent_task_id=self.root,
                        function=FunctionDescriptor(b"f%d" % (shape % len(SHAPES)), "f"), resources=res,
                        max_retries=self.max_retries, scheduling=strategy, retry_exceptions=raises > 0)
        tid = spec.task_id
        self.specs[tid] = spec
        self.owner[tid] = submitter
        self.crash_on[tid] = set(range(crash))
        self.raise_on[tid] = set(range(crash, crash + raises))
        self.durations[tid] = duration
        h = self.hosts[submitter]
        self._execute(submitter, self._from_submitter(submitter, h.machine.submit(spec, self.now, f"submit:{self.count}")))
        return spec

    def submit_routed(self, node: str, duration: float = 0.02) -> None:
        """A plain task the old way (``SubmitTask`` to a node): it shares the pool."""
        self.routed_count += 1
        spec = TaskSpec(task_id=child_task_id(driver_task_id(2), self.routed_count), job_id=2,
                        parent_task_id=driver_task_id(2), function=FunctionDescriptor(b"g", "g"),
                        resources=ResourceSet.of(CPU=1))
        self.durations[spec.task_id] = duration
        self.send("c:routed", node, SubmitTask(client="c:routed", spec=spec))

    def escape(self, submitter: str, k: int) -> None:
        """Refs to results of ``submitter``'s tasks leave it."""
        mine = [t for t, s in self.owner.items() if s == submitter]
        if submitter not in self.live or not mine:
            return
        tid = mine[k % len(mine)]
        self.next_escape += 1
        token = (submitter, self.next_escape)
        oids = self.specs[tid].return_ids
        self.escapes[token] = oids
        h = self.hosts[submitter]
        self._execute(submitter, self._from_submitter(submitter, h.machine.escape(token, oids, self.now)))

    # ------------------------------------------------------------------ faults
    def drop(self, n: int) -> None:
        self.drop_budget = n

    def _drop(self, src: str, to: str, msg) -> bool:
        if self.drop_budget > 0 and type(msg) in CONTROL:
            self.drop_budget -= 1
            return True
        return False

    def cut(self, submitter: str, k: int = 0) -> None:  # type: ignore[override]
        """Break one of ``submitter``'s connections to a worker."""
        mine = sorted(c for c in self.conns if c[0] == submitter)
        if not mine:
            return
        s, w = mine[k % len(mine)]
        self._break(s, w)
        if s in self.live:
            self.inject(s, _Lost(endpoint=w), src=w)

    def _break(self, s: str, w: str) -> None:
        self.conns.discard((s, w))
        self.cut_links.add((s, w))
        self.cut_links.add((w, s))
        kept = [i for i in self.queue if not ((i.src, i.to) in ((s, w), (w, s)))]
        if len(kept) != len(self.queue):
            self.queue = kept
            heapq.heapify(self.queue)

    def kill_worker(self, k: int) -> None:
        alive = sorted(w for w, (n, a) in self.workers.items() if a)
        if alive:
            self._worker_died(alive[k % len(alive)], "killed by the test")

    def _worker_died(self, wid: str, reason: str, sid: str = "") -> None:
        node, alive = self.workers.get(wid, ("", False))
        if not alive:
            return
        self.workers[wid] = (node, False)
        self.machines.pop(wid, None)
        self.incarnations[wid] = self.incarnations.get(wid, 0) + 1
        self.leased_runs.pop(wid, None)
        self.routed.pop(wid, None)
        self._push(self.now, node, WorkerCrashed(worker_id=wid, reason=reason, stimulus_id=sid))
        for s, w in sorted(c for c in self.conns if c[1] == wid):
            self._break(s, w)
            if s in self.live:
                self.inject(s, _Lost(endpoint=w), src=w)

    def kill_node(self) -> None:
        """node:1 dies with its workers and the submitters it is home to (once;
        a node like it, node:2, joins in its place).  The head finds out by
        missed heartbeats; the other nodes reclaim the dead submitters'
        leases from the nodes table; live submitters hear of it later."""
        dead = "node:1"
        if self.node_killed or all(self.homes[s] == dead for s in self.live):
            return
        self.node_killed = True
        for s in sorted(self.live):
            if self.homes[s] == dead:
                self.live.discard(s)
                self.machines.pop(s, None)
                self.incarnations[s] = self.incarnations.get(s, 0) + 1
        for wid, (n, alive) in sorted(self.workers.items()):
            if n == dead and alive:
                self._worker_died(wid, "its node died")
        self.crash(dead)
        self.add("node:2", make_node(self.layout, 2, self.layout.nodes[1]))
        for s in sorted(self.live):
            self._push(self.now + 1.5, s, _NodeDied(node=dead), "world")

    def kill_submitter(self, submitter: str) -> None:
        if submitter not in self.live or len(self.live) == 1:
            return
        self.live.discard(submitter)
        self.machines.pop(submitter, None)
        self.incarnations[submitter] = self.incarnations.get(submitter, 0) + 1
        home = self.homes[submitter]
        self.inject(home, ClientDisconnected(client=submitter))
        for n in sorted(a for a in self.machines if a.startswith("node:") and a != home and "/" not in a):
            self._push(self.now + 0.05, n, SubmitterGone(submitter=submitter))

    # ------------------------------------------------------------------ plumbing
    def _execute(self, src: str, cmds: list) -> None:
        rest = []
        for c in cmds:
            t = type(c)
            if t is KillWorker:
                self._worker_died(c.worker_id, c.reason, c.stimulus_id)
            elif t is StartWorker:
                rest.append(c)
                self.machines[c.worker_id] = _WorkerHost(self, c.worker_id, src)
                self.incarnations[c.worker_id] = self.incarnations.get(c.worker_id, 0) + 1
            elif t is Send:
                self._watch_send(src, c)
                rest.append(c)
            else:
                rest.append(c)
        super()._execute(src, rest)

    def _run_task(self, node: str, c: Execute) -> None:
        """A routed task (memnet runs it): counted against the node too."""
        if not self.workers.get(c.worker_id, (node, False))[1]:
            return
        d = self.durations.get(c.spec.task_id, 0.02)
        self.routed[c.worker_id] = (c.spec.resources, self.now + d)
        self._push(self.now + d, node, TaskFinished(worker_id=c.worker_id, task_id=c.spec.task_id,
                                                     outputs=tuple((o, 8) for o in c.spec.return_ids),
                                                     duration=d, stimulus_id=c.stimulus_id))
        self._check_load(node)

    def _from_submitter(self, s: str, cmds: list) -> list:
        out = []
        for c in cmds:
            t = type(c)
            if t is TaskResolved or t is TaskFailed:
                self._ended(s, c)
            elif t is EscapeReady:
                self._escaped(s, c.token)
            else:
                if t is Send and type(c.msg) is PushTask:
                    self._pushed(s, c)
                out.append(c)
        return out

    def _from_worker(self, w: _WorkerHost, cmds: list) -> list:
        out = []
        for c in cmds:
            if type(c) is RunTask:
                self._started(w, c)
            else:
                out.append(c)
        return out

    def _finish(self, w: _WorkerHost, tid: TaskId, now: float) -> list:
        run = self.leased_runs.pop(w.wid)
        spec = run.spec
        value = f"{tid.hex()}:{run.attempt}".encode()
        self.ran.add((tid, run.attempt))
        if run.attempt in self.raise_on.get(tid, ()):
            err = ErrorInfo(ErrorKind.TASK_ERROR, f"task {tid} raised on attempt {run.attempt}")
            return w.machine.finished(tid, now, error=err, retryable=bool(spec.retry_exceptions),
                                      duration=self.durations[tid], sid=f"raised:{tid.hex()}")
        store = int.from_bytes(tid[-2:], "big") % 3 == 0
        outputs = []
        for oid in spec.return_ids:
            if store:
                self.stores[w.node][oid] = len(value)
                outputs.append(DirectOutput(object_id=oid, size=len(value), node=w.node))
            else:
                outputs.append(DirectOutput(object_id=oid, size=len(value), data=value))
        return w.machine.finished(tid, now, outputs=tuple(outputs), duration=self.durations[tid], sid=f"ran:{tid.hex()}")

    # ------------------------------------------------------------------ properties, as things happen
    def _watch_send(self, src: str, c: Send) -> None:
        m = c.msg
        t = type(m)
        if t is LeaseForward:
            self._check_forward(src, m)
        elif t is LeaseSpillback:
            node = self.machines.get(m.node)
            spec = None
            for s in self.hosts.values():
                r = s.machine.requests.get(m.req_id) if s.address == c.to else None
                if r is not None:
                    spec = r.spec
            if node is not None and spec is not None and not spec.resources.is_subset_of(node.scheduler.total):
                raise Broken(f"the head sent lease {c.to}#{m.req_id} ({spec.resources}) to {m.node}, "
                             f"which can never fit it ({node.scheduler.total})")
        elif t is LeaseGranted:
            node = self.machines[src]
            if node.leases.queue and (c.to, m.req_id) in node.leases.queue:
                raise Broken(f"{src} granted {c.to}#{m.req_id} while it still waits in the FIFO")

    def step(self) -> bool:
        """One delivery; a lease request to a node is checked against the
        scheduler's rule as the node stood when it arrived."""
        self._expect = None
        self._forwarded = None
        if self.queue:
            item = self.queue[0]
            ev = item.event
            node = self.machines.get(item.to)
            if (type(ev) is RequestLease and node is not None and item.incarnation == self.incarnations.get(item.to)
                    and (ev.submitter, ev.req_id) not in node.leases.leases
                    and (ev.submitter, ev.req_id) not in node.leases.ended and ev.submitter not in node.leases.gone
                    and (item.src, item.to) not in self.cut_links):
                self._expect = (item.to, ev, self._rule(node, ev))
        progressed = super().step()
        if self._expect is not None:
            addr, ev, want = self._expect
            got = self._forwarded
            if want != got:
                raise Broken(f"{addr} {'forwarded' if got else 'kept'} lease request {ev.submitter}#{ev.req_id} "
                             f"({ev.spec.resources}, placed={ev.placed}) as {got!r}; the scheduler's rule says {want!r}")
        return progressed

    def _rule(self, node, ev: RequestLease) -> str | None:
        s = node.scheduler
        spec = ev.spec
        if not spec.resources.is_subset_of(s.total):
            return "infeasible"
        if ev.placed:
            return None
        if spec.scheduling == SPREAD and s.other_nodes_alive:
            return "spread"
        if s.other_nodes_alive and s.queue_length + len(node.leases.queue) >= self.threshold:
            return "overloaded"
        return None

    def _check_forward(self, node_addr: str, m: LeaseForward) -> None:
        if self._expect is not None and self._expect[1] == m.request:
            self._forwarded = m.reason

    def _pushed(self, s: str, c: Send) -> None:
        m = c.msg
        if (s, c.to) not in self.conns:
            # a new connection (an earlier one to this worker may have broken)
            self.conns.add((s, c.to))
            self.cut_links.discard((s, c.to))
            self.cut_links.discard((c.to, s))
        g = self.hosts[s].granted_at.get(m.req_id)
        if g is None:
            raise Broken(f"{s} pushed {m.spec.task_id} on lease {m.req_id}, which it was never granted")
        if self.now > g + self.config.hold + 1e-9:
            raise Broken(f"{s} pushed {m.spec.task_id} on lease {m.req_id} at {self.now:.3f}, past its hold "
                         f"({g:.3f} + {self.config.hold}): it keeps the worker from others")

    def _started(self, w: _WorkerHost, c: RunTask) -> None:
        tid = c.spec.task_id
        runs = self.runs.setdefault(tid, [])
        runs.append(c.attempt)
        n = c.spec.max_retries
        if n >= 0 and len(runs) > n + 1:
            raise Broken(f"task {tid} ran {len(runs)} times (attempts {runs}); max_retries={n}")
        push = w.machine.running
        node = self.machines[w.node]
        booked = node.leases.by_worker.get(w.wid)
        if booked != (push.submitter, push.req_id):
            raise Broken(f"worker {w.wid} runs {tid} for {push.submitter}#{push.req_id}, but {w.node} books it "
                         f"to {booked}")
        self.leased_runs[w.wid] = _Run(c.spec, c.attempt, push.submitter, push.req_id, w.node)
        self._check_load(w.node)
        if c.attempt in self.crash_on.get(tid, ()):
            self._worker_died(w.wid, "the task crashed its worker (planned)")
            return
        self._push(self.now + self.durations[tid], w.wid, _Done(task_id=tid), w.wid)

    def _check_load(self, node: str) -> None:
        total = self.machines[node].scheduler.total
        used = ResourceSet.of()
        for wid, r in self.leased_runs.items():
            if r.node == node and self.workers.get(wid, ("", False))[1]:
                used = used + r.spec.resources
        for wid, (res, end) in list(self.routed.items()):
            if end <= self.now:
                del self.routed[wid]
            elif self.workers.get(wid, ("", False))[0] == node:
                used = used + res
        if not used.is_subset_of(total):
            raise Broken(f"{node} runs {used} at once, more than its {total}: over-committed")

    def _ended(self, s: str, c) -> None:
        tid = c.spec.task_id
        if tid in self.outcomes:
            raise Broken(f"task {tid} ended twice: {self.outcomes[tid]!r} then {c!r}")
        if self.owner.get(tid) != s:
            raise Broken(f"{s} ended {tid}, a task it did not submit")
        self.outcomes[tid] = c
        if type(c) is TaskResolved:
            r = c.reply
            want = f"{tid.hex()}:{r.attempt}".encode()
            if (tid, r.attempt) not in self.ran:
                raise Broken(f"task {tid} resolved as attempt {r.attempt}, which never returned")
            if r.error is not None:
                if r.attempt not in self.raise_on.get(tid, ()) or r.error.kind is not ErrorKind.TASK_ERROR:
                    raise Broken(f"task {tid} resolved with {r.error!r}, not what attempt {r.attempt} did")
                return
            for o in r.outputs:
                if o.data is not None and o.data != want:
                    raise Broken(f"task {tid} resolved with {o.data!r}, not its own value {want!r}")
        elif c.error.kind is not ErrorKind.WORKER_CRASHED or "died" not in c.error.message:
            raise Broken(f"task {tid} failed with {c.error!r}: not an error naming its cause")

    def _escaped(self, s: str, token) -> None:
        oids = self.escapes.pop(token, None)
        if oids is None:
            raise Broken(f"escape {token!r} of {s} is ready twice, or was never asked")
        for oid in oids:
            tid = oid.task_id
            if self.owner.get(tid) == s and self.gcs_task(tid) is None:
                raise Broken(f"a ref to {oid} left {s} before task {tid}'s spec was in the GCS task table")

    def gcs_task(self, tid: TaskId):
        head = self.machines["head"]
        shard = key_shard("tasks", tid, len(head.chain.shards))
        tail = head.chain.shards[shard].config.tail
        return self.machines[tail].tables.data["tasks"].get(tid)

    # ------------------------------------------------------------------ checks
    def check(self) -> None:
        for a, m in list(self.machines.items()):
            v = getattr(m, "validate", None)
            if v is not None:
                v()

    def nodes(self) -> list:
        return [m for a, m in sorted(self.machines.items()) if a.startswith("node:") and "/" not in a]

    def settle(self, rounds: int = 60) -> None:
        """Heal the drops, run until every live submitter is idle and every
        lease is back, then check that everything ended once."""
        self.drop_budget = 0
        for _ in range(rounds):
            if self._quiet():
                break
            self.run_for(0.5)
            self.check()
        live_tasks = [t for t, s in self.owner.items() if s in self.live and t not in self.outcomes]
        if live_tasks:
            raise Broken(f"tasks never ended: {[self.specs[t] for t in live_tasks]}")
        stuck = [k for k in self.escapes if k[0] in self.live]
        if stuck:
            raise Broken(f"escapes never ready: {stuck}")
        for s in self.live:
            m = self.hosts[s].machine
            if not m.idle():
                raise Broken(f"{s} is not idle at the end: requests {list(m.requests)}, leases {list(m.leases)}, "
                             f"returning {list(m.returning)}")
        for n in self.nodes():
            if n.leases.leases:
                raise Broken(f"{n.node_id} still holds leases nobody returned or reclaimed: {list(n.leases.leases)}")
        self.check()

    def _quiet(self) -> bool:
        if any(s in self.live and t not in self.outcomes for t, s in self.owner.items()):
            return False
        if any(k[0] in self.live for k in self.escapes):
            return False
        if any(not self.hosts[s].machine.idle() for s in self.live):
            return False
        return not any(n.leases.leases for n in self.nodes())
