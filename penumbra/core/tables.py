"""The GCS data model: tables, the operations on them, and their effects.

Theory of operation
-------------------
A GCS shard is a replicated state machine whose state is a set of tables and
whose log is a sequence of *operations*.  This module and its three
``tables_*`` siblings hold both: the op types (frozen dataclasses, so they
travel in messages and replicate as data) and ``Tables.apply``, the
deterministic function that applies one op.
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

Where things are
~~~~~~~~~~~~~~~~
* ``tables_ops.py``: the ops and queries, and how they route to shards;
* ``tables_state.py``: ``TablesState``, the rows, indexes, snapshots and
  reads of one replica;
* ``tables_flush.py``: what is forgotten and when, and flushing old rows to
  disk (the handlers of ``ForgetJob``, ``ForgetObject``, ``FlushOld``,
  ``RestoreRows``);
* here: ``Tables`` (``TablesState`` plus ``apply``), the handlers of every
  other op, and ``_APPLY``, the table ``apply`` dispatches through (the
  swarm's planted bugs replace entries of it: it must stay in this module).

Every name the ops module defines is importable from here too, as it was
before the split.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

from msgspec.structs import replace

from . import dead_nodes
from .ids import ActorId, ObjectId, TaskId, driver_task_id  # noqa: F401 (importable from here, as before)
from .records import (  # noqa: F401 (some only importable from here, as before)
    ActorEntry,
    ActorState,
    ErrorInfo,
    NodeEntry,
    ObjectEntry,
    PlacementGroupEntry,
    TaskEntry,
    TaskState,
)
from .specs import Payload, TaskSpec  # noqa: F401
from .tables_flush import _flush_old, _forget_job, _forget_object, _restore_rows
from .tables_ops import (
    TABLES,
    ActorLogRange,
    ActorsOnNode,
    AddLocation,
    AddTask,
    AppendActorLog,
    Change,
    CreatePlacementGroup,
    FinishTask,
    FlushOld,
    ForgetJob,
    ForgetObject,
    Get,
    GetMany,
    Keys,
    KvDelete,
    PutEndpoint,
    KvIncrement,
    KvPut,
    NodeDown,
    ObjectsOnNode,
    Op,
    PutActor,
    PutFunction,
    PutNode,
    Query,
    RegisterName,
    RemoveLocation,
    RemovePlacementGroup,
    RestoreRows,
    RetryTask,
    Scan,
    SetTaskNode,
    Subscribe,
    TableSizes,
    TasksOnNode,
    UnplacedTasks,
    UnregisterName,
    Unsubscribe,
    UpdatePlacementGroup,
    key_shard,
    shards_for,
)
from .tables_state import TablesState
from . import tables_ops as _ops

__all__ = ["Tables", *_ops.__all__]  # every op and query, re-exported


class Tables(TablesState):
    """The tables of one shard replica and the function that changes them."""

    __slots__ = ()

    # -- writes -------------------------------------------------------------------
    def apply(self, op: Op) -> tuple[Any, list[Change]]:
        """Apply one op; return (result, changes).  Deterministic."""
        handler = _APPLY.get(type(op))
        if handler is None:
            raise TypeError(f"unknown GCS op {op!r}")
        return handler(self, op)

    def forget_dead_nodes(self) -> list[str]:
        """Forget the nodes declared dead longest ago, beyond the latest
        ``dead_nodes.RETENTION`` (core/dead_nodes.py): their fence entry,
        their row in the node table, their subscriptions.  Called by the
        replica after each ``NodeDown``, on every replica alike (the fence
        keeps its order through snapshots), so the chain stays in step.
        Returns the ids forgotten."""
        dead = self.data["dead_nodes"]
        over = len(dead) - dead_nodes.RETENTION
        if over <= 0:
            return []
        gone = list(islice(dead, over))
        nodes = self.data["nodes"]
        for n in gone:
            del dead[n]
            row = nodes.get(n)
            if row is not None and not row.alive:
                del nodes[n]
        gone_set = set(gone)
        for key in [k for k, subs in self.subs.items() if not subs.isdisjoint(gone_set)]:
            subs = self.subs[key]
            subs -= gone_set
            if not subs:
                del self.subs[key]
        return gone


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
    for oid in sorted(t._pop_node_objects(op.node_id)):
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
        # (hot path: built directly rather than with structs.replace)
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
assert TaskEntry.__struct_fields__ == ("spec", "state", "node", "attempt", "reconstructions", "placed"), (
    "TaskEntry changed: update _finish_task in tables.py")
assert ObjectEntry.__struct_fields__ == ("object_id", "size", "locations", "created", "error", "actor_id"), (
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


def _put_endpoint(t: Tables, op: PutEndpoint):
    rows = t.data["kv"]
    old = rows.get(op.key)
    if old is not None and getattr(old, "incarnation", -1) > op.row.incarnation:
        return old, []
    rows[op.key] = op.row
    return op.row, [("kv", op.key, op.row)]


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
    PutEndpoint: _put_endpoint,
    ForgetJob: _forget_job,
    ForgetObject: _forget_object,
    FlushOld: _flush_old,
    RestoreRows: _restore_rows,
    Subscribe: _subscribe,
    Unsubscribe: _unsubscribe,
}
