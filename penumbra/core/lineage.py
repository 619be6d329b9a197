"""Lineage-based recovery: which tasks to re-run to rebuild lost objects.

Theory of operation
-------------------
The GCS task table is the lineage: every task's spec names the objects it
consumed.  When an object is lost (every copy was on nodes that died, or was
evicted), the objects it was computed from may be lost too, and so on up the
graph.  ``plan_reconstruction`` is the pure decision: given the lost objects
wanted and what is known of the lineage, the *minimal* set of tasks to re-run
is the producers of the wanted lost objects plus, recursively, the producers
of their lost inputs; nothing whose output still exists anywhere is re-run.
The tasks come back in topological order (networkx), producers first.

``Recovery`` (in the head) gathers that lineage from the GCS.  It starts from
a ``ReconstructObject`` request and walks up by reading object rows and task
rows until every frontier object is either available or a lost object whose
producing task is known, then plans and re-submits through the global
scheduler.  Rules:

* ``put`` objects have no lineage: losing one is final (``ObjectLostError``);
* outputs of actor methods are not rebuilt (Ray's rule; the actor's own
  recovery, with ``replay``, re-creates those of the calls it replays, i.e.
  the calls since the checkpoint it restarts from: a checkpoint ends the
  lineage of the calls before it, whose lost outputs raise
  ``ObjectLostError``);
* each re-execution spends the task's ``max_retries`` budget; a task without
  budget left fails its outputs with ``ObjectLostError`` naming the cause, and
  everything downstream fails with it;
* at most one reconstruction per object is in flight; requests for an object
  already being rebuilt are folded into it;
* a task of a job that ended is never re-run (its driver is gone, and its
  rows are about to leave the GCS).

Tasks pending on a node that dies are re-submitted the same way (also
spending the budget); once the budget is gone their outputs hold
``NodeDiedError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

from msgspec.structs import replace  # (records are Structs)

from .ids import ObjectId, TaskId
from .messages import Command, ObjectUnrecoverable, Send
from .records import ActorEntry, ActorState, ErrorInfo, ErrorKind, ObjectEntry, TaskEntry, TaskState
from .specs import TaskSpec
from .tables import FinishTask, Get, RetryTask, TasksOnNode

if TYPE_CHECKING:
    from .head_services import HeadServices

__all__ = ["plan_reconstruction", "LineageCycleError", "Recovery"]


class LineageCycleError(ValueError):
    """The lineage has a cycle; ids are hashes so this means corrupt input."""


def plan_reconstruction(
    wanted: Iterable[ObjectId],
    specs: dict[TaskId, TaskSpec],
    lost: set[ObjectId],
) -> list[TaskId]:
    """The tasks to re-run, producers first, to rebuild ``wanted``.

    Args:
        wanted: lost objects someone needs.
        specs: the known lineage: task id -> spec, for at least the producers
            of every lost object reachable from ``wanted``.
        lost: every object known to be lost (created once, no copy left).

    Raises:
        KeyError: a needed producer's spec is missing from ``specs``.
        LineageCycleError: the lineage is not a DAG.
    """
    import networkx as nx  # imported here: it is slow to import and rarely needed

    graph = nx.DiGraph()
    frontier = [o.task_id for o in wanted if o in lost]
    seen: set[TaskId] = set()
    while frontier:
        tid = frontier.pop()
        if tid in seen:
            continue
        seen.add(tid)
        graph.add_node(tid)
        for dep in specs[tid].dependencies:
            if dep in lost:
                producer = dep.task_id
                graph.add_edge(producer, tid)
                frontier.append(producer)
    try:
        return list(nx.lexicographical_topological_sort(graph))
    except nx.NetworkXUnfeasible as e:
        raise LineageCycleError(f"lineage cycle among {sorted(t.short() for t in graph)}") from e


@dataclass(slots=True)
class _Job:
    """One reconstruction: the lineage walk in progress."""

    target: ObjectId
    requesters: set[str]
    objects: dict[ObjectId, ObjectEntry | None] = field(default_factory=dict)
    tasks: dict[TaskId, TaskEntry | None] = field(default_factory=dict)
    reads: int = 0


def _actor_output_lost(oid: ObjectId, a: ActorEntry | None) -> str:
    """What the user reads when an actor method's output is gone for good:
    what was lost, how, and why nothing rebuilds it (``a``: the actor's
    row, None if the GCS no longer has it)."""
    name = f"actor {a.spec.cls.name}" if a is not None else "an actor"
    head = (f"object {oid.short()}, returned by a method of {name}, was lost: every copy of it was evicted "
            f"from a full object store or was on a node that died, and lineage does not rebuild the outputs "
            f"of actor methods")
    if a is None:
        why = "the actor is no longer known to the GCS"
    elif a.state is ActorState.DEAD:
        why = "the actor is dead, so nothing can run the call again"
    elif not a.spec.replay:
        why = "the actor keeps no replay log (replay=False), so the call is never run again (Ray's rule)"
    else:
        why = ("the actor replays logged calls only when it restarts, and then only those after its latest "
               "checkpoint, so the call is not run again while it lives")
    return (f"{head}; {why}. Read an actor's results (or pass them on) while the store holds them, or give "
            f"the node a larger object_store_memory")


class Recovery:
    def __init__(self, head: "HeadServices") -> None:
        self.head = head
        self.jobs: dict[ObjectId, _Job] = {}
        self.rebuilding: dict[TaskId, float] = {}  # task -> when re-submitted
        self.rebuild_attempt: dict[TaskId, int] = {}  # task -> attempt of the re-run
        self.rebuild_timeout = 30.0
        self.reexecuted = 0
        self.resubmitted = 0
        self.pending_scans: list[tuple[str, int, str]] = []

    # ------------------------------------------------------------------ lost objects
    def on_request(self, oid: ObjectId, requester: str, now: float, sid: str) -> list[Command]:
        job = self.jobs.get(oid)
        if job is not None:
            job.requesters.add(requester)
            return []
        since = self.rebuilding.get(oid.task_id)
        if since is not None and now - since < self.rebuild_timeout:
            return []  # its producer is being re-run already
        if oid.is_put:
            return [self._unrecoverable(oid, requester, ErrorInfo(
                ErrorKind.OBJECT_LOST,
                f"object {oid.short()} was created by put() and its only copies were lost; "
                f"put objects have no lineage to rebuild them from",
            ), sid)]
        job = self.jobs[oid] = _Job(oid, {requester})
        return self._read_object(job, oid, now, sid)

    def _unrecoverable(self, oid: ObjectId, node: str, error: ErrorInfo, sid: str) -> Send:
        return Send(to=node, msg=ObjectUnrecoverable(object_id=oid, error=error, stimulus_id=sid))

    def _read_object(self, job: _Job, oid: ObjectId, now: float, sid: str) -> list[Command]:
        job.objects[oid] = None
        job.reads += 1
        return self.head.gcs.read(Get("objects", oid), ("rec-obj", job.target, oid), now, sid)

    def _read_task(self, job: _Job, tid: TaskId, now: float, sid: str) -> list[Command]:
        job.tasks[tid] = None
        job.reads += 1
        return self.head.gcs.read(Get("tasks", tid), ("rec-task", job.target, tid), now, sid)

    def _lost(self, entry: ObjectEntry | None) -> bool:
        if entry is None or not entry.created or entry.error is not None:
            return False
        dead = self.head.dead_nodes
        return not any(n not in dead for n in entry.locations)

    def on_object_row(self, target: ObjectId, oid: ObjectId, entry: ObjectEntry | None, now: float, sid: str) -> list[Command]:
        job = self.jobs.get(target)
        if job is None:
            return []
        job.reads -= 1
        job.objects[oid] = entry
        cmds: list[Command] = []
        if entry is not None and entry.actor_id is not None and self._lost(entry):
            # an actor method's output: no lineage of its own.  An actor with
            # replay rebuilds it when a restart replays the call: one under
            # way, or the live incarnation's own replay.  A call from before
            # the checkpoint the live incarnation started from is replayed by
            # no restart (checkpoints only move forward): its output is gone,
            # as is every output of any other actor (Ray's rule).  (Found by
            # the swarm, seed 959: such outputs were waited for forever.)
            a = self.head.actors.actors.get(entry.actor_id)
            if a is not None and a.spec.replay and (
                    a.state in (ActorState.PENDING, ActorState.RESTARTING)
                    or (a.state is ActorState.ALIVE and self.head.actors.replays(entry.actor_id, a.incarnation, oid.task_id))):
                job.objects[oid] = None  # not lost for planning: it will come back
                if oid == target:
                    del self.jobs[target]
                    return []
                return self._maybe_plan(job, now, sid)
            if oid == target:
                del self.jobs[target]
                err = ErrorInfo(ErrorKind.OBJECT_LOST, _actor_output_lost(oid, a))
                return [self._unrecoverable(oid, r, err, sid) for r in sorted(job.requesters)]
        if oid == target and entry is not None and entry.locations & job.requesters:
            # the requester is listed but lacks it (its eviction's removal is
            # still on the way): only other copies count
            entry = replace(entry, locations=entry.locations - job.requesters)
            job.objects[oid] = entry
        if oid == target and not self._lost(entry):
            # not lost (any more), or never created: the requester's
            # subscription will see it; nothing to rebuild
            del self.jobs[target]
            return []
        if self._lost(entry) and not oid.is_put and oid.task_id not in job.tasks:
            # (a lost put input has no producer to read: the plan fails it)
            cmds += self._read_task(job, oid.task_id, now, sid)
        return cmds + self._maybe_plan(job, now, sid)

    def on_task_row(self, target: ObjectId, tid: TaskId, entry: TaskEntry | None, now: float, sid: str) -> list[Command]:
        job = self.jobs.get(target)
        if job is None:
            return []
        job.reads -= 1
        job.tasks[tid] = entry
        cmds: list[Command] = []
        if entry is not None and entry.state is not TaskState.PENDING:
            for dep in entry.spec.dependencies:
                if dep not in job.objects:
                    cmds += self._read_object(job, dep, now, sid)
        return cmds + self._maybe_plan(job, now, sid)

    def _maybe_plan(self, job: _Job, now: float, sid: str) -> list[Command]:
        if job.reads:
            return []
        del self.jobs[job.target]
        lost = {o for o, e in job.objects.items() if self._lost(e)}
        specs = {t: e.spec for t, e in job.tasks.items() if e is not None}
        cmds: list[Command] = []
        unrecoverable: ErrorInfo | None = None
        blocked: set[TaskId] = set()
        for o in sorted(lost):
            t = job.tasks.get(o.task_id)
            if o.is_put:
                unrecoverable = ErrorInfo(ErrorKind.OBJECT_LOST, f"object {o.short()}, an input needed to rebuild {job.target.short()}, was created by put() and lost")
                blocked.add(o.task_id)
            elif t is None:
                unrecoverable = ErrorInfo(ErrorKind.OBJECT_LOST, f"the lineage of object {o.short()} is not in the GCS")
                blocked.add(o.task_id)
            elif t.spec.actor_id is not None:
                unrecoverable = ErrorInfo(ErrorKind.OBJECT_LOST, f"object {o.short()} was returned by actor method {t.spec.display_name()}; outputs of actor methods are not reconstructed")
                blocked.add(o.task_id)
        if unrecoverable is not None and job.target.task_id in blocked:
            return [self._unrecoverable(job.target, r, unrecoverable, sid) for r in sorted(job.requesters)]
        try:
            plan = plan_reconstruction([job.target], {t: s for t, s in specs.items() if t not in blocked}, lost - {o for o in lost if o.task_id in blocked})
        except (KeyError, ValueError) as e:
            err = ErrorInfo(ErrorKind.OBJECT_LOST, f"object {job.target.short()} cannot be reconstructed: {e}")
            return [self._unrecoverable(job.target, r, err, sid) for r in sorted(job.requesters)]
        for tid in plan:
            if tid in self.rebuilding and now - self.rebuilding[tid] < self.rebuild_timeout:
                continue
            entry = job.tasks[tid]
            spec = entry.spec
            if self.head.job_over(spec):
                continue
            limit = spec.max_retries
            if limit >= 0 and entry.attempt >= limit:
                err = ErrorInfo(
                    ErrorKind.OBJECT_LOST,
                    f"object {job.target.short()} was lost and rebuilding it needs task "
                    f"{spec.display_name()} to run again, but its retry budget is spent "
                    f"(max_retries={limit}, executions so far={entry.attempt + 1})",
                    task_name=spec.display_name(),
                )
                # Fail only the outputs that are lost.  A sibling return
                # still held somewhere keeps its value (Ray fails a lost
                # object's get with ObjectReconstructionFailedMaxAttempts-
                # ExceededError, not the other returns of its task); writing
                # the error over its row would orphan the held copy (found by
                # the swarm, seed 951).  A sibling lost too fails when asked.
                outputs = tuple((o, 0) for o in spec.return_ids if o in lost)
                cmds += self.head.gcs.write(FinishTask(tid, "", outputs, err, entry.attempt, job_id=spec.job_id), None, now, sid)
                continue
            self.rebuilding[tid] = now
            self.rebuild_attempt[tid] = entry.attempt + 1
            self.reexecuted += 1
            cmds += self.head.watch_task(tid, now, sid)
            cmds += self.head.gcs.write(RetryTask(tid, "", reconstruction=True, attempt=entry.attempt + 1), None, now, sid)
            cmds += self.head.scheduler.submit(spec, entry.attempt + 1, now, sid, reconstruction=True)
        return cmds

    def on_rebuilt(self, tid: TaskId, attempt: int | None = None) -> bool:
        """``tid``'s row shows it ended.  True if that ends the re-run we
        started; False if the row is older (the finished row that the head's
        own subscription is sent first, before the re-run is recorded)."""
        expected = self.rebuild_attempt.get(tid)
        if expected is not None and attempt is not None and attempt < expected:
            return False
        self.rebuilding.pop(tid, None)
        self.rebuild_attempt.pop(tid, None)
        return True

    # ------------------------------------------------------------------ dead nodes
    def on_node_dead(self, node: str, now: float, sid: str) -> list[Command]:
        # Scan the task table for the dead node's pending tasks -- but only
        # once every write the head issued before now has landed: a task the
        # global scheduler placed there a moment ago may still have its
        # SetTaskNode in flight, and a scan that misses it orphans the task.
        # (Written or still queued behind an earlier write of its key: a
        # re-placed task's AddTask waits for its RetryTask; found by the
        # swarm, a burst re-placed onto a node cut off and soon dead.)
        self.pending_scans.append((node, self.head.gcs.made, sid))
        return self.scan_if_settled(now)

    def scan_if_settled(self, now: float) -> list[Command]:
        if not self.pending_scans:
            return []
        cmds: list[Command] = []
        keep = []
        for node, mark, sid in self.pending_scans:
            if self.head.gcs.settled(mark):
                cmds += self.head.gcs.read(TasksOnNode(node), ("rec-node", node), now, sid)
            else:
                keep.append((node, mark, sid))
        self.pending_scans = keep
        return cmds

    def on_tasks_on_node(self, node: str, per_shard: tuple, now: float, sid: str) -> list[Command]:
        cmds: list[Command] = []
        entries = sorted((e for rows in per_shard for e in rows), key=lambda e: e.spec.task_id)
        for e in entries:
            spec = e.spec
            if spec.actor_id is not None:
                continue  # actor calls are resolved by their callers' nodes
            if self.head.job_over(spec):
                continue  # its job ended: nothing of it runs again
            if spec.is_actor_creation:
                cmds += self.head.actors.on_creation_lost(spec, now, sid)
                continue
            limit = spec.max_retries
            if limit >= 0 and e.attempt >= limit:
                err = ErrorInfo(
                    ErrorKind.NODE_DIED,
                    f"the node {node} running task {spec.display_name()} died, and the task "
                    f"has no retries left (max_retries={limit})",
                    task_name=spec.display_name(),
                )
                outputs = tuple((o, 0) for o in spec.return_ids)
                cmds += self.head.gcs.write(FinishTask(spec.task_id, "", outputs, err, e.attempt, job_id=spec.job_id), None, now, sid)
                continue
            self.resubmitted += 1
            cmds += self.head.gcs.write(RetryTask(spec.task_id, "", attempt=e.attempt + 1), None, now, sid)
            cmds += self.head.scheduler.submit(spec, e.attempt + 1, now, sid)
        return cmds

    def validate(self) -> None:
        for target, job in self.jobs.items():
            assert job.reads >= 0, (target, job.reads)
