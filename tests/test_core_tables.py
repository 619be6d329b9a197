"""tables.py: every op of ``Tables.apply``, the queries and the indexes."""

from __future__ import annotations

import pytest

from penumbra.core.ids import actor_id_of, return_object_id
from penumbra.core.records import (
    ActorEntry,
    ActorState,
    ErrorInfo,
    ErrorKind,
    NodeEntry,
    TaskState,
)
from penumbra.core.specs import ActorSpec, FunctionDescriptor, Payload, ResourceSet
from penumbra.core.tables import (
    ActorLogRange,
    ActorsOnNode,
    AddLocation,
    AddTask,
    AppendActorLog,
    FinishTask,
    Get,
    GetMany,
    KvDelete,
    KvPut,
    NodeDown,
    ObjectsOnNode,
    PutActor,
    PutFunction,
    PutNode,
    Query,
    RegisterName,
    RemoveLocation,
    RetryTask,
    Scan,
    SetTaskNode,
    Subscribe,
    Tables,
    TasksOnNode,
    UnregisterName,
    Unsubscribe,
    key_shard,
    shards_for,
)

ERR = ErrorInfo(ErrorKind.TASK_ERROR, "boom")


def check_indexes(t: Tables) -> None:
    """The derived indexes equal what a scan of the tables says."""
    rebuilt = Tables.restore(t.snapshot())
    by_node = {n: set(t.node_tasks(n)) for n in t._tasks_by_node}
    assert by_node == {n: set(rebuilt.node_tasks(n)) for n in rebuilt._tasks_by_node}
    assert all(by_node.values())  # no node is left listed with no task
    objs = {n: set(t.node_objects(n)) for n in t._objects_by_node}
    assert objs == {n: set(rebuilt.node_objects(n)) for n in rebuilt._objects_by_node}
    assert all(objs.values())  # no node is left listed with no object


def test_task_lifecycle_and_index(core) -> None:
    t = Tables()
    s = core.spec()
    entry, changes = t.apply(AddTask(s, "node:0"))
    assert entry.state is TaskState.PENDING and entry.node == "node:0" and entry.attempt == 0
    assert changes == [("tasks", s.task_id, entry)]
    assert t.read(TasksOnNode("node:0")) == (entry,)
    moved, _ = t.apply(SetTaskNode(s.task_id, "node:1"))
    assert moved.node == "node:1"
    assert t.read(TasksOnNode("node:0")) == () and t.read(TasksOnNode("node:1")) == (moved,)
    retried, _ = t.apply(RetryTask(s.task_id, "node:2", attempt=1))
    assert retried.attempt == 1 and retried.reconstructions == 0 and retried.node == "node:2"
    rec, _ = t.apply(RetryTask(s.task_id, "node:2", reconstruction=True, attempt=2))
    assert rec.attempt == 2 and rec.reconstructions == 1
    oid = s.return_ids[0]
    ok, changes = t.apply(FinishTask(s.task_id, "node:2", ((oid, 100),), attempt=2))
    assert ok is True
    done = t.data["tasks"][s.task_id]
    assert done.state is TaskState.FINISHED and done.attempt == 2
    assert [c[0] for c in changes] == ["tasks", "objects"]
    obj = t.data["objects"][oid]
    assert obj.created and obj.locations == {"node:2"} and obj.size == 100 and not obj.lost
    assert t.read(TasksOnNode("node:2")) == ()  # finished tasks leave the index
    assert t.read(ObjectsOnNode("node:2")) == (oid,)
    # SetTaskNode on a finished task changes nothing
    assert t.apply(SetTaskNode(s.task_id, "node:9")) == (done, [])
    # re-submission (a re-executed parent, or a late write) keeps the outcome
    again, changes = t.apply(AddTask(s, "node:3"))
    assert again.state is TaskState.FINISHED and again.attempt == 2 and changes == []
    assert t.apply(RetryTask(core.spec().task_id, "n", attempt=1)) == (None, [])
    check_indexes(t)


