"""Both drivers agree, on real processes too (issue 14).

A deterministic sample of swarm seeds runs as real Ray-API programs on a
cluster of real daemons on this machine (``penumbra.verification.realrun``),
and every value must be the one the simulator's fault-free reference run
computed:

(a) with no fault, every value, exactly;
(b) with the worker running a task SIGKILLed mid-task (a parent blocked in
    ``get`` on its child, where the seed has one), every untainted value;
(c) with a non-head node daemon SIGKILLed while a task runs on it (a node
    of its shape joins after), every untainted value;
(d) with an actor's worker SIGKILLed mid-call (a replay actor's where the
    seed has one: it restarts and replays, and its values stay exact),
    every untainted value;

and every item is ready within a bounded time (a hang is a ``liveness``
violation, not a stuck test).  The samples are the first seeds that fit
the real translation (``realrun.sample``): the default run has a few of
each, ``-m slow`` many more.
"""

from __future__ import annotations

import dataclasses

import pytest

from penumbra.core.specs import ResourceSet
from penumbra.verification import checkers as C
from penumbra.verification import realrun
from penumbra.verification.swarm import plan_seed

# (distinct seeds for each fault: more of the swarm's workloads are seen)
NONE = realrun.sample(3)
WORKER = realrun.sample(3, "worker", start=NONE[-1] + 1)
NODE = realrun.sample(3, "node", start=WORKER[-1] + 1)
ACTOR = realrun.sample(2, "actor", start=NODE[-1] + 1)
SLOW = 15
TIMEOUT = 30.0  # seconds after the schedule within which every value must be ready


def _agree(seed: int, fault: str) -> realrun.RealReport:
    r = realrun.check_real(seed, fault, timeout=TIMEOUT)
    assert r.ok, r.summary() + "".join(f"\n   {v}" for v in r.violations[:20]) + \
        f"\n   replay: penumbra verify --real --seed {seed}"
    if fault != "none":
        assert r.hit, f"the {fault} fault hit no task mid-flight: {r.landed or 'it never landed'}"
    return r


@pytest.mark.timeout(180)
@pytest.mark.parametrize("seed", NONE)
def test_no_fault_every_value_is_the_reference(seed):
    r = _agree(seed, "none")
    run = r.run
    assert run is not None and run.results
    assert not any(run.taints.values()), "a fault-free run taints nothing"
    # the comparison has teeth: one wrong value fails it
    key = next(k for k, v in sorted(run.results.items()) if v[0] == "v")
    wrong = {**run.results, key: ("v", run.results[key][1] ^ 1)}
    from penumbra.verification.swarm import run_plan

    ref = run_plan(realrun.translatable(plan_seed(seed)), faults=False, validate=False)
    assert [v.key for v in C.check_results(ref.results, wrong, run.taints)] == [key]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("seed", WORKER)
def test_a_worker_killed_mid_task_changes_no_untainted_value(seed):
    r = _agree(seed, "worker")
    assert "SIGKILL of worker" in r.landed


@pytest.mark.timeout(180)
@pytest.mark.parametrize("seed", NODE)
def test_a_node_daemon_killed_mid_run_changes_no_untainted_value(seed):
    r = _agree(seed, "node")
    assert "SIGKILL of node daemon" in r.landed


@pytest.mark.timeout(180)
@pytest.mark.parametrize("seed", ACTOR)
def test_an_actor_killed_mid_call_changes_no_untainted_value(seed):
    r = _agree(seed, "actor")
    assert "SIGKILL of the actor" in r.landed
    # a replay actor (every one the sample's first pick is) restarts with its
    # state rebuilt: its calls are untainted, each value checked exactly
    plan = plan_seed(seed)
    victim = next(a for a in plan.workload.actors if any(c.key == r.run.target for c in a.calls))
    if victim.replay:
        assert not any(r.run.taints[c.key] for c in victim.calls), r.run.taints


# Stores far smaller than the workload: outputs are evicted and rebuilt
# from lineage on real processes (the swarm's "store" taints apply).  Seed
# 23's 4 MiB outputs overflow 8 MiB stores many times over: a dozen
# re-executions a run.
SMALL = 8 << 20


@pytest.mark.timeout(180)
@pytest.mark.parametrize("fault", ["node"])
def test_small_stores_evict_and_rebuild_and_change_no_untainted_value(fault):
    r = realrun.check_real(23, fault, timeout=TIMEOUT, store=SMALL)
    assert r.ok, r.summary() + "".join(f"\n   {v}" for v in r.violations[:20])


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("fault", realrun.FAULTS)
def test_many_seeds_agree_in_small_stores(fault):
    bad = []
    for s in realrun.sample(SLOW // 3, fault, start=24, store=SMALL):
        r = realrun.check_real(s, fault, timeout=TIMEOUT, store=SMALL)
        if not r.ok:
            bad.append(r.summary() + "".join(f"\n   {v}" for v in r.violations[:5]))
    assert not bad, "\n".join(bad)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("fault", realrun.FAULTS)
def test_many_seeds_agree(fault):
    seeds = realrun.sample(SLOW, fault, start=ACTOR[-1] + 1)
    bad = []
    for s in seeds:
        r = realrun.check_real(s, fault, timeout=TIMEOUT)
        if not r.ok or (fault != "none" and not r.hit):
            bad.append(r.summary() + "".join(f"\n   {v}" for v in r.violations[:5]))
    assert not bad, "\n".join(bad)


def test_a_plan_that_does_not_fit_is_refused_with_the_reason():
    plan = plan_seed(NONE[0])
    w = plan.workload
    big = dataclasses.replace(w.tasks[0], resources=ResourceSet.of(CPU=64))
    bad = dataclasses.replace(plan, workload=dataclasses.replace(w, tasks=(big,) + w.tasks[1:]))
    assert "asks" in realrun.misfit(bad) and w.tasks[0].key in realrun.misfit(bad)
    with pytest.raises(ValueError, match="cannot run on the real runtime"):
        realrun.run_real(bad)
    with pytest.raises(ValueError, match="fault must be one of"):
        realrun.run_real(plan, "gremlins")


@pytest.mark.timeout(120)
def test_penumbra_verify_real_runs_seeds_and_says_whether_they_agree(capsys):
    from penumbra.cli import main

    assert main(["verify", "--real", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert f"seed {NONE[0]} on the real runtime (none): ok" in out
    assert "1 real runs" in out and "1 agree with the simulator, 0 do not" in out
    assert main(["verify", "--real", "--plant", "x"]) == 2


def test_a_wrong_error_is_reported_with_what_the_user_read():
    # results compare error kinds only (the simulator's reference keeps no
    # messages); the report still says what the error said
    from penumbra.core.records import ErrorKind

    [v] = C.check_results({"a0.c1": ("v", 5)}, {"a0.c1": ("e", ErrorKind.OBJECT_LOST, "")}, {})
    assert "got the error object_lost (allowed" in v.what  # (no dangling ": ")
    said = realrun._with_message(v, "object 1234r1, returned by a method of actor A, was lost: evicted\n  detail")
    assert said.what.endswith("; the error said: object 1234r1, returned by a method of actor A, was lost: evicted")
    assert said.key == v.key and realrun._with_message(v, "") == v
