"""Forgetting and flushing GCS rows: the handlers of ``ForgetJob``,
``ForgetObject``, ``FlushOld`` and ``RestoreRows``.

Theory of operation
-------------------
These are ops like any other (``tables_ops.py``), applied by
``Tables.apply`` through ``tables._APPLY`` in log order, so every replica
forgets and flushes the same rows at the same point of the log.  They are
kept apart from the other handlers because they are the GCS's memory
policy: which rows may leave memory, when, and how a flushed row comes back.

What is forgotten, and when
~~~~~~~~~~~~~~~~~~~~~~~~~~~
The GCS would otherwise grow with every task ever run.  Two ops delete rows:

* ``ForgetJob(job)``, written by the head once a job has ended *and* every
  live node has dropped the job's queued and running tasks (so no live job
  can need the rows: a job's lineage is only ever read to rebuild that
  job's own objects).  On every shard it deletes the rows of the job's
  tasks (lineage) -- except the creation of a *detached* actor, which
  outlives its job -- the rows of the objects those tasks returned or put,
  of the driver's own puts and of the job's actor method calls' outputs,
  and the subscriptions to those keys.  The
  job id goes into ``ended_jobs``: from then on a late ``AddTask`` or
  ``FinishTask`` of that job (a write still in flight when the job ended)
  is refused instead of bringing a row back.  The result lists the deleted
  objects that still had copies, so the head can tell the nodes to drop
  them.  The replay logs of the job's actors that are dead (not
  detached) go too; actor rows stay (a handle passed to another job must
  find its actor dead, not missing), and rows of other jobs and of
  detached actors are untouched.
* ``ForgetObject(oid)``, written by a node that freed a put object whose
  owner dropped the last ref while the ref never left the owner (see
  ``ObjectManager.free``): nobody can name the object again.

A task row of a job still running is never deleted: lineage reconstruction
may need any of them.

Flushing (the paper's section 4.2.3, Figure 10b)
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
A long-running job would still grow the GCS without bound, so old rows move
to disk instead of being deleted.  ``FlushOld(keep, limit)`` is an op like
any other (the chain's head replica writes it to its own log when memory
passes a threshold, see ``gcs.py``), so every replica flushes the same rows
at the same point of the log.  What may go, in the order rows became
eligible (kept by the writes themselves from the first flush on, in
``flush_cand``: identical on every replica, and a flush never scans the
rows that must stay), sparing the ``keep`` rows of each table that became
eligible last:

* task rows of tasks that ended (FINISHED or FAILED), except actor
  creations (a live actor's restart reads its creation task) and rows
  someone subscribed to by key;
* object rows with no location left (freed, evicted everywhere, lost, or
  holding an error), except rows someone subscribed to by key.

Never a pending (queued or running) task, never an object with a copy
somewhere (``NodeDown`` and ``ObjectsOnNode`` work on memory only).  The
flushed rows leave ``data``; the compact index ``flushed[table]`` maps each
key to its *segment* (the number of the flush that wrote it), and the
replica hands the rows to its driver to write (``FlushRows``).

A flushed row is still found: a read (``Get``/``GetMany``) that misses in
memory but hits the index is answered after the driver loads the row
(``LoadRows`` -> ``RowsLoaded``), and a write to a flushed key first brings
the row back with ``RestoreRows(rows)`` -- again a logged op, so replicas
stay identical -- then applies (a lineage reconstruction's ``RetryTask``
finds the task's row as it was).  Writing a key that is in memory drops it
from the index, so a key is never in both.  ``ForgetJob`` forgets a job's
flushed rows too (the index keeps, per job, the keys it flushed).  A
table-wide subscription is sent the rows in memory only.
"""

from __future__ import annotations

from typing import Any, Hashable

from .ids import ObjectId, driver_task_id
from .records import ActorState, ObjectEntry, TaskState
from .tables_ops import FlushOld, ForgetJob, ForgetObject, RestoreRows
from .tables_state import TablesState, index_discard

# (the handlers are named in ``tables._APPLY``; nothing here is public)
__all__: list[str] = []


def _drop_object_row(t: TablesState, oid: ObjectId) -> ObjectEntry | None:
    t.data["actor_outputs"].pop(oid, None)
    if t.flush_next:
        t.flushed["objects"].pop(oid, None)
    entry = t.data["objects"].pop(oid, None)
    if entry is not None:
        for n in entry.locations:
            t._unindex_object(n, oid)
    return entry


