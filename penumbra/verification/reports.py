"""What a swarm run and a checked seed give back, and the story of a failure.

``RunResult`` is one run of a plan (with or without its faults): the values
it delivered, the violations found, its trace hash, and the live cluster
(for ``story``).  ``SeedReport`` is a seed checked both ways (``swarm.
check_seed``).  ``story`` prints, for a failing seed, what the machines
recorded about the items its violations name, or about the event after
which an invariant broke.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.ids import ObjectId, TaskId
from ..core.msg_base import field_names
from . import checkers as C
from .plans import SeedPlan

__all__ = ["RunResult", "SeedReport", "story"]


@dataclass
class RunResult:
    seed: int
    faulty: bool
    results: dict[str, tuple] = field(default_factory=dict)
    expected: set[str] = field(default_factory=set)
    violations: list[C.Violation] = field(default_factory=list)
    trace_hash: str = ""
    virtual_time: float = 0.0
    done_at: float = 0.0  # when the last result came (virtual seconds)
    wall: float = 0.0
    cluster: Any = None
    keys: dict[str, ObjectId] = field(default_factory=dict)
    taints: dict[str, set[str]] = field(default_factory=dict)
    executor: Any = None
    waits: dict[str, C.WaitOutcome] = field(default_factory=dict)
    broken_by: tuple | None = None  # (address, time, event, commands) after which validate() failed


@dataclass
class SeedReport:
    seed: int
    ok: bool
    violations: list[C.Violation]
    trace_hash: str
    wall: float
    plan: SeedPlan
    run: RunResult | None = None
    reference: RunResult | None = None

    def summary(self) -> str:
        status = "ok" if self.ok else f"FAILED ({len(self.violations)} violations)"
        return f"seed {self.seed}: {status}, trace {self.trace_hash[:16]}, {self.wall:.2f}s"


def story(report: SeedReport, limit: int = 6) -> str:
    """What the machines recorded about the items a failing seed is about."""
    lines = [report.plan.describe()]
    run = report.run
    if report.violations and all(v.checker == "reference" for v in report.violations):
        run = report.reference  # only the fault-free run failed: its story
        lines.append("(the fault-free reference run failed: this is its story)")
    if run is None or run.cluster is None:
        return "\n".join(lines)
    keys = _story_keys(report.plan, run, [v.key for v in report.violations if v.key])[:limit]
    for v in report.violations[:20]:
        lines.append(f"  {v}")
    tasks: list[tuple[str, TaskId]] = [(k, run.keys[k].task_id) for k in keys if k in run.keys]
    if run.broken_by is not None:
        # validate() failed: no workload item is named, so tell the story of
        # the event that broke the invariant and of the tasks it is about
        addr, t, ev, cmds = run.broken_by
        lines.append(f"-- the invariant broke after {addr} handled, at {t:.4f}: {ev!r}"[:2000])
        tr = run.cluster.kernel.trace
        if tr is not None and tr.per_address:
            lines.append(f"-- what {addr} did last (oldest first):")
            lines += [f"   {ln}"[:300] for ln in tr.story(addr)]
        back = {oid.task_id: k for k, oid in run.keys.items()}
        for x in (ev, *(cmds or ())):
            for tid in _task_ids(x):
                if len(tasks) < limit and all(tid != have for _, have in tasks):
                    tasks.append((back.get(tid, "a task"), tid))
    for key, tid in tasks:
        lines.append(f"-- story of {key} (task {tid.short()}):")
        for addr, node in run.cluster.nodes.items():
            m = node.machine if node.alive else None
            if m is None and node.host is not None:
                m = node.host.machine
            if m is None:
                continue
            for t, sid, what in m.story(tid):
                lines.append(f"   {t:9.4f} {addr:<10} {what}  [{sid}]")
    return "\n".join(lines)


def _story_keys(plan: SeedPlan, run: RunResult, keys: list[str]) -> list[str]:
    """The items whose stories explain violations about ``keys``: an item
    itself; an actor's calls; a wait's refs (those it was told of too early
    or never, first)."""
    out: list[str] = []
    actors = {a.key: a for a in plan.workload.actors}
    waits = {w.key: w for w in plan.workload.waits}
    for k in keys:
        if k in actors:
            more = [c.key for c in actors[k].calls]
        elif k in waits:
            o = run.waits.get(k)
            more = (o.early + o.missed if o is not None else []) + list(waits[k].refs)
        else:
            more = [k]
        out += [m for m in more if m in run.keys and m not in out]
    return out


def _task_ids(ev: Any) -> list[TaskId]:
    """The task ids an event is about (its spec, task, objects), in order."""
    out: list[TaskId] = []

    def add(x: Any) -> None:
        if isinstance(x, TaskId):
            tid = x
        elif isinstance(x, ObjectId):
            tid = x.task_id
        elif hasattr(x, "task_id") and isinstance(getattr(x, "task_id"), TaskId):
            tid = x.task_id
        else:
            return
        if tid not in out:
            out.append(tid)

    for name in field_names(type(ev)) or ():
        v = getattr(ev, name, None)
        if isinstance(v, (tuple, list)):
            for x in v[:8]:
                add(x[0] if isinstance(x, tuple) and x else x)
        else:
            add(v)
    return out
