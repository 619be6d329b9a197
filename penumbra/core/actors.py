"""Actors: placement and restart, ordered calls, replay.

Theory of operation
-------------------
Three parts cooperate through the GCS actor table (``ActorEntry`` rows):

``ActorManager`` (in the head) owns the lifecycle::

    PENDING --created--> ALIVE --worker or node died--> RESTARTING --> ALIVE
       |                   |                                |
       \\--constructor raised / killed / restarts used up --> DEAD

  Each restart bumps ``incarnation``.  Writes are compare-and-set on the
  incarnation, so a late report about an old incarnation changes nothing.

``ActorRouter`` (in every node) sends a client's method calls to the node
hosting the actor, as the actor's row says.  It remembers every call that is
not yet *resolved* (ran, or failed), so when the row changes it can act:

  * ALIVE (new incarnation): send buffered calls; calls that were in flight
    to the old incarnation are re-sent if ``max_task_retries`` allows, and
    otherwise fail with ``ActorDiedError`` (at most once, Ray's default);
  * RESTARTING: hold new calls; fail (or keep, to retry) in-flight ones;
  * DEAD: fail every pending call with the death cause.

``ActorHost`` (in the node that runs the actor) executes calls *in order per
caller*: a call runs only when its sequence number is the next one expected
from its caller.  A caller that appears for the first time in an incarnation
starts at the ``floor`` its node sends with each call (the caller's lowest
unresolved sequence number), so calls given up on by the caller do not leave
a gap that would stall the actor.  ``max_concurrency`` calls may run at once.

Paper-style recovery (``ActorSpec.replay``): the host logs each executed call
in the GCS (``AppendActorLog``), and checkpoints every
``checkpoint_interval`` calls.  On restart the manager reads the checkpoint
and the calls logged since, and the new host replays them before serving new
calls: the actor's state is rebuilt along its stateful edges.

Ray's lifecycle rules on top:

  * **Cancel** of a call (``CancelTask`` at the caller's node): not sent
    yet, the router fails it; sent, the router forwards the cancel to the
    host (``CancelActorCall``), which alone knows where the call is.  Queued
    there, it is failed at once (TASK_CANCELLED) and stays in the queue as a
    tombstone that only keeps its caller's order; running (or sent ahead to
    the worker), the worker gets ``InterruptTask`` -- an async call's
    asyncio task is cancelled, a sync or threaded one runs on and sees
    ``is_canceled()`` -- and whatever it returns, the result is
    TASK_CANCELLED.  A cancelled call is never retried across a restart.
  * **Ownership** (fate sharing): an actor created by a worker (a task's or
    an actor's) is owned by that worker process; when the worker dies (its
    node tells the head: ``OwnerDied``) or its node dies, the actor is
    killed for good, whatever its ``max_restarts``.  A detached actor has no
    owner; the driver's actors die with its job.
  * **Graceful end**: when its job ends, an actor's row goes DEAD with
    ``graceful`` set, and its host runs the actor's ``__ray_shutdown__`` as
    the worker's last call before killing it (``SHUTDOWN_GRACE`` at most);
    ``__ray_terminate__`` (a call) runs it after the calls made before it
    and ends the actor once their results are recorded.  ``penumbra.kill``,
    a crash or an owner's death end the actor at once, without it.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .ids import ActorId, ObjectId, TaskId, child_task_id
from .messages import (
    ActorCall,
    ActorFloor,
    CancelActorCall,
    CheckpointActor,
    ActorCallDone,
    ActorCallStale,
    ActorReported,
    KillActorRequest,
    Command,
    OwnerDied,
    Execute,
    InterruptTask,
    KillWorker,
    Send,
    SetTimer,
    StartActor,
    StopActor,
)
from .records import ActorEntry, ActorState, ErrorInfo, ErrorKind, ObjectInfo
from .specs import EMPTY, ActorSpec, Payload, ResourceSet, TaskSpec
from .tables import (
    ActorLogRange,
    AppendActorLog,
    Get,
    KvPut,
    PutActor,
    Subscribe,
    UnregisterName,
)

if TYPE_CHECKING:
    from .head import HeadMachine
    from .node import NodeMachine

__all__ = ["ActorRouter", "ActorHost", "ActorManager", "ActorStart", "checkpoint_key"]


def checkpoint_key(actor_id: ActorId) -> str:
    return f"checkpoint:{actor_id.hex()}"


def _died(entry: ActorEntry | None, name: str, why: str) -> ErrorInfo:
    if entry is not None and entry.death_cause is not None:
        cause = entry.death_cause
        return ErrorInfo(ErrorKind.ACTOR_DIED, f"the actor {name} is dead: {cause.message}", cause.payload, task_name=name)
    return ErrorInfo(ErrorKind.ACTOR_DIED, f"the actor {name} died {why}", task_name=name)


# ===========================================================================
# Caller side


@dataclass(slots=True)
class _Pending:
    spec: TaskSpec
    attempt: int = 0
    sent_to: int | None = None  # incarnation the call was sent to
    cancelled: bool = False  # penumbra.cancel asked after it was sent: never retried


@dataclass(slots=True)
class _Route:
    actor_id: ActorId
    entry: ActorEntry | None = None
    pending: dict[tuple[str, int], _Pending] = field(default_factory=dict)
    # the calls' sequence numbers by caller, as heaps (removal is lazy), so
    # the floor is O(log n).  (Not insertion order: the swarm found that
    # submissions can reach the node out of order.)
    by_caller: dict[str, list[int]] = field(default_factory=dict)
    changed_at: float = 0.0
    # per caller: every call below this has reached us; calls above a gap wait
    received: dict[str, int] = field(default_factory=dict)
    ahead: dict[str, set[int]] = field(default_factory=dict)

    def add(self, p: _Pending) -> None:
        c, s = p.spec.caller_id, p.spec.sequence_no
        self.pending[(c, s)] = p
        heapq.heappush(self.by_caller.setdefault(c, []), s)

    def remove(self, caller: str, seq: int) -> _Pending | None:
        return self.pending.pop((caller, seq), None)

    def floor(self, caller: str) -> int:
        heap = self.by_caller.get(caller)
        while heap and (caller, heap[0]) not in self.pending:
            heapq.heappop(heap)
        if not heap:
            self.by_caller.pop(caller, None)
            return 0
        return heap[0]


class ActorRouter:
    def __init__(self, node: "NodeMachine") -> None:
        self.node = node
        self.routes: dict[ActorId, _Route] = {}
        self.calls: dict[TaskId, ActorId] = {}  # unresolved calls -> their actor
        # actors a client of this node killed for good: later calls from
        # here fail at once (the kill and the calls travel one FIFO channel,
        # so "a call made after kill() raises ActorDiedError" holds even
        # before the head has processed the kill)
        self.killed: set[ActorId] = set()

    def produces_here(self, tid: TaskId) -> bool:
        """Is ``tid`` an unresolved call to an actor alive on this node?"""
        aid = self.calls.get(tid)
        if aid is None:
            return False
        e = self.routes[aid].entry
        return e is not None and e.state is ActorState.ALIVE and e.node == self.node.address

    def _route(self, aid: ActorId, now: float, sid: str) -> tuple[_Route, list[Command]]:
        r = self.routes.get(aid)
        if r is not None:
            return r, []
        r = self.routes[aid] = _Route(aid)
        # (the reply carries the row as it is now: see ObjectManager._subscribe)
        return r, self.node.gcs_write(Subscribe(self.node.address, "actors", aid), ("actor-sub", aid), now, sid)

    def refresh_hosted(self, now: float, sid: str) -> list[Command]:
        """Re-read the rows of the actors this node hosts (a lost
        notification must not leave a superseded instance running)."""
        cmds: list[Command] = []
        for aid in self.node.host.actors:
            r = self.routes.get(aid)
            if r is not None and now - r.changed_at >= 1.0:
                r.changed_at = now
                cmds += self.node.gcs_read(Get("actors", aid), ("actor-sub", aid), now, sid)
        return cmds

    def on_refresh(self, now: float, sid: str) -> list[Command]:
        """Re-read the rows of actors we have calls waiting for (a lost
        notification must not strand them); called by the node's timer."""
        cmds: list[Command] = []
        for aid, r in self.routes.items():
            if r.pending and now - r.changed_at >= 1.0:
                r.changed_at = now
                cmds += self.node.gcs_read(Get("actors", aid), ("actor-sub", aid), now, sid)
        return cmds

    def killed_here(self, aid: ActorId) -> None:
        self.killed.add(aid)

    def submit(self, spec: TaskSpec, now: float, sid: str) -> list[Command]:
        if spec.actor_id in self.killed:
            name = spec.display_name()
            self.node.story_add(spec.task_id, now, sid, f"actor call {spec.method} after kill()")
            return self.node.fail_outputs(spec, ErrorInfo(
                ErrorKind.ACTOR_DIED, f"the actor {name} is dead: it was killed by penumbra.kill()", task_name=name),
                0, now, sid)
        r, cmds = self._route(spec.actor_id, now, sid)
        p = _Pending(spec)
        r.add(p)
        self.calls[spec.task_id] = spec.actor_id
        self.node.story_add(spec.task_id, now, sid, f"actor call {spec.method} #{spec.sequence_no}")
        # A caller's calls leave for the actor in sequence order, with no gap:
        # one that arrives ahead of an earlier one waits for it.  (Found by
        # the swarm: with submissions reordered on the way, a call sent
        # ahead carried a floor above the call still to come, and the actor
        # skipped that one.)
        caller, seq = spec.caller_id, spec.sequence_no
        nxt = r.received.get(caller, 0)
        if seq > nxt:
            r.ahead.setdefault(caller, set()).add(seq)
            return cmds
        if seq < nxt:
            return cmds + self._send_if_alive(r, p, now, sid)  # (a re-submission)
        ahead = r.ahead.get(caller)
        released = [p]
        nxt += 1
        while ahead and nxt in ahead:
            ahead.discard(nxt)
            q = r.pending.get((caller, nxt))
            if q is not None:
                released.append(q)
            nxt += 1
        r.received[caller] = nxt
        for q in released:
            cmds += self._send_if_alive(r, q, now, sid)
        return cmds

    def _sendable(self, r: _Route, p: _Pending) -> bool:
        return p.spec.sequence_no < r.received.get(p.spec.caller_id, 0)

    def _floor(self, r: _Route, caller: str) -> int:
        return r.floor(caller)

    def _send_if_alive(self, r: _Route, p: _Pending, now: float, sid: str) -> list[Command]:
        e = r.entry
        if e is None or e.state in (ActorState.PENDING, ActorState.RESTARTING):
            return []  # buffered until ALIVE
        if e.state is ActorState.DEAD:
            return self._fail(r, p, _died(e, p.spec.display_name(), ""), now, sid)
        p.sent_to = e.incarnation
        return [Send(to=e.node, msg=ActorCall(
            spec=p.spec, from_node=self.node.address, incarnation=e.incarnation,
            floor=self._floor(r, p.spec.caller_id), attempt=p.attempt, stimulus_id=sid,
        ))]

    def _fail(self, r: _Route, p: _Pending, error: ErrorInfo, now: float, sid: str) -> list[Command]:
        r.remove(p.spec.caller_id, p.spec.sequence_no)
        self.calls.pop(p.spec.task_id, None)
        self.node.story_add(p.spec.task_id, now, sid, f"actor call failed: {error.message}")
        return self.node.fail_outputs(p.spec, error, p.attempt, now, sid)

    def on_entry(self, aid: ActorId, entry: ActorEntry | None, now: float, sid: str) -> list[Command]:
        r = self.routes.get(aid)
        if r is None or entry is None:
            return []
        old = r.entry
        if old is not None and (entry.incarnation, _rank(entry.state)) < (old.incarnation, _rank(old.state)):
            return []  # stale
        r.changed_at = now
        r.entry = entry
        cmds: list[Command] = []
        if old is not None and old.node == self.node.address and (entry.node != old.node or entry.state is not ActorState.ALIVE):
            # the actor left this node: its pending calls' outputs will be
            # made elsewhere (if at all), so follow them in the GCS
            for p in r.pending.values():
                cmds += self.node.objects.producer_left(p.spec.return_ids, now, sid)
        for p in sorted(r.pending.values(), key=lambda p: (p.spec.caller_id, p.spec.sequence_no)):
            if entry.state is ActorState.DEAD:
                cmds += self._fail(r, p, _died(entry, p.spec.display_name(), ""), now, sid)
            elif p.sent_to is not None and p.sent_to < entry.incarnation:
                # the call went to an incarnation that died
                if p.cancelled:
                    cmds += self._fail(r, p, _cancelled(p.spec), now, sid)  # (cancelled calls are not retried)
                elif _may_retry(entry, p):
                    p.attempt += 1
                    p.sent_to = None
                    cmds += self._send_if_alive(r, p, now, sid)
                else:
                    cmds += self._fail(r, p, ErrorInfo(
                        ErrorKind.ACTOR_DIED,
                        f"the actor died while the call {p.spec.display_name()} was in flight; it is "
                        f"not retried (max_task_retries={entry.spec.max_task_retries}); set "
                        f"max_task_retries to retry calls across restarts",
                        task_name=p.spec.display_name(),
                    ), now, sid)
            elif p.sent_to is None and entry.state is ActorState.ALIVE and self._sendable(r, p):
                cmds += self._send_if_alive(r, p, now, sid)
        return cmds

    def on_done(self, ev: ActorCallDone, now: float, sid: str) -> list[Command]:
        r = self.routes.get(ev.actor_id)
        if r is None:
            return []
        for s in ev.sequence_nos:
            p = r.remove(ev.caller_id, s)
            if p is not None:
                self.calls.pop(p.spec.task_id, None)
        e = r.entry
        if e is None or e.state is not ActorState.ALIVE or not r.pending:
            return []
        # The live incarnation runs a caller's calls without gaps.  If the
        # next call it will get is not the one after this (a call between was
        # resolved elsewhere: by an older incarnation, or failed here at the
        # caller), or an older incarnation resolved this one, tell it where
        # the caller's order goes on.  (Found by the swarm, seed 195: a
        # restarted actor waited forever for a call an old one had answered.)
        caller = ev.caller_id
        floor = r.floor(caller)
        if not floor or not any(c == caller and p.sent_to == e.incarnation for (c, _), p in r.pending.items()):
            return []
        if ev.incarnation < e.incarnation or floor > max(ev.sequence_nos) + 1:
            return [Send(to=e.node, msg=ActorFloor(actor_id=ev.actor_id, caller_id=caller, floor=floor,
                                                   incarnation=e.incarnation, stimulus_id=sid))]
        return []

    def on_stale(self, ev: ActorCallStale, now: float, sid: str) -> list[Command]:
        r = self.routes.get(ev.spec.actor_id)
        if r is None:
            return []
        p = r.pending.get((ev.spec.caller_id, ev.spec.sequence_no))
        if p is None:
            return []
        if r.entry is not None and r.entry.incarnation > ev.incarnation and p.sent_to is not None and p.sent_to < r.entry.incarnation:
            return []  # handled when we saw the new incarnation
        # the host did not know the actor (yet): it never ran there; resend later
        p.sent_to = None
        if r.entry is not None and r.entry.state is ActorState.ALIVE and r.entry.incarnation > ev.incarnation:
            return self._send_if_alive(r, p, now, sid)
        return []

    def cancel(self, tid: TaskId, now: float, sid: str) -> tuple[bool, list[Command]]:
        """``penumbra.cancel`` of an actor call made from this node.

        Not sent yet: it fails here and never runs.  Sent to the live
        incarnation: the host decides (``ActorHost.on_cancel``), as only it
        knows whether the call is queued or running; the caller keeps
        waiting for the host's answer.  Sent to an incarnation that is gone:
        it fails here (a cancelled call is never retried, Ray's rule)."""
        aid = self.calls.get(tid)
        r = self.routes.get(aid) if aid is not None else None
        p = next((q for q in r.pending.values() if q.spec.task_id == tid), None) if r is not None else None
        if p is None:
            return False, []
        if p.sent_to is None:
            return True, self._fail(r, p, _cancelled(p.spec), now, sid)
        if p.cancelled:
            return True, []
        p.cancelled = True
        e = r.entry
        self.node.story_add(tid, now, sid, f"cancel requested; sent to the actor's host {e.node if e else '?'}")
        if e is not None and e.state is ActorState.ALIVE and e.incarnation == p.sent_to:
            return True, [Send(to=e.node, msg=CancelActorCall(
                actor_id=aid, task_id=tid, caller_id=p.spec.caller_id, sequence_no=p.spec.sequence_no,
                incarnation=p.sent_to, stimulus_id=sid))]
        if e is not None and e.incarnation > p.sent_to:
            return True, self._fail(r, p, _cancelled(p.spec), now, sid)
        return True, []  # (the row is behind: on_entry fails it when it catches up)

    def validate(self) -> None:
        for r in self.routes.values():
            for (c, s), p in r.pending.items():
                assert p.spec.caller_id == c and p.spec.sequence_no == s
                # an unsent call is failed on cancel, never kept as cancelled
                assert not p.cancelled or p.sent_to is not None, f"cancelled call {c}#{s} kept unsent"


