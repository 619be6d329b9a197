"""The GCS data model: tables, the operations on them, and their effects.

Theory of operation
-------------------
A GCS shard is a replicated state machine whose state is a set of tables and
whose log is a sequence of *operations*.  This module holds both: the op
types (frozen dataclasses, so they travel in messages and replicate as data)
and ``Tables.apply``, the deterministic function that applies one op.
Replicas that apply the same ops in the same order hold the same tables; that
is all chain replication (``gcs.py``) needs from us.

``apply`` returns the op's *result* (sent back to the writer) and the list of
*changes* ``(table, key, new_record_or_None)`` that pub/sub turns into
notifications.  Reads (``Query`` subclasses) never change anything and are
answered by ``Tables.read``.

The tables
~~~~~~~~~~
``nodes``      node id -> NodeEntry          (kept on shard 0)
``names``      (namespace, name) -> ActorId  (kept on shard 0)
``kv``         str -> object                 (kept on shard 0)
``functions``  function id -> Payload
``tasks``      TaskId -> TaskEntry           (the lineage)
``objects``    ObjectId -> ObjectEntry       (locations, sizes, errors)
``actors``     ActorId -> ActorEntry
``actor_log``  (ActorId, index) -> TaskSpec  (paper-style replay log)
``finished_early`` TaskId -> (state, node, attempt): a finish that landed
               before the task's AddTask (writes from different clients race)
``dead_nodes`` node id -> True, on every shard: writes from a node declared
               dead are refused (it is fenced; see ``gcs``)
``ended_jobs`` job id -> True, on every shard: jobs whose rows were forgotten
``placement_groups`` pg id -> PlacementGroupEntry (kept on shard 0: names
               are looked up by scanning it)
``actor_outputs`` ObjectId -> job id: the job of the caller whose actor
               method call returned the object (a call has no task row to
               tie its outputs to their job; ``ForgetJob`` needs it)

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

Two secondary indexes are derived from the tables (never replicated, rebuilt
after a state transfer): tasks not yet finished by node, and objects by the
node holding a copy.  They answer "what did the dead node have?" without a
scan.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Hashable

from .ids import ActorId, ObjectId, TaskId, driver_task_id
from .records import (
    ActorEntry,
    ActorState,
    ErrorInfo,
    NodeEntry,
    ObjectEntry,
    PlacementGroupEntry,
    TaskEntry,
    TaskState,
)
from .specs import Payload, TaskSpec

__all__ = [
    "TABLES",
    "Op",
    "Query",
    "Tables",
    "Change",
    # ops
    "PutNode",
    "NodeDown",
    "PutFunction",
    "AddTask",
    "SetTaskNode",
    "RetryTask",
    "FinishTask",
    "AddLocation",
    "RemoveLocation",
    "PutActor",
    "RegisterName",
    "UnregisterName",
    "AppendActorLog",
    "KvPut",
    "KvIncrement",
    "KvDelete",
    "ForgetJob",
    "ForgetObject",
    "FlushOld",
    "RestoreRows",
    "CreatePlacementGroup",
    "UpdatePlacementGroup",
    "RemovePlacementGroup",
    "Subscribe",
    "Unsubscribe",
    # queries
    "Get",
    "GetMany",
    "Scan",
    "TasksOnNode",
    "ObjectsOnNode",
    "ActorsOnNode",
    "ActorLogRange",
    "TableSizes",
    "Keys",
    "UnplacedTasks",
    "key_shard",
    "shards_for",
]

TABLES = ("nodes", "names", "kv", "functions", "tasks", "objects", "actors", "actor_log", "finished_early", "dead_nodes", "ended_jobs",
          "placement_groups", "actor_outputs")
_SHARD0_TABLES = frozenset({"nodes", "names", "kv", "placement_groups"})

Change = tuple[str, Hashable, Any]


def key_shard(table: str, key: Hashable, num_shards: int) -> int:
    """Which shard holds ``key`` of ``table``."""
    if num_shards == 1 or table in _SHARD0_TABLES:
        return 0
    if table == "actor_log":
        key = key[0]  # all of an actor's log on the actor's shard
    return int.from_bytes(bytes(key[:4]), "big") % num_shards  # type: ignore[index]


def shards_for(route: tuple[str, Hashable], num_shards: int) -> range | tuple[int]:
    """Every shard an op or query with this route must reach.

    A route to every shard is a ``range`` even with one shard, so the client
    always answers it with a tuple of per-shard results.
    """
    table, key = route
    if table in _SHARD0_TABLES:
        return (0,)
    if key is None:
        return range(num_shards)
    if num_shards == 1:
        return (0,)
    return (key_shard(table, key, num_shards),)


# ---------------------------------------------------------------------------
# Operations (writes)


@dataclass(frozen=True, slots=True)
class Op:
    """A write.

    ``route()`` gives the (table, key) that decides the shard; a key of
    ``None`` means every shard (``NodeDown``, table-wide subscriptions),
    except for the small tables kept whole on shard 0.
    """

    def route(self) -> tuple[str, Hashable]:
        raise NotImplementedError

    def order_key(self) -> tuple[str, Hashable]:
        """Writes with the same order key from one client are applied in the
        order they were made (see ``GcsClient``); by default the route."""
        return self.route()


@dataclass(frozen=True, slots=True)
class PutNode(Op):
    entry: NodeEntry

    def route(self):
        return ("nodes", self.entry.node_id)


@dataclass(frozen=True, slots=True)
class NodeDown(Op):
    """A node died: mark it dead and drop every location it held.

    Applied on every shard.  Objects left with no location become lost and
    their subscribers are told.
    """

    node_id: str

    def route(self):
        return ("", None)


@dataclass(frozen=True, slots=True)
class PutFunction(Op):
    function_id: bytes
    payload: Payload

    def route(self):
        return ("functions", self.function_id)


@dataclass(frozen=True, slots=True)
class AddTask(Op):
    """Record a submitted task at ``node`` (the lineage write).

    ``placed``: the global scheduler chose ``node``.  Writes from different
    clients can land in any order, so a placement always wins over the
    submitting node's own record, whichever lands first.  A task that
    already ended keeps its outcome (a re-executed parent submits its
    children again; a late write must not reopen a finished task).
    """

    spec: TaskSpec
    node: str
    placed: bool = False

    def route(self):
        return ("tasks", self.spec.task_id)


@dataclass(frozen=True, slots=True)
class SetTaskNode(Op):
    task_id: TaskId
    node: str

    def route(self):
        return ("tasks", self.task_id)


@dataclass(frozen=True, slots=True)
class RetryTask(Op):
    """A task is being executed again at ``node``, as attempt ``attempt``.

    ``reconstruction`` says whether this re-run rebuilds lost outputs (as
    opposed to retrying a failed attempt); both consume ``max_retries``.
    Applied only if ``attempt`` is newer than the row's: writes from one
    client may land out of order (retries, reordering links), and a stale
    retry must not turn a finished task back into a pending one.
    """

    task_id: TaskId
    node: str
    reconstruction: bool = False
    attempt: int = 0

    def route(self):
        return ("tasks", self.task_id)


@dataclass(frozen=True, slots=True)
class FinishTask(Op):
    """A task ended: its outputs exist at ``node`` (values) or hold ``error``."""

    task_id: TaskId
    node: str
    outputs: tuple[tuple[ObjectId, int], ...]
    error: ErrorInfo | None = None
    attempt: int = 0
    actor_id: ActorId | None = None  # an actor method call's outputs
    job_id: int | None = None  # refused once this job's rows are forgotten

    def route(self):
        return ("tasks", self.task_id)


@dataclass(frozen=True, slots=True)
class AddLocation(Op):
    """``node`` holds a copy of the object (a put, or a fetched replica)."""

    object_id: ObjectId
    node: str
    size: int
    error: ErrorInfo | None = None
    # a put's: the job of the driver that put it.  Refused once the job's
    # rows are forgotten (a put admitted just before its driver exited:
    # found by the swarm, its row outlived the job)
    job_id: int | None = None

    def route(self):
        return ("objects", self.object_id)

    def order_key(self):
        # ordered with the task's own writes: a copy's removal must not land
        # before the FinishTask that recorded it (found by the swarm: a stale
        # location outlived the eviction and stalled everyone who wanted it)
        oid = self.object_id
        if len(oid) != 20 or oid[16] & 0x80:  # (a put object has no task writes)
            return self.route()
        return ("tasks", TaskId(oid[:16]))


@dataclass(frozen=True, slots=True)
class RemoveLocation(Op):
    object_id: ObjectId
    node: str

    def route(self):
        return ("objects", self.object_id)

    def order_key(self):
        # ordered with the task's own writes: a copy's removal must not land
        # before the FinishTask that recorded it (found by the swarm: a stale
        # location outlived the eviction and stalled everyone who wanted it)
        oid = self.object_id
        if len(oid) != 20 or oid[16] & 0x80:  # (a put object has no task writes)
            return self.route()
        return ("tasks", TaskId(oid[:16]))


@dataclass(frozen=True, slots=True)
class PutActor(Op):
    """Write an actor row.

    If ``expect_incarnation`` is given, the write applies only when the stored
    row has that incarnation (a compare-and-set that keeps a slow reporter
    from overwriting a newer restart); an absent row counts as incarnation
    0, since the creating node's first write of the row may still be on its
    way (retried after a drop) when the actor it created reports ALIVE.
    ``create_only``: the write applies only when there is no row (that
    first write: a late resend must not turn an actor that is ALIVE, or
    killed, back into PENDING).  The result is the stored row.
    """

    entry: ActorEntry
    expect_incarnation: int | None = None
    create_only: bool = False

    def route(self):
        return ("actors", self.entry.spec.actor_id)


@dataclass(frozen=True, slots=True)
class RegisterName(Op):
    """Claim a unique actor name; the result is the actor id that holds it."""

    namespace: str
    name: str
    actor_id: ActorId

    def route(self):
        return ("names", (self.namespace, self.name))


@dataclass(frozen=True, slots=True)
class UnregisterName(Op):
    namespace: str
    name: str
    actor_id: ActorId

    def route(self):
        return ("names", (self.namespace, self.name))


@dataclass(frozen=True, slots=True)
class AppendActorLog(Op):
    """Log the ``index``-th call an actor executed.  ``spec`` is kept in the
    log itself: the call's task row lives on the shard of its task id, which
    is in general not the actor's shard, where the log is read."""

    actor_id: ActorId
    index: int
    task_id: TaskId
    spec: TaskSpec | None = None
    # the incarnation that executed the call: a log entry from an instance
    # that is no longer the live one is refused (result: False), so a zombie
    # (killed or restarted elsewhere before it heard) cannot fork the log
    incarnation: int | None = None

    def route(self):
        return ("actor_log", (self.actor_id, self.index))


