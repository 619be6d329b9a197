"""The simulated cluster: the core's machines on the SimPy kernel.

Theory of operation
-------------------
``SimCluster`` builds a cluster the way every driver does
(``core.layout.build_machines``): a head, ``gcs_shards`` chains of
``chain_length`` GCS replicas, and nodes.  Each machine runs on a kernel
host (``penumbra.sim.kernel``), which charges CPU by the cost model and
carries its ``Send``/``SetTimer`` commands over the simulated network.
Nothing here decides anything: this module only carries out the node-local
commands and feeds their completions back in as events.

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

Drivers (``SimDriver``)
    Kernel clients placed on a node's machine (loopback to it), which build
    ``TaskSpec``s with deterministic ids, submit them, create actors and call
    them, ``put`` objects, watch objects (``WatchObjects``) and read values
    from their node's store.  They cost no CPU and run no SimPy process: they
    react to messages with callbacks.  A driver dies with its node.

Failures
    ``crash_node`` (the node's machine, store, workers and drivers vanish; the
    head learns of it by missed heartbeats, or at once with
    ``detect="omniscient"``), ``add_node``/``replace_node`` (a node restarts
    under a *new* address and node id: the core never reuses one),
    ``crash_replica``/``restart_replica`` (a replica restarts empty, as
    ``GcsReplica(joining=True)``, and copies its state from the tail),
    ``crash_head``/``recover_head`` (the head's host dies with the GCS
    replicas that live there; a new head rebuilds its state from the
    surviving replicas: core/head.py, "Recovery"), where replicas live
    (``ClusterLayout.replica_hosts`` puts a replica on a node's host: it
    dies with that node, and restarts empty on the node that replaces it),
    partitions, isolation, slow hosts, lossy links, and stop-the-world
    pauses (``pause``: the head, a node or a driver stands still for a while,
    as under SIGSTOP).  The same faults as data
    (``FaultSchedule`` with ``CrashNode``/``AddNode`` and the kernel's fault
    types), scheduled or drawn from a seed, go through ``cluster.install``.

Determinism
    Every random choice comes from the kernel's seed (the head's global
    scheduler gets ``kernel.derive_rng("head")``); the trace hash
    (``cluster.trace_hash()``, printed by ``summary()``) is the same for the
    same seed and configuration on every run.

Example::

    c = SimCluster(nodes=4, costs=PAPER, seed=1)
    c.wait_ready()
    d = c.driver(node="node:0")
    g = workloads.chains(8, 10, duration=0.1)
    specs = g.submit(d)
    d.watch([s.return_ids[0] for s in specs])
    c.crash_node("node:2", restart_after=0.5)
    c.run_until(lambda: d.all_ready(specs), timeout=60)
    c.summary()
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from penumbra.core.client import ClientMachine, ConnectionLost, Fail, Report, Resolve, ShutDown, TimedOut
from penumbra.core.gcs import GcsReplica
from penumbra.core.ids import ActorId, ObjectId, TaskId, actor_id_of, child_task_id, driver_task_id, put_object_id
from penumbra.core.layout import ClusterLayout, NodeShape, make_node, node_address
from penumbra.core.messages import (
    ActorCheckpointed,
    ActorRegistered,
    CancelTask,
    CheckpointActor,
    ClientDisconnected,
    ClientGcsReply,
    ClientGcsRequest,
    ClusterStatus,
    ClusterStatusRequest,
    DeleteSpilled,
    Evict,
    Execute,
    Fetch,
    FetchCompleted,
    FetchFailed,
    InterruptTask,
    KillActor,
    KillWorker,
    NodeDied,
    ObjectsReady,
    PutDone,
    PutFailed,
    PutObject,
    RegisterClient,
    StartWorker,
    StopNode,
    StoreError,
    ObjectRestored,
    ObjectsSpilled,
    RestoreFailed,
    RestoreObject,
    SpillFailed,
    SpillObjects,
    Send,
    SetTimer,
    SubmitTask,
    TaskFinished,
    TaskRaised,
    TimerFired,
    WorkerCrashed,
    WorkerStarted,
    WorkerStartFailed,
)
from penumbra.core.records import ErrorInfo, ErrorKind, ObjectInfo
from penumbra.core.specs import EMPTY, ActorSpec, FunctionDescriptor, Payload, ResourceSet, TaskSpec
from penumbra.core.tables import key_shard

from .costs import PAPER, CostModel
from .faults import Crash, Fault, FaultSchedule, Installed, Restart
from .kernel import Host, SimKernel, gc_paused
from .network import Network, SizeModel
from .trace import Trace

__all__ = [
    "SimCluster",
    "SimNode",
    "SimWorker",
    "SimDriver",
    "SimActor",
    "Outcome",
    "Executor",
    "CrashNode",
    "AddNode",
]


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
                 "free_at", "actor_async", "cancelled", "began")

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

    def __init__(self, cluster: "SimCluster", address: str, index: int, shape: NodeShape, rack: Any) -> None:
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
            c = self.cluster
            if c.on_task_done:
                for hook in c.on_task_done:
                    hook(self, spec, cmd.attempt, host.now)
            host.deliver_now(TaskFinished(worker_id=w.worker_id, task_id=tid, outputs=tuple(outputs),
                                          duration=elapsed, span=span, stimulus_id=sid), urgent=True)
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


# ===========================================================================
# drivers


class SimWaiter:
    """What waits for one of a ``SimDriver``'s requests: the callbacks its
    ``ClientMachine``'s commands end in (each optional).

    ``report(oid, info, now)``: a watched object is ready (each once);
    ``done(value)``: the answer (a reply message, or a watch's reports
    ``{oid: (info, None)}``); ``timeout(partial)``: its time ran out first;
    ``fail(reason, detail)``: the connection to the node is gone
    (``core.client.LOST`` or ``SHUT_DOWN``).  ``record``: also note each
    report in the driver's ``ready``."""

    __slots__ = ("report", "done", "timeout", "fail", "record")

    def __init__(self, report=None, done=None, timeout=None, fail=None, record: bool = False) -> None:
        self.report = report
        self.done = done
        self.timeout = timeout
        self.fail = fail
        self.record = record


