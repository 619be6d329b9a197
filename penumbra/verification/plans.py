"""A swarm seed's plan: the cluster, the workload and the faults it draws.

``plan_seed(seed)`` draws everything a run does from the seed alone: the
cluster's shape (nodes, CPUs, custom resources, GPUs, GCS shards and chain
length, store capacity, where the replicas live), the workload
(``workload.generate`` and the ``add_*`` surfaces) and the fault schedule
(``FaultPlan``: crashes, cuts, pauses, storms, head crashes ...).  Each
later kind of draw takes its own generator (``random.Random(f"penumbra-
swarm-<kind>-{seed}")``), so that adding one leaves every other seed's plan
what it was; the swarm's trace hashes depend on that.

A plan is plain data (printable, comparable, shrinkable): ``runner``
executes it, ``injection`` turns its faults into events of the simulated
cluster, ``strategies`` draws plans from Hypothesis primitives instead.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

from ..core.gcs import GcsTiming
from ..core.layout import ClusterLayout, NodeShape, node_address
from ..core.scheduler import SchedulerConfig
from ..core.specs import ResourceSet
from .workload import (CUSTOM, GPUS_PER_NODE, LARGE_SIZES, SLOT, SLOTS_PER_NODE, STORE_SIZES, Workload,
                       add_actor_kinds, add_burst, add_callers, add_cancels, add_flaky, add_fractional_gpus, add_frees,
                       add_gpus, add_grandchildren, add_groups, add_jobs, add_multi_returns, add_remote_puts,
                       add_task_cancels, add_waits, generate)

__all__ = ["FaultPlan", "SeedPlan", "plan_seed", "seen_cuts", "unstacked_silences", "LONG_PAUSE", "DRIVER_NODE",
           "REMOTE_PUT_RECORDED_IN", "HEAD_CRASH_RATE"]


# The node the swarm's drivers run on (node 0 never crashes or is cut off).
# One string object for every module that names it: the trace hash pickles
# the run's records, and pickle writes a string it has seen in the same
# chunk as a reference to it, so whether two records name the driver's
# node with one object or with two equal ones shows in the hash.
DRIVER_NODE = "node:0"

# A node paused at least this long may be declared dead (the swarm's
# node_timeout is 0.4 s) and fenced; shorter node pauses (drawn up to 0.25 s)
# must not cost it anything.
LONG_PAUSE = 0.35


@dataclass(frozen=True)
class FaultPlan:
    """The faults of one seed, as data (printable, shrinkable)."""

    crashes: tuple[tuple[float, int, float], ...] = ()  # (time, node index, restart after)
    replica_crashes: tuple[tuple[float, int, int, float], ...] = ()  # (time, shard, index, restart after)
    isolations: tuple[tuple[float, int, float], ...] = ()  # (time, node index, duration)
    gcs_drop: float = 0.0
    gcs_duplicate: float = 0.0
    delay: float = 0.0
    slow: tuple[tuple[float, int, float, float], ...] = ()  # (time, node index, factor, duration)
    worker_crash_rate: float = 0.0
    actor_kills: tuple[tuple[float, int], ...] = ()  # (time, actor index): kill, allowing a restart
    # (time, "head" | "node" | "driver", node index (0 otherwise), duration, timers first on resume)
    pauses: tuple[tuple[float, str, int, float, bool], ...] = ()
    # (time, node index, up to this much extra delay, duration): its messages to the head come late
    heartbeat_delays: tuple[tuple[float, int, float, float], ...] = ()
    # (shard, "join" | "ready", "joiner" | "other" | "pause", delay, restart
    # after or pause): when a replica of the shard rejoins (its ReplicaJoin, or
    # its ReplicaReady: appended, still catching up), a second replica crash
    # ``delay`` later, inside the catch-up window: the joiner itself, or a
    # member (a caught-up one lives on); or a caught-up member's pause
    rejoin_crashes: tuple[tuple[int, str, str, float, float], ...] = ()
    # (time, stall, head pause (0: none), pause starts this long into the
    # stall, timers first on resume): every node's messages to the head
    # stall, then arrive in one burst (a heartbeat storm)
    storms: tuple[tuple[float, float, float, float, bool], ...] = ()
    # the chance that a nested task's worker dies while blocked in ``get``
    # on its children (or right after, running on CPU debt)
    blocked_crash_rate: float = 0.0
    # a driver that loses its node while it waits (see _draw_lost_driver):
    # (loss time, node index, "crash" | "cut", ((time, "get" | "wait", refs, num_returns, timeout), ...))
    lost_driver: tuple = ()
    # (swarm-placement) the head host crashes (see _draw_head_crash):
    # (time, down for, recover from "all" | "live" | "one", a replica crash
    # while it is down: () or (shard, index, this long into the downtime,
    # restart after))
    head_crashes: tuple[tuple[float, float, str, tuple], ...] = ()
    # (simdirect, issue 16) (time, actor index, duration, drop rate, "both" |
    # "replies" | "calls"): the links between the driver programs and the
    # machine of the actor's worker lose messages (both ways, or only one),
    # which only the direct calls' connections to actor workers there use
    # (each loss breaks its connection: penumbra.sim.direct).  Replies lost
    # to calls that ran make the callers send those calls again.
    direct_cuts: tuple[tuple[float, int, float, float, str], ...] = ()

    def items(self) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = [("crash", c) for c in self.crashes]
        out += [("actor_kill", c) for c in self.actor_kills]
        out += [("replica", c) for c in self.replica_crashes]
        out += [("isolate", c) for c in self.isolations]
        out += [("slow", c) for c in self.slow]
        out += [("pause", c) for c in self.pauses]
        out += [("heartbeat_delay", c) for c in self.heartbeat_delays]
        out += [("rejoin_crash", c) for c in self.rejoin_crashes]
        out += [("storm", c) for c in self.storms]
        out += [("head_crash", c) for c in self.head_crashes]
        out += [("direct_cut", c) for c in self.direct_cuts]
        for name in ("gcs_drop", "gcs_duplicate", "delay", "worker_crash_rate", "blocked_crash_rate", "lost_driver"):
            if getattr(self, name):
                out.append((name, getattr(self, name)))
        return out

    @classmethod
    def from_items(cls, items) -> "FaultPlan":
        names = {"crash": "crashes", "replica": "replica_crashes", "isolate": "isolations", "slow": "slow",
                 "actor_kill": "actor_kills", "pause": "pauses", "heartbeat_delay": "heartbeat_delays",
                 "rejoin_crash": "rejoin_crashes", "storm": "storms", "head_crash": "head_crashes",
                 "direct_cut": "direct_cuts"}
        kw: dict[str, Any] = {v: [] for v in names.values()}
        for name, v in items:
            if name in names:
                kw[names[name]].append(v)
            else:
                kw[name] = v
        for k in names.values():
            kw[k] = tuple(sorted(kw[k]))
        return cls(**kw)

    def describe(self) -> str:
        return "; ".join(f"{n} {v}" for n, v in self.items()) or "no faults"

    def first_failures(self) -> dict[int, float]:
        """Node index -> when it first crashes, is cut off or is paused long
        enough to be declared dead (and so loses its store)."""
        out: dict[int, float] = {}
        for at, i, _ in sorted(self.crashes + self.isolations + self.long_node_pauses()):
            out.setdefault(i, at)
        return out

    def long_node_pauses(self) -> tuple[tuple[float, int, float], ...]:
        """``(time, node index, duration)`` of the node pauses long enough
        (``LONG_PAUSE``) that the head may declare the node dead."""
        return tuple((at, i, d) for at, who, i, d, _ in self.pauses if who == "node" and d >= LONG_PAUSE)


@dataclass(frozen=True)
class SeedPlan:
    seed: int
    layout: ClusterLayout
    workload: Workload
    faults: FaultPlan
    horizon: float

    def describe(self) -> str:
        shapes = ", ".join(str(s.resources.to_dict()) for s in self.layout.nodes)
        return (f"seed {self.seed}: {len(self.layout.nodes)} nodes [{shapes}], {self.layout.gcs_shards} GCS "
                f"shard(s) x {self.layout.chain_length} replica(s)"
                + (f" (on nodes: {self.layout.replica_hosts})" if self.layout.replica_hosts else "")
                + f"; workload: {self.workload.describe()}; "
                f"faults: {self.faults.describe()}")


def plan_seed(seed: int) -> SeedPlan:
    """Draw a cluster, a workload and a fault mix from ``seed``."""
    rng = random.Random(f"penumbra-swarm-{seed}")
    n = rng.randint(2, 5)
    custom = (CUSTOM,) if rng.random() < 0.5 else ()
    store = rng.choice(STORE_SIZES)
    shapes = []
    for i in range(n):
        res = {"CPU": rng.choice((1, 2, 2, 4))}
        if custom and i in (1, n - 1):
            res[CUSTOM] = 2
        shapes.append(NodeShape(ResourceSet.from_dict(res), store))
    chain = rng.choice((1, 2, 2, 3))
    layout = ClusterLayout(
        nodes=tuple(shapes), gcs_shards=rng.choice((1, 1, 2, 3)), chain_length=chain,
        heartbeat_interval=0.05, node_timeout=0.4, gcs_retry_after=0.05,
        # (GCS replica heartbeats at 20 ms rather than Figure 10a's 5 ms: the
        # same protocol, a quarter of the timer events per virtual second)
        gcs_timing=GcsTiming(heartbeat_interval=0.02, heartbeat_timeout=0.08, resend_after=0.04),
    )
    horizon = round(rng.uniform(0.3, 1.2), 3)
    special_cpus = [s.resources.get("CPU") for s in shapes if s.resources.get(CUSTOM)]
    workload = generate(rng, horizon=horizon, max_tasks=rng.choice((10, 25, 40)), custom=custom,
                        large=rng.choice(LARGE_SIZES),
                        max_cpu=max(s.resources.get("CPU") for s in shapes),
                        custom_cpu=min(special_cpus) if special_cpus else 1)
    # GPUs on a third of the seeds, drawn from their own generator so that
    # the rest of each seed's plan is what it was before GPUs came in.
    # Node 0 never crashes or is cut off: a GPU node always lives.
    grng = random.Random(f"penumbra-swarm-gpus-{seed}")
    if grng.random() < 0.3:
        gpu_nodes = {0, n - 1} if grng.random() < 0.5 else {0}
        shapes = [dataclasses.replace(s, resources=s.resources + ResourceSet.of(GPU=GPUS_PER_NODE)) if i in gpu_nodes else s
                  for i, s in enumerate(shapes)]
        layout = dataclasses.replace(layout, nodes=tuple(shapes))
        workload = add_gpus(workload, grng, cpu_cap=min(shapes[i].resources.get("CPU") for i in gpu_nodes))
    layout, workload = _draw_fractional_gpus(layout, workload, random.Random(f"penumbra-swarm-fractional-gpus-{seed}"))
    # Waits too, from their own generator (the rest of the plan is as before).
    workload = add_waits(workload, random.Random(f"penumbra-swarm-waits-{seed}"), horizon)
    workload = add_callers(workload, random.Random(f"penumbra-swarm-callers-{seed}"))
    workload = add_grandchildren(workload, random.Random(f"penumbra-swarm-depth-{seed}"))
    # A placement group on a quarter of the seeds (gang placement under node
    # failure), from its own generator; its nodes get SLOTs to reserve.
    prng = random.Random(f"penumbra-swarm-groups-{seed}")
    if prng.random() < 0.25:
        shapes = [dataclasses.replace(s, resources=s.resources + ResourceSet.from_dict({SLOT: SLOTS_PER_NODE}))
                  for s in layout.nodes]
        layout = dataclasses.replace(layout, nodes=tuple(shapes))
        workload = add_groups(workload, prng, n, horizon)
    workload = add_cancels(workload, random.Random(f"penumbra-swarm-cancels-{seed}"))
    faulty = rng.random() < 0.85
    crashes, replicas, isolations, slow = [], [], [], []
    if faulty:
        for _ in range(rng.choice((0, 1, 1, 2))):
            crashes.append((round(rng.uniform(0.05, horizon), 3), rng.randint(1, n - 1), round(rng.uniform(0.05, 0.6), 3)))
        if chain > 1 and rng.random() < 0.5:
            replicas.append((round(rng.uniform(0.05, horizon), 3), rng.randrange(layout.gcs_shards),
                             rng.randrange(chain), round(rng.uniform(0.05, 0.5), 3)))
        if rng.random() < 0.25:
            # longer than the heartbeat timeout: the node is declared dead and
            # fenced.  (A shorter cut would drop messages a TCP connection
            # would only have delayed, which the protocol does not claim to
            # survive outside the GCS.)
            isolations.append((round(rng.uniform(0.05, horizon), 3), rng.randint(1, n - 1), round(rng.uniform(0.7, 1.2), 3)))
        if rng.random() < 0.2:
            slow.append((round(rng.uniform(0, horizon), 3), rng.randint(0, n - 1), rng.choice((3.0, 10.0)), round(rng.uniform(0.1, 0.5), 3)))
    kills = []
    if faulty and workload.actors and rng.random() < 0.4:
        for _ in range(rng.randint(1, 3)):
            kills.append((round(rng.uniform(0.05, horizon), 3), rng.randrange(len(workload.actors))))
    faults = FaultPlan(
        actor_kills=tuple(sorted(kills)),
        crashes=tuple(sorted(crashes)), replica_crashes=tuple(sorted(replicas)), isolations=tuple(sorted(isolations)),
        gcs_drop=rng.choice((0.0, 0.0, 0.02, 0.1)) if faulty else 0.0,
        gcs_duplicate=rng.choice((0.0, 0.0, 0.05)) if faulty else 0.0,
        delay=rng.choice((0.0, 0.0, 0.002, 0.01)) if faulty else 0.0,
        slow=tuple(sorted(slow)),
        worker_crash_rate=rng.choice((0.0, 0.0, 0.02, 0.05)) if faulty else 0.0,
    )
    faults = _draw_timing_faults(faults, random.Random(f"penumbra-swarm-timing-{seed}"), faulty, n, horizon)
    faults = _draw_gcs_double_crash(faults, random.Random(f"penumbra-swarm-gcs-double-{seed}"), faulty, layout, horizon)
    faults = _draw_blocked_crashes(faults, random.Random(f"penumbra-swarm-blocked-{seed}"), faulty, workload)
    faults = _draw_storms(faults, random.Random(f"penumbra-swarm-storms-{seed}"), faulty, horizon)
    faults = _draw_group_pauses(faults, random.Random(f"penumbra-swarm-group-pauses-{seed}"), faulty, n, workload)
    workload = add_remote_puts(workload, random.Random(f"penumbra-swarm-remote-puts-{seed}"), n,
                               faults.first_failures(), 1.0)
    layout, workload = _draw_spillback(layout, workload, random.Random(f"penumbra-swarm-spillback-{seed}"), horizon,
                                       faults.first_failures())
    workload = add_multi_returns(workload, random.Random(f"penumbra-swarm-returns-{seed}"))
    workload = add_flaky(workload, random.Random(f"penumbra-swarm-flaky-{seed}"))
    workload = add_task_cancels(workload, random.Random(f"penumbra-swarm-task-cancels-{seed}"))
    workload = add_frees(workload, random.Random(f"penumbra-swarm-frees-{seed}"))
    workload = add_jobs(workload, random.Random(f"penumbra-swarm-jobs-{seed}"), horizon)
    workload = add_actor_kinds(workload, random.Random(f"penumbra-swarm-actor-kinds-{seed}"))
    faults = _draw_lost_driver(faults, workload, random.Random(f"penumbra-swarm-lost-driver-{seed}"), n, horizon)
    layout = _draw_gcs_flush(layout, random.Random(f"penumbra-swarm-gcs-flush-{seed}"))
    layout, faults = _draw_placement(layout, faults, seed, faulty, horizon)
    workload = _keep_remote_puts_recorded(workload, faults)
    faults = _draw_direct_cuts(faults, workload, random.Random(f"penumbra-swarm-direct-cuts-{seed}"), faulty, n, horizon)
    return SeedPlan(seed, layout, workload, faults, horizon)


def _draw_direct_cuts(faults: FaultPlan, workload: Workload, rng: random.Random, faulty: bool, n: int,
                      horizon: float) -> FaultPlan:
    """On faulty seeds with actors (not all replay ones), three in five: one
    or two stretches where the drivers' links to an actor's node lose messages (some,
    or all), so the direct calls to an actor there break their connections
    mid-stream and are sent again.  (Until these, no seed broke one: the
    other network faults spare the drivers' links.)  Its own generator: the
    rest of the plan is as before."""
    if not faulty or n < 2 or not any(not a.replay for a in workload.actors) or rng.random() >= 0.6:
        return faults
    direct = [i for i, a in enumerate(workload.actors) if not a.replay]
    cuts = tuple(sorted((round(rng.uniform(0.05, horizon), 3), rng.choice(direct), round(rng.uniform(0.05, 0.4), 3),
                         rng.choice((0.3, 1.0)), rng.choice(("both", "replies", "replies", "calls")))
                        for _ in range(rng.randint(1, 2))))
    return dataclasses.replace(faults, direct_cuts=cuts)


# how long add_remote_puts gives a put to be recorded before its node fails
REMOTE_PUT_RECORDED_IN = 0.3


def _keep_remote_puts_recorded(workload: Workload, faults: FaultPlan) -> Workload:
    """``add_remote_puts`` keeps a put on a doomed node 0.3 s before the
    node fails, so that the GCS hears of it; a head crash drawn later
    (``_draw_head_crash``) can outlast that: a chain head that lived with
    the head stalls the put's AddLocation until the new head reconfigures
    the chain, and a node that dies before then takes the only news of
    the object with it (seed 348).  That is the ownership problem the draw
    leaves out (in Ray the owner's death raises ``OwnerDiedError``;
    penumbra's objects are recorded in the GCS, as in the paper, and an
    object nobody recorded is not known to exist), so here such a put
    comes 0.3 s before the head crash instead, or, where there is no room
    for that, is left out with the task that uses it.  Deterministic (no
    generator): every other seed's plan stays what it was."""
    fails = faults.first_failures()
    keep = REMOTE_PUT_RECORDED_IN
    puts, dropped = [], set()
    for p in workload.puts:
        for c, down, _, _ in faults.head_crashes:
            if p.node and p.node in fails and p.at + keep > c and fails[p.node] < c + down + keep:
                if c - keep < 0:
                    dropped.add(p.key)
                    break
                p = dataclasses.replace(p, at=round(c - keep, 4))
        if p.key not in dropped:
            puts.append(p)
    if not dropped and tuple(puts) == workload.puts:
        return workload
    tasks = tuple(t for t in workload.tasks if not dropped.intersection(t.deps))
    return dataclasses.replace(workload, puts=tuple(puts), tasks=tasks)


def _draw_gcs_flush(layout: ClusterLayout, rng: random.Random) -> ClusterLayout:
    """GCS flushing on about a fifth of the seeds, from its own generator:
    thresholds of a few rows, so finished tasks' lineage and freed objects'
    rows go to the modelled disk within the run, and every read of them
    (reconstruction, ``get`` of an old object) and write to them (a re-run,
    a late duplicate) goes through ``LoadRows``/``RestoreRows`` under the
    seed's faults (replica crashes and rejoins, drops, pauses)."""
    if rng.random() >= 0.2:
        return layout
    from ..core.gcs import FlushConfig

    flush = FlushConfig(interval=rng.choice((0.02, 0.05, 0.1)), max_rows=rng.choice((4, 10, 30)),
                        keep_rows=rng.choice((0, 2)), batch=rng.choice((3, 1000)))
    return dataclasses.replace(layout, gcs_timing=dataclasses.replace(layout.gcs_timing, flush=flush))


def _draw_timing_faults(faults: FaultPlan, rng: random.Random, faulty: bool, n: int, horizon: float) -> FaultPlan:
    """Pauses and late heartbeats, from their own generator (the rest of
    each seed's plan is what it was before they came in).

    * the head stops for 0.5-1.5 s, longer than the node timeout (0.4 s):
      nobody may be declared dead for it, in either order of resume;
    * a node stops briefly (0.05-0.25 s: it must lose nothing), or long
      (0.7-1.2 s, nodes 1..: declared dead and fenced, as a cut node is);
    * the driver stops for 0.1-1 s (its program and its replies wait);
    * a node's messages to the head (its heartbeats) come up to 0.25 s late,
      reordered, for 0.2-0.8 s (under the timeout: it must stay alive).
    """
    if not faulty:
        return faults
    pauses, late = [], []

    def at() -> float:
        return round(rng.uniform(0.05, horizon), 3)

    if rng.random() < 0.15:
        pauses.append((at(), "head", 0, round(rng.uniform(0.5, 1.5), 3), rng.random() < 0.5))
    if rng.random() < 0.1:
        pauses.append((at(), "node", rng.randrange(n), round(rng.uniform(0.05, 0.25), 3), rng.random() < 0.5))
    if rng.random() < 0.08:
        pauses.append((at(), "node", rng.randint(1, n - 1), round(rng.uniform(0.7, 1.2), 3), rng.random() < 0.5))
    if rng.random() < 0.1:
        pauses.append((at(), "driver", 0, round(rng.uniform(0.1, 1.0), 3), rng.random() < 0.5))
    if rng.random() < 0.1:
        late.append((at(), rng.randrange(n), round(rng.uniform(0.05, 0.25), 3), round(rng.uniform(0.2, 0.8), 3)))
    pauses, late = unstacked_silences(seen_cuts(sorted(pauses), faults.isolations), sorted(late))
    return dataclasses.replace(faults, pauses=tuple(pauses), heartbeat_delays=tuple(late))


# A node's heartbeat interval in the swarm's layouts.
_HEARTBEAT = 0.05


def seen_cuts(pauses: list, isolations) -> list:
    """Drop a pause of a cut node that overlaps its cut while the head is
    paused during the cut too: then nobody sees the cut (the stopped node
    sends no heartbeats to lose, the stopped head counts no misses), so the
    node is not declared dead and the cut only drops messages, which a link
    that behaves like a TCP connection never does (found by a strategy-drawn
    plan, 145281: an actor's restart was sent into the cut and never came
    up).  ``isolations``: ``FaultPlan.isolations``."""
    def over(a: float, d: float, b: float, e: float) -> bool:
        return a < b + e and b < a + d

    heads = [(at, d) for at, who, _, d, _ in pauses if who == "head"]
    cut = [(at, i, d) for at, i, d in isolations if any(over(h, hd, at, d) for h, hd in heads)]
    return [p for p in pauses if not (p[1] == "node" and any(i == p[2] and over(p[0], p[3], at, d) for at, i, d in cut))]


def unstacked_silences(pauses: list, late: list) -> tuple[list, list]:
    """Drop the short timing faults of a node that would add up to a
    silence of ``LONG_PAUSE`` or more, which the head may rightly take for
    the node's death (the plan counts on that for neither fault): a second
    short pause that begins before the node, resumed from the first, got a
    heartbeat out; late heartbeats in force when a short pause ends (0.25 s
    stopped, then heartbeats 0.25 s late: the head heard nothing for 0.5 s;
    found by a strategy-drawn plan, 849423).  ``pauses`` and ``late`` are
    sorted by time, as ``FaultPlan`` holds them."""
    short: dict[int, list[tuple[float, float]]] = {}  # node index -> its kept short pauses (start, end)
    kept = []
    for p in pauses:
        at, who, i, d, _ = p
        if who == "node" and d < LONG_PAUSE:
            if any(at < e + 2 * _HEARTBEAT and max(e, at + d) - a >= LONG_PAUSE for a, e in short.get(i, ())):
                continue
            short.setdefault(i, []).append((at, at + d))
        kept.append(p)
    late = [x for x in late if not any(x[0] - _HEARTBEAT <= e <= x[0] + x[3] and e - a + x[2] >= LONG_PAUSE
                                       for a, e in short.get(x[1], ()))]
    return kept, late


def _draw_gcs_double_crash(faults: FaultPlan, rng: random.Random, faulty: bool, layout: ClusterLayout,
                           horizon: float) -> FaultPlan:
    """Two GCS replica crashes in one seed, the second inside the first's
    catch-up window (chain reconfiguration under failure), from its own
    generator.

    On about a quarter of the seeds with chains of two or more, a replica of
    one shard crashes and restarts (the seed's own replica crash, or one
    drawn here); when the restarted replica rejoins -- as it asks to join
    (it then copies the tail's state), or as the master appends it (it then
    syncs with its predecessor) -- a second replica crashes a moment later:
    the joiner itself, or (chains of three) a member, as long as a
    caught-up member lives on (``_install_new_faults``): a chain of k survives
    k-1 failures of replicas that hold every acknowledged write, never the
    loss of all of them.  Or, instead of crashing, a caught-up member
    stands still for 0.1-0.3 s in that window (the master suspects it; if
    only replicas still catching up are left, cutting it would lose
    acknowledged writes: it must wait for it).
    """
    if not faulty or layout.chain_length < 2 or rng.random() >= 0.3:
        return faults
    crashes = list(faults.replica_crashes)
    if crashes and rng.random() < 0.7:
        shard = rng.choice(crashes)[1]
    else:
        shard = rng.randrange(layout.gcs_shards)
    if not any(c[1] == shard for c in crashes):
        crashes.append((round(rng.uniform(0.05, horizon), 3), shard, rng.randrange(layout.chain_length),
                        round(rng.uniform(0.05, 0.3), 3)))
    stage = rng.choice(("join", "ready"))
    whom = rng.choice(("other", "other", "joiner", "pause") if layout.chain_length >= 3 else ("joiner", "joiner", "pause"))
    delay = round(rng.choice((0.0, 0.0005, 0.002, 0.005)), 4)
    after = round(rng.uniform(0.1, 0.3) if whom == "pause" else rng.uniform(0.05, 0.4), 3)
    second = (shard, stage, whom, delay, after)
    return dataclasses.replace(faults, replica_crashes=tuple(sorted(crashes)), rejoin_crashes=(second,))


def _draw_blocked_crashes(faults: FaultPlan, rng: random.Random, faulty: bool, workload: Workload) -> FaultPlan:
    """Workers that die while blocked in ``get`` (a nested task waiting for
    its children: it lent its CPU), or just after they unblock (they may run
    on CPU debt), on about a third of the faulty seeds with nested tasks."""
    if not faulty or not any(t.model.children for t in workload.tasks) or rng.random() >= 0.35:
        return faults
    return dataclasses.replace(faults, blocked_crash_rate=rng.choice((0.2, 0.5)))


def _draw_storms(faults: FaultPlan, rng: random.Random, faulty: bool, horizon: float) -> FaultPlan:
    """Heartbeat storms, from their own generator: every node's messages to
    the head stall, and then arrive in one burst.

    * a storm: they stall for 0.15-0.34 s, under the node timeout (0.4 s):
      nobody may be declared dead for it;
    * a pause of the head inside a storm: the stall starts 0-0.3 s before
      the head stops (0.3-0.7 s, timers or messages first on resume), and
      the burst comes 0.05-0.34 s after it resumes: the head, noticing its
      own pause, owes every node a fresh grace period, which covers it.

    A storm keeps clear of the seed's other faults on heartbeats (node
    pauses, late heartbeats, slow nodes: together they would make a silence
    the timeout rightly ends), and bursts before the safety phase ends (when
    every fault is lifted: a stall cut short there would let later messages
    overtake the held ones).
    """
    if not faulty:
        return faults
    busy = [(at, at + d) for at, who, _, d, _ in faults.pauses if who == "node"]
    busy += [(at, at + d + late) for at, _, late, d in faults.heartbeat_delays]
    busy += [(at, at + d) for at, _, _, d in faults.slow]
    storms = []
    for kind in ("storm", "head pause"):
        if rng.random() >= (0.12 if kind == "storm" else 0.2):
            continue
        if kind == "storm":
            pause, lead, timers_first = 0.0, 0.0, True
            stall = round(rng.uniform(0.15, 0.34), 3)
        else:
            pause, lead = round(rng.uniform(0.3, 0.7), 3), round(rng.choice((0.0, rng.uniform(0.05, 0.3))), 3)
            timers_first = rng.random() < 0.5
            stall = round(lead + pause + rng.uniform(0.05, 0.34), 3)
        latest = horizon + 0.28 - stall
        if latest < 0.05:
            continue
        at = round(rng.uniform(0.05, latest), 3)
        if any(at - 0.5 < b and a < at + stall + 0.5 for a, b in busy):
            continue
        busy.append((at, at + stall))
        storms.append((at, stall, pause, lead, timers_first))
    return dataclasses.replace(faults, storms=tuple(sorted(storms)))


def _draw_fractional_gpus(layout: ClusterLayout, workload: Workload, rng: random.Random) -> tuple[ClusterLayout, Workload]:
    """A node with a fractional GPU total (half a GPU, or one and a half)
    and fractional GPU requests, on about a sixth of the seeds, from its own
    generator: the GPU nodes of a seed with GPUs, or node 0 (which never
    fails) of one without."""
    if rng.random() >= 0.17:
        return layout, workload
    total = rng.choice((0.5, 1.5))
    shapes = list(layout.nodes)
    gpu_nodes = [i for i, s in enumerate(shapes) if s.resources.get("GPU")] or [0]
    for i in gpu_nodes:
        shapes[i] = dataclasses.replace(shapes[i], resources=ResourceSet.from_dict({**shapes[i].resources.to_dict(),
                                                                                   "GPU": total}))
    layout = dataclasses.replace(layout, nodes=tuple(shapes))
    workload = add_fractional_gpus(workload, rng, total, cpu_cap=min(shapes[i].resources.get("CPU") for i in gpu_nodes))
    return layout, workload


def _draw_spillback(layout: ClusterLayout, workload: Workload, rng: random.Random, horizon: float,
                    fails: dict[int, float]) -> tuple[ClusterLayout, Workload]:
    """Work that crosses the spillback thresholds (``SchedulerConfig``),
    from its own generator: on some seeds the thresholds are low (a queue of
    2-8 tasks, or remote inputs of 64 KiB or 1 MiB, sends work to the
    global scheduler); on others (and on half of those) the driver submits
    a burst of small tasks in one instant, more than the node's queue holds
    before it forwards, and then a few tasks that take burst outputs as
    inputs (remote, for those that ran elsewhere)."""
    low = rng.random() < 0.15
    if low:
        default = SchedulerConfig()
        config = dataclasses.replace(layout.scheduler, forward_queue_threshold=rng.choice((2, 4, 8)),
                                     forward_remote_bytes=rng.choice((default.forward_remote_bytes, 64 << 10, 1 << 20)))
        layout = dataclasses.replace(layout, scheduler=config)
    if rng.random() < (0.5 if low else 0.08):
        threshold = layout.scheduler.forward_queue_threshold
        count = rng.randint(threshold + 5, threshold + 40) if threshold >= 50 else rng.randint(10, 30)
        max_cpu = min(s.resources.get("CPU") for s in layout.nodes)
        # the burst's consumers are submitted on a node that never fails
        # (whose driver lives), where its outputs are remote
        calm = [i for i in range(1, len(layout.nodes)) if i not in fails]
        workload = add_burst(workload, rng, count, round(rng.uniform(0, horizon), 4), max_cpu,
                             consumers=rng.randint(2, 6), node=rng.choice(calm) if calm else 0)
    return layout, workload



def _draw_group_pauses(faults: FaultPlan, rng: random.Random, faulty: bool, n: int, workload: Workload) -> FaultPlan:
    """(newcomer-bugs) A node stops briefly just as a placement group is
    made, on half the faulty seeds with a group: if it is one the head
    prepares a bundle on, its answer comes after the head's retry (0.2 s),
    so the head sends ``PrepareBundles`` again (and perhaps the commit), and
    the node must not set the bundle's resources apart twice.  Brief pauses
    elsewhere rarely meet a group being prepared.  0.21-0.25 s: over the
    retry interval, as short as the brief pauses ``_draw_timing_faults``
    draws (the node must lose nothing)."""
    if not faulty or not workload.groups:
        return faults
    pauses = list(faults.pauses)
    for g in workload.groups:
        if rng.random() < 0.5:
            pauses.append((g.at, "node", rng.randrange(n), round(rng.uniform(0.21, 0.25), 3), rng.random() < 0.5))
    return dataclasses.replace(faults, pauses=tuple(sorted(pauses)))


def _draw_lost_driver(faults: FaultPlan, w, rng: random.Random, n: int, horizon: float) -> FaultPlan:
    """On over a quarter of the seeds, a second driver program makes
    ``get``s and ``wait``s (of the workload's tasks; some with a timeout)
    and loses its node meanwhile: the node is one the plan crashes anyway
    (at that crash), or the driver's connection is cut (``SimDriver.cut``)
    on a node that lives.  Some requests come after the loss: they must
    fail at once (``checkers.check_lost_driver``).  From its own generator:
    the rest of the plan is what it was."""
    if not faults.items() or not w.tasks or rng.random() >= 0.35:
        return faults
    if faults.crashes and rng.random() < 0.6:
        at, node, _ = faults.crashes[0]
        how = "crash"
    else:
        at, node, how = round(rng.uniform(0.05, horizon), 3), rng.randrange(n), "cut"
    requests = []
    for _ in range(rng.randint(2, 6)):
        t = round(rng.uniform(0.0, min(at + 0.2, horizon)), 3)
        earlier = [x.key for x in w.tasks if x.at < t]
        if not earlier:
            continue
        refs = tuple(rng.sample(earlier, min(len(earlier), rng.randint(1, 3))))
        kind = rng.choice(("get", "wait"))
        num = len(refs) if kind == "get" else rng.randint(1, len(refs))
        timeout = None if rng.random() < 0.5 else round(rng.uniform(0.02, 0.4), 3)
        requests.append((t, kind, refs, num, timeout))
    if not requests:
        return faults
    return dataclasses.replace(faults, lost_driver=(at, node, how, tuple(sorted(requests))))


# ===========================================================================
# swarm-placement (issue 15): GCS replicas that live on nodes and die with
# them, and head crashes answered by a recovered head


def _draw_placement(layout: ClusterLayout, faults: FaultPlan, seed: int, faulty: bool,
                    horizon: float) -> tuple[ClusterLayout, FaultPlan]:
    """Where the GCS replicas live, and head crashes, each from its own
    generator (the rest of every seed's plan is what it was).

    On about 40% of the seeds the replicas live on nodes
    (``ClusterLayout.replica_hosts``), as in a cluster of several hosts
    whose daemons host them: each chain spans distinct nodes where it can (a
    node may host replicas of several shards; now and then a replica stays
    on the head's host), so the seed's node crashes, cuts and long pauses
    take its replicas down with the node, independently of one another; a
    replica restarts empty (and joins its chain again) when the node's
    replacement joins.  A chain of one lives on node 0, which never fails.
    A fault that would leave a shard without a live replica holding every
    acknowledged write is outside the fault model (a chain of k survives
    k-1 failures) and is not applied (``_keeps_a_copy``).  Then, on seeds
    whose replicas live on nodes, ``_draw_head_crash``."""
    prng = random.Random(f"penumbra-swarm-placement-{seed}")
    if prng.random() >= 0.4:
        return layout, faults
    n = len(layout.nodes)
    hosts: dict[str, str] = {}
    for chain in layout.chains():
        picks = prng.sample(range(n), min(n, len(chain.replicas))) if len(chain.replicas) > 1 else [0]
        for r, i in zip(chain.replicas, picks):
            if len(chain.replicas) == 1 or prng.random() < 0.85:
                hosts[r] = node_address(i)
    layout = dataclasses.replace(layout, replica_hosts=dict(sorted(hosts.items())))
    faults = _draw_head_crash(faults, random.Random(f"penumbra-swarm-head-crash-{seed}"), faulty, layout, horizon)
    return layout, faults


# the share of the faulty seeds with replicas on nodes whose head crashes
# (see _draw_head_crash)
HEAD_CRASH_RATE = 0.4


def _draw_head_crash(faults: FaultPlan, rng: random.Random, faulty: bool, layout: ClusterLayout,
                     horizon: float) -> FaultPlan:
    """The head's host crashes (kill -9: the head's monitor, chain master,
    global scheduler, actor manager and all they held in memory are gone,
    with the GCS replicas that live there) on ``HEAD_CRASH_RATE`` of the
    faulty seeds whose replicas live on nodes, and a recovered head
    (``HeadConfig.recover_from``) starts at the same address 0.05-1 s later
    -- often longer than the node timeout: the new head must not declare
    the nodes dead for the silence.  The operator names the replicas to
    recover from: every one of the layout ("all": those that died do not
    answer), the live ones ("live"), or one live replica per shard that is
    not joining ("one": it may know an older config than another).  On 60%
    of those with chains of two or more, a GCS replica also crashes while
    there is no head (nobody reconfigures its chain until the new head
    does), restarting 0.05-0.4 s later.  Where the plan cuts off a node
    that hosts replicas, the crash comes inside that cut on 60% of such
    seeds, and the new head starts shortly before the cut heals: the cut
    replicas report the older config they kept.  The new head is up before
    the safety phase ends."""
    if not faulty or rng.random() >= HEAD_CRASH_RATE:
        return faults
    at = round(rng.uniform(0.05, horizon), 3)
    down = round(min(rng.uniform(0.05, 1.0), horizon + 0.25 - at), 3)
    how = rng.choice(("all", "live", "one"))
    hosting = {int(n.split(":")[1]) for n in layout.replica_hosts.values()}
    cuts = [(t, d) for t, i, d in faults.isolations if i in hosting]
    if cuts and rng.random() < 0.6:
        # inside a cut of a node that hosts replicas: the chain master cut
        # them out (a new epoch), the head dies, and the new head starts
        # before the cut heals; their reports (of the older epoch) come in
        # once it does, before the new head gives up waiting
        t, d = cuts[0]
        at = round(t + rng.uniform(0.1, 0.3), 3)
        down = round(min(t + d - at - rng.uniform(0.05, 0.3), horizon + 0.25 - at), 3)
        how = "live"
    if down < 0.05:
        return faults
    replica: tuple = ()
    if layout.chain_length > 1 and rng.random() < 0.6:
        replica = (rng.randrange(layout.gcs_shards), rng.randrange(layout.chain_length),
                   round(rng.uniform(0.0, down), 3), round(rng.uniform(0.05, 0.4), 3))
    return dataclasses.replace(faults, head_crashes=((at, down, how, replica),))
