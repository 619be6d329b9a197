"""Placement groups and scheduling strategies (issue 13): the pure core on
memnet, the simulator, and real processes."""

from __future__ import annotations

import time

import pytest

from penumbra.core.messages import ClientGcsRequest, NodeDied, ObjectsReady, SubmitTask, WatchObjects
from penumbra.core.placement import InGroup, OnNode, bundle_request, plan
from penumbra.core.records import ErrorKind, PlacementGroupEntry
from penumbra.core.specs import ResourceSet
from penumbra.core.tables import CreatePlacementGroup, RemovePlacementGroup

CPU1 = ResourceSet.of(CPU=1)


def create(net, pg, bundles, strategy="PACK", node="node:0", client="c:d", name=""):
    entry = PlacementGroupEntry(pg_id=pg, bundles=tuple(bundles), strategy=strategy, name=name, job_id=1)
    net.send(client, node, ClientGcsRequest(client=client, req_id=900, request=CreatePlacementGroup(entry)))


def remove(net, pg, node="node:0", client="c:d"):
    net.send(client, node, ClientGcsRequest(client=client, req_id=901, request=RemovePlacementGroup(pg)))


def group(net, pg):
    return net.machines["head"].placement.groups.get(pg)


def in_group(core, pg, index=-1, cpus=1.0, **kw):
    req = ResourceSet.of(CPU=cpus) if cpus else ResourceSet()
    return core.spec(resources=bundle_request(req, pg, index), scheduling=InGroup(pg, index), **kw)


def results(net, node, spec, client="c:d", req_id=7):
    net.send(client, node, WatchObjects(client=client, req_id=req_id, object_ids=spec.return_ids, fetch=False))


def ready(inbox):
    out = {}
    for m in inbox:
        if isinstance(m, ObjectsReady):
            out.update(dict(m.objects))
    return out


def ran_on(net, spec):
    return sorted(a for a, m in net.machines.items()
                  if a.startswith("node:") and any(w.startswith("running") for _, _, w in m.story(spec.task_id)))


# ============================================================================ planning


def test_plan_strategies() -> None:
    free = {"a": ResourceSet.of(CPU=4), "b": ResourceSet.of(CPU=2), "c": ResourceSet.of(CPU=1)}
    two = {0: CPU1, 1: CPU1}
    assert set(plan(two, "STRICT_PACK", free, {}).values()) == {"a"}
    assert set(plan(two, "PACK", free, {}).values()) == {"a"}
    assert len(set(plan(two, "STRICT_SPREAD", free, {}).values())) == 2
    assert len(set(plan({i: CPU1 for i in range(3)}, "STRICT_SPREAD", free, {}).values())) == 3
    assert plan({i: CPU1 for i in range(4)}, "STRICT_SPREAD", free, {}) is None
    # SPREAD falls back to sharing nodes
    assert plan({i: CPU1 for i in range(4)}, "SPREAD", free, {}) is not None
    assert plan({0: ResourceSet.of(CPU=5)}, "PACK", free, {}) is None
    # STRICT_SPREAD avoids the nodes already holding the group's bundles
    assert plan({1: CPU1}, "STRICT_SPREAD", free, {"a": {0}})[1] != "a"


# ============================================================================ core on memnet


def test_gang_reservation_and_tasks_run_on_their_bundles_node(core) -> None:
    net = core.cluster(nodes=3)
    inbox = net.add_client("c:d")
    create(net, "pg1", [CPU1, CPU1], "STRICT_SPREAD")
    net.run_until(lambda: group(net, "pg1") is not None and group(net, "pg1").state == "created", timeout=5)
    g = group(net, "pg1")
    assert len(set(g.nodes)) == 2
    for n in g.nodes:
        assert net.machines[n].scheduler.bundled == CPU1
    specs = [in_group(core, "pg1", i) for i in (0, 1)]
    for i, s in enumerate(specs):
        net.send("c:d", "node:0", SubmitTask(client="c:d", spec=s))
        results(net, "node:0", s, req_id=30 + i)
    net.run_until(lambda: all(o in ready(inbox) for s in specs for o in s.return_ids), timeout=10)
    for i, s in enumerate(specs):
        assert ran_on(net, s) == [g.nodes[i]]
        assert ready(inbox)[s.return_ids[0]].error is None