class SimDriver:
    """A simulated driver program: a kernel client on ``node``'s machine.

    Build specs with ``spec(model, deps=...)`` (ids derive from the job's root
    task, so runs are reproducible), send them with ``submit``/``submit_many``,
    learn results with ``watch(oids, callback)``; ``ready[oid] = (time,
    ObjectInfo)`` records what became ready (when ``record``).  Values are
    read from the node's store (``value(oid)``), which a watch with
    ``fetch=True`` fills.

    What waits for what is the pure ``core.client.ClientMachine`` (the one
    the real client runs): this class carries its commands out on the
    kernel.  When the driver's node crashes (or ``cut`` ends its
    connection), the machine fails every outstanding request, once, and
    refuses new ones (``SimWaiter.fail``).
    """

    def __init__(self, cluster: "SimCluster", address: str, node: str, job_id: int) -> None:
        self.cluster = cluster
        self.address = address
        self.node = node
        self.job_id = job_id
        self.root = driver_task_id(job_id)
        self.count = 0
        self.puts = 0
        self.alive = True
        self.kernel = cluster.kernel
        self.client = cluster.kernel.add_client(address, self._on_message, colocated_with=node, kind="driver")
        self.ready: dict[ObjectId, tuple[float, ObjectInfo]] = {}
        self.submitted_at: dict[TaskId, float] = {}
        self.keep_submit_times = False
        self.machine = ClientMachine(address, node)
        self._functions: dict[str, FunctionDescriptor] = {}
        self.registered: dict[ActorId, ActorRegistered] = {}
        # CPU of the driver program per submitted task (0: free, the default;
        # cluster.driver(cpu=True) takes the cost model's client_call)
        self.call_cost = 0.0
        self.busy_until = 0.0
        self.client.send(node, RegisterClient(client=address, job_id=job_id, is_driver=True))

    @property
    def now(self) -> float:
        return self.kernel.env._now

    def __repr__(self) -> str:
        return f"<SimDriver {self.address} on {self.node} job={self.job_id}>"

    # ------------------------------------------------------------------ specs
    def function(self, name: str) -> FunctionDescriptor:
        f = self._functions.get(name)
        if f is None:
            f = self._functions[name] = FunctionDescriptor(b"sim:" + name.encode(), name)
        return f

    def next_task_id(self) -> TaskId:
        tid = child_task_id(self.root, self.count)
        self.count += 1
        return tid

    def spec(self, model: Any = None, *, deps: Sequence[ObjectId] = (), resources: ResourceSet = ResourceSet.of(CPU=1),
             name: str = "task", num_returns: int = 1, max_retries: int = 3, args_bytes: int = 0,
             retry_exceptions: bool = False, **kw: Any) -> TaskSpec:
        """The next task of this driver, running ``model`` (a ``TaskModel``;
        ``None``: an empty task)."""
        return TaskSpec(task_id=self.next_task_id(), job_id=self.job_id, parent_task_id=self.root,
                        function=self.function(name), args=Payload(args_bytes, model), dependencies=tuple(deps),
                        num_returns=num_returns, resources=resources, max_retries=max_retries,
                        retry_exceptions=retry_exceptions, **kw)

    # ------------------------------------------------------------------ sending
    def submit(self, spec: TaskSpec) -> TaskSpec:
        if self.alive:
            if self.call_cost:
                self.submit_many((spec,))
                return spec
            if self.keep_submit_times:
                self.submitted_at[spec.task_id] = self.now
            self.client.send(self.node, SubmitTask(client=self.address, spec=spec))
        return spec

    def submit_many(self, specs: Iterable[TaskSpec]) -> None:
        if not self.alive:
            return
        if self.call_cost:
            # the program's own CPU: each .remote() takes call_cost seconds
            # of the driver's (single) thread before its message leaves
            t = self.busy_until if self.busy_until > self.now else self.now
            for s in specs:
                t += self.call_cost
                self.kernel.call_at(t, self._send_one, s)
            self.busy_until = t
            return
        send = self.client.send
        node = self.node
        me = self.address
        keep = self.keep_submit_times
        now = self.now
        for s in specs:
            if keep:
                self.submitted_at[s.task_id] = now
            send(node, SubmitTask(client=me, spec=s))

    def _send_one(self, spec: TaskSpec) -> None:
        if self.alive:
            if self.keep_submit_times:
                self.submitted_at[spec.task_id] = self.now
            self.client.send(self.node, SubmitTask(client=self.address, spec=spec))

    def remote(self, model: Any = None, **kw: Any) -> TaskSpec:
        """``spec`` + ``submit``: returns the spec (its ``return_ids`` are the futures)."""
        return self.submit(self.spec(model, **kw))

    def watch(self, oids: Sequence[ObjectId], callback: Callable[[ObjectId, ObjectInfo, float], Any] | None = None,
              *, fetch: bool = True, record: bool = True, need: int = 1,
              on_fail: Callable[[str, str], Any] | None = None) -> int:
        """Be told as each object becomes available (``callback(oid, info,
        now)``; with ``record``, also ``ready[oid]``).  ``fetch``: pull the
        objects into this driver's node (as ``get`` does).  ``need``: the
        node may hold its reports until that many are ready (see
        ``WatchObjects``).  ``on_fail(reason, detail)``: the connection was
        lost (or closed) first.  Returns the watch's id, for ``cancel_watch``."""
        if not oids:
            return 0
        w = SimWaiter(report=callback, fail=on_fail, record=record)
        uniq = tuple(dict.fromkeys(oids))
        rid, cmds = self.machine.watch(w, uniq, len(uniq), fetch=fetch, report_need=need, stream=True)
        self._run(cmds)
        return rid

    def get(self, oids: Sequence[ObjectId], waiter: SimWaiter, *, timeout: float | None = None) -> int:
        """``get(oids, timeout)`` as a program does it: ``waiter.done`` gets
        every object's report once all are local (values: ``value(oid)``),
        else ``waiter.timeout`` or ``waiter.fail``, exactly once."""
        uniq = tuple(dict.fromkeys(oids))
        rid, cmds = self.machine.watch(waiter, uniq, len(uniq), fetch=True, report_need=len(uniq) if timeout is None else 1,
                                       deadline=None if timeout is None else self.now + timeout,
                                       stream=waiter.report is not None)
        self._run(cmds)
        return rid

    def wait(self, oids: Sequence[ObjectId], num_returns: int, waiter: SimWaiter, *, timeout: float | None = None,
             fetch: bool = True) -> int:
        """``wait(oids, num_returns, timeout, fetch_local)``: ``waiter.done``
        with the reports once ``num_returns`` are ready, else
        ``waiter.timeout`` (what was ready) or ``waiter.fail``, exactly once."""
        uniq = tuple(dict.fromkeys(oids))
        rid, cmds = self.machine.watch(waiter, uniq, num_returns, fetch=fetch,
                                       report_need=num_returns if timeout is None else 1,
                                       deadline=None if timeout is None else self.now + timeout,
                                       stream=waiter.report is not None)
        self._run(cmds)
        return rid

    def cancel_watch(self, rid: int) -> None:
        """Stop a watch (a ``wait`` that has its answer, or gave up)."""
        self._run(self.machine.cancel(rid))

    def _send_msg(self, msg: Any) -> None:
        if self.alive:
            self.client.send(self.node, msg)

    def _run(self, cmds: list) -> None:
        """Carry out the client machine's commands."""
        for c in cmds:
            t = c.__class__
            if t is Send:
                if not self.alive:
                    continue
                if self.call_cost and self.busy_until > self.now:
                    # in program order: after the submissions still in the driver
                    self.kernel.call_at(self.busy_until, self._send_msg, c.msg)
                else:
                    self.client.send(self.node, c.msg)
            elif t is Report:
                w = c.waiter
                now = self.kernel.env._now
                cb = w.report
                for oid, info, _ in c.objects:
                    if w.record:
                        self.ready[oid] = (now, info)
                    if cb is not None:
                        cb(oid, info, now)
            elif t is Resolve:
                if c.waiter.done is not None:
                    c.waiter.done(c.value)
            elif t is TimedOut:
                if c.waiter.timeout is not None:
                    c.waiter.timeout(c.partial)
            elif t is Fail:
                if c.waiter.fail is not None:
                    c.waiter.fail(c.reason, c.detail)
            elif t is SetTimer:
                self.kernel.call_at(c.at, self._timer, c.key)

    def _timer(self, key: Any) -> None:
        self._run(self.machine.handle(TimerFired(key=key, stimulus_id=f"client-timer:{self.address}")))

    def put(self, size: int, value: Any = None, callback: Callable[[Any], Any] | None = None,
            oid: ObjectId | None = None) -> ObjectId:
        """Write an object into this node's store, then tell the node
        (``PutObject``); ``callback(PutDone | PutFailed)``.  ``oid``: try
        again to put an object whose put failed (the store was full), as
        Ray's ``put`` keeps trying while it waits for space."""
        if oid is None:
            self.puts += 1
            oid = put_object_id(self.root, self.puts)
        node = self.cluster.nodes[self.node]
        t = self.cluster.costs.store_write_time(size)

        def write() -> None:
            if not self.alive or not node.alive:
                return
            node.store[oid] = (size, value)
            me = self.address
            self._run(self.machine.request(SimWaiter(done=callback), lambda rid: PutObject(
                client=me, req_id=rid, object_id=oid, size=size))[1])

        if t > 0:
            self.kernel.call_after(t, write)
        else:
            write()
        return oid

    def gcs(self, request: Any, callback: Callable[[Any], Any] | None = None) -> int:
        """A GCS read (``Query``) or write (``Op``) through the node."""
        done = None if callback is None else (lambda reply: callback(reply.result))
        me = self.address
        rid, cmds = self.machine.request(SimWaiter(done=done), lambda rid: ClientGcsRequest(
            client=me, req_id=rid, request=request))
        self._run(cmds)
        return rid

    def status(self, callback: Callable[[ClusterStatus], Any]) -> int:
        me = self.address
        rid, cmds = self.machine.request(SimWaiter(done=callback), lambda rid: ClusterStatusRequest(client=me, req_id=rid))
        self._run(cmds)
        return rid

    def cancel(self, spec: TaskSpec, force: bool = False) -> None:
        """Cancel a task (``force``: kill the worker running it)."""
        if self.alive:
            self.client.send(self.node, CancelTask(client=self.address, task_id=spec.task_id, force=force))

    def call_after(self, dt: float, fn: Callable, *args: Any) -> None:
        """Run ``fn(*args)`` ``dt`` seconds from now, if this driver still lives."""
        self.kernel.call_after(dt, self._guarded, fn, args)

    def _guarded(self, fn: Callable, args: tuple) -> None:
        if self.alive and not self.client.defer(self._guarded, (fn, args)):
            fn(*args)  # (a paused driver runs it when it resumes)

    def close(self) -> None:
        """The driver program exits (its node disconnects it)."""
        if self.alive:
            self.client.send(self.node, ClientDisconnected(client=self.address))
            self.kernel.call_after(1e-9, self._gone)
            self.alive = False
        self._run(self.machine.handle(ShutDown(stimulus_id=f"close:{self.address}")))

    def cut(self, detail: str = "the connection to the node was cut") -> None:
        """The connection to the node ends while the program goes on (a
        daemon killed under a live driver, a reset socket): the node is told
        (``ClientDisconnected``, as a closed socket tells a daemon), and
        everything this driver waits for fails, as every later request does."""
        if self.alive:
            self.client.send(self.node, ClientDisconnected(client=self.address))
            self.kernel.call_after(1e-9, self._gone)
        self.connection_lost(detail)

    def connection_lost(self, detail: str) -> None:
        """(its node crashed, or ``cut``) No more sends; the machine fails
        what waits."""
        self.alive = False
        self._run(self.machine.handle(ConnectionLost(detail=detail, stimulus_id=f"lost:{self.address}")))

    def _gone(self) -> None:
        self.kernel.remove_client(self.address)

    # ------------------------------------------------------------------ actors
    def create_actor(self, model: Any = None, *, cls: str = "Actor", max_restarts: int = 0, max_task_retries: int = 0,
                     replay: bool = False, checkpoint_interval: int = 0, resources: ResourceSet = EMPTY,
                     placement: ResourceSet = ResourceSet.of(CPU=1), max_concurrency: int = 1,
                     name: str | None = None, detached: bool = False, is_async: bool = False) -> "SimActor":
        """Create an actor whose creation task runs ``model`` (its ``init`` is
        the actor's state)."""
        tid = self.next_task_id()
        aspec = ActorSpec(actor_id=actor_id_of(tid), cls=self.function(cls), resources=resources,
                          max_restarts=max_restarts, max_task_retries=max_task_retries,
                          max_concurrency=max_concurrency, is_async=is_async, name=name, detached=detached, replay=replay,
                          checkpoint_interval=checkpoint_interval)
        spec = TaskSpec(task_id=tid, job_id=self.job_id, parent_task_id=self.root,
                        function=self.function(f"{cls}.__init__"), args=Payload(0, model),
                        resources=placement, actor_creation=aspec, max_retries=0)
        self.submit(spec)
        return SimActor(self, aspec, spec)

    # ------------------------------------------------------------------ receiving
    def _on_message(self, msg: Any) -> None:
        t = msg.__class__
        if t is ObjectsReady:
            self._run(self.machine.on_objects(msg.req_id, msg.objects, None, msg.stimulus_id))
        elif t is ClientGcsReply or t is ClusterStatus or t is PutDone or t is PutFailed:
            self._run(self.machine.on_reply(msg.req_id, msg))
        elif t is ActorRegistered:
            self.registered[msg.actor_id] = msg

    # ------------------------------------------------------------------ results
    def value(self, oid: ObjectId) -> Any:
        """The value of ``oid`` as this driver's node holds it (after a
        ``watch(fetch=True)`` said it is ready); an ``ErrorInfo`` for an
        object holding an error."""
        info = self.ready.get(oid)
        if info is not None and info[1].error is not None:
            return info[1].error
        return self.cluster.nodes[self.node].store[oid][1]

    def all_ready(self, specs: Iterable[TaskSpec]) -> bool:
        r = self.ready
        return all(o in r for s in specs for o in s.return_ids)

    def errors(self) -> dict[ObjectId, ErrorInfo]:
        return {o: i.error for o, (_, i) in self.ready.items() if i.error is not None}


