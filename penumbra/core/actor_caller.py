"""The caller's side of direct actor calls: one ``ActorCaller`` per client process.

Theory of operation
-------------------
A client (a driver, or a worker acting as a client) sends its actor calls
straight to the actor's worker (``DirectCall``) and hears back from it
(``DirectReply``); no node is on the way.  ``ActorCaller`` is the pure half
of that: events in, commands out, ``now`` passed in, no I/O.

Per actor it keeps the same book as the routed path's ``ActorRouter``
(core/actor_router.py): the actor's row (state, incarnation), every call not
yet *resolved* (seq -> spec, attempt, incarnation it was sent to), the
caller's floor (lowest unresolved seq) -- and, new here, the actor's
endpoint (``EndpointRow``: where the incarnation takes calls).  The rules
on a row change are the router's, shared with it (core/actor_calls.py):

  * ALIVE (new incarnation): send held calls (once the endpoint of that
    incarnation is known); calls in flight to the old incarnation are re-sent
    if ``max_task_retries`` allows, else fail with ``ActorDiedError``;
  * PENDING / RESTARTING: hold new calls;
  * DEAD: fail every pending call with the death cause.

A caller's calls leave in sequence order with no gap, each carrying the
floor, so a new incarnation knows where this caller's order resumes.

Events (methods): ``submit(spec)``, ``row(actor_id, entry)`` and
``endpoint(actor_id, row)`` (or both at once: ``watched(ActorWatched)``),
``reply(DirectReply)``, ``lost(endpoint)`` (the connection to an endpoint
closed or could not be made), ``cancel(task_id)``, ``killed(actor_id)``
(this client killed it for good), ``timer(key)`` (a ``SetTimer`` it asked
for fired).

Commands: ``Send(to=endpoint, msg=DirectCall | DirectCancel | DirectFloor)``
(core/msg_base.py; ``to`` is the endpoint string), ``Watch(actor_id)``
(send ``WatchActor`` to the node: the node answers ``ActorWatched`` now and
at every change; it is asked again after a lost connection), ``Resolved(spec,
reply)`` and ``Failed(spec, error)`` (each unresolved call gets exactly one
of the two, or ``Reroute``), ``Reroute(spec)`` (send this call the routed
way, ``SubmitTask`` to the node: a ``replay=True`` actor, whose calls keep
the routed path), and ``SetTimer(at, key)`` (deliver ``timer(key)`` then; the key is
``(RESEND_TIMER, actor_id)``).  Queries: ``owns(task_id)``, ``pending()``.

Results the node may not have.  An actor's worker reports what it ran to
its node in batches (core/actor_inbox.py), after it replied; a worker that
dies in between (killed, crashed, its node gone) takes the results of its
last batch with it, though their callers have them, and whoever else was
handed their refs would wait for good.  So the caller keeps the last
``REPORT_KEEP`` (the inbox's ``REPORT_BATCH``, the most a batch holds)
inline results of each actor, and when the row says the incarnation that
answered them is gone it hands them to its node to record (``Republish``;
the driver sends ``DirectCallsRecorded``).  Results its client released
are dropped (``released``).  (Found by the swarm: a second driver waited
for good for a call result a killed actor had answered.)

Connections.  A lost connection does not fail calls: the worker may be
alive (the link was cut) or dead (its row will say so).  The caller asks the
node again (``Watch``) and, ``RESEND_AFTER`` later, sends the calls still
unresolved at the live incarnation again; the worker's inbox runs a call at
most once per incarnation and answers a repeat with the result it kept.

Stale replies.  A worker that gets a call meant for another incarnation
(one worker after another at one address) answers ``stale`` without
running it.  From a newer incarnation, that means the one the call went to
is gone -- and since an earlier copy of the call may have run there before
a lost connection, the call stays in flight to it: the row then retries or
fails it by ``max_task_retries``, as any call in flight when its worker
died (never "not sent": that would run it twice).  From an older worker
still at the address, the call did not run: it goes again later, as after
a lost connection.  (The router's ``stale`` rule, for the routed path,
never sends a call twice to one incarnation, so it needs no such care.)
"""

from __future__ import annotations