def test_strict_spread_infeasible_stays_pending_until_a_node_joins(core) -> None:
    from penumbra.core.layout import ClusterLayout, NodeShape, make_node

    net = core.cluster(nodes=1)
    inbox = net.add_client("c:d")
    create(net, "pg2", [CPU1, CPU1], "STRICT_SPREAD")
    probe = in_group(core, "pg2", cpus=0)
    net.send("c:d", "node:0", SubmitTask(client="c:d", spec=probe))
    results(net, "node:0", probe)
    net.run_for(2.0)
    assert group(net, "pg2").state == "pending"
    assert net.machines["node:0"].scheduler.bundled.is_empty()
    assert probe.return_ids[0] not in ready(inbox)
    # a second node joins: the group is reserved and the waiting task runs
    layout = ClusterLayout(nodes=(NodeShape(), NodeShape()))
    net.add("node:1", make_node(layout, 1))
    net.run_until(lambda: probe.return_ids[0] in ready(inbox), timeout=10)
    assert sorted(group(net, "pg2").nodes) == ["node:0", "node:1"]


def test_remove_frees_the_reservation_and_fails_waiting_tasks(core) -> None:
    net = core.cluster(nodes=1, resources=[ResourceSet.of(CPU=2)])
    inbox = net.add_client("c:d")
    create(net, "pg3", [ResourceSet.of(CPU=2)])
    net.run_until(lambda: group(net, "pg3") is not None and group(net, "pg3").state == "created", timeout=5)
    node = net.machines["node:0"]
    assert node.scheduler.available.get("CPU") == 0
    # outside the group: pending, the CPUs are reserved
    outside = core.spec(cpus=2)
    net.send("c:d", "node:0", SubmitTask(client="c:d", spec=outside))
    results(net, "node:0", outside, req_id=8)
    # in bundle 5, which does not exist: waits, then fails with the group
    stray = in_group(core, "pg3", 5)
    net.send("c:d", "node:0", SubmitTask(client="c:d", spec=stray))
    results(net, "node:0", stray, req_id=9)
    net.run_for(1.0)
    assert outside.return_ids[0] not in ready(inbox)
    remove(net, "pg3")
    net.run_until(lambda: outside.return_ids[0] in ready(inbox) and stray.return_ids[0] in ready(inbox), timeout=10)
    assert ready(inbox)[outside.return_ids[0]].error is None
    assert ready(inbox)[stray.return_ids[0]].error.kind is ErrorKind.TASK_UNSCHEDULABLE
    assert node.scheduler.bundled.is_empty()
    assert not [n for n in node.scheduler.total.names() if "_group_" in n]


def test_node_death_reschedules_its_bundles(core) -> None:
    net = core.cluster(nodes=3)
    create(net, "pg4", [CPU1, CPU1], "STRICT_SPREAD")
    net.run_until(lambda: group(net, "pg4") is not None and group(net, "pg4").state == "created", timeout=5)
    before = list(group(net, "pg4").nodes)
    victim = before[0] if before[0] != "node:0" else before[1]
    net.crash(victim)
    net.inject("head", NodeDied(node_id=victim))
    net.run_until(lambda: group(net, "pg4").state == "created" and victim not in group(net, "pg4").nodes, timeout=10)
    after = group(net, "pg4").nodes
    assert len(set(after)) == 2 and victim not in after
    kept = [n for n in before if n != victim][0]
    assert kept in after


def test_node_affinity_hard_to_a_dead_node_fails_soft_runs_anywhere(core) -> None:
    net = core.cluster(nodes=2)
    inbox = net.add_client("c:d")
    on1 = core.spec(scheduling=OnNode("node:1"))
    net.send("c:d", "node:0", SubmitTask(client="c:d", spec=on1))
    results(net, "node:0", on1)
    net.run_until(lambda: on1.return_ids[0] in ready(inbox), timeout=5)
    assert ran_on(net, on1) == ["node:1"]
    hard = core.spec(scheduling=OnNode("node:9"))
    soft = core.spec(scheduling=OnNode("node:9", soft=True))
    for s, r in ((hard, 11), (soft, 12)):
        net.send("c:d", "node:0", SubmitTask(client="c:d", spec=s))
        results(net, "node:0", s, req_id=r)
    net.run_until(lambda: all(s.return_ids[0] in ready(inbox) for s in (hard, soft)), timeout=5)
    assert ready(inbox)[hard.return_ids[0]].error.kind is ErrorKind.TASK_UNSCHEDULABLE
    assert ready(inbox)[soft.return_ids[0]].error is None