# calls sent ahead to a sequential actor's worker (see ``_in_flight_limit``)
PIPELINE_DEPTH = 16
# how long an actor's ``__ray_shutdown__`` may take on a graceful stop
# before its worker is killed anyway
SHUTDOWN_GRACE = 30.0
SHUTDOWN_METHOD = "__ray_shutdown__"
TERMINATE_METHOD = "__ray_terminate__"  # (Ray's graceful end, queued like a call)
_SHUTDOWN_INDEX = 1 << 62  # (its task id: a child of the creation no submission numbers reach)


def _in_flight_limit(spec: ActorSpec) -> int:
    """How many calls the host lets its actor's worker hold at once.

    A sequential actor's worker runs calls in the order they reach it, so
    they are sent ahead: the next call is already there when one ends,
    instead of a round trip later (Ray pipelines actor calls too).  Not for
    replay actors: a checkpoint must hold exactly the calls executed before
    it.  A threaded or async actor gets ``max_concurrency``."""
    limit = max(1, spec.max_concurrency)
    if limit == 1 and not spec.replay:
        return PIPELINE_DEPTH
    return limit


def _call_done(to: str, spec: TaskSpec, incarnation: int, sid: str) -> Send:
    """Tell the caller's node that ``spec`` (an actor call) is done."""
    return Send(to=to, msg=ActorCallDone(actor_id=spec.actor_id, caller_id=spec.caller_id,
                                         sequence_nos=(spec.sequence_no,), incarnation=incarnation, stimulus_id=sid))


