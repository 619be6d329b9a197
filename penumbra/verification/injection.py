"""Installing a plan's faults on a simulated cluster.

``_install_faults`` turns a ``FaultPlan`` into kernel events at their
virtual times (crashes, cuts, pauses, late heartbeats, slow nodes, lossy
and delaying links), ``_install_new_faults`` the later kinds (a second
replica fault inside a rejoin's catch-up window, heartbeat storms, workers
dying blocked in ``get``, head crashes answered by a recovered head), and
``_install_lost_driver`` a driver that loses its node while it waits.

Every fault stays inside the fault model: ``_place_replicas`` makes GCS
replicas live and die with their nodes, and it and
``_guard_replica_crashes`` skip (noting it in the trace) any fault that
would take the last live replica holding every acknowledged write of a
shard (``_keeps_a_copy``): a chain of k survives k-1 failures, never the
loss of every copy.
"""

from __future__ import annotations

import random

from ..sim.cluster import SimCluster
from . import checkers as C
from .plans import LONG_PAUSE, FaultPlan, SeedPlan
from .reports import RunResult


def _install_faults(cluster: SimCluster, fp: FaultPlan, nodes: list[str], base: float, plan: SeedPlan,
                    actors: dict | None = None, driver=None) -> None:
    k = cluster.kernel
    for at, i in fp.actor_kills:
        key = plan.workload.actors[i].key

        def kill(key=key):
            h = (actors or {}).get(key)
            if h is not None:
                h.kill(no_restart=False)  # restarts if max_restarts allows
        k.call_at(base + at, driver._guarded, kill, ())
    for at, i, restart in fp.crashes:
        addr = nodes[i]
        k.call_at(base + at, cluster.crash_node, addr, restart)
    for at, shard, i, restart in fp.replica_crashes:
        chain = plan.layout.chains()[shard]
        addr = chain.replicas[i]

        def crash_replica(addr=addr, shard=shard, restart=restart):
            view = _chain_master(cluster).shards[shard]
            live = [r for r in view.config.replicas if cluster.replica(r) is not None]
            if addr in live and len(live) > 1:  # never the last replica of a chain
                cluster.crash_replica(addr, restart_after=restart)
        k.call_at(base + at, crash_replica)
    for at, i, duration, drop, way in fp.direct_cuts:
        def direct_cut(key=plan.workload.actors[i].key, duration=duration, drop=drop, way=way):
            h = (actors or {}).get(key)
            where = [s.node.address for s in cluster.direct.served.values()
                     if h is not None and s.inbox.actor_id == h.actor_id]
            callers = sorted(cluster.drivers)
            if callers and where:  # (where its live worker is now)
                if way != "replies":
                    cluster.link_fault(callers, where, drop=drop, duration=duration)
                if way != "calls":
                    cluster.link_fault(where, callers, drop=drop, duration=duration)
        k.call_at(base + at, direct_cut)
    for at, i, duration in fp.isolations:
        addr = nodes[i]

        def isolate(addr=addr, duration=duration):
            if cluster.nodes[addr].alive:
                cluster.isolate(addr, duration=duration)
                fenced_watch.add(addr)
        k.call_at(base + at, isolate)

    # a cut node that the head declared dead stops (fencing) whenever it
    # hears so; a node of its shape then joins, as an operator would add one
    fenced_watch: set[str] = set()

    def on_crash(kernel, address: str) -> None:
        if address in fenced_watch:
            fenced_watch.discard(address)
            kernel.call_after(0.05, lambda: cluster.add_node(like=address))
    k.on_crash.append(on_crash)
    for at, who, i, duration, timers_first in fp.pauses:
        def pause(who=who, addr=nodes[i], duration=duration, timers_first=timers_first):
            target = {"head": "head", "driver": driver.address if driver is not None else None}.get(who, addr)
            if target is None or not k.is_alive(target):
                return
            cluster.pause(target, duration, timers_first)
            if who == "node" and duration >= LONG_PAUSE:
                fenced_watch.add(addr)  # declared dead, it stops when it hears so
        k.call_at(base + at, pause)
    for at, i, late, duration in fp.heartbeat_delays:
        def delay_heartbeats(addr=nodes[i], late=late, duration=duration):
            if cluster.nodes[addr].alive:
                cluster.link_fault([addr], ["head"], delay=late, duration=duration)
        k.call_at(base + at, delay_heartbeats)
    for at, i, factor, duration in fp.slow:
        def slow(addr=nodes[i], factor=factor, duration=duration):
            if cluster.nodes[addr].alive:
                cluster.slow(addr, factor, duration)
        k.call_at(base + at, slow)
    _install_new_faults(cluster, fp, base, plan)
    replicas = list(cluster.replicas)
    if fp.gcs_drop or fp.gcs_duplicate:
        cluster.link_fault(None, replicas, drop=fp.gcs_drop, duplicate=fp.gcs_duplicate)
    if fp.delay:
        cluster.link_fault(None, None, delay=fp.delay)


