"""Hypothesis strategies for penumbra workloads and fault schedules.

Import them in your own tests::

    from hypothesis import given, settings
    from penumbra.verification.strategies import seed_plans
    from penumbra.verification.swarm import check_plan

    @given(seed_plans())
    @settings(max_examples=50, deadline=None)
    def test_my_change_keeps_the_invariants(plan):
        report = check_plan(plan)
        assert report.ok, report.violations

Unlike the swarm's seeds, these draw every part of a plan from Hypothesis
primitives, so a failing plan *shrinks*: to fewer tasks, fewer faults,
smaller clusters.
"""

from __future__ import annotations

from hypothesis import strategies as st

from ..core.gcs import GcsTiming
from ..core.layout import ClusterLayout, NodeShape
from ..core.specs import ResourceSet
from .swarm import FaultPlan, SeedPlan
from .workload import ActorPlan, CallPlan, PutPlan, TaskPlan, VCall, VChild, VTask, Workload

__all__ = ["layouts", "workloads", "fault_plans", "seed_plans"]

_TIMES = st.floats(min_value=0.0, max_value=1.0, allow_nan=False).map(lambda t: round(t, 3))


@st.composite
def layouts(draw, max_nodes: int = 4) -> ClusterLayout:
    """A small cluster: 2..max_nodes nodes, 1..3 GCS shards, chains of 1..3."""
    n = draw(st.integers(2, max_nodes))
    cpus = draw(st.lists(st.sampled_from((1, 2, 4)), min_size=n, max_size=n))
    store = draw(st.sampled_from((64 << 20, 1 << 30)))
    shapes = tuple(NodeShape(ResourceSet.of(CPU=c), store) for c in cpus)
    return ClusterLayout(
        nodes=shapes, gcs_shards=draw(st.integers(1, 3)), chain_length=draw(st.integers(1, 3)),
        heartbeat_interval=0.05, node_timeout=0.4, gcs_retry_after=0.05,
        gcs_timing=GcsTiming(heartbeat_interval=0.02, heartbeat_timeout=0.08, resend_after=0.04),
    )


@st.composite
def workloads(draw, max_tasks: int = 20, max_cpu: float = 1) -> Workload:
    """Puts, a task graph (deps on earlier items, nested children, errors)
    and actors with ordered calls; submission times in [0, 1]."""
    puts = tuple(PutPlan(f"p{i}", draw(st.sampled_from((64, 4096, 1 << 20))), draw(_TIMES))
                 for i in range(draw(st.integers(0, 3))))
    known = [(p.key, p.at) for p in puts]
    tasks = []
    for i in range(draw(st.integers(1, max_tasks))):
        at = draw(_TIMES)
        earlier = sorted(k for k, t in known if t <= at)
        deps = tuple(draw(st.lists(st.sampled_from(earlier), max_size=3, unique=True))) if earlier else ()
        children = tuple(VChild(f"t{i}c{j}", 8, 0.001) for j in range(draw(st.integers(0, 2))))
        model = VTask(f"t{i}", size=draw(st.sampled_from((8, 65536, 1 << 20))),
                      duration=draw(st.sampled_from((0.0005, 0.005, 0.02))),
                      raises=draw(st.integers(0, 9)) == 0,
                      children=children)
        retries = draw(st.sampled_from((-1, -1, 0, 1)))
        tasks.append(TaskPlan(f"t{i}", deps, model, ResourceSet.of(CPU=max_cpu), retries, at))
        known.append((f"t{i}", at))
    actors = []
    for a in range(draw(st.integers(0, 2))):
        at = draw(_TIMES)
        n = draw(st.integers(1, 6))
        times = sorted(draw(st.lists(_TIMES.filter(lambda t, at=at: t >= at), min_size=n, max_size=n)))
        calls = []
        for c, t in enumerate(times):
            earlier = sorted(k for k, tt in known if tt <= t and not k.startswith(f"a{a}."))
            deps = (draw(st.sampled_from(earlier)),) if earlier and draw(st.booleans()) else ()
            calls.append(CallPlan(f"a{a}.c{c}", deps, VCall(f"a{a}.c{c}"), t))
            known.append((f"a{a}.c{c}", t))
        replay = draw(st.booleans())
        actors.append(ActorPlan(f"a{a}", -1, -1, replay, draw(st.sampled_from((0, 2))) if replay else 0,
                                at, tuple(calls)))
    return Workload(puts, tuple(tasks), tuple(actors))


@st.composite
def fault_plans(draw, nodes: int, chain_length: int = 1, shards: int = 1, actors: int = 0) -> FaultPlan:
    """Faults over a cluster of ``nodes`` nodes (node 0, the driver's, is
    spared): crashes with restarts, replica crashes, cuts long enough to be
    fenced, lossy GCS links, delays, worker crashes, actor kills."""
    others = st.integers(1, nodes - 1)
    crashes = draw(st.lists(st.tuples(_TIMES, others, st.sampled_from((0.1, 0.3))), max_size=2))
    replicas = []
    if chain_length > 1:
        replicas = draw(st.lists(st.tuples(_TIMES, st.integers(0, shards - 1), st.integers(0, chain_length - 1),
                                           st.sampled_from((0.1, 0.3))), max_size=1))
    cuts = draw(st.lists(st.tuples(_TIMES, others, st.just(0.8)), max_size=1))
    kills = draw(st.lists(st.tuples(_TIMES, st.integers(0, actors - 1)), max_size=2)) if actors else []
    return FaultPlan(
        crashes=tuple(sorted(crashes)), replica_crashes=tuple(sorted(replicas)), isolations=tuple(sorted(cuts)),
        gcs_drop=draw(st.sampled_from((0.0, 0.05))), gcs_duplicate=draw(st.sampled_from((0.0, 0.05))),
        delay=draw(st.sampled_from((0.0, 0.005))), worker_crash_rate=draw(st.sampled_from((0.0, 0.03))),
        actor_kills=tuple(sorted(kills)),
    )


@st.composite
def seed_plans(draw) -> SeedPlan:
    """A whole swarm plan: cluster, workload and faults (see ``swarm``)."""
    layout = draw(layouts())
    max_cpu = min(s.resources.get("CPU") for s in layout.nodes)
    workload = draw(workloads(max_cpu=max_cpu))
    faults = draw(fault_plans(len(layout.nodes), layout.chain_length, layout.gcs_shards, len(workload.actors)))
    return SeedPlan(draw(st.integers(0, 2 ** 31)), layout, workload, faults, 1.0)