def _cancelled(spec: TaskSpec) -> ErrorInfo:
    name = spec.display_name()
    return ErrorInfo(ErrorKind.TASK_CANCELLED, f"task {name} was cancelled", task_name=name)


def _rank(state: ActorState) -> int:
    return {ActorState.PENDING: 0, ActorState.RESTARTING: 0, ActorState.ALIVE: 1, ActorState.DEAD: 2}[state]


def _may_retry(entry: ActorEntry, p: _Pending) -> bool:
    n = entry.spec.max_task_retries
    return n < 0 or p.attempt < n


# ===========================================================================
# Host side


@dataclass(frozen=True, slots=True)
class ActorStart:
    """What a node needs to (re)create an actor: its row, the checkpoint to
    restore (paper-style recovery) and the logged calls to replay after it."""

    entry: ActorEntry
    replay: tuple[TaskSpec, ...] = ()
    checkpoint: Payload | None = None
    # per caller, the next sequence number after the calls the checkpoint
    # holds (they ran on an earlier instance and must not run again)
    seqs: tuple[tuple[str, int], ...] = ()


@dataclass(slots=True)
class _Call:
    spec: TaskSpec
    from_node: str
    attempt: int
    missing: set[ObjectId] = field(default_factory=set)
    replay: bool = False
    pinned: set[ObjectId] = field(default_factory=set)  # inputs we hold in the store
    # penumbra.cancel: queued, it was failed at once and stays in the queue
    # only to keep its caller's order (dispatch skips it); running, its
    # result becomes TASK_CANCELLED
    cancelled: bool = False


@dataclass(slots=True)
class _Hosted:
    entry: ActorEntry
    worker: str
    held: ResourceSet
    queue: dict[str, dict[int, _Call]] = field(default_factory=dict)
    next_seq: dict[str, int] = field(default_factory=dict)
    arrival: deque = field(default_factory=deque)  # (caller, seq) in arrival order
    running: dict[TaskId, _Call] = field(default_factory=dict)
    replay: deque = field(default_factory=deque)
    executed: int = 0  # calls executed in this actor's whole life (log index)
    checkpointing: bool = False
    checkpoint_due: int = 0  # a checkpoint to take once every call is logged
    checkpoint_seqs: tuple = ()  # next_seq per caller as of the checkpoint being taken
    unlogged: dict = field(default_factory=dict)  # replay actors: tid -> (call, result, log index), until logged
    logged: dict = field(default_factory=dict)  # log index -> (call, result): logged, held until every earlier call is
    releasing: dict = field(default_factory=dict)  # tid -> call whose outputs' record is on its way to the GCS
    covered: dict = field(default_factory=dict)  # tid -> (spec, from_node, attempt): asked again, row being read
    # a graceful stop in progress: the task id of the __ray_shutdown__ call
    # the worker runs last (None: not stopping)
    stopping: TaskId | None = None
    # __ray_terminate__ ran: nothing more runs here (``terminated``), and the
    # head is asked to end the actor once earlier results are out (``terminating``)
    terminated: bool = False
    terminating: bool = False
    terminate_sent: bool = False  # the __ray_terminate__ call is on the worker: send nothing after it
    end_reason: str = ""  # why it ends (exit_actor, __ray_terminate__)
    before_end: set = field(default_factory=set)  # running calls made before the end: their results count


def _first_unlogged(h: _Hosted) -> int | None:
    """The log index of ``h``'s earliest call whose append is not yet
    acknowledged (results from later calls wait for it)."""
    return min((i for _, _, i in h.unlogged.values()), default=None)


