"""The actor host: runs an actor's calls on the node that hosts it.

Theory of operation
-------------------
``ActorHost`` (in the node that runs the actor) executes calls *in order per
caller*: a call runs only when its sequence number is the next one expected
from its caller.  A caller that appears for the first time in an incarnation
starts at the ``floor`` its node sends with each call (the caller's lowest
unresolved sequence number), so calls given up on by the caller do not leave
a gap that would stall the actor.  ``max_concurrency`` calls may run at once;
a sequential actor's worker gets up to ``PIPELINE_DEPTH`` calls sent ahead.

Paper-style recovery (``ActorSpec.replay``): the host logs each executed call
in the GCS (``AppendActorLog``), and checkpoints every
``checkpoint_interval`` calls; a restarted host replays the calls logged
since the checkpoint (``ActorStart``) before serving new calls.

Cancels, fate sharing and the graceful end (``__ray_shutdown__``,
``__ray_terminate__``, ``SHUTDOWN_GRACE``) are described in core/actors.py,
with how the host, the router (core/actor_router.py) and the manager
(core/actor_manager.py) cooperate.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from msgspec.structs import replace  # (records are Structs)

from .actor_rules import _cancelled, checkpoint_key
from .ids import ActorId, ObjectId, TaskId, child_task_id
from .messages import (
    ActorCall,
    ActorFloor,
    CancelActorCall,
    CheckpointActor,
    ActorCallDone,
    Evict,
    ActorCallStale,
    ActorReported,
    KillActorRequest,
    Command,
    Execute,
    InterruptTask,
    KillWorker,
    Send,
    SetTimer,
    StopActor,
)
from .records import ActorEntry, ActorState, ErrorInfo, ErrorKind, ObjectInfo
from .specs import EMPTY, ActorSpec, Payload, ResourceSet, TaskSpec
from .tables import (
    AppendActorLog,
    Get,
    KvPut,
    PutActor,
)

if TYPE_CHECKING:
    from .node_effects import NodeEffects

__all__ = ["ActorHost", "ActorStart", "PIPELINE_DEPTH", "SHUTDOWN_GRACE", "SHUTDOWN_METHOD", "TERMINATE_METHOD"]


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
    def __init__(self, node: "NodeEffects") -> None:
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
            # (or an instance superseded here, being killed): its result is
            # nobody's, and the bytes its worker wrote go (found by the
            # swarm's tables check once a second driver called from another
            # node: a killed actor's last result stayed in the store, listed
            # nowhere)
            return self.drop_bytes(tuple(o for o, _ in outputs), sid)
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

    def drop_bytes(self, oids, sid: str) -> list[Command]:
        """Outputs a worker wrote that this node will not record: free
        their bytes (those it does record, from an earlier run, stay)."""
        objects = self.node.objects.store.objects
        return [Evict(object_id=o, stimulus_id=sid) for o in oids if o not in objects]

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
