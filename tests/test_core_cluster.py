"""Whole clusters on memnet: the bottom-up flow across nodes, node death,
and lineage recovery (Recovery in the head)."""

from __future__ import annotations

import pytest

from penumbra.core.ids import put_object_id
from penumbra.core.messages import NodeDied, ObjectsReady, PutDone, PutObject, SubmitTask, WatchObjects
from penumbra.core.records import ErrorKind, TaskState
from penumbra.core.specs import ResourceSet
from penumbra.core.scheduler import SchedulerConfig
from penumbra.verification.memnet import ok


def ready(inbox, req_id=None):
    """object id -> ObjectInfo, from every ObjectsReady in an inbox."""
    out = {}
    for m in inbox:
        if isinstance(m, ObjectsReady) and (req_id is None or m.req_id == req_id):
            out.update(dict(m.objects))
    return out


def submit(net, node, spec, client="c:d"):
    net.send(client, node, SubmitTask(client=client, spec=spec))


def watch(net, node, oids, req_id=1, client="c:d", fetch=True):
    net.send(client, node, WatchObjects(client=client, req_id=req_id, object_ids=tuple(oids), fetch=fetch))


def gcs_row(net, table, key):
    """The row at the tail of the key's shard."""
    from penumbra.core.tables import key_shard

    head = net.machines["head"]
    shard = key_shard(table, key, len(head.chain.shards))
    tail = head.chain.shards[shard].config.tail
    return net.machines[tail].tables.data[table].get(key)


def runs(net, spec):
    """How many times each node started ``spec``, from the stories."""
    out = {}
    for addr, m in net.machines.items():
        if addr.startswith("node:"):
            n = sum(1 for _, _, w in m.story(spec.task_id) if w.startswith("running"))
            if n:
                out[addr] = n
    return out


# ============================================================================ bottom-up flow


def test_nodes_learn_of_each_other(core) -> None:
    net = core.cluster(nodes=3, shards=2, chain=2)
    for i in range(3):
        node = net.machines[f"node:{i}"]
        assert node.nodes == {f"node:{j}": True for j in range(3) if j != i}
        assert node.scheduler.other_nodes_alive == 2


def test_infeasible_task_placed_remotely_inputs_fetched_watcher_notified(core) -> None:
    net = core.cluster(
        nodes=2, shards=2, chain=2,
        resources=[ResourceSet.of(CPU=1), ResourceSet.of(CPU=1, GPU=1)],
        behaviour=lambda s, a: ok(0.1, sizes=(1000,) * s.num_returns),
    )
    inbox = net.add_client("c:d")
    a = core.spec()
    b = core.spec(deps=a.return_ids, resources=ResourceSet.of(CPU=1, GPU=1))
    submit(net, "node:0", a)
    submit(net, "node:0", b)
    watch(net, "node:0", b.return_ids)
    net.run_for(1.0)
    n0, n1 = net.machines["node:0"], net.machines["node:1"]
    assert ("forwarded (infeasible)") in [w for _, _, w in n0.story(b.task_id)]
    assert runs(net, a) == {"node:0": 1} and runs(net, b) == {"node:1": 1}
    # b's input was fetched from node:0 into node:1's store
    assert a.return_ids[0] in n1.objects.store
    assert net.stores["node:1"][a.return_ids[0]] == 1000
    # b's output is recorded in the GCS, and the watcher on node:0 was told
    row = gcs_row(net, "objects", b.return_ids[0])
    assert row.locations == {"node:0", "node:1"} and row.size == 1000
    assert gcs_row(net, "tasks", b.task_id).state is TaskState.FINISHED
    assert gcs_row(net, "tasks", b.task_id).node == "node:1"
    assert ready(inbox)[b.return_ids[0]].size == 1000
    assert b.return_ids[0] in n0.objects.store  # get() fetched it to the watcher's node


def test_overloaded_node_forwards_and_work_spreads(core) -> None:
    net = core.cluster(nodes=3, behaviour=lambda s, a: ok(0.2),
                       scheduler=SchedulerConfig(forward_queue_threshold=2))
    inbox = net.add_client("c:d")
    specs = [core.spec() for _ in range(12)]
    for s in specs:
        submit(net, "node:0", s)
    watch(net, "node:0", [s.return_ids[0] for s in specs])
    net.run_for(3.0)
    assert len(ready(inbox)) == 12
    where = {}
    for s in specs:
        (node,) = runs(net, s)
        where[node] = where.get(node, 0) + 1
    assert set(where) == {"node:0", "node:1", "node:2"}, where
    assert net.machines["node:0"].scheduler.forwarded_count > 0
    assert not net.logs


