"""A node's part in ending jobs and in a recovered head's questions.

Theory of operation
-------------------
Two things a node does for the head, moved out of core/node.py into
``NodeJobs``, a base class of ``NodeMachine`` (their state is the node's,
set in ``NodeMachine.__init__``):

* **job end** (``JobEnded``): the job's queued tasks go, its running
  workers are killed, and the node tells the head ``JobCleared`` -- only
  once every GCS write it made before has landed (``pending_clears``).
  Copies of the job's objects go with ``DropObjects``, at once or, when
  something here still holds one, once nothing does (``doomed``).
* **a recovered head's questions** (``TasksHeldQuery``, see "Recovery" in
  core/head_recovery.py): which of the tasks pending on this node it
  forwarded, which it never heard of, and which jobs it saw end -- the
  first answer once the writes made before the question landed
  (``pending_held``); then the copies stored here that the object table
  no longer lists are dropped (``_on_copies_listed``).
"""

from __future__ import annotations

from .ids import ObjectId
from .messages import (
    Command,
    DropObjects,
    JobCleared,
    JobEnded,
    TasksHeldQuery,
    TasksHeldReport,
    Send,
    Evict,
)
from .node_effects import NodeEffects
from .specs import TaskSpec
from .tables import ObjectsOnNode

__all__ = ["NodeJobs"]


