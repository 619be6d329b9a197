"""The verification swarm: seeded fault-injection runs, and proof it has teeth.

The default run checks 300 seeds (6 chunks of 50).  ``-m slow`` runs
thousands (``penumbra verify --seeds N`` does the same from the command line).
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
from hypothesis import HealthCheck, given, settings

from penumbra.verification import swarm, teeth
from penumbra.verification.bugs import BUGS, MASKED, REGRESSIONS, bug_named, planted
from penumbra.verification.strategies import seed_plans

pytestmark = pytest.mark.timeout(900)

DEFAULT_SEEDS = 300
CHUNK = 50


def _report(bad) -> str:
    lines = []
    for r in bad[:5]:
        lines.append(r.summary())
        lines += [f"    {v}" for v in r.violations[:5]]
        lines.append(f"    replay: penumbra verify --seed {r.seed}")
    return "\n".join(lines)


@pytest.mark.parametrize("start", range(0, DEFAULT_SEEDS, CHUNK))
def test_swarm_default_seeds(start):
    reports = swarm.run_swarm(range(start, start + CHUNK))
    bad = [r for r in reports if not r.ok]
    assert not bad, "the swarm found violations:\n" + _report(bad)


@pytest.mark.slow
@pytest.mark.timeout(6 * 3600)
def test_swarm_thousands_of_seeds():
    reports = swarm.run_swarm(range(DEFAULT_SEEDS, 3000), progress=True)
    bad = [r for r in reports if not r.ok]
    assert not bad, "the swarm found violations:\n" + _report(bad)


def test_same_seed_same_trace_and_results():
    a = swarm.check_seed(7)
    b = swarm.check_seed(7)
    assert a.trace_hash and a.trace_hash == b.trace_hash
    assert a.run.results == b.run.results
    c = swarm.check_seed(8)
    assert c.trace_hash != a.trace_hash


# Each planted bug records the seed that found it (``Bug.seed``, a hint: the
# search starts there and goes round the whole default budget if the hint no
# longer finds it, e.g. after a change that alters schedules).
# ``penumbra verify --bugs`` prints the table; ``python -m
# penumbra.verification.teeth --markdown`` the README's.


@pytest.mark.parametrize("bug", BUGS, ids=[b.name for b in BUGS])
def test_swarm_finds_planted_bug(bug):
    """Each bug is a small change to core/; the swarm must catch it within
    the default seed budget (and the clean code passes those seeds: see
    test_swarm_default_seeds)."""
    assert len(BUGS) >= 10
    f = teeth.find(bug, range(DEFAULT_SEEDS), hint=bug.seed)
    assert f.found, (f"the swarm did not find the planted bug {bug.name!r} in {DEFAULT_SEEDS} seeds "
                     f"(its recorded seed was {bug.seed})")
    assert f.seed < DEFAULT_SEEDS
    if f.stale:
        # not a failure: the whole budget was searched, and a seed found it
        msg = f.note() + " (python -m penumbra.verification.teeth --markdown regenerates the README table)"
        print(msg)
        warnings.warn(msg)


@pytest.mark.parametrize("name,checker", [("replay-newest-first", "actor-order"),
                                          ("replayed-call-runs-again", "actor-order"),
                                          ("fetching-waiter-told-early", "waits"),
                                          ("watch-ignores-need", "waits"),
                                          ("bundle-index-ignored", "placement")])
def test_planted_bugs_fail_their_own_checker(name, checker):
    """Bugs that a particular checker catches: the per-caller actor order
    checker (out of order, and twice on one instance) and the wait checker
    (ready before the bytes are there) -- not only through the values they
    change."""
    bug = bug_named(name)
    f = teeth.find(bug, range(DEFAULT_SEEDS), hint=bug.seed, want=checker)
    assert f.found, f"no seed of {DEFAULT_SEEDS} failed the {checker!r} checker with {name!r} planted"
    assert any(k.split(" ")[0] == checker for k in f.kinds)
    with planted(bug):  # the story tells what happened to the calls / refs concerned
        assert "story of" in swarm.story(swarm.check_seed(f.seed))


@pytest.mark.slow
@pytest.mark.parametrize("bug", MASKED, ids=[b.name for b in MASKED])
def test_masked_bugs_are_harmless(bug):
    """The changes bugs.MASKED lists look like bugs, but the design makes
    them harmless (see there): planted, the default seeds still all pass."""
    with planted(bug):
        bad = [r for r in swarm.run_swarm(range(DEFAULT_SEEDS)) if not r.ok]
    assert not bad, "a 'harmless' change fails:\n" + _report(bad)


@pytest.mark.parametrize("bug", REGRESSIONS, ids=[b.name for b in REGRESSIONS])
def test_bugs_the_swarm_found_stay_found(bug):
    """A bug the swarm found in core/ (in a long run), planted back as it
    was: its seed fails again, and passes with the fix."""
    with planted(bug):
        assert not swarm.check_seed(bug.seed).ok, f"seed {bug.seed} no longer finds {bug.name!r}"
    assert swarm.check_seed(bug.seed).ok


def test_a_failing_seed_tells_its_story_and_shrinks():
    bug = bug_named("dead-node-tasks-lost")
    with planted(bug):
        r = swarm.check_seed(bug.seed)
        assert not r.ok
        again = swarm.check_seed(bug.seed)
        assert again.trace_hash and again.trace_hash == r.trace_hash  # replays exactly
        text = swarm.story(r)
        assert "story of" in text and "submitted" in text
        small = swarm.shrink(bug.seed, max_examples=25)
        assert 0 < len(small.items()) < len(r.plan.faults.items())
        assert not swarm.check_seed(bug.seed, plan=dataclasses.replace(r.plan, faults=small), validate=False).ok


def test_a_broken_invariant_replays_tells_its_story_and_shrinks():
    """A bug only validate() sees, under faults: the report keeps the trace
    hash up to the failure, the story names the event and the task it is
    about, and shrinking (which must validate every step to see it) keeps
    the fault it needs."""
    bug = bug_named("no-release-on-crash")
    with planted(bug):
        r = swarm.check_seed(bug.seed, recent=10)
        assert teeth.kinds_of(r) == ("invariant",)
        plain = swarm.check_seed(bug.seed)
        assert r.trace_hash and plain.trace_hash == r.trace_hash  # keeping lines does not change the hash
        text = swarm.story(r)
        assert "the invariant broke after" in text and "story of" in text
        assert "invariant broken" in text  # the node's last trace lines end with it
        small = swarm.shrink(bug.seed, max_examples=10)
        assert 0 < len(small.items()) < len(r.plan.faults.items())
        assert not swarm.check_seed(bug.seed, plan=dataclasses.replace(r.plan, faults=small)).ok
    assert swarm.check_seed(bug.seed).ok  # unplanted, the same seed passes
    # one that breaks in the fault-free run is labelled so
    bug = bug_named("gpu-fraction-overcommit")
    with planted(bug):
        r = swarm.check_seed(bug.seed)
        assert teeth.kinds_of(r) == ("invariant (fault-free run)",)
        assert "GPUs [" in swarm.story(r)


@given(seed_plans())
@settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_strategy_drawn_plans_hold_the_invariants(plan):
    report = swarm.check_plan(plan)
    assert report.ok, _report([report])
