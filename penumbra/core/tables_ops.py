"""The GCS's vocabulary: the ops (writes) and queries (reads), and their routes.

Theory of operation
-------------------
A GCS shard is a replicated state machine whose log is a sequence of
*operations*.  An op is a frozen ``Record`` (a ``msgspec.Struct``), so it travels in messages and
replicates as data; what applying one does is in ``tables.py``
(``Tables.apply``) and ``tables_flush.py`` (forgetting and flushing).  A
``Query`` never changes anything and is answered at the chain's tail by
``Tables.read``.

Each op and query names the (table, key) that decides its shard
(``route()``); ``key_shard`` and ``shards_for`` turn a route into the
shard(s) the client must reach.  The small tables kept whole on shard 0
(nodes, names, kv, placement groups) route there whatever the key.

These classes live here, apart from the tables, so that the messages that
carry them (``messages.py``) and the clients that make them need not import
the state machine that applies them.  ``tables.py`` re-exports every name.
"""

from __future__ import annotations

from typing import Any, Hashable

from .ids import ActorId, ObjectId, TaskId
from .records import (
    ActorEntry,
    ErrorInfo,
    NodeEntry,
    PlacementGroupEntry,
)
from .specs import Payload, Record, TaskSpec

__all__ = [
    "TABLES",
    "Op",
    "Query",
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
    "PutEndpoint",
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


class Op(Record):
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


class PutNode(Op):
    entry: NodeEntry

    def route(self):
        return ("nodes", self.entry.node_id)


class NodeDown(Op):
    """A node died: mark it dead and drop every location it held.

    Applied on every shard.  Objects left with no location become lost and
    their subscribers are told.
    """

    node_id: str

    def route(self):
        return ("", None)


class PutFunction(Op):
    function_id: bytes
    payload: Payload

    def route(self):
        return ("functions", self.function_id)


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


class SetTaskNode(Op):
    task_id: TaskId
    node: str

    def route(self):
        return ("tasks", self.task_id)


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


class RegisterName(Op):
    """Claim a unique actor name; the result is the actor id that holds it."""

    namespace: str
    name: str
    actor_id: ActorId

    def route(self):
        return ("names", (self.namespace, self.name))


class UnregisterName(Op):
    namespace: str
    name: str
    actor_id: ActorId

    def route(self):
        return ("names", (self.namespace, self.name))


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


class KvPut(Op):
    key: str
    value: Any
    overwrite: bool = True

    def route(self):
        return ("kv", self.key)


class KvIncrement(Op):
    """Add one to an integer (missing: 0) and return the new value; used to
    hand out cluster-unique job ids."""

    key: str

    def route(self):
        return ("kv", self.key)


class KvDelete(Op):
    key: str

    def route(self):
        return ("kv", self.key)


class PutEndpoint(Op):
    """Publish where an actor's incarnation takes direct calls: the
    key-value row ``key`` (core/msg_direct.py ``endpoint_key``) becomes
    ``row`` (an ``EndpointRow``) unless it holds a later incarnation's
    already (writes from two nodes may land in either order).  Returns
    the row stored after it."""

    key: str
    row: Any

    def route(self):
        return ("kv", self.key)


class ForgetJob(Op):
    """Job ``job_id`` ended and no node runs its tasks: delete its task and
    object rows on every shard (see "What is forgotten" in ``tables_flush.py``).  The result
    is a tuple of ``(object id, locations)`` of deleted objects that had
    copies somewhere."""

    job_id: int

    def route(self):
        return ("", None)


class ForgetObject(Op):
    """Delete an object's row: its owner freed it, and nobody else can
    name it (a private put)."""

    object_id: ObjectId

    def route(self):
        return ("objects", self.object_id)

    def order_key(self):
        return RemoveLocation.order_key(self)  # type: ignore[arg-type]


class FlushOld(Op):
    """Move up to ``limit`` old rows that may go (see "Flushing" in ``tables_flush.py``) out
    of memory, sparing the newest ``keep`` rows of each table.  The result
    is ``(segment, rows flushed)``; the rows themselves are left in
    ``Tables.flush_out`` for the replica to hand to its driver."""

    keep: int = 1000
    limit: int = 5000

    def route(self):
        return ("", None)


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


class Unsubscribe(Op):
    subscriber: str
    table: str
    key: Hashable = None

    def route(self):
        return (self.table, self.key)


class CreatePlacementGroup(Op):
    """A client asks for a placement group (the head, subscribed to the
    table, reserves it).  Refused (result: the id of the holder) when a
    live group of the same namespace already has the name; a repeat of the
    same id is a no-op (result True)."""

    entry: PlacementGroupEntry

    def route(self):
        return ("placement_groups", self.entry.pg_id)


class UpdatePlacementGroup(Op):
    """The head records where the bundles are and the group's state.  A
    removed group stays removed."""

    pg_id: str
    state: str
    nodes: tuple[str, ...]

    def route(self):
        return ("placement_groups", self.pg_id)


class RemovePlacementGroup(Op):
    """A client removes a group: its state becomes REMOVED (final); the
    head, notified, frees the bundles and kills what runs in them."""

    pg_id: str

    def route(self):
        return ("placement_groups", self.pg_id)


# ---------------------------------------------------------------------------
# Queries (reads, answered at the tail)


class Query(Record):
    """A read, answered at the tail; routed like ``Op``."""

    def route(self) -> tuple[str, Hashable]:
        raise NotImplementedError


class Get(Query):
    table: str
    key: Hashable

    def route(self):
        return (self.table, self.key)


class GetMany(Query):
    """Several keys of one table that live on one shard (the client groups)."""

    table: str
    keys: tuple

    def route(self):
        return (self.table, self.keys[0])


class Scan(Query):
    """Every row of a table on this shard (use for small tables only)."""

    table: str

    def route(self):
        return (self.table, None)


class TasksOnNode(Query):
    node: str

    def route(self):
        return ("tasks", None)


class ObjectsOnNode(Query):
    node: str

    def route(self):
        return ("objects", None)


class ActorsOnNode(Query):
    node: str

    def route(self):
        return ("actors", None)


class ActorLogRange(Query):
    actor_id: ActorId
    start: int
    end: int

    def route(self):
        return ("actor_log", (self.actor_id, self.start))


class Keys(Query):
    """The keys of a table on this shard (for small tables whose rows say
    nothing but their key: ``ended_jobs``, ``dead_nodes``)."""

    table: str

    def route(self):
        return (self.table, None)


class UnplacedTasks(Query):
    """Pending tasks on no node: re-homed by the head's recovery and not
    placed yet.  Read by a recovering head only (a full scan)."""

    def route(self):
        return ("tasks", None)


class TableSizes(Query):
    """How many rows each table holds, on every shard (for status and for
    watching the GCS's memory: see "What is forgotten" in ``tables_flush.py``)."""

    def route(self):
        return ("", None)


# Ops and queries cross processes inside messages: pickle them as (rebuild,
# field values), like the protocol's messages (see ``_pickling``).
from ._pickling import fast_reduce as _fast_reduce  # noqa: E402
from ._pickling import install as _install_pickling  # noqa: E402

Op.__reduce__ = _fast_reduce  # type: ignore[method-assign]
Query.__reduce__ = _fast_reduce  # type: ignore[method-assign]
_install_pickling(*Op.__subclasses__(), *Query.__subclasses__())
