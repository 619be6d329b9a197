"""The rejoin backoff policy (transports/rejoin_backoff.py): pure, so driven exactly."""

from __future__ import annotations

import math
import random

import pytest

from penumbra.transports.rejoin_backoff import RejoinBackoff


def _streak(b: RejoinBackoff, n: int, life: float = 0.1, start: float = 0.0):
    """``n`` incarnations that each live ``life`` s, rejoining after each delay."""
    now, plans = start, []
    for _ in range(n):
        b.joined(now)
        now += life
        plan = b.ended(now)
        plans.append(plan)
        now += plan.delay
    return plans, now


def test_quick_ends_double_the_wait_up_to_the_cap_jittered_to_half():
    b = RejoinBackoff(rng=random.Random(1))
    plans, _ = _streak(b, 12)
    for n, p in enumerate(plans, 1):
        step = min(30.0, 0.5 * 2 ** (n - 1))
        assert step / 2 <= p.delay <= step, (n, p.delay)
        assert p.quick == n
    assert max(p.delay for p in plans) <= 30.0
    assert plans[-1].delay >= 15.0  # (at the cap, no less than half of it)


def test_a_long_life_resets_the_streak_and_rejoins_at_once():
    b = RejoinBackoff(rng=random.Random(2))
    _, now = _streak(b, 5)
    b.joined(now)
    p = b.ended(now + 10.0)  # lived stable_after: healthy
    assert p.delay == 0.0 and p.quick == 0 and not p.warn
    b.joined(now + 11.0)
    p = b.ended(now + 11.2)
    assert p.quick == 1 and p.warn and 0.25 <= p.delay <= 0.5  # a new streak starts from the base


def test_a_first_end_without_a_join_is_not_quick():
    p = RejoinBackoff(rng=random.Random(3)).ended(5.0)
    assert p.delay == 0.0 and p.lived == math.inf


def test_the_streak_is_logged_once_then_every_report_every_seconds():
    b = RejoinBackoff(rng=random.Random(4), cap=2.0, report_every=60.0)
    plans, now = _streak(b, 200)  # ~200 * (0.1 + 1..2) s: several minutes
    warned = [p for p in plans if p.warn]
    assert plans[0].warn and not plans[1].warn
    minutes = now / 60.0
    assert len(warned) <= minutes + 2, (len(warned), minutes)
    assert len(warned) >= 2  # (still said while it lasts, with the count)
    assert [p.quick for p in warned] == sorted(p.quick for p in warned)


def test_jitter_comes_from_the_rng_given():
    a, _ = _streak(RejoinBackoff(rng=random.Random(7)), 6)
    b, _ = _streak(RejoinBackoff(rng=random.Random(7)), 6)
    c, _ = _streak(RejoinBackoff(rng=random.Random(8)), 6)
    assert [p.delay for p in a] == [p.delay for p in b]
    assert [p.delay for p in a] != [p.delay for p in c]


@pytest.mark.parametrize("kw", [dict(base=0), dict(base=5, cap=1), dict(stable_after=0), dict(report_every=-1)])
def test_bad_settings_are_refused_with_what_was_given(kw):
    with pytest.raises(ValueError, match="RejoinBackoff"):
        RejoinBackoff(**kw)