@dataclass(frozen=True, slots=True)
class KvPut(Op):
    key: str
    value: Any
    overwrite: bool = True

    def route(self):
        return ("kv", self.key)


@dataclass(frozen=True, slots=True)
class KvIncrement(Op):
    """Add one to an integer (missing: 0) and return the new value; used to
    hand out cluster-unique job ids."""

    key: str

    def route(self):
        return ("kv", self.key)


@dataclass(frozen=True, slots=True)
class KvDelete(Op):
    key: str

    def route(self):
        return ("kv", self.key)


@dataclass(frozen=True, slots=True)
class ForgetJob(Op):
    """Job ``job_id`` ended and no node runs its tasks: delete its task and
    object rows on every shard (see "What is forgotten" above).  The result
    is a tuple of ``(object id, locations)`` of deleted objects that had
    copies somewhere."""

    job_id: int

    def route(self):
        return ("", None)


@dataclass(frozen=True, slots=True)
class ForgetObject(Op):
    """Delete an object's row: its owner freed it, and nobody else can
    name it (a private put)."""

    object_id: ObjectId

    def route(self):
        return ("objects", self.object_id)

    def order_key(self):
        return RemoveLocation.order_key(self)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class FlushOld(Op):
    """Move up to ``limit`` old rows that may go (see "Flushing" above) out
    of memory, sparing the newest ``keep`` rows of each table.  The result
    is ``(segment, rows flushed)``; the rows themselves are left in
    ``Tables.flush_out`` for the replica to hand to its driver."""

    keep: int = 1000
    limit: int = 5000

    def route(self):
        return ("", None)


