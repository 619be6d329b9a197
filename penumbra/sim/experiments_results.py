"""What every experiment of ``experiments`` returns and the tools the figures share.

``ExperimentResult`` (a table, named checks, plot series, trace hashes),
``Progress`` (an experiment's progress bar), running a cluster in chunks
(``_run_with_progress``), ``linear_fit``, ``node_task_rate`` (how fast one
node's scheduler goes under a cost model, to size windows) and the cost
presets.  Apart from the figures so that each figure's module imports these
and nothing of the others.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .cluster import SimCluster
from .costs import LOCAL, PAPER, CostModel

__all__ = [
    "ExperimentResult",
    "Progress",
    "linear_fit",
    "node_task_rate",
    "preset_costs",
]


GB = 1e9
MB = 1e6
KB = 1e3


# ===========================================================================
# results, progress


@dataclass
class ExperimentResult:
    """What an experiment found: a table, checks, plot series, hashes."""

    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    hashes: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    size: str = "quick"
    preset: str = "paper"
    seed: int = 0

    @property
    def passed(self) -> bool:
        return all(self.checks.values())

    def trace_hash(self) -> str:
        """One hash over every simulation of the experiment."""
        import hashlib

        h = hashlib.blake2b(digest_size=16)
        for x in self.hashes:
            h.update(x.encode())
        return h.hexdigest()

    def table(self) -> str:
        cells = [[_fmt(v) for v in r] for r in self.rows]
        widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(self.columns)]
        line = "  ".join(c.rjust(w) for c, w in zip(self.columns, widths))
        out = [line, "  ".join("-" * w for w in widths)]
        out += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
        return "\n".join(out)

    def report(self) -> str:
        lines = [f"== {self.name}: {self.title} (size={self.size}, preset={self.preset}, seed={self.seed}) ==",
                 self.table(), ""]
        for k, v in self.summary.items():
            lines.append(f"{k}: {_fmt(v)}")
        for k, ok in self.checks.items():
            lines.append(f"check {'PASS' if ok else 'FAIL'}: {k}")
        lines.append(f"wall time: {self.wall_seconds:.1f} s")
        lines.append(f"trace hash: {self.trace_hash()}")
        return "\n".join(lines)

    def write_csv(self, path: str) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.columns)
            for r in self.rows:
                w.writerow(r)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != v:
            return "-"
        a = abs(v)
        if a >= 1e5:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.1f}"
        if a >= 1 or a == 0:
            return f"{v:.3f}"
        return f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


class Progress:
    """An experiment's progress on stderr: ``update(done, note)``, ``close()``.

    ``done`` is in the experiment's own units, fractions allowed (simulated
    seconds, node-points of Figure 8b); it is shown through the project's
    ``penumbra._progress.Progress`` (a tqdm bar on a terminal, a plain line
    per tenth of the run in a log), counted in ``unit`` when given (whole
    units) or in percent.  Silent with ``enabled=False`` or when
    ``PENUMBRA_NO_PROGRESS`` is set.
    """

    def __init__(self, total: float, label: str, enabled: bool = True, stream=None, unit: str | None = None,
                 tty: bool | None = None) -> None:
        from penumbra._progress import Progress as _Bar

        self.total = max(total, 1e-12)
        self.label = label
        self.done = 0.0
        self._units = max(1, round(total)) if unit else 100
        self._bar = _Bar(self._units, label, unit or "%", stream=stream, tty=tty) if enabled else None

    def update(self, done: float, note: str = "") -> None:
        self.done = done
        bar = self._bar
        if bar is None:
            return
        units = min(self._units, int(done / self.total * self._units))
        if units > bar.done:
            if note:
                bar.update(units - bar.done, now=note)
            else:
                bar.update(units - bar.done)
        elif note and bar.notes.get("now") != note:
            bar.notes["now"] = note

    def advance(self, by: float = 1.0, note: str = "") -> None:
        self.update(self.done + by, note)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _run_with_progress(c: SimCluster, until: float, prog: Progress | None, base: float = 0.0,
                       chunks: int = 20, stop: Callable[[], bool] | None = None,
                       after: Callable[[], Any] | None = None) -> bool:
    """Run ``c`` to ``until`` in chunks, updating ``prog`` by simulated time
    (``base`` + elapsed) and calling ``after()`` after each chunk; returns
    early (True) when ``stop()`` holds."""
    start = c.now
    span = until - start
    if span <= 0:
        return bool(stop and stop())
    step = span / chunks
    for i in range(1, chunks + 1):
        t = start + step * i if i < chunks else until
        if stop is not None:
            if c.run_until(stop, t - c.now):
                if prog:
                    prog.update(base + (c.now - start))
                return True
        else:
            c.run(t)
        if prog:
            prog.update(base + (c.now - start))
        if after is not None:
            after()
    return bool(stop and stop())


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares ``y = a + b x``: returns (a, b, R^2)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    b = sxy / sxx if sxx else 0.0
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    r2 = 1 - ss_res / ss_tot if ss_tot else 1.0
    return a, b, r2


def node_task_rate(costs: CostModel) -> float:
    """Empty tasks per second one node's scheduler sustains under ``costs``
    (the estimate used to size windows: 4 events, 4 commands, one scheduling
    surcharge per task)."""
    per = (costs.handling_cost("node", "SubmitTask") + costs.handling_cost("node", "TaskFinished")
           + 2 * costs.handling_cost("node", "GcsReply") + 4 * costs.per_command)
    return 1.0 / per if per > 0 else 1e6


def preset_costs(preset: str) -> CostModel:
    if preset == "paper":
        return PAPER
    if preset == "local":
        return LOCAL
    raise ValueError(f"unknown preset {preset!r}: use 'paper' or 'local'")
