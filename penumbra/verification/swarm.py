"""The swarm: seeded fault-injection runs of the simulator, checked.

Theory of operation
-------------------
A *seed* determines everything about a run (FoundationDB's simulation
testing, TigerBeetle's VOPR): the cluster's shape (nodes, CPUs, custom
resources, GCS shards and chain length, store capacity), the workload
(``workload.generate``) and the fault mix.  A run has two phases:

* **safety**: the workload is submitted over ``horizon`` seconds while
  faults happen: nodes crash (and a node of the same shape joins later),
  GCS replicas crash and rejoin, a node is cut off (and fenced if the head
  declares it dead), GCS-bound messages are dropped or duplicated, every
  message may be delayed (so they reorder), a node runs slow, workers die
  in the middle of tasks; and timing faults: the head, a node or the
  driver stands still for a while (a stop-the-world pause, as under SIGSTOP:
  what is sent to it queues, its timers fire late, after resume, in either
  order, see ``SimKernel.pause``), a node's messages to the head (its
  heartbeats) come late in a burst; a second GCS replica fault inside a
  rejoin's catch-up window; workers that die blocked in ``get``; heartbeat
  storms (every node's messages to the head stall, then burst, alone or
  around a pause of the head); the head's host crashes and a recovered head
  takes over (``_draw_head_crash``); and, in the layout and workload,
  fractional GPU totals, work past the spillback thresholds, and GCS
  replicas living on nodes that fail independently (``_draw_placement``);
* **liveness**: every fault is lifted, and the cluster must finish the work.

The same seed then runs with no faults at all: the *reference*.  The
checkers (``checkers``) compare the two and inspect the cluster.  Every
machine's ``validate()`` runs after every event of both runs.

A failing seed replays exactly (same trace hash); ``story`` prints what the
machines recorded about the items concerned, and ``shrink`` (Hypothesis)
looks for the smallest subset of the fault schedule that still fails.

Fault model (what the protocol is built to tolerate): crash-stop nodes and
replicas; partitions (a node cut off longer than the heartbeat timeout is
declared dead and fenced); message loss and duplication on GCS traffic
(clients retry, replicas deduplicate); delay and reordering everywhere;
pauses of any process (a paused head declares nobody dead for its own
pause; a node paused longer than the timeout is declared dead and fenced,
like a cut one).
Other links behave like TCP connections: they may stall, not silently drop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core import placement as P
from ..core.gcs import GcsReplica, GcsTiming
from ..core.gcs_client import GcsClient
from ..core.ids import ObjectId, TaskId, child_task_id, return_object_id
from ..core.layout import ClusterLayout, NodeShape, node_address
from ..core.messages import PutFailed, ReleaseObjects
from ..core.records import ActorState, ErrorKind, PlacementGroupEntry
from ..core.scheduler import LocalScheduler, SchedulerConfig
from ..core.specs import ResourceSet
from ..core.tables import CreatePlacementGroup, Op, RemovePlacementGroup
from ..sim.cluster import SimActor, SimCluster, SimNode
from ..api.runtime import Runtime
from ..sim.costs import PAPER
from ..sim.trace import Trace
from .._progress import Progress
from . import checkers as C
from .workload import (CUSTOM, GPUS_PER_NODE, LARGE_SIZES, SLOT, SLOTS_PER_NODE, STORE_SIZES, VActor, VCall,
                       VerifyExecutor, Workload, add_actor_kinds, add_burst, add_callers, add_cancels, add_flaky,
                       add_fractional_gpus, add_frees, add_gpus, add_grandchildren, add_groups, add_jobs,
                       add_multi_returns, add_remote_puts, add_task_cancels, add_waits, digest, generate)

__all__ = ["SeedPlan", "FaultPlan", "RunResult", "SeedReport", "plan_seed", "run_plan", "check_seed", "check_plan",
           "run_swarm", "run_swarm_cli", "story", "shrink", "plan_from_text"]

# A fault-free run must finish within this much virtual time after its last
# submission: nothing in a fault-free run waits for a timeout (the slowest
# legitimate cases -- queues of 50 ms tasks on one CPU, evicted inputs being
# rebuilt -- take about 1.3 s over 150 seeds).
REFERENCE_SLACK = 3.0

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
        for name in ("gcs_drop", "gcs_duplicate", "delay", "worker_crash_rate", "blocked_crash_rate", "lost_driver"):
            if getattr(self, name):
                out.append((name, getattr(self, name)))
        return out

    @classmethod
    def from_items(cls, items) -> "FaultPlan":
        names = {"crash": "crashes", "replica": "replica_crashes", "isolate": "isolations", "slow": "slow",
                 "actor_kill": "actor_kills", "pause": "pauses", "heartbeat_delay": "heartbeat_delays",
                 "rejoin_crash": "rejoin_crashes", "storm": "storms", "head_crash": "head_crashes"}
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
    return SeedPlan(seed, layout, workload, faults, horizon)


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

# ===========================================================================


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
            d = cluster.driver("node:0")
            # a second driver program, if some actor calls come from it
            d1 = cluster.driver("node:0") if any(c.caller for a in plan.workload.actors for c in a.calls) else None
            handles: dict[tuple[str, int], SimActor] = {}  # (actor, caller) -> that caller's handle
            keys: dict[str, ObjectId] = res.keys
            ready: dict[str, tuple] = res.results
            oid_key: dict[ObjectId, str] = {}

            def on_ready(oid, info, now):
                key = oid_key[oid]
                if info.error is not None:
                    ready[key] = ("e", info.error.kind, info.error.message if info.error.kind is ErrorKind.TASK_ERROR else "")
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
                        spec = h.call(c.model, method="m", deps=[keys[k] for k in c.deps], submit=not by_name.get(a.key))
                        if by_name.get(a.key):
                            by_name[a.key].submit(spec)
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


def _tree(tid: TaskId, model) -> list[TaskId]:
    """A task's id and those of the children it submits, at every depth."""
    out = [tid]
    for j, ch in enumerate(getattr(model, "children", ())):
        out += _tree(child_task_id(tid, j), ch)
    return out


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
            at = sealed.get((d.node, oid) if wp.fetch else oid)
            if at is None or at > now:
                o.early.append(k)
        if len(o.ready) >= wp.num_returns:
            finish(False)

    need = Runtime.report_need(wp.num_returns, wp.timeout)
    rid = d.watch(oids, on_ready, fetch=wp.fetch, record=False, need=need)
    if wp.timeout is not None and not o.done:
        kernel.call_at(kernel.now + wp.timeout, lambda: None if o.done else finish(True))


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


