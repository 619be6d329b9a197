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


# -- faults the swarm once never drew (issue 14, branch draws-faults) --------------


def _burst(p):
    return sum(1 for t in p.workload.tasks if t.key.startswith("b") and not t.key.startswith("bc"))


def test_faults_it_once_never_drew_are_drawn(plans):
    """Two GCS replica crashes in one seed, the second inside a rejoin's
    catch-up window (or a caught-up member paused there); workers dying
    while blocked in ``get``; fractional GPU totals with fractional asks;
    work past the spillback thresholds; heartbeat storms, alone and around
    a pause of the head."""
    seen = collections.Counter()
    for p in plans:
        f = p.faults
        for shard, stage, whom, _, _ in f.rejoin_crashes:
            seen[f"second replica fault: {whom}"] += 1
            seen[f"second replica fault at {stage}"] += 1
            if whom != "pause" and any(c[1] == shard for c in f.replica_crashes):
                seen["two replica crashes of one shard"] += 1
        seen["workers die blocked in get"] += f.blocked_crash_rate > 0
        totals = {s.resources.get("GPU") for s in p.layout.nodes}
        for t in (0.5, 1.5):
            seen[f"GPU total {t}"] += t in totals
        seen["fractional asks on a fractional total"] += bool(totals & {0.5, 1.5}) and any(
            0 < t.resources.get("GPU") < 1 for t in p.workload.tasks)
        sc = p.layout.scheduler
        seen["low queue threshold"] += sc.forward_queue_threshold < 100
        seen["low remote-bytes threshold"] += sc.forward_remote_bytes < (100 << 20)
        seen["burst past the queue threshold"] += _burst(p) > sc.forward_queue_threshold
        seen["burst past the default threshold"] += _burst(p) > 100
        seen["remote consumers"] += any(t.node for t in p.workload.tasks)
        for _, _, pause, lead, _ in f.storms:
            seen["head pause in a storm" if pause else "storm"] += 1
            seen["storm starting before a head pause"] += bool(pause and lead)
    want = {"second replica fault: joiner": 15, "second replica fault: other": 5, "second replica fault: pause": 15,
            "second replica fault at join": 15, "second replica fault at ready": 15,
            "two replica crashes of one shard": 20, "workers die blocked in get": 30, "GPU total 0.5": 10,
            "GPU total 1.5": 10, "fractional asks on a fractional total": 20, "low queue threshold": 20,
            "low remote-bytes threshold": 15, "burst past the queue threshold": 20,
            "burst past the default threshold": 10, "remote consumers": 15, "storm": 10,
            "head pause in a storm": 10, "storm starting before a head pause": 5}
    short = {k: seen[k] for k, n in want.items() if seen[k] < n}
    assert not short, f"too few of {len(SEEDS)} seeds draw: {short} ({dict(seen)})"


def test_runs_feel_the_faults_it_once_never_drew(plans):
    """What the runs of such seeds really go through: a replica crashes (or
    a member stands still) while a joiner has not caught up; workers die
    blocked in get; GPU tasks run on a node of half a GPU or one and a half;
    tasks are forwarded because their node's queue is full and because their
    inputs are remote and large; messages to the head stall and burst."""
    from penumbra.core import scheduler as S

    seen = collections.Counter()
    orig = S.LocalScheduler._forward

    def forward(self, spec, reason, *a, **kw):
        seen[f"forwarded {reason}"] += 1
        return orig(self, spec, reason, *a, **kw)

    def first(pred, n=8):
        return [p for p in plans if pred(p)][:n]

    S.LocalScheduler._forward = forward
    try:
        for p in first(lambda p: p.faults.rejoin_crashes, 12):
            r = swarm.run_plan(p, faults=True)
            assert not r.violations, [str(v) for v in r.violations]
            for kind, _, _, caught_up in getattr(r.cluster, "rejoin_faults", ()):
                seen[f"{kind} while a joiner catches up"] += not caught_up
        for p in first(lambda p: p.faults.blocked_crash_rate):
            r = swarm.run_plan(p, faults=True)
            assert not r.violations, [str(v) for v in r.violations]
            seen["workers killed blocked in get"] += r.executor.blocked_crashes
        for p in first(lambda p: {s.resources.get("GPU") for s in p.layout.nodes} & {0.5, 1.5}):
            r = swarm.run_plan(p, faults=False)
            assert not r.violations, [str(v) for v in r.violations]
            gpu = {t.key for t in p.workload.tasks if t.resources.get("GPU")}
            seen["GPU tasks done on a fractional total"] += sum(1 for k in gpu if r.results.get(k, ("",))[0] == "v")
        for p in first(lambda p: p.layout.scheduler.forward_queue_threshold < 100 or _burst(p) > 100):
            r = swarm.run_plan(p, faults=False)
            assert not r.violations, [str(v) for v in r.violations]
        for p in first(lambda p: p.faults.storms, 6):
            r = swarm.run_plan(p, faults=True)
            assert not r.violations, [str(v) for v in r.violations]
            seen["messages held in a storm"] += r.cluster.kernel.network.stats.get("held", 0)
    finally:
        S.LocalScheduler._forward = orig
    want = ("crash while a joiner catches up", "pause while a joiner catches up", "workers killed blocked in get",
            "GPU tasks done on a fractional total", "forwarded overloaded", "forwarded remote_inputs",
            "messages held in a storm")
    assert all(seen[k] > 0 for k in want), dict(seen)

