"""A new head rebuilt from surviving GCS replicas (core/head.py, "Recovery:
a new head from surviving replicas"), driven through memnet.

The head machine and some GCS replicas (those that lived with it) crash;
the nodes and the other replicas live on.  A new head started with
``recover_from`` must adopt the chains, lose no acknowledged write, keep the
live nodes, restart what died while there was no head, and place what the
old head held in its queues."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from msgspec.structs import replace as replace_struct

from penumbra.core.head import HeadConfig, HeadMachine
from penumbra.core.ids import actor_id_of
from penumbra.core.layout import ClusterLayout, NodeShape, build_machines
from penumbra.core.messages import (
    ChainQuery,
    ChainReport,
    ClientGcsReply,
    ClientGcsRequest,
    ForwardTask,
    ObjectsReady,
    SubmitTask,
    WatchObjects,
)
from penumbra.core.records import ActorState, TaskState
from penumbra.core.specs import ActorSpec, FunctionDescriptor, ResourceSet
from penumbra.core.tables import Get, KvPut, RegisterName
from penumbra.verification.memnet import MemNet, ok

CLIENT = "c:d"


class Bed:
    """A memnet cluster whose head (and the replicas placed with it) can be
    crashed and recovered."""

    def __init__(self, core, nodes=2, shards=1, chain=3, behaviour=None, resources=None) -> None:
        self.core = core
        shapes = tuple(NodeShape(resources=r) for r in (resources or [ResourceSet.of(CPU=2)] * nodes))
        self.layout = ClusterLayout(nodes=shapes, gcs_shards=shards, chain_length=chain)
        self.net = MemNet(behaviour=behaviour or (lambda s, a: ok(0.01)), latency=0.001)
        for address, machine in build_machines(self.layout, random.Random(0)).items():
            self.net.add(address, machine)
        self.inbox = self.net.add_client(CLIENT)
        self.req = 0
        self.net.run_for(0.1)

    @property
    def head(self) -> HeadMachine:
        return self.net.machines["head"]

    # ------------------------------------------------------------------ client
    def gcs(self, request, node="node:0") -> int:
        self.req += 1
        self.net.send(CLIENT, node, ClientGcsRequest(client=CLIENT, req_id=self.req, request=request))
        return self.req

    def answer(self, req_id):
        for m in self.inbox:
            if isinstance(m, ClientGcsReply) and m.req_id == req_id:
                return m
        return None

    def ask(self, request, node="node:0", timeout=5.0):
        """A client's GCS request, run until answered; its result."""
        rid = self.gcs(request, node)
        self.net.run_until(lambda: self.answer(rid) is not None, timeout=timeout)
        return self.answer(rid).result

    def results(self):
        out = {}
        for m in self.inbox:
            if isinstance(m, ObjectsReady):
                out.update(dict(m.objects))
        return out

    def submit(self, spec, node="node:0"):
        self.net.send(CLIENT, node, SubmitTask(client=CLIENT, spec=spec))

    def watch(self, oids, req_id=1, node="node:0"):
        self.net.send(CLIENT, node, WatchObjects(client=CLIENT, req_id=req_id, object_ids=tuple(oids)))

    def create_actor(self, node="node:0", **kw):
        s = self.core.spec()
        a = ActorSpec(actor_id=actor_id_of(s.task_id), cls=FunctionDescriptor(b"C", "C"), **kw)
        self.submit(replace_struct(s, actor_creation=a), node)
        return a.actor_id

    # ------------------------------------------------------------------ the crash
    def crash_head(self, replicas=("gcs:0:0",)) -> None:
        """The head's host dies: the head and the replicas placed with it."""
        self.net.crash("head")
        for r in replicas:
            self.net.crash(r)

    def recover(self, survivors, **kw) -> HeadMachine:
        cfg = replace(self.layout.head_config(), recover_from=tuple(survivors), **kw)
        self.net.add("head", HeadMachine(cfg, random.Random(1)))
        self.net.run_until(lambda: self.head.recovering is None, timeout=5.0)
        return self.head

    def tail_row(self, table, key, shard=0):
        tail = self.head.chain.shards[shard].config.tail
        return self.net.machines[tail].tables.data[table].get(key)


