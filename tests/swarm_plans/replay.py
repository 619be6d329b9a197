"""Replay a swarm plan saved as text (the repr Hypothesis prints for a
falsifying ``SeedPlan``): ``python tests/swarm_plans/replay.py FILE [--story]``.

The ``open-*.txt`` plans here are failures that drawn plans found and that
are not fixed yet (see the README's swarm section); nothing runs them by
default.  A fixed one should become a test or a ``bugs.REGRESSIONS`` entry.
The ``found-NAME-SEED.txt`` plans are the plans that found a regression, as
``plan_seed`` drew them then; ``tests/test_swarm.py`` replays them with the
bug planted back.
"""

import sys

import penumbra.verification.swarm as S

plan = S.plan_from_text(open(sys.argv[1]).read())
report = S.check_plan(plan)
print(f"seed {plan.seed}: {'ok' if report.ok else 'FAILED'}")
if not report.ok and "--story" in sys.argv:
    print(S.story(report)[:8000])
