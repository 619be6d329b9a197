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
closed: what was sent on it may have arrived), ``unreachable(endpoint)``
(a connection to it could not be opened: nothing sent since the last
``lost``/``unreachable`` of it left this process), ``cancel(task_id)``,
``killed(actor_id)`` (this client killed it for good), ``timer(key)`` (a
``SetTimer`` it asked for fired).

Commands: ``Send(to=endpoint, msg=DirectCall | DirectCancel | DirectFloor)``
(core/msg_base.py; ``to`` is the endpoint string), ``Watch(actor_id)``
(send ``WatchActor`` to the node: the node answers ``ActorWatched`` now and
at every change; it is asked again after a lost connection), ``Resolved(spec,
reply)`` and ``Failed(spec, error)`` (each unresolved call gets exactly one
of the two, or ``Reroute``), ``StoreFailure(spec, error, attempt)`` (with
every ``Failed``: no worker reports such a call, so send the node
``DirectCallFailed``, which stores the error where another process handed
a ref to the call finds it), ``Reroute(spec)`` (send this call the routed
way, ``SubmitTask`` to the node: see *Switching to the routed path*),
``Skipped(actor_id, caller_id, after, before)`` (send the node
``CallsSkipped``, before the ``Reroute`` that follows it), ``Log`` (say so,
once per actor switched), and ``SetTimer(at, key)`` (deliver ``timer(key)``
then; keys ``(RESEND_TIMER, actor_id)`` and ``(ENDPOINT_TIMER,
actor_id)``).  Queries: ``owns(task_id)``, ``pending()``.

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

Switching to the routed path.  An actor's calls from this client leave the
direct path for good, and go through the nodes (whose router keeps the
same rules, core/actor_calls.py), when

  * its row says ``replay=True`` (such actors keep the routed path);
  * its worker cannot be reached: ``UNREACHABLE_TRIES`` connects in a row
    failed, over at least ``UNREACHABLE_SPAN`` seconds, while the row says
    that incarnation is ALIVE (a driver outside the cluster's network, a
    firewall, a wrong address published); or
  * it is ALIVE but no endpoint of that incarnation is published within
    ``ENDPOINT_WAIT`` seconds (its worker does not take direct calls:
    ``PENUMBRA_DIRECT_CALLS=0`` where it runs).