def test_spread_uses_every_node(core) -> None:
    net = core.cluster(nodes=3)
    inbox = net.add_client("c:d")
    specs = [core.spec(scheduling="SPREAD") for _ in range(6)]
    for i, s in enumerate(specs):
        net.send("c:d", "node:0", SubmitTask(client="c:d", spec=s))
        results(net, "node:0", s, req_id=20 + i)
    net.run_until(lambda: all(s.return_ids[0] in ready(inbox) for s in specs), timeout=10)
    assert {n for s in specs for n in ran_on(net, s)} == {"node:0", "node:1", "node:2"}


# ============================================================================ simulator


@pytest.mark.timeout(120)
def test_simulator_strict_spread_gang_node_crash_and_remove() -> None:
    import penumbra as ray
    from penumbra.sim import runtime as simrt
    from penumbra.sim.runtime import CrashNode, SimConfig
    from penumbra.util.placement_group import placement_group, placement_group_table, remove_placement_group
    from penumbra.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

    # node:1 crashes at 3 virtual seconds, holding a bundle by then
    ray.init(simulated=SimConfig(nodes=3, seed=3, validate=True, faults=[(3.0, CrashNode("node:1"))]))
    try:
        sim = simrt.current_simulation()

        @ray.remote(num_cpus=1)
        def where():
            return ray.get_runtime_context().get_node_id()

        pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
        ray.get(pg.ready(), timeout=30)
        table = placement_group_table(pg)
        assert table["state"] == "CREATED"
        nodes = table["bundles_to_node_id"]
        assert sorted(nodes.values()) == ["node:0", "node:1"]
        for i in (0, 1):
            s = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)
            assert ray.get(where.options(scheduling_strategy=s).remote(), timeout=30) == nodes[i]
        assert ray.get(where.options(scheduling_strategy=NodeAffinitySchedulingStrategy("node:2", soft=False)).remote(),
                       timeout=30) == "node:2"
        assert sim.now < 3.0
        # after the crash, the bundle on node:1 is reserved again on node:2
        lost = [i for i, n in nodes.items() if n == "node:1"][0]
        s = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=lost)
        ray.get(where.options(num_cpus=0).remote(), timeout=30)
        while sim.now < 3.5:
            ray.get(where.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy("node:0", soft=False)).remote(), timeout=30)
        assert ray.get(where.options(scheduling_strategy=s).remote(), timeout=60) == "node:2"
        t = placement_group_table(pg)
        assert t["state"] == "CREATED" and sorted(t["bundles_to_node_id"].values()) == ["node:0", "node:2"]
        running = where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg)).remote()
        remove_placement_group(pg)
        # in the group as it was removed: cancelled or unschedulable
        with pytest.raises((ray.exceptions.TaskUnschedulableError, ray.exceptions.TaskCancelledError)):
            ray.get(running, timeout=30)
        assert placement_group_table(pg)["state"] == "REMOVED"
        with pytest.raises(ray.exceptions.TaskUnschedulableError):
            ray.get(where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg)).remote(), timeout=30)
        # the group's resources are gone from the cluster, and its CPUs free
        assert len(ray.get([where.remote() for _ in range(4)], timeout=30)) == 4
        assert not [k for k in ray.cluster_resources() if "_group_" in k]
    finally:
        ray.shutdown()


# ============================================================================ real processes


@pytest.fixture
def real_cluster():
    import penumbra as ray
    from penumbra.transports.launch import Cluster

    c = Cluster(head_node_args={"num_cpus": 1, "validate": True})
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.mark.timeout(180)
def test_real_cluster_strict_spread_bundles_and_node_affinity(real_cluster) -> None:
    import penumbra as ray
    from penumbra.util.placement_group import placement_group, placement_group_table, remove_placement_group
    from penumbra.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

    a = real_cluster.add_node(num_cpus=1, validate=True)
    b = real_cluster.add_node(num_cpus=1, validate=True)
    ray.init(address=real_cluster.address, _token=real_cluster.token)
    real_cluster.wait_for_nodes()

    @ray.remote(num_cpus=1)
    def where():
        return ray.get_runtime_context().get_node_id()

    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    assert pg.wait(60)
    nodes = placement_group_table(pg)["bundles_to_node_id"]
    assert len(set(nodes.values())) == 2
    for i in (0, 1):
        s = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)
        assert ray.get([where.options(scheduling_strategy=s).remote() for _ in range(3)], timeout=60) == [nodes[i]] * 3
    # node affinity: to each node (zero CPUs: the bundles hold them), and
    # to a node that does not exist (hard: unschedulable)
    for target in (a.node_id, b.node_id):
        got = ray.get(where.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(target, soft=False)).remote(), timeout=60)
        assert got == target
    with pytest.raises(ray.exceptions.TaskUnschedulableError):
        ray.get(where.options(scheduling_strategy=NodeAffinitySchedulingStrategy("node:nowhere", soft=False)).remote(), timeout=60)
    remove_placement_group(pg)
    deadline = time.monotonic() + 30
    while placement_group_table(pg)["state"] != "REMOVED" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert placement_group_table(pg)["state"] == "REMOVED"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU") == 3.0:
            break
        time.sleep(0.1)
    assert ray.available_resources().get("CPU") == 3.0
    assert not [k for k in ray.cluster_resources() if "_group_" in k]