from collections import deque

from . import actor_calls as rules
from .actor_calls import CallBook, PendingCall
from .ids import ActorId, TaskId
from .msg_base import Command, Send, SetTimer
from .msg_direct import ActorWatched, DirectCall, DirectCancel, DirectFloor, DirectRan, DirectReply, EndpointRow
from .records import ActorEntry, ActorState, ErrorInfo, ErrorKind
from .specs import TaskSpec

__all__ = ["ActorCaller", "Watch", "Resolved", "Failed", "Reroute", "Republish", "RESEND_AFTER", "RESEND_TIMER",
           "REPORT_KEEP"]

# after a lost connection, how long before the calls in flight are re-sent
# to the same incarnation (seconds; the row may say it died meanwhile)
RESEND_AFTER = 0.2
RESEND_TIMER = "direct-resend"  # timer keys: (RESEND_TIMER, actor_id)
# inline results kept per actor until their incarnation is known to live on
# or die (core/actor_inbox.py's REPORT_BATCH: a worker's unreported results
# are at most one batch; tests/test_actor_caller.py checks they agree)
REPORT_KEEP = 64


# ===========================================================================
# Commands (machine -> driver)


class Watch(Command):
    """Ask the node to follow ``actor_id`` for this client (send it
    ``WatchActor``); the answers come back as ``ActorWatched``."""

    actor_id: ActorId


class Resolved(Command):
    """Call ``spec`` is resolved with ``reply`` (its outputs, or the error the
    actor's worker gave: a raised exception, TASK_CANCELLED)."""

    spec: TaskSpec
    reply: DirectReply


class Failed(Command):
    """Call ``spec`` failed without a reply (the actor died, was killed, the
    call was cancelled before it was sent): its returns hold ``error``."""

    spec: TaskSpec
    error: ErrorInfo


class Republish(Command):
    """Have the node record ``entries`` (send it ``DirectCallsRecorded``):
    results of this client's calls answered by an incarnation that died
    since, maybe before it reported them (see the module docstring)."""

    entries: tuple[DirectRan, ...]


class Reroute(Command):
    """Send call ``spec`` the routed way (``SubmitTask`` to the node): the
    actor keeps the routed path (``replay=True``).  This machine forgets it."""

    spec: TaskSpec


# ===========================================================================


