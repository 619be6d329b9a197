"""SimCluster: the core's machines on the SimPy kernel, the node-local world
(workers, stores, fetches), drivers, failures and determinism.

Every cluster here validates every machine after every event
(``validate=True``) unless it is too slow for that.
"""

from __future__ import annotations

import pytest

from penumbra.core.layout import ClusterLayout, NodeShape
from penumbra.core.records import ActorState, ErrorKind
from penumbra.core.scheduler import SchedulerConfig
from penumbra.core.specs import ResourceSet
from penumbra.core.tables import Get, KvPut
from penumbra.sim.cluster import AddNode, CrashNode, Executor, Outcome, SimCluster
from penumbra.sim.costs import PAPER, ZERO
from penumbra.sim.faults import Crash, FaultSchedule, LinkFault, SlowHost
from penumbra.sim.workloads import (
    ChainStream,
    ClosedLoop,
    TaskModel,
    chains,
    counter_update,
    fan_in_tree,
    random_dag,
)


def spread_layout(n=4, cpus=2, shards=1, chain=1, **kw):
    return ClusterLayout(nodes=(NodeShape(ResourceSet.of(CPU=cpus)),) * n, gcs_shards=shards, chain_length=chain,
                         scheduler=SchedulerConfig(forward_queue_threshold=2), **kw)


def run_graph(c, g, node="node:0", timeout=60.0):
    d = c.driver(node)
    specs = g.submit(d)
    d.watch([s.return_ids[0] for s in specs])
    assert c.run_until(lambda: d.all_ready(specs), timeout), f"only {len(d.ready)} of {len(specs)} ready"
    return d, specs


# ---------------------------------------------------------------------------- building and running


def test_cluster_boots_from_the_layout():
    c = SimCluster(spread_layout(3, shards=2, chain=2), validate=True)
    t = c.wait_ready()
    assert 0 < t < 1.0  # PAPER: workers take 0.25 s to start
    assert set(c.kernel.hosts) == {"head", "gcs:0:0", "gcs:0:1", "gcs:1:0", "gcs:1:1", "node:0", "node:1", "node:2"}
    for a, n in c.nodes.items():
        assert n.machine.nodes == {b: True for b in c.nodes if b != a}
        assert len(n.workers) == 2 and all(w.started for w in n.workers.values())
    assert sorted(c.head.scheduler.alive_nodes()) == ["node:0", "node:1", "node:2"]
    assert c.kernel.network.rack_of("head") == "control"


@pytest.mark.parametrize("make", [
    lambda: chains(4, 6, duration=0.05),
    lambda: fan_in_tree(16, arity=4),
    lambda: random_dag(60, seed=3),
])
def test_graphs_produce_their_expected_values(make):
    g = make()
    c = SimCluster(spread_layout(3, shards=2, chain=2), validate=True)
    c.wait_ready()
    d, specs = run_graph(c, g)
    assert [d.value(s.return_ids[0]) for s in specs] == g.expected()
    assert not d.errors()
    # the work was spread, and inputs crossed nodes through fetches
    assert sum(1 for n in c.nodes.values() if n.finished) >= 2
    assert sum(n.fetched_bytes for n in c.nodes.values()) > 0


def test_task_times_follow_the_cost_model():
    c = SimCluster(nodes=1, cpus=1, costs=PAPER, trace=False)
    c.wait_ready()
    d = c.driver()
    t0 = c.now
    s = d.remote(TaskModel(0.5, (1000,)))
    d.watch(s.return_ids)
    c.run_until(lambda: d.all_ready([s]), 5)
    took = d.ready[s.return_ids[0]][0] - t0
    # 0.5 s of work + the worker's fixed overhead + writing 1 KB + a few
    # scheduler steps and loopback hops
    assert 0.5 + PAPER.task_overhead < took < 0.5 + PAPER.task_overhead + 0.001
    assert c.node("node:0").store[s.return_ids[0]][0] == 1000


