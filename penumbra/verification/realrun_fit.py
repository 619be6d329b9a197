"""The real cluster ``realrun`` starts for a swarm plan, and which plans fit it.

The real cluster is the plan's nodes 0, 1 and the last (``real_nodes``,
``real_layout``), with stores of ``REAL_STORE`` bytes unless told
otherwise.  ``misfit`` says why a plan cannot run there as a real program
(a task asks more than those nodes have, a group needs more nodes than
survive a kill, the store could fill, the reference holds an error that
depends on timing); ``translatable`` drops the surface the translation
does not carry yet.
"""

from __future__ import annotations

import dataclasses

from ..core.layout import ClusterLayout, NodeShape
from ..core.records import ErrorKind
from ..core.specs import ResourceSet
from .workload import SLOT

__all__ = ["REAL_STORE", "real_nodes", "real_layout", "misfit", "translatable"]


# Every real node's object store: big enough that no workload of the swarm
# fills it (misfit() refuses one that could).
REAL_STORE = 256 << 20


# ===========================================================================
# the cluster, and which seeds fit it


def real_nodes(plan) -> list[int]:
    """The plan's nodes the real cluster has: 0 (the head), 1 (a node
    daemon; the one the ``"node"`` fault kills) and the last (the other
    node with the custom resource or GPUs, when there is one)."""
    n = len(plan.layout.nodes)
    return [0, 1] + ([n - 1] if n > 2 else [])


def real_layout(plan, store: int = REAL_STORE) -> ClusterLayout:
    """The real cluster as a layout (what ``taints._taints`` reads)."""
    shapes = tuple(NodeShape(plan.layout.nodes[i].resources, store) for i in real_nodes(plan))
    # (the real cluster's GCS replicas live in the head daemon: see translatable)
    return dataclasses.replace(plan.layout, nodes=shapes, replica_hosts={})


def _fits(need: ResourceSet, nodes: list[ResourceSet]) -> bool:
    return any(need.is_subset_of(r) for r in nodes)


def misfit(plan, reference=None, store: int = REAL_STORE) -> str:
    """Why ``plan`` cannot run as a real program here ("" if it can).

    ``reference``: its fault-free run, if already made (its errors must be
    ones the taints cover whatever the timing)."""
    w = plan.workload
    nodes = [plan.layout.nodes[i].resources for i in real_nodes(plan)]
    for t in w.tasks:
        need = t.resources
        if t.group is not None:
            need = ResourceSet.from_dict({SLOT: 1})
        if not _fits(need, nodes):
            return f"task {t.key} asks {t.resources.to_dict()}, more than nodes {real_nodes(plan)} have"
    for a in w.actors:
        need = ResourceSet.of(CPU=1) + (ResourceSet.of(GPU=a.gpus) if a.gpus else ResourceSet())
        if a.group is None and not _fits(need, nodes):
            return f"actor {a.key} needs {need.to_dict()}, more than nodes {real_nodes(plan)} have"
    for g in w.groups:
        if g.strategy == "STRICT_SPREAD" and g.bundles > len(nodes) - 1:
            return f"group {g.key}: STRICT_SPREAD over {g.bundles} bundles needs more nodes than {len(nodes)} - 1"
    total = sum(p.size for p in w.puts) + sum(t.model.size + sum(_sizes(t.model.children)) for t in w.tasks)
    total += sum(c.model.size for a in w.actors for c in a.calls)
    if total * 2 > REAL_STORE and store >= REAL_STORE:
        return f"the workload's objects ({total >> 20} MiB) could fill a real store of {REAL_STORE >> 20} MiB"
    puts = sum(p.size for p in w.puts)
    if puts * 2 > store:
        # (the driver holds every put: they stay pinned, and a put that
        # finds no room never would)
        return f"the workload's puts ({puts >> 20} MiB) could fill a store of {store >> 20} MiB"
    if reference is not None:
        if reference.violations:
            return f"the reference run has violations: {reference.violations[0]}"
        timing = {k: v for k, v in reference.results.items()
                  if v[0] == "e" and v[1] not in (ErrorKind.TASK_ERROR, ErrorKind.TASK_CANCELLED, ErrorKind.ACTOR_DIED)}
        if timing:
            k, v = sorted(timing.items())[0]
            return f"the reference holds {v[1].value} for {k} (a full or evicting store: timing)"
        if set(reference.results) != {k for k, _ in w.submitted_at()}:
            return "the reference did not finish every item"
    return ""


def translatable(plan):
    """``plan`` without the surface this translation does not carry yet
    (drawn since it was written): ``num_returns > 1`` (an input that was a
    second return becomes the first), ``retry_exceptions`` flakiness,
    cancels of plain tasks, freed puts, a second job that ends, threaded,
    async and named actors.  The reference run is made from the same plan,
    so the comparison stays exact; these are checked by the swarm alone.
    Nor GCS replicas placed on nodes (``replica_hosts``): the real
    cluster's live in the head daemon."""
    if plan.layout.replica_hosts:
        plan = dataclasses.replace(plan, layout=dataclasses.replace(plan.layout, replica_hosts={}))
    w = plan.workload
    if not (w.jobs or any(t.num_returns > 1 or t.cancel_at is not None or t.model.flaky for t in w.tasks)
            or any(p.free_at is not None for p in w.puts)
            or any(a.max_concurrency > 1 or a.is_async or a.name for a in w.actors)):
        return plan

    def first(deps):
        return tuple(d.split(".r")[0] if ".r" in d else d for d in deps)

    tasks = tuple(dataclasses.replace(t, deps=first(t.deps), num_returns=1, cancel_at=None, force_cancel=False,
                                      model=dataclasses.replace(t.model, flaky=0)) for t in w.tasks)
    actors = tuple(dataclasses.replace(a, max_concurrency=1, is_async=False, name=None,
                                       calls=tuple(dataclasses.replace(c, deps=first(c.deps)) for c in a.calls))
                   for a in w.actors)
    puts = tuple(dataclasses.replace(p, free_at=None) for p in w.puts)
    waits = []
    for x in w.waits:
        refs = tuple(dict.fromkeys(first(x.refs)))  # (distinct, in order)
        waits.append(dataclasses.replace(x, refs=refs, num_returns=min(x.num_returns, len(refs))))
    waits = tuple(waits)
    w = dataclasses.replace(w, tasks=tasks, actors=actors, puts=puts, waits=waits, jobs=())
    return dataclasses.replace(plan, workload=w)


def _sizes(children) -> list[int]:
    out = []
    for ch in children:
        out.append(ch.size)
        out += _sizes(ch.children)
    return out