def _forget_job(t: TablesState, op: ForgetJob):
    job = op.job_id
    t.data["ended_jobs"][job] = True
    tasks = t.data["tasks"]
    # the tasks whose rows go, and the prefixes of the objects that go
    # with them (an object id starts with the id of the task that returned
    # or put it; the driver's own puts start with the job's root task id)
    gone: set[bytes] = set()
    for tid, e in tasks.items():
        spec = e.spec
        if spec.job_id != job:
            continue
        a = spec.actor_creation
        if a is not None and a.detached:
            continue  # a detached actor outlives its job: so does its creation
        gone.add(tid)
    for tid in gone:
        old = tasks.pop(tid)
        if old.state is TaskState.PENDING and old.node:
            index_discard(t._tasks_by_node, old.node, tid)
    prefixes = gone | {driver_task_id(job)}
    if t.flush_next:
        # its tasks whose rows are on disk: their objects go too (found by
        # the swarm: an object of a flushed task outlived its job)
        prefixes |= set(t.flush_jobs.get(("tasks", job), ()))
    released = []
    calls = [o for o, j in t.data["actor_outputs"].items() if j == job]
    for oid in [o for o in t.data["objects"] if o[:16] in prefixes] + calls:
        entry = _drop_object_row(t, oid)
        if entry is not None and entry.locations:
            released.append((oid, entry.locations))
    calls = set(calls)
    for key in [k for k in t.subs
                if (k[0] == "tasks" and k[1] in gone)
                or (k[0] == "objects" and k[1] is not None and (k[1][:16] in prefixes or k[1] in calls))]:
        del t.subs[key]
    # the replay logs of the job's actors that are dead for good (a log is
    # read only to restart its actor); their rows stay: a handle passed to
    # another job must still find the actor dead, not missing
    dead = {aid for aid, e in t.data["actors"].items()
            if e.creation.job_id == job and not e.spec.detached and e.state is ActorState.DEAD}
    if dead:
        log = t.data["actor_log"]
        for key in [k for k in log if k[0] in dead]:
            del log[key]
    if t.flush_next:
        _forget_flushed(t, job, gone)
    return tuple(sorted(released)), []


def _forget_flushed(t: TablesState, job: int, gone: set[bytes]) -> None:
    """``ForgetJob``'s part on disk: the job's flushed rows leave the index
    (their segments are never read again)."""
    jobs = t.flush_jobs
    ft, fo = t.flushed["tasks"], t.flushed["objects"]
    tids = jobs.pop(("tasks", job), ())
    for tid in tids:
        ft.pop(tid, None)
    for oid in jobs.pop(("objects", job), ()):
        fo.pop(oid, None)
    unknown = jobs.get(("objects", None))
    if unknown:
        # objects whose job was not known when flushed: by their producer
        prefixes = set(gone) | set(tids) | {driver_task_id(job)}
        keep = []
        for oid in unknown:
            if oid[:16] in prefixes:
                fo.pop(oid, None)
            else:
                keep.append(oid)
        jobs[("objects", None)] = keep


def _flush_old(t: TablesState, op: FlushOld):
    from itertools import islice

    tasks, objs = t.data["tasks"], t.data["objects"]
    cand = t.flush_cand
    if not t.flush_track:
        # the first flush: find what may go; from now on writes keep the
        # candidates (``_put_task``, ``_put_object``)
        t.flush_track = True
        cand["tasks"] = {tid: None for tid, e in tasks.items()
                         if e.state is not TaskState.PENDING and e.spec.actor_creation is None}
        cand["objects"] = {oid: None for oid, e in objs.items() if not e.locations}
    subs = t.subs
    limit = op.limit
    out: list[tuple[str, Hashable, Any]] = []
    ntasks = 0
    for table, rows in (("tasks", tasks), ("objects", objs)):
        c = cand[table]
        take = list(islice(c, max(0, min(len(c) - op.keep, limit - len(out)))))  # oldest first
        for key in take:
            del c[key]
            e = rows.get(key)
            if e is None or (table, key) in subs:
                continue  # forgotten meanwhile; or watched: stays (a write makes it a candidate again)
            if (e.locations if table == "objects" else e.state is TaskState.PENDING or e.spec.actor_creation is not None):
                continue  # (not eligible any more: candidates are kept by writes, this is a safety net)
            out.append((table, key, e))
        if table == "tasks":
            ntasks = len(out)
    if not out:
        return (None, 0), []
    seg = t.flush_next
    t.flush_next = seg + 1
    ft, fo = t.flushed["tasks"], t.flushed["objects"]
    jobs = t.flush_jobs
    job_of: dict[bytes, int] = {}
    for _, tid, e in out[:ntasks]:
        del tasks[tid]  # (ended: not in the by-node index)
        ft[tid] = seg
        job_of[tid] = job = e.spec.job_id
        lst = jobs.get(("tasks", job))
        if lst is None:
            jobs[("tasks", job)] = [tid]
        else:
            lst.append(tid)
    owners = t.data["actor_outputs"]
    for _, oid, e in out[ntasks:]:
        del objs[oid]  # (no locations: not in the by-node index)
        fo[oid] = seg
        p = oid[:16]
        job = job_of.get(p)
        if job is None:
            row = tasks.get(p)
            job = row.spec.job_id if row is not None else owners.get(oid)
        jobs.setdefault(("objects", job), []).append(oid)
    t.flush_out = (seg, tuple(out))
    return (seg, len(out)), []


def _restore_rows(t: TablesState, op: RestoreRows):
    n = 0
    for table, key, row in op.rows:
        idx = t.flushed.get(table)
        if idx is None or key not in idx:
            continue  # restored already, or forgotten meanwhile
        if table == "tasks":
            t._put_task(key, row)  # (drops it from the index)
        else:
            t._put_object(key, t.data["objects"].get(key), row)
        n += 1
    for table, key in op.missing:
        idx = t.flushed.get(table)
        if idx is not None:
            idx.pop(key, None)
    return n, []


def _forget_object(t: TablesState, op: ForgetObject):
    return _drop_object_row(t, op.object_id) is not None, []