def test_closed_loop_keeps_a_window_outstanding():
    c = SimCluster(nodes=1, cpus=8, costs=PAPER, trace=False)
    c.wait_ready()
    loop = ClosedLoop(c.driver(), window=32, batch=8, limit=400).start()
    c.run_until(lambda: loop.finished_at is not None, 5)
    assert loop.completed == 400 and loop.outstanding == 0


# ---------------------------------------------------------------------------- the node-local world


def test_put_and_fetch_move_bytes_and_values():
    c = SimCluster(nodes=2, validate=True)
    c.wait_ready()
    putter, reader = c.driver("node:1"), c.driver("node:0")
    oid = putter.put(5_000_000, value="payload")
    c.run_for(0.01)
    reader.watch([oid])
    c.run_until(lambda: oid in reader.ready, 1)
    assert reader.value(oid) == "payload"
    assert c.node("node:0").store[oid] == (5_000_000, "payload")
    assert c.node("node:0").fetched_bytes == 5_000_000


def test_fetch_waits_out_a_partition():
    c = SimCluster(nodes=2, validate=True)
    c.wait_ready()
    oid = c.driver("node:1").put(1000, value=7)
    c.run_for(0.01)
    c.partition(["node:0"], ["node:1"], duration=0.5)
    reader = c.driver("node:0")
    reader.watch([oid])
    c.run_for(0.3)
    assert oid not in reader.ready  # cut off: the fetch failed and waits to retry
    c.run_until(lambda: oid in reader.ready, 2)
    assert reader.value(oid) == 7


def test_evictions_keep_the_byte_store_equal_to_the_accounting():
    shape = NodeShape(ResourceSet.of(CPU=1), object_store_memory=2000)
    c = SimCluster(ClusterLayout(nodes=(shape,)), validate=True)
    c.wait_ready()
    d = c.driver()
    specs = [d.remote(TaskModel(0.01, (800,))) for _ in range(5)]
    d.watch([s.return_ids[0] for s in specs], fetch=False)
    c.run_until(lambda: d.all_ready(specs), 5)
    n = c.node("node:0")
    assert set(n.store) == set(n.machine.objects.store.objects)
    assert len(n.store) == 2 and n.machine.objects.store.evictions == 3


def test_modelled_crash_is_retried_and_raise_is_reported():
    c = SimCluster(nodes=1, validate=True)
    c.wait_ready()
    d = c.driver()
    crash = d.remote(TaskModel(0.01, compute=lambda i: "second try", fail="crash"))
    boom = d.remote(TaskModel(0.01, fail="raise"))
    d.watch(crash.return_ids + boom.return_ids)
    c.run_until(lambda: d.all_ready([crash, boom]), 5)
    assert d.value(crash.return_ids[0]) == "second try"
    err = d.ready[boom.return_ids[0]][1].error
    assert err.kind is ErrorKind.TASK_ERROR and "modelled failure" in err.message


@pytest.mark.parametrize("force", [False, True])
def test_cancel_interrupts_or_kills_the_worker(force):
    c = SimCluster(nodes=1, validate=True)
    c.wait_ready()
    d = c.driver()
    s = d.remote(TaskModel(10.0))
    d.watch(s.return_ids)
    c.run_for(0.1)
    d.cancel(s, force=force)
    c.run_until(lambda: d.all_ready([s]), 1)
    assert d.ready[s.return_ids[0]][1].error.kind is ErrorKind.TASK_CANCELLED
    c.run_for(0.5)
    assert len(c.node("node:0").workers) == 2  # a killed worker is replaced


def test_hang_then_kill_worker():
    c = SimCluster(nodes=1, validate=True)
    c.wait_ready()
    d = c.driver()
    s = d.remote(TaskModel(fail="hang"), max_retries=0)
    d.watch(s.return_ids)
    c.run_for(0.1)
    (wid,) = [w for w, x in c.node("node:0").workers.items() if x.running]
    c.kill_worker("node:0", wid)
    c.run_until(lambda: d.all_ready([s]), 1)
    assert d.ready[s.return_ids[0]][1].error.kind is ErrorKind.WORKER_CRASHED