# ============================================================================ node death


def test_pending_tasks_on_dead_node_rerun_elsewhere(core) -> None:
    durations = {}
    net = core.cluster(nodes=3, behaviour=lambda s, a: ok(durations.get(s.task_id, 0.1)))
    inbox = net.add_client("c:d")
    net.add_client("c:w")
    long = core.spec()
    durations[long.task_id] = 5.0
    submit(net, "node:1", long, client="c:w")
    watch(net, "node:0", long.return_ids)
    net.run_for(0.5)
    assert runs(net, long) == {"node:1": 1}
    net.crash("node:1")
    net.run_for(8.0)  # the head notices the silence (node_timeout=1s)
    head = net.machines["head"]
    assert head.dead_nodes == {"node:1"} and head.recovery.resubmitted == 1
    assert ready(inbox)[long.return_ids[0]].error is None
    row = gcs_row(net, "tasks", long.task_id)
    assert row.state is TaskState.FINISHED and row.node in ("node:0", "node:2") and row.attempt == 1


def test_pending_task_without_retries_fails_with_node_died(core) -> None:
    net = core.cluster(nodes=2, behaviour=lambda s, a: ok(5.0))
    inbox = net.add_client("c:d")
    s = core.spec(max_retries=0)
    submit(net, "node:1", s)
    watch(net, "node:0", s.return_ids)
    net.run_for(0.2)
    net.crash("node:1")
    net.inject("head", NodeDied(node_id="node:1"))  # told at once
    net.run_for(0.5)
    err = ready(inbox)[s.return_ids[0]].error
    assert err.kind is ErrorKind.NODE_DIED and "max_retries=0" in err.message


def test_lost_object_and_lost_ancestor_are_rebuilt_once_each(core) -> None:
    net = core.cluster(nodes=3, shards=2, chain=2, behaviour=lambda s, a: ok(0.1))
    inbox = net.add_client("c:d")
    net.add_client("c:w")
    a = core.spec()
    b = core.spec(deps=a.return_ids)
    submit(net, "node:1", a, client="c:w")
    submit(net, "node:1", b, client="c:w")
    net.run_for(0.5)
    assert runs(net, b) == {"node:1": 1}
    net.crash("node:1")
    net.inject("head", NodeDied(node_id="node:1"))
    net.run_for(0.5)
    assert gcs_row(net, "objects", b.return_ids[0]).lost
    # someone waits on b's output: a and b re-run (once each), then c
    c = core.spec(deps=b.return_ids)
    submit(net, "node:0", c)
    watch(net, "node:0", c.return_ids)
    net.run_for(3.0)
    assert ready(inbox)[c.return_ids[0]].error is None
    head = net.machines["head"]
    assert head.recovery.reexecuted == 2
    assert sum(runs(net, a).values()) == 1 and sum(runs(net, b).values()) == 1  # node:1's stories are gone
    assert gcs_row(net, "tasks", a.task_id).reconstructions == 1
    assert not head.recovery.rebuilding and not head.recovery.jobs


def test_lost_put_object_is_unrecoverable(core) -> None:
    net = core.cluster(nodes=2)
    inbox = net.add_client("c:d")
    w = net.add_client("c:w")
    p = put_object_id(core.root, 1)
    net.put_bytes("node:1", p, 64)
    net.send("c:w", "node:1", PutObject(client="c:w", req_id=1, object_id=p, size=64))
    net.run_for(0.1)
    assert any(isinstance(m, PutDone) for m in w)
    net.crash("node:1")
    net.inject("head", NodeDied(node_id="node:1"))
    net.run_for(0.2)
    watch(net, "node:0", (p,))
    net.run_for(0.5)
    err = ready(inbox)[p].error
    assert err.kind is ErrorKind.OBJECT_LOST and "put()" in err.message


def test_reconstruction_budget_exhausted(core) -> None:
    net = core.cluster(nodes=2)
    inbox = net.add_client("c:d")
    net.add_client("c:w")
    s = core.spec(max_retries=0)
    submit(net, "node:1", s, client="c:w")
    net.run_for(0.2)
    net.crash("node:1")
    net.inject("head", NodeDied(node_id="node:1"))
    net.run_for(0.2)
    watch(net, "node:0", s.return_ids)
    net.run_for(0.5)
    err = ready(inbox)[s.return_ids[0]].error
    assert err.kind is ErrorKind.OBJECT_LOST and "max_retries=0" in err.message
    assert net.machines["head"].recovery.reexecuted == 0