def test_acknowledged_writes_survive_and_dead_replicas_are_cut(core) -> None:
    bed = Bed(core, nodes=2, chain=3)
    net = bed.net
    for i in range(20):
        assert bed.ask(KvPut(f"k{i}", i)) is True
    aid = actor_id_of(core.spec().task_id)
    assert bed.ask(RegisterName("ns", "svc", aid)) == aid
    specs = [core.spec() for _ in range(6)]
    for s in specs:
        bed.submit(s)
    bed.watch([o for s in specs for o in s.return_ids])
    net.run_until(lambda: len(bed.results()) == 6, timeout=5.0)

    bed.crash_head(("gcs:0:0",))
    net.run_for(0.5)  # no head: the replicas keep their config, the nodes run on
    assert bed.ask(Get("kv", "k3")) == 3  # and the tail serves reads meanwhile
    head = bed.recover(["gcs:0:1", "gcs:0:2"])
    # the replica that died with the old head is cut once its silence is
    # noticed (the survivors are caught up)
    net.run_until(lambda: head.chain.shards[0].config.replicas == ("gcs:0:1", "gcs:0:2"), timeout=2.0)
    for i in range(20):
        assert bed.ask(Get("kv", f"k{i}")) == i
    assert bed.ask(Get("names", ("ns", "svc"))) == aid
    for s in specs:
        assert bed.tail_row("tasks", s.task_id).state is TaskState.FINISHED
    # the nodes lived on: adopted, never declared dead
    net.run_for(2.0)
    assert head.dead_nodes == set() and set(head.misses) == {"node:0", "node:1"}
    assert sorted(head.scheduler.alive_nodes()) == ["node:0", "node:1"]
    # and the new head writes (its requests are numbered past the old one's)
    assert bed.ask(KvPut("after", 1)) is True and bed.ask(Get("kv", "after")) == 1


def test_recovered_head_writes_are_not_taken_for_the_old_heads(core) -> None:
    """The replicas remember (client, request id) -> result for the head's
    client: a new head numbering from 1 again would have its writes dropped
    or answered with the old results.  Here: a node dies after the
    recovery, and the new head's NodeDown must land (its task re-runs)."""
    bed = Bed(core, nodes=2, chain=2, behaviour=lambda s, a: ok(0.5 if s.function.name == "slow" else 0.01),
              resources=[ResourceSet.of(CPU=1), ResourceSet.of(CPU=1, GPU=1)])
    net = bed.net
    # the old head writes a lot: it places 30 forwarded tasks (AddTask each)
    gpu = [core.spec(resources=ResourceSet.of(CPU=1, GPU=1)) for _ in range(30)]
    for s in gpu:
        bed.submit(s)
    bed.watch([s.return_ids[0] for s in gpu], req_id=2)
    net.run_until(lambda: len(bed.results()) == 30, timeout=10.0)
    bed.crash_head(("gcs:0:0",))
    head = bed.recover(["gcs:0:1"])
    slow = replace_struct(core.spec(), function=FunctionDescriptor(b"slow", "slow"))
    bed.submit(slow, node="node:1")
    bed.watch(slow.return_ids, node="node:0")
    net.run_for(0.1)
    net.crash("node:1")
    net.run_until(lambda: slow.return_ids[0] in bed.results(), timeout=10.0)
    assert "node:1" in head.dead_nodes
    assert bed.tail_row("tasks", slow.task_id).node == "node:0"
    # the new head's writes were applied, not answered from the old ones'
    assert bed.tail_row("nodes", "node:1").alive is False and bed.tail_row("dead_nodes", "node:1")
    assert bed.ask(KvPut("after", 1)) is True and bed.ask(Get("kv", "after")) == 1


def test_actor_on_a_node_that_died_while_the_head_was_down_is_restarted(core) -> None:
    bed = Bed(core, nodes=3, chain=2)
    net = bed.net
    aid = bed.create_actor(node="node:1", max_restarts=1)
    net.run_until(lambda: bed.tail_row("actors", aid) is not None
                  and bed.tail_row("actors", aid).state is ActorState.ALIVE, timeout=5.0)
    host = bed.tail_row("actors", aid).node
    bed.crash_head(("gcs:0:0",))
    net.run_for(0.2)
    net.crash(host)  # dies while there is no head: nobody notices yet
    net.run_for(0.3)
    head = bed.recover(["gcs:0:1"])
    # the silent node is declared dead by the usual rule, and its actor
    # restarted within its budget
    net.run_until(lambda: host in head.dead_nodes, timeout=5.0)
    net.run_until(lambda: bed.tail_row("actors", aid).state is ActorState.ALIVE
                  and bed.tail_row("actors", aid).node not in ("", host), timeout=5.0)
    row = bed.tail_row("actors", aid)
    assert row.restarts == 1 and row.incarnation == 1
    others = {"node:0", "node:1", "node:2"} - {host}
    assert set(head.misses) == others


