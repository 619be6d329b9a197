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

from typing import TYPE_CHECKING

from . import actor_calls as rules
from .actor_calls import CallBook, PendingCall
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


class ActorRouter:
    """The routed path's sender of actor calls: a ``CallSide`` of the shared
    rules (core/actor_calls.py), sending ``ActorCall`` to the host node."""

    def __init__(self, node: "NodeEffects") -> None:
        self.node = node
        self.routes: dict[ActorId, CallBook] = {}
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

    def _route(self, aid: ActorId, now: float, sid: str) -> tuple[CallBook, list[Command]]:
        r = self.routes.get(aid)
        if r is not None:
            return r, []
        r = self.routes[aid] = CallBook(aid)
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
        p = PendingCall(spec)
        r.add(p)
        self.calls[spec.task_id] = spec.actor_id
        self.node.story_add(spec.task_id, now, sid, f"actor call {spec.method} #{spec.sequence_no}")
        for q in rules.arrive(r, p):
            cmds += rules.send_if_alive(r, q, self, now, sid)
        return cmds

    def skip(self, aid: ActorId, caller: str, after: int, before: int, now: float, sid: str) -> list[Command]:
        """``caller``'s calls to ``aid`` strictly between ``after`` and
        ``before`` will not come here: the client's direct caller resolved
        them before handing the rest of its calls to this router
        (``CallsSkipped``).  The calls they held back leave now."""
        r, cmds = self._route(aid, now, sid)
        for q in rules.skip(r, caller, after, before):
            cmds += rules.send_if_alive(r, q, self, now, sid)
        return cmds

    # -- the CallSide of the shared rules (core/actor_calls.py)
    def ready(self, r: CallBook) -> bool:
        return True

    def send(self, r: CallBook, p: PendingCall, now: float, sid: str) -> list[Command]:
        e = r.entry
        return [Send(to=e.node, msg=ActorCall(
            spec=p.spec, from_node=self.node.address, incarnation=e.incarnation,
            floor=r.floor(p.spec.caller_id), attempt=p.attempt, stimulus_id=sid,
        ))]

    def fail(self, r: CallBook, p: PendingCall, error: ErrorInfo, now: float, sid: str) -> list[Command]:
        r.remove(p.spec.caller_id, p.spec.sequence_no)
        self.calls.pop(p.spec.task_id, None)
        self.node.story_add(p.spec.task_id, now, sid, f"actor call failed: {error.message}")
        return self.node.fail_outputs(p.spec, error, p.attempt, now, sid)

    def send_cancel(self, r: CallBook, p: PendingCall, now: float, sid: str) -> list[Command]:
        e = r.entry
        return [Send(to=e.node, msg=CancelActorCall(
            actor_id=r.actor_id, task_id=p.spec.task_id, caller_id=p.spec.caller_id,
            sequence_no=p.spec.sequence_no, incarnation=p.sent_to, stimulus_id=sid))]

    def note_cancel(self, r: CallBook, p: PendingCall, now: float, sid: str) -> None:
        e = r.entry
        self.node.story_add(p.spec.task_id, now, sid, f"cancel requested; sent to the actor's host {e.node if e else '?'}")

    # -- events
    def on_entry(self, aid: ActorId, entry: ActorEntry | None, now: float, sid: str) -> list[Command]:
        r = self.routes.get(aid)
        if r is None or entry is None:
            return []
        taken, old = rules.accept_row(r, entry, now)
        if not taken:
            return []
        cmds: list[Command] = []
        if old is not None and old.node == self.node.address and (entry.node != old.node or entry.state is not ActorState.ALIVE):
            # the actor left this node: its pending calls' outputs will be
            # made elsewhere (if at all), so follow them in the GCS
            for p in r.pending.values():
                cmds += self.node.objects.producer_left(p.spec.return_ids, now, sid)
        return cmds + rules.settle(r, entry, self, now, sid)

    def on_done(self, ev: ActorCallDone, now: float, sid: str) -> list[Command]:
        r = self.routes.get(ev.actor_id)
        if r is None:
            return []
        for s in ev.sequence_nos:
            p = r.remove(ev.caller_id, s)
            if p is not None:
                self.calls.pop(p.spec.task_id, None)
        floor = rules.floor_notice(r, ev.caller_id, ev.sequence_nos, ev.incarnation)
        if floor is None:
            return []
        e = r.entry
        return [Send(to=e.node, msg=ActorFloor(actor_id=ev.actor_id, caller_id=ev.caller_id, floor=floor,
                                               incarnation=e.incarnation, stimulus_id=sid))]

    def on_stale(self, ev: ActorCallStale, now: float, sid: str) -> list[Command]:
        r = self.routes.get(ev.spec.actor_id)
        if r is None:
            return []
        p = r.pending.get((ev.spec.caller_id, ev.spec.sequence_no))
        if p is None:
            return []
        return rules.stale(r, p, ev.incarnation, self, now, sid)

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
        return True, rules.cancel(r, p, self, now, sid)

    def validate(self) -> None:
        for r in self.routes.values():
            for (c, s), p in r.pending.items():
                assert p.spec.caller_id == c and p.spec.sequence_no == s
                # an unsent call is failed on cancel, never kept as cancelled
                assert not p.cancelled or p.sent_to is not None, f"cancelled call {c}#{s} kept unsent"