def test_slow_node_runs_tasks_slower():
    c = SimCluster(nodes=1, validate=True)
    c.wait_ready()
    c.slow("node:0", 4.0)
    d = c.driver()
    t0 = c.now
    s = d.remote(TaskModel(0.1))
    d.watch(s.return_ids)
    c.run_until(lambda: d.all_ready([s]), 5)
    assert d.ready[s.return_ids[0]][0] - t0 > 0.4


def test_pluggable_executor_completes_asynchronously():
    class Later(Executor):
        """Runs every task for 0.2 s, answering later (as a real-code
        executor would) with the task's name as its value."""

        def __init__(self):
            self.ran = []

        def execute(self, node, worker, cmd):
            self.ran.append(cmd.spec.display_name())
            node.cluster.kernel.call_after(0.2, node.complete, worker, cmd,
                                           Outcome("ok", values=(cmd.spec.display_name(),)), node.host.now + 0.2)
            return None

    ex = Later()
    c = SimCluster(nodes=1, executor=ex, validate=True)
    c.wait_ready()
    d = c.driver()
    t0 = c.now
    s = d.remote(name="hello")
    d.watch(s.return_ids)
    c.run_until(lambda: d.all_ready([s]), 5)
    assert ex.ran == ["hello"] and d.value(s.return_ids[0]) == "hello"
    assert 0.2 <= d.ready[s.return_ids[0]][0] - t0 < 0.21


# ---------------------------------------------------------------------------- failures


def test_node_crash_and_restart_under_a_new_address():
    c = SimCluster(spread_layout(4, shards=2, chain=2), validate=True)
    c.wait_ready()
    d = c.driver("node:0")
    s = ChainStream(d, 8, 12, duration=0.1, size=1000).start()
    c.run_for(0.4)
    assert c.crash_node("node:2", restart_after=0.3)
    c.run_until(lambda: s.complete, 60)
    assert s.all_correct()
    assert "node:4" in c.nodes and c.nodes["node:4"].alive and not c.nodes["node:2"].alive
    assert "node:2" in c.head.dead_nodes and "node:4" in c.head.scheduler.alive_nodes()
    assert c.head.recovery.resubmitted + c.head.recovery.reexecuted > 0
    assert [e[1:] for e in c.events] == [("crash", "node:2"), ("join", "node:4")]


def test_omniscient_detection_is_immediate():
    c = SimCluster(nodes=3, detect="omniscient", detect_delay=0.01)
    c.wait_ready()
    t = c.now
    c.crash_node("node:1")
    c.run_until(lambda: "node:1" in c.head.dead_nodes, 1)
    assert c.now - t < 0.05  # heartbeats would take node_timeout (1 s)


def test_drivers_die_with_their_node():
    c = SimCluster(nodes=2)
    c.wait_ready()
    d = c.driver("node:1")
    c.crash_node("node:1")
    assert not d.alive
    d.remote(TaskModel(0.1))  # a dead driver submits nothing, and does not raise
    with pytest.raises(ValueError):
        c.driver("node:1")


def test_gcs_replica_crash_and_rejoin_loses_no_write():
    c = SimCluster(spread_layout(2, shards=1, chain=2), validate=True)
    c.wait_ready()
    d = c.driver()
    acked, got = {}, {}
    for i in range(50):
        d.call_after(i * 0.004, lambda i=i: d.gcs(KvPut(f"k{i}", i), lambda r, i=i: acked.__setitem__(i, c.now)))
    c.kernel.call_after(0.05, c.crash_replica, "gcs:0:0", 0.05)
    c.run_until(lambda: len(acked) == 50, 2)
    c.run_for(0.2)
    assert c.head.chain.shards[0].config.replicas == ("gcs:0:1", "gcs:0:0")  # rejoined as the tail
    for i in range(50):
        d.gcs(Get("kv", f"k{i}"), lambda v, i=i: got.__setitem__(i, v))
    c.run_until(lambda: len(got) == 50, 1)
    assert got == {i: i for i in range(50)}