def test_surface_the_swarm_used_to_miss_is_drawn(plans):
    """num_returns > 1 (and a second return used as an input),
    retry_exceptions (within the budget and beyond it), cancel of plain
    tasks (and with force), puts freed (never shared) and released (passed
    to tasks first), a second driver whose job ends (with an actor, with
    nested tasks), threaded and async actors, and named actors that the
    second driver gets by name."""
    seen = collections.Counter()
    for p in plans:
        w = p.workload
        returns = {k for t in w.tasks for k in t.return_keys()[1:]}
        seen["num_returns > 1"] += bool(returns)
        seen["a second return as an input"] += any(d in returns for t in w.tasks for d in t.deps)
        flaky = [t for t in w.tasks if t.model.flaky]
        seen["retry_exceptions"] += bool(flaky)
        seen["retry_exceptions beyond the budget"] += any(0 <= t.max_retries < t.model.flaky for t in flaky)
        seen["task cancels"] += any(t.cancel_at is not None for t in w.tasks)
        seen["forced task cancels"] += any(t.force_cancel for t in w.tasks)
        used = {d for t in w.tasks for d in t.deps} | {d for a in w.actors for c in a.calls for d in c.deps}
        seen["freed puts"] += any(x.free_at is not None and x.key not in used for x in w.puts)
        seen["released puts"] += any(x.free_at is not None and x.key in used for x in w.puts)
        seen["jobs that end"] += bool(w.jobs)
        seen["jobs with an actor"] += any(j.calls for j in w.jobs)
        seen["jobs with nested tasks"] += any(t.children for j in w.jobs for t in j.tasks)
        seen["threaded actors"] += any(a.max_concurrency > 1 and not a.is_async for a in w.actors)
        seen["async actors"] += any(a.is_async for a in w.actors)
        seen["async actors with cancelled calls"] += any(a.is_async and any(c.cancel_at is not None for c in a.calls)
                                                         for a in w.actors)
        seen["named actors got by name"] += any(a.name and any(c.caller for c in a.calls) for a in w.actors)
    missing = [k for k, n in seen.items() if n < 10]
    assert not missing, f"fewer than 10 of {len(SEEDS)} seeds draw: {missing} ({dict(seen)})"
    assert len(seen) == 15


def test_drivers_lose_their_node_while_they_wait(plans):
    """(client-machine) A driver loses its node, by the node's crash and by a
    cut connection, with gets and waits made before the loss and after it."""
    seen = collections.Counter()
    for p in plans:
        if not p.faults.lost_driver:
            continue
        at, _, how, requests = p.faults.lost_driver
        seen[how] += 1
        seen["before the loss"] += any(t < at for t, *_ in requests)
        seen["after the loss"] += any(t > at for t, *_ in requests)
        seen["get"] += any(k == "get" for _, k, *_ in requests)
        seen["wait"] += any(k == "wait" for _, k, *_ in requests)
        seen["with a timeout"] += any(r[4] is not None for r in requests)
    for what in ("crash", "cut", "before the loss", "after the loss", "get", "wait", "with a timeout"):
        assert seen[what] >= 10, (what, seen)


def test_group_pauses_make_the_head_repeat_prepares(plans, monkeypatch):
    """(newcomer-bugs) ``_draw_group_pauses``: a node stops as a placement
    group is made, so the head's retry sends ``PrepareBundles`` again to a
    node that has (or will have) prepared the bundle: the node must take
    the repeat as a repeat (bugs.py: prepare-not-idempotent)."""
    from penumbra.core.placement import BundleHolder

    paused = [p for p in plans if p.workload.groups
              and any(at == g.at and who == "node" for g in p.workload.groups for at, who, *_ in p.faults.pauses)]
    assert len(paused) >= 20
    repeats = 0
    orig = BundleHolder.on_prepare

    def on_prepare(self, ev, now):
        nonlocal repeats
        repeats += any((ev.pg_id, i) in self.prepared or (ev.pg_id, i) in self.committed for i, _ in ev.bundles)
        return orig(self, ev, now)

    monkeypatch.setattr(BundleHolder, "on_prepare", on_prepare)
    runs = 0
    for p in paused:
        r = swarm.run_plan(p, faults=True)
        assert not r.violations, [str(v) for v in r.violations]
        runs += 1
    assert repeats >= 2, f"only {repeats} repeated PrepareBundles in {runs} runs"


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