class ActorHost:
    def __init__(self, node: "NodeMachine") -> None:
        self.node = node
        self.actors: dict[ActorId, _Hosted] = {}
        self.by_worker: dict[str, ActorId] = {}
        # the last death this node reported of each actor it hosted: a head
        # that died may never have read it, so a recovered head is told
        # again (``NodeMachine._on_tasks_held_query``); it decides by
        # incarnation, so a report it had already acted on changes nothing
        self.reported: dict[ActorId, ActorReported] = {}

    def report(self, msg: ActorReported) -> list[Command]:
        self.reported[msg.actor_id] = msg
        return [Send(to=self.node.head, msg=msg)]

    def held(self) -> ResourceSet:
        total = EMPTY
        for h in self.actors.values():
            total = total + h.held
        return total

    def owns_worker(self, wid: str) -> bool:
        return wid in self.by_worker

    def running_call(self, wid: str, tid: TaskId) -> tuple[TaskSpec, int] | None:
        """The spec and attempt of call ``tid`` on actor worker ``wid`` (the
        timeline's record of it), if it is running there."""
        aid = self.by_worker.get(wid)
        h = self.actors.get(aid) if aid is not None else None
        call = h.running.get(tid) if h is not None and h.worker == wid else None
        return (call.spec, call.attempt) if call is not None else None

    def running_calls(self, wid: str) -> list[tuple[TaskSpec, int]]:
        """Every call on actor worker ``wid`` (sent to it, not yet ended)."""
        aid = self.by_worker.get(wid)
        h = self.actors.get(aid) if aid is not None else None
        if h is None or h.worker != wid:
            return []
        return [(c.spec, c.attempt) for c in h.running.values()]

    def _instance(self, aid: ActorId, incarnation: int) -> "_Hosted | None":
        """The actor hosted here, if it is still that incarnation (a reply
        about an earlier one, or one stopped since, is for nobody)."""
        h = self.actors.get(aid)
        return h if h is not None and h.entry.incarnation == incarnation else None

    # ------------------------------------------------------------------ creation
    def created(self, spec: TaskSpec, start: "ActorStart", wid: str, now: float, sid: str) -> list[Command]:
        entry = start.entry
        cmds: list[Command] = []
        old = self.actors.get(entry.spec.actor_id)
        if old is not None and old.entry.incarnation > entry.incarnation:
            # a stale start, overtaken by a newer one that runs here already
            self.node.scheduler.release_actor_worker(wid)
            return [KillWorker(worker_id=wid, reason="a stale start of this actor: a newer incarnation runs here",
                               stimulus_id=sid)]
        if old is not None:
            # An older instance is still here: the head's stop of it and
            # this start crossed (delayed messages reorder).  It goes now,
            # and its worker's death later is nobody's (else both instances
            # shared one slot, and the older one's resources leaked: found
            # by the swarm, seeds 1870 and 2039).
            self.by_worker.pop(old.worker, None)
            cmds += self._drop(old, f"superseded by incarnation {entry.incarnation}", now, sid)
            cmds += self._stop(old, "this actor instance was superseded by a newer incarnation", now, sid)
        held = self.node.scheduler.acquire_or_borrow(entry.spec.resources)
        h = _Hosted(entry=replace(entry, state=ActorState.ALIVE, node=self.node.address), worker=wid, held=held)
        h.executed = entry.checkpoint_index
        for caller, nxt in start.seqs:
            h.next_seq[caller] = nxt
        for s in start.replay:
            h.replay.append(_Call(s, "", 0, replay=True))
            # a replayed call counts as executed: if its caller sends it
            # again (it never saw the result), it must not run twice
            if s.sequence_no + 1 > h.next_seq.get(s.caller_id, 0):
                h.next_seq[s.caller_id] = s.sequence_no + 1
        self.actors[entry.spec.actor_id] = h
        self.by_worker[wid] = entry.spec.actor_id
        # follow the actor's row (to stop if superseded; see on_entry)
        cmds += self.node.router._route(entry.spec.actor_id, now, sid)[1]
        cmds += self.node.gcs_write(
            PutActor(h.entry, expect_incarnation=entry.incarnation),
            ("actor-alive", entry.spec.actor_id, entry.incarnation), now, sid,
        )
        objects = self.node.objects
        for call in h.replay:
            missing = {d for d in call.spec.dependencies if not objects.is_local(d)}
            self._hold(call, [d for d in call.spec.dependencies if d not in missing])
            if missing:
                call.missing = missing
                token = ("actor-call", entry.spec.actor_id, call.spec.task_id)
                for d in sorted(missing):
                    cmds += objects.want(d, token, True, now, sid)
        return cmds + self._dispatch(h, now, sid)

    def on_entry(self, aid: ActorId, entry: ActorEntry | None, now: float, sid: str) -> list[Command]:
        """The actor's row changed: an instance whose incarnation was
        superseded (or buried) stops at once -- the head may have restarted
        the actor elsewhere without knowing where this one ran."""
        h = self.actors.get(aid)
        if h is None or entry is None:
            return []
        mine = h.entry.incarnation
        if entry.state is ActorState.DEAD and entry.incarnation == mine and entry.graceful:
            return self._stop(h, "its job ended", now, sid, graceful=True)
        if entry.incarnation > mine or (entry.state is ActorState.DEAD and entry.incarnation >= mine):
            return self._stop(h, "this actor instance was superseded by a newer incarnation", now, sid)
        return []

    def on_alive_written(self, aid: ActorId, incarnation: int, stored: ActorEntry | None, now: float, sid: str) -> list[Command]:
        """The CAS that marks the actor ALIVE came back with the stored row."""
        h = self._instance(aid, incarnation)
        if h is None:
            return []
        if stored is None or stored.incarnation != incarnation or stored.state is not ActorState.ALIVE:
            # killed (or restarted elsewhere) while we created it
            return self._stop(h, "the actor was killed or restarted elsewhere during creation", now, sid)
        return []

    # ------------------------------------------------------------------ calls
    def on_call(self, ev: ActorCall, now: float, sid: str) -> list[Command]:
        spec = ev.spec
        h = self.actors.get(spec.actor_id)
        if h is None or h.entry.incarnation != ev.incarnation:
            cur = h.entry.incarnation if h is not None else -1
            return [Send(to=ev.from_node, msg=ActorCallStale(spec=spec, incarnation=cur, stimulus_id=sid))]
        caller = spec.caller_id
        nxt = h.next_seq.get(caller)
        if nxt is None or nxt < ev.floor:
            h.next_seq[caller] = ev.floor
            nxt = ev.floor
            # calls below the floor were given up on by the caller
            q = h.queue.get(caller)
            if q:
                for s in [s for s in q if s < nxt]:
                    self._pin(q.pop(s), False)
        if spec.sequence_no in h.queue.get(caller, {}):
            return []  # a repeat of a call we already have
        if spec.sequence_no < nxt:
            # a repeat of a call that ran (or is being replayed): the caller
            # hears when its outputs are recorded
            tid = spec.task_id
            if tid in h.unlogged or tid in h.covered or any(c.spec.task_id == tid for c, _ in h.logged.values()):
                return []
            known = h.running.get(tid) or h.releasing.get(tid) or next((c for c in h.replay if c.spec.task_id == tid), None)
            if known is not None:
                if not known.from_node:
                    known.from_node = ev.from_node  # (a replayed call: tell its caller too)
                return []
            # It ran on an earlier instance (its effect is in the state we
            # restored) or ran here and was released.  Its outputs exist if
            # that instance recorded them before it died: read the row.
            # (Found by the swarm, seeds 395 and 959: told "done" before its
            # record reached the GCS, the caller waited forever on an object
            # the dead instance never recorded.)
            if not spec.return_ids:
                return [_call_done(ev.from_node, spec, h.entry.incarnation, sid)]
            h.covered[tid] = (spec, ev.from_node, ev.attempt)
            return self.node.gcs_read(Get("objects", spec.return_ids[0]), ("actor-covered", spec.actor_id, h.entry.incarnation, tid), now, sid)
        call = _Call(spec, ev.from_node, ev.attempt)
        h.queue.setdefault(caller, {})[spec.sequence_no] = call
        h.arrival.append((caller, spec.sequence_no))
        cmds: list[Command] = []
        objects = self.node.objects
        missing = [d for d in spec.dependencies if not objects.is_local(d)]
        self._hold(call, [d for d in spec.dependencies if d not in missing])
        if missing:
            call.missing = set(missing)
            token = ("actor-call", spec.actor_id, spec.task_id)
            for d in sorted(call.missing):
                cmds += objects.want(d, token, True, now, sid)
        return cmds + self._dispatch(h, now, sid)

    def on_cancel(self, ev: CancelActorCall, now: float, sid: str) -> list[Command]:
        """``penumbra.cancel`` of a call its caller sent here (Ray's rule for
        actor tasks): queued, it fails now and never runs; running, its
        worker is told (an async call's asyncio task is cancelled, a sync or
        threaded one only sees ``is_canceled()``) and whatever it returns,
        its caller gets TASK_CANCELLED.  A call not here (done already, or
        not arrived) is left alone: cancel of a finished task does nothing."""
        h = self._instance(ev.actor_id, ev.incarnation)
        if h is None:
            return []
        tid = ev.task_id
        call = h.running.get(tid)
        if call is not None:
            if call.cancelled or call.replay:
                return []
            call.cancelled = True
            self.node.story_add(tid, now, sid, f"cancel: interrupting it on actor worker {h.worker}")
            return [InterruptTask(worker_id=h.worker, task_id=tid, stimulus_id=sid)]
        call = h.queue.get(ev.caller_id, {}).get(ev.sequence_no)
        if call is None or call.spec.task_id != tid or call.cancelled:
            return []
        call.cancelled = True
        cmds: list[Command] = []
        token = ("actor-call", ev.actor_id, tid)
        for d in sorted(call.missing):
            cmds += self.node.objects.unwant(d, token, now, sid)
        call.missing.clear()
        self._pin(call, False)
        self.node.story_add(tid, now, sid, "cancelled while queued on the actor")
        return cmds + self._release(h, call, ("error", _cancelled(call.spec)), now, sid) + self._dispatch(h, now, sid)

    def on_floor(self, ev: ActorFloor, now: float, sid: str) -> list[Command]:
        h = self.actors.get(ev.actor_id)
        if h is None or h.entry.incarnation != ev.incarnation:
            return []
        caller = ev.caller_id
        if h.next_seq.get(caller, 0) >= ev.floor:
            return []
        h.next_seq[caller] = ev.floor
        q = h.queue.get(caller)
        if q:
            for s in [s for s in q if s < ev.floor]:
                self._pin(q.pop(s), False)
        return self._dispatch(h, now, sid)

    def on_input_ready(self, aid: ActorId, tid: TaskId, oid: ObjectId, info: ObjectInfo, now: float, sid: str) -> list[Command]:
        h = self.actors.get(aid)
        if h is None:
            return []
        calls = [c for q in h.queue.values() for c in q.values()]
        for call in list(h.replay) + calls:
            if call.spec.task_id == tid and oid in call.missing:
                call.missing.discard(oid)
                self._hold(call, (oid,))
                return self._dispatch(h, now, sid)
        return []

    def _dispatch(self, h: _Hosted, now: float, sid: str) -> list[Command]:
        cmds: list[Command] = []
        limit = _in_flight_limit(h.entry.spec)
        if h.checkpointing or h.stopping is not None or h.terminated or h.terminate_sent:
            return cmds
        # replayed calls first, one at a time, in log order
        if h.replay:
            # (a replayed call needs its inputs local like any call: found by
            # the swarm, a replay that ran without them lost the call)
            if not h.running and not h.replay[0].missing:
                call = h.replay.popleft()
                h.running[call.spec.task_id] = call
                self.node.story_add(call.spec.task_id, now, sid, "replaying on restarted actor")
                cmds.append(Execute(worker_id=h.worker, spec=call.spec, attempt=call.attempt,
                                    gpu_ids=self.node.scheduler.gpus.ids_of(h.worker), stimulus_id=sid))
            return cmds
        arrival = h.arrival
        scanned = 0
        n = len(arrival)
        while len(h.running) < limit and scanned < n:
            caller, seq = arrival[0]
            arrival.rotate(-1)
            scanned += 1
            q = h.queue.get(caller)
            call = q.get(seq) if q else None
            if call is None:
                arrival.pop()  # stale arrival record (rotated to the end)
                continue
            if seq != h.next_seq.get(caller) or call.missing:
                continue
            if call.spec.method == TERMINATE_METHOD and h.running:
                continue  # (it runs once every call before it ended, and alone)
            arrival.pop()
            del q[seq]
            h.next_seq[caller] = seq + 1
            if call.cancelled:
                scanned = 0  # (failed when cancelled: it only held its caller's place)
                n = len(arrival)
                continue
            h.running[call.spec.task_id] = call
            # the caller's next call may have been passed over earlier in
            # this pass: scan everything again (found by the swarm: a call
            # that failed on its input left the one after it waiting forever)
            scanned = 0
            n = len(arrival)
            error = self._input_error(call)
            if error is not None:
                del h.running[call.spec.task_id]
                # (what it held while queued goes back: found by the swarm's
                # quiet-cluster check, seed 572, an input pinned for good)
                self._pin(call, False)
                cmds += self._release(h, call, ("error", error), now, sid)
                continue
            self._pin(call, True)
            self.node.story_add(call.spec.task_id, now, sid, f"running on actor worker {h.worker}")
            cmds.append(Execute(worker_id=h.worker, spec=call.spec, attempt=call.attempt,
                                gpu_ids=self.node.scheduler.gpus.ids_of(h.worker), stimulus_id=sid))
            if call.spec.method == TERMINATE_METHOD:
                h.terminate_sent = True  # nothing is sent after it
                break
        return cmds

    def _input_error(self, call: _Call) -> ErrorInfo | None:
        for d in call.spec.dependencies:
            e = self.node.objects.error_of(d)
            if e is not None:
                return e
        return None

    def _hold(self, call: _Call, oids) -> None:
        """Pin a queued call's inputs as they become local, so they cannot
        be evicted before it runs (found by the swarm: a call that waited
        behind others ran without its evicted input)."""
        store = self.node.objects.store
        holder = ("task", call.spec.task_id)
        for d in oids:
            if d not in call.pinned and d in store.objects:
                store.pin(d, holder)
                call.pinned.add(d)

    def _pin(self, call: _Call, on: bool) -> None:
        if on:
            self._hold(call, call.spec.dependencies)
            return
        store = self.node.objects.store
        holder = ("task", call.spec.task_id)
        for d in call.pinned:
            store.unpin(d, holder)
        call.pinned.clear()

    def on_finished(self, wid: str, tid: TaskId, outputs, now: float, sid: str) -> list[Command]:
        aid = self.by_worker.get(wid)
        h = self.actors.get(aid) if aid is not None else None
        if h is None or h.worker != wid:
            return []  # (or an instance superseded here, being killed)
        if h.stopping is not None or (h.terminated and tid not in h.before_end):
            return self._ended_while_stopping(h, tid, now, sid)
        h.before_end.discard(tid)  # (made before exit_actor(): its result counts)
        call = h.running.pop(tid, None)
        if call is None:
            return []
        self._pin(call, False)
        if call.spec.method == TERMINATE_METHOD and not call.replay:
            return self._terminate(h, call, now, sid)
        result = ("error", _cancelled(call.spec)) if call.cancelled else ("ok", outputs)
        if h.entry.spec.replay and not call.replay:
            return self._log_then_release(h, call, result, now, sid) + self._dispatch(h, now, sid)
        cmds = self._release(h, call, result, now, sid)
        self._executed(h)
        return cmds + self._dispatch(h, now, sid)

    def on_raised(self, wid: str, tid: TaskId, error: ErrorInfo, now: float, sid: str) -> list[Command]:
        aid = self.by_worker.get(wid)
        h = self.actors.get(aid) if aid is not None else None
        if h is None or h.worker != wid:
            return []  # (or an instance superseded here, being killed)
        if h.stopping is not None or (h.terminated and tid not in h.before_end):
            return self._ended_while_stopping(h, tid, now, sid)
        h.before_end.discard(tid)  # (made before exit_actor(): its result counts)
        call = h.running.pop(tid, None)
        if call is None:
            return []
        self._pin(call, False)
        if call.spec.method == TERMINATE_METHOD and not call.replay:
            return self._terminate(h, call, now, sid)  # (even if __ray_shutdown__ raised)
        if call.cancelled:
            error = _cancelled(call.spec)
        if h.entry.spec.replay and not call.replay:
            return self._log_then_release(h, call, ("error", error), now, sid) + self._dispatch(h, now, sid)
        cmds = self._release(h, call, ("error", error), now, sid)
        self._executed(h)
        return cmds + self._dispatch(h, now, sid)

    # -- paper-style replay: a call's result becomes visible only once the call
    # is in the actor's log, so a restart replays every call whose effect
    # anyone saw, and a call nobody saw is retried instead (never both)
    def _log_then_release(self, h: "_Hosted", call: "_Call", result: tuple, now: float, sid: str) -> list[Command]:
        spec = h.entry.spec
        index = h.executed
        h.executed += 1
        h.unlogged[call.spec.task_id] = (call, result, index)
        token = ("actor-logged", spec.actor_id, h.entry.incarnation, call.spec.task_id)
        cmds = self.node.gcs_write(AppendActorLog(spec.actor_id, index, call.spec.task_id, call.spec, h.entry.incarnation), token, now, sid)
        if spec.checkpoint_interval and h.executed % spec.checkpoint_interval == 0:
            # pause here: the checkpoint must hold exactly h.executed calls,
            # and be taken only once all of them are logged
            h.checkpointing = True
            h.checkpoint_due = h.executed
        return cmds

    def on_logged(self, aid: ActorId, incarnation: int, tid: TaskId, accepted: bool, now: float, sid: str) -> list[Command]:
        h = self._instance(aid, incarnation)
        if h is None:
            return []
        item = h.unlogged.pop(tid, None)
        if item is None:
            return []
        if accepted is False:
            # the GCS says we are not the live incarnation (we were killed or
            # restarted elsewhere and did not hear): our results must never
            # be seen; the callers retry on the live one.  Stop.
            h.unlogged.clear()
            h.logged.clear()
            return self._stop(h, "this actor instance was superseded by a newer incarnation", now, sid)
        # Release in log order: a call's result is seen only once it and
        # every call before it are in the log.  A restart replays the log up
        # to its first gap; a call released past a gap (an earlier append
        # still being retried when the actor died) would have its effect
        # seen but not replayed.  (Found by the swarm, seed 2387.)
        call, result, index = item
        h.logged[index] = (call, result)
        first_gap = _first_unlogged(h)
        cmds: list[Command] = []
        for i in sorted(h.logged):
            if first_gap is not None and i > first_gap:
                break
            c, r = h.logged.pop(i)
            cmds += self._release(h, c, r, now, sid)
        return cmds + self._checkpoint_if_due(h, sid)

    def _checkpoint_if_due(self, h: _Hosted, sid: str) -> list[Command]:
        """Take the checkpoint that is due once every call before it is
        logged *and its outputs are recorded* in the GCS: a restart from the
        checkpoint neither runs nor replays those calls, so an output still
        on its way when this instance dies would be lost for good (found by
        a strategy-drawn plan, 465308: a killed instance's record landed
        after its successor had declared the call's result lost)."""
        if not h.checkpoint_due or h.unlogged or h.releasing:
            return []
        index, h.checkpoint_due = h.checkpoint_due, 0
        # the callers' order as of the checkpoint: a restart from it
        # must not run these calls again (found by the swarm, seed 959:
        # a call whose caller never heard it was done ran twice)
        seqs = dict(h.next_seq)
        for c in h.running.values():
            caller = c.spec.caller_id
            seqs[caller] = min(seqs.get(caller, c.spec.sequence_no), c.spec.sequence_no)
        h.checkpoint_seqs = tuple(sorted(seqs.items()))
        return [CheckpointActor(worker_id=h.worker, actor_id=h.entry.spec.actor_id, index=index, stimulus_id=sid)]

    def _release(self, h: _Hosted, call: _Call, result: tuple, now: float, sid: str) -> list[Command]:
        """Record a call's outputs (or its error) here and in the GCS; its
        caller hears the call is done only once the GCS has the record
        (``on_released``).  Told earlier, a caller whose call's record died
        with this node would wait forever for an object nobody records; not
        told, it sends the call again to the next incarnation, which finds
        out what became of it (``on_covered_row``)."""
        kind, value = result
        tid = call.spec.task_id
        h.releasing[tid] = call
        token = ("actor-released", call.spec.actor_id, h.entry.incarnation, tid)
        if kind == "ok":
            return self.node.store_outputs(call.spec, value, call.attempt, now, sid, token)
        return self.node.fail_outputs(call.spec, value, call.attempt, now, sid, token)

    def on_released(self, aid: ActorId, incarnation: int, tid: TaskId, now: float, sid: str) -> list[Command]:
        h = self._instance(aid, incarnation)
        if h is None:
            return []
        call = h.releasing.pop(tid, None)
        cmds = self._terminate_if_released(h, sid) + self._checkpoint_if_due(h, sid)
        if call is None or not call.from_node:
            return cmds
        return [_call_done(call.from_node, call.spec, incarnation, sid)] + cmds

    def on_covered_row(self, aid: ActorId, incarnation: int, tid: TaskId, entry: Any, now: float, sid: str) -> list[Command]:
        """The row of a call asked for again after it ran (see ``on_call``)."""
        h = self._instance(aid, incarnation)
        if h is None:
            return []
        item = h.covered.pop(tid, None)
        if item is None:
            return []
        spec, from_node, attempt = item
        if entry is not None and entry.created:
            return [_call_done(from_node, spec, incarnation, sid)]
        # The instance that ran it died before recording its outputs.  Its
        # effect on the state is kept (the checkpoint we restored holds it),
        # so running it again would apply it twice; and no restart replays
        # it (replay starts at that checkpoint).  Its outputs are lost.
        name = spec.display_name()
        error = ErrorInfo(
            ErrorKind.OBJECT_LOST,
            f"the result of {name} was lost: the actor instance that ran it died before recording it, and "
            f"the call is part of the actor's checkpoint, so it is neither run again nor replayed",
            task_name=name,
        )
        self.node.story_add(tid, now, sid, "result lost with an earlier instance; the call is in the checkpoint")
        return self._release(h, _Call(spec, from_node, attempt), ("error", error), now, sid)

    def _executed(self, h: _Hosted) -> None:
        """A call (not logged: a replayed one, or any call of an actor
        without replay) ended.  (Calls of replay actors go through
        ``_log_then_release``; a replayed call only advances the count.)"""
        if h.entry.spec.replay:
            h.executed += 1

    def on_checkpointed(self, aid: ActorId, index: int, payload: Payload, now: float, sid: str) -> list[Command]:
        h = self.actors.get(aid)
        if h is None:
            return []
        h.checkpointing = False
        cmds = self.node.gcs_write(KvPut(checkpoint_key(aid), (index, payload, h.checkpoint_seqs)), None, now, sid)
        h.entry = replace(h.entry, checkpoint_index=index, executed=h.executed)
        cmds += self.node.gcs_write(PutActor(h.entry, expect_incarnation=h.entry.incarnation), None, now, sid)
        return cmds + self._dispatch(h, now, sid)

    # ------------------------------------------------------------------ death
    def on_worker_died(self, wid: str, reason: str, now: float, sid: str) -> list[Command]:
        aid = self.by_worker.pop(wid, None)
        if aid is None:
            return []
        h = self.actors[aid]
        cmds = self._drop(h, f"actor worker {wid} died: {reason}", now, sid)
        error = ErrorInfo(ErrorKind.ACTOR_DIED, f"the actor's worker process died: {reason}", task_name=h.entry.spec.cls.name)
        return cmds + self.report(ActorReported(
            actor_id=aid, incarnation=h.entry.incarnation, node_id=self.node.address, error=error, stimulus_id=sid,
        ))

    def _drop(self, h: _Hosted, why: str, now: float, sid: str) -> list[Command]:
        """Forget instance ``h``: its resources, its worker, its calls' pins
        and the inputs they wanted."""
        aid = h.entry.spec.actor_id
        del self.actors[aid]
        self.node.scheduler.release(h.held)
        self.node.scheduler.release_actor_worker(h.worker)
        for call in list(h.running.values()) + [c for q in h.queue.values() for c in q.values()] + list(h.replay):
            self._pin(call, False)
        cmds: list[Command] = []
        for c in [c for q in h.queue.values() for c in q.values() if c.missing]:
            token = ("actor-call", aid, c.spec.task_id)
            for d in sorted(c.missing):
                cmds += self.node.objects.unwant(d, token, now, sid)
        self.node.story_add(h.entry.creation.task_id, now, sid, why)
        return cmds

    def on_stop(self, ev: StopActor, now: float, sid: str) -> list[Command]:
        h = self.actors.get(ev.actor_id)
        if h is None or h.entry.incarnation > ev.incarnation:
            return []
        return self._stop(h, ev.reason, now, sid, graceful=ev.graceful and h.entry.incarnation == ev.incarnation)

    def _stop(self, h: _Hosted, reason: str, now: float, sid: str, graceful: bool = False) -> list[Command]:
        """Stop the actor's worker.  ``graceful`` (its job ended): first
        the worker runs the actor's ``__ray_shutdown__``, if it has one, as
        its last call (behind the calls it holds, whose results nobody
        waits for any more: the actor is dead), then it is killed; after
        ``SHUTDOWN_GRACE`` it is killed anyway."""
        if h.stopping is not None:
            if graceful:
                return []  # (already running its __ray_shutdown__)
        elif graceful and not h.terminated and SHUTDOWN_METHOD in dict(h.entry.spec.methods):
            creation = h.entry.creation
            spec = TaskSpec(
                task_id=child_task_id(creation.task_id, _SHUTDOWN_INDEX + h.entry.incarnation), job_id=creation.job_id,
                parent_task_id=creation.task_id, function=creation.function, num_returns=0, max_retries=0,
                actor_id=h.entry.spec.actor_id, method=SHUTDOWN_METHOD,
                name=f"{h.entry.spec.cls.name.rsplit('.', 1)[-1]}.{SHUTDOWN_METHOD}",
            )
            h.stopping = spec.task_id
            self.node.story_add(creation.task_id, now, sid, f"stopping gracefully ({reason}): running {SHUTDOWN_METHOD}")
            return [Execute(worker_id=h.worker, spec=spec, attempt=0, gpu_ids=self.node.scheduler.gpus.ids_of(h.worker),
                            stimulus_id=sid),
                    SetTimer(at=now + SHUTDOWN_GRACE, key=("actor-shutdown", h.entry.spec.actor_id, h.entry.incarnation))]
        return [KillWorker(worker_id=h.worker, reason=reason or "actor stopped", stimulus_id=sid)]

    def _terminate(self, h: _Hosted, call: _Call, now: float, sid: str) -> list[Command]:
        """``__ray_terminate__`` ran (the actor's ``__ray_shutdown__``, after
        every call made before it): nothing more runs here; once the results
        of the calls before it are recorded (so their callers get them, not
        the actor's death), the head ends the actor for good.  The call
        itself, and every later one, fail with ActorDiedError, as in Ray."""
        h.terminated = True  # (no more dispatch; later results dropped)
        h.terminating = True
        h.end_reason = f"it ended gracefully: {TERMINATE_METHOD} was called"
        self.node.story_add(call.spec.task_id, now, sid, "__ray_terminate__ ran: ending the actor")
        return self._terminate_if_released(h, sid)

    def on_exit(self, aid: ActorId, exiting: TaskId, now: float, sid: str) -> list[Command]:
        """The actor called ``exit_actor()`` in its call ``exiting`` (Ray:
        that call and the calls after it fail with ActorDiedError, those
        before it return): nothing more runs here, and once the results of
        the calls before it are recorded, the head ends the actor for good.
        (Killed at once, a call whose result was on its way to the GCS
        would fail at its caller instead.)"""
        h = self.actors.get(aid)
        if h is None or h.terminated:
            return []
        h.terminated = h.terminating = True
        h.end_reason = "it called exit_actor()"
        # the calls sent to the worker before the exiting one still end
        # normally (their end may not have reached us yet)
        for tid in h.running:
            if tid == exiting:
                break
            h.before_end.add(tid)
        self.node.story_add(h.entry.creation.task_id, now, sid, "exit_actor() called: ending the actor")
        return self._terminate_if_released(h, sid)

    def _terminate_if_released(self, h: _Hosted, sid: str) -> list[Command]:
        """Ask the head to end a terminating actor once no result of a call
        made before the end is still to come or on its way to the GCS."""
        if not h.terminating or h.releasing or h.unlogged or h.logged or h.before_end:
            return []
        h.terminating = False
        return [Send(to=self.node.head, msg=KillActorRequest(
            actor_id=h.entry.spec.actor_id, no_restart=True, reason=h.end_reason, stimulus_id=sid))]

    def _ended_while_stopping(self, h: _Hosted, tid: TaskId, now: float, sid: str) -> list[Command]:
        """A call ended on a worker being stopped gracefully (or after
        ``__ray_terminate__``): its result is dropped (the actor is dead, or
        about to be: its callers get that); the end of ``__ray_shutdown__``
        is the worker's end."""
        call = h.running.pop(tid, None)
        if call is not None:
            self._pin(call, False)
        if tid != h.stopping:
            return []
        return [KillWorker(worker_id=h.worker, reason=f"the actor stopped gracefully ({SHUTDOWN_METHOD} ran)",
                           stimulus_id=sid)]

    def on_shutdown_timer(self, aid: ActorId, incarnation: int, now: float, sid: str) -> list[Command]:
        h = self._instance(aid, incarnation)
        if h is None or h.stopping is None:
            return []
        return [KillWorker(worker_id=h.worker, reason=f"{SHUTDOWN_METHOD} did not end within {SHUTDOWN_GRACE:g} s",
                           stimulus_id=sid)]

    def validate(self) -> None:
        for aid, h in self.actors.items():
            assert self.by_worker.get(h.worker) == aid
            assert len(h.running) <= _in_flight_limit(h.entry.spec)
            for caller, q in h.queue.items():
                nxt = h.next_seq.get(caller, 0)
                for s, c in q.items():
                    assert s >= nxt, f"queued call {caller}#{s} below next expected {nxt}"
                    # a cancelled call was failed when cancelled: it holds nothing
                    assert not c.cancelled or not (c.missing or c.pinned), f"cancelled call {caller}#{s} holds inputs"
            # a terminating actor dispatches nothing more
            assert not h.terminating or h.terminated, "terminating, yet still dispatching"
            assert h.before_end <= h.running.keys(), "a call made before the end is not running"
            if h.logged:
                # a logged result is held only behind an earlier call not yet logged
                gap = _first_unlogged(h)
                assert gap is not None and gap < min(h.logged), (
                    f"logged results {sorted(h.logged)} held with no earlier call unlogged (first gap {gap})")