class SimActor:
    """A handle to an actor created by a ``SimDriver``."""

    def __init__(self, driver: SimDriver, spec: ActorSpec, creation: TaskSpec) -> None:
        self.driver = driver
        self.spec = spec
        self.actor_id = spec.actor_id
        self.creation = creation
        self.calls = 0

    def call(self, model: Any = None, *, method: str = "m", deps: Sequence[ObjectId] = (), submit: bool = True) -> TaskSpec:
        """Call ``method`` (running ``model``, e.g. ``TaskModel(update=...)``)."""
        d = self.driver
        spec = TaskSpec(task_id=d.next_task_id(), job_id=d.job_id, parent_task_id=d.root,
                        function=d.function(f"{self.spec.cls.name}.{method}"), args=Payload(0, model),
                        dependencies=tuple(deps), actor_id=self.actor_id, caller_id=d.address,
                        sequence_no=self.calls, method=method)
        self.calls += 1
        if submit:
            d.submit(spec)
        return spec

    def kill(self, no_restart: bool = True) -> None:
        d = self.driver
        if d.alive:
            d.client.send(d.node, KillActor(client=d.address, actor_id=self.actor_id, no_restart=no_restart))


# ===========================================================================
# cluster-level faults (data, for FaultSchedule)


def _cluster_of(ctx: Installed) -> "SimCluster":
    c = getattr(ctx.kernel, "cluster", None)
    if c is None:
        raise RuntimeError("this fault needs a SimCluster: install it with cluster.install(schedule)")
    return c


