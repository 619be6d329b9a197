"""The actor worker's side of direct calls: one ``ActorInbox`` per actor worker.

Theory of operation
-------------------
An actor's worker process takes calls straight from their callers
(``DirectCall``) and answers them itself (``DirectReply``).  ``ActorInbox``
is the pure half of that: events in, commands out, ``now`` passed in.  One
inbox serves one incarnation of one actor (a restarted actor is a new
worker, with a new inbox).

Per caller it keeps what the routed path's ``ActorHost`` keeps
(core/actor_host.py):

* the next sequence number expected: a caller seen for the first time
  starts at the ``floor`` its call carries (its lowest unresolved call:
  calls below were resolved elsewhere and will never come), and a higher
  floor later (on a call or a ``DirectFloor``) skips ahead the same way;
* the calls that came ahead of a gap, until the gap fills;
* the results of calls that ran, until the caller's floor passes them: a
  call sent again (after a lost connection) gets the same result, and runs
  **at most once in this incarnation** -- exactly once, if its caller keeps
  asking.

Calls run in sequence order per caller, ``max_concurrency`` at once (1: one
after the other; the transport runs them on the worker's executors).

A call sent again to a new incarnation (``attempt`` > 0: its worker died
with it in flight) may have run there and been recorded by that node
before the reply was lost; running it again would give its objects a
second, different value.  So it waits (``CheckRan``) until the driver has
asked the GCS (``checked``): recorded, it is answered from the record
(outputs in the stores that hold them, or the error) and never runs here;
not recorded, it runs.  (The routed host's rule for a call asked for again
after it ran, ``ActorHost.on_covered_row``; found by the swarm once direct
calls could lose replies: a caller held one value and the GCS another.)

Events (methods): ``call(DirectCall)``, ``finished(task_id, outputs | error)``
(the call ran: its encoded outputs, or the error it raised),
``cancel(DirectCancel)``, ``floor(DirectFloor)``, ``exit(task_id)`` (the
running call ``task_id`` called ``exit_actor()``), ``timer(key)``,
``flush()`` (report what ran now: the worker is about to exit).

Commands: ``CheckRan(spec)`` (ask the GCS whether the call's outputs are
recorded already; ends with ``checked``), ``RunCall(spec, attempt)`` (run
the call; ends with ``finished``),
``Reply(caller, reply)`` (send ``reply`` to the connection of caller
``caller``), ``InterruptCall(task_id, force)`` (a running call was cancelled),
``ReportRan(entries)`` (send ``DirectCallsRan`` to the node), ``EndActor(task_id,
reason)`` (the actor ends itself: ``exit_actor()`` or ``__ray_terminate__``;
every result before it is reported: tell the node, ``KillActor(exiting=task_id)``)
and ``SetTimer(at, key)`` (deliver ``timer(key)`` then; the key is
``(FLUSH_TIMER, incarnation)``).  Queries: ``running`` (task id -> call,
the calls running now), ``running_count()``.

Reports to the node are batched, off the critical path (``REPORT_BATCH``
entries, or ``REPORT_DELAY`` after the first), except that a call with an
output in the node's store is reported *before* its reply is sent: whoever
the caller hands the ref to finds it through the node and the GCS.
Cancelled calls: queued, they fail at once (TASK_CANCELLED) and never run;
running, the worker is interrupted and the result is TASK_CANCELLED,
whatever the call returns (the routed host's rule).  ``__ray_terminate__``
runs once every call before it ended, alone, and nothing runs after it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .actor_rules import _cancelled
from .ids import ActorId, TaskId
from .msg_base import Command, SetTimer
from .msg_direct import DirectCall, DirectCancel, DirectFloor, DirectOutput, DirectRan, DirectReply
from .records import ErrorInfo
from .specs import TaskSpec

__all__ = ["ActorInbox", "RunCall", "CheckRan", "from_record", "Reply", "InterruptCall", "ReportRan", "EndActor", "REPORT_BATCH",
           "REPORT_DELAY", "FLUSH_TIMER", "TERMINATE_METHOD"]

# a report to the node goes once this many calls ran, or this long
# (seconds) after the first of them, whichever comes first
REPORT_BATCH = 64
REPORT_DELAY = 0.005
FLUSH_TIMER = "inbox-flush"  # timer key: (FLUSH_TIMER, incarnation)
# Ray's graceful end, queued like a call (the same name as core/actor_host.py's
# TERMINATE_METHOD, which this module does not import: the worker's side
# needs nothing else of the host's)
TERMINATE_METHOD = "__ray_terminate__"


# ===========================================================================
# Commands (machine -> driver)


class RunCall(Command):
    """Run call ``spec`` (``attempt`` counts resends across incarnations);
    it ends with ``finished(spec.task_id, ...)``."""

    spec: TaskSpec
    attempt: int = 0


class CheckRan(Command):
    """Ask the GCS whether call ``spec``'s outputs are recorded (an earlier
    incarnation ran it); answer with ``checked(spec.task_id, ...)``."""

    spec: TaskSpec


class Reply(Command):
    """Send ``reply`` to the caller named ``caller`` (``spec.caller_id``:
    the connection its calls came on)."""

    caller: str
    reply: DirectReply


class InterruptCall(Command):
    """A running call was cancelled: interrupt it (an async call's asyncio
    task is cancelled; a sync one sees ``is_canceled()``; ``force``: kill
    the worker process)."""

    task_id: TaskId
    force: bool = False


class ReportRan(Command):
    """Send the node ``DirectCallsRan(entries=entries)`` (in this order)."""

    entries: tuple[DirectRan, ...]


class EndActor(Command):
    """The actor ends itself in call ``task_id`` (``exit_actor()`` or
    ``__ray_terminate__``); every earlier result is reported.  Tell the
    node: ``KillActor(exiting=task_id, no_restart=True)``."""

    task_id: TaskId
    reason: str = ""


def from_record(spec: TaskSpec, rows) -> tuple[bool, tuple[DirectOutput, ...], ErrorInfo | None]:
    """``checked``'s arguments from the GCS's object rows of ``spec``'s
    return ids (``rows``, in order; None: no row): recorded only if every
    one was created; then the error one holds, or the outputs where the
    rows say they are (a lost one names no node: its reader asks its own)."""
    if not rows or any(r is None or not r.created for r in rows):
        return False, (), None
    for r in rows:
        if r.error is not None:
            return True, (), r.error
    return True, tuple(DirectOutput(object_id=r.object_id, size=r.size, node=min(r.locations) if r.locations else "?")
                       for r in rows), None


# ===========================================================================


@dataclass(slots=True)
class _Call:
    spec: TaskSpec
    attempt: int
    # penumbra.cancel: queued, it was answered TASK_CANCELLED at once and
    # stays queued only to keep its caller's order; running, its result
    # becomes TASK_CANCELLED
    cancelled: bool = False
    # sent again to this incarnation (attempt > 0): waits for ``checked``
    unchecked: bool = False
    # answered from the GCS's record (it ran on an earlier incarnation):
    # stays queued only to keep its caller's order
    answered: bool = False


class ActorInbox:
    """One actor incarnation's direct calls (see the module docstring)."""

    def __init__(self, actor_id: ActorId, incarnation: int, max_concurrency: int = 1) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.actor_id = actor_id
        self.incarnation = incarnation
        self.max_concurrency = max_concurrency
        self.next_seq: dict[str, int] = {}
        # caller -> seq -> call, for calls not run yet
        self.queue: dict[str, dict[int, _Call]] = {}
        self.served: dict[str, int] = {}  # caller -> when it was last served (``turn``)
        self.turn = 0
        self.running: dict[TaskId, _Call] = {}
        self.kept: dict[str, dict[int, DirectReply]] = {}  # results until the caller's floor passes them
        self.pruned: dict[str, int] = {}  # per caller, the floor ``kept`` was last pruned at
        self.unreported: list[DirectRan] = []
        self.checking: dict[TaskId, tuple[str, int]] = {}  # CheckRan asked -> (caller, seq)
        self.flush_at: float | None = None
        # the actor ends itself: nothing more starts (``ending``); once the
        # calls running with the ending one ended, EndActor (``end``: its
        # task id and why)
        self.ending = False
        self.end: tuple[TaskId, str] | None = None
        self.ended = False

    # ------------------------------------------------------------------ events
    def call(self, msg: DirectCall, now: float) -> list[Command]:
        """A call arrived (maybe again: a repeat is answered from the kept
        result, or ignored while it runs)."""
        spec = msg.spec
        sid = msg.stimulus_id
        if spec.actor_id != self.actor_id:
            raise ValueError(f"ActorInbox of actor {self.actor_id}: got a call for actor {spec.actor_id} "
                             f"({spec!r}); each actor worker serves its own actor only")
        caller, seq = spec.caller_id, spec.sequence_no
        if msg.incarnation != self.incarnation:
            return [Reply(caller=caller, reply=DirectReply(
                actor_id=self.actor_id, caller_id=caller, sequence_no=seq, incarnation=self.incarnation,
                task_id=spec.task_id, stale=True, stimulus_id=sid), stimulus_id=sid)]
        self._advance(caller, msg.floor)
        kept = self.kept.get(caller)
        if kept is not None and seq in kept:
            # a repeat of a call answered already (it ran, or was cancelled
            # while queued): the same answer again, never a second run
            return [Reply(caller=caller, reply=kept[seq], stimulus_id=sid)]
        if self.ending:
            return []  # (the actor is ending: its row going DEAD answers the caller)
        q = self.queue.get(caller)
        if (q is not None and seq in q) or seq < self.next_seq[caller]:
            # queued or running (its reply will come), or below the caller's
            # floor; the floor it carried may have let queued calls go
            return self._dispatch(sid)
        if q is None:
            q = self.queue[caller] = {}
        if msg.attempt > 0:
            # (it may have run on an earlier incarnation: ask first)
            q[seq] = _Call(spec, msg.attempt, unchecked=True)
            self.checking[spec.task_id] = (caller, seq)
            return [CheckRan(spec=spec, stimulus_id=sid)] + self._dispatch(sid)
        q[seq] = _Call(spec, msg.attempt)
        return self._dispatch(sid)

    def checked(self, task_id: TaskId, now: float, recorded: bool, outputs: tuple[DirectOutput, ...] = (),
                error: ErrorInfo | None = None, sid: str = "") -> list[Command]:
        """The GCS's answer to ``CheckRan``: ``recorded`` (an earlier
        incarnation ran the call: ``outputs``, in the stores that hold
        them, or ``error``) or not (it runs here)."""
        where = self.checking.pop(task_id, None)
        call = self.queue.get(where[0], {}).get(where[1]) if where is not None else None
        if call is None or call.spec.task_id != task_id or not call.unchecked:
            return []
        call.unchecked = False
        if not recorded or call.cancelled:
            return self._dispatch(sid)
        spec = call.spec
        call.answered = True
        reply = DirectReply(actor_id=self.actor_id, caller_id=spec.caller_id, sequence_no=spec.sequence_no,
                            incarnation=self.incarnation, task_id=task_id, outputs=() if error is not None else outputs,
                            error=error, stimulus_id=sid)
        self.kept.setdefault(spec.caller_id, {})[spec.sequence_no] = reply
        return [Reply(caller=spec.caller_id, reply=reply, stimulus_id=sid)] + self._dispatch(sid)

    def finished(self, task_id: TaskId, now: float, outputs: tuple[DirectOutput, ...] = (),
                 error: ErrorInfo | None = None, duration: float = 0.0,
                 span: tuple[float, float] | None = None, sid: str = "") -> list[Command]:
        """Running call ``task_id`` ended: it returned ``outputs`` (one per
        return id, inline or in this node's store) or raised ``error``."""
        call = self.running.pop(task_id, None)
        if call is None:
            return []
        spec = call.spec
        if self.end is not None and task_id == self.end[0] or spec.method == TERMINATE_METHOD:
            # the call that ends the actor: its result is nobody's (Ray: it
            # fails with ActorDiedError, as the row going DEAD tells its caller)
            if self.end is None:
                self.ending = True
                self.end = (task_id, f"it ended gracefully: {TERMINATE_METHOD} was called")
            return self._end_if_done(now, sid)
        if call.cancelled:
            outputs, error = (), _cancelled(spec)
        elif error is None:
            rids = spec.return_ids
            if tuple(o.object_id for o in outputs) != rids:
                raise ValueError(f"call {spec!r} returned outputs for {[o.object_id for o in outputs]}, "
                                 f"expected one per return id {list(rids)}")
        else:
            outputs = ()
        ran = DirectRan(spec=spec, attempt=call.attempt, outputs=outputs, error=error, duration=duration, span=span)
        reply = DirectReply(actor_id=self.actor_id, caller_id=spec.caller_id, sequence_no=spec.sequence_no,
                            incarnation=self.incarnation, task_id=task_id, outputs=outputs, error=error,
                            stimulus_id=sid)
        self.kept.setdefault(spec.caller_id, {})[spec.sequence_no] = reply
        self.unreported.append(ran)
        cmds: list[Command]
        if any(o.data is None for o in outputs) or len(self.unreported) >= REPORT_BATCH:
            # an output in the node's store is known there before anyone
            # hears of it
            cmds = self.flush(now, sid) + [Reply(caller=spec.caller_id, reply=reply, stimulus_id=sid)]
        else:
            cmds = [Reply(caller=spec.caller_id, reply=reply, stimulus_id=sid)] + self._flush_later(now, sid)
        if self.ending:
            return cmds + self._end_if_done(now, sid)
        return cmds + self._dispatch(sid)

    def cancel(self, msg: DirectCancel, now: float) -> list[Command]:
        """``penumbra.cancel`` of a call sent here (see the module docstring);
        a call not here (done already, or not arrived) is left alone."""
        sid = msg.stimulus_id
        if msg.incarnation != self.incarnation:
            return []
        call = self.running.get(msg.task_id)
        if call is not None:
            if call.cancelled:
                return []
            call.cancelled = True
            return [InterruptCall(task_id=msg.task_id, force=msg.force, stimulus_id=sid)]
        call = self.queue.get(msg.caller_id, {}).get(msg.sequence_no)
        if call is None or call.spec.task_id != msg.task_id or call.cancelled:
            return []
        call.cancelled = True
        spec = call.spec
        error = _cancelled(spec)
        reply = DirectReply(actor_id=self.actor_id, caller_id=spec.caller_id, sequence_no=spec.sequence_no,
                            incarnation=self.incarnation, task_id=spec.task_id, error=error, stimulus_id=sid)
        self.kept.setdefault(spec.caller_id, {})[spec.sequence_no] = reply
        self.unreported.append(DirectRan(spec=spec, attempt=call.attempt, error=error))
        return [Reply(caller=spec.caller_id, reply=reply, stimulus_id=sid)] + self._flush_later(now, sid) + self._dispatch(sid)

    def floor(self, msg: DirectFloor, now: float) -> list[Command]:
        if msg.incarnation != self.incarnation or msg.actor_id != self.actor_id:
            return []
        self._advance(msg.caller_id, msg.floor)
        return self._dispatch(msg.stimulus_id)

    def exit(self, task_id: TaskId, now: float, sid: str = "") -> list[Command]:
        """Running call ``task_id`` called ``exit_actor()``: nothing more
        starts; once the calls running with it ended, ``EndActor``."""
        if self.ending or task_id not in self.running:
            return []
        self.ending = True
        self.end = (task_id, "it called exit_actor()")
        return self._end_if_done(now, sid)

    def timer(self, key, now: float, sid: str = "") -> list[Command]:
        """A ``SetTimer`` this machine asked for fired (other keys: [])."""
        if key != (FLUSH_TIMER, self.incarnation) or self.flush_at is None or now < self.flush_at:
            return []
        return self.flush(now, sid)

    def flush(self, now: float, sid: str = "") -> list[Command]:
        """Report every call that ran and is not reported yet."""
        self.flush_at = None
        if not self.unreported:
            return []
        entries, self.unreported = tuple(self.unreported), []
        return [ReportRan(entries=entries, stimulus_id=sid)]

    # ------------------------------------------------------------------ queries
    def running_count(self) -> int:
        """How many calls run now (``running`` maps their task ids to them)."""
        return len(self.running)

    def validate(self) -> None:
        assert len(self.running) <= self.max_concurrency, f"{len(self.running)} calls running, limit {self.max_concurrency}"
        for caller, q in self.queue.items():
            nxt = self.next_seq.get(caller, 0)
            for s in q:
                assert s >= nxt, f"queued call {caller}#{s} below the next expected {nxt}"
        for caller, kept in self.kept.items():
            nxt = self.next_seq.get(caller, 0)
            q = self.queue.get(caller, {})
            for s in kept:
                # (a call cancelled while queued is answered, and keeps its place)
                assert s < nxt or (s in q and (q[s].cancelled or q[s].answered)), (
                    f"kept result {caller}#{s} is of no call that ended")
        for tid, (caller, s) in self.checking.items():
            c = self.queue.get(caller, {}).get(s)
            assert c is None or c.spec.task_id != tid or c.unchecked, f"call {tid} checked but still asked of the GCS"
        for tid, c in self.running.items():
            assert c.spec.sequence_no < self.next_seq.get(c.spec.caller_id, 0)
            assert c.spec.sequence_no not in self.kept.get(c.spec.caller_id, {}), f"call {tid} running and done"
        assert not self.ended or self.ending
        assert (self.flush_at is None) or self.unreported, "a flush is due with nothing to report"

    # ------------------------------------------------------------------ helpers
    def _advance(self, caller: str, floor: int) -> None:
        """The caller's calls below ``floor`` are resolved (at the caller):
        its order resumes there; what is queued or kept below goes."""
        nxt = self.next_seq.get(caller)
        if nxt is None or nxt < floor:
            self.next_seq[caller] = floor
            q = self.queue.get(caller)
            if q:
                for s in [s for s in q if s < floor]:
                    del q[s]
        kept = self.kept.get(caller)
        if kept and floor > self.pruned.get(caller, -1):
            # (only when the floor rose: a burst of calls carries one floor,
            # and scanning every kept result per call was quadratic)
            self.pruned[caller] = floor
            for s in [s for s in kept if s < floor]:
                del kept[s]
            if not kept:
                del self.kept[caller]

    def _dispatch(self, sid: str) -> list[Command]:
        """Start the calls whose turn it is, ``max_concurrency`` at once;
        of the callers with a call ready, the one served longest ago first."""
        cmds: list[Command] = []
        while len(self.running) < self.max_concurrency and not self.ending:
            best = None
            for caller, q in list(self.queue.items()):
                if not q:
                    del self.queue[caller]
                    continue
                call = q.get(self.next_seq[caller])
                if call is None or call.unchecked or (
                        call.spec.method == TERMINATE_METHOD and self.running and not call.cancelled):
                    continue  # (terminate runs once every call before it ended, and alone)
                if best is None or self.served.get(caller, -1) < self.served.get(best, -1):
                    best = caller
            if best is None:
                break
            q = self.queue[best]
            nxt = self.next_seq[best]
            call = q.pop(nxt)
            self.next_seq[best] = nxt + 1
            self.turn += 1
            self.served[best] = self.turn
            if call.cancelled or call.answered:
                continue  # (answered already: it only held its caller's place)
            self.running[call.spec.task_id] = call
            cmds.append(RunCall(spec=call.spec, attempt=call.attempt, stimulus_id=sid))
            if call.spec.method == TERMINATE_METHOD:
                self.ending = True  # nothing starts after it
        return cmds

    def _flush_later(self, now: float, sid: str) -> list[Command]:
        if not self.unreported or self.flush_at is not None:
            return []
        self.flush_at = now + REPORT_DELAY
        return [SetTimer(at=self.flush_at, key=(FLUSH_TIMER, self.incarnation), stimulus_id=sid)]

    def _end_if_done(self, now: float, sid: str) -> list[Command]:
        """The actor ends once nothing runs but the ending call: every
        result before it reported first."""
        if self.ended or self.end is None or any(t != self.end[0] for t in self.running):
            return []
        self.ended = True
        tid, reason = self.end
        return self.flush(now, sid) + [EndActor(task_id=tid, reason=reason, stimulus_id=sid)]