def test_restart_in_flight_at_the_crash_is_fenced_and_done_once(core) -> None:
    """The old head wrote RESTARTING and died before (or after) sending
    StartActor: the new head restarts it under a new incarnation, and
    exactly one instance runs."""
    bed = Bed(core, nodes=3, chain=2)
    net = bed.net
    aid = bed.create_actor(node="node:1", max_restarts=2)
    net.run_until(lambda: bed.tail_row("actors", aid) is not None
                  and bed.tail_row("actors", aid).state is ActorState.ALIVE, timeout=5.0)
    host = bed.tail_row("actors", aid).node
    net.crash(host)
    # the old head notices, writes RESTARTING; its StartActor is lost with it
    net.run_until(lambda: bed.tail_row("actors", aid).state is ActorState.RESTARTING, timeout=5.0)
    bed.crash_head(("gcs:0:0",))
    head = bed.recover(["gcs:0:1"])
    net.run_until(lambda: bed.tail_row("actors", aid).state is ActorState.ALIVE, timeout=5.0)
    net.run_for(1.0)
    row = bed.tail_row("actors", aid)
    assert row.state is ActorState.ALIVE and row.incarnation == 2 and row.restarts == 1
    hosting = [n for n, m in net.machines.items() if n.startswith("node:") and aid in m.host.actors]
    assert hosting == [row.node]
    assert head.actors.actors[aid].incarnation == 2


def test_task_queued_at_the_old_head_is_placed(core) -> None:
    """A task forwarded to the head (infeasible on its node) that the old
    head had not placed when it died: the node says it forwarded it, and
    the new head places it."""
    bed = Bed(core, nodes=2, chain=2, resources=[ResourceSet.of(CPU=1), ResourceSet.of(CPU=1, GPU=1)])
    net = bed.net
    gpu = core.spec(resources=ResourceSet.of(CPU=1, GPU=1))
    lost: list = []

    def swallow(src, to, msg):  # the head dies with the ForwardTask in hand
        if isinstance(msg, ForwardTask) and msg.spec.task_id == gpu.task_id:
            lost.append(msg)
            return True
        return False

    net.drop_fn = swallow
    bed.submit(gpu)
    bed.watch(gpu.return_ids)
    net.run_until(lambda: bool(lost), timeout=2.0)
    net.run_for(0.1)  # the node's AddTask landed: pending on node:0, not placed
    net.drop_fn = None
    row = bed.tail_row("tasks", gpu.task_id)
    assert row.state is TaskState.PENDING and row.node == "node:0" and not row.placed
    bed.crash_head(("gcs:0:0",))
    bed.recover(["gcs:0:1"])
    net.run_until(lambda: gpu.return_ids[0] in bed.results(), timeout=5.0)
    assert bed.tail_row("tasks", gpu.task_id).node == "node:1"


