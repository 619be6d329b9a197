"""The head: global scheduler, monitor, chain master, actor manager, recovery.

Theory of operation
-------------------
One machine at address ``"head"`` hosts the cluster-wide roles of the paper
that hold no durable state of their own (all of it is in the GCS):

* the **monitor** keeps the membership: a node joins with ``NodeJoin`` and
  stays alive while its heartbeats arrive; silent for ``node_timeout`` (or
  reported dead by a driver that knows), it is declared dead: the GCS drops
  its object locations (``NodeDown`` on every shard), its pending tasks are
  re-submitted, its actors restarted (the liveness rule is below);
* the **chain master** (``gcs.ChainMaster``) keeps each GCS shard's chain;
* the **global scheduler** (``global_scheduler.GlobalScheduler``) places
  forwarded tasks;
* the **actor manager** (``actor_manager.ActorManager``) restarts or buries
  actors;
* **recovery** (``lineage.Recovery``) rebuilds lost objects from lineage;
* **placement groups** (``placement.PlacementManager``) reserve bundles on
  nodes (prepare, then commit), reschedule the bundles of a dead node and
  release a removed group's;
* **job end**: when a job's driver exits (``JobFinished``), the head tells
  every node (``JobEnded``: queued tasks dropped, running ones' workers
  killed, resources returned), drops the job's forwarded tasks, kills its
  non-detached actors, and refuses its tasks from then on (no retry, no
  reconstruction).  Once every live node answered ``JobCleared``, it
  writes ``ForgetJob`` (the job's task and object rows leave the GCS) and
  tells the nodes holding the job's objects to drop them (``DropObjects``).

Every GCS reply comes back with the token given at the request; the table
``_on_gcs_reply`` routes each kind of token to its role.

The liveness rule (what a pause cannot fool)
--------------------------------------------
A node is judged by the heartbeats it missed, never by how far the head's
own clock jumped.  The monitor checks every ``check_interval``; at each
check, a node from which no heartbeat arrived since the previous check has
*missed* once, and one that was heard has missed zero times.  A node is dead
after ``miss_limit`` consecutive misses (``ceil(node_timeout /
check_interval)``: about ``node_timeout`` of silence while the head runs
normally).  Why not ``last_seen < now - node_timeout``: a head stopped for
longer than the timeout (SIGSTOP, a swap storm, a long GC) wakes with its
overdue monitor timer, and often runs it before reading the heartbeats its
sockets queued meanwhile; the clock rule then declares every node dead,
the healthy ones too.  Counting misses makes that one late check cost one
miss, which the heartbeats read right after clear.

Further, the head notices its own pauses: a check that runs more than
``pause_after`` later than it was due means the head itself did not run
(the gap is its own, not the nodes').  Such a check counts no miss against
anyone and clears every count: each node gets a fresh grace period of
``miss_limit`` checks from the resume, in which its queued (or next)
heartbeats arrive.  A node that really stopped is still found, one grace
period later.

Heartbeats lost on the way are counted in the node's own terms too: each
carries the node's count of heartbeats sent (``seq``), and a heartbeat
that arrives ``miss_limit`` or more past the last one read means that many
were lost (a cut link that dropped them, as a broken connection would): the
node is declared dead and fenced then, even though the head, paused across
the whole cut, never saw the silence.  A paused node sends nothing while it
is stopped, so it makes no gap; heartbeats queued behind a paused head
arrive all in order, so they make none either; reordering by a delay
shorter than the timeout makes gaps shorter than the limit.

The node in the head's own process (``own_node``: the real runtime's head
daemon hosts one) is never declared dead by the monitor: if the head runs,
so does that node; its heartbeats travel no network.  ``NodeDied`` from a
driver that knows (the simulator's omniscient mode) still counts.

Recovery: a new head from surviving replicas
--------------------------------------------
A head started with ``HeadConfig.recover_from`` rebuilds its roles from the
surviving GCS replicas in three phases (query, rebuild, ready): the theory
of operation and the code of the query and rebuild phases are in
core/head_recovery.py (``HeadRecovery``, a base class of ``HeadMachine``);
what waits while the head recovers is ``HeadMachine._while_recovering``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Hashable

from .actor_manager import ActorManager
from .gcs import ChainMaster, GcsTiming
from .gcs_client import GcsClient
from .global_scheduler import GlobalConfig, GlobalScheduler, Rng
from .head_recovery import HeadRecovery, _Recovering
from .dead_nodes import DeadNodes
from .ids import TaskId
from .lineage import Recovery
from .msg_leases import LeaseForward, LeaseSpillback
from .messages import (
    ActorReported,
    BundlesCommitted,
    BundlesPrepared,
    BundlesPrepareFailed,
    BundlesReleased,
    ChainConfigMsg,
    ChainReport,
    ClusterStatus,
    ClusterStatusRequest,
    Command,
    DropObjects,
    Event,
    Fenced,
    ForwardTask,
    GcsNotify,
    GcsReply,
    Heartbeat,
    JobCleared,
    JobEnded,
    JobFinished,
    KillActorRequest,
    Log,
    NodeDied,
    NodeJoin,
    NodeWelcome,
    OwnerDied,
    ReconstructObject,
    ReplicaHeartbeat,
    ReplicaJoin,
    ReplicaReady,
    Send,
    SetTimer,
    TasksHeldReport,
    TimerFired,
)
from .placement import PlacementManager
from .records import ActorState, ChainConfig, NodeEntry, TaskState
from .tables import ForgetJob, NodeDown, PutNode, Subscribe, Unsubscribe

__all__ = ["HeadConfig", "HeadMachine"]


@dataclass(frozen=True, slots=True)
class HeadConfig:
    chains: tuple[ChainConfig, ...]
    scheduler: GlobalConfig = GlobalConfig()
    gcs_timing: GcsTiming = GcsTiming()
    node_timeout: float = 1.0
    check_interval: float = 0.1
    gcs_retry_after: float = 0.05
    job_end_retry: float = 1.0  # re-send JobEnded to nodes silent this long
    # the node hosted in the head's own process (never declared dead by the
    # monitor), if any
    own_node: str | None = None
    # a monitor check this late is the head's own pause (default: half the
    # node timeout, at least two checks)
    pause_after: float | None = None
    # recovery (see "Recovery: a new head from surviving replicas"): the
    # GCS replicas known to survive the old head (empty: a fresh cluster),
    # and how long to wait for all of them to answer before going on with
    # those that did (each shard needs one)
    recover_from: tuple[str, ...] = ()
    recover_wait: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.recover_from, str):
            raise ValueError(f"HeadConfig: recover_from must be a tuple of replica addresses, got the string "
                             f"{self.recover_from!r}; write recover_from=({self.recover_from!r},)")
        if self.recover_wait <= 0:
            raise ValueError(f"HeadConfig: recover_wait must be > 0 seconds, got {self.recover_wait!r}")
        if not (self.check_interval > 0 and self.node_timeout > 0):
            raise ValueError(f"HeadConfig: check_interval ({self.check_interval!r}) and node_timeout "
                             f"({self.node_timeout!r}) must be > 0 seconds")
        if self.pause_after is not None and self.pause_after <= 0:
            raise ValueError(f"HeadConfig: pause_after must be > 0 seconds (or None), got {self.pause_after!r}")
        if not self.chains and not self.recover_from:
            raise ValueError("HeadConfig: no GCS chains; give chains=(ChainConfig, ...) for a fresh cluster, or "
                             "recover_from=(replica address, ...) to recover from surviving replicas")

    @property
    def miss_limit(self) -> int:
        """Consecutive checks without a heartbeat after which a node is dead."""
        return max(1, math.ceil(self.node_timeout / self.check_interval - 1e-9))

    @property
    def pause_threshold(self) -> float:
        if self.pause_after is not None:
            return self.pause_after
        return max(2 * self.check_interval, self.node_timeout / 2)


# what a head still querying replicas drops rather than keeps (they repeat)
_DROPPED_WHILE_QUERYING = (Heartbeat, ReplicaHeartbeat, ReplicaJoin, ReplicaReady, GcsReply, ChainConfigMsg)


class HeadMachine(HeadRecovery):
    address = "head"

    def __init__(self, config: HeadConfig, rng: Rng) -> None:
        self.config = config
        self.gcs = GcsClient(self.address, self._on_gcs_reply, retry_after=config.gcs_retry_after)
        # a recovering head starts its chain master once the replicas said
        # what they have (``_adopt``)
        self.recovering = _Recovering(0.0) if config.recover_from else None
        self.chain = ChainMaster([] if config.recover_from else list(config.chains), config.gcs_timing, self.address)
        self.scheduler = GlobalScheduler(self, config.scheduler, rng)
        self.actors = ActorManager(self)
        self.recovery = Recovery(self)
        self.placement = PlacementManager(self)
        # the monitor (see "The liveness rule"): node -> consecutive checks
        # without a heartbeat; the nodes heard since the last check; when the
        # next check is due; how many of its own pauses the head noticed
        self.misses: dict[str, int] = {}
        self.heard: set[str] = set()
        self.last_seq: dict[str, int] = {}  # the highest heartbeat number read
        self.check_due = 0.0
        self.pauses_noticed = 0
        # the latest ``dead_nodes.RETENTION`` nodes declared dead (their
        # heartbeats are fenced); older ones are forgotten everywhere here
        self.dead_nodes = DeadNodes()
        self.watched_tasks: set[TaskId] = set()
        self.stories: dict[Hashable, list] = {}
        # jobs whose driver exited (one int per job ever run), and, for those
        # still being cleared, the nodes that have not answered JobEnded
        self.ended_jobs: set[int] = set()
        self.ending: dict[int, set[str]] = {}
        # a recovered head asks live nodes which of their pending tasks they
        # forwarded, until each answers: node -> None (waiting for its
        # writes to land), "reading" (its rows), or the rows asked about
        self.held_asks: dict[str, Any] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self, now: float) -> list[Command]:
        if self.recovering is not None:
            return self._recover_start(now)
        cmds = self.chain.start(now)
        cmds += self.gcs.set_configs(self.chain.configs(), now)
        return cmds + self._subscribe_and_monitor(now, "head-start")

    def _subscribe_and_monitor(self, now: float, sid: str) -> list[Command]:
        cmds = self.gcs.write(Subscribe(self.address, "actors", None), None, now, sid)
        cmds += self.gcs.write(Subscribe(self.address, "placement_groups", None), None, now, sid)
        self.check_due = now + self.config.check_interval
        cmds.append(SetTimer(at=self.check_due, key=("head", "monitor")))
        return cmds

    def handle(self, event: Event, now: float) -> list[Command]:
        if self.recovering is not None:
            return self._while_recovering(event, now)
        h = _HANDLERS.get(type(event))
        if h is None:
            return []
        return h(self, event, now)

    # ------------------------------------------------------------------ recovery
    @property
    def ready(self) -> bool:
        """False while a recovering head still queries replicas or reads
        the tables (see "Recovery"); a fresh head is ready at once."""
        return self.recovering is None

    def _while_recovering(self, event: Event, now: float) -> list[Command]:
        """Events before the head is ready: the replicas' reports and (once
        the chains are adopted) the GCS and the chain master go through;
        everything else waits, in order, until the roles are rebuilt."""
        rec = self.recovering
        t = type(event)
        if rec.phase == "query":
            if t is ChainReport:
                if event.replica in self.config.recover_from:
                    rec.reports[event.replica] = event
                return self._maybe_adopt(now, event.stimulus_id)
            if t is TimerFired and event.key == ("head", "recover"):
                return self._query_again(now, event.stimulus_id)
            if t in _DROPPED_WHILE_QUERYING or t is TimerFired:
                return []  # they repeat (timers: none is ours yet)
            rec.held.append(event)
            return []
        # rebuild: the GCS client and the chain master work already
        if t is GcsReply or t is ChainConfigMsg or t is ReplicaHeartbeat or t is ReplicaJoin \
                or t is ReplicaReady or t is ChainReport:
            return _HANDLERS[t](self, event, now)
        if t is TimerFired:
            key = event.key
            if self.gcs.owns(event) or (isinstance(key, tuple) and key and key[0] == "chain"):
                return self._on_timer(event, now)
            return []
        if t is Heartbeat:
            return []  # the monitor starts when ready; heartbeats repeat
        rec.held.append(event)
        return []

    # ------------------------------------------------------------------ membership
    def _on_join(self, ev: NodeJoin, now: float) -> list[Command]:
        node = ev.node_id
        if node in self.misses:
            # a repeat: a node says NodeJoin again until welcomed (its first
            # may have gone to a head that died); it is the same node (a
            # restarted node joins under a new id), so only welcome it again
            return [Send(to=node, msg=NodeWelcome(configs=self.chain.configs(), stimulus_id=ev.stimulus_id))]
        self.dead_nodes.discard(node)
        self.misses[node] = 0
        self.heard.add(node)
        self.last_seq[node] = 0
        self.chain.add_listener(node)
        cmds = self.gcs.write(PutNode(NodeEntry(node, ev.resources, True, ev.address)), None, now, ev.stimulus_id)
        cmds.append(Send(to=node, msg=NodeWelcome(configs=self.chain.configs(), stimulus_id=ev.stimulus_id)))
        cmds += self.scheduler.add_node(node, ev.resources, now, ev.stimulus_id)
        return cmds + self.placement.on_node_joined(now, ev.stimulus_id)

    def _on_heartbeat(self, ev: Heartbeat, now: float) -> list[Command]:
        if ev.node_id in self.dead_nodes:
            # declared dead while it was cut off: it must not carry on
            return [Send(to=ev.node_id, msg=Fenced(node_id=ev.node_id, reason="declared dead after missing heartbeats", stimulus_id=ev.stimulus_id))]
        node = ev.node_id
        if node not in self.misses:
            return []
        last = self.last_seq[node]
        if ev.seq:
            if ev.seq - last - 1 >= self.config.miss_limit and last and node != self.config.own_node:
                # that many of its heartbeats were lost: its link was cut,
                # and what else it sent may be lost with them
                cmds = self.node_dead(node, now, f"heartbeats-lost:{node}:{last + 1}-{ev.seq - 1}")
                return cmds + self._on_heartbeat(ev, now)
            if ev.seq > last:
                self.last_seq[node] = ev.seq
        self.heard.add(node)
        self.scheduler.on_heartbeat(ev.node_id, ev.load, now)
        if self.scheduler.recheck:
            return self.scheduler.retry_infeasible(now, ev.stimulus_id)
        return []

    def _on_node_died(self, ev: NodeDied, now: float) -> list[Command]:
        return self.node_dead(ev.node_id, now, ev.stimulus_id or f"node-died:{ev.node_id}")

    def node_dead(self, node: str, now: float, sid: str) -> list[Command]:
        if node in self.dead_nodes:
            return []
        for old in self.dead_nodes.add(node):
            self.forget_dead(old)
        self.misses.pop(node, None)
        self.heard.discard(node)
        self.last_seq.pop(node, None)
        self.scheduler.remove_node(node)
        self.chain.remove_listener(node)
        # its bundles are gone: reserve them again elsewhere
        cmds = self.placement.on_node_dead(node, now, sid)
        # first drop its locations everywhere, then re-home its work
        return cmds + self.gcs.write(NodeDown(node), ("node-down", node), now, sid)

    def forget_dead(self, node: str) -> None:
        """A node dead long ago leaves the head's memory (see
        core/dead_nodes.py: only the latest ``RETENTION`` are kept)."""
        self.scheduler.forget_node(node)

    def _on_timer(self, ev: TimerFired, now: float) -> list[Command]:
        key = ev.key
        if self.gcs.owns(ev):
            return self.gcs.handle(ev, now)
        if key == ("head", "monitor"):
            return self._monitor(now)
        if key == ("head", "held"):
            return self._held_retry(now, ev.stimulus_id)
        if isinstance(key, tuple) and key and key[0] == "chain":
            return self._chain(ev, now)
        if key == ("pg", "retry"):
            return self.placement.on_timer(now, ev.stimulus_id)
        if isinstance(key, tuple) and key and key[0] == "job-end":
            return self._job_end_retry(key[1], now, ev.stimulus_id)
        return []

    def _monitor(self, now: float) -> list[Command]:
        """One check of the liveness rule (see the module docstring)."""
        cfg = self.config
        late = now - self.check_due
        self.check_due = now + cfg.check_interval
        cmds: list[Command] = [SetTimer(at=self.check_due, key=("head", "monitor"))]
        if late > cfg.pause_threshold:
            # the head itself stood still: nobody is to blame for the gap
            self.pauses_noticed += 1
            for node in self.misses:
                self.misses[node] = 0
            self.heard.clear()
            return cmds + [Log(level="warning", stimulus_id=f"head-pause:{self.pauses_noticed}",
                               text=f"head: the monitor ran {late:.3f}s late (this process was paused); "
                                    f"every node gets a fresh grace period of {cfg.miss_limit} checks")]
        heard = self.heard
        limit = cfg.miss_limit
        dead: list[str] = []
        for node, n in self.misses.items():
            if node in heard:
                self.misses[node] = 0
            else:
                self.misses[node] = n = n + 1
                if n >= limit and node != cfg.own_node:
                    dead.append(node)
        heard.clear()
        for node in sorted(dead):
            cmds += self.node_dead(node, now, f"heartbeat-timeout:{node}")
        return cmds

    # ------------------------------------------------------------------ GCS chains
    def _chain(self, ev: Event, now: float) -> list[Command]:
        before = self.chain.changes
        cmds = self.chain.handle(ev, now)
        if self.chain.changes == before:
            return cmds  # (most of these are heartbeats: nothing changed)
        # our own client follows the chain master directly
        return cmds + self.gcs.set_configs(self.chain.configs(), now)

    # ------------------------------------------------------------------ scheduling
    def _on_forward(self, ev: ForwardTask, now: float) -> list[Command]:
        if self.job_over(ev.spec):
            return []  # forwarded just before its job ended
        return self.scheduler.submit(ev.spec, ev.attempt, now, ev.stimulus_id)

    def _on_lease_forward(self, ev: LeaseForward, now: float) -> list[Command]:
        """A node's lease request for the global scheduler (core/lease_host.py):
        it picks a node as for a forwarded task and tells the submitter to
        ask there (``LeaseSpillback``)."""
        r = ev.request
        if self.job_over(r.spec):
            return []

        def spill(node: str, now: float, sid: str) -> list[Command]:
            return [Send(to=r.submitter, msg=LeaseSpillback(req_id=r.req_id, node=node, reason=ev.reason,
                                                            stimulus_id=sid))]
        return self.scheduler.submit(r.spec, 0, now, ev.stimulus_id, on_placed=spill)

    def _on_reconstruct(self, ev: ReconstructObject, now: float) -> list[Command]:
        return self.recovery.on_request(ev.object_id, ev.node_id, now, ev.stimulus_id)

    # ------------------------------------------------------------------ actors
    def _on_actor_reported(self, ev: ActorReported, now: float) -> list[Command]:
        return self.actors.on_reported(ev, now)

    def _on_kill_actor(self, ev: KillActorRequest, now: float) -> list[Command]:
        return self.actors.kill(ev.actor_id, ev.no_restart, now, ev.stimulus_id, why=ev.reason or None)

    def _on_owner_died(self, ev: OwnerDied, now: float) -> list[Command]:
        return self.actors.on_owner_died(ev, now)

    # ------------------------------------------------------------------ job end
    def _on_job_finished(self, ev: JobFinished, now: float) -> list[Command]:
        job, sid = ev.job_id, ev.stimulus_id
        if job in self.ended_jobs:
            return []
        self.ended_jobs.add(job)
        cmds = self.actors.on_job_finished(job, now, sid)
        self.scheduler.drop_job(job)
        cmds += self.placement.on_job_finished(job, now, sid)
        nodes = sorted(self.scheduler.alive_nodes())
        self.ending[job] = set(nodes)
        for n in nodes:
            cmds.append(Send(to=n, msg=JobEnded(job_id=job, stimulus_id=sid)))
        cmds.append(SetTimer(at=now + self.config.job_end_retry, key=("job-end", job)))
        return cmds + self._forget_job_if_cleared(job, now, sid)

    def _on_job_cleared(self, ev: JobCleared, now: float) -> list[Command]:
        waiting = self.ending.get(ev.job_id)
        if waiting is None:
            return []
        waiting.discard(ev.node_id)
        return self._forget_job_if_cleared(ev.job_id, now, ev.stimulus_id)

    def _job_end_retry(self, job: int, now: float, sid: str) -> list[Command]:
        """A node has not answered JobEnded (a lost message): ask again;
        a node that died meanwhile no longer counts."""
        waiting = self.ending.get(job)
        if waiting is None:
            return []
        waiting.intersection_update(self.scheduler.alive_nodes())
        cmds: list[Command] = [Send(to=n, msg=JobEnded(job_id=job, stimulus_id=sid)) for n in sorted(waiting)]
        if waiting:
            cmds.append(SetTimer(at=now + self.config.job_end_retry, key=("job-end", job)))
        return cmds + self._forget_job_if_cleared(job, now, sid)

    def _forget_job_if_cleared(self, job: int, now: float, sid: str) -> list[Command]:
        if self.ending.get(job):
            return []
        self.ending.pop(job, None)
        return self.gcs.write(ForgetJob(job), ("job-forgotten", job), now, sid)

    def _on_job_forgotten(self, per_shard: tuple, now: float, sid: str) -> list[Command]:
        """The job's rows are gone; its objects' copies go too."""
        by_node: dict[str, list] = {}
        for released in per_shard:
            for oid, locations in released:
                for n in locations:
                    by_node.setdefault(n, []).append(oid)
        alive = set(self.scheduler.alive_nodes())
        return [Send(to=n, msg=DropObjects(object_ids=tuple(oids), stimulus_id=sid))
                for n, oids in sorted(by_node.items()) if n in alive]

    # ------------------------------------------------------------------ GCS replies
    def _on_gcs(self, ev: Event, now: float) -> list[Command]:
        cmds = self.gcs.handle(ev, now)
        if self.recovery.pending_scans:
            cmds += self.recovery.scan_if_settled(now)
        return cmds

    def _on_gcs_reply(self, token: Hashable, result: Any, now: float, sid: str) -> list[Command]:
        if token is None:
            return []
        kind = token[0]
        if kind == "recover":
            if token[1] == "on-node":
                return self._on_tasks_on_node(token[2], result, now, sid)
            return self._on_recover_read(token[1], result, now, sid)
        if kind == "gs-deps":
            return self.scheduler.on_deps(token[1], token[2], result, now, sid)
        if kind == "rec-obj":
            return self.recovery.on_object_row(token[1], token[2], result, now, sid)
        if kind == "rec-task":
            return self.recovery.on_task_row(token[1], token[2], result, now, sid)
        if kind == "rec-node":
            return self.recovery.on_tasks_on_node(token[1], result, now, sid)
        if kind == "node-down":
            node = token[1]
            cmds = self.actors.on_node_dead(node, now, sid)
            for job in sorted(j for j, waiting in self.ending.items() if node in waiting):
                # a dead node runs nothing of the job any more
                self.ending[job].discard(node)
                cmds += self._forget_job_if_cleared(job, now, sid)
            return cmds + self.recovery.on_node_dead(node, now, sid)
        if kind == "job-forgotten":
            return self._on_job_forgotten(result, now, sid)
        if kind == "actor-reread":
            return self.actors.on_reread(token[1], result, now, sid)
        if kind == "actor-fenced":
            return self.actors.on_fenced_written(token[1], token[2], result, now, sid)
        if kind == "actor-restarting":
            return self.actors.on_restarting_written(token[1], token[2], now, sid)
        if kind == "actor-ckpt":
            return self.actors.on_checkpoint_read(token[1], token[2], result, now, sid)
        if kind == "actor-log":
            return self.actors.on_log_read(token[1], token[2], result, now, sid)
        raise ValueError(f"head: unknown GCS reply token {token!r}")

    def _on_notify(self, ev: GcsNotify, now: float) -> list[Command]:
        if not self.gcs.fresh(ev):
            return []
        if ev.table == "actors":
            self.actors.on_entry(ev.key, ev.value)
            e = self.actors.actors.get(ev.key)
            if e is not None and e.state is not ActorState.DEAD and self.job_over(e.creation):
                # its row landed after its job ended (created a moment before
                # the driver exited): it dies with its job too (found by the
                # swarm: such an actor stayed PENDING for good)
                return self.actors.kill(ev.key, True, now, ev.stimulus_id, graceful=True,
                                        why=f"its job {e.creation.job_id} ended (its driver exited)")
            return []
        if ev.table == "placement_groups":
            return self.placement.on_entry(ev.key, ev.value, now, ev.stimulus_id)
        if ev.table == "tasks" and ev.value is not None and ev.value.state is not TaskState.PENDING:
            tid = ev.key
            if not self.recovery.on_rebuilt(tid, ev.value.attempt):
                return []  # the row of the run before the re-run we wait for
            if tid in self.watched_tasks:
                self.watched_tasks.discard(tid)
                self.gcs.forget("tasks", tid)
                return self.gcs.write(Unsubscribe(self.address, "tasks", tid), None, now, ev.stimulus_id)
        return []

    # ------------------------------------------------------------------ status
    def _on_status(self, ev: ClusterStatusRequest, now: float) -> list[Command]:
        rows = tuple(
            (n, v.alive, v.total, v.load) for n, v in sorted(self.scheduler.nodes.items())
        )
        return [Send(to=ev.client, msg=ClusterStatus(req_id=ev.req_id, nodes=rows, stimulus_id=ev.stimulus_id))]

    def validate(self) -> None:
        self.gcs.validate()
        self.chain.validate()
        self.scheduler.validate()
        self.actors.validate()
        self.recovery.validate()
        self.placement.validate()
        assert not any(n in self.dead_nodes for n in self.misses), "a dead node is still monitored"
        assert self.heard <= set(self.misses), "a heartbeat was counted for a node nobody monitors"
        for job in self.ending:
            assert job in self.ended_jobs, f"job {job} is being cleared but did not end"
        for p in list(self.scheduler.pending.values()) + list(self.scheduler.infeasible.values()):
            assert p.on_placed is not None or not self.job_over(p.spec), f"task {p.spec.task_id} of ended job {p.spec.job_id} still waits for placement"


_HANDLERS = {
    NodeJoin: HeadMachine._on_join,
    Heartbeat: HeadMachine._on_heartbeat,
    NodeDied: HeadMachine._on_node_died,
    TimerFired: HeadMachine._on_timer,
    ForwardTask: HeadMachine._on_forward,
    LeaseForward: HeadMachine._on_lease_forward,
    ReconstructObject: HeadMachine._on_reconstruct,
    ActorReported: HeadMachine._on_actor_reported,
    KillActorRequest: HeadMachine._on_kill_actor,
    OwnerDied: HeadMachine._on_owner_died,
    JobFinished: HeadMachine._on_job_finished,
    JobCleared: HeadMachine._on_job_cleared,
    GcsReply: HeadMachine._on_gcs,
    GcsNotify: HeadMachine._on_notify,
    ClusterStatusRequest: HeadMachine._on_status,
    BundlesPrepared: lambda self, ev, now: self.placement.on_prepared(ev, now),
    BundlesPrepareFailed: lambda self, ev, now: self.placement.on_prepare_failed(ev, now),
    BundlesCommitted: lambda self, ev, now: self.placement.on_committed(ev, now),
    BundlesReleased: lambda self, ev, now: self.placement.on_released(ev, now),
    ReplicaHeartbeat: HeadMachine._chain,
    ReplicaJoin: HeadMachine._chain,
    ReplicaReady: HeadMachine._chain,
    ChainConfigMsg: HeadMachine._on_gcs,
    ChainReport: HeadMachine._chain,
    TasksHeldReport: HeadMachine._on_tasks_held,
}