# ===========================================================================


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


def check_seed(seed: int, *, plan: SeedPlan | None = None, validate: bool = True, recent: int = 0) -> SeedReport:
    """Run ``seed`` with its faults and without, and compare.

    ``recent``: keep each address's last ``recent`` trace lines (``story``
    prints them when an invariant broke); the trace hash is the same."""
    plan = plan or plan_seed(seed)
    t0 = time.perf_counter()

    def trace() -> Any:
        return Trace(fields="key", per_address=recent) if recent else "key"

    ref = run_plan(plan, faults=False, validate=validate, trace=trace())
    from_ref = [C.Violation("reference", f"(fault-free run) {v.what}", v.key) for v in ref.violations]
    if _stopped(ref):
        # the fault-free run itself broke an invariant: report that run
        return SeedReport(seed, False, from_ref, ref.trace_hash, time.perf_counter() - t0, plan, None, ref)
    run = run_plan(plan, faults=True, validate=validate, trace=trace()) if plan.faults.items() else ref
    violations = list(run.violations)
    if ref is not run:
        violations += from_ref
    if not _stopped(run):
        violations += C.check_results(ref.results, run.results, run.taints)
    return SeedReport(seed, not violations, violations, run.trace_hash, time.perf_counter() - t0, plan, run, ref)


def _stopped(run: RunResult) -> bool:
    """Did ``run`` stop early (an invariant broke, or a machine raised)?"""
    return any(v.checker in ("invariant", "crash", "harness") for v in run.violations)


def check_plan(plan: SeedPlan, validate: bool = True) -> SeedReport:
    """``check_seed`` for a plan built by hand or by a Hypothesis strategy."""
    return check_seed(plan.seed, plan=plan, validate=validate)


def plan_from_text(text: str) -> SeedPlan:
    """The ``SeedPlan`` whose ``repr`` is in ``text`` (as Hypothesis prints
    a falsifying plan, or as ``repr(plan_seed(s))`` saved it).  A plan saved
    this way keeps replaying the same run when later draws change what
    ``plan_seed`` makes of its seed: the regression tests keep the plans
    that found their bugs (``tests/swarm_plans/``)."""
    from ..core import gcs as G
    from ..core import layout as L
    from ..core import scheduler as Sc
    from ..core import specs as Sp
    from ..sim import faults as F
    from . import strategies as St
    from . import workload as W

    start = text.index("SeedPlan(")
    depth = 0
    for end in range(start, len(text)):  # up to its matching parenthesis
        depth += {"(": 1, ")": -1}.get(text[end], 0)
        if depth == 0 and text[end] == ")":
            break
    ns: dict = {}
    for m in (W, sys.modules[__name__], St, L, Sp, Sc, G, F):
        ns.update({k: v for k, v in vars(m).items() if not k.startswith("_")})
    ns["ResourceSet"] = lambda **kw: Sp.ResourceSet.of(**kw)
    return eval(text[start:end + 1], ns)  # noqa: S307 -- our own saved plans, never input from elsewhere


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

    if dataclasses.is_dataclass(ev):
        for f in dataclasses.fields(ev):
            v = getattr(ev, f.name, None)
            if isinstance(v, (tuple, list)):
                for x in v[:8]:
                    add(x[0] if isinstance(x, tuple) and x else x)
            else:
                add(v)
    return out