def test_task_writes_that_land_out_of_order_do_not_undo_a_finish(core) -> None:
    """Found by the swarm: a retry's RetryTask and FinishTask from one node
    can land in either order (retries, reordering links); the row must end
    FINISHED either way, and a stale retry must not reopen it."""
    s = core.spec()
    oid = s.return_ids[0]
    for order in ("retry-first", "finish-first"):
        t = Tables()
        t.apply(AddTask(s, "node:0"))
        ops = [RetryTask(s.task_id, "node:0", attempt=1), FinishTask(s.task_id, "node:0", ((oid, 8),), attempt=1)]
        if order == "finish-first":
            ops.reverse()
        for op in ops:
            t.apply(op)
        row = t.data["tasks"][s.task_id]
        assert row.state is TaskState.FINISHED and row.attempt == 1, order
        assert t.read(TasksOnNode("node:0")) == ()
        # an older attempt's finish after a newer retry is stale too
        t.apply(RetryTask(s.task_id, "node:1", attempt=2))
        t.apply(FinishTask(s.task_id, "node:0", ((oid, 8),), attempt=1))
        assert t.data["tasks"][s.task_id].state is TaskState.PENDING
        check_indexes(t)


def test_finish_with_error_and_retry_after_error(core) -> None:
    t = Tables()
    s = core.spec()
    oid = s.return_ids[0]
    t.apply(AddTask(s, "node:0"))
    t.apply(FinishTask(s.task_id, "node:0", ((oid, 0),), error=ERR))
    assert t.data["tasks"][s.task_id].state is TaskState.FAILED
    e = t.data["objects"][oid]
    assert e.error == ERR and not e.locations and e.created and not e.lost
    # a later successful run replaces the error with a location
    t.apply(FinishTask(s.task_id, "node:1", ((oid, 8),)))
    e = t.data["objects"][oid]
    assert e.error is None and e.locations == {"node:1"}
    # FinishTask without a task row still records outputs (a put or a lost row)
    other = core.spec()
    assert t.apply(FinishTask(other.task_id, "node:1", ((other.return_ids[0], 5),)))[0] is True
    assert other.task_id not in t.data["tasks"]
    check_indexes(t)


def test_locations_and_node_down(core) -> None:
    t = Tables()
    a, b = core.spec().return_ids[0], core.spec().return_ids[0]
    t.apply(PutNode(NodeEntry("node:0", ResourceSet.of(CPU=1))))
    assert t.apply(AddLocation(a, "node:0", 10)) == (True, [("objects", a, t.data["objects"][a])])
    assert t.apply(AddLocation(a, "node:0", 10)) == (True, [])  # idempotent, no change
    t.apply(AddLocation(a, "node:1", 10))
    t.apply(AddLocation(b, "node:0", 20))
    assert t.read(ObjectsOnNode("node:0")) == tuple(sorted((a, b)))
    lost, changes = t.apply(NodeDown("node:0"))
    assert lost == (b,)  # a survives on node:1
    assert t.data["nodes"]["node:0"].alive is False
    assert ("nodes", "node:0") == changes[0][:2]
    assert {c[1] for c in changes[1:]} == {a, b}
    assert t.data["objects"][b].lost and not t.data["objects"][a].lost
    assert t.read(ObjectsOnNode("node:0")) == ()
    # a second NodeDown changes nothing
    assert t.apply(NodeDown("node:0")) == ((), [])
    assert t.apply(RemoveLocation(a, "node:1"))[0] is True
    assert t.data["objects"][a].lost
    assert t.apply(RemoveLocation(a, "node:1")) == (False, [])
    # an error location holds no node
    t.apply(AddLocation(a, "node:5", 0, error=ERR))
    assert t.data["objects"][a].error == ERR and not t.data["objects"][a].locations
    check_indexes(t)


def test_functions_kv_names(core) -> None:
    t = Tables()
    assert t.apply(PutFunction(b"f", Payload(3))) == (True, [("functions", b"f", Payload(3))])
    assert t.apply(PutFunction(b"f", Payload(4))) == (False, [])
    assert t.read(Get("functions", b"f")) == Payload(3)
    assert t.apply(KvPut("k", 1))[0] is True
    assert t.apply(KvPut("k", 2, overwrite=False)) == (False, [])
    assert t.apply(KvPut("k", 3)) == (True, [("kv", "k", 3)])
    assert t.apply(KvDelete("k")) == (True, [("kv", "k", None)])
    assert t.apply(KvDelete("k")) == (False, [])
    a1, a2 = actor_id_of(core.spec().task_id), actor_id_of(core.spec().task_id)
    assert t.apply(RegisterName("ns", "x", a1)) == (a1, [("names", ("ns", "x"), a1)])
    assert t.apply(RegisterName("ns", "x", a2)) == (a1, [])  # the holder is the answer
    assert t.apply(RegisterName("other", "x", a2))[0] == a2
    assert t.apply(UnregisterName("ns", "x", a2)) == (False, [])  # not the holder
    assert t.apply(UnregisterName("ns", "x", a1)) == (True, [("names", ("ns", "x"), None)])
    assert t.apply(RegisterName("ns", "x", a2))[0] == a2


