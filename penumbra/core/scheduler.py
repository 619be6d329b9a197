"""The bottom-up scheduler: a local scheduler per node, one global scheduler.

Theory of operation
-------------------
A task goes to the local scheduler of the node where it was submitted.  The
local scheduler keeps it unless one of the paper's three reasons says to
*forward* it to the global scheduler (and the task was not placed here by the
global scheduler already, which would ping-pong):

==============  ===========================================================
reason          when
==============  ===========================================================
infeasible      this node's *total* resources cannot satisfy the request
overloaded      more than ``forward_queue_threshold`` tasks queue here and
                another node is alive
remote_inputs   the inputs held on other nodes total at least
                ``forward_remote_bytes``
spread          the task's strategy is ``"SPREAD"`` (another node is alive)
affinity        the task's strategy is node affinity to another node
==============  ===========================================================

A task in a placement group asks for its bundle's resources under the
group's names (``placement.bundle_request``): only a node holding the
bundle has them, so the rules above (infeasible here: forward) take it
there, and until the group is reserved it waits at the global scheduler.

A kept task moves through these states; each transition is one line of its
story::

    submitted -> waiting (inputs not local) -> ready -> running -> finished
                     |                          ^   |        \\-> failed(reason)
                     \\-> forwarded             |   \\-> retry (worker died)
                                                \\------------/

*ready* tasks are dispatched in FIFO order to idle workers when their
resources fit.  Resources are fixed point (``ResourceSet``): never negative,
never above capacity.  A worker that blocks in ``get`` lends its CPUs back
(otherwise nested tasks deadlock on a small node); when it unblocks it takes
them back if free, and otherwise runs on *debt* that the next releases repay
first.  The invariant, checked by ``validate()``::

    available + sum(held - lent over running workers) - debt == total

The global half (``GlobalScheduler``, ``GlobalConfig``, ``Rng``) lives in
core/global_scheduler.py and is re-exported here.  The records of tasks and
workers and their states are in core/scheduler_records.py; what actors and
placement group bundles take from the pool is ``ResourceLending``
(core/scheduler_lending.py), a base class of ``LocalScheduler``.  The
scheduler knows its node as ``NodeEffects`` (core/node_effects.py).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# (re-exported; _outlives_job is shared with the global scheduler, which owns it)
from .global_scheduler import GlobalConfig, GlobalScheduler, Rng, _outlives_job
from .gpus import GpuInstances
from .ids import ObjectId, TaskId
from .messages import (
    Command,
    Execute,
    ForwardTask,
    InterruptTask,
    KillWorker,
    Log,
    Send,
    SetTimer,
    StartWorker,
)
from .placement import SPREAD, OnNode
from .records import ErrorInfo, ErrorKind, NodeLoad, ObjectEntry, ObjectInfo
from .scheduler_lending import ResourceLending
# (the states are also read by verification/bugs.py through this module)
from .scheduler_records import ACTOR, BUSY, IDLE, LEASED, LOCATING, NO_INPUTS, READY, RUNNING, STARTING, WAITING, _Task, _Worker
from .specs import EMPTY, ResourceSet, TaskSpec
from .tables import AddTask, RetryTask

if TYPE_CHECKING:
    from .node_effects import NodeEffects

__all__ = ["SchedulerConfig", "LocalScheduler", "GlobalScheduler", "GlobalConfig", "Rng"]


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    forward_queue_threshold: int = 100
    forward_remote_bytes: int = 100 * 1024 * 1024
    max_workers: int = 0  # 0: 4 x CPUs (at least 4); blocked workers don't count
    prestart_workers: int = -1  # -1: one per CPU
    heartbeat_interval: float = 0.1
    ema_alpha: float = 0.2
    worker_retry_after: float = 0.5
    history_limit: int = 100_000  # finished tasks remembered (for stories)


class LocalScheduler(ResourceLending):
    """A node's local scheduler and worker pool.  Part of ``NodeMachine``."""

    def __init__(self, node: "NodeEffects", resources: ResourceSet, config: SchedulerConfig) -> None:
        self.node = node
        # each step of a task's story, kept by the node (bound once: it runs
        # several times per task)
        self._story = node.story_add
        self.config = config
        self.total = resources
        self.available = resources
        self.debt = EMPTY
        self.tasks: dict[TaskId, _Task] = {}
        self.ready: dict[ResourceSet, deque[TaskId]] = {}  # per resource shape, FIFO
        self.workers: dict[str, _Worker] = {}
        self.gpus = GpuInstances(resources.units("GPU"))
        self.busy = 0  # workers in state BUSY (kept, not counted: the forwarding rule asks per submit)
        self.idle: deque[str] = deque()
        self.next_worker = 0
        self.pending_starts = 0
        self.retry_armed = False
        self.done: OrderedDict[TaskId, str] = OrderedDict()  # task -> 'finished'|'failed:...'|'forwarded'
        self.mean_task_time = 0.0
        self.finished_count = 0
        self.failed_count = 0
        self.forwarded_count = 0
        self.other_nodes_alive = 0
        self._locating: dict[TaskId, dict[ObjectId, ObjectEntry]] = {}
        # restarts of an actor whose older creation was already running here
        # when the head restarted it: started once that creation is over
        self.restart_after: dict[TaskId, Any] = {}
        cpus = resources.get("CPU")
        # placement groups (core/placement.py): the resources set apart for
        # bundles, and the names of released groups still held by workers
        # being killed (dropped, not freed, when they come back)
        self.bundled = EMPTY
        self.gone: set[str] = set()
        self.max_workers = config.max_workers or max(4, int(4 * cpus))
        self.prestart = config.prestart_workers if config.prestart_workers >= 0 else max(1, int(cpus))

    # ------------------------------------------------------------------ setup
    def start(self, now: float) -> list[Command]:
        cmds: list[Command] = []
        for _ in range(min(self.prestart, self.max_workers)):
            cmds.append(self._start_worker("prestart"))
        return cmds

    def _start_worker(self, sid: str) -> StartWorker:
        wid = f"{self.node.node_id}/w{self.next_worker}"
        self.next_worker += 1
        self.workers[wid] = _Worker(wid, STARTING)
        self.pending_starts += 1
        return StartWorker(worker_id=wid, stimulus_id=sid)

    @property
    def queue_length(self) -> int:
        return len(self.tasks) - self.running_count

    @property
    def running_count(self) -> int:
        return self.busy

    def load(self) -> NodeLoad:
        running = self.running_count
        return NodeLoad(
            queue_length=len(self.tasks) - running,
            running=running,
            available=self.available,
            total=self.total,
            mean_task_time=self.mean_task_time,
            store_used=self.node.objects.store.used,
            store_capacity=self.node.objects.store.capacity,
            num_workers=len(self.workers),
        )

    def _remember(self, tid: TaskId, outcome: str) -> None:
        self.done[tid] = outcome
        if len(self.done) > self.config.history_limit:
            self.done.popitem(last=False)

    # ------------------------------------------------------------------ submission
    def submit(self, spec: TaskSpec, now: float, sid: str, placed: bool = False, attempt: int = 0,
               record: bool = True, reconstruction: bool = False, actor: Any = None) -> list[Command]:
        tid = spec.task_id
        if tid in self.tasks:
            if actor is not None:
                return self._newer_start(self.tasks[tid], actor, now, sid)
            t = self.tasks[tid]
            if attempt > t.attempt:
                # The head handed this task on as a newer attempt (the node
                # that had it died) while a re-executed parent submitted it
                # here again: this copy is that attempt now.  Else its end,
                # recorded as the older attempt, is stale against the GCS
                # row, which stays pending for good (swarm plan 9619).
                t.attempt = attempt
                self._story(tid, now, sid, f"placed again as attempt={attempt}: this copy is that attempt")
            return []  # already here (a duplicate placement)
        self.done.pop(tid, None)
        cmds: list[Command] = []
        if record:
            cmds += self.node.gcs_write(AddTask(spec, self.node.node_id), None, now, sid)
        self._story(tid, now, sid, f"submitted{' (placed)' if placed else ''} attempt={attempt}")
        if not placed:
            reason = None
            if not spec.resources.is_subset_of(self.total):
                reason = "infeasible"
            elif spec.scheduling is not None:
                reason = self._strategy_reason(spec)
            if reason is None and self.other_nodes_alive and self.queue_length >= self.config.forward_queue_threshold:
                reason = "overloaded"
            if reason is not None:
                return cmds + self._forward(spec, reason, attempt, now, sid, reconstruction)
        elif not spec.resources.is_subset_of(self.total):
            return cmds + self._forward(spec, "infeasible", attempt, now, sid, reconstruction)
        t = _Task(spec, WAITING, attempt=attempt, placed=placed, reconstruction=reconstruction, actor=actor)
        self.tasks[tid] = t
        return cmds + self._resolve_inputs(t, now, sid)

    def _strategy_reason(self, spec: TaskSpec) -> str | None:
        """Whether a scheduling strategy sends the task to the global
        scheduler: SPREAD does (it picks among nodes), and node affinity to
        another node does."""
        s = spec.scheduling
        if s == SPREAD:
            return "spread" if self.other_nodes_alive else None
        if isinstance(s, OnNode) and s.node_id != self.node.node_id:
            return "affinity"
        return None

    def _newer_start(self, t: _Task, actor: Any, now: float, sid: str) -> list[Command]:
        """The head restarted an actor (a kill, a lost node) while an older
        creation of it is still here: this node creates the newer
        incarnation instead -- at once if the old creation has not started,
        else when it is over (it then fails its alive-CAS and stops).
        Without this the newer start is taken for a duplicate and lost."""
        have = t.actor.entry.incarnation if t.actor is not None else 0
        if actor.entry.incarnation <= have:
            return []  # a duplicate of the start we have
        tid = t.spec.task_id
        if t.state == RUNNING:
            self.restart_after[tid] = actor
            self._story(tid, now, sid, f"incarnation {actor.entry.incarnation} starts after the running creation")
        else:
            t.actor = actor
            t.placed = True
            self._story(tid, now, sid, f"now creates incarnation {actor.entry.incarnation}")
        return []

    def _creation_over(self, tid: TaskId, now: float, sid: str) -> list[Command]:
        actor = self.restart_after.pop(tid, None)
        if actor is None:
            return []
        return self.submit(actor.entry.creation, now, sid, placed=True, record=False, actor=actor)

    def _resolve_inputs(self, t: _Task, now: float, sid: str) -> list[Command]:
        deps = t.spec.dependencies
        if not deps:
            return self._make_ready(t, now, sid)
        objects = self.node.objects
        missing = {d for d in deps if not objects.is_local(d)}
        if not missing:
            # an input that holds an error fails the task with that error
            # (the first such input in argument order, as a worker reading
            # its arguments in order would see)
            err = self._first_input_error(t)
            if err is not None:
                return self._fail(t, err[1], now, sid, f"input {err[0].short()} holds an error")
        # inputs stay pinned from the moment they are here until the task
        # ends: a put object whose refs the driver dropped right after the
        # call must not be evicted while the task waits for a CPU
        store = objects.store
        holder = ("task", t.spec.task_id)
        for d in deps:
            if d not in missing and d in store.objects:
                store.pin(d, holder)
        if not missing:
            return self._make_ready(t, now, sid)
        t.missing = missing
        cmds: list[Command] = []
        locate_first = (
            not t.placed and self.other_nodes_alive and self.config.forward_remote_bytes > 0
        )
        t.state = LOCATING if locate_first else WAITING
        token = ("task", t.spec.task_id)
        for d in sorted(missing):
            cmds += objects.want(d, token, not locate_first, now, sid)
            if t.state not in (LOCATING, WAITING) or t.spec.task_id not in self.tasks:
                break  # resolved synchronously (or failed)
        return cmds

    def on_located(self, tid: TaskId, oid: ObjectId, entry: ObjectEntry, now: float, sid: str) -> list[Command]:
        """A dependency's row is known (locate phase, before fetching)."""
        t = self.tasks.get(tid)
        if t is None or t.state != LOCATING:
            return []
        # rows of the inputs located so far (kept off the hot path)
        self._locating.setdefault(tid, {})[oid] = entry
        return self._decide_locality(t, now, sid)

    def _decide_locality(self, t: _Task, now: float, sid: str) -> list[Command]:
        """Once every input still missing is located: forward the task if
        its remote inputs are large, else fetch them here."""
        tid = t.spec.task_id
        sizes = self._locating.get(tid, {})
        if any(d not in sizes for d in t.missing):
            return []
        self._locating.pop(tid, None)
        remote = sum(sizes[d].size for d in t.missing)
        objects = self.node.objects
        token = ("task", tid)
        if remote >= self.config.forward_remote_bytes:
            cmds: list[Command] = []
            for d in t.missing:
                cmds += objects.unwant(d, token, now, sid)
            self._unpin_inputs(t)
            del self.tasks[tid]
            return cmds + self._forward(t.spec, "remote_inputs", t.attempt, now, sid, t.reconstruction)
        t.state = WAITING
        cmds = []
        for d in sorted(t.missing):
            cmds += objects.want(d, token, True, now, sid)
        return cmds

    def on_input_ready(self, tid: TaskId, oid: ObjectId, info: ObjectInfo, now: float, sid: str) -> list[Command]:
        t = self.tasks.get(tid)
        if t is None or oid not in t.missing:
            return []
        t.missing.discard(oid)
        if info.error is not None:
            if t.errors is None:
                t.errors = {}
            t.errors[oid] = info.error
        store = self.node.objects.store
        if oid in store.objects:
            store.pin(oid, ("task", tid))
        if not t.missing and (t.errors or any(self.node.objects.error_of(d) for d in t.spec.dependencies)):
            # every input is in and some hold errors: fail with the first
            # one in argument order (found by the swarm: the cause picked
            # depended on which failed input arrived first)
            err = self._first_input_error(t)
            return self._fail(t, err[1], now, sid, f"input {err[0].short()} holds an error")
        if t.missing:
            if t.state == LOCATING:
                # the inputs left may all be located already (found by the
                # swarm: a task waited forever once its other inputs arrived)
                return self._decide_locality(t, now, sid)
            return []
        self._locating.pop(tid, None)
        return self._make_ready(t, now, sid)

    def _first_input_error(self, t: _Task) -> tuple[ObjectId, ErrorInfo] | None:
        objects = self.node.objects
        for d in t.spec.dependencies:
            err = objects.error_of(d) or (t.errors.get(d) if t.errors else None)
            if err is not None:
                return d, err
        return None

    def _make_ready(self, t: _Task, now: float, sid: str) -> list[Command]:
        t.state = READY
        t.missing = NO_INPUTS  # (shared: see _Task.missing)
        q = self.ready.get(t.spec.resources)
        if q is None:
            q = self.ready[t.spec.resources] = deque()
        q.append(t.spec.task_id)
        self._story(t.spec.task_id, now, sid, "ready")
        return self.dispatch(now, sid)

    def _forward(self, spec: TaskSpec, reason: str, attempt: int, now: float, sid: str, reconstruction: bool = False) -> list[Command]:
        self.forwarded_count += 1
        self._remember(spec.task_id, "forwarded")
        self._story(spec.task_id, now, sid, f"forwarded ({reason})")
        cmds = self.node.objects.producer_left(spec.return_ids, now, sid)
        return cmds + [Send(to=self.node.head, msg=ForwardTask(spec=spec, from_node=self.node.node_id, reason=reason, attempt=attempt, stimulus_id=sid))]

    # ------------------------------------------------------------------ dispatch
    def dispatch(self, now: float, sid: str) -> list[Command]:
        """Run ready tasks while resources and workers allow.

        Ready tasks wait in one FIFO queue per resource shape (Ray's
        scheduling classes), so a task that does not fit never makes the
        scheduler rescan the tasks queued behind it.
        """
        cmds: list[Command] = []
        ready = self.ready
        if not ready:
            return cmds
        for req in list(ready):
            q = ready[req]
            gpu = req.units("GPU")
            while q:
                if not req.is_subset_of(self.available):
                    break
                gpus = self.gpus.pick(gpu) if gpu else ()
                if gpus is None:
                    break  # the units are there but not on whole instances (see gpus.py)
                tid = q[0]
                t = self.tasks.get(tid)
                if t is None or t.state != READY:
                    q.popleft()
                    continue
                if not self.idle:
                    # start only as many workers as could run tasks right now
                    room = self.max_workers - self._alive_pool()
                    cpu = req.units("CPU")
                    fits = len(q) if cpu == 0 else min(len(q), self.available.units("CPU") // cpu)
                    # (room already counts the workers being started)
                    for _ in range(max(0, min(fits - self.pending_starts, room))):
                        cmds.append(self._start_worker(sid))
                    return cmds
                q.popleft()
                cmds += self._run(t, self.idle.popleft(), gpus, now, sid)
            if not q:
                del ready[req]
        return cmds

    def _alive_pool(self) -> int:
        return sum(1 for w in self.workers.values() if w.state != ACTOR and not w.blocked)

    def _run(self, t: _Task, wid: str, gpus: tuple, now: float, sid: str) -> list[Command]:
        w = self.workers[wid]
        req = t.spec.resources
        self.available = self.available - req
        w.state = BUSY
        self.busy += 1
        w.task = t.spec.task_id
        w.held = req
        t.state = RUNNING
        t.worker = wid
        t.started_at = now
        gpu_ids: tuple[int, ...] = ()
        if gpus:
            self.gpus.take(wid, gpus)
            gpu_ids = tuple(i for i, _ in gpus)
            self._story(t.spec.task_id, now, sid, f"running on {wid} attempt={t.attempt} GPUs {list(gpu_ids)}")
        else:
            self._story(t.spec.task_id, now, sid, f"running on {wid} attempt={t.attempt}")
        checkpoint = t.actor.checkpoint if t.actor is not None else None
        return [Execute(worker_id=wid, spec=t.spec, attempt=t.attempt, checkpoint=checkpoint, gpu_ids=gpu_ids, stimulus_id=sid)]

    def _release(self, w: _Worker, keep_gpus: bool = False) -> None:
        """What ``w``'s task held goes back (its GPU instances too, unless
        they stay with the actor it just created)."""
        if self.gpus.held and not keep_gpus:
            self.gpus.give_back(w.worker_id)
        give = w.held - w.lent
        if self.gone:
            give = self._drop_gone(give)
        if not self.debt.is_empty():
            pay = give.min_with(self.debt)
            self.debt = self.debt - pay
            give = give - pay
        self.available = self.available + give
        w.held = EMPTY
        w.lent = EMPTY
        w.blocked = False

    def _unpin_inputs(self, t: _Task) -> None:
        store = self.node.objects.store
        holder = ("task", t.spec.task_id)
        for d in t.spec.dependencies:
            store.unpin(d, holder)

    # ------------------------------------------------------------------ workers
    def on_worker_started(self, wid: str, now: float, sid: str) -> list[Command]:
        w = self.workers.get(wid)
        if w is None or w.state != STARTING:
            return []
        self.pending_starts -= 1
        w.state = IDLE
        self.idle.append(wid)
        return self.dispatch(now, sid)

    def on_worker_start_failed(self, wid: str, reason: str, now: float, sid: str) -> list[Command]:
        w = self.workers.pop(wid, None)
        if w is None:
            return []
        self.pending_starts -= 1
        cmds: list[Command] = [Log(level="warning", text=f"node {self.node.node_id}: worker {wid} failed to start: {reason}", stimulus_id=sid)]
        if not self.retry_armed:
            self.retry_armed = True
            cmds.append(SetTimer(at=now + self.config.worker_retry_after, key=("sched", "retry")))
        return cmds

    def on_retry_timer(self, now: float, sid: str) -> list[Command]:
        self.retry_armed = False
        return self.dispatch(now, sid)

    def on_blocked(self, wid: str, now: float, sid: str) -> list[Command]:
        w = self.workers.get(wid)
        if w is None or w.state != BUSY or w.blocked:
            return []
        w.blocked = True
        lend = w.held.only([n for n in w.held.names() if n == "CPU" or n.startswith("CPU_group_")])
        w.lent = lend
        give = lend
        if not self.debt.is_empty():
            # a worker that came back from an earlier block on debt has not
            # really got its CPU back: what it lends repays the debt first
            pay = give.min_with(self.debt)
            self.debt = self.debt - pay
            give = give - pay
        self.available = self.available + give
        if w.task is not None:
            self._story(w.task, now, sid, f"worker {wid} blocked in get; lent {lend}")
        return self.dispatch(now, sid)

    def on_unblocked(self, wid: str, now: float, sid: str) -> list[Command]:
        w = self.workers.get(wid)
        if w is None or not w.blocked:
            return []
        w.blocked = False
        lent = self._drop_gone(w.lent) if self.gone else w.lent
        take = lent.min_with(self.available)
        self.available = self.available - take
        self.debt = self.debt + (lent - take)
        w.lent = EMPTY
        return []

    def on_worker_crashed(self, wid: str, reason: str, now: float, sid: str) -> list[Command]:
        w = self.workers.pop(wid, None)
        if w is None:
            return []
        if w.state == STARTING:
            self.pending_starts -= 1
        elif w.state == BUSY:
            self.busy -= 1
        try:
            self.idle.remove(wid)
        except ValueError:
            pass
        cmds: list[Command] = []
        tid = w.task
        self._release(w)
        if tid is not None:
            t = self.tasks.get(tid)
            if t is not None:
                self._unpin_inputs(t)
                if t.cancelled:
                    cmds += self._fail(t, ErrorInfo(ErrorKind.TASK_CANCELLED, f"task {t.spec.display_name()} was cancelled", task_name=t.spec.display_name()), now, sid, "cancelled (worker killed)")
                elif t.actor is not None or t.spec.is_actor_creation:
                    cmds += self._fail(t, ErrorInfo(ErrorKind.ACTOR_DIED, f"the worker creating actor {t.spec.display_name()} died: {reason}", task_name=t.spec.display_name()), now, sid, f"creation worker died: {reason}")
                else:
                    cmds += self._retry_or_fail(
                        t, ErrorInfo(ErrorKind.WORKER_CRASHED, f"the worker running {t.spec.display_name()} died: {reason}", task_name=t.spec.display_name()),
                        now, sid, f"worker {wid} died: {reason}",
                    )
        # keep the prestarted pool alive
        if self._alive_pool() + self.pending_starts < self.prestart:
            cmds.append(self._start_worker(sid))
        return cmds + self.dispatch(now, sid)

    def _retry_or_fail(self, t: _Task, error: ErrorInfo, now: float, sid: str, why: str) -> list[Command]:
        limit = t.spec.max_retries
        if limit < 0 or t.attempt < limit:
            tid = t.spec.task_id
            t.attempt += 1
            t.state = WAITING
            t.worker = None
            t.errors = None
            self._story(tid, now, sid, f"retry {t.attempt} after: {why}")
            cmds = self.node.gcs_write(RetryTask(tid, self.node.node_id, attempt=t.attempt), None, now, sid)
            return cmds + self._resolve_inputs(t, now, sid)
        return self._fail(t, error, now, sid, why)

    # ------------------------------------------------------------------ completion
    def on_task_finished(self, wid: str, tid: TaskId, outputs, duration: float, now: float, sid: str) -> list[Command]:
        w = self.workers.get(wid)
        t = self.tasks.get(tid)
        if w is None or t is None or w.task != tid:
            return []
        # (an actor's creation keeps its GPUs: they are the actor's now)
        self._release(w, keep_gpus=t.spec.is_actor_creation and not t.cancelled)
        w.task = None
        if w.state == BUSY:
            self.busy -= 1
        self._unpin_inputs(t)
        elapsed = duration if duration > 0 else now - t.started_at
        a = self.config.ema_alpha
        self.mean_task_time = elapsed if self.finished_count == 0 else (1 - a) * self.mean_task_time + a * elapsed
        if t.cancelled:
            w.state = IDLE
            self.idle.append(wid)
            return self._fail(t, ErrorInfo(ErrorKind.TASK_CANCELLED, f"task {t.spec.display_name()} was cancelled", task_name=t.spec.display_name()), now, sid, "cancelled") + self.dispatch(now, sid)
        if t.spec.is_actor_creation:
            # the worker now belongs to the actor; the node's actor host takes it
            w.state = ACTOR
            del self.tasks[tid]
            self.finished_count += 1
            self._remember(tid, "finished")
            self._story(tid, now, sid, f"actor created on {wid}")
            cmds = self.node.actor_created(t.spec, t.actor, wid, now, sid)
            cmds += self._creation_over(tid, now, sid)
            return cmds + self.dispatch(now, sid)
        w.state = IDLE
        self.idle.append(wid)
        cmds = self.node.store_outputs(t.spec, outputs, t.attempt, now, sid)
        del self.tasks[tid]
        self.finished_count += 1
        self._remember(tid, "finished")
        self._story(tid, now, sid, "finished")
        return cmds + self.dispatch(now, sid)

    def on_task_raised(self, wid: str, tid: TaskId, error: ErrorInfo, retryable: bool, now: float, sid: str) -> list[Command]:
        w = self.workers.get(wid)
        t = self.tasks.get(tid)
        if w is None or t is None or w.task != tid:
            return []
        self._release(w)
        w.task = None
        if w.state == BUSY:
            self.busy -= 1
        w.state = IDLE
        self.idle.append(wid)
        self._unpin_inputs(t)
        if t.spec.is_actor_creation:
            cmds = self.node.actor_creation_failed(t.spec, t.actor, error, now, sid)
            del self.tasks[tid]
            self.failed_count += 1
            self._remember(tid, f"failed:{error.kind.value}")
            cmds += self._creation_over(tid, now, sid)
            return cmds + self.dispatch(now, sid)
        if retryable and not t.cancelled and error.kind is ErrorKind.TASK_ERROR:
            cmds = self._retry_or_fail(t, error, now, sid, "the task raised (retry_exceptions)")
        else:
            cmds = self._fail(t, error, now, sid, f"raised {error.kind.value}")
        return cmds + self.dispatch(now, sid)

    def _fail(self, t: _Task, error: ErrorInfo, now: float, sid: str, why: str) -> list[Command]:
        tid = t.spec.task_id
        cmds: list[Command] = []
        if t.state in (WAITING, LOCATING):
            token = ("task", tid)
            for d in sorted(t.missing):
                cmds += self.node.objects.unwant(d, token, now, sid)
        self._unpin_inputs(t)
        self.tasks.pop(tid, None)
        self._locating.pop(tid, None)
        self.failed_count += 1
        self._remember(tid, f"failed:{error.kind.value}")
        self._story(tid, now, sid, f"failed: {why}")
        if t.spec.is_actor_creation:
            cmds += self.node.actor_creation_failed(t.spec, t.actor, error, now, sid)
            return cmds + self._creation_over(tid, now, sid)
        return cmds + self.node.fail_outputs(t.spec, error, t.attempt, now, sid)

    # ------------------------------------------------------------------ cancel
    def cancel(self, tid: TaskId, force: bool, now: float, sid: str) -> tuple[bool, list[Command]]:
        t = self.tasks.get(tid)
        if t is None:
            return False, []
        err = ErrorInfo(ErrorKind.TASK_CANCELLED, f"task {t.spec.display_name()} was cancelled", task_name=t.spec.display_name())
        if t.state != RUNNING:
            return True, self._fail(t, err, now, sid, "cancelled while queued")
        t.cancelled = True
        self._story(tid, now, sid, f"cancel requested (force={force})")
        if force:
            return True, [KillWorker(worker_id=t.worker, reason="task cancelled with force=True", stimulus_id=sid)]
        return True, [InterruptTask(worker_id=t.worker, task_id=tid, stimulus_id=sid)]

    # ------------------------------------------------------------------ job end
    def end_job(self, job_id: int, now: float, sid: str) -> list[Command]:
        """Job ``job_id`` ended (its driver exited): drop its queued tasks,
        kill the workers running its tasks, and give their resources back
        now (Ray's rule).  Nested tasks carry their job's id, so they go too;
        the creation of a detached actor does not (it outlives its job).
        Nothing is written to the GCS: the job's rows are forgotten once
        every node has done this, and a killed worker's crash report finds
        its worker gone (no retry)."""
        cmds: list[Command] = []
        ended = [t for t in self.tasks.values() if t.spec.job_id == job_id and not _outlives_job(t.spec)]
        if not ended:
            return cmds
        objects = self.node.objects
        for t in ended:
            tid = t.spec.task_id
            if t.state == RUNNING:
                w = self.workers.pop(t.worker)
                self._release(w)
                if w.state == BUSY:
                    self.busy -= 1
                cmds.append(KillWorker(worker_id=w.worker_id, reason=f"job {job_id} ended (its driver exited)", stimulus_id=sid))
            elif t.state in (WAITING, LOCATING):
                token = ("task", tid)
                for d in sorted(t.missing):
                    cmds += objects.unwant(d, token, now, sid)
            self._unpin_inputs(t)
            del self.tasks[tid]
            self._locating.pop(tid, None)
            self.restart_after.pop(tid, None)
            self._remember(tid, "cancelled:job-ended")
            self._story(tid, now, sid, f"dropped: job {job_id} ended")
        for req in list(self.ready):
            q = deque(tid for tid in self.ready[req] if tid in self.tasks)
            if q:
                self.ready[req] = q
            else:
                del self.ready[req]
        # keep the prestarted pool alive (the killed workers' crash reports
        # will find them gone)
        for _ in range(max(0, self.prestart - self._alive_pool())):
            cmds.append(self._start_worker(sid))
        return cmds + self.dispatch(now, sid)

    # ------------------------------------------------------------------ checks
    def state_of(self, tid: TaskId) -> str | None:
        t = self.tasks.get(tid)
        if t is not None:
            return t.state
        return self.done.get(tid)

    def validate(self, actor_held: ResourceSet = EMPTY) -> None:
        assert self.available.is_nonnegative(), f"negative available resources {self.available}"
        assert self.available.is_subset_of(self.total), f"available {self.available} above total {self.total}"
        assert self.debt.is_nonnegative()
        in_use = EMPTY
        for w in self.workers.values():
            if w.state == BUSY or w.state == LEASED:
                in_use = in_use + (w.held - w.lent)
        if self.gone:
            in_use = self._drop_gone(in_use)
            actor_held = self._drop_gone(actor_held)
        lhs = self.available + in_use + actor_held + self.bundled - self.debt
        assert lhs == self.total, f"resource leak: available {self.available} + in use or leased {in_use} + actors {actor_held} + bundles {self.bundled} - debt {self.debt} != total {self.total}"
        assert self.bundled.is_nonnegative() and self.bundled.is_subset_of(self.total), f"bundles hold {self.bundled}, more than the node's total {self.total}"
        running = {w.task for w in self.workers.values() if w.state == BUSY}
        for tid, t in self.tasks.items():
            assert t.state in (WAITING, LOCATING, READY, RUNNING), t.state
            assert (t.state == RUNNING) == (tid in running), f"{tid} state {t.state} vs workers"
            assert tid not in self.done, f"{tid} both live and done"
        assert self.pending_starts == sum(1 for w in self.workers.values() if w.state == STARTING)
        assert self.busy == sum(1 for w in self.workers.values() if w.state == BUSY), "busy worker count is off"
        self.gpus.validate()
        for wid in self.gpus.held:
            w = self.workers.get(wid)
            assert w is not None and w.state in (BUSY, ACTOR, LEASED), f"GPUs held by {wid}, which runs nothing"
        for tid in self.restart_after:
            assert tid in self.tasks and self.tasks[tid].state == RUNNING, f"deferred restart of {tid} without its running creation"
        for wid in self.idle:
            assert self.workers[wid].state == IDLE