@dataclass(frozen=True, slots=True)
class CrashNode(Fault):
    """Crash node ``address``; with ``restart_after``, a node of the same
    shape joins that much later under a new address (the core never reuses a
    node id)."""

    address: str
    restart_after: float | None = None

    def apply(self, ctx: Installed) -> None:
        _cluster_of(ctx).crash_node(self.address, restart_after=self.restart_after)

    def targets(self) -> tuple[str, ...]:
        return (self.address,)

    def __str__(self) -> str:
        after = f" restart_after={self.restart_after:g}" if self.restart_after is not None else ""
        return f"CrashNode({self.address}{after})"


@dataclass(frozen=True, slots=True)
class AddNode(Fault):
    """A new node joins (shaped like node ``like``, or like the layout's
    first node)."""

    like: str | None = None

    def apply(self, ctx: Installed) -> None:
        c = _cluster_of(ctx)
        c.add_node(like=self.like)

    def targets(self) -> tuple[str, ...]:
        return (self.like,) if self.like else ()

    def __str__(self) -> str:
        return f"AddNode(like={self.like})"


@dataclass(frozen=True, slots=True)
class CrashHead(Fault):
    """The head's host dies (the head and the GCS replicas that live with
    it); with ``recover_after``, a new head recovers that much later from
    the replicas alive then (``SimCluster.crash_head``)."""

    recover_after: float | None = None

    def apply(self, ctx: Installed) -> None:
        c = _cluster_of(ctx)
        if c.kernel.is_alive("head"):
            c.crash_head(recover_after=self.recover_after)

    def targets(self) -> tuple[str, ...]:
        return ("head",)

    def __str__(self) -> str:
        after = f" recover_after={self.recover_after:g}" if self.recover_after is not None else ""
        return f"CrashHead({after.strip()})"