def _actor(core, **kw):
    creation = core.spec()
    spec = ActorSpec(actor_id=actor_id_of(creation.task_id), cls=FunctionDescriptor(b"C", "C"), **kw)
    return ActorEntry(spec, creation)


def test_actors_cas_and_log(core) -> None:
    t = Tables()
    e = _actor(core)
    aid = e.spec.actor_id
    assert t.apply(PutActor(e)) == (e, [("actors", aid, e)])
    alive = ActorEntry(e.spec, e.creation, state=ActorState.ALIVE, node="node:0")
    # compare-and-set on the incarnation
    assert t.apply(PutActor(alive, expect_incarnation=1)) == (e, [])
    assert t.apply(PutActor(alive, expect_incarnation=0))[0] == alive
    assert t.read(ActorsOnNode("node:0")) == (alive,)
    dead = ActorEntry(e.spec, e.creation, state=ActorState.DEAD)
    t.apply(PutActor(dead))
    assert t.apply(PutActor(alive, expect_incarnation=0)) == (dead, [])  # dead is final for CAS
    assert t.read(ActorsOnNode("node:0")) == ()
    # CAS on a missing row: only the first incarnation's (the creating
    # node's PENDING write may still be on its way, resent after a drop)
    other = _actor(core)
    oid = other.spec.actor_id
    assert t.apply(PutActor(other, expect_incarnation=1)) == (None, [])
    other_alive = ActorEntry(other.spec, other.creation, state=ActorState.ALIVE, node="node:1")
    assert t.apply(PutActor(other_alive, expect_incarnation=0)) == (other_alive, [("actors", oid, other_alive)])
    # ... and that late first write, create-only, leaves the ALIVE row be
    assert t.apply(PutActor(other, create_only=True)) == (other_alive, [])
    third = _actor(core)
    assert t.apply(PutActor(third, create_only=True)) == (third, [("actors", third.spec.actor_id, third)])
    # the replay log, read as task rows
    specs = [core.spec() for _ in range(3)]
    for i, s in enumerate(specs):
        t.apply(AddTask(s, "node:0"))
        assert t.apply(AppendActorLog(aid, i, s.task_id))[0] is True
    rows = t.read(ActorLogRange(aid, 1, 10))
    assert [r.spec for r in rows] == specs[1:]  # stops at the first gap


def test_subscriptions(core) -> None:
    t = Tables()
    oid = core.spec().return_ids[0]
    assert t.apply(Subscribe("c1", "objects", oid)) == (None, [])
    t.apply(Subscribe("c2", "objects", None))
    assert t.subscribers("objects", oid) == {"c1", "c2"}
    assert t.subscribers("objects", b"other") == {"c2"}
    t.apply(AddLocation(oid, "n", 1))
    current, _ = t.apply(Subscribe("c3", "objects", oid))  # late: gets the current row
    assert current == t.data["objects"][oid]
    assert t.apply(Unsubscribe("c1", "objects", oid)) == (True, [])
    assert t.apply(Unsubscribe("c1", "objects", oid)) == (False, [])
    assert t.subscribers("objects", oid) == {"c2", "c3"}
    t.apply(Unsubscribe("c3", "objects", oid))
    assert ("objects", oid) not in t.subs


def test_reads_and_errors(core) -> None:
    t = Tables()
    specs = [core.spec() for _ in range(3)]
    for s in specs:
        t.apply(AddTask(s, "node:0"))
    keys = tuple(s.task_id for s in specs) + (core.spec().task_id,)
    rows = t.read(GetMany("tasks", keys))
    assert [r.spec for r in rows[:3]] == specs and rows[3] is None
    assert len(t.read(Scan("tasks"))) == 3
    with pytest.raises(TypeError, match="unknown GCS query"):
        t.read(Query())
    with pytest.raises(TypeError, match="unknown GCS op"):
        t.apply(object())  # type: ignore[arg-type]


