"""A node: local scheduler, object manager, actor host and router, GCS client.

Theory of operation
-------------------
``NodeMachine`` is the one machine per node (its address is its node id, e.g.
``"node:3"``).  It composes the per-node roles and routes every event to the
one that owns it; the roles call back into the node for what they share
(GCS writes, storing task outputs, failing outputs with an error, stories),
which lives below them in ``NodeEffects`` (core/node_effects.py), a base
class of ``NodeMachine``: the roles know the node by that type and never
import this module.  Job end and a recovered head's questions are
``NodeJobs`` (core/node_jobs.py), another base.

Clients (the drivers and the workers of this node, which submit nested
tasks) talk only to their node: ``SubmitTask``, ``WatchObjects`` (for
``get``/``wait``), ``PutObject``, ``CancelTask``, ``KillActor``.  Answers to a
client are batched: every object that became ready for a watch while one
event was handled goes out in a single ``ObjectsReady``.

Waiter tokens (what the object manager hands back when an object is ready):

========================  ==================================================
token                     owner
========================  ==================================================
``("task", tid)``         the local scheduler (a task's input)
``("actor-call", a, t)``  the actor host (a method call's input)
``("watch", c, r)``       client ``c``'s watch ``r`` (``get``/``wait``)
========================  ==================================================
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable

from .actor_direct import DirectHost
from .actor_host import ActorHost, ActorStart
from .actor_router import ActorRouter
from .gcs_client import GcsClient
from .ids import ActorId, ObjectId, TaskId
from .messages import (
    ActorCall,
    ActorCallDone,
    ActorCallStale,
    ActorFloor,
    CancelActorCall,
    OwnerDied,
    ActorCheckpointed,
    ActorRegistered,
    CancelTask,
    CancelWatch,
    ChainConfigMsg,
    ClientDisconnected,
    ClientGcsReply,
    ClientGcsRequest,
    ClusterStatus,
    ClusterStatusRequest,
    Command,
    Event,
    Fenced,
    FetchCompleted,
    FetchFailed,
    GcsNotify,
    GcsReply,
    DropObjects,
    Heartbeat,
    JobEnded,
    JobFinished,
    KillActor,
    KillActorRequest,
    Log,
    NodeJoin,
    NodeWelcome,
    TasksHeldQuery,
    ObjectsReady,
    ObjectUnrecoverable,
    PlaceTask,
    PutDone,
    PutFailed,
    PutObject,
    RegisterClient,
    ReleaseObjects,
    Send,
    SetTimer,
    StartActor,
    StopActor,
    StopNode,
    SubmitTask,
    TaskFinished,
    TaskRaised,
    TimerFired,
    WatchObjects,
    WorkerBlocked,
    WorkerCrashed,
    WorkerStarted,
    WorkerStartFailed,
    WorkerUnblocked,
    Evict,
    ObjectRestored,
    ObjectsSpilled,
    RestoreFailed,
    SpillFailed,
    CommitBundles,
    PrepareBundles,
    ReleaseBundles,
)
from .msg_direct import ActorEndpoint, CallsSkipped, DirectCallFailed, DirectCallsRan, DirectCallsRecorded, WatchActor
from .lease_host import RECORDED_TOKEN, LeaseHost
from .msg_leases import RecordTasks, RequestLease, ReturnLease, SubmitterGone, TasksRan
from .placement import BundleHolder
from .node_jobs import NodeJobs
from .objects import ObjectManager
from .records import ActorEntry, NodeEntry, ObjectEntry, ObjectInfo
from .scheduler import LocalScheduler, SchedulerConfig
from .specs import ResourceSet, TaskSpec
from .tables import PutActor, RegisterName, Subscribe
from .timeline import Timeline

__all__ = ["NodeConfig", "NodeMachine"]


@dataclass(frozen=True, slots=True)
class NodeConfig:
    resources: ResourceSet
    object_store_memory: int = 1 << 30
    scheduler: SchedulerConfig = SchedulerConfig()
    heartbeat_interval: float = 0.1
    head: str = "head"
    gcs_retry_after: float = 0.05
    story_limit: int = 10_000
    # runs kept for ``penumbra.timeline()`` (the last N; 0: none), see core/timeline.py
    timeline_limit: int = 10_000
    # spill client-pinned objects to local disk rather than fail admission
    # (Ray's object spilling; see core/objects.py), in the background once
    # pinned bytes pass ``spill_threshold`` of the store
    spilling: bool = False
    spill_threshold: float = 0.8


# a watch with ``need`` holds at most this many ready objects before reporting
_HOLD_MAX = 1024


@dataclass(slots=True)
class _Watch:
    client: str
    # (a dict, not a set: iterated when a watch is dropped, and a set of ids
    # iterates in an order that changes with the process's hash seed, which
    # made a simulation's trace differ from one process to the next)
    remaining: dict[ObjectId, None]
    fetch: bool
    need: int = 1
    # ready objects not reported yet, until ``need`` of them are (None:
    # report each one as it comes)
    held: list[tuple[ObjectId, ObjectInfo]] | None = None


class NodeMachine(NodeJobs):
    """One node's machine: routes each event to the role that owns it (the
    effects the roles share are ``NodeEffects``, core/node_effects.py)."""

    # (31 attributes: from 30 on CPython 3.11 gives every instance a dict of
    # its own and reads go through it -- see tests/test_sim_inline_attrs.py;
    # the bases keep a __dict__ for what they and tests set)
    __slots__ = ("address", "bundles", "clients", "config", "direct", "doomed", "ended_jobs", "exited_jobs",
                 "fenced", "gcs", "head", "heartbeats_sent", "host", "leases", "next_relay", "node_id", "nodes", "objects",
                 "outbox", "owned_actors", "pending_clears", "pending_held", "pending_puts", "relays", "router",
                 "scheduler", "stories", "story_texts", "timeline", "watches", "welcomed")

    def __init__(self, node_id: str, config: NodeConfig) -> None:
        self.node_id = node_id
        self.address = node_id
        self.config = config
        self.head = config.head
        self.gcs = GcsClient(self.address, self._on_gcs_reply, retry_after=config.gcs_retry_after)
        self.objects = ObjectManager(
            node_id, self.address, config.object_store_memory,
            self.gcs_write, self._on_ready, self._on_located, head=config.head,
            produced_here=self._produced_here, gcs_read=self.gcs_read,
            spilling=config.spilling, spill_threshold=config.spill_threshold,
        )
        self.scheduler = LocalScheduler(self, config.resources, config.scheduler)
        self.bundles = BundleHolder(self)  # placement group bundles held here
        self.host = ActorHost(self)
        self.router = ActorRouter(self)
        self.direct = DirectHost(self)  # direct actor calls: endpoints, watches, what ran
        self.leases = LeaseHost(self)  # worker leases: grants, reclaims, what leased workers ran
        self.clients: dict[str, int] = {}  # client -> job id (drivers)
        self.watches: dict[tuple[str, int], _Watch] = {}
        self.outbox: dict[tuple[str, int], list[tuple[ObjectId, ObjectInfo]]] = {}
        self.relays: dict[int, tuple[str, int]] = {}
        self.next_relay = 1
        self.nodes: dict[str, bool] = {}
        self.stories: OrderedDict[TaskId, list] = OrderedDict()
        self.story_texts: dict[str, str] = {}
        self.timeline = Timeline(config.timeline_limit)
        self.welcomed = False
        self.fenced = False
        self.heartbeats_sent = 0  # numbers the heartbeats (the head spots lost ones by a gap)
        # jobs the head said are over: their tasks are refused from now on
        # (one int per job ever run on the cluster)
        self.ended_jobs: set[int] = set()
        # jobs whose last driver here exited (we sent the head JobFinished,
        # which a head that died meanwhile never read: a recovered head is
        # told again in TasksHeldReport)
        self.exited_jobs: set[int] = set()
        # copies of an ended job's objects that something here still held
        # when the head said to drop them (an input of a task being killed):
        # deleted once nothing holds them (see ``_sweep_doomed``)
        self.doomed: set[ObjectId] = set()
        # (job, the GCS client's ``made`` then, stimulus) of ended jobs this
        # node has cleared but not yet reported: see ``_on_job_ended``
        self.pending_clears: list[tuple[int, int, str]] = []
        # a recovered head's first TasksHeldQuery, answered once the GCS
        # writes made before it landed: (mark, stimulus id, the objects
        # stored then: see ``_on_copies_listed``)
        self.pending_held: list[tuple[int, str, frozenset[ObjectId]]] = []
        # worker -> the non-detached actors it created (it owns them: they
        # die with it, Ray's fate sharing; see _on_worker_crashed)
        self.owned_actors: dict[str, list[ActorId]] = {}
        # puts admitted against spills still being written: their PutDone
        # waits until the store's memory is back under capacity (a put
        # blocks while spilling makes room, as in Ray), so a program putting
        # faster than the disk writes cannot fill memory past the store
        self.pending_puts: list[Send] = []

    def _produced_here(self, oid: ObjectId) -> bool:
        if oid.is_put:
            return False
        tid = oid.task_id
        return tid in self.scheduler.tasks or self.router.produces_here(tid)

    # ------------------------------------------------------------------ lifecycle
    def start(self, now: float) -> list[Command]:
        cmds: list[Command] = [self._join()]
        cmds += self.scheduler.start(now)
        cmds.append(SetTimer(at=now + self.config.heartbeat_interval, key=("node", "heartbeat")))
        cmds.append(SetTimer(at=now + ObjectManager.REFRESH, key=("node", "refresh")))
        return cmds

    def _join(self) -> Send:
        return Send(to=self.head, msg=NodeJoin(node_id=self.node_id, resources=self.config.resources,
                                               address=self.address, stimulus_id=f"join:{self.node_id}"))

    def handle(self, event: Event, now: float) -> list[Command]:
        if self.fenced:
            return []  # a stopped node does nothing more
        h = _HANDLERS.get(type(event))
        if h is None:
            return []
        cmds = h(self, event, now)
        if self.leases.queue:  # (lease requests wait for a worker: core/lease_host.py)
            cmds += self.leases.grant(now, event.stimulus_id)
        store = self.objects.store
        if store.files_to_delete or store.unpinned_spilled:
            cmds += self.objects.drain_spill_changes(now, event.stimulus_id)
        if self.pending_puts and (not store.spilling or store.used <= store.capacity + store.over):
            cmds += self.pending_puts
            self.pending_puts = []
        if self.doomed:
            cmds += self._sweep_doomed(event.stimulus_id)
        if self.pending_clears:
            cmds += self._send_clears()
        if self.pending_held:
            cmds += self._send_held(now)
        if self.outbox:
            cmds += self._flush_outbox(event.stimulus_id)
        return cmds

    def _flush_outbox(self, sid: str) -> list[Command]:
        out, self.outbox = self.outbox, {}
        return [
            Send(to=client, msg=ObjectsReady(req_id=req_id, objects=tuple(objs), stimulus_id=sid))
            for (client, req_id), objs in out.items()
        ]

    def _on_welcome(self, ev: NodeWelcome, now: float) -> list[Command]:
        cmds = self.gcs.set_configs(ev.configs, now)
        if not self.welcomed:
            self.welcomed = True
            cmds += self.gcs.write(Subscribe(self.address, "nodes", None), None, now, ev.stimulus_id)
        return cmds

    def _on_timer(self, ev: TimerFired, now: float) -> list[Command]:
        key = ev.key
        if self.gcs.owns(ev):
            return self.gcs.handle(ev, now)
        if key == ("node", "heartbeat"):
            self.heartbeats_sent += 1
            cmds = [
                SetTimer(at=now + self.config.heartbeat_interval, key=("node", "heartbeat")),
                Send(to=self.head, msg=Heartbeat(node_id=self.node_id, load=self.scheduler.load(),
                                                 seq=self.heartbeats_sent)),
            ]
            return cmds
        if key[0] == "sched":
            return self.scheduler.on_retry_timer(now, ev.stimulus_id)
        if key == ("node", "refresh"):
            # the safety net under pub/sub: re-read rows we waited on too long
            sid = ev.stimulus_id
            # not welcomed yet: our NodeJoin may have gone to a head that
            # died (lost while there was no head; the recovered head does
            # not know us and ignores our heartbeats): say it again
            join = [] if self.welcomed else [self._join()]
            return (join + [SetTimer(at=now + ObjectManager.REFRESH, key=("node", "refresh"))]
                    + self.objects.on_refresh(now, sid) + self.router.on_refresh(now, sid)
                    + self.router.refresh_hosted(now, sid) + self.direct.on_refresh(now, sid))
        if key[0] == "obj":
            return self.objects.on_recheck(key[2], now, ev.stimulus_id)
        if key[0] == "actor-shutdown":
            return self.host.on_shutdown_timer(key[1], key[2], now, ev.stimulus_id)
        return []

    # ------------------------------------------------------------------ clients
    def _on_register_client(self, ev: RegisterClient, now: float) -> list[Command]:
        if ev.is_driver:
            self.clients[ev.client] = ev.job_id
        return []

    def _on_client_disconnected(self, ev: ClientDisconnected, now: float) -> list[Command]:
        cmds: list[Command] = []
        self.objects.store.unpin_holder(("client", ev.client))
        for key in [k for k in self.watches if k[0] == ev.client]:
            cmds += self._drop_watch(key, now, ev.stimulus_id)
        if self.direct.watchers:
            cmds += self.direct.client_gone(ev.client, now, ev.stimulus_id)
        # (always: a lease request of this client may still be on its way)
        cmds += self.leases.submitter_gone(ev.client, now, ev.stimulus_id)
        job = self.clients.pop(ev.client, None)
        # (job 0: a driver that left before it learned its job id; it
        # submitted nothing)
        if job and job not in self.clients.values():
            self.exited_jobs.add(job)
            cmds.append(Send(to=self.head, msg=JobFinished(job_id=job, stimulus_id=ev.stimulus_id)))
        return cmds

    def _on_submit(self, ev: SubmitTask, now: float) -> list[Command]:
        spec = ev.spec
        sid = ev.stimulus_id
        if self.ended_jobs and self._job_over(spec, now, sid):
            return []
        if spec.actor_id is not None:
            return self.router.submit(spec, now, sid)
        if spec.actor_creation is not None:
            a = spec.actor_creation
            if a.name:
                return self.gcs.write(RegisterName(a.namespace, a.name, a.actor_id), ("register", ev.client, spec), now, sid)
            return self._create_actor(spec, ev.client, now, sid)
        return self.scheduler.submit(spec, now, sid)

    def _create_actor(self, spec: TaskSpec, client: str, now: float, sid: str) -> list[Command]:
        entry = ActorEntry(spec.actor_creation, spec, owner=client)
        # (create_only: if this write is dropped and resent, the actor may be
        # ALIVE, or killed, by the time it lands -- a creation waiting for
        # its placement group is placed by the head meanwhile)
        cmds = self.gcs.write(PutActor(entry, create_only=True), None, now, sid)
        if not spec.actor_creation.detached and client.startswith(self.node_id + "/w"):
            # a worker of ours owns it: it dies with that worker (see
            # _on_worker_crashed); the driver's die with its job
            aid = spec.actor_creation.actor_id
            if client in self.scheduler.workers:
                self.owned_actors.setdefault(client, []).append(aid)
            else:  # (gone already: while its actor's name was registered)
                cmds.append(Send(to=self.head, msg=OwnerDied(owner=client, actor_ids=(aid,), reason="it died",
                                                             stimulus_id=sid)))
        return cmds + self.scheduler.submit(spec, now, sid, actor=ActorStart(entry))

    def _on_watch(self, ev: WatchObjects, now: float) -> list[Command]:
        key = (ev.client, ev.req_id)
        remaining = dict.fromkeys(ev.object_ids)
        need = min(ev.need, len(remaining))
        self.watches[key] = _Watch(ev.client, remaining, ev.fetch, need, [] if need > 1 else None)
        token = ("watch", ev.client, ev.req_id)
        cmds: list[Command] = []
        for oid in dict.fromkeys(ev.object_ids):
            if key not in self.watches:
                break
            cmds += self.objects.want(oid, token, ev.fetch, now, ev.stimulus_id)
        return cmds

    def _on_cancel_watch(self, ev: CancelWatch, now: float) -> list[Command]:
        return self._drop_watch((ev.client, ev.req_id), now, ev.stimulus_id)

    def _drop_watch(self, key: tuple[str, int], now: float, sid: str) -> list[Command]:
        w = self.watches.pop(key, None)
        if w is None:
            return []
        token = ("watch",) + key
        cmds: list[Command] = []
        for oid in w.remaining:
            cmds += self.objects.unwant(oid, token, now, sid)
        return cmds

    def _watch_ready(self, key: tuple[str, int], oid: ObjectId, info: ObjectInfo) -> None:
        w = self.watches.get(key)
        if w is None or oid not in w.remaining:
            return
        del w.remaining[oid]
        held = w.held
        if held is None:
            self.outbox.setdefault(key, []).append((oid, info))
        else:
            held.append((oid, info))
            if len(held) < w.need and len(held) < _HOLD_MAX and w.remaining:
                return
            # (in chunks of at most _HOLD_MAX, so no report grows unbounded)
            w.need -= len(held)
            w.held = [] if w.need > 1 else None
            self.outbox.setdefault(key, []).extend(held)
        if not w.remaining:
            del self.watches[key]

    def _on_put(self, ev: PutObject, now: float) -> list[Command]:
        adm, cmds = self.objects.add_local(ev.object_id, ev.size, now, ev.stimulus_id, pin=("client", ev.client),
                                           job_id=self.clients.get(ev.client))
        if not adm.ok:
            return cmds + [Evict(object_id=ev.object_id, stimulus_id=ev.stimulus_id),
                           Send(to=ev.client, msg=PutFailed(req_id=ev.req_id, object_id=ev.object_id, error=adm.error, stimulus_id=ev.stimulus_id))]
        done = Send(to=ev.client, msg=PutDone(req_id=ev.req_id, object_id=ev.object_id, stimulus_id=ev.stimulus_id))
        store = self.objects.store
        if store.spilling and store.used > store.capacity + store.over:
            self.pending_puts.append(done)  # (sent once the spills make room: see ``handle``)
            return cmds
        return cmds + [done]

    def _on_release(self, ev: ReleaseObjects, now: float) -> list[Command]:
        holder = ("client", ev.client)
        for oid in ev.object_ids:
            self.objects.store.unpin(oid, holder)
        if not ev.free:
            return []
        cmds: list[Command] = []
        for oid in ev.object_ids:
            if not oid.is_put and oid not in self.objects.store.objects and oid not in self.objects.store.spilled:
                self.direct.note_freed(oid)  # (a direct call's output whose report is on its way, maybe)
            cmds += self.objects.free(oid, now, ev.stimulus_id)
        return cmds

    def _on_cancel(self, ev: CancelTask, now: float) -> list[Command]:
        found, cmds = self.scheduler.cancel(ev.task_id, ev.force, now, ev.stimulus_id)
        if not found:
            found, cmds = self.router.cancel(ev.task_id, now, ev.stimulus_id)
        return cmds

    def _on_kill_actor(self, ev: KillActor, now: float) -> list[Command]:
        if ev.no_restart:
            self.router.killed_here(ev.actor_id)
        if ev.exiting is not None and ev.no_restart and self.host.by_worker.get(ev.client) == ev.actor_id:
            # exit_actor(): the actor ends itself, once the results of the
            # calls before this one are recorded (see ActorHost.on_exit)
            return self.host.on_exit(ev.actor_id, ev.exiting, now, ev.stimulus_id)
        return [Send(to=self.head, msg=KillActorRequest(actor_id=ev.actor_id, no_restart=ev.no_restart, stimulus_id=ev.stimulus_id))]

    def _on_client_gcs(self, ev: ClientGcsRequest, now: float) -> list[Command]:
        from .tables import Query

        token = ("client", ev.client, ev.req_id)
        if isinstance(ev.request, Query):
            return self.gcs.read(ev.request, token, now, ev.stimulus_id)
        return self.gcs.write(ev.request, token, now, ev.stimulus_id)

    def _on_status_request(self, ev: ClusterStatusRequest, now: float) -> list[Command]:
        rid = self.next_relay
        self.next_relay += 1
        self.relays[rid] = (ev.client, ev.req_id)
        return [Send(to=self.head, msg=ClusterStatusRequest(client=self.address, req_id=rid, stimulus_id=ev.stimulus_id))]

    def _on_status(self, ev: ClusterStatus, now: float) -> list[Command]:
        to = self.relays.pop(ev.req_id, None)
        if to is None:
            return []
        return [Send(to=to[0], msg=ClusterStatus(req_id=to[1], nodes=ev.nodes, stimulus_id=ev.stimulus_id))]

    # ------------------------------------------------------------------ workers
    def _on_worker_started(self, ev: WorkerStarted, now: float) -> list[Command]:
        return self.scheduler.on_worker_started(ev.worker_id, now, ev.stimulus_id)

    def _on_worker_start_failed(self, ev: WorkerStartFailed, now: float) -> list[Command]:
        return self.scheduler.on_worker_start_failed(ev.worker_id, ev.reason, now, ev.stimulus_id)

    def _record_run(self, wid: str, tid: TaskId, span: tuple[float, float] | None, duration: float, now: float,
                    status: str) -> None:
        """Keep the run that just ended on ``wid`` for the timeline (before
        the scheduler or the actor host forgets it)."""
        if not self.timeline.limit:
            return
        running = self._running(wid, tid)
        if running is None:
            return  # (a run this node no longer counts: a superseded instance's)
        start, end = span if span is not None else (now - duration, now)
        self.timeline.record(running[0], running[1], wid, start, end, status)

    def _running(self, wid: str, tid: TaskId) -> tuple[TaskSpec, int] | None:
        """The spec and attempt of ``tid`` running on worker ``wid``."""
        t = self.scheduler.tasks.get(tid)
        if t is not None and t.worker == wid:
            return t.spec, t.attempt
        return self.host.running_call(wid, tid)

    def _on_task_finished(self, ev: TaskFinished, now: float) -> list[Command]:
        self._record_run(ev.worker_id, ev.task_id, ev.span, ev.duration, now, "ok")
        if self.host.owns_worker(ev.worker_id):
            return self.host.on_finished(ev.worker_id, ev.task_id, ev.outputs, now, ev.stimulus_id)
        return self.scheduler.on_task_finished(ev.worker_id, ev.task_id, ev.outputs, ev.duration, now, ev.stimulus_id)

    def _on_task_raised(self, ev: TaskRaised, now: float) -> list[Command]:
        self._record_run(ev.worker_id, ev.task_id, ev.span, ev.duration, now, ev.error.kind.value)
        if self.host.owns_worker(ev.worker_id):
            return self.host.on_raised(ev.worker_id, ev.task_id, ev.error, now, ev.stimulus_id)
        return self.scheduler.on_task_raised(ev.worker_id, ev.task_id, ev.error, ev.retryable, now, ev.stimulus_id)

    def _on_worker_crashed(self, ev: WorkerCrashed, now: float) -> list[Command]:
        if self.timeline.limit:
            self._record_crash(ev.worker_id, now)
        cmds: list[Command] = []
        owned = self.owned_actors.pop(ev.worker_id, None)
        if owned:
            cmds.append(Send(to=self.head, msg=OwnerDied(owner=ev.worker_id, actor_ids=tuple(owned), reason=ev.reason,
                                                         stimulus_id=ev.stimulus_id)))
        if ev.worker_id in self.leases.by_worker:
            cmds += self.leases.on_worker_crashed(ev.worker_id, ev.reason, now, ev.stimulus_id)
        if self.host.owns_worker(ev.worker_id):
            return cmds + self.host.on_worker_died(ev.worker_id, ev.reason, now, ev.stimulus_id) + self.scheduler.dispatch(now, ev.stimulus_id)
        return cmds + self.scheduler.on_worker_crashed(ev.worker_id, ev.reason, now, ev.stimulus_id)

    def _record_crash(self, wid: str, now: float) -> None:
        """The runs a crashed worker had: a task's bar from its dispatch, an
        actor call's empty at the crash (it may have waited on the worker)."""
        w = self.scheduler.workers.get(wid)
        t = self.scheduler.tasks.get(w.task) if w is not None and w.task is not None else None
        if t is not None and t.worker == wid:
            self.timeline.record(t.spec, t.attempt, wid, t.started_at, now, "worker_crashed")
        for spec, attempt in self.host.running_calls(wid):
            self.timeline.record(spec, attempt, wid, now, now, "worker_crashed")

    def _on_blocked(self, ev: WorkerBlocked, now: float) -> list[Command]:
        return self.scheduler.on_blocked(ev.worker_id, now, ev.stimulus_id)

    def _on_unblocked(self, ev: WorkerUnblocked, now: float) -> list[Command]:
        return self.scheduler.on_unblocked(ev.worker_id, now, ev.stimulus_id)

    def _on_checkpointed(self, ev: ActorCheckpointed, now: float) -> list[Command]:
        return self.host.on_checkpointed(ev.actor_id, ev.index, ev.payload, now, ev.stimulus_id)

    # ------------------------------------------------------------------ objects
    def _on_ready(self, oid: ObjectId, info: ObjectInfo, waiters: list[Hashable], now: float, sid: str) -> list[Command]:
        cmds: list[Command] = []
        for token in waiters:
            kind = token[0]
            if kind == "task":
                cmds += self.scheduler.on_input_ready(token[1], oid, info, now, sid)
            elif kind == "watch":
                self._watch_ready((token[1], token[2]), oid, info)
            elif kind == "actor-call":
                cmds += self.host.on_input_ready(token[1], token[2], oid, info, now, sid)
        return cmds

    def _on_located(self, oid: ObjectId, entry: ObjectEntry, waiters: list[Hashable], now: float, sid: str) -> list[Command]:
        cmds: list[Command] = []
        for token in waiters:
            kind = token[0]
            if kind == "task":
                cmds += self.scheduler.on_located(token[1], oid, entry, now, sid)
            elif kind == "watch":
                self._watch_ready((token[1], token[2]), oid, ObjectInfo(size=entry.size, error=entry.error))
                # told where it is, the watch is done with it: keep no want
                # (nor GCS subscription, re-read every REFRESH) behind it
                # (found by the swarm's quiet-cluster check, seed 238)
                cmds += self.objects.unwant(oid, token, now, sid)
        return cmds

    def _on_fetch_completed(self, ev: FetchCompleted, now: float) -> list[Command]:
        return self.objects.on_fetch_completed(ev.object_id, ev.size, now, ev.stimulus_id)[1]

    def _on_fetch_failed(self, ev: FetchFailed, now: float) -> list[Command]:
        return self.objects.on_fetch_failed(ev.object_id, ev.from_node, now, ev.stimulus_id)

    def _on_spilled(self, ev: ObjectsSpilled, now: float) -> list[Command]:
        return self.objects.on_spilled(ev.object_ids, now, ev.stimulus_id)

    def _on_spill_failed(self, ev: SpillFailed, now: float) -> list[Command]:
        return self.objects.on_spill_failed(ev.object_ids, ev.reason, now, ev.stimulus_id)

    def _on_restored(self, ev: ObjectRestored, now: float) -> list[Command]:
        return self.objects.on_restored(ev.object_id, ev.size, now, ev.stimulus_id)

    def _on_restore_failed(self, ev: RestoreFailed, now: float) -> list[Command]:
        return self.objects.on_restore_failed(ev.object_id, ev.reason, now, ev.stimulus_id)

    def _on_unrecoverable(self, ev: ObjectUnrecoverable, now: float) -> list[Command]:
        return self.objects.on_object_unrecoverable(ev.object_id, ev.error, now, ev.stimulus_id)

    # ------------------------------------------------------------------ scheduling and actors
    def _on_place(self, ev: PlaceTask, now: float) -> list[Command]:
        spec = ev.spec
        if self.ended_jobs and self._job_over(spec, now, ev.stimulus_id):
            return []
        actor = ActorStart(ActorEntry(spec.actor_creation, spec)) if spec.actor_creation is not None else None
        return self.scheduler.submit(spec, now, ev.stimulus_id, placed=True, attempt=ev.attempt, record=False,
                                     reconstruction=ev.reconstruction, actor=actor)

    def _on_start_actor(self, ev: StartActor, now: float) -> list[Command]:
        start = ActorStart(ev.entry, ev.replay, ev.checkpoint, ev.seqs)
        return self.scheduler.submit(ev.entry.creation, now, ev.stimulus_id, placed=True, record=False, actor=start)

    def _on_actor_call(self, ev: ActorCall, now: float) -> list[Command]:
        return self.host.on_call(ev, now, ev.stimulus_id)

    def _on_call_done(self, ev: ActorCallDone, now: float) -> list[Command]:
        return self.router.on_done(ev, now, ev.stimulus_id)

    def _on_floor(self, ev: ActorFloor, now: float) -> list[Command]:
        return self.host.on_floor(ev, now, ev.stimulus_id)

    def _on_cancel_call(self, ev: CancelActorCall, now: float) -> list[Command]:
        return self.host.on_cancel(ev, now, ev.stimulus_id)

    def _on_call_stale(self, ev: ActorCallStale, now: float) -> list[Command]:
        return self.router.on_stale(ev, now, ev.stimulus_id)

    def _on_stop_actor(self, ev: StopActor, now: float) -> list[Command]:
        return self.host.on_stop(ev, now, ev.stimulus_id)

    # ------------------------------------------------------------------ GCS
    def _on_gcs(self, ev: Event, now: float) -> list[Command]:
        return self.gcs.handle(ev, now)

    def _on_gcs_reply_msg(self, ev: GcsReply, now: float) -> list[Command]:
        return self.gcs._on_reply(ev, now)

    def _on_gcs_reply(self, token: Hashable, result: Any, now: float, sid: str) -> list[Command]:
        if token is None:
            return []
        kind = token[0]
        if kind == "client":
            return [Send(to=token[1], msg=ClientGcsReply(req_id=token[2], result=result, stimulus_id=sid))]
        if kind == "actor-alive":
            return self.host.on_alive_written(token[1], token[2], result, now, sid)
        if kind == "obj-sub":
            return self.objects.on_entry(token[1], result, now, sid)
        if kind == "obj-refresh":
            return self.objects.on_entry(token[1], result, now, sid, refresh=True)
        if kind == "copies-listed":
            return self._on_copies_listed(token[1], result, now, sid)
        if kind == "actor-sub":
            return self._actor_row(token[1], result, now, sid)
        if kind == "actor-logged":
            return self.host.on_logged(token[1], token[2], token[3], result, now, sid)
        if kind == "actor-released":
            return self.host.on_released(token[1], token[2], token[3], now, sid)
        if kind == "actor-covered":
            return self.host.on_covered_row(token[1], token[2], token[3], result, now, sid)
        if kind == "direct-endpoint":
            return self.direct.on_endpoint_row(token[1], result, now, sid)
        if kind == RECORDED_TOKEN:
            return self.leases.on_recorded(token[1], token[2], sid)
        if kind == "register":
            client, spec = token[1], token[2]
            a = spec.actor_creation
            if result != a.actor_id:
                return [Send(to=client, msg=ActorRegistered(
                    actor_id=a.actor_id, holder=result,
                    error=f"an actor named {a.name!r} already exists in namespace {a.namespace!r}; "
                          f"use penumbra.get_actor({a.name!r}) to get a handle to it, or pick another name",
                    stimulus_id=sid,
                ))]
            cmds = [Send(to=client, msg=ActorRegistered(actor_id=a.actor_id, stimulus_id=sid))]
            return cmds + self._create_actor(spec, client, now, sid)
        raise ValueError(f"node {self.node_id}: unknown GCS reply token {token!r}")

    def _on_notify(self, ev: GcsNotify, now: float) -> list[Command]:
        if not self.gcs.fresh(ev):
            return []
        table = ev.table
        if table == "objects":
            if ev.key not in self.objects.wants:
                # a change that crossed our unsubscribe: no version to keep
                self.gcs.forget(table, ev.key)
                return []
            return self.objects.on_entry(ev.key, ev.value, now, ev.stimulus_id)
        if table == "actors":
            return self._actor_row(ev.key, ev.value, now, ev.stimulus_id)
        if table == "kv":
            return self.direct.on_notify_key(ev.key, ev.value, now, ev.stimulus_id)
        if table == "nodes":
            entry: NodeEntry = ev.value
            if entry is None:
                return []
            if entry.node_id == self.node_id:
                if not entry.alive:
                    return self._fence("the cluster declared this node dead", ev.stimulus_id)
                return []
            # (counted incrementally: a cluster of N nodes sends each node N
            # of these at start-up, so a recount would make start-up O(N^3))
            was = self.nodes.get(entry.node_id, False)
            self.nodes[entry.node_id] = entry.alive
            self.scheduler.other_nodes_alive += int(entry.alive) - int(was)
            if not entry.alive:
                for old in self.objects.dead_nodes.add(entry.node_id):  # (only the latest: core/dead_nodes.py)
                    if self.nodes.pop(old, False):
                        self.scheduler.other_nodes_alive -= 1
                    self.gcs.forget("nodes", old)
                cmds = self.objects.on_node_dead(entry.node_id, now, ev.stimulus_id)
                if self.leases.leases:
                    cmds += self.leases.home_died(entry.node_id, now, ev.stimulus_id)
                return cmds
        return []

    def _actor_row(self, aid, entry, now: float, sid: str) -> list[Command]:
        cmds = self.router.on_entry(aid, entry, now, sid) + self.host.on_entry(aid, entry, now, sid)
        if self.direct.active():
            cmds += self.direct.on_row(aid, now, sid)
        return cmds

    def _on_fenced(self, ev: Fenced, now: float) -> list[Command]:
        return self._fence(ev.reason or "the head declared this node dead", ev.stimulus_id)

    def _fence(self, reason: str, sid: str) -> list[Command]:
        if self.fenced:
            return []
        self.fenced = True
        return [Log(level="warning", text=f"node {self.node_id} stops: {reason}", stimulus_id=sid),
                StopNode(reason=reason, stimulus_id=sid)]

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        self.objects.validate()
        store = self.objects.store
        assert not self.pending_puts or (store.spilling and store.used > store.capacity + store.over), (
            "puts wait for a spill that is not in flight")
        self.scheduler.validate(self.host.held())
        self.bundles.validate()
        self.host.validate()
        self.router.validate()
        self.direct.validate()
        self.leases.validate()
        self.gcs.validate()
        for key, w in self.watches.items():
            assert w.remaining, f"watch {key} has nothing left but is still open"
            assert w.held is None or len(w.held) < min(w.need, _HOLD_MAX), f"watch {key} holds {len(w.held)} reports, enough to send"
        assert self.scheduler.other_nodes_alive == sum(1 for a in self.nodes.values() if a), "live peer count is off"
        if self.ended_jobs:
            for tid, t in self.scheduler.tasks.items():
                a = t.spec.actor_creation
                assert t.spec.job_id not in self.ended_jobs or (a is not None and a.detached), (
                    f"task {tid} of ended job {t.spec.job_id} is still queued or running")