# ===========================================================================
# Head side


@dataclass(frozen=True, slots=True)
class _SystemKill:
    """A kill by the system (its owner died, its job ended), waiting for
    the actor's row."""

    actor_id: ActorId
    why: str
    graceful: bool = False


def _owner_died(owner: str, reason: str) -> str:
    return (f"its owner, the worker {owner} that created it, died ({reason or 'no reason given'}); an actor dies "
            f"with its owner unless it is detached: create it with lifetime=\"detached\" to let it outlive its "
            f"creator")


@dataclass(slots=True)
class _Restart:
    entry: ActorEntry
    checkpoint: Any = None
    replay: tuple[TaskSpec, ...] = ()
    reads: int = 0
    seqs: tuple[tuple[str, int], ...] = ()


class ActorManager:
    def __init__(self, head: "HeadMachine") -> None:
        self.head = head
        self.actors: dict[ActorId, ActorEntry] = {}
        self.restarts: dict[ActorId, _Restart] = {}
        # restarts placed (StartActor sent) whose actor is not up yet: a
        # restart sent to a node that dies is placed again
        self.starting: dict[ActorId, tuple[str, _Restart]] = {}
        self.replayed = 0  # methods replayed in all restarts (Figure 11b)
        # per actor: the incarnation last restarted with replay, and the
        # calls it replays (their lost outputs come back; see ``replays``)
        self.replaying: dict[ActorId, tuple[int, frozenset[TaskId]]] = {}
        # a recovered head (core/head.py, "Recovery"): the actors PENDING
        # when it read the table, whose creation the old head may have
        # placed already (see ``on_creation_lost``)
        self.adopted_pending: set[ActorId] = set()

    # ------------------------------------------------------------------ adoption
    def adopt(self, rows, now: float, sid: str) -> None:
        """A recovering head read the actor table: track every row.  ALIVE
        on a live node needs nothing more; ALIVE on a dead node is
        restarted by ``on_node_dead``; RESTARTING by ``adopt_restarts``;
        PENDING ones are created by their creation task, wherever the task
        table says it is (lost with a node: ``on_creation_lost``)."""
        for e in rows:
            self.on_entry(e.spec.actor_id, e)
        self.adopted_pending = {aid for aid, e in self.actors.items() if e.state is ActorState.PENDING}

    def adopt_restarts(self, now: float, sid: str) -> list[Command]:
        """Restarts the old head had begun (rows RESTARTING): it may have
        sent StartActor already, or not; we cannot know.  Restart again
        under a new incarnation, which fences a start still on its way
        (its ALIVE write expects the old incarnation; a host that created
        it sees the row move past it and stops).  The restart was counted
        once, by the old head: the budget is not spent again."""
        cmds: list[Command] = []
        for aid, e in sorted(self.actors.items()):
            if e.state is ActorState.RESTARTING and aid not in self.restarts and aid not in self.starting:
                cmds += self._fence_and_place(e, now, sid)
        return cmds

    def _fence_and_place(self, e: ActorEntry, now: float, sid: str) -> list[Command]:
        aid = e.spec.actor_id
        new = replace(e, node="", incarnation=e.incarnation + 1)
        self.actors[aid] = new
        self.restarts[aid] = _Restart(new)
        return self.head.gcs.write(PutActor(new, expect_incarnation=e.incarnation),
                                   ("actor-fenced", aid, new.incarnation), now, sid)

    def on_fenced_written(self, aid: ActorId, incarnation: int, stored: ActorEntry | None, now: float,
                          sid: str) -> list[Command]:
        """The fencing write came back with the stored row: placed as a
        restart if it took; else the row moved on (killed, say) and wins."""
        if stored is None or stored.incarnation != incarnation:
            r = self.restarts.get(aid)
            if r is not None and r.entry.incarnation == incarnation:
                del self.restarts[aid]
            if stored is not None:
                self.actors[aid] = stored  # (the table's row, whatever we thought)
            return []
        return self.on_restarting_written(aid, incarnation, now, sid)

    def replays(self, aid: ActorId, incarnation: int, tid: TaskId) -> bool:
        """Does incarnation ``incarnation`` of ``aid`` replay call ``tid``?"""
        inc, calls = self.replaying.get(aid, (-1, frozenset()))
        return inc == incarnation and tid in calls

    def on_entry(self, aid: ActorId, entry: ActorEntry | None) -> None:
        if entry is None:
            return
        old = self.actors.get(aid)
        if old is None or (entry.incarnation, _rank(entry.state)) >= (old.incarnation, _rank(old.state)):
            self.actors[aid] = entry
            if entry.state is ActorState.ALIVE or entry.state is ActorState.DEAD:
                self.starting.pop(aid, None)

    def on_node_dead(self, node: str, now: float, sid: str) -> list[Command]:
        cmds: list[Command] = []
        # the workers of the dead node died with it: the actors they own die
        # too (first: an owned actor hosted there is not restarted)
        prefix = node + "/w"  # (worker ids are "<node>/w<n>"; drivers own nothing here)
        for aid, e in sorted(self.actors.items()):
            if e.owner.startswith(prefix) and not e.spec.detached and e.state is not ActorState.DEAD:
                cmds += self.kill(aid, True, now, sid, why=_owner_died(e.owner, f"its node {node} died"))
        for aid, e in sorted(self.actors.items()):
            if e.node == node and e.state is ActorState.ALIVE:
                cmds += self._restart_or_die(e, ErrorInfo(ErrorKind.ACTOR_DIED, f"the node {node} hosting the actor died", task_name=e.spec.cls.name), now, sid)
        # restarts sent to the dead node that had not come up: place them again
        for aid, (to, r) in sorted(self.starting.items()):
            e = self.actors.get(aid)
            if to == node and e is not None and e.state in (ActorState.PENDING, ActorState.RESTARTING) and e.incarnation == r.entry.incarnation:
                del self.starting[aid]
                self.restarts[aid] = r
                cmds += self._place(r, now, sid)
        return cmds

    def on_creation_lost(self, spec: TaskSpec, now: float, sid: str) -> list[Command]:
        """The first creation task was queued on a node that died: place it
        again.  (Only while the actor was never created: the task row of a
        creation stays pending on its node, so when the node of a live actor
        dies this is called too, and ``on_node_dead`` restarts that actor;
        placing it here as well would start a second copy.)"""
        e = self.actors.get(spec.actor_creation.actor_id)
        if e is None or e.state is not ActorState.PENDING:
            return []
        if e.spec.actor_id in self.adopted_pending:
            # found by a recovered head: the old one may have placed it
            # already (StartActor on its way): fence that start
            self.adopted_pending.discard(e.spec.actor_id)
            if e.spec.actor_id in self.restarts:
                return []
            return self._fence_and_place(e, now, sid)
        return self._place(_Restart(e), now, sid)

    def on_reported(self, ev: ActorReported, now: float, reread: bool = False) -> list[Command]:
        e = self.actors.get(ev.actor_id)
        if e is None and ev.entry is not None:
            e = self.actors[ev.actor_id] = ev.entry  # the table's notice is late
        if (e is None or e.incarnation < ev.incarnation) and not reread:
            # the table's notice of this actor (or of this incarnation) has
            # not reached us yet: read the row, then decide (ignoring the
            # report would leave a dead actor ALIVE in the table for good)
            return self.head.gcs.read(Get("actors", ev.actor_id), ("actor-reread", ev), now, ev.stimulus_id)
        if e is None or e.incarnation != ev.incarnation or e.state is ActorState.DEAD:
            return []
        if ev.creation_failed:
            return self._die(e, ev.error, now, ev.stimulus_id)
        return self._restart_or_die(e, ev.error, now, ev.stimulus_id)

    def on_reread(self, ev: Any, row: ActorEntry | None, now: float, sid: str) -> list[Command]:
        """The row ``on_reported`` or ``kill`` asked for; decide again, once."""
        self.on_entry(ev.actor_id, row)
        if type(ev) is ActorReported:
            return self.on_reported(ev, now, reread=True)
        if type(ev) is _SystemKill:
            return self.kill(ev.actor_id, True, now, sid, reread=True, why=ev.why, graceful=ev.graceful)
        return self.kill(ev.actor_id, ev.no_restart, now, sid, reread=True)

    def on_owner_died(self, ev: OwnerDied, now: float) -> list[Command]:
        """The worker ``ev.owner`` died: the non-detached actors it created
        die with it, whatever their ``max_restarts`` (Ray's fate sharing:
        an actor's owner is the worker that created it)."""
        why = _owner_died(ev.owner, ev.reason)
        cmds: list[Command] = []
        for aid in ev.actor_ids:
            cmds += self.kill(aid, True, now, ev.stimulus_id, why=why)
        return cmds

    def kill(self, aid: ActorId, no_restart: bool, now: float, sid: str, reread: bool = False,
             why: str | None = None, graceful: bool = False) -> list[Command]:
        """Stop the actor: ``penumbra.kill`` (``why`` None), or its owner
        died or its job ended (``why`` says so; the actor is never restarted
        then).  ``graceful``: its ``__ray_shutdown__`` runs first."""
        e = self.actors.get(aid)
        if e is None and not reread:
            # an actor created a moment ago: its row's notice is on its way
            ev = _SystemKill(aid, why, graceful) if why else KillActorRequest(actor_id=aid, no_restart=no_restart, stimulus_id=sid)
            return self.head.gcs.read(Get("actors", aid), ("actor-reread", ev), now, sid)
        if e is None or e.state is ActorState.DEAD:
            return []
        cmds: list[Command] = []
        if e.node:
            cmds.append(Send(to=e.node, msg=StopActor(actor_id=aid, incarnation=e.incarnation,
                                                      reason=why or "killed by penumbra.kill()", graceful=graceful,
                                                      stimulus_id=sid)))
        if no_restart:
            return cmds + self._die(e, ErrorInfo(ErrorKind.ACTOR_DIED, why or "it was killed by penumbra.kill()",
                                                 task_name=e.spec.cls.name), now, sid, graceful=graceful)
        return cmds + self._restart_or_die(e, ErrorInfo(ErrorKind.ACTOR_DIED, "it was killed by penumbra.kill(no_restart=False)", task_name=e.spec.cls.name), now, sid)

    def on_job_finished(self, job_id: int, now: float, sid: str) -> list[Command]:
        cmds: list[Command] = []
        for aid, e in sorted(self.actors.items()):
            if e.creation.job_id == job_id and e.state is not ActorState.DEAD and not e.spec.detached:
                # a graceful end, as in Ray: the actor's __ray_shutdown__ runs
                cmds += self.kill(aid, True, now, sid, why=f"its job {job_id} ended (its driver exited)", graceful=True)
        return cmds

    def _die(self, e: ActorEntry, cause: ErrorInfo, now: float, sid: str, graceful: bool = False) -> list[Command]:
        dead = replace(e, state=ActorState.DEAD, death_cause=cause, graceful=graceful)
        self.actors[e.spec.actor_id] = dead
        self.restarts.pop(e.spec.actor_id, None)
        gcs = self.head.gcs
        cmds = gcs.write(PutActor(dead), None, now, sid)
        if e.spec.name:
            cmds += gcs.write(UnregisterName(e.spec.namespace, e.spec.name, e.spec.actor_id), None, now, sid)
        return cmds

    def _restart_or_die(self, e: ActorEntry, cause: ErrorInfo, now: float, sid: str) -> list[Command]:
        limit = e.spec.max_restarts
        if not (limit < 0 or e.restarts < limit):
            if limit:
                cause = replace(cause, message=f"{cause.message}; it was restarted {e.restarts} times (max_restarts={limit})")
            return self._die(e, cause, now, sid)
        new = replace(e, state=ActorState.RESTARTING, node="", incarnation=e.incarnation + 1, restarts=e.restarts + 1)
        self.actors[e.spec.actor_id] = new
        self.restarts[e.spec.actor_id] = _Restart(new)
        # Nothing more until the GCS has the new row: from then on the old
        # instance can neither log a call (its appends name the old
        # incarnation) nor come alive, so the log read below is final.  Read
        # earlier, a call the old instance logged (and released) after the
        # read would be missing from the replay (swarm seed 193).
        return self.head.gcs.write(PutActor(new), ("actor-restarting", e.spec.actor_id, new.incarnation), now, sid)

    def on_restarting_written(self, aid: ActorId, incarnation: int, now: float, sid: str) -> list[Command]:
        r = self.restarts.get(aid)
        if r is None or r.entry.incarnation != incarnation:
            return []
        if not r.entry.spec.replay:
            return self._place(r, now, sid)
        # read the checkpoint, then the calls logged since it
        r.reads = 1
        return self.head.gcs.read(Get("kv", checkpoint_key(aid)), ("actor-ckpt", aid, incarnation), now, sid)

    def on_checkpoint_read(self, aid: ActorId, incarnation: int, value: Any, now: float, sid: str) -> list[Command]:
        r = self.restarts.get(aid)
        if r is None or r.entry.incarnation != incarnation:
            return []
        start = 0
        if value is not None:
            start, payload = value[0], value[1]
            r.checkpoint = payload
            r.seqs = tuple(value[2]) if len(value) > 2 else ()
        r.entry = replace(r.entry, checkpoint_index=start)
        return self.head.gcs.read(ActorLogRange(aid, start, start + 1_000_000), ("actor-log", aid, incarnation), now, sid)

    def on_log_read(self, aid: ActorId, incarnation: int, entries: tuple, now: float, sid: str) -> list[Command]:
        r = self.restarts.get(aid)
        if r is None or r.entry.incarnation != incarnation:
            return []
        r.replay = tuple(e.spec for e in entries if e is not None)
        self.replayed += len(r.replay)
        self.replaying[aid] = (incarnation, frozenset(s.task_id for s in r.replay))
        return self._place(r, now, sid)

    def _place(self, r: _Restart, now: float, sid: str) -> list[Command]:
        aid = r.entry.spec.actor_id

        def placed(node: str, now: float, sid: str) -> list[Command]:
            self.restarts.pop(aid, None)
            cur = self.actors.get(aid)
            if cur is None or cur.incarnation != r.entry.incarnation or cur.state is ActorState.DEAD:
                return []
            if cur.state is not ActorState.ALIVE:
                self.starting[aid] = (node, r)
            return [Send(to=node, msg=StartActor(entry=r.entry, replay=r.replay, checkpoint=r.checkpoint, seqs=r.seqs, stimulus_id=sid))]

        return self.head.scheduler.submit(r.entry.creation, 0, now, sid, on_placed=placed)

    def validate(self) -> None:
        for aid, e in self.actors.items():
            assert e.spec.actor_id == aid
            assert e.restarts <= e.spec.max_restarts or e.spec.max_restarts < 0

