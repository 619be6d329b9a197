"""The workload surface the swarm drew later (issue 14), run and checked.

Cancels of plain tasks, frees and releases of puts, other jobs' drivers
that exit, and a second driver that gets a named actor by its name:
``_surface_events`` queues them on the run's events, ``_surface_checks``
checks what they left on the quiet cluster.  ``_tree`` is the task ids a
workload task makes (itself and its children at every depth).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.ids import ObjectId, TaskId, child_task_id, return_object_id
from ..core.messages import ReleaseObjects
from ..core.specs import ResourceSet
from ..sim.cluster import SimCluster
from . import checkers as C
from .plans import DRIVER_NODE
from .reports import RunResult
from .executor import VerifyExecutor
from .workload import VActor, VCall, Workload, digest


# num_returns > 1, retry_exceptions, cancel of plain tasks, freed puts, and
# drivers (jobs) that exit: what run_plan schedules and checks for them.


@dataclass
class _Surface:
    freed: list[ObjectId] = field(default_factory=list)  # private puts freed (free=True)
    released: list[ObjectId] = field(default_factory=list)  # puts passed to tasks, then released
    jobs: list[tuple[Any, dict]] = field(default_factory=list)  # (JobPlan, what its driver made)
    driver: str = ""  # the main driver's address


def _surface_events(w: Workload, cluster: SimCluster, d, keys: dict, ready: dict, task_specs: dict,
                    events: list, idx: int) -> tuple[int, _Surface]:
    """Queue the cancels of plain tasks, the frees of puts and the other
    jobs' drivers on ``events``; returns the next index and what to check."""
    out = _Surface(driver=d.address)
    for t in w.tasks:
        if t.cancel_at is not None:
            def cancel(t=t):
                spec = task_specs.get(t.key)
                if spec is not None:
                    d.cancel(spec, force=t.force_cancel)
            events.append((t.cancel_at, idx, cancel))
            idx += 1
    shared = {k for t in w.tasks for k in t.deps} | {k for a in w.actors for c in a.calls for k in c.deps}
    for p in w.puts:
        if p.free_at is None:
            continue

        def free(p=p):
            oid, got = keys.get(p.key), ready.get(p.key)
            if oid is None:
                return
            if got is None:  # not back yet (a full store, a paused driver): a program frees after its get
                d.call_after(0.02, free, p)
                return
            if got[0] != "v":
                return  # (the put failed for good: nothing to free)
            private = p.key not in shared
            (out.freed if private else out.released).append(oid)
            d._send_msg(ReleaseObjects(client=d.address, object_ids=(oid,), free=private))
        events.append((p.free_at, idx, free))
        idx += 1
    for j in w.jobs:
        made: dict[str, Any] = {"driver": None, "tasks": [], "objects": [], "actor": None}

        def start(j=j, made=made):
            jd = made["driver"] = cluster.driver(DRIVER_NODE)
            pid = jd.put(j.put_size, digest("put", j.key))
            made["objects"].append(pid)
            for i, m in enumerate(j.tasks):
                spec = jd.spec(m, deps=[pid] if i == 0 else [], resources=ResourceSet.of(CPU=0.5), name=m.key,
                               max_retries=-1)
                jd.submit(spec)
                made["tasks"] += _tree(spec.task_id, m)
            if j.calls:
                h = jd.create_actor(VActor(j.key), cls=f"A{j.key}")
                made["actor"] = h.actor_id
                made["tasks"].append(h.creation.task_id)
                for c in range(j.calls):
                    made["tasks"].append(h.call(VCall(f"{j.key}.c{c}", duration=0.02)).task_id)

        def close(made=made):
            if made["driver"] is not None:
                made["driver"].close()
        events += [(j.at, idx, start), (j.close_at, idx + 1, close)]
        idx += 2
        out.jobs.append((j, made))
    return idx, out


def _surface_checks(w: Workload, cluster: SimCluster, executor: VerifyExecutor, res: RunResult, s: _Surface,
                    faults: bool) -> list[C.Violation]:
    """The checks of the surface ``_surface_events`` drives, on the quiet cluster."""
    out = C.check_returns([t.return_keys() for t in w.tasks if t.num_returns > 1], res.results, digest)
    out += C.check_flaky([(t.key, t.model.flaky, t.max_retries) for t in w.tasks if t.model.flaky], res.results,
                         res.taints if faults else None)
    if s.freed or s.released:
        out += C.check_freed(cluster, DRIVER_NODE, s.freed, s.released, s.driver)
    for j, made in s.jobs:
        jd = made["driver"]
        if jd is not None:
            oids = made["objects"] + [return_object_id(tid, 1) for tid in made["tasks"]]
            out += C.check_job_ended(cluster, jd.job_id, j.key, made["tasks"], oids, made["actor"])
    return out


class _ByName:
    """The second driver's ``get_actor(name)``: it reads the name's row, then
    submits the calls it made meanwhile (in order).  A name not there yet
    (the creation is on its way) is read again; after ``GIVE_UP`` virtual
    seconds (the actor died: Ray raises) it goes on with the handle it has."""

    GIVE_UP = 1.0

    def __init__(self, d, plan, actor_id, violations: list) -> None:
        self.d, self.plan, self.actor_id, self.violations = d, plan, actor_id, violations
        self.pending: list = []
        self.resolved = False
        self.found = False
        self.give_up_at = d.now + self.GIVE_UP
        self.lookup()

    def __bool__(self) -> bool:
        return not self.resolved

    def lookup(self) -> None:
        from ..core.tables import Get
        self.d.gcs(Get("names", ("", self.plan.name)), self._got)

    def _got(self, aid) -> None:
        if self.resolved:
            return
        if aid is None and self.d.now < self.give_up_at:
            self.d.call_after(0.02, self.lookup)
            return
        if aid is not None and aid != self.actor_id:
            self.violations.append(C.Violation("names", f"get_actor({self.plan.name!r}) gave actor {aid.short()}, "
                                                        f"not {self.plan.key}'s {self.actor_id.short()}", self.plan.key))
        self.found = aid is not None
        self.resolved = True
        for spec in self.pending:
            self.d.submit(spec)
        self.pending.clear()

    def submit(self, spec) -> None:
        if self.resolved:
            self.d.submit(spec)
        else:
            self.pending.append(spec)


def _names_now(w: Workload, cluster: SimCluster, actors: dict) -> dict:
    """Named actor key -> (its state as the head has it, the name's row),
    now.  (The head's view: only the head's ``_die`` unregisters a name, so
    while the head has the actor not dead, its name must be there.)"""
    out = {}
    for a in w.actors:
        h = actors.get(a.key)
        if a.name and h is not None:
            e = cluster.head.actors.actors.get(h.actor_id)
            out[a.key] = (e.state if e is not None else None, cluster.gcs_row("names", ("", a.name)))
    return out


def _tree(tid: TaskId, model) -> list[TaskId]:
    """A task's id and those of the children it submits, at every depth."""
    out = [tid]
    for j, ch in enumerate(getattr(model, "children", ())):
        out += _tree(child_task_id(tid, j), ch)
    return out
