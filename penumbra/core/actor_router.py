"""The actor router: a node's caller side of actor method calls.

Theory of operation
-------------------
``ActorRouter`` (in every node) sends a client's method calls to the node
hosting the actor, as the actor's row says.  It remembers every call that is
not yet *resolved* (ran, or failed), so when the row changes it can act:

  * ALIVE (new incarnation): send buffered calls; calls that were in flight
    to the old incarnation are re-sent if ``max_task_retries`` allows, and
    otherwise fail with ``ActorDiedError`` (at most once, Ray's default);
  * RESTARTING: hold new calls; fail (or keep, to retry) in-flight ones;
  * DEAD: fail every pending call with the death cause.

A cancel of a call not sent yet fails it here; one sent is forwarded to the
host (``CancelActorCall``), which alone knows where the call is.  How the
router, the host (core/actor_host.py) and the manager (core/actor_manager.py)
cooperate is in core/actors.py.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .actor_rules import _cancelled, _rank
from .ids import ActorId, TaskId
from .messages import (
    ActorCall,
    ActorFloor,
    CancelActorCall,
    ActorCallDone,
    ActorCallStale,
    Command,
    Send,
)
from .records import ActorEntry, ActorState, ErrorInfo, ErrorKind
from .specs import TaskSpec
from .tables import (
    Get,
    Subscribe,
)

if TYPE_CHECKING:
    from .node_effects import NodeEffects

__all__ = ["ActorRouter"]


def _died(entry: ActorEntry | None, name: str, why: str) -> ErrorInfo:
    if entry is not None and entry.death_cause is not None:
        cause = entry.death_cause
        return ErrorInfo(ErrorKind.ACTOR_DIED, f"the actor {name} is dead: {cause.message}", cause.payload, task_name=name)
    return ErrorInfo(ErrorKind.ACTOR_DIED, f"the actor {name} died {why}", task_name=name)


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
    def __init__(self, node: "NodeEffects") -> None:
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


def _may_retry(entry: ActorEntry, p: _Pending) -> bool:
    n = entry.spec.max_task_retries
    return n < 0 or p.attempt < n