def test_fault_schedule_nodes_come_back_under_new_addresses():
    c = SimCluster(spread_layout(4), validate=True)
    c.wait_ready()
    t = c.now
    sched = FaultSchedule([
        (t + 0.1, Crash("node:3", restart_after=0.2)),
        (t + 0.2, SlowHost("node:1", 3.0, duration=0.2)),
        (t + 0.3, LinkFault(("node:1",), ("node:2",), drop=0.3, delay=0.001, duration=0.3, both_ways=True)),
        (t + 0.4, AddNode(like="node:0")),
        (t + 0.5, CrashNode("node:2")),
    ])
    inst = c.install(sched)
    g = chains(6, 10, duration=0.05)
    d, specs = run_graph(c, g)
    assert [d.value(s.return_ids[0]) for s in specs] == g.expected()
    assert [str(f) for _, f in inst.applied][:1] == ["CrashNode(node:3 restart_after=0.2)"]
    assert sorted(a for a, n in c.nodes.items() if n.alive) == ["node:0", "node:1", "node:4", "node:5"]


def test_random_faults_from_a_seed_all_results_right():
    c = SimCluster(spread_layout(5, shards=2, chain=2), seed=4, validate=True)
    c.wait_ready()
    sched = c.random_faults(11, horizon=2.0, start=c.now, crash_rate=1.5, restart_after=(0.1, 0.5),
                            link_fault_rate=2.0, link_delay=0.002, slow_rate=1.0, max_down=2)
    assert sched == c.random_faults(11, horizon=2.0, start=c.now, crash_rate=1.5, restart_after=(0.1, 0.5),
                                    link_fault_rate=2.0, link_delay=0.002, slow_rate=1.0, max_down=2)
    assert len(sched) > 3
    c.install(sched)
    g = chains(8, 15, duration=0.05)
    d, specs = run_graph(c, g, timeout=120)
    assert [d.value(s.return_ids[0]) for s in specs] == g.expected()


# ---------------------------------------------------------------------------- actors


def test_actor_checkpoints_and_replay_after_worker_death():
    c = SimCluster(nodes=1, validate=True)
    c.wait_ready()
    d = c.driver()
    a = d.create_actor(TaskModel(init=100), replay=True, max_restarts=1, max_task_retries=-1, checkpoint_interval=3)
    calls = [a.call(TaskModel(0.01, update=counter_update)) for _ in range(7)]
    d.watch([s.return_ids[0] for s in calls])
    c.run_until(lambda: d.all_ready(calls), 5)
    assert [d.value(s.return_ids[0]) for s in calls] == list(range(101, 108))
    assert c.executor.checkpoints == 2
    node = c.node("node:0")
    aw = node.machine.host.actors[a.actor_id].worker
    c.kill_worker("node:0", aw)
    c.run_until(lambda: c.head.actors.actors[a.actor_id].incarnation == 1
                and c.head.actors.actors[a.actor_id].state is ActorState.ALIVE, 5)
    assert c.head.actors.replayed == 1  # 7 calls, checkpoint after 6
    more = [a.call(TaskModel(0.01, update=counter_update)) for _ in range(2)]
    d.watch([s.return_ids[0] for s in more])
    c.run_until(lambda: d.all_ready(more), 5)
    assert [d.value(s.return_ids[0]) for s in more] == [108, 109]


# ---------------------------------------------------------------------------- determinism


def _faulty_run(seed):
    c = SimCluster(spread_layout(4, shards=2, chain=2), seed=seed, costs=PAPER)
    c.wait_ready()
    c.link_fault(["node:1"], None, drop=0.05, delay=0.002)
    c.install(c.random_faults(seed, horizon=1.0, start=c.now, crash_rate=2.0, restart_after=0.2, max_down=1))
    g = chains(6, 8, duration=0.05)
    d, specs = run_graph(c, g, timeout=60)
    assert [d.value(s.return_ids[0]) for s in specs] == g.expected()
    return c.trace_hash(), c.summary(print_it=False)