class NodeJobs(NodeEffects):
    """Job end and a recovered head's questions (a base of ``NodeMachine``)."""

    # set by ``NodeMachine.__init__`` (see there)
    exited_jobs: set[int]
    doomed: set[ObjectId]
    pending_clears: list[tuple[int, int, str]]
    pending_held: list[tuple[int, str, frozenset[ObjectId]]]

    def _on_tasks_held_query(self, ev: TasksHeldQuery, now: float) -> list[Command]:
        """A recovered head asks which of these tasks (pending on us in the
        task table) we forwarded to the head, and which we never heard of
        (see "Recovery" in core/head_recovery.py).  Also says which jobs we
        saw end, or saw the driver of exit."""
        if ev.task_ids is None:
            # the first round: answer once our earlier writes landed; and
            # the actor deaths we reported, which the old head may never
            # have read (sent while there was no head: lost)
            self.pending_held.append((self.gcs.made, ev.stimulus_id, frozenset(self.objects.store.objects)))
            reported, self.host.reported = self.host.reported, {}
            return [Send(to=self.head, msg=m) for _, m in sorted(reported.items())]
        state_of = self.scheduler.state_of
        forwarded = tuple(t for t in ev.task_ids if state_of(t) == "forwarded")
        unknown = tuple(t for t in ev.task_ids if state_of(t) is None)
        return [Send(to=self.head, msg=TasksHeldReport(node_id=self.node_id, forwarded=forwarded, unknown=unknown,
                                                       ended_jobs=self.jobs_over(),
                                                       stimulus_id=ev.stimulus_id))]

    def jobs_over(self) -> tuple[int, ...]:
        """The jobs a recovered head is told of (``TasksHeldReport``): those
        it said ended, and those whose driver here exited (the one
        ``JobFinished`` may have gone to a head that died)."""
        return tuple(sorted(self.ended_jobs | self.exited_jobs))

    def _send_held(self, now: float) -> list[Command]:
        cmds: list[Command] = []
        keep = []
        for mark, sid, stored in self.pending_held:
            if self.gcs.settled(mark):
                cmds.append(Send(to=self.head, msg=TasksHeldReport(
                    node_id=self.node_id, forwarded=(), settled=True, ended_jobs=self.jobs_over(),
                    stimulus_id=sid)))
                if stored:
                    # our location writes for them have landed: which does
                    # the object table list here?
                    cmds += self.gcs.read(ObjectsOnNode(self.node_id), ("copies-listed", stored), now, sid)
            else:
                keep.append((mark, sid, stored))
        self.pending_held = keep
        return cmds

    def _on_copies_listed(self, stored: frozenset[ObjectId], per_shard: tuple, now: float,
                          sid: str) -> list[Command]:
        """After a head recovery: drop the copies (stored before it, their
        location writes landed) that the object table does not list here.
        Their rows were forgotten: the old head wrote ``ForgetJob`` (or a
        row was freed) and died before its ``DropObjects`` went out (seed
        562 of the placement draws), and nobody else would ever say they
        may go -- nobody can fetch them either.  One still pinned or wanted
        here stays (it is in use, and its row may come back)."""
        listed = {oid for shard in per_shard for oid in shard}
        objects = self.objects
        store = objects.store
        gone = tuple(sorted(
            oid for oid in stored
            if oid not in listed and oid in store.objects and oid not in objects.errors
            and oid not in objects.wants and not store.is_pinned(oid) and oid not in store.restoring
        ))
        if not gone:
            return []
        return self._on_drop_objects(DropObjects(object_ids=gone, stimulus_id=sid), now)

    def _on_job_ended(self, ev: JobEnded, now: float) -> list[Command]:
        """The head says job ``ev.job_id`` is over (its driver exited): its
        queued tasks go, the workers running its tasks are killed and their
        resources come back (see ``LocalScheduler.end_job``).  Then tell the
        head, which forgets the job's GCS rows once every node has -- but
        only once every GCS write this node made before has landed: a task
        of the job that finished a moment ago may still have its FinishTask
        on the way, and a row written after the head forgot the job's rows
        is refused, leaving its output here, listed nowhere and never freed
        (found by the swarm's quiet-cluster tables check)."""
        job = ev.job_id
        self.ended_jobs.add(job)
        cmds = self.scheduler.end_job(job, now, ev.stimulus_id)
        self.pending_clears.append((job, self.gcs.made, ev.stimulus_id))
        return cmds + self._send_clears()

    def _send_clears(self) -> list[Command]:
        cmds: list[Command] = []
        keep = []
        for job, mark, sid in self.pending_clears:
            if self.gcs.settled(mark):
                cmds.append(Send(to=self.head, msg=JobCleared(job_id=job, node_id=self.node_id, stimulus_id=sid)))
            else:
                keep.append((job, mark, sid))
        self.pending_clears = keep
        return cmds

    def _job_over(self, spec: TaskSpec, now: float, sid: str) -> bool:
        """``spec`` belongs to a job that ended (a nested task submitted by a
        worker about to be killed, a placement that crossed the job's end):
        drop it.  A detached actor's creation outlives its job."""
        if spec.job_id not in self.ended_jobs:
            return False
        a = spec.actor_creation
        if a is not None and a.detached:
            return False
        self.story_add(spec.task_id, now, sid, f"refused: job {spec.job_id} ended")
        return True

    def _on_drop_objects(self, ev: DropObjects, now: float) -> list[Command]:
        """Copies of an ended job's objects: deleted now rather than by LRU
        (their GCS rows are gone already).  One still pinned or wanted here
        (an input of another job's task) stays until that ends.  The
        history of the tasks that made them goes too (stories, outcomes):
        bounded caches, but the node should not sit on an ended job's."""
        objects = self.objects
        store = objects.store
        stories, done = self.stories, self.scheduler.done
        cmds: list[Command] = []
        for oid in ev.object_ids:
            tid = oid.task_id
            stories.pop(tid, None)
            done.pop(tid, None)
            if oid in objects.wants or store.is_pinned(oid):
                self.doomed.add(oid)
                continue
            if store.remove(oid) or objects.errors.pop(oid, None) is not None:
                cmds.append(Evict(object_id=oid, stimulus_id=ev.stimulus_id))
        return cmds

    def _sweep_doomed(self, sid: str) -> list[Command]:
        """Delete the doomed copies nothing holds any more (the set is
        empty but for the moments after a job ended with its objects in
        use, so this costs nothing on the usual path)."""
        objects = self.objects
        store = objects.store
        cmds: list[Command] = []
        for oid in [o for o in self.doomed if o not in objects.wants and not store.is_pinned(o)]:
            self.doomed.discard(oid)
            if store.remove(oid) or objects.errors.pop(oid, None) is not None:
                cmds.append(Evict(object_id=oid, stimulus_id=sid))
        return cmds
