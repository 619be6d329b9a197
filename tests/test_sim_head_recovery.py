"""The simulator's GCS that outlives its head: replicas placed on nodes'
hosts (``ClusterLayout.replica_hosts``), the head's host crashed and a new
head recovered from the surviving replicas (``SimCluster.crash_head`` /
``recover_head``; core/head.py, "Recovery: a new head from surviving
replicas")."""

from __future__ import annotations

import pytest

from penumbra.core.layout import ClusterLayout, NodeShape
from penumbra.core.records import ActorState
from penumbra.core.scheduler import SchedulerConfig
from penumbra.core.specs import ResourceSet
from penumbra.core.tables import Get, KvPut
from penumbra.sim.cluster import CrashHead, SimCluster
from penumbra.sim.faults import Crash, FaultSchedule
from penumbra.sim.workloads import ChainStream, TaskModel, chains, counter_update


def layout(n=4, chain=3, shards=1, on_nodes=None, **kw):
    """``chain`` replicas per shard; by default every replica but the first
    of each chain lives on a node (node:1, node:2, ...)."""
    if on_nodes is None:
        on_nodes = {f"gcs:{s}:{i}": f"node:{1 + (s * (chain - 1) + i - 1) % (n - 1)}"
                    for s in range(shards) for i in range(1, chain)}
    return ClusterLayout(nodes=(NodeShape(ResourceSet.of(CPU=2)),) * n, gcs_shards=shards, chain_length=chain,
                         scheduler=SchedulerConfig(forward_queue_threshold=2), replica_hosts=on_nodes, **kw)


def run_graph(c, g, node="node:0", timeout=60.0):
    d = c.driver(node)
    specs = g.submit(d)
    d.watch([s.return_ids[0] for s in specs])
    return d, specs


def test_replica_on_a_node_dies_with_it_and_restarts_on_its_replacement():
    c = SimCluster(layout(4, chain=2, on_nodes={"gcs:0:1": "node:2"}), validate=True)
    c.wait_ready()
    assert c.replicas_with_head() == ["gcs:0:0"]
    assert c.kernel.network.rack_of("gcs:0:1") == c.kernel.network.rack_of("node:2")
    c.crash_node("node:2", restart_after=0.3)
    assert not c.kernel.hosts["gcs:0:1"].alive
    c.run_until(lambda: c.head.chain.shards[0].config.replicas == ("gcs:0:0",), 1.0)
    c.run_until(lambda: c.head.chain.shards[0].config.replicas == ("gcs:0:0", "gcs:0:1"), 2.0)
    assert c.replica_node == {"gcs:0:1": "node:4"} and c.kernel.hosts["gcs:0:1"].alive


def test_job_running_across_a_head_crash_finishes_with_the_right_results():
    c = SimCluster(layout(4, chain=3, shards=2), validate=True, seed=3)
    c.wait_ready()
    d = c.driver("node:0")
    acked = {}
    for i in range(30):
        d.call_after(i * 0.005, lambda i=i: d.gcs(KvPut(f"k{i}", i), lambda r, i=i: acked.__setitem__(i, r)))
    s = ChainStream(d, 6, 12, duration=0.05, size=1000).start()
    c.run_until(lambda: len(acked) == 30, 2.0)
    died = c.crash_head(recover_after=0.4)
    assert died == ["gcs:0:0", "gcs:1:0"]
    assert c.run_until(lambda: s.complete, 60), "the job did not finish across the head's recovery"
    assert s.all_correct()
    head = c.head
    assert head.recovering is None and head.dead_nodes == set()
    assert sorted(head.scheduler.alive_nodes()) == ["node:0", "node:1", "node:2", "node:3"]
    got = {}
    for i in range(30):
        d.gcs(Get("kv", f"k{i}"), lambda v, i=i: got.__setitem__(i, v))
    c.run_until(lambda: len(got) == 30, 2.0)
    assert got == {i: i for i in range(30)}
    # the replicas of the head's host came back empty and rejoined
    c.run_until(lambda: all(len(v.config.replicas) == 3 for v in c.head.chain.shards.values()), 3.0)
    assert [e[1:] for e in c.events] == [("crash", "head"), ("recover", "head"), ("restart", "gcs:0:0"),
                                         ("restart", "gcs:1:0")]