@dataclass(frozen=True, slots=True)
class RestoreRows(Op):
    """Bring flushed rows back into memory before a write touches them.
    ``rows``: ``((table, key, row), ...)`` as loaded from disk; ``missing``:
    ``((table, key), ...)`` the disk did not have (dropped from the index,
    so the write sees no row rather than waiting forever).  A key no longer
    in the index (restored or forgotten meanwhile) is left alone."""

    rows: tuple = ()
    missing: tuple = ()

    def route(self):
        return ("", None)


@dataclass(frozen=True, slots=True)
class Subscribe(Op):
    """Subscribe ``subscriber`` to a key (or, with ``key=None``, a table).

    The subscriber is immediately sent the key's current record, so a
    subscriber that joins late misses nothing.
    """

    subscriber: str
    table: str
    key: Hashable = None

    def route(self):
        return (self.table, self.key)


@dataclass(frozen=True, slots=True)
class Unsubscribe(Op):
    subscriber: str
    table: str
    key: Hashable = None

    def route(self):
        return (self.table, self.key)


@dataclass(frozen=True, slots=True)
class CreatePlacementGroup(Op):
    """A client asks for a placement group (the head, subscribed to the
    table, reserves it).  Refused (result: the id of the holder) when a
    live group of the same namespace already has the name; a repeat of the
    same id is a no-op (result True)."""

    entry: PlacementGroupEntry

    def route(self):
        return ("placement_groups", self.entry.pg_id)


@dataclass(frozen=True, slots=True)
class UpdatePlacementGroup(Op):
    """The head records where the bundles are and the group's state.  A
    removed group stays removed."""

    pg_id: str
    state: str
    nodes: tuple[str, ...]

    def route(self):
        return ("placement_groups", self.pg_id)


@dataclass(frozen=True, slots=True)
class RemovePlacementGroup(Op):
    """A client removes a group: its state becomes REMOVED (final); the
    head, notified, frees the bundles and kills what runs in them."""

    pg_id: str

    def route(self):
        return ("placement_groups", self.pg_id)


