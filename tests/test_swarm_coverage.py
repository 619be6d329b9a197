"""What the swarm's default seeds actually exercise.

A checker is only as good as the runs it sees: these tests pin down that the
300 default seeds draw every cluster shape, workload feature and fault the
verification issue lists, so a change to ``plan_seed`` cannot quietly stop
exercising one of them.
"""

from __future__ import annotations

import collections

import pytest

from penumbra.core.records import ErrorKind
from penumbra.verification import swarm

pytestmark = pytest.mark.timeout(600)

SEEDS = range(300)


@pytest.fixture(scope="module")
def plans():
    return [swarm.plan_seed(s) for s in SEEDS]


def test_cluster_shapes_vary(plans):
    nodes = {len(p.layout.nodes) for p in plans}
    chains = {p.layout.chain_length for p in plans}
    shards = {p.layout.gcs_shards for p in plans}
    cpus = {s.resources.get("CPU") for p in plans for s in p.layout.nodes}
    stores = {s.object_store_memory for p in plans for s in p.layout.nodes}
    assert nodes == {2, 3, 4, 5}
    assert chains == {1, 2, 3}
    assert shards == {1, 2, 3}
    assert {1, 2, 4} <= cpus
    assert len(stores) >= 3
    assert any(s.resources.get("GPU") for p in plans for s in p.layout.nodes)
    assert any(s.resources.get("special") for p in plans for s in p.layout.nodes)


def test_workloads_have_every_kind_of_item(plans):
    seen = collections.Counter()
    for p in plans:
        w = p.workload
        seen["puts"] += bool(w.puts)
        seen["puts on a node that dies"] += any(x.node in p.faults.first_failures() for x in w.puts)
        seen["nested"] += any(t.model.children for t in w.tasks)
        seen["nested two deep"] += any(c.children for t in w.tasks for c in t.model.children)
        seen["raising"] += any(t.model.raises for t in w.tasks)
        seen["chained"] += any(t.deps for t in w.tasks)
        seen["bounded retries"] += any(t.max_retries >= 0 for t in w.tasks)
        seen["large"] += any(t.model.size >= 1 << 20 for t in w.tasks)
        seen["actors"] += bool(w.actors)
        seen["restartable"] += any(a.max_restarts != 0 for a in w.actors)
        seen["bounded restarts"] += any(a.max_restarts >= 0 for a in w.actors)
        seen["replay"] += any(a.replay and a.checkpoint_interval for a in w.actors)
        seen["killed"] += any(a.kill_at is not None for a in w.actors)
        seen["two callers"] += any(c.caller for a in w.actors for c in a.calls)
        seen["call deps"] += any(c.deps for a in w.actors for c in a.calls)
        seen["waits"] += bool(w.waits)
        seen["timed waits"] += any(x.timeout is not None for x in w.waits)
        seen["untimed waits"] += any(x.timeout is None for x in w.waits)
        seen["locate-only waits"] += any(not x.fetch for x in w.waits)
        seen["partial waits"] += any(x.num_returns < len(x.refs) for x in w.waits)
    missing = [k for k, n in seen.items() if n < 10]
    assert not missing, f"fewer than 10 of {len(SEEDS)} seeds draw: {missing} ({dict(seen)})"
    assert len(seen) == 20


def test_every_fault_kind_is_drawn(plans):
    seen = collections.Counter()
    for p in plans:
        f = p.faults
        for name in ("crashes", "replica_crashes", "isolations", "slow", "actor_kills"):
            seen[name] += bool(getattr(f, name))
        for name in ("gcs_drop", "gcs_duplicate", "delay", "worker_crash_rate"):
            seen[name] += getattr(f, name) > 0
        seen["fault-free"] += not f.items()
    missing = [k for k in ("crashes", "replica_crashes", "isolations", "slow", "actor_kills", "gcs_drop",
                           "gcs_duplicate", "delay", "worker_crash_rate", "fault-free") if seen[k] < 10]
    assert not missing, f"fewer than 10 of {len(SEEDS)} seeds draw: {missing} ({dict(seen)})"