def test_snapshot_restore_and_fingerprint(core) -> None:
    t = Tables()
    for i in range(5):
        s = core.spec()
        t.apply(AddTask(s, f"node:{i % 2}"))
        if i % 2:
            t.apply(FinishTask(s.task_id, "node:1", ((s.return_ids[0], i),)))
    t.apply(Subscribe("c", "tasks", None))
    u = Tables.restore(t.snapshot())
    assert u.fingerprint() == t.fingerprint()
    assert u.subs == t.subs
    assert u.read(TasksOnNode("node:0")) == t.read(TasksOnNode("node:0"))
    # the snapshot is a copy: changing one does not change the other
    u.apply(KvPut("x", 1))
    assert u.fingerprint() != t.fingerprint()
    check_indexes(t)


def test_routing() -> None:
    assert shards_for(("nodes", "node:1"), 4) == (0,)
    assert shards_for(("kv", "x"), 4) == (0,)
    assert list(shards_for(("", None), 3)) == [0, 1, 2]
    assert list(shards_for(("tasks", None), 3)) == [0, 1, 2]
    key = bytes([0, 0, 0, 5]) + bytes(12)
    assert shards_for(("tasks", key), 4) == (1,)
    assert key_shard("actor_log", (key, 7), 4) == key_shard("actors", key, 4) == 1
    assert shards_for(("tasks", key), 1) == (0,)
    assert shards_for(("tasks", None), 1) == range(1)  # every shard: grouped, even one
    assert shards_for(("", None), 1) == range(1)
    assert shards_for(("nodes", None), 3) == (0,)


def test_a_node_without_pending_tasks_leaves_no_index_entry(core) -> None:
    # every node that ever ran one of a shard's tasks kept an empty set
    # there (216 bytes; about one a task at 10,000 nodes: issue 17)
    t = Tables()
    specs = [core.spec() for _ in range(3)]
    for s in specs:
        t.apply(AddTask(s, "node:0"))
    t.apply(SetTaskNode(specs[0].task_id, "node:1"))
    assert set(t._tasks_by_node) == {"node:0", "node:1"}
    t.apply(FinishTask(specs[0].task_id, "node:1", ((specs[0].return_ids[0], 8),)))
    assert set(t._tasks_by_node) == {"node:0"}
    for s in specs[1:]:
        t.apply(FinishTask(s.task_id, "node:0", ((s.return_ids[0], 8),)))
    assert t._tasks_by_node == {} and t.read(TasksOnNode("node:0")) == ()



def test_a_node_with_one_object_of_a_shard_costs_no_set(core) -> None:
    # a one-element set per (shard, node) was ~216 bytes a finished task at
    # 10,000 nodes over 5,000 shards (issue 17): the only object is kept bare
    t = Tables()
    a, b, c = (core.spec().return_ids[0] for _ in range(3))
    t.apply(AddLocation(a, "node:0", 10))
    t.apply(AddLocation(c, "node:1", 10))
    assert t._objects_by_node == {"node:0": a, "node:1": c}
    assert t.read(ObjectsOnNode("node:0")) == (a,)
    t.apply(AddLocation(b, "node:0", 10))
    assert t.read(ObjectsOnNode("node:0")) == tuple(sorted((a, b)))
    check_indexes(t)
    t.apply(RemoveLocation(a, "node:0"))
    assert t.read(ObjectsOnNode("node:0")) == (b,)
    t.apply(RemoveLocation(b, "node:0"))
    t.apply(RemoveLocation(c, "node:1"))
    assert t._objects_by_node == {} and t.read(ObjectsOnNode("node:0")) == ()
    t.apply(AddLocation(a, "node:2", 10))
    lost, _ = t.apply(NodeDown("node:2"))
    assert lost == (a,) and t._objects_by_node == {}
    check_indexes(t)


def test_a_node_with_one_pending_task_of_a_shard_costs_no_set(core) -> None:
    t = Tables()
    s1, s2 = core.spec(), core.spec()
    t.apply(AddTask(s1, "node:0"))
    assert t._tasks_by_node == {"node:0": s1.task_id}
    assert t.read(TasksOnNode("node:0")) == (t.data["tasks"][s1.task_id],)
    t.apply(AddTask(s2, "node:0"))
    both = sorted((s1.task_id, s2.task_id))
    assert t.read(TasksOnNode("node:0")) == tuple(t.data["tasks"][x] for x in both)
    check_indexes(t)
    t.apply(FinishTask(s1.task_id, "node:0", ((s1.return_ids[0], 8),)))
    assert t.read(TasksOnNode("node:0")) == (t.data["tasks"][s2.task_id],)
    t.apply(FinishTask(s2.task_id, "node:0", ((s2.return_ids[0], 8),)))
    assert t._tasks_by_node == {}
    check_indexes(t)