def _install_new_faults(cluster: SimCluster, fp: FaultPlan, base: float, plan: SeedPlan) -> None:
    """Second replica crashes inside a rejoin's catch-up window, heartbeat
    storms, and workers dying while blocked in ``get`` (see their draws)."""
    k = cluster.kernel
    ex = cluster.executor
    _install_head_crashes(cluster, fp, base, plan)
    if fp.blocked_crash_rate:
        ex.blocked_crash_rate = fp.blocked_crash_rate
        ex.block_rng = random.Random(f"penumbra-swarm-blocked-exec-{plan.seed}")
    for at, stall, pause, lead, timers_first in fp.storms:
        k.call_at(base + at, lambda stall=stall: cluster.stall([a for a, n in cluster.nodes.items() if n.alive],
                                                               ["head"], stall))
        if pause:
            k.call_at(base + at + lead, cluster.pause, "head", pause, timers_first)
    if not fp.rejoin_crashes:
        return
    master = cluster.head.chain
    armed = list(fp.rejoin_crashes)
    # what the second faults did: (kind, target, joiner, joiner caught up?)
    done: list[tuple[str, str, str, bool]] = []
    cluster.rejoin_faults = done

    def alive(r: str) -> bool:
        return cluster.replica(r) is not None

    def caught_up(joiner: str, members: tuple[str, ...]) -> bool:
        return joiner in members and master.caught_up.get(joiner, True)

    def second_crash(shard: int, joiner: str, whom: str, restart: float) -> None:
        members = master.shards[shard].config.replicas
        if whom == "pause":
            # a caught-up member stands still (the joiner's predecessor, or the head)
            up = [r for r in members if r != joiner and alive(r) and master.caught_up.get(r, True)]
            i = members.index(joiner) if joiner in members else 0
            target = members[i - 1] if i > 0 and members[i - 1] in up else (up[0] if up else None)
            if target is not None:
                cluster.pause(target, restart, True)
                done.append(("pause", target, joiner, caught_up(joiner, members)))
            return
        if whom == "joiner":
            target = joiner
        else:
            # the joiner's predecessor if it is a member, else the head
            others = [r for r in members if r != joiner]
            i = members.index(joiner) if joiner in members else 0
            target = members[i - 1] if i > 0 else (others[0] if others else None)
        if target is None or not alive(target):
            return
        # the fault model: some member that holds every acknowledged write
        # (caught up, or an original one) lives on
        if any(r not in (target, joiner) and alive(r) and master.caught_up.get(r, True) for r in members):
            cluster.crash_replica(target, restart_after=restart)
            done.append(("crash", target, joiner, caught_up(joiner, members)))

    orig = master.handle

    def handle(event, now):
        cmds = orig(event, now)
        kind = type(event).__name__
        if armed and kind in ("ReplicaJoin", "ReplicaReady"):
            for entry in list(armed):
                shard, stage, whom, delay, restart = entry
                if event.shard == shard and (kind == "ReplicaJoin") == (stage == "join"):
                    armed.remove(entry)
                    k.call_after(delay, second_crash, shard, event.replica, whom, restart)
        return cmds
    master.handle = handle