def test_actor_whose_node_died_while_the_head_was_down_is_restarted():
    # node:0 (the driver's, hosting the surviving replica) cannot hold the
    # actor: it goes to one of the others, which dies while there is no head
    lay = layout(4, chain=2, on_nodes={"gcs:0:1": "node:0"})
    lay = ClusterLayout(**{**{f: getattr(lay, f) for f in ("gcs_shards", "chain_length", "scheduler", "replica_hosts")},
                           "nodes": (NodeShape(ResourceSet.of(CPU=1)),) + (NodeShape(ResourceSet.of(CPU=2)),) * 3})
    c = SimCluster(lay, validate=True)
    c.wait_ready()
    d = c.driver("node:0")
    a = d.create_actor(TaskModel(init=0), max_restarts=1, max_task_retries=-1, placement=ResourceSet.of(CPU=2))
    first = [a.call(TaskModel(0.01, update=counter_update)) for _ in range(3)]
    d.watch([s.return_ids[0] for s in first])
    assert c.run_until(lambda: d.all_ready(first), 5)
    host = c.head.actors.actors[a.actor_id].node
    assert host in ("node:1", "node:2", "node:3")
    c.crash_head()
    c.run_for(0.2)
    c.crash_node(host)  # nobody is there to notice
    c.run_for(0.3)
    c.recover_head()
    assert c.run_until(lambda: host in c.head.dead_nodes, 5)
    assert c.run_until(lambda: c.head.actors.actors[a.actor_id].state is ActorState.ALIVE
                       and c.head.actors.actors[a.actor_id].node not in ("", host), 5)
    e = c.head.actors.actors[a.actor_id]
    assert e.restarts == 1
    more = [a.call(TaskModel(0.01, update=counter_update)) for _ in range(2)]
    d.watch([s.return_ids[0] for s in more])
    assert c.run_until(lambda: d.all_ready(more), 5)
    assert [d.value(s.return_ids[0]) for s in first] == [1, 2, 3]


def test_recover_needs_a_surviving_replica():
    c = SimCluster(layout(2, chain=1, on_nodes={}))
    c.wait_ready()
    with pytest.raises(ValueError, match="recover it first|alive"):
        c.recover_head()
    c.crash_head()
    with pytest.raises(ValueError, match="no GCS replica survives"):
        c.recover_head()


def test_bad_replica_placement_is_refused():
    with pytest.raises(ValueError, match="not a node of this layout"):
        layout(2, chain=2, on_nodes={"gcs:0:1": "node:7"})


def test_head_recovery_is_deterministic():
    def run():
        c = SimCluster(layout(4, chain=3), seed=9)
        c.wait_ready()
        g = chains(4, 8, duration=0.05)
        d, specs = run_graph(c, g)
        c.kernel.call_after(0.3, c.crash_head, 0.3)
        assert c.run_until(lambda: d.all_ready(specs), 60)
        assert [d.value(s.return_ids[0]) for s in specs] == g.expected()
        return c.trace_hash()

    assert run() == run()


@pytest.mark.parametrize("fault", [lambda: CrashHead(recover_after=0.3), lambda: Crash("head", restart_after=0.3)])
def test_head_crash_as_a_scheduled_fault(fault):
    c = SimCluster(layout(4, chain=2, shards=2), validate=True, seed=5)
    c.wait_ready()
    g = chains(4, 10, duration=0.05)
    d, specs = run_graph(c, g)
    inst = c.install(FaultSchedule([(c.now + 0.2, fault())]))
    assert c.run_until(lambda: d.all_ready(specs), 60)
    assert [d.value(s.return_ids[0]) for s in specs] == g.expected()
    assert [str(f) for _, f in inst.applied] == ["CrashHead(recover_after=0.3)"]
    assert [e[1:] for e in c.events][:2] == [("crash", "head"), ("recover", "head")]