def test_same_seed_same_trace_hash_different_seed_different_hash():
    h1, line1 = _faulty_run(1)
    h2, line2 = _faulty_run(1)
    h3, _ = _faulty_run(2)
    assert h1 == h2 and line1 == line2 and f"trace={h1}" in line1
    assert h1 != h3


def test_zero_costs_run_in_no_time():
    c = SimCluster(nodes=2, costs=ZERO, validate=True)
    t = c.wait_ready()
    d, specs = run_graph(c, chains(2, 3, duration=0.0))
    assert c.now == t


def test_trace_hash_does_not_depend_on_the_process_hash_seed():
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; sys.path.insert(0, 'tests'); from test_sim_cluster import _faulty_run; "
            "print(_faulty_run(1)[0])")
    root = Path(__file__).resolve().parents[1]
    out = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        p = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        out.add(p.stdout.strip().splitlines()[-1])
    assert len(out) == 1, out


def test_random_replica_crashes_restart_empty_and_rejoin():
    c = SimCluster(spread_layout(3, shards=2, chain=2), seed=7, validate=True)
    c.wait_ready()
    sched = c.random_faults(5, horizon=1.5, start=c.now, protect=["node:0", "node:1", "node:2"], replicas=True,
                            crash_rate=4.0, restart_after=0.1, max_down=1)
    assert sched.events and all(f.address.startswith("gcs:") for _, f in sched)
    inst = c.install(sched)
    g = chains(6, 12, duration=0.05)
    d, specs = run_graph(c, g, timeout=60)
    assert [d.value(s.return_ids[0]) for s in specs] == g.expected()
    c.run_for(1.0)
    assert inst.restarts and all(len(v.config.replicas) == 2 for v in c.head.chain.shards.values())


# ---------------------------------------------------------------------------
# one simulation across several processes (penumbra.sim.partition)


@pytest.mark.timeout(180)
def test_partitioned_run_is_the_same_for_1_2_and_3_partitions():
    """Figure 8b's workload on 6 nodes: the trace hash and the results do not
    depend on how many processes share the machines, and the tasks and
    events are those of the same run in one plain SimCluster."""
    from penumbra.sim import experiments as E
    from penumbra.sim.partition import ScalabilitySpec, run_partitioned
    from penumbra.sim.workloads import ClosedLoop

    spec = ScalabilitySpec(nodes=6, setup_at=0.3)
    one = run_partitioned(spec, 1, 0.32, processes=False)
    two = run_partitioned(spec, 2, 0.32)
    three = run_partitioned(spec, 3, 0.32)
    one_proc = run_partitioned(spec, 1, 0.32)
    assert one.tasks_finished > 1000
    for r in (two, three, one_proc):
        assert (r.trace_hash, r.tasks_finished, r.events) == (one.trace_hash, one.tasks_finished, one.events)
    assert one.window == PAPER.latency_intra_rack and len(three.partition_cpu_s) == 3
    assert one.exchanged_batches == 0 < two.exchanged_batches < three.exchanged_batches  # more pipes, more traffic
    assert one.windows == two.windows < 0.32 / one.window / 2  # windows with nothing due are skipped

    c = E.scalability_cluster(6, PAPER, 0, cpus=4)
    c.run(0.3)
    for a in list(c.nodes):
        ClosedLoop(c.driver(a), window=64, batch=16).start()
    c.run(0.32)
    assert (c.tasks_finished(), c.kernel.stats()["events_handled"]) == (one.tasks_finished, one.events)

    other = run_partitioned(ScalabilitySpec(nodes=6, setup_at=0.3, batch=8), 2, 0.32)
    assert other.trace_hash != one.trace_hash