def test_lagging_replica_loses_nothing_acknowledged(core) -> None:
    """Recovering with a replica that lags -- cut from the chain while
    alive (its heartbeats were lost), it never learnt it and holds an old
    config and old data -- and the tail that has everything: the head
    adopts the highest epoch, so every acknowledged write reads back and
    new writes go down the real chain (adopting the lagging config would
    fork the history: the new writes would be lost)."""
    bed = Bed(core, nodes=1, chain=3)
    net = bed.net
    name = lambda msg: type(msg).__name__
    net.drop_fn = lambda src, to, msg: ((src == "gcs:0:1" and name(msg) == "ReplicaHeartbeat")
                                        or (to == "gcs:0:1" and name(msg) == "ChainConfigMsg"))
    net.run_until(lambda: bed.head.chain.shards[0].config.replicas == ("gcs:0:0", "gcs:0:2"), timeout=2.0)
    for i in range(10):
        assert bed.ask(KvPut(f"k{i}", i)) is True
    lagging = net.machines["gcs:0:1"]
    assert lagging.config.epoch == 1 and lagging.seq < net.machines["gcs:0:2"].seq
    bed.crash_head(("gcs:0:0",))
    head = bed.recover(["gcs:0:1", "gcs:0:2"])
    assert head.chain.shards[0].config.epoch == 2
    net.drop_fn = None
    for i in range(10):
        assert bed.ask(Get("kv", f"k{i}")) == i
    for i in range(10):
        assert bed.ask(KvPut(f"new{i}", i)) is True
    net.run_until(lambda: head.chain.shards[0].config.replicas == ("gcs:0:2",), timeout=2.0)
    for i in range(10):
        assert bed.ask(Get("kv", f"new{i}")) == i and bed.ask(Get("kv", f"k{i}")) == i


def test_newer_config_known_only_to_a_replica_not_asked_is_learnt(core) -> None:
    """Recovering from the lagging replica alone: the new head adopts its
    old config at first, hears a newer epoch in the tail's heartbeats, asks
    for it and adopts it before changing anything (a change made from the
    old view would reuse an epoch already taken)."""
    bed = Bed(core, nodes=1, chain=3)
    net = bed.net
    name = lambda msg: type(msg).__name__
    net.drop_fn = lambda src, to, msg: ((src == "gcs:0:1" and name(msg) == "ReplicaHeartbeat")
                                        or (to == "gcs:0:1" and name(msg) == "ChainConfigMsg"))
    net.run_until(lambda: bed.head.chain.shards[0].config.replicas == ("gcs:0:0", "gcs:0:2"), timeout=2.0)
    for i in range(10):
        assert bed.ask(KvPut(f"k{i}", i)) is True
    bed.crash_head(("gcs:0:0",))
    # the tail's answers are slow to come: the silent gcs:0:0 is overdue
    # for a cut meanwhile, which must wait for the newer config
    until = net.now + 0.2
    net.drop_fn = lambda src, to, msg: src == "gcs:0:2" and name(msg) == "ChainReport" and net.now < until
    head = bed.recover(["gcs:0:1"])
    net.run_until(lambda: head.chain.shards[0].config.replicas == ("gcs:0:2",), timeout=2.0)
    net.drop_fn = None
    assert head.chain.shards[0].config.epoch == 3
    for i in range(10):
        assert bed.ask(KvPut(f"new{i}", i)) is True
    for i in range(10):
        assert bed.ask(Get("kv", f"new{i}")) == i and bed.ask(Get("kv", f"k{i}")) == i


def test_replica_answers_chain_query_without_a_head(core) -> None:
    bed = Bed(core, nodes=1, chain=2)
    bed.crash_head(())
    r = bed.net.machines["gcs:0:1"]
    cmds = r.handle(ChainQuery(master="head"), bed.net.now)
    (send,) = cmds
    rep = send.msg
    assert send.to == "head" and type(rep) is ChainReport
    assert rep.config == r.config and rep.seq == r.seq and rep.caught_up and not rep.joining
    assert rep.client_req >= 1  # the old head wrote (PutNode, Subscribe, ...)


def test_recover_config_errors() -> None:
    with pytest.raises(ValueError, match="recover_from"):
        HeadConfig(chains=())
    with pytest.raises(ValueError, match="tuple of replica addresses"):
        HeadConfig(chains=(), recover_from="gcs:0:1")  # type: ignore[arg-type]


def test_recovery_waits_for_a_replica_of_every_shard(core) -> None:
    bed = Bed(core, nodes=1, shards=2, chain=2)
    bed.crash_head(("gcs:0:0", "gcs:1:0"))
    cfg = replace(bed.layout.head_config(), recover_from=("gcs:0:1",), recover_wait=0.2)
    bed.net.add("head", HeadMachine(cfg, random.Random(1)))
    bed.net.run_for(1.0)
    assert bed.head.recovering is not None and bed.head.recovering.phase == "query"
    assert any("no live replica of some GCS shard" in log.text for _, log in bed.net.logs)


