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

They cover what ``plans.plan_seed`` draws, under the same constraints:

* clusters with a custom resource (``"special"``, on nodes 1 and n-1) and
  GPUs (2 per GPU node; node 0 is always one), and small object stores
  (16 MiB) next to large objects (1-4 MiB), so stores fill and evict;
* tasks with fractional, whole and multi-CPU demands, custom-resource and
  GPU demands, finite retry budgets; every task fits some node of the
  layout it was drawn for;
* actors with unbounded or bounded restarts, with or without task retries,
  with replay and checkpoints, perhaps holding half a GPU, perhaps killed
  for good by the driver after their calls (``kill_at``), called by one
  driver or two;
* ``wait``s over earlier items, with and without timeouts, fetching or not;
* puts by a driver on another node, perhaps one that dies (the put is then
  lost for good, and so is what depends on it);
* perhaps a placement group (``workload.add_groups``: every node gets
  slots; some tasks, and perhaps an actor, run in its bundles);
* faults: node crashes (a node of the same shape comes back), GCS replica
  crashes, cuts long enough to be fenced, slow nodes, lossy and duplicating
  GCS links, delay (reordering), worker crashes, actor kills that allow a
  restart.  Node 0 (the driver's) never crashes and is never cut off: it
  may only run slow.

Which results may differ from the fault-free reference is decided by the
swarm (``taints._taints``), from the plan and what the run did (the attempts
tasks used, the actors that restarted); nothing here needs to mirror it.  If you combine the pieces yourself, keep the contract
``seed_plans`` keeps: draw the workload with ``workload_options(layout)`` so
that every task is feasible (an infeasible task rightly stays pending
forever, and the liveness check reports it).
"""

from __future__ import annotations

import dataclasses
import random

from hypothesis import strategies as st

from ..core.gcs import GcsTiming
from ..core.layout import ClusterLayout, NodeShape
from ..core.specs import ResourceSet
from .plans import FaultPlan, SeedPlan, seen_cuts, unstacked_silences
from .workload import ActorPlan, CallPlan, PutPlan, TaskPlan, VCall, VChild, VTask, Workload, CUSTOM, GPUS_PER_NODE, LARGE_SIZES, SLOT, SLOTS_PER_NODE, STORE_SIZES, add_callers, add_grandchildren, add_groups, add_remote_puts, add_waits

__all__ = ["layouts", "workloads", "fault_plans", "seed_plans", "workload_options"]

_TIMES = st.floats(min_value=0.0, max_value=1.0, allow_nan=False).map(lambda t: round(t, 3))



def _time_between(lo: float, hi: float):
    return st.floats(min_value=lo, max_value=hi, allow_nan=False).map(lambda t: round(t, 3))


@st.composite
def layouts(draw, max_nodes: int = 4, *, custom: bool = True, gpus: bool = True,
            stores: tuple[int, ...] = STORE_SIZES) -> ClusterLayout:
    """A small cluster: 2..max_nodes nodes of 1, 2 or 4 CPUs, 1..3 GCS
    shards, chains of 1..3 replicas, all nodes with one store capacity drawn
    from ``stores`` (16 MiB, 64 MiB or 1 GiB by default).

    With ``custom``, perhaps 2 units of a custom resource ``"special"`` on
    nodes 1 and n-1; with ``gpus``, perhaps 2 GPUs on node 0, or on nodes 0
    and n-1.  Node 0 is the one ``fault_plans`` never crashes or cuts off,
    so a GPU node always lives.

    Warning: a 16 MiB store next to megabyte objects fills up; whether an
    object is evicted, rebuilt or refused (``OBJECT_STORE_FULL``) then
    depends on timing.  The swarm allows for that (its ``"store"`` taint);
    pass ``stores=(1 << 30,)`` if your own checks compare values exactly.
    """
    n = draw(st.integers(2, max_nodes))
    cpus = draw(st.lists(st.sampled_from((1, 2, 4)), min_size=n, max_size=n))
    store = draw(st.sampled_from(stores))
    extra: list[dict[str, float]] = [{} for _ in range(n)]
    if custom and draw(st.booleans()):
        for i in {1, n - 1}:
            extra[i][CUSTOM] = 2
    if gpus and draw(st.booleans()):
        for i in ({0, n - 1} if draw(st.booleans()) else {0}):
            extra[i]["GPU"] = GPUS_PER_NODE
    shapes = tuple(NodeShape(ResourceSet.from_dict({"CPU": c, **x}), store) for c, x in zip(cpus, extra))
    return ClusterLayout(
        nodes=shapes, gcs_shards=draw(st.integers(1, 3)), chain_length=draw(st.integers(1, 3)),
        heartbeat_interval=0.05, node_timeout=0.4, gcs_retry_after=0.05,
        gcs_timing=GcsTiming(heartbeat_interval=0.02, heartbeat_timeout=0.08, resend_after=0.04),
    )


def workload_options(layout: ClusterLayout) -> dict:
    """The keyword arguments for ``workloads`` that keep every task feasible
    on ``layout``: CPU demands up to the largest node's CPUs; a custom
    resource only if some node has it, with at most the CPUs of the smallest
    such node; GPUs only if some node has them, with at most the CPUs of the
    smallest GPU node (and at most one GPU per task, half a GPU per actor)."""
    shapes = [s.resources for s in layout.nodes]
    special = [r.get("CPU") for r in shapes if r.get(CUSTOM)]
    gpu = [r.get("CPU") for r in shapes if r.get("GPU") >= GPUS_PER_NODE]
    return {
        "max_cpu": max(r.get("CPU") for r in shapes),
        "custom": (CUSTOM,) if special else (),
        "custom_cpu": min(special) if special else 1,
        "gpu_cpu": min(gpu) if gpu else None,
    }


@st.composite
def workloads(draw, max_tasks: int = 20, max_cpu: float = 1, *, custom: tuple[str, ...] = (),
              custom_cpu: float = 1, gpu_cpu: float | None = None, large: int | None = None,
              heavy: bool | None = None, max_actors: int = 3) -> Workload:
    """Puts, a task graph (deps on earlier items, nested children, errors,
    finite retry budgets) and actors with ordered calls; submission times in
    [0, 1].

    Sizes: 8 B to ``large`` bytes (1 or 4 MiB, drawn, unless given); in a
    ``heavy`` workload (drawn, unless given) three task outputs in four are
    large: with 4 MiB objects, more than a 16 MiB store holds, so objects
    are evicted and rebuilt, or refused.

    CPU demands: 0.25, 0.5, 1, 2 or 4, capped at ``max_cpu`` (at most the
    largest node's CPUs; every node must have at least 1).  ``custom``: names of
    custom resources a task may ask 1 unit of, then with at most
    ``custom_cpu`` CPUs (the fewest CPUs of a node holding them, which must
    hold 1 unit of each).  ``gpu_cpu``: if not None, some tasks ask for 0.25,
    0.5 or 1 GPU with at most ``gpu_cpu`` CPUs, and perhaps one actor holds
    half a GPU for life: the cluster then needs a node with 2 GPUs and at
    least ``gpu_cpu`` CPUs that never goes away (see ``layouts``).  Use
    ``workload_options(layout)`` to get these right.

    Actors (up to ``max_actors``): replay actors (restarts and retries
    unbounded, checkpoints every 0, 2 or 3 calls), or plain ones whose
    ``max_restarts`` is -1, 0 or 1 and ``max_task_retries`` -1 or 0; some
    are killed for good (``kill_at``) up to 0.2 s after their last call.

    The defaults ask for CPUs only, so any cluster whose nodes all have at
    least ``max_cpu`` CPUs runs every task.
    """
    if large is None:
        large = draw(st.sampled_from(LARGE_SIZES))
    if heavy is None:
        heavy = draw(st.booleans())
    sizes = st.sampled_from((65536, large, large, large) if heavy else (8, 256, 65536, large))
    cpus = sorted({min(c, max_cpu) for c in (0.25, 0.5, 1, 2, 4)})
    puts = tuple(PutPlan(f"p{i}", draw(st.sampled_from((64, 4096, large))), draw(_TIMES))
                 for i in range(draw(st.integers(0, 3))))
    known = [(p.key, p.at) for p in puts]
    tasks = []
    for i in range(draw(st.integers(1, max_tasks))):
        at = draw(_TIMES)
        earlier = sorted(k for k, t in known if t <= at)
        deps = tuple(draw(st.lists(st.sampled_from(earlier), max_size=3, unique=True))) if earlier else ()
        children = tuple(VChild(f"t{i}c{j}", draw(st.sampled_from((8, 512))), 0.001, draw(st.integers(0, 19)) == 0)
                         for j in range(draw(st.integers(0, 2))))
        model = VTask(f"t{i}", size=draw(sizes),
                      duration=draw(st.sampled_from((0.0005, 0.005, 0.02, 0.05))),
                      raises=draw(st.integers(0, 9)) == 0,
                      children=children)
        res: dict[str, float] = {"CPU": draw(st.sampled_from(cpus))}
        kind = draw(st.sampled_from(("cpu", "cpu", "cpu", "custom", "gpu")))
        if kind == "custom" and custom:
            res[draw(st.sampled_from(custom))] = 1
            res["CPU"] = min(res["CPU"], custom_cpu)
        elif kind == "gpu" and gpu_cpu is not None:
            res["GPU"] = draw(st.sampled_from((0.25, 0.5, 1)))
            res["CPU"] = min(res["CPU"], gpu_cpu)
        retries = draw(st.sampled_from((-1, -1, 0, 1, 2)))
        tasks.append(TaskPlan(f"t{i}", deps, model, ResourceSet.from_dict(res), retries, at))
        known.append((f"t{i}", at))
    actors = []
    gpu_actor = draw(st.integers(-1, max_actors - 1)) if gpu_cpu is not None and max_actors > 0 else -1
    for a in range(draw(st.integers(0, max_actors))):
        at = draw(_time_between(0.0, 0.5))
        n = draw(st.integers(1, 8))
        times = sorted(draw(st.lists(_time_between(at, 1.0), min_size=n, max_size=n)))
        calls = []
        for c, t in enumerate(times):
            earlier = sorted(k for k, tt in known if tt <= t and not k.startswith(f"a{a}."))
            deps = (draw(st.sampled_from(earlier)),) if earlier and draw(st.booleans()) else ()
            calls.append(CallPlan(f"a{a}.c{c}", deps,
                                  VCall(f"a{a}.c{c}", duration=draw(st.sampled_from((0.0005, 0.005, 0.02)))), t))
            known.append((f"a{a}.c{c}", t))
        replay = draw(st.booleans())
        if replay:
            restarts, task_retries, interval = -1, -1, draw(st.sampled_from((0, 2, 3)))
        else:
            restarts = draw(st.sampled_from((-1, 0, 1)))
            task_retries = draw(st.sampled_from((-1, 0)))
            interval = 0
        kill_at = None
        if draw(st.integers(0, 3)) == 0:
            kill_at = round(times[-1] + draw(st.sampled_from((0.0, 0.05, 0.2))), 3)
        actors.append(ActorPlan(f"a{a}", restarts, task_retries, replay, interval, at, tuple(calls),
                                kill_at=kill_at, gpus=0.5 if a == gpu_actor else 0.0))
    return Workload(puts, tuple(tasks), tuple(actors))


@st.composite
def fault_plans(draw, nodes: int, chain_length: int = 1, shards: int = 1, actors: int = 0) -> FaultPlan:
    """Faults over a cluster of ``nodes`` nodes: crashes of nodes 1.. with a
    node of the same shape back 0.1-0.6 s later, GCS replica crashes (if
    ``chain_length`` > 1; never the last live replica of a chain), cuts of
    nodes 1.. long enough (0.7-1.2 s) to be declared dead and fenced, slow
    nodes (any node, 3 or 10 times slower for 0.1-0.5 s), lossy and
    duplicating GCS links, delay (so messages reorder), worker crashes
    mid-task, kills of actors 0..``actors``-1 that allow a restart, and
    timing faults: stop-the-world pauses of the head, a node or the driver,
    and late heartbeats (a node's short ones never stacked into a silence
    the head may take for its death: ``plans.unstacked_silences``; a cut
    node never paused during its cut while the head is too: ``plans.seen_cuts``).

    Node 0, the driver's, is spared crashes and cuts: the swarm's driver and
    GPU node live there.  Fault times lie in [0.05, 1] (the workload's
    submissions span [0, 1]).
    """
    others = st.integers(1, nodes - 1)
    at = _time_between(0.05, 1.0)
    crashes = draw(st.lists(st.tuples(at, others, st.sampled_from((0.1, 0.3, 0.6))), max_size=2))
    replicas = []
    if chain_length > 1:
        replicas = draw(st.lists(st.tuples(at, st.integers(0, shards - 1), st.integers(0, chain_length - 1),
                                           st.sampled_from((0.1, 0.3))), max_size=1))
    cuts = draw(st.lists(st.tuples(at, others, st.sampled_from((0.8, 1.2))), max_size=1))
    slow = draw(st.lists(st.tuples(_TIMES, st.integers(0, nodes - 1), st.sampled_from((3.0, 10.0)),
                                   st.sampled_from((0.1, 0.5))), max_size=1))
    kills = draw(st.lists(st.tuples(at, st.integers(0, actors - 1)), max_size=3)) if actors else []
    # timing faults (see plans._draw_timing_faults): the head stopped past the
    # node timeout, a node stopped briefly or long enough to be fenced, the
    # driver stopped; either order of resume; late heartbeats from a node
    order = st.booleans()
    pauses = draw(st.lists(st.one_of(
        st.tuples(at, st.just("head"), st.just(0), st.sampled_from((0.5, 1.5)), order),
        st.tuples(at, st.just("node"), st.integers(0, nodes - 1), st.sampled_from((0.05, 0.25)), order),
        st.tuples(at, st.just("node"), others, st.sampled_from((0.8, 1.2)), order),
        st.tuples(at, st.just("driver"), st.just(0), st.sampled_from((0.1, 1.0)), order),
    ), max_size=2))
    late = draw(st.lists(st.tuples(at, st.integers(0, nodes - 1), st.sampled_from((0.05, 0.25)),
                                   st.sampled_from((0.2, 0.8))), max_size=1))
    # (never stacked so that a node is silent past the timeout: plans.unstacked_silences)
    # (and never hiding a cut: plans.seen_cuts)
    pauses, late = unstacked_silences(seen_cuts(sorted(pauses), cuts), sorted(late))
    return FaultPlan(
        pauses=tuple(pauses), heartbeat_delays=tuple(late),
        crashes=tuple(sorted(crashes)), replica_crashes=tuple(sorted(replicas)), isolations=tuple(sorted(cuts)),
        gcs_drop=draw(st.sampled_from((0.0, 0.02, 0.1))), gcs_duplicate=draw(st.sampled_from((0.0, 0.05))),
        delay=draw(st.sampled_from((0.0, 0.002, 0.01))), slow=tuple(sorted(slow)),
        worker_crash_rate=draw(st.sampled_from((0.0, 0.02, 0.05))),
        actor_kills=tuple(sorted(kills)),
    )


@st.composite
def seed_plans(draw) -> SeedPlan:
    """A whole swarm plan: a ``layouts()`` cluster, a ``workloads()``
    workload that fits it (``workload_options``), and ``fault_plans()``
    faults over it; horizon 1 s (see ``swarm``).  With a small store (under
    64 MiB) the workload is heavy with 4 MiB objects, so the store fills."""
    layout = draw(layouts())
    opts = workload_options(layout)
    if min(s.object_store_memory for s in layout.nodes) < 64 << 20:
        opts.update(heavy=True, large=LARGE_SIZES[-1])
    workload = draw(workloads(**opts))
    # waits over the items, and a second caller for some actor calls, as
    # ``plan_seed`` adds them (from a drawn seed: Hypothesis shrinks it)
    extra = random.Random(draw(st.integers(0, 2 ** 16)))
    workload = add_grandchildren(add_callers(add_waits(workload, extra, 1.0), extra), extra)
    faults = draw(fault_plans(len(layout.nodes), layout.chain_length, layout.gcs_shards, len(workload.actors)))
    workload = add_remote_puts(workload, extra, len(layout.nodes), faults.first_failures(), 1.0)
    if draw(st.booleans()):
        # a placement group: slots on every node, some items in the group
        layout = dataclasses.replace(layout, nodes=tuple(
            dataclasses.replace(s, resources=s.resources + ResourceSet.from_dict({SLOT: SLOTS_PER_NODE}))
            for s in layout.nodes))
        workload = add_groups(workload, extra, len(layout.nodes), 1.0)
    return SeedPlan(draw(st.integers(0, 2 ** 31)), layout, workload, faults, 1.0)