# ---------------------------------------------------------------------------
# Queries (reads, answered at the tail)


@dataclass(frozen=True, slots=True)
class Query:
    """A read, answered at the tail; routed like ``Op``."""

    def route(self) -> tuple[str, Hashable]:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Get(Query):
    table: str
    key: Hashable

    def route(self):
        return (self.table, self.key)


@dataclass(frozen=True, slots=True)
class GetMany(Query):
    """Several keys of one table that live on one shard (the client groups)."""

    table: str
    keys: tuple

    def route(self):
        return (self.table, self.keys[0])


@dataclass(frozen=True, slots=True)
class Scan(Query):
    """Every row of a table on this shard (use for small tables only)."""

    table: str

    def route(self):
        return (self.table, None)


@dataclass(frozen=True, slots=True)
class TasksOnNode(Query):
    node: str

    def route(self):
        return ("tasks", None)


@dataclass(frozen=True, slots=True)
class ObjectsOnNode(Query):
    node: str

    def route(self):
        return ("objects", None)


@dataclass(frozen=True, slots=True)
class ActorsOnNode(Query):
    node: str

    def route(self):
        return ("actors", None)


@dataclass(frozen=True, slots=True)
class ActorLogRange(Query):
    actor_id: ActorId
    start: int
    end: int

    def route(self):
        return ("actor_log", (self.actor_id, self.start))


@dataclass(frozen=True, slots=True)
class Keys(Query):
    """The keys of a table on this shard (for small tables whose rows say
    nothing but their key: ``ended_jobs``, ``dead_nodes``)."""

    table: str

    def route(self):
        return (self.table, None)


@dataclass(frozen=True, slots=True)
class UnplacedTasks(Query):
    """Pending tasks on no node: re-homed by the head's recovery and not
    placed yet.  Read by a recovering head only (a full scan)."""

    def route(self):
        return ("tasks", None)


@dataclass(frozen=True, slots=True)
class TableSizes(Query):
    """How many rows each table holds, on every shard (for status and for
    watching the GCS's memory: see "What is forgotten" above)."""

    def route(self):
        return ("", None)


# ---------------------------------------------------------------------------