def test_task_whose_place_task_died_with_the_old_head_is_placed(core) -> None:
    """The old head placed a task (its row says so) but its PlaceTask never
    reached the node: the node says it never heard of it, and the new head
    places it again."""
    bed = Bed(core, nodes=2, chain=2, resources=[ResourceSet.of(CPU=1), ResourceSet.of(CPU=1, GPU=1)])
    net = bed.net
    gpu = core.spec(resources=ResourceSet.of(CPU=1, GPU=1))
    net.drop_fn = lambda src, to, msg: type(msg).__name__ == "PlaceTask" and msg.spec.task_id == gpu.task_id
    bed.submit(gpu)
    bed.watch(gpu.return_ids)
    net.run_until(lambda: getattr(bed.tail_row("tasks", gpu.task_id), "placed", False), timeout=2.0)
    net.drop_fn = None
    bed.crash_head(("gcs:0:0",))
    bed.recover(["gcs:0:1"])
    net.run_until(lambda: gpu.return_ids[0] in bed.results(), timeout=5.0)


def test_placement_groups_are_adopted_not_placed_again(core) -> None:
    from penumbra.core.placement import CREATED
    from penumbra.core.records import PlacementGroupEntry
    from penumbra.core.tables import CreatePlacementGroup

    bed = Bed(core, nodes=4, chain=2)
    net = bed.net
    cpu = ResourceSet.of(CPU=1)
    for pg, bundles, strategy in (("pg-a", (ResourceSet.of(CPU=2),), "STRICT_PACK"),
                                  ("pg-b", (cpu, cpu), "STRICT_SPREAD")):
        entry = PlacementGroupEntry(pg_id=pg, bundles=bundles, strategy=strategy, job_id=1)
        assert bed.ask(CreatePlacementGroup(entry)) is True
    net.run_until(lambda: all(bed.tail_row("placement_groups", pg).state == "CREATED" for pg in ("pg-a", "pg-b")),
                  timeout=5.0)
    before = {pg: bed.tail_row("placement_groups", pg).nodes for pg in ("pg-a", "pg-b")}
    victim = next(n for n in before["pg-b"] if n not in before["pg-a"] and n != "node:0")
    keep = ["pg-a"]
    bed.crash_head(("gcs:0:0",))
    net.run_for(0.2)
    net.crash(victim)  # dies while there is no head, holding a bundle of pg-b
    prepares: list = []
    net.drop_fn = lambda src, to, msg: type(msg).__name__ == "PrepareBundles" and prepares.append((to, msg)) and False
    head = bed.recover(["gcs:0:1"])
    net.run_until(lambda: set(head.placement.groups) == {"pg-a", "pg-b"}, timeout=1.0)
    for pg in keep:
        g = head.placement.groups[pg]
        assert g.state == CREATED and tuple(g.nodes) == before[pg]  # adopted as they were
    net.run_until(lambda: victim in head.dead_nodes, timeout=5.0)
    net.run_until(lambda: bed.tail_row("placement_groups", "pg-b").state == "CREATED"
                  and victim not in bed.tail_row("placement_groups", "pg-b").nodes, timeout=5.0)
    after = bed.tail_row("placement_groups", "pg-b").nodes
    assert [n for n in after if n in before["pg-b"]] == [n for n in before["pg-b"] if n != victim]
    assert prepares and all(m.pg_id == "pg-b" for _, m in prepares)  # nothing else reserved again


def test_a_job_ended_but_not_forgotten_is_ended_again(core) -> None:
    """The old head ended a job (JobEnded sent) and died before every node
    answered: the nodes tell the new head, which ends and forgets it."""
    from penumbra.core.messages import JobFinished

    bed = Bed(core, nodes=2, chain=2)
    net = bed.net
    s = core.spec()
    bed.submit(s)
    bed.watch(s.return_ids)
    net.run_until(lambda: s.return_ids[0] in bed.results(), timeout=2.0)
    net.drop_fn = lambda src, to, msg: type(msg).__name__ == "JobCleared"
    net.send("node:0", "head", JobFinished(job_id=1))
    net.run_for(0.3)
    assert bed.tail_row("tasks", s.task_id) is not None  # not forgotten: the nodes never answered
    net.drop_fn = None
    bed.crash_head(("gcs:0:0",))
    head = bed.recover(["gcs:0:1"])
    net.run_until(lambda: bed.tail_row("ended_jobs", 1) is not None, timeout=5.0)
    assert 1 in head.ended_jobs and bed.tail_row("tasks", s.task_id) is None