def _install_lost_driver(cluster: SimCluster, fp: FaultPlan, base: float, plan: SeedPlan, keys: dict,
                         res: RunResult) -> None:
    """Run ``fp.lost_driver``: its driver, its requests and its loss, and
    check (when the safety phase ends) that every request ended, once."""
    if not fp.lost_driver:
        return
    from ..sim.cluster import SimWaiter

    at, node_index, how, requests = fp.lost_driver
    if how == "crash" and not any(c[:2] == (at, node_index) for c in fp.crashes):
        return  # (a shrunk plan without the crash it was drawn with)
    k = cluster.kernel
    addr = list(cluster.nodes)[node_index]
    drv = cluster.driver(addr)
    made: list[C.DriverRequest] = []

    def make(i: int, t: float, kind: str, refs: tuple, num: int, timeout: float | None) -> None:
        oids = [keys[r] for r in refs if r in keys]  # (a paused main driver may not have made them yet)
        if not oids:
            return
        r = C.DriverRequest(f"lost-driver-{i}", kind, k.now - base)

        def end(how: str) -> None:
            r.ends.append((k.now - base, how))

        waiter = SimWaiter(done=lambda _: end("value"), timeout=lambda _: end("timeout"), fail=lambda why, _: end(why))
        made.append(r)
        if kind == "get":
            drv.get(oids, waiter, timeout=timeout)
        else:
            drv.wait(oids, min(num, len(oids)), waiter, timeout=timeout, fetch=False)

    for i, (t, kind, refs, num, timeout) in enumerate(requests):
        k.call_at(base + t, make, i, t, kind, refs, num, timeout)
    if how == "cut":
        k.call_at(base + at, drv.cut, "the swarm cut the driver's connection")
    # (a "crash" is the plan's own crash of that node: the driver is told as the node goes)

    def check() -> None:
        if how == "crash" and cluster.nodes[addr].alive:
            return  # (the crash was not applied: see _place_replicas)
        res.violations.extend(C.check_lost_driver(made, at, drv.machine))

    k.call_at(base + plan.horizon + 0.25, check)


def _chain_master(cluster: SimCluster):
    """The chain master that knows the chains now: the head's, or while
    there is no head (crashed, or still recovering) its predecessor's, whose
    view is the last one the replicas were given."""
    head = cluster.head
    if head is None or getattr(head, "recovering", None) is not None:
        return getattr(cluster, "swarm_last_master", None) or (head.chain if head is not None else None)
    return head.chain


def _keeps_a_copy(cluster: SimCluster, gone: set[str]) -> bool:
    """Whether every shard with a replica in ``gone`` keeps a live member
    outside it that holds every acknowledged write (caught up, or an
    original member; not on a node cut off or stopped long): the fault
    model's condition for taking ``gone`` down (a chain of k survives k-1
    failures, never the loss of every copy)."""
    master = _chain_master(cluster)
    if master is None:
        return True
    gone = gone | getattr(cluster, "swarm_cut", set())

    def full(r: str) -> bool:
        # (a replica restarted empty is joining, whatever the master's view
        # of it, which counts an original member caught up)
        m = cluster.replica(r)
        return m is not None and not m.joining and master.caught_up.get(r, True)

    for view in master.shards.values():
        members = view.config.replicas
        if gone & set(members) and not any(r not in gone and full(r) for r in members):
            return False
    return True


def _place_replicas(cluster: SimCluster, plan: SeedPlan) -> None:
    """What the simulator does with ``replica_hosts`` (a replica dies with
    its node and restarts empty on its replacement), and more, as the
    replica shares its node's process: it shares the node's machine on the
    network (a cut of the node cuts it too) and stands still when the node
    does.  Faults of the plan that would take down the last replica holding
    every acknowledged write of a shard (``_keeps_a_copy``) are not applied
    (noted in the trace)."""
    if not plan.layout.replica_hosts:
        return
    k = cluster.kernel
    for r, node in plan.layout.replica_hosts.items():
        k.network.place(r, machine=node)  # (before anything was sent: no link is made yet)
    crash_node, isolate, pause = cluster.crash_node, cluster.isolate, cluster.pause

    def on(node: str) -> set[str]:
        return {r for r, n in cluster.replica_node.items() if n == node}

    def crashed(address: str, restart_after: float | None = None) -> bool:
        # (a plan's crash always restarts; fencing stops the node as it must)
        if restart_after is not None and k.is_alive(address) and not _keeps_a_copy(cluster, on(address)):
            k.note(address, "swarm: crash not applied (it would take the last full copy of a GCS shard)")
            return False
        return crash_node(address, restart_after)

    cluster.swarm_cut = set()  # replicas on a node cut off or stopped long: no copy to count on

    def unreachable(mine: set[str], duration: float | None) -> None:
        mine = mine - cluster.swarm_cut
        cluster.swarm_cut |= mine
        if duration is not None:
            k.call_after(duration, lambda: cluster.swarm_cut.difference_update(mine))

    def cut(address: str, duration: float | None = None) -> int:
        mine = on(address) if address in cluster.nodes else set()
        if mine and not _keeps_a_copy(cluster, mine):
            k.note(address, "swarm: cut not applied (it would take the last full copy of a GCS shard)")
            return -1
        unreachable(mine, duration)
        return isolate(address, duration)

    def paused(address: str, duration: float, timers_first: bool = True) -> bool:
        mine = on(address) if address in cluster.nodes else set()
        if mine and duration >= LONG_PAUSE and not _keeps_a_copy(cluster, mine):
            k.note(address, "swarm: long pause not applied (it would take the last full copy of a GCS shard)")
            return False
        ok = pause(address, duration, timers_first)
        if ok:
            if duration >= LONG_PAUSE:
                unreachable(mine, duration)
            for r in sorted(mine):
                pause(r, duration, timers_first)
        return ok

    cluster.crash_node, cluster.isolate, cluster.pause = crashed, cut, paused
    _guard_replica_crashes(cluster)