class Tables:
    """The tables of one shard replica and the function that changes them."""

    __slots__ = ("data", "subs", "_tasks_by_node", "_objects_by_node",
                 "flushed", "flush_jobs", "flush_next", "flush_out", "flush_track", "flush_cand")

    def __init__(self) -> None:
        self.data: dict[str, dict] = {t: {} for t in TABLES}
        # (table, key-or-None) -> set of subscriber addresses
        self.subs: dict[tuple[str, Hashable], set[str]] = {}
        self._tasks_by_node: dict[str, set[TaskId]] = {}
        self._objects_by_node: dict[str, set[ObjectId]] = {}
        # flushing (see "Flushing" above): key -> segment, per table; per
        # (table, job) the keys flushed (job None: not known at the time);
        # the next segment number; the last flush's rows, for the replica
        self.flushed: dict[str, dict] = {"tasks": {}, "objects": {}}
        self.flush_jobs: dict[tuple[str, int | None], list] = {}
        self.flush_next = 0
        self.flush_out: tuple[int, tuple] | None = None
        # from the first FlushOld on: the rows that may go, per table, in
        # the order they became eligible (so a flush never scans the rows
        # that must stay, such as objects still held somewhere)
        self.flush_track = False
        self.flush_cand: dict[str, dict] = {"tasks": {}, "objects": {}}

    # -- replication support --------------------------------------------------
    def snapshot(self) -> tuple:
        """A copy for state transfer (records are immutable: shallow copies).
        Once anything was flushed, a third part holds the flush index."""
        snap = (
            {t: dict(rows) for t, rows in self.data.items()},
            {k: set(v) for k, v in self.subs.items()},
        )
        if self.flush_track:
            snap += (self._flush_state(),)
        return snap

    def _flush_state(self) -> tuple:
        return ({t: dict(idx) for t, idx in self.flushed.items()},
                {k: list(v) for k, v in self.flush_jobs.items()}, self.flush_next,
                {t: dict(c) for t, c in self.flush_cand.items()})

    @classmethod
    def restore(cls, snap: tuple[dict, dict]) -> "Tables":
        t = cls()
        data, subs = snap[0], snap[1]
        if len(snap) > 2:
            flushed, jobs, t.flush_next, cand = snap[2]
            t.flushed = {name: dict(idx) for name, idx in flushed.items()}
            t.flush_jobs = {k: list(v) for k, v in jobs.items()}
            t.flush_cand = {name: dict(c) for name, c in cand.items()}
            t.flush_track = True
        t.data = {name: dict(rows) for name, rows in data.items()}
        t.subs = {k: set(v) for k, v in subs.items()}
        for tid, entry in t.data["tasks"].items():
            if entry.state is TaskState.PENDING and entry.node:
                t._tasks_by_node.setdefault(entry.node, set()).add(tid)
        for oid, entry in t.data["objects"].items():
            for n in entry.locations:
                t._objects_by_node.setdefault(n, set()).add(oid)
        return t

    def fingerprint(self) -> tuple:
        """A comparable summary of the replicated state (for tests/checkers)."""
        fp = tuple(
            (name, tuple(sorted((repr(k), repr(v)) for k, v in rows.items())))
            for name, rows in sorted(self.data.items())
        )
        if self.flush_track:
            fp += (("flushed", self.flush_next, tuple(
                (name, tuple(sorted((repr(k), v) for k, v in idx.items()))) for name, idx in sorted(self.flushed.items()))),)
        return fp

    # -- flushing ---------------------------------------------------------------
    def flushed_rows(self) -> int:
        """How many rows are on disk (flushed and not brought back)."""
        return sum(len(idx) for idx in self.flushed.values())

    def flushed_segment(self, table: str, key: Hashable) -> int | None:
        """The segment holding ``key`` of ``table`` if it is flushed."""
        idx = self.flushed.get(table)
        return None if idx is None else idx.get(key)

    def flushed_wants(self, q: Query) -> tuple:
        """``((table, key, segment), ...)``: the rows ``q`` needs that are on
        disk only (empty: ``read`` answers it from memory)."""
        if isinstance(q, Get):
            keys: tuple = (q.key,)
        elif isinstance(q, GetMany):
            keys = q.keys
        else:
            return ()
        idx = self.flushed.get(q.table)
        if not idx:
            return ()
        return tuple((q.table, k, idx[k]) for k in keys if k in idx)

    def read_loaded(self, q: Query, rows: tuple) -> Any:
        """Answer ``q`` with ``rows`` (loaded from disk) filling in flushed
        keys; memory wins, and a key no longer flushed (forgotten meanwhile)
        is not filled in."""
        got = {(table, key): row for table, key, row in rows}
        idx = self.flushed.get(getattr(q, "table", ""), {})
        mem = self.data[q.table]

        def one(k: Hashable) -> Any:
            v = mem.get(k)
            if v is None and k in idx:
                v = got.get((q.table, k))
            return v

        if isinstance(q, GetMany):
            return tuple(one(k) for k in q.keys)
        return one(q.key)

    # -- subscriptions ----------------------------------------------------------
    def subscribers(self, table: str, key: Hashable) -> set[str]:
        a = self.subs.get((table, key))
        b = self.subs.get((table, None))
        if a and b:
            return a | b
        return a or b or set()

    # -- reads --------------------------------------------------------------------
    def read(self, q: Query) -> Any:
        d = self.data
        if isinstance(q, Get):
            return d[q.table].get(q.key)
        if isinstance(q, GetMany):
            rows = d[q.table]
            return tuple(rows.get(k) for k in q.keys)
        if isinstance(q, Scan):
            return tuple(d[q.table].values())
        if isinstance(q, TasksOnNode):
            tasks = d["tasks"]
            return tuple(tasks[t] for t in sorted(self._tasks_by_node.get(q.node, ())))
        if isinstance(q, ObjectsOnNode):
            return tuple(sorted(self._objects_by_node.get(q.node, ())))
        if isinstance(q, ActorsOnNode):
            return tuple(
                e
                for e in d["actors"].values()
                if e.node == q.node and e.state in (ActorState.ALIVE, ActorState.PENDING)
            )
        if isinstance(q, Keys):
            return tuple(sorted(d[q.table], key=repr))
        if isinstance(q, UnplacedTasks):
            return tuple(sorted((e for e in d["tasks"].values() if e.state is TaskState.PENDING and not e.node),
                                key=lambda e: e.spec.task_id))
        if isinstance(q, TableSizes):
            return tuple((name, len(rows)) for name, rows in d.items())
        if isinstance(q, ActorLogRange):
            log = d["actor_log"]
            out = []
            for i in range(q.start, q.end):
                v = log.get((q.actor_id, i))
                if v is None:
                    break
                # the spec logged with the call (its task row may be on
                # another shard); a bare task id: the row, if it is here
                out.append(TaskEntry(v) if isinstance(v, TaskSpec) else d["tasks"].get(v))
            return tuple(out)
        raise TypeError(f"unknown GCS query {q!r}")

    # -- writes -------------------------------------------------------------------
    def apply(self, op: Op) -> tuple[Any, list[Change]]:
        """Apply one op; return (result, changes).  Deterministic."""
        handler = _APPLY.get(type(op))
        if handler is None:
            raise TypeError(f"unknown GCS op {op!r}")
        return handler(self, op)

    # index helpers
    def _index_task(self, tid: TaskId, old: TaskEntry | None, new: TaskEntry) -> None:
        if old is not None and old.state is TaskState.PENDING and old.node:
            s = self._tasks_by_node.get(old.node)
            if s is not None:
                s.discard(tid)
        if new.state is TaskState.PENDING and new.node:
            self._tasks_by_node.setdefault(new.node, set()).add(tid)

    def _put_task(self, tid: TaskId, new: TaskEntry) -> list[Change]:
        rows = self.data["tasks"]
        self._index_task(tid, rows.get(tid), new)
        rows[tid] = new
        if self.flush_track:
            self.flushed["tasks"].pop(tid, None)  # (in memory again)
            if new.state is not TaskState.PENDING and new.spec.actor_creation is None:
                self.flush_cand["tasks"][tid] = None
            else:
                self.flush_cand["tasks"].pop(tid, None)
        return [("tasks", tid, new)]

    def _put_object(self, oid: ObjectId, old: ObjectEntry | None, new: ObjectEntry) -> Change:
        old_locs = old.locations if old is not None else frozenset()
        if not old_locs:
            by = self._objects_by_node
            for n in new.locations:  # the common case: a new object
                s = by.get(n)
                if s is None:
                    by[n] = {oid}
                else:
                    s.add(oid)
        elif old_locs != new.locations:
            by = self._objects_by_node
            for n in old_locs - new.locations:
                s = by.get(n)
                if s is not None:
                    s.discard(oid)
            for n in new.locations - old_locs:
                by.setdefault(n, set()).add(oid)
        self.data["objects"][oid] = new
        if self.flush_track:
            self.flushed["objects"].pop(oid, None)  # (in memory again)
            if new.locations:
                self.flush_cand["objects"].pop(oid, None)
            else:
                self.flush_cand["objects"][oid] = None
        return ("objects", oid, new)