_HANDLERS = {
    NodeWelcome: NodeMachine._on_welcome,
    TasksHeldQuery: NodeMachine._on_tasks_held_query,
    TimerFired: NodeMachine._on_timer,
    RegisterClient: NodeMachine._on_register_client,
    ClientDisconnected: NodeMachine._on_client_disconnected,
    SubmitTask: NodeMachine._on_submit,
    WatchObjects: NodeMachine._on_watch,
    CancelWatch: NodeMachine._on_cancel_watch,
    PutObject: NodeMachine._on_put,
    ReleaseObjects: NodeMachine._on_release,
    CancelTask: NodeMachine._on_cancel,
    KillActor: NodeMachine._on_kill_actor,
    ClientGcsRequest: NodeMachine._on_client_gcs,
    ClusterStatusRequest: NodeMachine._on_status_request,
    ClusterStatus: NodeMachine._on_status,
    WorkerStarted: NodeMachine._on_worker_started,
    WorkerStartFailed: NodeMachine._on_worker_start_failed,
    TaskFinished: NodeMachine._on_task_finished,
    TaskRaised: NodeMachine._on_task_raised,
    WorkerCrashed: NodeMachine._on_worker_crashed,
    WorkerBlocked: NodeMachine._on_blocked,
    WorkerUnblocked: NodeMachine._on_unblocked,
    ActorCheckpointed: NodeMachine._on_checkpointed,
    FetchCompleted: NodeMachine._on_fetch_completed,
    FetchFailed: NodeMachine._on_fetch_failed,
    ObjectUnrecoverable: NodeMachine._on_unrecoverable,
    ObjectsSpilled: NodeMachine._on_spilled,
    SpillFailed: NodeMachine._on_spill_failed,
    ObjectRestored: NodeMachine._on_restored,
    RestoreFailed: NodeMachine._on_restore_failed,
    PlaceTask: NodeMachine._on_place,
    StartActor: NodeMachine._on_start_actor,
    ActorCall: NodeMachine._on_actor_call,
    ActorCallDone: NodeMachine._on_call_done,
    ActorFloor: NodeMachine._on_floor,
    CancelActorCall: NodeMachine._on_cancel_call,
    ActorCallStale: NodeMachine._on_call_stale,
    StopActor: NodeMachine._on_stop_actor,
    GcsReply: NodeMachine._on_gcs_reply_msg,
    ChainConfigMsg: NodeMachine._on_gcs,
    GcsNotify: NodeMachine._on_notify,
    Fenced: NodeMachine._on_fenced,
    JobEnded: NodeMachine._on_job_ended,
    DropObjects: NodeMachine._on_drop_objects,
    PrepareBundles: lambda self, ev, now: self.bundles.on_prepare(ev, now),
    CommitBundles: lambda self, ev, now: self.bundles.on_commit(ev, now),
    ReleaseBundles: lambda self, ev, now: self.bundles.on_release(ev, now),
    # direct actor calls (core/actor_direct.py)
    ActorEndpoint: lambda self, ev, now: self.direct.on_endpoint(ev, now),
    DirectCallsRan: lambda self, ev, now: self.direct.on_ran(ev, now),
    WatchActor: lambda self, ev, now: self.direct.on_watch(ev, now),
    DirectCallsRecorded: lambda self, ev, now: self.direct.on_recorded(ev, now),
    DirectCallFailed: lambda self, ev, now: self.direct.on_failed(ev, now),
    CallsSkipped: lambda self, ev, now: self.router.skip(ev.actor_id, ev.caller_id, ev.after, ev.before, now,
                                                         ev.stimulus_id),
    # worker leases (core/lease_host.py)
    RequestLease: lambda self, ev, now: self.leases.on_request(ev, now),
    ReturnLease: lambda self, ev, now: self.leases.on_return(ev, now),
    TasksRan: lambda self, ev, now: self.leases.on_ran(ev, now),
    RecordTasks: lambda self, ev, now: self.leases.on_record(ev, now),
    SubmitterGone: lambda self, ev, now: self.leases.on_submitter_gone(ev, now),
}