No call may be lost or run twice across the switch.  A call that never
left this process (sent only on connections that never opened) is handed
on (``Reroute``), in order.  A call sent on a connection that opened and
was then lost may have run: it cannot be handed on (the routed path would
run it again).  While there are such calls the switch waits up to
``UNSURE_FOR`` seconds from the first failed connect for the row to settle
them (a dead worker's row changes well within that: the calls are retried
or failed by ``max_task_retries``); after that they fail with
``ActorUnavailableError`` ("may or may not have run", Ray's meaning), and
the rest is handed on.  A cancelled call fails as cancelled.

The router must not wait for the calls it will never get (those resolved
here: answered directly, or failed here), or it would hold the rest behind
the gap forever: ``Skipped`` declares each gap below the calls handed on,
and the router's order passes over it (``actor_calls.skip``); the floor each
routed call carries (the router's lowest pending) tells the actor's side.

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
from .actor_rules import _cancelled
from .msg_base import Command, Log, Send, SetTimer
from .msg_direct import ActorWatched, DirectCall, DirectCancel, DirectFloor, DirectRan, DirectReply, EndpointRow
from .records import ActorEntry, ActorState, ErrorInfo, ErrorKind
from .specs import TaskSpec

__all__ = ["ActorCaller", "Watch", "Resolved", "Failed", "StoreFailure", "Republish", "Reroute", "Skipped",
           "RESEND_AFTER", "RESEND_TIMER", "ENDPOINT_TIMER", "ENDPOINT_WAIT", "UNREACHABLE_TRIES", "UNREACHABLE_SPAN",
           "UNSURE_FOR", "REPORT_KEEP"]

# after a lost connection, how long before the calls in flight are re-sent
# to the same incarnation (seconds; the row may say it died meanwhile)
RESEND_AFTER = 0.2
RESEND_TIMER = "direct-resend"  # timer keys: (RESEND_TIMER, actor_id)
# inline results kept per actor until their incarnation is known to live on
# or die (core/actor_inbox.py's REPORT_BATCH: a worker's unreported results
# are at most one batch; tests/test_actor_caller.py checks they agree)
REPORT_KEEP = 64
# the worker is unreachable after this many failed connects in a row, over
# at least this many seconds (a dead worker's row comes well before)
UNREACHABLE_TRIES = 3
UNREACHABLE_SPAN = 1.0
# calls that may have reached an unreachable worker wait this long (from the
# first failed connect) for the row to settle them, then fail (unavailable)
UNSURE_FOR = 10.0
# an ALIVE incarnation with no endpoint published after this long takes no
# direct calls: its calls go the routed way
ENDPOINT_WAIT = 5.0
ENDPOINT_TIMER = "direct-endpoint"  # timer keys: (ENDPOINT_TIMER, actor_id)


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


class StoreFailure(Command):
    """Call ``spec`` failed here (a ``Failed`` goes with it): store ``error``
    as its outputs on this client's node (send it ``DirectCallFailed``), so
    a process handed one of its refs finds the error -- no worker will
    report this call."""

    spec: TaskSpec
    error: ErrorInfo
    attempt: int = 0


class Reroute(Command):
    """Send call ``spec`` the routed way (``SubmitTask`` to the node): its
    actor's calls left the direct path (see the module docstring).  This
    machine forgets it."""

    spec: TaskSpec


class Skipped(Command):
    """Tell the node (``CallsSkipped``) that ``caller_id``'s calls to
    ``actor_id`` strictly between ``after`` and ``before`` were resolved
    here and will never reach its router (sent before the ``Reroute`` of
    ``before``, if any)."""

    actor_id: ActorId
    caller_id: str
    after: int
    before: int


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
        # failed connects in a row: actor -> (endpoint, how many, first at)
        self.failures: dict[ActorId, tuple[str, int, float]] = {}
        # calls sent on a connection that was then lost (they may have run
        # there): actor -> {(caller, seq): incarnation sent to}
        self.unsure: dict[ActorId, dict[tuple[str, int], int]] = {}
        # ALIVE incarnation whose endpoint is awaited, and until when (ENDPOINT_TIMER)
        self.awaiting: dict[ActorId, tuple[int, float]] = {}
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
            return self._failed(spec, ErrorInfo(
                ErrorKind.ACTOR_DIED, f"the actor {name} is dead: it was killed by penumbra.kill()", task_name=name),
                0, sid)
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
        return self._row(actor_id, entry, now, sid) + self._await_endpoint(actor_id, now, sid)

    def _row(self, actor_id: ActorId, entry: ActorEntry | None, now: float, sid: str) -> list[Command]:
        book = self.books.get(actor_id)
        if book is None or entry is None:
            return []
        if entry.spec.replay:
            return self._switch(book, now, sid)
        taken, _ = rules.accept_row(book, entry, now)
        if not taken:
            return []
        cmds = self._republish(actor_id, entry, sid) if actor_id in self.recent else []
        return cmds + rules.settle(book, entry, self, now, sid)

    def _await_endpoint(self, actor_id: ActorId, now: float, sid: str) -> list[Command]:
        """ALIVE without an endpoint of that incarnation: wait for one at
        most ``ENDPOINT_WAIT`` (then ``_endpoint_late``)."""
        book = self.books.get(actor_id)
        e = book.entry if book is not None else None
        if e is None or e.state is not ActorState.ALIVE:
            return []
        w = self.awaiting.get(actor_id)
        if w is not None and w[0] == e.incarnation:
            return []
        row = self.endpoints.get(actor_id)
        if row is not None and row.incarnation >= e.incarnation:
            return []
        self.awaiting[actor_id] = (e.incarnation, now + ENDPOINT_WAIT)
        return [SetTimer(at=now + ENDPOINT_WAIT, key=(ENDPOINT_TIMER, actor_id), stimulus_id=sid)]

    def endpoint(self, actor_id: ActorId, row: EndpointRow | None, now: float, sid: str = "") -> list[Command]:
        """Where an incarnation of the actor takes direct calls."""
        if row is None:
            return []
        old = self.endpoints.get(actor_id)
        if old is not None and old.incarnation > row.incarnation:
            return []
        self.endpoints[actor_id] = row
        f = self.failures.get(actor_id)
        if f is not None and f[0] != row.endpoint:
            del self.failures[actor_id]  # (those were connects elsewhere)
        book = self.books.get(actor_id)
        if book is None or book.entry is None:
            return []
        if old is not None and old.incarnation == row.incarnation and old.endpoint != row.endpoint:
            # moved: what went to the old address goes again (and may have
            # arrived there: never handed to the routed path)
            self._mark_unsure(book, row.incarnation)
            return self._resend(book, now, sid)
        return rules.settle(book, book.entry, self, now, sid)

    def watched(self, msg: ActorWatched, now: float) -> list[Command]:
        """The node's ``ActorWatched``: the row, then the endpoint."""
        sid, aid = msg.stimulus_id, msg.actor_id
        cmds = self._row(aid, msg.entry, now, sid) + self.endpoint(aid, msg.endpoint, now, sid)
        return cmds + self._await_endpoint(aid, now, sid)

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
        if self.failures:
            self.failures.pop(msg.actor_id, None)  # (it answers)
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
            if row.endpoint != endpoint or book is None:
                continue
            self.failures.pop(aid, None)  # (it was reached)
            self._mark_unsure(book, row.incarnation)
            cmds += self._retry_later(book, row, now, sid)
        return cmds

    def unreachable(self, endpoint: str, now: float, sid: str = "") -> list[Command]:
        """A connection to ``endpoint`` could not be opened (refused, timed
        out, the hello failed): nothing sent to it since its last ``lost``
        or ``unreachable`` left this process.

        As ``lost``, unless the worker is now unreachable (see the module
        docstring): then the actor's calls switch to the routed path."""
        cmds: list[Command] = []
        for aid, row in list(self.endpoints.items()):
            book = self.books.get(aid)
            if row.endpoint != endpoint or book is None:
                continue
            f = self.failures.get(aid)
            f = (endpoint, 1, now) if f is None or f[0] != endpoint else (endpoint, f[1] + 1, f[2])
            self.failures[aid] = f
            why = self._gives_up(book, row, f, now)
            if why:
                cmds += self._switch(book, now, sid, why)
            else:
                cmds += self._retry_later(book, row, now, sid)
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
        if type(key) is not tuple or len(key) != 2:
            return []
        if key[0] == ENDPOINT_TIMER:
            return self._endpoint_late(key[1], now, sid)
        if key[0] != RESEND_TIMER:
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
        for d in (self.failures, self.unsure, self.awaiting):
            for aid in d:
                assert aid in self.books, f"actor {aid} switched or unknown, yet followed"

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
        return self._failed(p.spec, error, p.attempt, sid)

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

    def _failed(self, spec: TaskSpec, error: ErrorInfo, attempt: int, sid: str) -> list[Command]:
        """Call ``spec`` fails here: its caller gets the error, and so does
        anyone else handed a ref to it (through the node)."""
        return [Failed(spec=spec, error=error, stimulus_id=sid),
                StoreFailure(spec=spec, error=error, attempt=attempt, stimulus_id=sid)]

    def _retry_later(self, book: CallBook, row: EndpointRow, now: float, sid: str) -> list[Command]:
        """The connection to ``row`` failed: ask the node again, and send
        what is in flight there again ``RESEND_AFTER`` later."""
        aid = book.actor_id
        if aid in self.down:
            return []
        if not any(p.sent_to == row.incarnation for p in book.pending.values()):
            return []  # (nothing in flight there: the next call connects again)
        self.down.add(aid)
        return [Watch(actor_id=aid, stimulus_id=sid),
                SetTimer(at=now + RESEND_AFTER, key=(RESEND_TIMER, aid), stimulus_id=sid)]

    def _mark_unsure(self, book: CallBook, incarnation: int) -> None:
        """The connection to ``incarnation`` was lost: the calls sent there
        may have run (and those marked before still pending stay marked)."""
        old = self.unsure.get(book.actor_id)
        pending = book.pending
        marks = {k: i for k, i in old.items() if k in pending} if old else {}
        for k, p in pending.items():
            if p.sent_to == incarnation:
                marks[k] = incarnation
        if marks:
            self.unsure[book.actor_id] = marks
        else:
            self.unsure.pop(book.actor_id, None)

    def _gives_up(self, book: CallBook, row: EndpointRow, f: tuple[str, int, float], now: float) -> str:
        """Why the direct path to ``book``'s actor is given up after the
        failed connects ``f`` ("": not yet)."""
        _, n, first = f
        e = book.entry
        if n < UNREACHABLE_TRIES or now - first < UNREACHABLE_SPAN:
            return ""
        if e is None or e.state is not ActorState.ALIVE or row.incarnation != e.incarnation:
            return ""  # (the row says it is gone or moving: the next incarnation decides)
        marks = self.unsure.get(book.actor_id)
        if marks and any(marks.get(k) == p.sent_to for k, p in book.pending.items()) and now - first < UNSURE_FOR:
            return ""  # (calls that may have run there: the row may settle them yet)
        return (f"{n} connections to its worker at {row.endpoint} failed over {now - first:.1f} s "
                f"while the actor is alive")

    def _endpoint_late(self, aid: ActorId, now: float, sid: str) -> list[Command]:
        """``ENDPOINT_WAIT`` after the row said ALIVE: still no endpoint of
        that incarnation?"""
        w = self.awaiting.get(aid)
        if w is None or now < w[1]:
            return []  # (the timer of an earlier incarnation: a later one is set)
        del self.awaiting[aid]
        inc = w[0]
        book = self.books.get(aid)
        e = book.entry if book is not None else None
        if e is None or e.state is not ActorState.ALIVE or e.incarnation != inc:
            return []
        row = self.endpoints.get(aid)
        if row is not None and row.incarnation >= inc:
            return []
        return self._switch(book, now, sid, f"its incarnation {inc} published no endpoint for direct calls within "
                                            f"{ENDPOINT_WAIT:g} s (PENUMBRA_DIRECT_CALLS=0 where it runs?)")

    def _switch(self, book: CallBook, now: float, sid: str, why: str = "") -> list[Command]:
        """The actor's calls leave the direct path for good (see the module
        docstring): fail what may have run or was cancelled, declare the
        gaps, hand the rest on in order.  ``why``: said in the log (a
        ``replay=True`` actor, which never went direct: nothing said)."""
        aid = book.actor_id
        self.routed.add(aid)
        del self.books[aid]
        row = self.endpoints.pop(aid, None)
        self.down.discard(aid)
        self.failures.pop(aid, None)
        self.awaiting.pop(aid, None)
        marks = self.unsure.pop(aid, None) or {}
        cmds: list[Command] = []
        handed: dict[str, list[PendingCall]] = {}
        unsure = 0
        for key, p in sorted(book.pending.items()):
            self.calls.pop(p.spec.task_id, None)
            if p.sent_to is not None and p.cancelled:
                cmds += self._failed(p.spec, _cancelled(p.spec), p.attempt, sid)
            elif p.sent_to is not None and marks.get(key) == p.sent_to:
                unsure += 1
                cmds += self._failed(p.spec, self._unavailable(p.spec, row, why), p.attempt, sid)
            else:
                handed.setdefault(key[0], []).append(p)
        # every call of a caller below ``received`` came here: those not
        # handed on were resolved here, and the router must not wait for them
        for caller in sorted(set(handed) | set(book.received)):
            top = book.received.get(caller, 0)
            prev = -1
            for p in handed.get(caller, ()):
                s = p.spec.sequence_no
                if s < top:
                    if s > prev + 1:
                        cmds.append(Skipped(actor_id=aid, caller_id=caller, after=prev, before=s, stimulus_id=sid))
                    prev = s
                cmds.append(Reroute(spec=p.spec, stimulus_id=sid))
            if top > prev + 1:
                cmds.append(Skipped(actor_id=aid, caller_id=caller, after=prev, before=top, stimulus_id=sid))
        if why:
            name = book.entry.spec.cls.name if book.entry is not None else aid.hex()
            text = (f"actor {name}: direct calls from this process given up ({why}); its calls go through the "
                    f"nodes from now on (slower, same results)")
            if unsure:
                text += f"; {unsure} call(s) that may have reached the worker failed with ActorUnavailableError"
            cmds.append(Log(level="warning", text=text, stimulus_id=sid))
        return cmds

    @staticmethod
    def _unavailable(spec: TaskSpec, row: EndpointRow | None, why: str) -> ErrorInfo:
        name = spec.display_name()
        where = f" at {row.endpoint}" if row is not None else ""
        return ErrorInfo(ErrorKind.ACTOR_UNAVAILABLE,
                         f"the call {name} was sent to its actor's worker{where}, the connection was lost, and the "
                         f"worker could not be reached again ({why}): the call may or may not have run. Later calls "
                         f"go through the nodes; retry this one if it is safe to run twice", task_name=name)