# Each handler: (tables, op) -> (result, changes)


def _put_node(t: Tables, op: PutNode):
    t.data["nodes"][op.entry.node_id] = op.entry
    return True, [("nodes", op.entry.node_id, op.entry)]


def _node_down(t: Tables, op: NodeDown):
    changes: list[Change] = []
    t.data["dead_nodes"][op.node_id] = True
    nodes = t.data["nodes"]
    entry = nodes.get(op.node_id)
    if entry is not None and entry.alive:
        entry = replace(entry, alive=False)
        nodes[op.node_id] = entry
        changes.append(("nodes", op.node_id, entry))
    objs = t.data["objects"]
    lost = []
    for oid in sorted(t._objects_by_node.pop(op.node_id, ())):
        old = objs[oid]
        new = replace(old, locations=old.locations - {op.node_id})
        objs[oid] = new
        changes.append(("objects", oid, new))
        if new.lost:
            lost.append(oid)
    return tuple(lost), changes


def _put_function(t: Tables, op: PutFunction):
    rows = t.data["functions"]
    if op.function_id in rows:
        return False, []
    rows[op.function_id] = op.payload
    return True, [("functions", op.function_id, op.payload)]


def _add_task(t: Tables, op: AddTask):
    if op.spec.job_id in t.data["ended_jobs"]:
        return None, []  # a write still in flight when the job's rows went
    tid = op.spec.task_id
    old = t.data["tasks"].get(tid)
    if old is None:
        early = t.data["finished_early"].pop(tid, None)
        if early is not None:
            # its FinishTask (from the node that ran it) landed first
            state, node, attempt = early
            new = TaskEntry(spec=op.spec, state=state, node=node, attempt=attempt, placed=op.placed)
        else:
            new = TaskEntry(spec=op.spec, node=op.node, placed=op.placed)
    elif old.state is TaskState.PENDING:
        if old.placed and not op.placed:
            return old, []  # the submitting node's record, landing after the placement
        new = replace(old, spec=op.spec, node=op.node, placed=old.placed or op.placed)
    else:
        # submitted again after it ended (a re-executed parent submits its
        # children again, or this write arrived after the finish): the row
        # keeps its outcome; a re-run that finishes records itself anyway
        return old, []
    return new, t._put_task(tid, new)


def _set_task_node(t: Tables, op: SetTaskNode):
    old = t.data["tasks"].get(op.task_id)
    if old is None or old.state is not TaskState.PENDING:
        return old, []
    new = replace(old, node=op.node)
    return new, t._put_task(op.task_id, new)


def _retry_task(t: Tables, op: RetryTask):
    old = t.data["tasks"].get(op.task_id)
    if old is None or op.attempt <= old.attempt:
        return old, []  # stale: a newer attempt is already recorded
    if op.reconstruction:
        new = replace(
            old,
            state=TaskState.PENDING,
            node=op.node,
            attempt=op.attempt,
            reconstructions=old.reconstructions + 1,
        )
    else:
        new = replace(old, state=TaskState.PENDING, node=op.node, attempt=op.attempt)
    return new, t._put_task(op.task_id, new)


