"""Proof that the swarm has teeth: which seed finds each planted bug.

``find`` plants one bug of ``bugs.BUGS`` and runs swarm seeds until one
fails (the recorded seed first, if given: after a change to the workload or
the schedules it may no longer fail, and the search then goes on through the
whole budget).  ``report`` prints the findings as a table: the bug, what it
is, the seed that found it and the checkers that caught it.

::

    penumbra verify --bugs                                # every bug, recorded seed first
    python -m penumbra.verification.teeth --markdown     # the README's table
    python -m penumbra.verification.teeth NAME ... [--seeds N] [--no-hint] [--want CHECKER]

A checker is named by the ``Violation.checker`` kind it reports
(``checkers``): ``results``, ``liveness``, ``resources``, ``actor-order``, ``placement``,
``gcs``, ``pubsub``, ``waits``, ``returns``, ``retries``, ``freed``, ``job-end``, ``names``, ``lost-driver``, the quiet-cluster checks ``pins``, ``executions``,
``killed-actor`` and ``tables``, ``derived`` (values derivable from the run), and the swarm's own ``invariant`` (a machine's
``validate()``), ``crash`` (the system raised), ``harness`` (the swarm's own
code raised), ``timeliness`` and ``actor-restarts``.  A
checker that fired only on the fault-free reference run is shown as ``KIND
(fault-free run)`` (a bare ``reference`` if that run is no longer at hand).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from collections.abc import Iterable, Sequence

from . import swarm
from .bugs import BUGS, Bug, bug_named, planted

__all__ = ["Finding", "DEFAULT_BUDGET", "find", "find_all", "kinds_of", "report", "main"]

DEFAULT_BUDGET = 300  # the default seeds of tests/test_swarm.py


@dataclass
class Finding:
    bug: Bug
    seed: int | None  # the seed that found it (None: none of the budget did)
    kinds: tuple[str, ...] = ()  # the checkers that caught it, at that seed
    wall: float = 0.0  # seconds spent searching
    tried: int = 0  # seeds run
    want: str | None = None  # only failures with this checker's violations counted

    @property
    def found(self) -> bool:
        return self.seed is not None

    @property
    def stale(self) -> bool:
        """Found, but not by the seed ``bugs.py`` records for it."""
        return self.seed is not None and self.seed != self.bug.seed

    def note(self) -> str:
        """What a developer should do about this finding ('' if nothing)."""
        b = self.bug
        if self.seed is None:
            if self.want:
                return f"{b.name}: no seed of {self.tried} failed with a {self.want!r} violation"
            return (f"{b.name}: no seed of {self.tried} found it"
                    + (f" (not even the recorded seed {b.seed})" if b.seed is not None else ""))
        if b.seed is None:
            return f"{b.name}: found by seed {self.seed}; bugs.py records no seed: add seed={self.seed}"
        if self.seed != b.seed:
            return (f"{b.name}: the recorded seed {b.seed} no longer finds it, seed {self.seed} does: "
                    f"update seed={b.seed} to seed={self.seed} in penumbra/verification/bugs.py")
        return ""


def kinds_of(report: swarm.SeedReport) -> tuple[str, ...]:
    """The checkers behind a report's violations.  A checker that fired only
    on the fault-free reference run is marked ``(fault-free run)``."""
    kinds = {v.checker for v in report.violations if v.checker != "reference"}
    if any(v.checker == "reference" for v in report.violations):
        ref = report.reference
        if ref is not None and ref is not report.run and ref.violations:
            kinds |= {v.checker if v.checker in kinds else f"{v.checker} (fault-free run)" for v in ref.violations}
        else:
            kinds.add("reference")
    return tuple(sorted(kinds))


def _order(seeds: Sequence[int], hint: int | None) -> list[int]:
    seeds = list(seeds)
    if hint is None or hint not in seeds:
        return seeds  # (a hint outside the budget would prove nothing about it)
    return [hint] + [s for s in seeds if s != hint]


def find(bug: Bug, seeds: Iterable[int] = range(DEFAULT_BUDGET), hint: int | None = None, *,
         want: str | None = None, validate: bool = True) -> Finding:
    """The first of ``seeds`` (``hint`` first, if it is one of them) that
    fails with ``bug`` planted.  ``want``: only a failure with a violation
    of that checker kind counts (to show a given checker catches it)."""
    t0 = time.perf_counter()
    tried = 0
    with planted(bug):
        for s in _order(list(seeds), hint):
            r = swarm.check_seed(s, validate=validate)
            tried += 1
            if r.ok:
                continue
            kinds = kinds_of(r)
            if want is not None and not any(k.split(" ")[0] == want for k in kinds):
                continue
            return Finding(bug, s, kinds, time.perf_counter() - t0, tried, want)
    return Finding(bug, None, (), time.perf_counter() - t0, tried, want)


def find_all(bugs: Iterable[Bug] = BUGS, seeds: Iterable[int] = range(DEFAULT_BUDGET), *, hints: bool = True,
             want: str | None = None, progress: bool = False) -> list[Finding]:
    """``find`` for each bug, its recorded seed first (unless ``hints=False``)."""
    out = []
    seeds = list(seeds)
    for b in bugs:
        f = find(b, seeds, hint=b.seed if hints else None, want=want)
        out.append(f)
        if progress:
            where = f"seed {f.seed}" if f.found else "NOT FOUND"
            print(f"  {b.name}: {where} ({f.tried} seed(s), {f.wall:.1f}s)", file=sys.stderr, flush=True)
    return out


def report(findings: Sequence[Finding], *, markdown: bool = False) -> str:
    """A table: bug, what it is, the seed that found it, the checkers that
    caught it (then what to update, where a recorded seed is stale)."""

    def caught(f: Finding, fmt=str) -> str:
        return ", ".join(fmt(k) for k in f.kinds) if f.found else f"not found in {f.tried} seeds"

    if markdown:
        lines = ["| bug | what it is | seed | caught by |", "|---|---|---|---|"]
        for f in findings:
            seed = "-" if f.seed is None else f.seed
            lines.append(f"| `{f.bug.name}` | {f.bug.description} | {seed} | {caught(f, lambda k: f'`{k}`')} |")
        return "\n".join(lines)
    rows = [(f.bug.name, f.bug.description, "-" if f.seed is None else str(f.seed), caught(f)) for f in findings]
    head = ("BUG", "SEED", "CAUGHT BY", "WHAT IT IS")
    w0 = max([len(head[0])] + [len(r[0]) for r in rows])
    w1 = max([len(head[1])] + [len(r[2]) for r in rows])
    w2 = max([len(head[2])] + [len(r[3]) for r in rows])
    lines = [f"{head[0]:<{w0}}  {head[1]:>{w1}}  {head[2]:<{w2}}  {head[3]}"]
    for name, what, seed, kinds in rows:
        lines.append(f"{name:<{w0}}  {seed:>{w1}}  {kinds:<{w2}}  {what}")
    found = sum(1 for f in findings if f.found)
    lines.append(f"{found} of {len(findings)} planted bugs found")
    notes = [f.note() for f in findings if f.note()]
    if notes:
        lines.append("")
        lines += [f"note: {n}" for n in notes]
    if found:
        ex = next(f for f in findings if f.found)
        lines.append("")
        lines.append(f"replay one: penumbra verify --plant {ex.bug.name} --seed {ex.seed} [--shrink]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m penumbra.verification.teeth",
                                description="find the seed that catches each planted bug")
    p.add_argument("names", nargs="*", help="bugs to look for (default: every bug in bugs.BUGS)")
    p.add_argument("--seeds", type=int, default=DEFAULT_BUDGET, help=f"the budget: seeds 0..N-1 (default {DEFAULT_BUDGET})")
    p.add_argument("--no-hint", action="store_true", help="ignore the recorded seeds (find each bug's first seed)")
    p.add_argument("--want", help="count only failures with a violation of this checker kind (e.g. actor-order)")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown (for README.md)")
    args = p.parse_args(argv)
    try:
        bugs = [bug_named(n) for n in args.names] if args.names else list(BUGS)
    except KeyError as e:
        print(e.args[0], file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    findings = find_all(bugs, range(args.seeds), hints=not args.no_hint, want=args.want, progress=True)
    print(f"{len(bugs)} bug(s) in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    print(report(findings, markdown=args.markdown))
    if args.markdown:
        for f in findings:
            if f.note():
                print(f"note: {f.note()}", file=sys.stderr)
    return 0 if all(f.found for f in findings) else 1


if __name__ == "__main__":
    sys.exit(main())
