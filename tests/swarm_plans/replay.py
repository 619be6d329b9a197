"""Replay a swarm plan saved as text (the repr Hypothesis prints for a
falsifying ``SeedPlan``): ``python tests/swarm_plans/replay.py FILE [--story]``.

The ``open-*.txt`` plans here are failures that drawn plans found and that
are not fixed yet (see the README's swarm section); nothing runs them by
default.  A fixed one should become a test or a ``bugs.REGRESSIONS`` entry.
"""

import sys

import penumbra.core.gcs as G
import penumbra.core.layout as L
import penumbra.core.scheduler as Sc
import penumbra.core.specs as Sp
import penumbra.sim.faults as F
import penumbra.verification.strategies as St
import penumbra.verification.swarm as S
import penumbra.verification.workload as W

txt = open(sys.argv[1]).read()
start = txt.index("SeedPlan(")
depth = 0
for end in range(start, len(txt)):  # the plan's repr: up to its matching parenthesis
    depth += {"(": 1, ")": -1}.get(txt[end], 0)
    if depth == 0 and txt[end] == ")":
        break
ns: dict = {}
for m in (W, S, St, L, Sp, Sc, G, F):
    ns.update({k: v for k, v in vars(m).items() if not k.startswith("_")})
ns["ResourceSet"] = lambda **kw: Sp.ResourceSet.of(**kw)
plan = eval(txt[start:end + 1], ns)
report = S.check_plan(plan)
print(f"seed {plan.seed}: {'ok' if report.ok else 'FAILED'}")
if not report.ok and "--story" in sys.argv:
    print(S.story(report)[:8000])
