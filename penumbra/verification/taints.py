"""Why an item of a faulty run may legitimately differ from the reference.

``_taints`` reads the plan and what the run did (the attempts tasks used,
the actors a fault disturbed) and gives each item the reasons it may
differ (``"retry"``, ``"lost"``, ``"actor"``, ``"state"``, ``"store"``,
``"cancel"``, ``"flaky"``), inherited along the lineage; ``checkers.
check_results`` holds the run's values to the reference's under them.
Both the swarm's runs (``runner``) and the real-runtime runs
(``realrun``) use the same rules.
"""

from __future__ import annotations

from .plans import SeedPlan


def _taints(plan: SeedPlan, faulty: bool, executions: dict, keys: dict, disturbed: set[str]) -> dict[str, set[str]]:
    """Why each item may legitimately differ from the reference (see
    ``checkers.check_results``); inherited along the lineage.

    ``"retry"`` is precise: a task earns it only if it used at least
    ``max_retries + 1`` attempts in the run (its budget could be spent).
    So are the actor taints: only the calls of an actor in ``disturbed``
    (it restarted, died or was killed in the run) may differ; every other
    actor's calls must return exactly the reference's values."""
    w = plan.workload
    # a put made on a node that dies (or is cut off and fenced) may be lost
    # with it: a put has no lineage to rebuild it from
    doomed = set(plan.faults.first_failures()) if faulty else set()
    taints: dict[str, set[str]] = {p.key: ({"lost"} if p.node in doomed and p.node else set()) for p in w.puts}
    deps: dict[str, tuple[str, ...]] = {}
    for t in w.tasks:
        ran = executions.get(keys[t.key].task_id, 0) if t.key in keys else 0
        own = {"retry"} if faulty and t.max_retries >= 0 and ran >= t.max_retries + 1 else set()
        own |= {"cancel"} if t.cancel_at is not None else set()  # cancelled: TASK_CANCELLED, or its value
        own |= {"flaky"} if t.model.flaky and "retry" in own else set()  # its budget spent: its own error
        for k in t.return_keys():
            taints[k], deps[k] = set(own), t.deps
    # a node's store dies with the node (crash, or fenced after a cut)
    loses_nodes = faulty and bool(plan.faults.first_failures())
    for a in w.actors:
        cancelled_before = False
        for c in a.calls:
            own = set()
            if cancelled_before:
                own.add("state")  # an earlier call may not have run: the state may differ
            if a.replay and loses_nodes:
                # A replay actor rebuilds its state exactly, but the outputs
                # of calls before the checkpoint a restart starts from are
                # not rebuilt (penumbra's documented replay semantics, see
                # core/actors.py and core/lineage.py: the checkpoint ends
                # their lineage, as in the paper; re-running them would apply
                # their effect on the state twice).  If such an output's only
                # copy was on a node that died, its get raises
                # ObjectLostError.  The state -- every later value -- is
                # unaffected, so this does not spread to later calls.
                own.add("lost")
            if a.kill_at is not None:
                own.add("actor")  # the kill races with the calls
            if c.cancel_at is not None:
                own.add("cancel")  # cancelled: TASK_CANCELLED, or its value if it ended first
                cancelled_before = True
            if faulty and a.key in disturbed:
                if a.max_restarts >= 0 or a.max_task_retries == 0:
                    own.add("actor")
                if not a.replay:
                    # state resets on restart, and outputs on a dead host
                    # are not rebuilt (Ray's rules)
                    own.add("state")
                    own.add("actor")
            taints[c.key] = own
            deps[c.key] = c.deps
    # a put the driver released after passing it to tasks is unpinned: it
    # may be evicted (no lineage) before a consumer on another node fetches it
    for p in w.puts:
        if p.free_at is not None and any(p.key in ds for ds in deps.values()):
            taints[p.key].add("lost")
    # a small store fills up, and when depends on timing
    store = min(s.object_store_memory for s in plan.layout.nodes)
    biggest = max([t.model.size for t in w.tasks] + [p.size for p in w.puts] + [1])
    if store < 8 * biggest:
        for k in taints:
            taints[k].add("store")
        # an evicted output of an actor's call is not rebuilt (a replay
        # actor's only by a restart that replays the call, see "lost" above)
        for a in w.actors:
            for c in a.calls:
                taints[c.key].add("lost")
    # inherit along dependencies (items are in submission order)
    order = sorted(deps, key=dict(w.submitted_at()).__getitem__)
    for k in order:
        for d in deps[k]:
            taints[k] |= taints.get(d, set())
    # an actor call's state carries everything earlier calls consumed: if an
    # earlier call may have failed (its input failed, its actor died), the
    # state it left -- and so every later value -- may differ
    for a in w.actors:
        acc: set[str] = set()
        for c in a.calls:
            if acc:
                acc.add("state")
            mine = taints[c.key]
            if "cancel" in mine:
                # it (or an input of it) was cancelled: whether it ran
                # depends on timing, so the state it leaves may differ
                # (later calls: "state"); only it may be TASK_CANCELLED
                taints[c.key] = acc | mine
                acc |= (mine - {"cancel"}) | {"state"}
                continue
            if "lost" in mine and not any("lost" in taints.get(d, ()) for d in deps[c.key]):
                # only its own output may be lost (after it ran): the state
                # it leaves is exact
                mine = mine - {"lost"}
                acc |= mine
                taints[c.key] = acc | {"lost"}
                continue
            acc |= mine
            taints[c.key] = set(acc)
    return taints
