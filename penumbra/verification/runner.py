"""Running one swarm plan on the simulator, and checking that run.

``run_plan`` builds a ``SimCluster`` for the plan's layout, schedules the
workload as a driver program would submit it (puts, tasks, actors and
their calls, waits, placement groups, the ``surface`` items), installs the
plan's faults (``injection``) for the safety phase, lifts them for the
liveness phase, then quiesces the cluster and runs the checkers on what it
delivered and on the quiet cluster.  While it runs, a few machines'
methods are wrapped to record what only they see (the GCS's commits and
acknowledged writes, starts in placement groups, when objects appear in
stores).  A broken invariant or a machine that raises stops the run with
one violation (``_broken``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
from typing import Any, Callable

from ..api.runtime import Runtime
from ..core import placement as P
from ..core.gcs import GcsReplica
from ..core.gcs_client import GcsClient
from ..core.ids import ObjectId
from ..core.messages import PutFailed
from ..core.records import ActorState, ErrorKind, PlacementGroupEntry
from ..core.scheduler import LocalScheduler
from ..core.specs import ResourceSet
from ..core.tables import CreatePlacementGroup, Op, RemovePlacementGroup
from ..sim.cluster import SimActor, SimCluster, SimNode
from ..sim.costs import PAPER
from . import checkers as C
from .injection import _install_faults, _install_lost_driver, _place_replicas
from .plans import DRIVER_NODE, FaultPlan, SeedPlan
from .reports import RunResult
from .surface import _ByName, _names_now, _surface_checks, _surface_events, _tree
from .taints import _taints
from .executor import VerifyExecutor
from .workload import SLOT, VActor, digest

__all__ = ["run_plan", "REFERENCE_SLACK", "PUT_TRIES", "PUT_PAUSE", "REPORT_SLACK"]


# A fault-free run must finish within this much virtual time after its last
# submission: nothing in a fault-free run waits for a timeout (the slowest
# legitimate cases -- queues of 50 ms tasks on one CPU, evicted inputs being
# rebuilt -- take about 1.3 s over 150 seeds).
REFERENCE_SLACK = 3.0


def _disturbed(cluster: SimCluster, executor: VerifyExecutor, plan: SeedPlan, actors: dict, faults: bool) -> set[str]:
    """The actors whose calls a fault may have touched: each one that ran
    on more than one worker (a restart), is not alive at the end of the
    liveness phase (it died, or restarts ran out), or that the plan kills."""
    w = plan.workload
    killed = {w.actors[i].key for _, i in plan.faults.actor_kills} if faults else set()
    out = set()
    for a in w.actors:
        h = actors.get(a.key)
        if a.kill_at is not None or a.key in killed or h is None:
            out.add(a.key)
            continue
        row = cluster.gcs_row("actors", h.actor_id)
        if (row is None or row.incarnation > 0 or row.state is not ActorState.ALIVE
                or len(executor.instances.get(h.actor_id, ())) > 1):
            out.add(a.key)
    return out


@contextlib.contextmanager
def _gcs_ledger():
    """Record every GCS commit and every acknowledged write during a run."""
    ledger = C.GcsLedger()
    orig_commit = GcsReplica._commit
    orig_reply = GcsClient._on_reply

    def commit(self, e, sid):
        ledger.on_commit(self.replica_id, self.shard, e.seq, e.client, e.req_id)
        return orig_commit(self, e, sid)

    def on_reply(self, ev, now):
        r = self.outstanding.get(ev.req_id)
        if r is not None and isinstance(r.request, Op):
            ledger.on_ack(r.shard, self.address, ev.req_id)
        return orig_reply(self, ev, now)

    GcsReplica._commit = commit
    GcsClient._on_reply = on_reply
    try:
        yield ledger
    finally:
        GcsReplica._commit = orig_commit
        GcsClient._on_reply = orig_reply


@contextlib.contextmanager
def _placement_log():
    """Record every start of a task or actor creation in a placement group,
    with the bundles its node holds at that moment (``C.PlacementLog``)."""
    log = C.PlacementLog()
    orig = LocalScheduler._run

    def run(self, t, wid, gpus, now, sid):
        spec = t.spec
        s = spec.scheduling
        wanted = (s.pg_id, s.bundle_index) if isinstance(s, P.InGroup) else P.requested_bundle(spec.resources)
        if wanted is not None:
            log.on_start(self.node.node_id, now, spec.display_name(), wanted, set(self.node.bundles.committed))
        if not self.bundled.is_subset_of(self.total):
            log.on_over_reserved(self.node.node_id, self.bundled, self.total)
        return orig(self, t, wid, gpus, now, sid)

    LocalScheduler._run = run
    try:
        yield log
    finally:
        LocalScheduler._run = orig


class _SealingStore(dict):
    """A simulated node's byte store that notes when each object first
    appears in it (the truth ``check_waits`` holds the node's reports to)."""

    __slots__ = ("node", "log")

    def __setitem__(self, oid, item) -> None:
        key = (self.node.address, oid)
        if key not in self.log:
            self.log[key] = self.node.cluster.kernel.now
            self.log.setdefault(oid, self.log[key])
        dict.__setitem__(self, oid, item)


@contextlib.contextmanager
def _seal_log():
    """``log[(node, oid)]``: when ``oid`` first appeared on ``node``;
    ``log[oid]``: when it first appeared anywhere."""
    log: dict[Any, float] = {}
    orig = SimNode.__init__

    def init(self, *a, **kw):
        orig(self, *a, **kw)
        store = _SealingStore(self.store)
        store.node, store.log = self, log
        self.store = store

    SimNode.__init__ = init
    try:
        yield log
    finally:
        SimNode.__init__ = orig


def _broken(res: RunResult, cluster: SimCluster, e: Exception, t0: float) -> RunResult:
    """A run stopped by a broken invariant (``validate()``, an
    ``AssertionError``) or by a machine raising: one violation, with the
    trace hash up to that point (the replay check) and the event that broke
    it (for ``story``)."""
    import traceback

    tb = traceback.extract_tb(e.__traceback__)
    where = tb[-1].filename if tb else ""
    if isinstance(e, AssertionError) and getattr(e, "sim_event", None) is not None:
        v = C.Violation("invariant", f"a state machine's validate() failed: {e}")
    elif "/verification/" in where.replace("\\", "/"):
        # the swarm's own code raised: a harness bug, not the system's
        v = C.Violation("harness", f"the swarm itself raised {type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}")
    else:
        v = C.Violation("crash", f"a machine raised {type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}")
    res.violations.append(v)
    res.broken_by = getattr(e, "sim_event", None)
    res.trace_hash = cluster.trace_hash()
    res.virtual_time = cluster.now
    res.wall = time.perf_counter() - t0
    return res


def run_plan(plan: SeedPlan, *, faults: bool = True, validate: bool = True, max_virtual: float = 40.0,
             trace: Any = "key") -> RunResult:
    """Run one seed's plan (with or without its faults) and check it."""
    t0 = time.perf_counter()
    fp = plan.faults if faults else FaultPlan()
    rng = random.Random(f"penumbra-swarm-exec-{plan.seed}")
    executor = VerifyExecutor(crash_rate=fp.worker_crash_rate, rng=rng)
    res = RunResult(plan.seed, faults, executor=executor)
    with _gcs_ledger() as ledger, _seal_log() as sealed, _placement_log() as placed:
        cluster = SimCluster(plan.layout, costs=PAPER, seed=plan.seed, executor=executor, validate=validate,
                             trace=trace)
        res.cluster = cluster
        _place_replicas(cluster, plan)
        try:
            cluster.wait_ready(timeout=10.0)
            base = cluster.now
            d = cluster.driver(DRIVER_NODE)
            if d.direct is not None:
                d.direct.answered_at = {}  # (when its direct calls' results came: see _start_wait)
            # a second driver program, if some actor calls come from it
            d1 = (cluster.driver(_caller_node(plan, list(cluster.nodes), cluster.direct.enabled))
                  if any(c.caller for a in plan.workload.actors for c in a.calls) else None)
            handles: dict[tuple[str, int], SimActor] = {}  # (actor, caller) -> that caller's handle
            keys: dict[str, ObjectId] = res.keys
            ready: dict[str, tuple] = res.results
            oid_key: dict[ObjectId, str] = {}

            def on_ready(oid, info, now):
                key = oid_key[oid]
                if info.error is not None:
                    ready[key] = ("e", info.error.kind, info.error.message if info.error.kind is ErrorKind.TASK_ERROR else "")
                    return
                found, value = d.local_value(oid)  # (a direct call's result, inline in its reply)
                if found:
                    ready[key] = ("v", value)
                    return
                node = cluster.nodes.get(d.node)
                item = node.store.get(oid) if node is not None else None
                if item is None:
                    # evicted between the reply and our read (a small store):
                    # ask again, as a real client's get does
                    d.watch([oid], on_ready)
                    return
                ready[key] = ("v", item[1])

            def watch(key: str, oid: ObjectId) -> None:
                keys[key] = oid
                oid_key[oid] = key
                res.expected.add(key)
                d.watch([oid], on_ready)

            # schedule the workload
            w = plan.workload
            actors: dict[str, Any] = {}
            calls_made: dict[str, tuple] = {}  # call key -> (its driver, its spec)
            by_name: dict[str, Any] = {}  # actor key -> the second driver's get-by-name of it
            events: list[tuple[float, int, Callable]] = []
            idx = 0
            putters = {0: d}
            own_program: set[int] = set()  # events another driver's program makes
            for p in w.puts:
                if p.node not in putters:
                    putters[p.node] = cluster.driver(list(cluster.nodes)[p.node])
                pd = putters[p.node]
                def put_now(p=p, pd=pd):
                    oid = _put(pd, p.size, digest("put", p.key), ready, p.key)
                    keys[p.key] = oid
                    if p.get_at is None:
                        watch(p.key, oid)

                def put(p=p, pd=pd, put_now=put_now):
                    if not pd.alive:  # add_remote_puts keeps puts well before their node fails
                        res.violations.append(C.Violation("harness", f"{p.key}: its driver died before the put", p.key))
                        return
                    pd._guarded(put_now, ())  # (held while pd's program is paused)
                events.append((p.at, idx, put))
                if pd is not d:
                    # another node's program: a pause of d's does not hold
                    # it up (nor does d run it, see the loop below)
                    own_program.add(idx)
                idx += 1
                if p.get_at is not None:
                    events.append((p.get_at, idx, lambda p=p: watch(p.key, keys[p.key]) if p.key in keys else None))
                idx += 1
            groups = {g.key: g for g in w.groups}
            for g in w.groups:
                entry = PlacementGroupEntry(pg_id=g.pg_id, bundles=(ResourceSet.from_dict({SLOT: 1}),) * g.bundles,
                                            strategy=g.strategy, job_id=d.job_id, nodes=("",) * g.bundles)
                events.append((g.at, idx, lambda entry=entry: d.gcs(CreatePlacementGroup(entry))))
                idx += 1
            for t in w.tasks:
                if t.node not in putters:  # a task submitted by a driver on another node
                    putters[t.node] = cluster.driver(list(cluster.nodes)[t.node])

                def submit_task(t=t, sd=putters[t.node]):
                    kw = {}
                    resources = t.resources
                    if t.group is not None:
                        pg, index = groups[t.group[0]].pg_id, t.group[1]
                        resources = P.bundle_request(resources, pg, index)
                        kw["scheduling"] = P.InGroup(pg, index)
                    spec = sd.spec(t.model, deps=[keys[k] for k in t.deps], resources=resources, name=t.key,
                                   max_retries=t.max_retries, num_returns=t.num_returns,
                                   retry_exceptions=bool(t.model.flaky), **kw)
                    sd.submit(spec)
                    for k, oid in zip(t.return_keys(), spec.return_ids):
                        watch(k, oid)
                    task_specs[t.key] = spec
                events.append((t.at, idx, submit_task))
                idx += 1
            for a in w.actors:
                def create(a=a):
                    gpu = ResourceSet.of(GPU=a.gpus) if a.gpus else ResourceSet()
                    life, placement = gpu, gpu + ResourceSet.of(CPU=1)
                    if a.group is not None:
                        life = placement = P.bundle_request(ResourceSet.from_dict({SLOT: 0.5}),
                                                            groups[a.group[0]].pg_id, a.group[1])
                    actors[a.key] = d.create_actor(VActor(a.key), cls=f"A{a.key}", max_restarts=a.max_restarts,
                                                   max_task_retries=a.max_task_retries, replay=a.replay,
                                                   checkpoint_interval=a.checkpoint_interval,
                                                   resources=life, placement=placement, name=a.name,
                                                   max_concurrency=a.max_concurrency, is_async=a.is_async)
                events.append((a.at, idx, create))
                idx += 1
                for c in a.calls:
                    def call(a=a, c=c):
                        h = actors[a.key]
                        if c.caller:
                            first = h
                            h = handles.get((a.key, c.caller))
                            if h is None:
                                h = handles[(a.key, c.caller)] = SimActor(d1, first.spec, first.creation)
                                if a.name:  # (its calls go once the driver has it by name)
                                    by_name[a.key] = _ByName(d1, a, first.actor_id, res.violations)
                        # (the second driver's calls wait for its get_actor by name;
                        # the first driver's go from its own handle: a caller's
                        # calls leave from its own process, as direct calls must)
                        late = by_name.get(a.key) if c.caller else None
                        spec = h.call(c.model, method="m", deps=[keys[k] for k in c.deps], submit=not late)
                        if late:
                            late.submit(spec)
                        watch(c.key, spec.return_ids[0])
                        calls_made[c.key] = (h.driver, spec)
                    events.append((c.at, idx, call))
                    idx += 1
                    if c.cancel_at is not None:
                        def cancel(c=c):
                            made = calls_made.get(c.key)
                            if made is not None:
                                made[0].cancel(made[1])
                        events.append((c.cancel_at, idx, cancel))
                        idx += 1
                if a.kill_at is not None:
                    events.append((a.kill_at, idx, lambda a=a: actors[a.key].kill(no_restart=True)))
                    idx += 1
            task_specs: dict[str, Any] = {}  # task key -> its spec
            idx, surface = _surface_events(w, cluster, d, keys, ready, task_specs, events, idx)
            for wp in w.waits:
                events.append((wp.at, idx, lambda wp=wp: _start_wait(wp, d, keys, res.waits, sealed, base,
                                                                     not faults)))
                idx += 1
            for at, i, fn in sorted(events, key=lambda e: (e[0], e[1])):
                if i in own_program:
                    cluster.kernel.call_at(base + at, fn)
                else:
                    cluster.kernel.call_at(base + at, d._guarded, fn, ())
            # the faults of the safety phase
            node_addrs = list(cluster.nodes)
            if faults:
                _install_faults(cluster, fp, node_addrs, base, plan, actors, d)
            _install_lost_driver(cluster, fp, base, plan, keys, res)
            end_safety = base + plan.horizon + 0.3
            cluster.run(end_safety)
            # liveness phase: lift every fault (a cut node stays cut until its
            # own heal: healing it early would turn a cut the head must notice
            # into a short one that only loses messages)
            net = cluster.kernel.network
            net.remove_fault()
            for a, node in list(cluster.nodes.items()):
                if node.alive:
                    cluster.kernel.slow(a, 1.0)
            executor.crash_rate = executor.blocked_crash_rate = 0.0
            total = w.size()  # every item submitted, and every one ready
            # (and the head knows every group: it may have been paused since
            # the group was made, if no item uses it; seed 2667)
            groups_known = lambda: all(g.pg_id in cluster.head.placement.groups for g in w.groups)  # noqa: E731
            cluster.run_until(lambda: len(res.expected) == total and res.expected <= set(ready)
                              and len(res.waits) == len(w.waits) and all(o.done for o in res.waits.values())
                              and groups_known(), timeout=max_virtual)
            res.done_at = cluster.now - base
            disturbed = _disturbed(cluster, executor, plan, actors, faults)
            # What the liveness phase delivered is the answer: the kills below
            # end calls that still hang (ActorDiedError), which must not count.
            res.results = dict(ready)
            res.waits = {k: dataclasses.replace(o, ready=list(o.ready)) for k, o in res.waits.items()}
            if w.groups:
                res.violations += C.check_bundles_held_once(cluster, [g.pg_id for g in w.groups])
            names = _names_now(w, cluster, actors)
            # quiesce: kill the actors, let everything settle
            for h in actors.values():
                h.kill(no_restart=True)
            # and remove the placement groups: their reservations must go
            for g in w.groups:
                d.gcs(RemovePlacementGroup(g.pg_id))
            cluster.run_for(2.0)
            res.virtual_time = cluster.now - base
            res.trace_hash = cluster.trace_hash()
            # checks that need the live cluster
            res.violations += C.check_liveness(res.expected, res.results, C.pending_task_rows(
                cluster, [tid for t in w.tasks if t.key in keys for tid in _tree(keys[t.key].task_id, t.model)]))
            res.violations += C.check_resources(cluster, actors_gone=True)
            res.violations += C.check_waits(w.waits, res.waits)
            if w.groups or placed.violations:
                res.violations += C.check_placement(placed, cluster, [g.pg_id for g in w.groups])
            meta = {h.actor_id: (k, next(a for a in w.actors if a.key == k).max_task_retries,
                                 next(a for a in w.actors if a.key == k).replay) for k, h in actors.items()}
            res.violations += C.check_actor_order(executor.actor_log, meta)
            tails = {}
            for shard, view in cluster.head.chain.shards.items():
                tail = view.config.tail if view.config.replicas else None
                rep = cluster.replica(tail) if tail else None
                tails[shard] = rep
            res.violations += C.check_gcs(ledger, tails)
            res.violations += _surface_checks(w, cluster, executor, res, surface, faults)
            res.violations += C.check_names([(a.key, a.name, actors[a.key].actor_id) for a in w.actors
                                             if a.name and a.key in actors], names, cluster,
                                            [b for b in by_name.values() if not faults and not b.plan.kill_at])
            if not faults:
                res.violations += C.check_no_rescues(cluster)
            res.violations += [C.Violation("direct-endpoints", what) for what in cluster.direct.ignored]
            res.violations += C.check_quiet_cluster(cluster, executor, [(t.key, keys[t.key].task_id, t.max_retries) for t in w.tasks if t.key in keys], {k: h.actor_id for k, h in actors.items()}, {o.task_id: k for k, o in keys.items()})
            res.violations += C.check_derived_values(w, res.results, executor.actor_log, keys)
        except Exception as e:  # validate() broke, or a machine raised
            return _broken(res, cluster, e, t0)
    # attempts a task used: its executions, or the GCS's count where the node
    # running (or queueing) it died and it was handed on without running
    used = dict(executor.executions)
    for t in w.tasks:
        if t.key in keys:
            tid = keys[t.key].task_id
            row = cluster.gcs_row("tasks", tid)
            if row is not None:
                used[tid] = max(used.get(tid, 0), row.attempt + 1)
    res.taints = _taints(plan, faults, used, keys, disturbed)
    # bounded restarts: an actor never restarts more than max_restarts times
    # (each restart is a new incarnation in its GCS row)
    for k, h in actors.items():
        a = next(a for a in w.actors if a.key == k)
        row = cluster.gcs_row("actors", h.actor_id)
        n = row.incarnation - getattr(cluster, "swarm_fences", {}).get(h.actor_id, 0) if row is not None else 0
        if a.max_restarts >= 0 and n > a.max_restarts:
            res.violations.append(C.Violation("actor-restarts", f"actor {k} restarted {n} times, more than max_restarts={a.max_restarts}", k))
    if not faults and res.done_at > plan.horizon + REFERENCE_SLACK:
        res.violations.append(C.Violation("timeliness", f"the fault-free run took {res.done_at:.2f}s of virtual time to finish work "
                                                        f"submitted over {plan.horizon:.2f}s (allowed: {REFERENCE_SLACK}s more): something stalled"))
    res.wall = time.perf_counter() - t0
    return res


# The workload's program retries a put that finds the store full (as a user
# program catching ObjectStoreFullError would), for up to PUT_TRIES x
# PUT_PAUSE virtual seconds, then records the error.  It puts the same
# object again, so the refs it already handed to later items stay valid.
PUT_TRIES, PUT_PAUSE = 40, 0.05


def _caller_node(plan: SeedPlan, nodes: list[str], direct: bool) -> str:
    """Where the second driver program runs: a node the plan never fails
    (crash, cut off, long pause), the first such after node 0, so that its
    direct calls to actors on node 0 cross the network (and a cut between
    them, ``FaultPlan.direct_cuts``, reaches them); node 0 if every other
    one fails, or if its calls take the routed path (direct calls off, or a
    ``replay=True`` actor): with the router and the host on two nodes, a
    call the router fails after its actor was killed may still run and be
    recorded on the host's node, and the router's error row, landing
    second, leaves bytes the object table lists nowhere (seed 163 with
    replay actors, seed 30 with direct calls off, this rule lifted; not
    fixed yet)."""
    if not direct or any(a.replay and any(c.caller for c in a.calls) for a in plan.workload.actors):
        return DRIVER_NODE
    failing = plan.faults.first_failures()
    for i in range(1, len(nodes)):
        if i not in failing:
            return nodes[i]
    return DRIVER_NODE


def _put(pd, size: int, value: Any, ready: dict, key: str) -> ObjectId:
    tries = 0

    def done(msg) -> None:
        nonlocal tries
        if type(msg) is not PutFailed or not pd.alive:
            return
        tries += 1
        if tries < PUT_TRIES:
            pd.kernel.call_after(PUT_PAUSE, lambda: pd.alive and pd.put(size, value, done, oid=oid))
        else:
            ready[key] = ("e", ErrorKind.OBJECT_STORE_FULL, "")

    oid = pd.put(size, value, done)
    return oid


# In a fault-free run, how long a node may take to report an object that is
# ready (a message or two; through the GCS for a locate-only wait).
REPORT_SLACK = 0.02


def _start_wait(wp, d, keys: dict, outcomes: dict, sealed: dict, base: float, complete: bool = False) -> None:
    """``wait(refs, num_returns, timeout, fetch_local)``, as a client does it:
    a watch (holding reports until ``num_returns`` when nothing can cut the
    wait short, like ``Runtime.report_need``), a timer for the timeout, and
    the watch cancelled once the wait has its answer.

    ``complete``: a fault-free run, where a wait that times out must have
    been told of every ref that was ready (local, if it fetches)
    ``REPORT_SLACK`` before it gave up: ``WaitOutcome.missed``."""
    kernel = d.kernel
    oids = [keys[k] for k in wp.refs]
    # d's direct calls: result id -> when the reply came (answered here, by
    # the actor's worker, not by the node)
    answered = d.direct.answered_at if d.direct is not None else {}
    mine = d.direct.caller.calls if d.direct is not None else {}
    direct = {oid for oid in oids if oid in answered or oid.task_id in mine}
    key_of = dict(zip(oids, wp.refs))
    o = outcomes[wp.key] = C.WaitOutcome(started=kernel.now - base)
    rid = 0

    def finish(timed_out: bool) -> None:
        o.done, o.timed_out, o.finished = True, timed_out, kernel.now - base
        d.cancel_watch(rid)
        if timed_out and complete:
            by = kernel.now - REPORT_SLACK
            nodes = d.cluster.nodes
            stores = [nodes[d.node].store] if wp.fetch else [n.store for n in nodes.values() if n.alive]
            for oid, k in key_of.items():
                if oid in direct:  # (a direct call's result: ready here when its reply came)
                    at = answered.get(oid)
                    if k not in o.ready and at is not None and at <= by:
                        o.missed.append(k)
                    continue
                at = sealed.get((d.node, oid) if wp.fetch else oid)
                if k not in o.ready and at is not None and at <= by and any(oid in s for s in stores):
                    o.missed.append(k)

    def on_ready(oid, info, now) -> None:
        if o.done:
            return
        k = key_of[oid]
        if k in o.ready:
            o.twice.append(k)
            return
        o.ready.append(k)
        if info.error is None:
            at = answered.get(oid) if oid in direct else sealed.get((d.node, oid) if wp.fetch else oid)
            if at is None or at > now:
                o.early.append(k)
        if len(o.ready) >= wp.num_returns:
            finish(False)

    need = Runtime.report_need(wp.num_returns, wp.timeout)
    rid = d.watch(oids, on_ready, fetch=wp.fetch, record=False, need=need)
    if wp.timeout is not None and not o.done:
        kernel.call_at(kernel.now + wp.timeout, lambda: None if o.done else finish(True))