def test_gcs_flushing_is_drawn_and_its_rows_come_back(plans, monkeypatch):
    """(branch flushing) About a fifth of the seeds flush GCS rows to the
    modelled disk; their runs really flush, read flushed rows back, and
    bring some into memory again for a write."""
    from penumbra.core import tables

    on = [p for p in plans if p.layout.gcs_timing.flush is not None]
    assert 30 <= len(on) <= 90, len(on)
    seen = collections.Counter()
    apply = tables.Tables.apply

    def counting(self, op):
        seen["restored"] += type(op) is tables.RestoreRows and bool(op.rows)
        return apply(self, op)

    monkeypatch.setattr(tables.Tables, "apply", counting)
    for p in on:
        r = swarm.run_plan(p, faults=True)
        assert not r.violations, [str(v) for v in r.violations]
        disk = r.cluster.gcs_disk
        seen["flushed"] += disk.rows_written > 0
        seen["read back"] += disk.loads > 0
    assert seen["flushed"] >= 30 and seen["read back"] >= 5 and seen["restored"] > 0, dict(seen)

# -- swarm-placement (issue 15): replicas on nodes, head crashes ------------


def test_replicas_live_on_nodes_and_heads_crash(plans):
    """The chain spans nodes that fail independently (replicas on nodes, on
    seeds whose plans crash, cut or stop those nodes), and the head's host
    crashes and a recovered head starts, from every replica, the live ones or
    one per shard, sometimes while a replica crashes too."""
    seen = collections.Counter()
    for p in plans:
        hosts = p.layout.replica_hosts
        f = p.faults
        seen["replicas on nodes"] += bool(hosts)
        on = {int(n.split(":")[1]) for n in hosts.values()}
        seen["a node hosting replicas fails"] += bool(on & set(f.first_failures()))
        seen["a chain spans several nodes"] += any(
            len({hosts.get(r) for r in c.replicas} - {None}) > 1 for c in p.layout.chains())
        seen["a node hosts replicas of two shards"] += any(
            len({r.split(":")[1] for r, n in hosts.items() if n == node}) > 1 for node in set(hosts.values()))
        for _, down, how, replica in f.head_crashes:
            seen["head crash"] += 1
            seen[f"recovered from {how}"] += 1
            seen["head down longer than the node timeout"] += down > p.layout.node_timeout
            seen["a replica crashes while there is no head"] += bool(replica)
            seen["head crash and a node hosting replicas fails"] += bool(on & set(f.first_failures()))
    want = {"replicas on nodes": 80, "a node hosting replicas fails": 35, "a chain spans several nodes": 50,
            "a node hosts replicas of two shards": 20, "head crash": 25, "recovered from all": 5,
            "recovered from live": 5, "recovered from one": 5, "head down longer than the node timeout": 8,
            "a replica crashes while there is no head": 8, "head crash and a node hosting replicas fails": 10}
    short = {k: seen[k] for k, n in want.items() if seen[k] < n}
    assert not short, f"too few of {len(SEEDS)} seeds draw: {short} ({dict(seen)})"


def test_runs_lose_replicas_with_their_nodes_and_recover_the_head(plans):
    """What such runs go through: replicas die with their node and restart
    on its replacement; the head crashes and a recovered head takes over
    (it adopts the chains and rebuilds, ``head.recovering`` ends); none of it
    breaks a check."""
    seen = collections.Counter()
    placed = [p for p in plans if p.layout.replica_hosts and p.faults.crashes and not p.faults.head_crashes][:5]
    heads = [p for p in plans if p.faults.head_crashes][:6]
    for p in placed + heads:
        r = swarm.run_plan(p, faults=True)
        assert not r.violations, [str(v) for v in r.violations]
        c = r.cluster
        restarted = {a for _, what, a in c.events if what == "restart"}
        # (a replica that moved died with its node and restarted on the
        # node that replaced it)
        seen["replicas restarted on a replacement"] += sum(1 for r, n in c.replica_node.items()
                                                           if r in restarted and n != p.layout.replica_hosts[r])
        seen["head recoveries"] += c.head_recoveries
        seen["recoveries done"] += c.head_recoveries > 0 and c.head.recovering is None
    assert seen["replicas restarted on a replacement"] > 0, dict(seen)
    assert seen["head recoveries"] >= 5 and seen["recoveries done"] >= 5, dict(seen)