def _guard_replica_crashes(cluster: SimCluster) -> None:
    """A replica crash of the plan is applied only if its shard keeps a
    full copy (``_keeps_a_copy``; the older seeds' rule, "never the last
    live replica", counts replicas still catching up too)."""
    if getattr(cluster, "swarm_guarded", False):
        return
    cluster.swarm_guarded = True
    crash_replica = cluster.crash_replica

    def guarded(address: str, restart_after: float | None = None) -> bool:
        if cluster.replica(address) is not None and not _keeps_a_copy(cluster, {address}):
            cluster.kernel.note(address, "swarm: replica crash not applied (the last full copy of its shard)")
            return False
        return crash_replica(address, restart_after)
    cluster.crash_replica = guarded


def _install_head_crashes(cluster: SimCluster, fp: FaultPlan, base: float, plan: SeedPlan) -> None:
    """Run ``fp.head_crashes`` (see ``_draw_head_crash``): ``crash_head``,
    then ``recover_head`` from the replicas the operator names.  A crash
    that would take the last full copy of a shard with the head's host
    (its replicas) is not applied."""
    from ..core.layout import replica_address

    k = cluster.kernel
    if fp.head_crashes:
        _guard_replica_crashes(cluster)
    for at, down, how, replica in fp.head_crashes:
        def crash() -> None:
            if not k.is_alive("head") or cluster.head.recovering is not None:
                return
            if not _keeps_a_copy(cluster, set(cluster.replicas_with_head())):
                k.note("head", "swarm: head crash not applied (it would take the last full copy of a GCS shard)")
                return
            cluster.swarm_last_master = cluster.head.chain
            cluster.crash_head()

        def recover(how=how) -> None:
            if k.is_alive("head"):
                return
            master = _chain_master(cluster)
            if how == "one":
                # one surviving member of each shard's last config that is
                # not still joining (the chain's first such): what an
                # operator would point at
                def full(r: str) -> bool:
                    m = cluster.replica(r)
                    return m is not None and not m.joining and m.config is not None

                names = [next((r for r in v.config.replicas if full(r)), v.config.replicas[0])
                         for _, v in sorted(master.shards.items())]
            elif how == "all":
                names = list(cluster.replicas)
            else:
                names = None  # every replica alive now
            cluster.recover_head(names)
            # a recovered head fences the restarts (and creations) its
            # predecessor may have begun with a new incarnation, spending no
            # restart: count them, so that actor-restarts does not take them
            # for restarts
            fences = cluster.__dict__.setdefault("swarm_fences", {})
            actors = cluster.head.actors
            fence = actors._fence_and_place

            def fenced(e, now, sid):
                fences[e.spec.actor_id] = fences.get(e.spec.actor_id, 0) + 1
                return fence(e, now, sid)
            actors._fence_and_place = fenced

        k.call_at(base + at, crash)
        k.call_at(base + at + down, recover)
        if replica:
            shard, i, into, after = replica

            def crash_replica(addr=replica_address(shard, i), after=after) -> None:
                if cluster.replica(addr) is not None:
                    cluster.crash_replica(addr, restart_after=after)
            k.call_at(base + at + into, crash_replica)