def run_swarm(seeds, *, stop_on_failure: bool = False, progress: bool = False, validate: bool = True) -> list[SeedReport]:
    """Check each seed in turn.  ``progress``: seeds done and failing so
    far on stderr (a bar on a terminal, a line per tenth of the run in a
    log; see ``penumbra._progress``)."""
    reports = []
    seeds = list(seeds)
    bar = Progress(len(seeds), "verify", "seeds") if progress and seeds else None
    bad = 0
    try:
        for s in seeds:
            r = check_seed(s, validate=validate)
            if r.ok:
                r.run = r.reference = None  # keep memory flat
            else:
                bad += 1
            reports.append(r)
            if bar is not None:
                bar.update(1, failing=bad)
            if stop_on_failure and not r.ok:
                break
    finally:
        if bar is not None:
            bar.close()
    return reports


def shrink(seed: int, max_examples: int = 60, plan: SeedPlan | None = None) -> FaultPlan:
    """The smallest subset of ``seed``'s faults that still fails (Hypothesis).

    Raises ``ValueError`` if the seed does not fail at all."""
    from hypothesis import HealthCheck, find, settings
    from hypothesis.errors import NoSuchExample
    from hypothesis import strategies as st

    plan = plan or plan_seed(seed)
    items = plan.faults.items()
    # Validating every step is slow; it is needed only when that is how the
    # seed fails (a broken invariant shows nowhere else).
    first = check_seed(seed, plan=plan, validate=False)
    validate = first.ok
    if validate and check_seed(seed, plan=plan, validate=True).ok:
        raise ValueError(f"seed {seed} does not fail: there is nothing to shrink")

    def fails(mask) -> bool:
        sub = FaultPlan.from_items([it for it, keep in zip(items, mask) if keep])
        return not check_seed(seed, plan=dataclasses.replace(plan, faults=sub), validate=validate).ok

    try:
        mask = find(st.lists(st.booleans(), min_size=len(items), max_size=len(items)), fails,
                    settings=settings(max_examples=max_examples, database=None, deadline=None,
                                      suppress_health_check=list(HealthCheck)))
    except NoSuchExample:
        return plan.faults  # no smaller schedule found in the budget: the whole one fails
    return FaultPlan.from_items([it for it, keep in zip(items, mask) if keep])


def run_swarm_cli(args) -> int:
    if args.seed is not None:
        r = check_seed(args.seed, recent=25)
        print(r.summary())
        print(story(r))
        if getattr(args, "shrink", False):
            if r.ok:
                print("the seed passes: nothing to shrink")
                return 0
            small = shrink(args.seed, plan=r.plan)
            print(f"shrunk fault schedule ({len(small.items())} of {len(r.plan.faults.items())} faults): {small.describe()}")
            again = check_seed(args.seed, plan=dataclasses.replace(r.plan, faults=small))
            print(f"with only those: {again.summary()}")
            for v in again.violations[:5]:
                print(f"   {v}")
        return 0 if r.ok else 1
    t0 = time.perf_counter()
    plant = f" --plant {args.plant}" if getattr(args, "plant", None) else ""
    reports = run_swarm(range(args.seeds), progress=True)
    bad = [r for r in reports if not r.ok]
    print(f"{len(reports)} seeds in {time.perf_counter() - t0:.1f}s: {len(reports) - len(bad)} ok, {len(bad)} failing")
    for r in bad[:10]:
        print(r.summary())
        for v in r.violations[:5]:
            print(f"   {v}")
        print(f"   replay: penumbra verify --seed {r.seed}{plant}")
    return 0 if not bad else 1


# -- surface the swarm did not use before (issue 14: draws-surface) ----------------
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
            jd = made["driver"] = cluster.driver("node:0")
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
        out += C.check_freed(cluster, "node:0", s.freed, s.released, s.driver)
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


# ===========================================================================
# client-machine: a driver that loses its node while it waits


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