def _finish_task(t: Tables, op: FinishTask):
    if op.job_id is not None and op.job_id in t.data["ended_jobs"]:
        return False, []  # the job's rows are forgotten: do not bring them back
    changes: list[Change] = []
    old = t.data["tasks"].get(op.task_id)
    if old is None:
        # writes from different clients land in any order: this task's
        # AddTask (from the node it was submitted to) may still be on its
        # way; keep the outcome for it (found by the swarm: a finished task
        # stayed pending forever)
        early = t.data["finished_early"]
        prev = early.get(op.task_id)
        if prev is None or op.attempt >= prev[2]:
            early[op.task_id] = (TaskState.FAILED if op.error is not None else TaskState.FINISHED, op.node, op.attempt)
    elif op.attempt >= old.attempt:  # (an older attempt's end is stale)
        state = TaskState.FAILED if op.error is not None else TaskState.FINISHED
        # (hot path: built directly rather than with dataclasses.replace)
        new = TaskEntry(old.spec, state, op.node, max(old.attempt, op.attempt), old.reconstructions, old.placed)
        changes += t._put_task(op.task_id, new)
    objs = t.data["objects"]
    if op.actor_id is not None and op.job_id is not None:
        # (a method call has no task row: remember its outputs' job, so
        # that ForgetJob finds them; found by the swarm's jobs that end)
        owners = t.data["actor_outputs"]
        for oid, _ in op.outputs:
            owners[oid] = op.job_id
    for oid, size in op.outputs:
        prev = objs.get(oid)
        if op.error is not None:
            # an error lives in the entry itself; no location needed
            entry = ObjectEntry(oid, size=size, locations=frozenset(), created=True, error=op.error, actor_id=op.actor_id)
        else:
            locs = (prev.locations if prev is not None and prev.error is None else frozenset())
            entry = ObjectEntry(oid, size=size, locations=locs | {op.node}, created=True, actor_id=op.actor_id)
        changes.append(t._put_object(oid, prev, entry))
    return True, changes


def _add_location(t: Tables, op: AddLocation):
    objs = t.data["objects"]
    prev = objs.get(op.object_id)
    if prev is None and op.job_id is not None and op.job_id in t.data["ended_jobs"]:
        return False, []  # the job's rows are forgotten: do not bring one back
    if op.error is not None:
        entry = ObjectEntry(op.object_id, size=op.size, created=True, error=op.error)
    elif prev is None:
        entry = ObjectEntry(op.object_id, size=op.size, locations=frozenset({op.node}), created=True)
    elif op.node in prev.locations and prev.created:
        return True, []
    else:
        entry = ObjectEntry(op.object_id, op.size, prev.locations | {op.node}, True, prev.error, prev.actor_id)
    return True, [t._put_object(op.object_id, prev, entry)]


# The hot paths above build rows positionally; a new field must be added there.
assert tuple(f.name for f in fields(TaskEntry)) == ("spec", "state", "node", "attempt", "reconstructions", "placed"), (
    "TaskEntry changed: update _finish_task in tables.py")
assert tuple(f.name for f in fields(ObjectEntry)) == ("object_id", "size", "locations", "created", "error", "actor_id"), (
    "ObjectEntry changed: update _add_location in tables.py")


def _remove_location(t: Tables, op: RemoveLocation):
    objs = t.data["objects"]
    prev = objs.get(op.object_id)
    if prev is None or op.node not in prev.locations:
        return False, []
    entry = replace(prev, locations=prev.locations - {op.node})
    return True, [t._put_object(op.object_id, prev, entry)]


def _put_actor(t: Tables, op: PutActor):
    rows = t.data["actors"]
    aid = op.entry.spec.actor_id
    old = rows.get(aid)
    if op.create_only and old is not None:
        return old, []
    if op.expect_incarnation is not None:
        have = 0 if old is None else old.incarnation
        if have != op.expect_incarnation or (old is not None and old.state is ActorState.DEAD):
            return old, []
    rows[aid] = op.entry
    return op.entry, [("actors", aid, op.entry)]


def _register_name(t: Tables, op: RegisterName):
    rows = t.data["names"]
    key = (op.namespace, op.name)
    holder = rows.get(key)
    if holder is not None:
        return holder, []
    rows[key] = op.actor_id
    return op.actor_id, [("names", key, op.actor_id)]


def _unregister_name(t: Tables, op: UnregisterName):
    rows = t.data["names"]
    key = (op.namespace, op.name)
    if rows.get(key) != op.actor_id:
        return False, []
    del rows[key]
    return True, [("names", key, None)]


def _append_actor_log(t: Tables, op: AppendActorLog):
    if op.incarnation is not None:
        row = t.data["actors"].get(op.actor_id)  # (the log lives on the actor's shard)
        if row is None or row.incarnation != op.incarnation or row.state is not ActorState.ALIVE:
            return False, []
    key = (op.actor_id, op.index)
    value = op.spec if op.spec is not None else op.task_id
    t.data["actor_log"][key] = value
    return True, [("actor_log", key, value)]