# ===========================================================================
# the cluster


class SimCluster:
    """A whole simulated cluster (see the module docstring).

    Args:
        layout: the cluster's shape (``core.layout.ClusterLayout``); default:
            ``nodes`` nodes of ``cpus`` CPUs, one GCS shard of one replica.
        nodes, cpus, object_store_memory: shortcuts used when ``layout`` is
            None (``nodes`` also overrides the layout's node count, repeating
            its first shape).
        costs: the cost model (``PAPER``, a calibrated ``LOCAL``, ``ZERO``).
        seed: the seed of every random choice (network faults, the global
            scheduler's tie breaks, drawn fault schedules).
        rack_size: nodes per rack (the head and GCS replicas share a rack of
            their own, ``"control"``).
        executor: task execution (default ``workloads.ModelExecutor()``).
        trace: ``"key"`` (default), ``"type"`` (cheapest), ``False`` (none)
            or a ``Trace``.
        validate: call every machine's ``validate()`` after every event
            (slow; for tests).
        detect: ``"heartbeat"`` (the head finds dead nodes by missed
            heartbeats) or ``"omniscient"`` (the simulator tells it, after
            ``detect_delay``).
        start: boot the machines now (at time 0).
        disk_bytes: each node's spill disk, in bytes (0: unbounded); a spill
            that does not fit fails as a full disk does (``SpillFailed``).
        gc_off: pause Python's cyclic garbage collector while the simulation
            runs (``run``/``run_until``): its full collections walk every
            live object, which at thousands of nodes costs more than the
            simulation itself.  Reference counting still frees everything
            that is not part of a cycle; the collector runs again after,
            without a pass over what the simulation keeps (see
            ``kernel.gc_paused``).
    """

    def __init__(
        self,
        layout: ClusterLayout | None = None,
        *,
        nodes: int | None = None,
        cpus: float = 2,
        object_store_memory: int = 1 << 30,
        costs: CostModel = PAPER,
        seed: int = 0,
        rack_size: int = 40,
        executor: Any = None,
        trace: Any = "key",
        validate: bool = False,
        detect: str = "heartbeat",
        detect_delay: float = 0.0,
        print_logs: bool = False,
        network: Network | None = None,
        start: bool = True,
        gc_off: bool = True,
        disk_bytes: int = 0,
    ) -> None:
        if layout is None:
            shape = NodeShape(resources=ResourceSet.of(CPU=cpus), object_store_memory=object_store_memory)
            layout = ClusterLayout(nodes=(shape,) * (2 if nodes is None else nodes))
        elif nodes is not None:
            layout = dataclasses.replace(layout, nodes=tuple(layout.nodes[i % len(layout.nodes)] for i in range(nodes)))
        if detect not in ("heartbeat", "omniscient"):
            raise ValueError(f"detect must be 'heartbeat' or 'omniscient', got {detect!r}")
        if rack_size < 1:
            raise ValueError(f"rack_size must be >= 1, got {rack_size}")
        self.layout = layout
        self.costs = costs
        self.disk_bytes = disk_bytes
        self.seed = seed
        self.rack_size = rack_size
        self.detect = detect
        self.detect_delay = detect_delay
        self.validate = validate
        self.gc_off = gc_off
        if executor is None:
            from .workloads import ModelExecutor

            executor = ModelExecutor()
        self.executor = executor
        if trace is True or trace == "key" or trace == "type" or trace == "full":
            trace = Trace(fields="key" if trace is True else trace)
        elif trace is False or trace is None or trace == "none":
            trace = None
        if network is None:
            network = Network.from_costs(costs, size_of=SizeModel(costs.message_bytes, overrides={
                # a put's bytes are written into the local store, not sent
                PutObject: costs.message_bytes,
            }))
        self.kernel = SimKernel(seed, network=network, costs=costs, trace=trace, print_logs=print_logs)
        self.kernel.cluster = self  # for cluster-level faults (CrashNode, AddNode)
        self.kernel.on_crash.append(self._on_crash)
        self.kernel.on_restart.append(self._on_restart)
        self.nodes: dict[str, SimNode] = {}
        self.replicas: list[str] = []
        # replica -> the node whose host runs it (``layout.replica_hosts``;
        # it moves to the node that replaces a dead one); the others live
        # with the head
        self.replica_node: dict[str, str] = dict(layout.replica_hosts)
        self.head_recoveries = 0
        self.drivers: dict[str, SimDriver] = {}
        self.next_node = 0
        self.next_job = 1
        self.on_task_done: list[Callable[[SimNode, TaskSpec, int, float], Any]] = []
        self.events: list[tuple[float, str, str]] = []  # (time, what, address): crashes, joins
        self._started = False
        self._build()
        if start:
            self.start()

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        from penumbra.core.head import HeadMachine

        k = self.kernel
        lay = self.layout
        self.head_host = k.add_host("head", HeadMachine(lay.head_config(), k.derive_rng("head")), rack="control",
                                    kind="head", validate_every_step=self.validate)
        from .gcsdisk import SimGcsDisk

        self.gcs_disk = SimGcsDisk()  # where flushed GCS rows go (GcsTiming.flush)
        for chain in lay.chains():
            for r in chain.replicas:
                m = GcsReplica(r, chain.shard, "head", lay.gcs_timing, config=chain)
                on = lay.replica_hosts.get(r)
                # (a replica on a node's host sits in that node's rack)
                rack = "control" if on is None else int(on.split(":")[1]) // self.rack_size
                k.add_host(r, m, self.gcs_disk.handlers, rack=rack, kind="gcs", validate_every_step=self.validate)
                self.replicas.append(r)
        for shape in lay.nodes:
            self._new_node(shape, None)

    def _new_node(self, shape: NodeShape, rack: Any) -> SimNode:
        i = self.next_node
        self.next_node += 1
        address = node_address(i)
        if rack is None:
            rack = i // self.rack_size
        node = SimNode(self, address, i, shape, rack)
        machine = make_node(self.layout, i, shape)
        handlers = {t: (lambda f: (lambda host, cmd: f(node, host, cmd)))(f) for t, f in _NODE_COMMANDS.items()}
        node.host = self.kernel.add_host(address, machine, handlers, rack=rack, kind="node",
                                         validate_every_step=self.validate)
        self.nodes[address] = node
        return node

    def start(self) -> None:
        """Boot every machine (head, then GCS replicas, then nodes) now."""
        if self._started:
            return
        self._started = True
        k = self.kernel
        for address in ["head"] + self.replicas + list(self.nodes):
            self._boot(k.hosts[address])

    def _boot(self, host: Host) -> None:
        host.call_at(max(host.now, self.kernel.now), self._run_start, host)

    @staticmethod
    def _run_start(host: Host) -> None:
        start = getattr(host.machine, "start", None)
        if start is not None:
            host.carry_out(start(host.now))

    # ------------------------------------------------------------------ views
    @property
    def now(self) -> float:
        return self.kernel.env.now

    @property
    def head(self):
        """The head machine (global scheduler, monitor, chain master, actors)."""
        return self.kernel.hosts["head"].machine

    def node(self, address: str) -> SimNode:
        return self.nodes[address]

    def alive_nodes(self) -> list[str]:
        return [a for a, n in self.nodes.items() if n.alive]

    def replica(self, address: str) -> GcsReplica | None:
        return self.kernel.hosts[address].machine

    def gcs_row(self, table: str, key: Any) -> Any:
        """The row of ``key`` in ``table`` at its shard's tail (an observation,
        not a GCS read)."""
        head = self.head
        shard = key_shard(table, key, len(head.chain.shards))
        tail = head.chain.shards[shard].config.tail
        m = self.kernel.hosts[tail].machine
        if m is None:
            return None
        row = m.tables.data[table].get(key)
        if row is None and m.tables.flush_next:  # (flushed: what the disk holds)
            seg = m.tables.flushed_segment(table, key)
            if seg is not None:
                row = self.gcs_disk.segments(tail).get((shard, seg), {}).get((table, key))
        return row

    def tasks_finished(self) -> int:
        """Tasks that completed successfully on any node so far."""
        return sum(n.finished for n in self.nodes.values())

    def is_ready(self) -> bool:
        """Every live node joined, was welcomed and has its workers up."""
        head = self.head
        if head is None:
            return False
        known = head.scheduler.nodes
        for a, n in self.nodes.items():
            if not n.alive:
                continue
            m = n.machine
            if not m.welcomed or m.scheduler.pending_starts or a not in known:
                return False
        return True

    # ------------------------------------------------------------------ running
    @contextlib.contextmanager
    def _running(self):
        if not self.gc_off:
            yield
            return
        with gc_paused():
            yield

    def run(self, until: float) -> None:
        """Run until simulated time ``until``."""
        if until > self.kernel.now:
            with self._running():
                self.kernel.run(until=until)

    def run_for(self, dt: float) -> None:
        self.run(self.kernel.now + dt)

    def run_until(self, predicate: Callable[[], bool], timeout: float, check_every: float | None = None) -> bool:
        """Run until ``predicate()`` or ``timeout`` simulated seconds pass."""
        with self._running():
            return self.kernel.run_until(predicate, timeout, check_every)

    def wait_ready(self, timeout: float = 10.0) -> float:
        """Run until the cluster is up (``is_ready``); returns the time.

        Raises:
            TimeoutError: it was not up within ``timeout`` simulated seconds.
        """
        step = max(1e-3, self.costs.worker_start / 4 if self.costs.worker_start else 1e-3)
        if not self.run_until(self.is_ready, timeout, check_every=step):
            raise TimeoutError(f"the simulated cluster was not up after {timeout}s of simulated time "
                               f"(nodes not ready: {[a for a, n in self.nodes.items() if n.alive and not n.machine.welcomed][:5]})")
        return self.now

    # ------------------------------------------------------------------ drivers
    def driver(self, node: str = "node:0", *, job_id: int | None = None, name: str | None = None,
               cpu: bool = False) -> SimDriver:
        """A new driver program on ``node`` (its own job unless ``job_id``).

        ``cpu``: model the program's own CPU (``costs.client_call`` per
        submitted task, one thread); by default drivers cost nothing."""
        if node not in self.nodes or not self.nodes[node].alive:
            raise ValueError(f"cannot place a driver on {node!r}: no such live node (live: {self.alive_nodes()[:8]})")
        if job_id is None:
            job_id = self.next_job
            self.next_job += 1
        address = name or f"driver:{job_id}:{len(self.drivers)}"
        d = SimDriver(self, address, node, job_id)
        if cpu:
            d.call_cost = self.costs.client_call
        self.drivers[address] = d
        return d

    # ------------------------------------------------------------------ failures
    def crash_node(self, address: str, restart_after: float | None = None) -> bool:
        """Crash a node: its machine, store, workers and drivers vanish.  With
        ``restart_after``, a node of the same shape joins that much later
        under a new address.  Returns False if it was already dead."""
        node = self.nodes.get(address)
        if node is None:
            raise ValueError(f"no node {address!r}")
        if not self.kernel.crash(address):
            return False
        if restart_after is not None:
            self.kernel.call_after(restart_after, self.replace_node, address)
        return True

    def replace_node(self, address: str) -> str:
        """A node shaped like (dead) ``address`` joins under a new address
        (the GCS replicas its host ran restart empty on the new one)."""
        return self.add_node(like=address)

    def add_node(self, shape: NodeShape | None = None, *, rack: Any = None, like: str | None = None) -> str:
        """A new node joins now; returns its address.  Made ``like`` a dead
        node, its host takes over the dead one's GCS replicas: they restart
        empty and join their chains again (copying the tail's state)."""
        if like is not None:
            shape = self.nodes[like].shape
            rack = self.nodes[like].rack if rack is None else rack
        node = self._new_node(shape or self.layout.nodes[0], rack)
        self.events.append((self.now, "join", node.address))
        self.kernel.note(node.address, "node joins")
        if self._started:
            self._boot(node.host)
        if like is not None and not self.nodes[like].alive:
            for r in sorted(r for r, n in self.replica_node.items() if n == like):
                self.replica_node[r] = node.address
                self.restart_replica(r)
        return node.address

    def replicas_with_head(self) -> list[str]:
        """The GCS replicas on the head's host (they die with the head)."""
        return [r for r in self.replicas if r not in self.replica_node]

    def crash_head(self, recover_after: float | None = None) -> list[str]:
        """The head's host dies: the head machine and the GCS replicas that
        live with it (those not placed on nodes by
        ``layout.replica_hosts``).  Nodes, drivers and the other replicas
        run on; what they send the head meanwhile is lost.  With
        ``recover_after``, a new head recovers that much later
        (``recover_head``).  Returns the replicas that died."""
        if not self.kernel.crash("head"):
            raise ValueError("the head is down already; recover it first (cluster.recover_head())")
        self.events.append((self.now, "crash", "head"))
        died = [r for r in self.replicas_with_head() if self.kernel.crash(r)]
        if recover_after is not None:
            self.kernel.call_after(recover_after, self.recover_head)
        return died

    def recover_head(self, recover_from: Iterable[str] | None = None, restart_replicas: bool = True) -> tuple[str, ...]:
        """Start a new head that rebuilds its state from the surviving GCS
        replicas (core/head.py, "Recovery: a new head from surviving
        replicas").  ``recover_from``: the replicas to ask (default: every
        replica alive now).  With ``restart_replicas`` the replicas of the
        head's host come back too, empty, and join their chains again.
        Returns the replicas asked.

        Raises:
            ValueError: the head is alive, or no replica survives to recover from.
        """
        k = self.kernel
        if k.hosts["head"].alive:
            raise ValueError("the head is alive: crash it first (cluster.crash_head())")
        survivors = tuple(recover_from) if recover_from is not None else tuple(
            r for r in self.replicas if k.hosts[r].alive)
        if not survivors:
            raise ValueError("no GCS replica survives to recover the head from: place replicas on nodes "
                             "(ClusterLayout.replica_hosts) so that the GCS outlives its head")
        self.head_recoveries += 1
        config = dataclasses.replace(self.layout.head_config(), recover_from=survivors)
        from penumbra.core.head import HeadMachine

        k.restart("head", HeadMachine(config, k.derive_rng(f"head/recovered/{self.head_recoveries}")))
        self.events.append((self.now, "recover", "head"))
        if restart_replicas:
            for r in self.replicas_with_head():
                if not k.hosts[r].alive:
                    self.restart_replica(r)
        return survivors

    def crash_replica(self, address: str, restart_after: float | None = None) -> bool:
        """Crash a GCS replica; with ``restart_after`` it restarts empty and
        joins its chain again (copying the tail's state)."""
        if address not in self.replicas:
            raise ValueError(f"no GCS replica {address!r} (replicas: {self.replicas})")
        ok = self.kernel.crash(address)
        if ok and restart_after is not None:
            self.kernel.call_after(restart_after, self.restart_replica, address)
        return ok

    def restart_replica(self, address: str) -> bool:
        return self.kernel.restart(address, self.restart_factory(address))

    def restart_factory(self, address: str) -> Any:
        """A fresh machine for a restarted host (GCS replicas only).  A
        replica restarts empty: its disk of flushed rows too (``SimGcsDisk``)."""
        if address in self.replicas:
            shard = int(address.split(":")[1])
            self.gcs_disk.forget(address)
            return GcsReplica(address, shard, "head", self.layout.gcs_timing, joining=True)
        if address in self.nodes:
            raise ValueError(f"nodes do not restart under their old address ({address}); use "
                             f"cluster.crash_node({address!r}, restart_after=...) or CrashNode(...)")
        raise ValueError(f"cannot restart {address!r}: only GCS replicas restart in place")

    def kill_worker(self, node: str, worker_id: str, reason: str = "killed by the simulation") -> None:
        """The worker process dies (as if OOM-killed)."""
        n = self.nodes[node]
        w = n.workers.get(worker_id)
        if w is not None and w.alive:
            n._kill(w)
            self.kernel.inject(node, WorkerCrashed(worker_id=worker_id, reason=reason))

    def partition(self, a: Iterable[str], b: Iterable[str] | None = None, duration: float | None = None) -> int:
        net = self.kernel.network
        pid = net.partition(sorted(a), None if b is None else sorted(b))
        self.kernel.note("*", f"partition {sorted(a)} | {'rest' if b is None else sorted(b)}")
        if duration is not None:
            self.kernel.call_after(duration, net.heal, pid)
        return pid

    def isolate(self, address: str, duration: float | None = None) -> int:
        net = self.kernel.network
        pid = net.isolate(address)
        self.kernel.note(address, "isolate")
        if duration is not None:
            self.kernel.call_after(duration, net.heal, pid)
        return pid

    def heal(self, pid: int | None = None) -> None:
        self.kernel.network.heal(pid)
        self.kernel.note("*", "heal")

    def slow(self, address: str, factor: float, duration: float | None = None) -> None:
        """Multiply ``address``'s CPU costs (and, for a node, its workers'
        task times) by ``factor``."""
        k = self.kernel
        before = k.host(address).cpu_factor
        k.slow(address, factor)
        k.note(address, f"slow x{factor:g}")
        if duration is not None:
            k.call_after(duration, k.slow, address, before)

    def pause(self, address: str, duration: float, timers_first: bool = True) -> bool:
        """Stop ``address`` (the head, a node, a GCS replica or a driver) for
        ``duration`` seconds, as SIGSTOP and SIGCONT would (see
        ``SimKernel.pause``): the head's monitor, a node's heartbeats, a
        driver's program stand still; what is sent to it waits.  A node's
        workers carry on.  Returns False if it is down."""
        return self.kernel.pause(address, duration, timers_first)

    def link_fault(self, src: Iterable[str] | None = None, dst: Iterable[str] | None = None, *, drop: float = 0.0,
                   delay: float = 0.0, duplicate: float = 0.0, duration: float | None = None) -> int:
        net = self.kernel.network
        rid = net.add_fault(None if src is None else sorted(src), None if dst is None else sorted(dst),
                            drop=drop, delay=delay, duplicate=duplicate)
        if duration is not None:
            self.kernel.call_after(duration, net.remove_fault, rid)
        return rid

    def stall(self, src: Iterable[str] | None, dst: Iterable[str] | None, duration: float) -> int:
        """The links from ``src`` to ``dst`` stall for ``duration`` seconds
        (as TCP connections may): what is sent on them meanwhile arrives in
        one burst, in the order sent, when the stall ends (a heartbeat storm
        when ``dst`` is the head)."""
        if duration <= 0:
            raise ValueError(f"stall: duration must be > 0 seconds, got {duration!r}")
        net = self.kernel.network
        rid = net.add_fault(None if src is None else sorted(src), None if dst is None else sorted(dst),
                            hold_until=self.now + duration)
        self.kernel.call_after(duration, net.remove_fault, rid)
        return rid

    def install(self, schedule: FaultSchedule, *, offset: float = 0.0) -> Installed:
        """Arm a fault schedule.  ``Crash``/``Restart`` of a node become
        ``CrashNode``/``AddNode`` (nodes come back under new addresses);
        replicas restart in place, empty; ``Crash("head", restart_after)``
        becomes ``CrashHead`` (the head's host, its replicas with it; a
        new head recovers from the survivors)."""
        events = []
        for t, f in schedule:
            if isinstance(f, Crash) and f.address == "head":
                f = CrashHead(f.restart_after)  # (with its replicas; it comes back recovered)
            elif isinstance(f, Crash) and f.address in self.nodes:
                f = CrashNode(f.address, f.restart_after)
            elif isinstance(f, Restart) and f.address in self.nodes:
                f = AddNode(like=f.address)
            events.append((t, f))
        return FaultSchedule(events).install(self.kernel, restart=self.restart_factory, offset=offset)

    def random_faults(self, seed: int, *, horizon: float, start: float = 0.0, protect: Iterable[str] = ("node:0",),
                      replicas: bool = False, **rates: Any) -> FaultSchedule:
        """A schedule drawn from ``seed`` over the current nodes (and the GCS
        replicas with ``replicas=True``), minus ``protect``; ``rates`` as
        ``FaultSchedule.random`` (``crash_rate``, ``restart_after``,
        ``partition_rate``, ``slow_rate``, ``link_fault_rate``, ...)."""
        hosts = list(self.nodes) + (self.replicas if replicas else [])
        return FaultSchedule.random(seed, hosts=hosts, horizon=horizon, start=start, protect=protect, **rates)

    # ------------------------------------------------------------------ kernel hooks
    def _on_crash(self, kernel: SimKernel, address: str) -> None:
        node = self.nodes.get(address)
        if node is None:
            return
        now = kernel.now
        node.crashed(now)
        self.events.append((now, "crash", address))
        for r in sorted(r for r, n in self.replica_node.items() if n == address):
            kernel.crash(r)  # the GCS replicas its host ran die with it
        for d in list(self.drivers.values()):
            if d.node == address and d.alive:
                # (the program hears of it before it stops: what a driver
                # whose daemon died is told)
                d.connection_lost(f"its node {address} crashed")
                kernel.crash(d.address)
        if self.detect == "omniscient":
            kernel.inject("head", NodeDied(node_id=address, stimulus_id=f"node-died:{address}"), at=now + self.detect_delay)

    def _on_restart(self, kernel: SimKernel, address: str) -> None:
        if address in self.replicas:
            self.events.append((kernel.now, "restart", address))
        host = kernel.hosts.get(address)
        if host is not None:
            self._boot(host)

    # ------------------------------------------------------------------ reporting
    def trace_hash(self) -> str:
        t = self.kernel.trace
        return t.hexdigest() if t is not None else ""

    def stats(self) -> dict[str, Any]:
        s = self.kernel.stats()
        s["nodes_alive"] = len(self.alive_nodes())
        s["tasks_finished"] = self.tasks_finished()
        if self.kernel.trace is not None:
            s["trace"] = self.trace_hash()
        return s

    def summary(self, print_it: bool = True) -> str:
        """One line: counters and the trace hash (printed by default)."""
        line = self.kernel.summary(print_it=False) + f" tasks={self.tasks_finished()}"
        if print_it:
            print(line)
        return line

    def validate_all(self) -> None:
        """Check every live machine's invariants now."""
        for h in self.kernel.hosts.values():
            if h.alive and h.machine is not None:
                v = getattr(h.machine, "validate", None)
                if v is not None:
                    v()