def test_timing_faults_are_drawn(plans):
    """Stop-the-world pauses of the head (in both orders of resume), of a
    node (briefly, and long enough to be declared dead), of the driver, and
    bursts of late heartbeats."""
    seen = collections.Counter()
    for p in plans:
        for at, who, i, d, timers_first in p.faults.pauses:
            kind = who if who != "node" else ("long node" if d >= swarm.LONG_PAUSE else "short node")
            seen[kind] += 1
            if who == "head":
                seen["head, timers first" if timers_first else "head, messages first"] += 1
        seen["late heartbeats"] += bool(p.faults.heartbeat_delays)
    want = ("head", "head, timers first", "head, messages first", "short node", "long node", "driver",
            "late heartbeats")
    missing = [k for k in want if seen[k] < 10]
    assert not missing, f"fewer than 10 of {len(SEEDS)} seeds draw: {missing} ({dict(seen)})"


def test_runs_evict_reconstruct_interleave_and_time_out():
    """Things only a run shows: stores evict, lost objects are rebuilt, put
    objects are lost for good, two callers' calls interleave on one actor,
    and waits time out."""
    seen = collections.Counter()
    for s in range(100):
        r = swarm.run_plan(swarm.plan_seed(s), faults=True)
        assert not r.violations, [str(v) for v in r.violations]
        nodes = [n.host.machine for n in r.cluster.nodes.values() if n.host is not None and n.host.machine is not None]
        seen["evictions"] += sum(m.objects.store.evictions for m in nodes)
        seen["reconstructions"] += sum(e.reconstructions for e in _task_rows(r))
        callers = collections.defaultdict(set)
        for e in r.executor.actor_log:
            callers[e.actor_id].add(e.caller)
        seen["interleaved actors"] += sum(len(c) > 1 for c in callers.values())
        seen["timed-out waits"] += sum(o.timed_out for o in r.waits.values())
        seen["lost puts"] += sum(1 for k, v in r.results.items()
                                 if k.startswith("r") and not k.endswith("t") and v[:2] == ("e", ErrorKind.OBJECT_LOST))
    assert all(seen[k] > 0 for k in ("evictions", "reconstructions", "interleaved actors", "timed-out waits", "lost puts")), dict(seen)


def _task_rows(run):
    out = []
    for oid in run.keys.values():
        row = run.cluster.gcs_row("tasks", oid.task_id)
        if row is not None:
            out.append(row)
    return out


def test_placement_groups_are_drawn_and_lose_nodes(plans):
    """Gang placement under node failure: groups of every strategy, tasks
    and actors in them, and runs where a node holding a bundle dies and
    the bundle is reserved again elsewhere."""
    grouped = [p for p in plans if p.workload.groups]
    assert len(grouped) >= 30
    assert {g.strategy for p in grouped for g in p.workload.groups} == {"PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"}
    assert sum(any(t.group for t in p.workload.tasks) for p in grouped) >= 30
    assert sum(any(a.group for a in p.workload.actors) for p in grouped) >= 5
    rescheduled = 0
    for p in grouped[:40]:
        if not p.faults.first_failures():
            continue
        r = swarm.run_plan(p, faults=True)
        assert not r.violations, [str(v) for v in r.violations]
        stories = [w for k, s in r.cluster.head.stories.items() if k[0] == "pg" for _, _, w in s]
        rescheduled += any("died holding bundles" in w for w in stories)
    assert rescheduled >= 2, f"only {rescheduled} runs lost a node holding a bundle"


def test_quiet_cluster_checks_see_what_they_check(plans):
    """The quiet-cluster checks (``checkers.check_quiet_cluster``) need
    actors that hold no resources and are killed (every actor is killed at
    quiescence; some mid-run too), and tasks with a finite retry budget in
    seeds whose workers crash or whose nodes die (their budgets get spent)."""
    zero = sum(any(not a.gpus and a.group is None for a in p.workload.actors) for p in plans)
    zero_killed = sum(any(a.kill_at is not None and not a.gpus and a.group is None for a in p.workload.actors)
                      for p in plans)
    crashing = sum(p.faults.worker_crash_rate > 0 and any(t.max_retries >= 0 for t in p.workload.tasks) for p in plans)
    losing = sum(bool(p.faults.first_failures()) and any(t.max_retries >= 0 for t in p.workload.tasks) for p in plans)
    assert zero >= 150 and zero_killed >= 30 and crashing >= 80 and losing >= 100, (zero, zero_killed, crashing, losing)
