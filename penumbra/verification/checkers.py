"""Invariant checkers for one swarm run.

Each checker returns a list of ``Violation``s (empty: the run is good).

``check_results``
    every object the driver waited for holds what the fault-free reference
    run computed, or an error the semantics allow (see ``allowed``);
``check_liveness``
    after the liveness phase, every object the driver waited for is ready
    and no task is left pending in the GCS;
``check_resources``
    on a quiet cluster every live node has all its resources free;
``check_no_rescues``
    in a fault-free run, no node learned of a change by re-reading a row it
    waited on (pub/sub dropped nothing: the ``pubsub`` kind);
``check_actor_order``
    each actor instance ran each caller's calls in sequence order, and a call
    ran twice only where retries or replay allow it;
``check_gcs``
    no two replicas applied different writes at the same sequence number of a
    shard (no fork), no write was applied twice, and every write a client saw
    acknowledged is held by the shard's surviving tail;
``check_waits``
    every ``wait`` returned: one with no timeout with exactly
    ``num_returns`` refs, one with a timeout no later than that; no ref was
    reported ready twice, and none before it existed (on the waiter's node
    when fetching, anywhere otherwise) unless it was reported as an error;
    in a fault-free run, a wait that timed out was told of every ref that
    was ready a moment before;
``PlacementLog`` / ``check_placement``
    placement groups: every task or actor in a group started on a node that
    held its bundle (the one it named, or any of the group's) at that
    moment; no node ever set apart more than it has; once a group is
    removed, no node holds anything of it (its reservation is freed);
``check_bundles_held_once``
    after the liveness phase, each bundle of a live group is committed on
    exactly one live node, the one the head placed it on;
``check_returns`` / ``check_flaky`` / ``check_freed`` / ``check_job_ended`` / ``check_names``
    (draws-surface) a multi-return task's returns fit each other; a task
    raising with ``retry_exceptions`` ends with a value exactly when its
    budget covers it; freed puts are gone, released ones unpinned; a job
    whose driver exited left nothing running, alive, pinned or in the GCS;
    a named actor holds its name while alive and gives it up when killed.
``check_quiet_cluster`` (``check_pins``, ``check_executions``, ``check_killed_actors``, ``check_tables_agree``)
    once the swarm's quiesce phase is over: no stale pins or wants, no task
    run past its retry budget, killed actors dead everywhere, the GCS tables
    agree with the nodes (``quiet_checks``, where they live, says what each holds);
``check_derived_values``
    the values ``check_results`` must skip, where the run determines them
    (``quiet_checks`` too).

``Violation`` lives in ``violations``; this module re-exports it and the
checks of ``quiet_checks``, so ``checkers`` names every checker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.records import ActorState, ErrorKind, TaskState
from .quiet_checks import (check_derived_values, check_executions, check_killed_actors, check_pins,
                           check_quiet_cluster, check_tables_agree, value_overwritten)
from .violations import Violation, _fmt

__all__ = ["Violation", "GcsLedger", "check_results", "check_liveness", "check_resources",
           "check_no_rescues", "pending_task_rows", "check_actor_order", "check_gcs", "WaitOutcome", "check_waits",
           "PlacementLog", "check_placement", "check_bundles_held_once", "check_returns", "check_flaky", "check_freed",
           "check_job_ended", "check_names", "check_pins", "check_executions", "check_killed_actors",
           "check_tables_agree", "check_quiet_cluster", "check_derived_values", "value_overwritten"]


# errors a run with faults may show where the reference shows a value
RETRY_ERRORS = {ErrorKind.WORKER_CRASHED, ErrorKind.NODE_DIED, ErrorKind.OBJECT_LOST}
# (outputs of a dead actor's methods are not rebuilt: Ray's rule)
ACTOR_ERRORS = {ErrorKind.ACTOR_DIED, ErrorKind.OBJECT_LOST}


def check_results(reference: dict[str, tuple], actual: dict[str, tuple], taints: dict[str, set[str]]) -> list[Violation]:
    """``reference``/``actual``: key -> ("v", value) | ("e", kind, message).

    ``taints[key]``: why this item may legitimately differ:
    ``"retry"`` (a finite retry budget on its lineage could be exhausted by
    faults), ``"actor"`` (an actor on its lineage may have died for good or
    lost its state), ``"state"`` (an actor on its lineage restarted without
    replay: values may differ), ``"lost"`` (the object may be gone for good:
    a put on a node that died, an evicted output of an actor's call, an
    output of a replay actor's call from before the checkpoint its restart
    started from: ``OBJECT_LOST``, never a different value),
    ``"store"`` (the object store is small
    enough that whether it is full at a given moment depends on timing),
    ``"cancel"`` (its caller cancelled it, or an input of it:
    ``TASK_CANCELLED``, or its value if it ended first), ``"flaky"`` (a
    task that raises on its first attempts, with ``retry_exceptions``, whose
    budget faults may have spent: its own ``TASK_ERROR``).
    """
    out = []
    for key, ref in sorted(reference.items()):
        got = actual.get(key)
        if got is None:
            continue  # liveness reports it
        if got == ref:
            continue
        t = taints.get(key, set())
        if ref[0] == "e" and ref[1] is ErrorKind.ACTOR_DIED and "actor" in t:
            continue  # the kill raced with this call: it may have run first
        if "cancel" in t and ErrorKind.TASK_CANCELLED in (ref[1] if ref[0] == "e" else None, got[1] if got[0] == "e" else None):
            continue  # cancelled (here or in the reference): whether it ended first depends on timing
        if "store" in t and ErrorKind.OBJECT_STORE_FULL in (ref[1] if ref[0] == "e" else None, got[1] if got[0] == "e" else None):
            continue  # which objects are pinned when the store fills depends on timing
        if {"store", "retry"} <= t and ref[0] == "e" and ref[1] is ErrorKind.OBJECT_LOST:
            # the reference evicted it (a full store: timing) and its finite
            # retry budget forbade rebuilding it; this run's store had room.
            # (Placement groups make it common: a group's tasks crowd into
            # its bundles' few node stores.)  The other way round is the
            # "retry" rule below.
            continue
        if ref[0] == "e" and ref[1] is ErrorKind.TASK_ERROR:
            if got[0] == "e" and got[1] is ErrorKind.TASK_ERROR and got[2] == ref[2]:
                continue
        if got[0] == "e":
            kind = got[1]
            if kind in RETRY_ERRORS and "retry" in t:
                continue
            if kind in ACTOR_ERRORS and "actor" in t:
                continue
            if kind is ErrorKind.OBJECT_LOST and "lost" in t:
                continue
            if kind is ErrorKind.TASK_ERROR and "flaky" in t:
                continue  # faults spent its retry budget: it ends with its own early-attempt error
            out.append(Violation("results", f"{key}: expected {_fmt(ref)}, got the error {_fmt(got)} "
                                            f"(allowed deviations for it: {sorted(t) or 'none'})", key))
            continue
        if "state" in t or "actor" in t:
            continue  # an actor's state was reset (Ray semantics without replay)
        out.append(Violation("results", f"{key}: expected {_fmt(ref)}, got {_fmt(got)}", key))
    return out


def check_liveness(expected: set[str], ready: dict[str, tuple], pending_rows: list[str]) -> list[Violation]:
    out = [Violation("liveness", f"{k} never became ready after the faults stopped", k) for k in sorted(expected - set(ready))]
    for r in pending_rows[:20]:
        out.append(Violation("liveness", f"the GCS still holds a pending task after quiescence: {r}"))
    return out


def check_resources(cluster, actors_gone: bool = False) -> list[Violation]:
    """``actors_gone``: every actor was killed, so no node may still hold
    resources for one (else an actor's life-long share counts as in use)."""
    out = []
    for addr in cluster.alive_nodes():
        m = cluster.node(addr).machine
        if m is None or m.fenced:
            continue
        s = m.scheduler
        held = m.host.held()
        if s.available + held + s.bundled != s.total or not s.debt.is_empty():
            out.append(Violation("resources", f"{addr}: available {s.available} + actors {held} + placement group "
                                              f"bundles {s.bundled} != total {s.total} (debt {s.debt}) on a quiet cluster"))
        elif actors_gone and not held.is_empty():
            out.append(Violation("resources", f"{addr}: actors still hold {held} after every actor was killed"))
        busy = [w.worker_id for w in s.workers.values() if w.state == "busy"]
        if busy:
            out.append(Violation("resources", f"{addr}: workers still busy on a quiet cluster: {busy}"))
        if s.tasks:
            out.append(Violation("resources", f"{addr}: tasks still queued on a quiet cluster: "
                                              f"{[t.spec.display_name() for t in list(s.tasks.values())[:5]]}"))
    return out


def check_no_rescues(cluster) -> list[Violation]:
    """In a run without faults no notification is lost, so the nodes' safety
    net (re-reading a wanted object's row after a quiet second) must never
    be what tells a node about a change: if it is, pub/sub dropped one."""
    out = []
    for addr in cluster.alive_nodes():
        m = cluster.node(addr).machine
        if m is not None and m.objects.refresh_rescues:
            out.append(Violation("pubsub", f"{addr}: {m.objects.refresh_rescues} object row change(s) reached the node "
                                           f"only through its periodic re-read, in a run without faults: a pub/sub "
                                           f"notification was never sent"))
    return out


def check_actor_order(log, actor_meta: dict) -> list[Violation]:
    """``log``: ``ActorExec`` records in execution order; ``actor_meta[aid] =
    (key, max_task_retries, replay)``."""
    out = []
    last: dict[tuple, int] = {}
    runs: dict[tuple, list[str]] = {}
    for e in log:
        inst = (e.actor_id, e.worker_id, e.caller)
        prev = last.get(inst)
        if prev is not None and e.seq <= prev:
            key = actor_meta.get(e.actor_id, ("?",))[0]
            out.append(Violation("actor-order", f"actor {key}: on worker {e.worker_id}, call #{e.seq} of {e.caller} "
                                                f"ran after call #{prev}", key))
        last[inst] = e.seq
        runs.setdefault((e.actor_id, e.caller, e.seq), []).append(e.worker_id)
    for (aid, caller, seq), workers in sorted(runs.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        if len(workers) < 2:
            continue
        key, retries, replay = actor_meta.get(aid, ("?", 0, False))
        if len(set(workers)) < len(workers):
            out.append(Violation("actor-order", f"actor {key}: call #{seq} of {caller} ran twice on one instance", key))
        elif retries == 0 and not replay:
            out.append(Violation("actor-order", f"actor {key}: call #{seq} of {caller} ran {len(workers)} times "
                                                f"(on {workers}) although max_task_retries=0 (at most once)", key))
    return out


@dataclass
class GcsLedger:
    """What the GCS committed, recorded while a run goes (see ``swarm``).

    A write is *committed* when a tail commits it (the moment it is
    acknowledged).  Entries a replica applied but that died with it before
    reaching a tail were never acknowledged to anyone, so only commits count.
    """

    committed: dict[tuple[int, int], tuple[str, int, str]] = field(default_factory=dict)  # (shard, seq) -> (client, req, tail)
    by_request: dict[tuple[int, str, int], int] = field(default_factory=dict)  # (shard, client, req) -> seq
    acked: list[tuple[int, str, int]] = field(default_factory=list)  # writes a client saw acknowledged
    forks: list[str] = field(default_factory=list)
    doubles: list[str] = field(default_factory=list)

    def on_commit(self, replica: str, shard: int, seq: int, client: str, req_id: int) -> None:
        key = (shard, seq)
        ident = (client, req_id)
        had = self.committed.get(key)
        if had is None:
            self.committed[key] = (client, req_id, replica)
        elif (had[0], had[1]) != ident:
            self.forks.append(f"shard {shard} seq {seq}: {had[2]} committed {had[0]}#{had[1]}, "
                              f"{replica} committed {client}#{req_id}")
        s = self.by_request.get((shard, client, req_id))
        if s is None:
            self.by_request[(shard, client, req_id)] = seq
        elif s != seq:
            self.doubles.append(f"shard {shard}: {client}#{req_id} committed at seq {s} and again at seq {seq}")

    def on_ack(self, shard: int, client: str, req_id: int) -> None:
        self.acked.append((shard, client, req_id))


def check_gcs(ledger: GcsLedger, tails: dict[int, Any]) -> list[Violation]:
    """``tails[shard]``: the live tail replica of each shard at the end (None if none)."""
    out = [Violation("gcs", f"chain fork: {f}") for f in ledger.forks[:10]]
    out += [Violation("gcs", f"write applied twice: {d}") for d in ledger.doubles[:10]]
    for shard, client, req in ledger.acked:
        seq = ledger.by_request.get((shard, client, req))
        tail = tails.get(shard)
        if tail is None:
            continue  # every replica of the shard died: nothing can hold it
        if seq is None:
            out.append(Violation("gcs", f"shard {shard}: {client}#{req} was acknowledged but never committed"))
        elif tail.seq < seq:
            out.append(Violation("gcs", f"shard {shard}: {client}#{req} was acknowledged at seq {seq} but the "
                                        f"surviving tail {tail.replica_id} has only {tail.seq}: an acknowledged write was lost"))
        if len(out) > 20:
            break
    return out


def pending_task_rows(cluster, task_ids) -> list[str]:
    """Tasks the GCS still lists as pending (read from the live tails)."""
    rows = []
    for tid in task_ids:
        e = cluster.gcs_row("tasks", tid)
        if e is not None and e.state is TaskState.PENDING:
            rows.append(f"{e.spec.display_name()} at {e.node or '(unplaced)'}")
    return rows


@dataclass
class WaitOutcome:
    """What one ``wait`` saw (filled in by the swarm's driver as reports come)."""

    started: float
    ready: list[str] = field(default_factory=list)  # keys, in report order
    done: bool = False
    timed_out: bool = False
    finished: float = 0.0
    twice: list[str] = field(default_factory=list)  # keys reported ready again
    early: list[str] = field(default_factory=list)  # keys reported before they existed
    missed: list[str] = field(default_factory=list)  # ready keys a timed-out wait was never told of (fault-free runs)


def check_waits(plans, outcomes: dict[str, WaitOutcome]) -> list[Violation]:
    """``plans``: the workload's ``WaitPlan``s; ``outcomes``: key -> outcome."""
    out = []
    for p in plans:
        o = outcomes.get(p.key)
        what = f"wait {p.key} over {len(p.refs)} refs (num_returns={p.num_returns}, timeout={p.timeout})"
        if o is None:
            out.append(Violation("waits", f"{what} was never issued", p.key))
            continue
        if not o.done:
            out.append(Violation("waits", f"{what} never returned ({len(o.ready)} ready)", p.key))
            continue
        if o.timed_out:
            if p.timeout is None:
                out.append(Violation("waits", f"{what} timed out without a timeout", p.key))
            elif len(o.ready) >= p.num_returns:
                out.append(Violation("waits", f"{what} timed out with enough refs ready", p.key))
        elif len(o.ready) != p.num_returns:
            out.append(Violation("waits", f"{what} returned {len(o.ready)} ready refs", p.key))
        if p.timeout is not None and o.finished - o.started > p.timeout + 1e-9:
            out.append(Violation("waits", f"{what} returned after {o.finished - o.started:.4f}s", p.key))
        if not set(o.ready) <= set(p.refs):
            out.append(Violation("waits", f"{what} reported refs it was not given: {sorted(set(o.ready) - set(p.refs))}", p.key))
        if o.twice:
            out.append(Violation("waits", f"{what}: reported ready twice: {o.twice}", p.key))
        if o.missed:
            out.append(Violation("waits", f"{what} timed out without being told of refs that were ready: {o.missed}", p.key))
        if o.early:
            out.append(Violation("waits", f"{what}: reported ready before the object existed"
                                          f"{' on the waiting node' if p.fetch else ''}: {o.early}", p.key))
    return out


class PlacementLog:
    """What the swarm saw of placement groups while a run ran: each start of
    a task or actor creation in a group, with the bundles its node held
    then (see ``runner._placement_log``), and what was wrong at once."""

    def __init__(self) -> None:
        self.starts = 0
        self.violations: list[Violation] = []

    def on_start(self, node: str, now: float, name: str, wanted: tuple[str, int], held) -> None:
        self.starts += 1
        pg, index = wanted
        ok = (pg, index) in held if index >= 0 else any(k[0] == pg for k in held)
        if not ok:
            which = f"bundle {index}" if index >= 0 else "any bundle"
            self.violations.append(Violation(
                "placement", f"{name} (in {which} of placement group {pg}) started on {node} at {now:.3f}, "
                             f"which held bundles {sorted(held)} of it", name))

    def on_over_reserved(self, node: str, bundled, total) -> None:
        self.violations.append(Violation("placement", f"{node} set apart {bundled} for bundles, more than its total {total}"))


def check_placement(log: PlacementLog, cluster, removed: list[str]) -> list[Violation]:
    """The violations ``log`` saw, and, on the quiet cluster after the
    groups ``removed`` were removed: no live node holds any of their
    bundles or resource names, sets anything apart, and the head agrees
    they are removed."""
    out = list(log.violations)
    head = cluster.head
    for pg in removed:
        g = head.placement.groups.get(pg)
        if g is None or g.state != "removed":
            out.append(Violation("placement", f"placement group {pg} was removed but the head has it "
                                              f"{'unknown' if g is None else g.state}"))
    for addr in cluster.alive_nodes():
        m = cluster.node(addr).machine
        if m is None or m.fenced or addr in head.dead_nodes:
            continue
        s = m.scheduler
        for pg in removed:
            names = [n for n in s.total.names() if "_group_" in n and n.endswith("_" + pg)]
            kept = [k for k in list(m.bundles.committed) + list(m.bundles.prepared) if k[0] == pg]
            if names or kept:
                out.append(Violation("placement", f"{addr} still holds removed placement group {pg}: bundles "
                                                  f"{sorted(kept)}, resources {sorted(names)}"))
        if removed and not s.bundled.is_empty():
            out.append(Violation("placement", f"{addr} still sets {s.bundled} apart for bundles after every "
                                              f"placement group was removed"))
    return out


def check_bundles_held_once(cluster, pgs: list[str]) -> list[Violation]:
    """Each bundle of the groups ``pgs`` is committed on one live node at
    most, and where the head says it is (a created group: on exactly one).
    Live: not declared dead by the head."""
    out = []
    where: dict[tuple[str, int], list[str]] = {}
    dead = cluster.head.dead_nodes
    seen: set[str] = set()
    for addr in cluster.alive_nodes():
        m = cluster.node(addr).machine
        if m is None or m.fenced or addr in dead:
            continue  # (a node declared dead may not know it yet: it is fenced when it next speaks)
        seen.add(addr)
        for key in m.bundles.committed:
            if key[0] in pgs:
                where.setdefault(key, []).append(addr)
    for pg in pgs:
        g = cluster.head.placement.groups.get(pg)
        if g is None:
            out.append(Violation("placement", f"the head does not know placement group {pg}"))
            continue
        for i, node in enumerate(g.nodes):
            held = sorted(where.get((pg, i), []))
            if len(held) > 1:
                out.append(Violation("placement", f"bundle {i} of placement group {pg} is held by {held}"))
            elif g.state == "created" and held != [node] and (node in seen or held):
                # (a node that crashed before the head noticed holds nothing:
                # the head places its bundles again once it declares it dead)
                out.append(Violation("placement", f"bundle {i} of created placement group {pg} is held by {held}, "
                                                  f"the head says {node}"))
    return out


# -- draws-surface (issue 14): num_returns, retry_exceptions, freed puts, jobs that end ----------


def check_returns(groups: list[list[str]], results: dict[str, tuple], derive) -> list[Violation]:
    """``groups``: the item keys of each multi-return task's returns, in
    order.  The workload makes return ``i`` hold ``derive(first, i)``, so
    whatever the run did, return ``i`` holds that when both hold values;
    and a task ends once for all its returns: one holding a value and
    another an error of the task itself (not a lost or evicted copy) is
    wrong."""
    out = []
    for keys in groups:
        first = results.get(keys[0])
        if first is None:
            continue
        for i, k in enumerate(keys[1:], 1):
            got = results.get(k)
            if got is None:
                continue
            if first[0] == "v" and got[0] == "v":
                if got[1] != derive(first[1], i):
                    out.append(Violation("returns", f"{k}: return {i} of {keys[0]} holds {_fmt(got)}, not the value "
                                                    f"return {i} of a task whose first return is {_fmt(first)}", k))
            elif (first[0] == "v") != (got[0] == "v"):
                err = first if first[0] == "e" else got
                if err[1] not in (ErrorKind.OBJECT_LOST, ErrorKind.OBJECT_STORE_FULL):
                    out.append(Violation("returns", f"{keys[0]}: return 0 holds {_fmt(first)} but return {i} holds "
                                                    f"{_fmt(got)}: one task, two outcomes", k))
    return out


def check_flaky(items: list[tuple[str, int, int]], results: dict[str, tuple],
                taints: dict[str, set[str]] | None) -> list[Violation]:
    """``items``: ``(key, flaky, max_retries)`` of each task that raises on
    its first ``flaky`` attempts, with ``retry_exceptions``.  It must end
    with a value exactly when its budget covers them: never a value when it
    does not (retried beyond ``max_retries``), never its early error when it
    does, unless faults may have spent the budget (``taints``: the faulty
    run's; None for the fault-free run)."""
    out = []
    for key, flaky, retries in items:
        got = results.get(key)
        if got is None:
            continue
        enough = retries < 0 or flaky <= retries
        if got[0] == "v" and not enough:
            out.append(Violation("retries", f"{key} raises on its first {flaky} attempts and has max_retries="
                                            f"{retries}, yet it ended with a value: it ran more often than its budget", key))
        elif (enough and got[0] == "e" and got[1] is ErrorKind.TASK_ERROR and got[2].startswith(f"{key} raised on an early")
              and "flaky" not in (taints or {}).get(key, ())):
            out.append(Violation("retries", f"{key} raises on its first {flaky} attempts and has max_retries={retries} "
                                            f"with retry_exceptions, yet it ended with its error: it was not retried", key))
    return out


def check_freed(cluster, node: str, freed: list, released: list, client: str) -> list[Violation]:
    """On the quiet cluster: each put the driver freed (no ref ever left it)
    is gone from ``node``'s store and its GCS row is forgotten; each put it
    released (passed to tasks first) is no longer pinned by it."""
    out = []
    n = cluster.nodes.get(node)
    m = n.machine if n is not None and n.alive else None
    if m is None:
        return out
    objects = m.objects.store.objects
    for oid in freed:
        if oid in objects or oid in n.store:
            out.append(Violation("freed", f"{node} still holds put {oid.short()} after the driver freed it (no ref to it "
                                          f"ever left the driver)"))
        if cluster.gcs_row("objects", oid) is not None:
            out.append(Violation("freed", f"the GCS still has a row for put {oid.short()} after the driver freed it"))
    for oid in released:
        o = objects.get(oid)
        if o is not None and ("client", client) in o.pins:
            out.append(Violation("freed", f"{node} still pins put {oid.short()} for {client}, which released it"))
    return out


def check_job_ended(cluster, job_id: int, key: str, task_ids: list, object_ids: list, actor_id) -> list[Violation]:
    """A job whose driver exited (on the quiet cluster): the head knows it
    ended, no live node queues or runs its tasks or hosts its actor, its
    actor is dead in the GCS, its task and object rows are forgotten and no
    live node's store pins its objects."""
    out = []
    what = f"job {job_id} ({key}, its driver exited)"
    head = cluster.head
    if job_id not in head.ended_jobs:
        out.append(Violation("job-end", f"{what}: the head never learned that it ended"))
        return out
    tids, oids = set(task_ids), set(object_ids)
    for addr in cluster.alive_nodes():
        m = cluster.node(addr).machine
        if m is None or m.fenced or addr in head.dead_nodes:
            continue
        left = [t.spec.display_name() for t in m.scheduler.tasks.values() if t.spec.job_id == job_id]
        if left:
            out.append(Violation("job-end", f"{what}: {addr} still queues or runs its tasks {left[:5]}"))
        if actor_id is not None and actor_id in m.host.actors:
            out.append(Violation("job-end", f"{what}: {addr} still hosts its actor {actor_id.short()}"))
        # (an unpinned copy is only cache, evicted when room is needed: a
        # task that ended as the job ended keeps its output there, with no
        # GCS row, until then; a pinned one would stay for good)
        store = m.objects.store.objects
        kept = [o.short() for o in oids if o in store and store[o].pins]
        if kept:
            out.append(Violation("job-end", f"{what}: {addr}'s store still pins its objects {sorted(kept)[:5]}"))
    if actor_id is not None:
        row = cluster.gcs_row("actors", actor_id)
        if row is not None and row.state is not ActorState.DEAD:
            out.append(Violation("job-end", f"{what}: its actor {actor_id.short()} is {row.state.value} in the GCS"))
    rows = [t.short() for t in tids if cluster.gcs_row("tasks", t) is not None]
    if rows:
        out.append(Violation("job-end", f"{what}: the GCS still has rows of its tasks {sorted(rows)[:5]}"))
    rows = [o.short() for o in oids if cluster.gcs_row("objects", o) is not None]
    if rows:
        out.append(Violation("job-end", f"{what}: the GCS still has rows of its objects {sorted(rows)[:5]}"))
    return out


def check_names(named: list, names: dict, cluster, lookups: list) -> list[Violation]:
    """Named actors.  ``named``: ``(key, name, actor_id)``; ``names``: key ->
    (the head's state of the actor, the name's row) at the end of the
    liveness phase: an actor the head does not have dead holds its name.
    On the quiet cluster (every actor killed): no name is left.
    ``lookups``: the fault-free run's get-by-name of actors never killed
    (``found``): each found its actor."""
    out = []
    for key, name, aid in named:
        state, row = names.get(key, (None, None))
        if state is not None and state is not ActorState.DEAD and row != aid:
            out.append(Violation("names", f"actor {key} is {state.value} but its name {name!r} is "
                                          f"{'gone' if row is None else f'held by {row.short()}'}", key))
        now = cluster.gcs_row("names", ("", name))
        if now is not None:
            out.append(Violation("names", f"actor {key} was killed but its name {name!r} is still held by "
                                          f"{now.short()}", key))
    for b in lookups:
        if not b.found:
            out.append(Violation("names", f"get_actor({b.plan.name!r}) never found actor {b.plan.key}", b.plan.key))
    return out


# ===========================================================================
# client-machine: a driver that loses its node while it waits


@dataclass
class DriverRequest:
    """One ``get``/``wait`` of a driver whose connection is lost
    (``injection._install_lost_driver``): when it was made, and each time it
    ended (``(virtual time, "value" | "timeout" | "lost" | "shut down")``)."""

    key: str
    kind: str  # "get" | "wait"
    at: float
    ends: list[tuple[float, str]] = field(default_factory=list)


def check_lost_driver(requests: list[DriverRequest], lost_at: float, machine: Any = None) -> list[Violation]:
    """Every get/wait of a driver that lost its node (at ``lost_at`` at the
    latest) ended exactly once, none after the loss: one made before it got
    its value, timed out or failed at the loss; one made after it failed at
    once, as lost.  ``machine``: the driver's ``ClientMachine``, whose own
    invariants must hold too."""
    out = []
    for r in requests:
        what = f"{r.kind} {r.key} (made at {r.at:.3f}, the driver lost its node at {lost_at:.3f})"
        if not r.ends:
            out.append(Violation("lost-driver", f"{what} never ended: it hangs", r.key))
            continue
        if len(r.ends) > 1:
            out.append(Violation("lost-driver", f"{what} ended {len(r.ends)} times: {r.ends}", r.key))
        t, how = r.ends[0]
        if t > max(r.at, lost_at) + 1e-9:
            out.append(Violation("lost-driver", f"{what} ended at {t:.3f} ({how}), after the loss", r.key))
        elif r.at > lost_at and (how != "lost" or t > r.at + 1e-9):
            out.append(Violation("lost-driver", f"{what}, made after the loss, ended with {how} at {t:.3f} instead "
                                                f"of failing at once as lost", r.key))
    if machine is not None:
        try:
            machine.validate()
        except AssertionError as e:
            out.append(Violation("lost-driver", f"the lost driver's client machine: {e}"))
    return out
