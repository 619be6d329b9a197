"""The swarm: seeded fault-injection runs of the simulator, checked.

Theory of operation
-------------------
A *seed* determines everything about a run (FoundationDB's simulation
testing, TigerBeetle's VOPR): the cluster's shape (nodes, CPUs, custom
resources, GCS shards and chain length, store capacity), the workload
(``workload.generate``) and the fault mix.  A run has two phases:

* **safety**: the workload is submitted over ``horizon`` seconds while
  faults happen: nodes crash (and a node of the same shape joins later),
  GCS replicas crash and rejoin, a node is cut off (and fenced if the head
  declares it dead), GCS-bound messages are dropped or duplicated, every
  message may be delayed (so they reorder), a node runs slow, workers die
  in the middle of tasks; and timing faults: the head, a node or the
  driver stands still for a while (a stop-the-world pause, as under SIGSTOP:
  what is sent to it queues, its timers fire late, after resume, in either
  order, see ``SimKernel.pause``), a node's messages to the head (its
  heartbeats) come late in a burst; a second GCS replica fault inside a
  rejoin's catch-up window; workers that die blocked in ``get``; heartbeat
  storms (every node's messages to the head stall, then burst, alone or
  around a pause of the head); the head's host crashes and a recovered head
  takes over (``_draw_head_crash``); and, in the layout and workload,
  fractional GPU totals, work past the spillback thresholds, and GCS
  replicas living on nodes that fail independently (``_draw_placement``);
* **liveness**: every fault is lifted, and the cluster must finish the work.

The same seed then runs with no faults at all: the *reference*.  The
checkers (``checkers``) compare the two and inspect the cluster.  Every
machine's ``validate()`` runs after every event of both runs.

A failing seed replays exactly (same trace hash); ``story`` prints what the
machines recorded about the items concerned, and ``shrink`` (Hypothesis)
looks for the smallest subset of the fault schedule that still fails.

Fault model (what the protocol is built to tolerate): crash-stop nodes and
replicas; partitions (a node cut off longer than the heartbeat timeout is
declared dead and fenced); message loss and duplication on GCS traffic
(clients retry, replicas deduplicate); delay and reordering everywhere;
pauses of any process (a paused head declares nobody dead for its own
pause; a node paused longer than the timeout is declared dead and fenced,
like a cut one).
Other links behave like TCP connections: they may stall, not silently drop.

Where it lives
--------------
This module checks seeds (``check_seed``, ``run_swarm``, ``shrink``, the
``penumbra verify`` command) and re-exports the rest, so that
``from penumbra.verification import swarm`` reaches every part:
``plans`` (``SeedPlan``, ``FaultPlan``, ``plan_seed`` and its draws),
``runner`` (``run_plan``: one run on the simulator, checked),
``injection`` (a plan's faults installed on the simulated cluster),
``surface`` (cancels, frees, jobs, get-by-name), ``taints`` (what a fault
may change), ``reports`` (``RunResult``, ``SeedReport``, ``story``).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

from .._progress import Progress
from ..sim.trace import Trace
from . import checkers as C
from .plans import (HEAD_CRASH_RATE, LONG_PAUSE, REMOTE_PUT_RECORDED_IN, FaultPlan, SeedPlan,
                    _keep_remote_puts_recorded, plan_seed, seen_cuts, unstacked_silences)
from .reports import RunResult, SeedReport, story
from .runner import PUT_PAUSE, PUT_TRIES, REFERENCE_SLACK, REPORT_SLACK, run_plan
from .taints import _taints

__all__ = ["SeedPlan", "FaultPlan", "RunResult", "SeedReport", "plan_seed", "run_plan", "check_seed", "check_plan",
           "run_swarm", "run_swarm_cli", "story", "shrink", "plan_from_text",
           # re-exported for the tests and tools that reach them here
           "seen_cuts", "unstacked_silences", "LONG_PAUSE", "REFERENCE_SLACK", "REMOTE_PUT_RECORDED_IN",
           "HEAD_CRASH_RATE", "PUT_TRIES", "PUT_PAUSE", "REPORT_SLACK", "_keep_remote_puts_recorded", "_taints"]


def check_seed(seed: int, *, plan: SeedPlan | None = None, validate: bool = True, recent: int = 0) -> SeedReport:
    """Run ``seed`` with its faults and without, and compare.

    ``recent``: keep each address's last ``recent`` trace lines (``story``
    prints them when an invariant broke); the trace hash is the same."""
    plan = plan or plan_seed(seed)
    t0 = time.perf_counter()

    def trace() -> Any:
        return Trace(fields="key", per_address=recent) if recent else "key"

    ref = run_plan(plan, faults=False, validate=validate, trace=trace())
    from_ref = [C.Violation("reference", f"(fault-free run) {v.what}", v.key) for v in ref.violations]
    if _stopped(ref):
        # the fault-free run itself broke an invariant: report that run
        return SeedReport(seed, False, from_ref, ref.trace_hash, time.perf_counter() - t0, plan, None, ref)
    run = run_plan(plan, faults=True, validate=validate, trace=trace()) if plan.faults.items() else ref
    violations = list(run.violations)
    if ref is not run:
        violations += from_ref
    if not _stopped(run):
        violations += C.check_results(ref.results, run.results, run.taints)
    return SeedReport(seed, not violations, violations, run.trace_hash, time.perf_counter() - t0, plan, run, ref)


def _stopped(run: RunResult) -> bool:
    """Did ``run`` stop early (an invariant broke, or a machine raised)?"""
    return any(v.checker in ("invariant", "crash", "harness") for v in run.violations)


def check_plan(plan: SeedPlan, validate: bool = True) -> SeedReport:
    """``check_seed`` for a plan built by hand or by a Hypothesis strategy."""
    return check_seed(plan.seed, plan=plan, validate=validate)


def plan_from_text(text: str) -> SeedPlan:
    """The ``SeedPlan`` whose ``repr`` is in ``text`` (as Hypothesis prints
    a falsifying plan, or as ``repr(plan_seed(s))`` saved it).  A plan saved
    this way keeps replaying the same run when later draws change what
    ``plan_seed`` makes of its seed: the regression tests keep the plans
    that found their bugs (``tests/swarm_plans/``)."""
    from ..core import gcs as G
    from ..core import layout as L
    from ..core import scheduler as Sc
    from ..core import specs as Sp
    from ..sim import faults as F
    from . import strategies as St
    from . import workload as W

    start = text.index("SeedPlan(")
    depth = 0
    for end in range(start, len(text)):  # up to its matching parenthesis
        depth += {"(": 1, ")": -1}.get(text[end], 0)
        if depth == 0 and text[end] == ")":
            break
    ns: dict = {}
    for m in (W, sys.modules[__name__], St, L, Sp, Sc, G, F):
        ns.update({k: v for k, v in vars(m).items() if not k.startswith("_")})
    ns["ResourceSet"] = lambda **kw: Sp.ResourceSet.of(**kw)
    return eval(text[start:end + 1], ns)  # noqa: S307 -- our own saved plans, never input from elsewhere


def run_swarm(seeds, *, stop_on_failure: bool = False, progress: bool = False, validate: bool = True) -> list[SeedReport]:
    """Check each seed in turn.  ``progress``: seeds done and failing so
    far on stderr (a bar on a terminal, a line per tenth of the run in a
    log; see ``penumbra._progress``)."""
    reports = []
    seeds = list(seeds)
    bar = Progress(len(seeds), "verify", "seeds") if progress and seeds else None
    bad = 0
    try:
        for s in seeds:
            r = check_seed(s, validate=validate)
            if r.ok:
                r.run = r.reference = None  # keep memory flat
            else:
                bad += 1
            reports.append(r)
            if bar is not None:
                bar.update(1, failing=bad)
            if stop_on_failure and not r.ok:
                break
    finally:
        if bar is not None:
            bar.close()
    return reports


def shrink(seed: int, max_examples: int = 60, plan: SeedPlan | None = None) -> FaultPlan:
    """The smallest subset of ``seed``'s faults that still fails (Hypothesis).

    Raises ``ValueError`` if the seed does not fail at all."""
    from hypothesis import HealthCheck, find, settings
    from hypothesis.errors import NoSuchExample
    from hypothesis import strategies as st

    plan = plan or plan_seed(seed)
    items = plan.faults.items()
    # Validating every step is slow; it is needed only when that is how the
    # seed fails (a broken invariant shows nowhere else).
    first = check_seed(seed, plan=plan, validate=False)
    validate = first.ok
    if validate and check_seed(seed, plan=plan, validate=True).ok:
        raise ValueError(f"seed {seed} does not fail: there is nothing to shrink")

    def fails(mask) -> bool:
        sub = FaultPlan.from_items([it for it, keep in zip(items, mask) if keep])
        return not check_seed(seed, plan=dataclasses.replace(plan, faults=sub), validate=validate).ok

    try:
        mask = find(st.lists(st.booleans(), min_size=len(items), max_size=len(items)), fails,
                    settings=settings(max_examples=max_examples, database=None, deadline=None,
                                      suppress_health_check=list(HealthCheck)))
    except NoSuchExample:
        return plan.faults  # no smaller schedule found in the budget: the whole one fails
    return FaultPlan.from_items([it for it, keep in zip(items, mask) if keep])


def run_swarm_cli(args) -> int:
    if args.seed is not None:
        r = check_seed(args.seed, recent=25)
        print(r.summary())
        print(story(r))
        if getattr(args, "shrink", False):
            if r.ok:
                print("the seed passes: nothing to shrink")
                return 0
            small = shrink(args.seed, plan=r.plan)
            print(f"shrunk fault schedule ({len(small.items())} of {len(r.plan.faults.items())} faults): {small.describe()}")
            again = check_seed(args.seed, plan=dataclasses.replace(r.plan, faults=small))
            print(f"with only those: {again.summary()}")
            for v in again.violations[:5]:
                print(f"   {v}")
        return 0 if r.ok else 1
    t0 = time.perf_counter()
    plant = f" --plant {args.plant}" if getattr(args, "plant", None) else ""
    reports = run_swarm(range(args.seeds), progress=True)
    bad = [r for r in reports if not r.ok]
    print(f"{len(reports)} seeds in {time.perf_counter() - t0:.1f}s: {len(reports) - len(bad)} ok, {len(bad)} failing")
    for r in bad[:10]:
        print(r.summary())
        for v in r.violations[:5]:
            print(f"   {v}")
        print(f"   replay: penumbra verify --seed {r.seed}{plant}")
    return 0 if not bad else 1