def test_reconstruction_budget_spent_on_a_later_attempt_fails_the_row(core) -> None:
    """A task rebuilt once (attempt 1, max_retries=1) loses its output
    again: the head fails it, and its row must say so at that attempt (an
    error recorded as attempt 0 is stale against the row's attempt 1 and
    was dropped: a row left pending that way stayed pending for good,
    strategy-drawn plan 64806)."""
    cpus = ResourceSet.of(CPU=2)
    net = core.cluster(nodes=5, resources=[ResourceSet()] + [cpus] * 4)
    inbox = net.add_client("c:d")
    net.add_client("c:w")
    s = core.spec(max_retries=1)
    submit(net, "node:1", s, client="c:w")
    net.run_for(0.2)
    users = []
    for req in (1, 2):
        for holder in sorted(gcs_row(net, "objects", s.return_ids[0]).locations):  # every copy goes
            net.crash(holder)
            net.inject("head", NodeDied(node_id=holder))
        net.run_for(0.2)
        user = core.spec(deps=s.return_ids)  # needs s's output: the head rebuilds s (once)
        submit(net, next(n for n in ("node:1", "node:2", "node:3", "node:4") if n in net.machines), user)
        watch(net, "node:0", user.return_ids, req_id=req)
        net.run_for(0.5)
        users.append(ready(inbox, req)[user.return_ids[0]])
    assert users[0].error is None  # rebuilt
    assert users[1].error.kind is ErrorKind.OBJECT_LOST and "max_retries=1" in users[1].error.message
    row = gcs_row(net, "tasks", s.task_id)
    assert (row.state, row.attempt) == (TaskState.FAILED, 1)


def test_heartbeat_loss_declares_node_dead(core) -> None:
    net = core.cluster(nodes=2)
    net.isolate("node:1")
    net.run_for(2.0)
    head = net.machines["head"]
    assert head.dead_nodes == {"node:1"}
    assert net.machines["node:0"].nodes["node:1"] is False
    assert gcs_row(net, "nodes", "node:1").alive is False


# ============================================================================ memnet itself


def test_memnet_killed_worker_runs_nothing(core) -> None:
    from penumbra.core.messages import Execute, KillWorker, StartWorker, TaskFinished, WorkerCrashed
    from penumbra.verification.memnet import MemNet

    class Stub:
        def __init__(self):
            self.seen = []

        def handle(self, ev, now):
            self.seen.append(type(ev).__name__)
            if isinstance(ev, WorkerCrashed):
                return []
            return [StartWorker(worker_id="w")] if ev == "start" else []

    net = MemNet()
    stub = Stub()
    net.add("n", stub)
    net._execute("n", [StartWorker(worker_id="w")])
    net.run()
    spec = core.spec()
    net._execute("n", [KillWorker(worker_id="w", reason="stop"), Execute(worker_id="w", spec=spec)])
    net.run()
    assert "WorkerCrashed" in stub.seen and "TaskFinished" not in stub.seen
    assert spec.return_ids[0] not in net.stores["n"]


def test_a_lost_return_whose_rebuild_is_refused_fails_alone(core) -> None:
    """A two-return task with no retries left loses r2 with its node while
    node:0 holds a copy of r1: r2's get fails, r1 keeps its value and its
    row keeps node:0 (the error was written over both rows, orphaning the
    copy: swarm seed 951).  As in Ray, only the lost object fails."""
    net = core.cluster(nodes=2)
    inbox = net.add_client("c:d")
    net.add_client("c:w")
    s = core.spec(max_retries=0, num_returns=2)
    r1, r2 = s.return_ids
    submit(net, "node:1", s, client="c:w")
    net.run_for(0.2)
    watch(net, "node:0", (r1,))  # fetched: node:0 holds a copy of r1
    net.run_for(0.2)
    assert "node:0" in gcs_row(net, "objects", r1).locations
    net.crash("node:1")
    net.inject("head", NodeDied(node_id="node:1"))
    net.run_for(0.2)
    watch(net, "node:0", (r2,), req_id=2)
    net.run_for(0.5)
    err = ready(inbox, 2)[r2].error
    assert err.kind is ErrorKind.OBJECT_LOST and "max_retries=0" in err.message
    row = gcs_row(net, "objects", r1)
    assert row.error is None and row.locations == {"node:0"}