def test_re_homing_left_half_done_by_the_old_head_is_done(core) -> None:
    """The old head wrote NodeDown and died before re-homing the dead
    node's tasks: the new head finds the node dead in the table and
    re-homes them."""
    from penumbra.core.messages import GcsReply

    bed = Bed(core, nodes=2, chain=2, behaviour=lambda s, a: ok(0.5 if s.function.name == "slow" else 0.01))
    net = bed.net
    slow = replace_struct(core.spec(), function=FunctionDescriptor(b"slow", "slow"))
    bed.submit(slow, node="node:1")
    bed.watch(slow.return_ids, node="node:0")
    net.run_for(0.1)
    net.crash("node:1")
    # from the moment the old head declares node:1 dead, it hears no GCS answer
    net.drop_fn = lambda src, to, msg: (to == "head" and type(msg) is GcsReply
                                        and "node:1" in net.machines["head"].dead_nodes)
    net.run_until(lambda: bed.tail_row("nodes", "node:1").alive is False, timeout=5.0)
    assert bed.tail_row("tasks", slow.task_id).node == "node:1"  # not re-homed
    bed.crash_head(("gcs:0:0",))
    net.drop_fn = None
    head = bed.recover(["gcs:0:1"])
    assert "node:1" in head.dead_nodes
    net.run_until(lambda: slow.return_ids[0] in bed.results(), timeout=5.0)
    assert bed.tail_row("tasks", slow.task_id).node == "node:0"


def test_task_forwarded_while_there_was_no_head_is_placed(core) -> None:
    """A node forwards a task while there is no head (the ForwardTask is
    lost) and its row waits for a new chain head (the old one died with the
    head): the new head asks the node only once that row landed."""
    bed = Bed(core, nodes=2, chain=2, resources=[ResourceSet.of(CPU=1), ResourceSet.of(CPU=1, GPU=1)])
    net = bed.net
    bed.crash_head(("gcs:0:0",))
    gpu = core.spec(resources=ResourceSet.of(CPU=1, GPU=1))
    bed.submit(gpu)
    bed.watch(gpu.return_ids)
    net.run_for(0.3)
    assert bed.net.machines["gcs:0:1"].tables.data["tasks"].get(gpu.task_id) is None  # its row waits
    bed.recover(["gcs:0:1"])
    net.run_until(lambda: gpu.return_ids[0] in bed.results(), timeout=5.0)


def test_replica_that_joined_under_the_old_head_is_appended_by_the_new(core) -> None:
    """A restarted replica copied its state and said ReplicaReady, but the
    old head died before appending it: the new head, which never saw it
    join, appends it when it repeats ReplicaReady."""
    from penumbra.core.gcs import GcsReplica

    bed = Bed(core, nodes=1, chain=2)
    net = bed.net
    assert bed.ask(KvPut("k", 1)) is True
    net.crash("gcs:0:1")
    net.run_until(lambda: bed.head.chain.shards[0].config.replicas == ("gcs:0:0",), timeout=2.0)
    net.drop_fn = lambda src, to, msg: type(msg).__name__ == "ReplicaReady"  # the old head never hears it
    net.add("gcs:0:1", GcsReplica("gcs:0:1", 0, "head", bed.layout.gcs_timing, joining=True))
    net.run_until(lambda: net.machines["gcs:0:1"].awaiting_append, timeout=2.0)
    bed.crash_head(())  # gcs:0:0 lives on (say, on a node's host)
    net.drop_fn = None
    head = bed.recover(["gcs:0:0"])
    net.run_until(lambda: head.chain.shards[0].config.replicas == ("gcs:0:0", "gcs:0:1"), timeout=2.0)
    net.run_until(lambda: net.machines["gcs:0:1"].is_tail and net.machines["gcs:0:1"]._can_read(), timeout=2.0)
    assert bed.ask(KvPut("k2", 2)) is True
    assert bed.ask(Get("kv", "k")) == 1 and bed.ask(Get("kv", "k2")) == 2
    assert net.machines["gcs:0:1"].tables.data["kv"] == {"k": 1, "k2": 2}