class ActorCaller:
    """One client's direct calls to every actor it calls (see the module
    docstring).  It is the ``CallSide`` of the shared rules
    (core/actor_calls.py) that sends to endpoints."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.books: dict[ActorId, CallBook] = {}
        self.endpoints: dict[ActorId, EndpointRow] = {}
        self.calls: dict[TaskId, ActorId] = {}  # unresolved calls -> their actor
        self.killed_actors: set[ActorId] = set()  # killed for good by this client
        self.routed: set[ActorId] = set()  # replay actors: their calls go the routed way
        # actors whose connection was lost: nothing is sent until the resend
        # timer fires (then everything unresolved goes again)
        self.down: set[ActorId] = set()
        # per actor: the last REPORT_KEEP inline results, oldest first
        # (incarnation, spec, reply), until that incarnation is known gone
        self.recent: dict[ActorId, deque] = {}
        self._force = False  # (the force flag of the cancel being handled)

    # ------------------------------------------------------------------ events
    def submit(self, spec: TaskSpec, now: float, sid: str = "") -> list[Command]:
        """A call was made (``handle.method.remote()``)."""
        aid = spec.actor_id
        if aid is None:
            raise ValueError(f"ActorCaller.submit: {spec!r} is not an actor method call (no actor_id); "
                             f"submit tasks and actor creations to the node")
        if aid in self.killed_actors:
            name = spec.display_name()
            return [Failed(spec=spec, error=ErrorInfo(
                ErrorKind.ACTOR_DIED, f"the actor {name} is dead: it was killed by penumbra.kill()", task_name=name),
                stimulus_id=sid)]
        if aid in self.routed:
            return [Reroute(spec=spec, stimulus_id=sid)]
        cmds: list[Command] = []
        book = self.books.get(aid)
        if book is None:
            book = self.books[aid] = CallBook(aid)
            cmds.append(Watch(actor_id=aid, stimulus_id=sid))
        p = PendingCall(spec)
        book.add(p)
        self.calls[spec.task_id] = aid
        for q in rules.arrive(book, p):
            cmds += rules.send_if_alive(book, q, self, now, sid)
        return cmds

    def row(self, actor_id: ActorId, entry: ActorEntry | None, now: float, sid: str = "") -> list[Command]:
        """The actor's row as the node last read it (stale rows are ignored)."""
        book = self.books.get(actor_id)
        if book is None or entry is None:
            return []
        if entry.spec.replay:
            return self._reroute(book, sid)
        taken, _ = rules.accept_row(book, entry, now)
        if not taken:
            return []
        cmds = self._republish(actor_id, entry, sid) if actor_id in self.recent else []
        return cmds + rules.settle(book, entry, self, now, sid)

    def endpoint(self, actor_id: ActorId, row: EndpointRow | None, now: float, sid: str = "") -> list[Command]:
        """Where an incarnation of the actor takes direct calls."""
        if row is None:
            return []
        old = self.endpoints.get(actor_id)
        if old is not None and old.incarnation > row.incarnation:
            return []
        self.endpoints[actor_id] = row
        book = self.books.get(actor_id)
        if book is None or book.entry is None:
            return []
        if old is not None and old.incarnation == row.incarnation and old.endpoint != row.endpoint:
            return self._resend(book, now, sid)  # (moved: what went to the old address goes again)
        return rules.settle(book, book.entry, self, now, sid)

    def watched(self, msg: ActorWatched, now: float) -> list[Command]:
        """The node's ``ActorWatched``: the row, then the endpoint."""
        sid = msg.stimulus_id
        return self.row(msg.actor_id, msg.entry, now, sid) + self.endpoint(msg.actor_id, msg.endpoint, now, sid)

    def reply(self, msg: DirectReply, now: float) -> list[Command]:
        """A worker's reply (duplicates and replies for calls resolved
        already are ignored)."""
        sid = msg.stimulus_id
        book = self.books.get(msg.actor_id)
        p = book.pending.get((msg.caller_id, msg.sequence_no)) if book is not None else None
        if p is None or (msg.task_id is not None and msg.task_id != p.spec.task_id):
            return []
        if msg.stale:
            return self._stale(book, p, msg.incarnation, now, sid)
        book.remove(msg.caller_id, msg.sequence_no)
        del self.calls[p.spec.task_id]
        if msg.error is not None or any(o.data is not None for o in msg.outputs):
            recent = self.recent.get(msg.actor_id)
            if recent is None:
                recent = self.recent[msg.actor_id] = deque(maxlen=REPORT_KEEP)
            recent.append((msg.incarnation, p.spec, msg, p.attempt))
        cmds: list[Command] = [Resolved(spec=p.spec, reply=msg, stimulus_id=sid)]
        floor = rules.floor_notice(book, msg.caller_id, (msg.sequence_no,), msg.incarnation)
        if floor is not None and self.ready(book):
            e = book.entry
            cmds.append(Send(to=self.endpoints[book.actor_id].endpoint, msg=DirectFloor(
                actor_id=book.actor_id, caller_id=msg.caller_id, floor=floor, incarnation=e.incarnation,
                stimulus_id=sid)))
        return cmds

    def lost(self, endpoint: str, now: float, sid: str = "") -> list[Command]:
        """The connection to ``endpoint`` closed, or could not be opened.

        Calls sent there stay pending: the node is asked for the row again,
        and ``RESEND_AFTER`` later whatever is still unresolved is sent again
        (to the incarnation the row names by then)."""
        cmds: list[Command] = []
        for aid, row in self.endpoints.items():
            book = self.books.get(aid)
            if row.endpoint != endpoint or aid in self.down or book is None:
                continue
            if not any(p.sent_to == row.incarnation for p in book.pending.values()):
                continue  # (nothing in flight there: the next call connects again)
            self.down.add(aid)
            cmds.append(Watch(actor_id=aid, stimulus_id=sid))
            cmds.append(SetTimer(at=now + RESEND_AFTER, key=(RESEND_TIMER, aid), stimulus_id=sid))
        return cmds

    def cancel(self, task_id: TaskId, now: float, force: bool = False, sid: str = "") -> tuple[bool, list[Command]]:
        """``penumbra.cancel`` of a call: (was it one of ours, commands).
        Not sent yet: it fails at once.  Sent to the live incarnation: the
        worker decides (``DirectCancel``).  Sent to an incarnation that is
        gone: it fails at once (a cancelled call is never retried)."""
        aid = self.calls.get(task_id)
        book = self.books.get(aid) if aid is not None else None
        p = next((q for q in book.pending.values() if q.spec.task_id == task_id), None) if book is not None else None
        if p is None:
            return False, []
        self._force = force
        try:
            return True, rules.cancel(book, p, self, now, sid)
        finally:
            self._force = False

    def killed(self, actor_id: ActorId, now: float, sid: str = "") -> list[Command]:
        """This client killed the actor for good: later calls fail at once
        (calls made before wait for the row to say DEAD, as on the routed
        path)."""
        self.killed_actors.add(actor_id)
        return []

    def timer(self, key, now: float, sid: str = "") -> list[Command]:
        """A ``SetTimer`` this machine asked for fired (other keys: [])."""
        if type(key) is not tuple or len(key) != 2 or key[0] != RESEND_TIMER:
            return []
        aid = key[1]
        self.down.discard(aid)
        book = self.books.get(aid)
        if book is None or book.entry is None:
            return []
        return self._resend(book, now, sid)

    def released(self, object_ids) -> None:
        """The client released these results: nothing to record of them."""
        if not self.recent:
            return
        gone = set(object_ids)
        for aid, recent in list(self.recent.items()):
            kept = [r for r in recent if not any(o in gone for o in r[1].return_ids)]
            if len(kept) != len(recent):
                recent.clear()
                recent.extend(kept)
            if not recent:
                del self.recent[aid]

    # ------------------------------------------------------------------ queries
    def owns(self, task_id: TaskId) -> bool:
        """Is ``task_id`` an unresolved direct call of this client?"""
        return task_id in self.calls

    def pending(self) -> int:
        """How many calls are unresolved."""
        return len(self.calls)

    def validate(self) -> None:
        n = 0
        for aid, book in self.books.items():
            assert aid not in self.routed, f"actor {aid} both routed and direct"
            e = book.entry
            for (c, s), p in book.pending.items():
                n += 1
                assert p.spec.caller_id == c and p.spec.sequence_no == s
                assert self.calls.get(p.spec.task_id) == aid, f"call {c}#{s} not indexed"
                assert not p.cancelled or p.sent_to is not None, f"cancelled call {c}#{s} kept unsent"
                assert p.sent_to is None or (e is not None and p.sent_to <= e.incarnation), (
                    f"call {c}#{s} sent to incarnation {p.sent_to}, ahead of the row")
                if e is not None and e.state is ActorState.DEAD:
                    raise AssertionError(f"call {c}#{s} pending on a dead actor")
        assert n == len(self.calls), f"{len(self.calls)} calls indexed, {n} pending"

    # ------------------------------------------------------------------ the CallSide of the shared rules
    def ready(self, book: CallBook) -> bool:
        e = book.entry
        row = self.endpoints.get(book.actor_id)
        return row is not None and e is not None and row.incarnation == e.incarnation and book.actor_id not in self.down

    def send(self, book: CallBook, p: PendingCall, now: float, sid: str) -> list[Command]:
        e = book.entry
        return [Send(to=self.endpoints[book.actor_id].endpoint, msg=DirectCall(
            spec=p.spec, incarnation=e.incarnation, floor=book.floor(p.spec.caller_id), attempt=p.attempt,
            stimulus_id=sid))]

    def fail(self, book: CallBook, p: PendingCall, error: ErrorInfo, now: float, sid: str) -> list[Command]:
        book.remove(p.spec.caller_id, p.spec.sequence_no)
        self.calls.pop(p.spec.task_id, None)
        return [Failed(spec=p.spec, error=error, stimulus_id=sid)]

    def send_cancel(self, book: CallBook, p: PendingCall, now: float, sid: str) -> list[Command]:
        row = self.endpoints.get(book.actor_id)
        if row is None or row.incarnation != p.sent_to:
            return []  # (cannot happen: it was sent there)
        return [Send(to=row.endpoint, msg=DirectCancel(
            actor_id=book.actor_id, caller_id=p.spec.caller_id, sequence_no=p.spec.sequence_no,
            task_id=p.spec.task_id, incarnation=p.sent_to, force=self._force, stimulus_id=sid))]

    def note_cancel(self, book: CallBook, p: PendingCall, now: float, sid: str) -> None:
        pass

    # ------------------------------------------------------------------ helpers
    def _stale(self, book: CallBook, p: PendingCall, incarnation: int, now: float, sid: str) -> list[Command]:
        """Incarnation ``incarnation`` answered a copy of ``p`` it was not
        meant for (one worker after another listening at one address)."""
        if p.sent_to is None or incarnation == p.sent_to:
            return []  # (an older copy: the one in flight now went where it should)
        if incarnation > p.sent_to:
            # A newer incarnation listens where we sent it: the one we sent
            # it to is gone.  This copy did not run, but an earlier copy
            # (before a lost connection) may have: the call stays in flight
            # to its incarnation, and the row, once it says so, retries or
            # fails it (max_task_retries) like any call in flight when its
            # worker died.
            return [Watch(actor_id=book.actor_id, stimulus_id=sid)]
        # An older worker still answers at the address: the call did not run
        # there; try again later, as after a lost connection (the live
        # incarnation answers a repeat from the result it kept, if any).
        cmds: list[Command] = []
        if book.actor_id not in self.down:
            self.down.add(book.actor_id)
            cmds += [Watch(actor_id=book.actor_id, stimulus_id=sid),
                     SetTimer(at=now + RESEND_AFTER, key=(RESEND_TIMER, book.actor_id), stimulus_id=sid)]
        return rules.stale(book, p, incarnation, self, now, sid) + cmds

    def _resend(self, book: CallBook, now: float, sid: str) -> list[Command]:
        """Send again, in order, every call in flight to the live
        incarnation (its inbox answers a repeat from the result it kept),
        with the cancels asked for them; then whatever was held."""
        e = book.entry
        if e.state is not ActorState.ALIVE or not self.ready(book):
            return rules.settle(book, e, self, now, sid)
        cmds: list[Command] = []
        for p in sorted(book.pending.values(), key=lambda p: (p.spec.caller_id, p.spec.sequence_no)):
            if p.sent_to == e.incarnation:
                cmds += self.send(book, p, now, sid)
                if p.cancelled:
                    cmds += self.send_cancel(book, p, now, sid)
        return cmds + rules.settle(book, e, self, now, sid)

    def _republish(self, aid: ActorId, entry: ActorEntry, sid: str) -> list[Command]:
        """The row says which incarnations are gone (all, if DEAD): the
        kept results they answered go to the node to record."""
        recent = self.recent[aid]
        live = None if entry.state is ActorState.DEAD else entry.incarnation
        gone = [r for r in recent if live is None or r[0] < live]
        if not gone:
            return []
        if len(gone) == len(recent):
            del self.recent[aid]
        else:
            kept = [r for r in recent if not (live is None or r[0] < live)]
            recent.clear()
            recent.extend(kept)
        return [Republish(entries=tuple(DirectRan(spec=spec, attempt=attempt, outputs=reply.outputs, error=reply.error)
                                        for _, spec, reply, attempt in gone), stimulus_id=sid)]

    def _reroute(self, book: CallBook, sid: str) -> list[Command]:
        """The actor keeps the routed path: hand every call back, in order."""
        self.routed.add(book.actor_id)
        del self.books[book.actor_id]
        self.endpoints.pop(book.actor_id, None)
        self.down.discard(book.actor_id)
        cmds: list[Command] = []
        for p in sorted(book.pending.values(), key=lambda p: (p.spec.caller_id, p.spec.sequence_no)):
            self.calls.pop(p.spec.task_id, None)
            cmds.append(Reroute(spec=p.spec, stimulus_id=sid))
        return cmds