# ============================================================================ API: mistakes are reported where made


def test_bad_strategies_and_bundles_are_refused_where_made() -> None:
    import penumbra as ray
    from penumbra.util.placement_group import PlacementGroup, placement_group
    from penumbra.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

    @ray.remote
    def f():
        return 1

    with pytest.raises(ValueError, match="scheduling_strategy"):
        f.options(scheduling_strategy="ANYWHERE")
    with pytest.raises(TypeError, match="PlacementGroup"):
        PlacementGroupSchedulingStrategy(placement_group="pg")
    with pytest.raises(TypeError, match="node id"):
        NodeAffinitySchedulingStrategy(node_id=None, soft=False)
    with pytest.raises(ValueError, match="non-empty list of bundles"):
        placement_group([])
    with pytest.raises(ValueError, match="bundle 1"):
        placement_group([{"CPU": 1}, {"CPU": -1}])
    with pytest.raises(ValueError, match="asks for nothing"):
        placement_group([{"CPU": 0}])
    with pytest.raises(ValueError, match="strategy"):
        placement_group([{"CPU": 1}], strategy="TIGHT")
    with pytest.raises(ValueError, match="lifetime"):
        placement_group([{"CPU": 1}], lifetime="forever")
    # a bundle index out of range, and a request no bundle fits: at submit
    from penumbra.api.options import scheduling_for

    pg = PlacementGroup("abc", [{"CPU": 1}])
    with pytest.raises(ValueError, match="out of range"):
        scheduling_for({"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, 1)}, CPU1, None)
    with pytest.raises(ValueError, match="cannot fit"):
        scheduling_for({"scheduling_strategy": PlacementGroupSchedulingStrategy(pg)}, ResourceSet.of(CPU=2), None)
    # captured: a child without a strategy goes into its parent's group
    s, res, _ = scheduling_for({}, CPU1, InGroup("abc", 0, capture=True))
    assert s == InGroup("abc", -1, True) and res == bundle_request(CPU1, "abc", -1)
    # opting out of the parent's group
    s, res, _ = scheduling_for({"scheduling_strategy": PlacementGroupSchedulingStrategy(None)}, CPU1, InGroup("abc", 0, True))
    assert s is None and res == CPU1


@pytest.mark.timeout(120)
def test_simulator_capture_current_group_legacy_option_and_actor_killed_on_remove() -> None:
    import penumbra as ray
    from penumbra.util.placement_group import get_current_placement_group, placement_group, remove_placement_group
    from penumbra.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    ray.init(simulated=True, num_cpus=2)
    try:
        pg = placement_group([{"CPU": 1}])
        assert pg.wait(10)

        @ray.remote(num_cpus=1)
        def current():
            g = get_current_placement_group()
            return None if g is None else g.id

        @ray.remote(num_cpus=1)
        class A:
            def current(self):
                g = get_current_placement_group()
                return None if g is None else g.id

        assert get_current_placement_group() is None
        assert ray.get(current.remote(), timeout=10) is None
        assert ray.get(current.options(placement_group=pg).remote(), timeout=10) == pg.id  # Ray's older option
        a = A.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg)).remote()
        assert ray.get(a.current.remote(), timeout=10) == pg.id
        remove_placement_group(pg)
        with pytest.raises(ray.exceptions.ActorDiedError, match="placement group"):
            for _ in range(200):
                ray.get(a.current.remote(), timeout=10)
    finally:
        ray.shutdown()