@pytest.mark.timeout(180)
def test_a_partition_builds_only_its_own_machines():
    """Each partition builds its share of the machines (the others are
    stand-ins), so memory per process falls with the partition count; the
    run is the one every partition count gives."""
    from penumbra.sim.endpoints import Host, Remote
    from penumbra.sim.partition import ScalabilitySpec, run_partitioned
    from penumbra.sim.partition_step import _Partition

    spec = ScalabilitySpec(nodes=7, setup_at=0.3)
    whole = _Partition(spec, 0, 1)
    halves = [_Partition(spec, i, 2) for i in range(2)]
    c = whole.cluster
    assert not c.remote and len(c.kernel.hosts) == 1 + 4 + 7  # head, 4 GCS replicas, 7 nodes
    for i, p in enumerate(halves):
        h = p.cluster
        mine = {a for a in c.kernel.hosts if p.owned(a)}
        assert set(h.kernel.hosts) == mine and len(mine) <= 7  # (head + 11 machines round-robin)
        assert set(h.remote) == set(c.kernel.hosts) - mine
        assert all(isinstance(h.kernel.endpoints[a], Remote) for a in h.remote)
        assert all(isinstance(h.kernel.hosts[a], Host) for a in mine)
        assert h.node_addresses == c.node_addresses == [f"node:{j}" for j in range(7)]
        assert set(h.nodes) == {a for a in c.nodes if p.owned(a)}
        # the network knows every machine where it is, built here or not
        for a in c.kernel.hosts:
            assert h.kernel.network.rack_of(a) == c.kernel.network.rack_of(a)
    assert set(halves[0].cluster.kernel.hosts).isdisjoint(halves[1].cluster.kernel.hosts)
    with pytest.raises(ValueError, match="another partition runs that node"):
        halves[1].cluster.driver(next(iter(halves[1].cluster.remote.keys() - {"head"})))
    # the run: as with every machine built (the hash of 1 partition), with
    # the drivers' ids reserved alike in each partition
    one = run_partitioned(spec, 1, 0.315, processes=False)
    two = run_partitioned(spec, 2, 0.315, processes=False)
    assert one.tasks_finished > 300
    assert (two.trace_hash, two.tasks_finished, two.events) == (one.trace_hash, one.tasks_finished, one.events)
    assert one.partition_hosts == [12] and two.partition_hosts == [7, 5]  # (the head is in 0)
    # welcomed from another process, each node's copy of every GCS shard's
    # config was its own (5,000 configs a node at 10,000 nodes): equal
    # tuples are made one again, as in one process
    import pickle

    from penumbra.core.messages import NodeWelcome

    configs = c.head.chain.configs()
    copies = [pickle.loads(pickle.dumps([NodeWelcome(configs=configs)])) for _ in range(3)]
    batches = [(0.1, f"node:{i}", "head", msgs, 0.09) for i, msgs in zip((1, 3, 5), copies)]
    p = halves[1]
    p._share(batches)
    got = [b[3][0].configs for b in batches]
    assert got[0] == configs and got[0] is not configs and got[1] is got[0] and got[2] is got[0]


def test_partitioned_run_refuses_what_it_cannot_do():
    from penumbra.sim.partition import PartitionError, ScalabilitySpec, run_partitioned

    spec = ScalabilitySpec(nodes=2, setup_at=0.01)
    with pytest.raises(ValueError, match="partitions must be"):
        run_partitioned(spec, 0, 0.02)
    with pytest.raises(ValueError, match="smallest latency between machines"):
        run_partitioned(spec, 1, 0.02, window=1.0, processes=False)

    class ZeroLatency(ScalabilitySpec):
        def build(self, trace, machines=None):
            from penumbra.sim.experiments import scalability_cluster

            return scalability_cluster(2, ZERO, 0, trace=trace, start=False, machines=machines)

    with pytest.raises(ValueError, match="positive network latency"):
        run_partitioned(ZeroLatency(nodes=2, setup_at=0.01), 1, 0.02, processes=False)

    class Whole(ScalabilitySpec):
        def build(self, trace, machines=None):  # (forgets to pass machines on)
            from penumbra.sim.experiments import scalability_cluster

            return scalability_cluster(2, PAPER, 0, trace=trace, start=False)

    with pytest.raises(PartitionError, match="pass machines= on"):
        run_partitioned(Whole(nodes=2, setup_at=0.01), 1, 0.02, processes=False)