def _kv_put(t: Tables, op: KvPut):
    rows = t.data["kv"]
    if not op.overwrite and op.key in rows:
        return False, []
    rows[op.key] = op.value
    return True, [("kv", op.key, op.value)]


def _kv_increment(t: Tables, op: KvIncrement):
    rows = t.data["kv"]
    value = int(rows.get(op.key, 0)) + 1
    rows[op.key] = value
    return value, [("kv", op.key, value)]


def _kv_delete(t: Tables, op: KvDelete):
    rows = t.data["kv"]
    if op.key not in rows:
        return False, []
    del rows[op.key]
    return True, [("kv", op.key, None)]


def _drop_object_row(t: Tables, oid: ObjectId) -> ObjectEntry | None:
    t.data["actor_outputs"].pop(oid, None)
    if t.flush_next:
        t.flushed["objects"].pop(oid, None)
    entry = t.data["objects"].pop(oid, None)
    if entry is not None:
        by = t._objects_by_node
        for n in entry.locations:
            s = by.get(n)
            if s is not None:
                s.discard(oid)
                if not s:
                    del by[n]
    return entry


def _forget_job(t: Tables, op: ForgetJob):
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
            s = t._tasks_by_node.get(old.node)
            if s is not None:
                s.discard(tid)
                if not s:
                    del t._tasks_by_node[old.node]
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


def _forget_flushed(t: Tables, job: int, gone: set[bytes]) -> None:
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


def _flush_old(t: Tables, op: FlushOld):
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


def _restore_rows(t: Tables, op: RestoreRows):
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


def _forget_object(t: Tables, op: ForgetObject):
    return _drop_object_row(t, op.object_id) is not None, []


def _subscribe(t: Tables, op: Subscribe):
    t.subs.setdefault((op.table, op.key), set()).add(op.subscriber)
    current = t.data[op.table].get(op.key) if op.key is not None else None
    return current, []


def _unsubscribe(t: Tables, op: Unsubscribe):
    s = t.subs.get((op.table, op.key))
    if s is None or op.subscriber not in s:
        return False, []
    s.discard(op.subscriber)
    if not s:
        del t.subs[(op.table, op.key)]
    return True, []


def _create_pg(t: Tables, op: CreatePlacementGroup):
    rows = t.data["placement_groups"]
    e = op.entry
    if e.pg_id in rows:
        return True, []
    if e.name:
        for other in rows.values():
            if other.name == e.name and other.namespace == e.namespace and other.state != "REMOVED":
                return other.pg_id, []
    rows[e.pg_id] = e
    return True, [("placement_groups", e.pg_id, e)]


def _update_pg(t: Tables, op: UpdatePlacementGroup):
    rows = t.data["placement_groups"]
    old = rows.get(op.pg_id)
    if old is None or old.state == "REMOVED":
        return False, []
    new = replace(old, state=op.state, nodes=op.nodes)
    rows[op.pg_id] = new
    return True, [("placement_groups", op.pg_id, new)]


def _remove_pg(t: Tables, op: RemovePlacementGroup):
    rows = t.data["placement_groups"]
    old = rows.get(op.pg_id)
    if old is None or old.state == "REMOVED":
        return False, []
    new = replace(old, state="REMOVED", nodes=())
    rows[op.pg_id] = new
    return True, [("placement_groups", op.pg_id, new)]


_APPLY = {
    CreatePlacementGroup: _create_pg,
    UpdatePlacementGroup: _update_pg,
    RemovePlacementGroup: _remove_pg,
    PutNode: _put_node,
    NodeDown: _node_down,
    PutFunction: _put_function,
    AddTask: _add_task,
    SetTaskNode: _set_task_node,
    RetryTask: _retry_task,
    FinishTask: _finish_task,
    AddLocation: _add_location,
    RemoveLocation: _remove_location,
    PutActor: _put_actor,
    RegisterName: _register_name,
    UnregisterName: _unregister_name,
    AppendActorLog: _append_actor_log,
    KvPut: _kv_put,
    KvIncrement: _kv_increment,
    KvDelete: _kv_delete,
    ForgetJob: _forget_job,
    ForgetObject: _forget_object,
    FlushOld: _flush_old,
    RestoreRows: _restore_rows,
    Subscribe: _subscribe,
    Unsubscribe: _unsubscribe,
}


from ._pickling import fast_reduce as _fast_reduce  # noqa: E402

Op.__reduce__ = _fast_reduce  # type: ignore[method-assign]
Query.__reduce__ = _fast_reduce  # type: ignore[method-assign]

from ._fastinit import install_init as _install_init  # noqa: E402

_install_init(*Op.__subclasses__(), *Query.__subclasses__())
