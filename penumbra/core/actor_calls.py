"""The caller's rules for actor calls, shared by the routed and the direct path.

Theory of operation
-------------------
Whoever sends a client's actor calls -- a node's ``ActorRouter`` on the
routed path (core/actor_router.py), the client's own ``ActorCaller`` on the
direct path (core/actor_caller.py) -- keeps the same book per actor
(``CallBook``) and follows the same rules, which live here once:

* **Order** (``arrive``): a caller's calls leave for the actor in sequence
  order with no gap; one that arrives ahead of an earlier one waits for it.
  Each call carries the caller's *floor*, its lowest unresolved sequence
  number (``CallBook.floor``), so a new incarnation knows where the caller's
  order resumes.
* **Skips** (``skip``): calls a sender never gets, because another sender
  resolved them (a client's direct caller handing the rest of its calls to
  the routed path: ``ActorCaller`` failed some itself, or had them answered
  directly) are declared, ``(after, before)``: the caller's calls strictly
  between those two will not come.  Order then passes over them; the
  floor (the lowest call *pending here*) tells the actor's side the same.
* **Rows** (``accept_row`` then ``settle``): a row never goes back (lower
  incarnation, or a lower state rank in the same one); on a change:
  ALIVE sends held calls, and calls in flight to an older incarnation are
  re-sent if ``max_task_retries`` allows (``attempt`` counts the resends),
  else fail with ``ActorDiedError`` (at most once); PENDING/RESTARTING hold;
  DEAD fails every pending call with the death cause (``died``).
* **Cancel** (``cancel``): not sent yet, the call fails now; sent to the live
  incarnation, the actor's side decides; sent to one that is gone, it fails
  now.  A cancelled call is never retried.
* **Floors** (``floor_notice``): when a call is resolved by an older
  incarnation (or the caller's floor jumps past the calls the live one
  knows of), the live incarnation is told where the caller's order goes on.
* **Stale** (``stale``): a call that reached an actor side that is not the
  incarnation it was sent to never ran there; it is sent again once the row
  names the live incarnation.

What sending and failing *do* differs (the router sends ``ActorCall`` to a
node and fails a call by recording its outputs as errors; the caller sends
``DirectCall`` to an endpoint and hands the failure to its client): that is
the ``CallSide`` each passes in.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Protocol

from .actor_rules import _cancelled, _rank
from .ids import ActorId
from .msg_base import Command
from .records import ActorEntry, ActorState, ErrorInfo, ErrorKind
from .specs import TaskSpec

__all__ = ["PendingCall", "CallBook", "CallSide", "died", "in_flight_lost", "may_retry", "arrive", "skip",
           "send_if_alive", "accept_row", "settle", "cancel", "floor_notice", "stale"]


def died(entry: ActorEntry | None, name: str, why: str) -> ErrorInfo:
    """The error of a call to an actor that is dead."""
    if entry is not None and entry.death_cause is not None:
        cause = entry.death_cause
        return ErrorInfo(ErrorKind.ACTOR_DIED, f"the actor {name} is dead: {cause.message}", cause.payload, task_name=name)
    return ErrorInfo(ErrorKind.ACTOR_DIED, f"the actor {name} died {why}", task_name=name)


def in_flight_lost(entry: ActorEntry, spec: TaskSpec) -> ErrorInfo:
    """The error of a call in flight when its incarnation died, not retried."""
    return ErrorInfo(
        ErrorKind.ACTOR_DIED,
        f"the actor died while the call {spec.display_name()} was in flight; it is "
        f"not retried (max_task_retries={entry.spec.max_task_retries}); set "
        f"max_task_retries to retry calls across restarts",
        task_name=spec.display_name(),
    )


@dataclass(slots=True)
class PendingCall:
    spec: TaskSpec
    attempt: int = 0
    sent_to: int | None = None  # incarnation the call was sent to
    cancelled: bool = False  # penumbra.cancel asked after it was sent: never retried


def may_retry(entry: ActorEntry, p: PendingCall) -> bool:
    n = entry.spec.max_task_retries
    return n < 0 or p.attempt < n


@dataclass(slots=True)
class CallBook:
    """One actor's calls not yet resolved, as their sender keeps them."""

    actor_id: ActorId
    entry: ActorEntry | None = None
    pending: dict[tuple[str, int], PendingCall] = field(default_factory=dict)
    # the calls' sequence numbers by caller, as heaps (removal is lazy), so
    # the floor is O(log n).  (Not insertion order: the swarm found that
    # submissions can reach the node out of order.)
    by_caller: dict[str, list[int]] = field(default_factory=dict)
    changed_at: float = 0.0
    # per caller: every call below this has reached us; calls above a gap wait
    received: dict[str, int] = field(default_factory=dict)
    ahead: dict[str, set[int]] = field(default_factory=dict)
    # per caller: after -> before, the calls strictly between will never
    # come (``skip``), for an ``after`` not received yet
    skips: dict[str, dict[int, int]] = field(default_factory=dict)

    def add(self, p: PendingCall) -> None:
        c, s = p.spec.caller_id, p.spec.sequence_no
        self.pending[(c, s)] = p
        heapq.heappush(self.by_caller.setdefault(c, []), s)

    def remove(self, caller: str, seq: int) -> PendingCall | None:
        return self.pending.pop((caller, seq), None)

    def floor(self, caller: str) -> int:
        heap = self.by_caller.get(caller)
        while heap and (caller, heap[0]) not in self.pending:
            heapq.heappop(heap)
        if not heap:
            self.by_caller.pop(caller, None)
            return 0
        return heap[0]

    def sendable(self, p: PendingCall) -> bool:
        """Has every earlier call of ``p``'s caller reached us (so ``p`` may leave)?"""
        return p.spec.sequence_no < self.received.get(p.spec.caller_id, 0)


class CallSide(Protocol):
    """What the sender of the calls does (the router, or a client's caller)."""

    def ready(self, book: CallBook) -> bool:
        """May calls be sent to ``book.entry`` (ALIVE) now?  (The router:
        always; the direct caller: once it knows that incarnation's endpoint.)"""

    def send(self, book: CallBook, p: PendingCall, now: float, sid: str) -> list[Command]:
        """Send ``p`` to incarnation ``p.sent_to`` (set already), with its floor."""

    def fail(self, book: CallBook, p: PendingCall, error: ErrorInfo, now: float, sid: str) -> list[Command]:
        """``p`` fails with ``error``: forget it (``book.remove``) and say so."""

    def send_cancel(self, book: CallBook, p: PendingCall, now: float, sid: str) -> list[Command]:
        """Tell the live incarnation (``p.sent_to``) that ``p`` is cancelled."""

    def note_cancel(self, book: CallBook, p: PendingCall, now: float, sid: str) -> None:
        """A cancel of ``p``, which was sent, is being handled (a story line)."""


def arrive(book: CallBook, p: PendingCall) -> list[PendingCall]:
    """``p`` was submitted (and added to ``book``): the calls that may now be
    sent, in order (none if ``p`` came ahead of an earlier call).  A call
    seen before (a re-submission) may be sent again at once.  (Found by the
    swarm: with submissions reordered on the way, a call sent ahead carried
    a floor above the call still to come, and the actor skipped that one.)"""
    caller, seq = p.spec.caller_id, p.spec.sequence_no
    nxt = book.received.get(caller, 0)
    if seq > nxt:
        book.ahead.setdefault(caller, set()).add(seq)
        return []
    if seq < nxt:
        return [p]
    return _release(book, caller, seq, [p])


def skip(book: CallBook, caller: str, after: int, before: int) -> list[PendingCall]:
    """``caller``'s calls strictly between ``after`` and ``before`` will never
    come (another sender resolved them; ``after`` -1: from the first): the
    calls that may now be sent, in order.  Works whichever comes first, the
    skip or the calls around it."""
    if before <= after + 1:
        return []
    nxt = book.received.get(caller, 0)
    if after >= nxt:  # (``after`` has not come yet: jump when it does)
        book.skips.setdefault(caller, {})[after] = before
        return []
    if before <= nxt:
        return []  # (passed already)
    return _release(book, caller, before - 1, [])


def _release(book: CallBook, caller: str, at: int, released: list[PendingCall]) -> list[PendingCall]:
    """Position ``at`` of ``caller``'s order is passed (its call came, or
    never will): go on over every call that came ahead (appended to
    ``released``) and every skip."""
    ahead = book.ahead.get(caller)
    jumps = book.skips.get(caller)
    while True:
        nxt = jumps.pop(at, at + 1) if jumps else at + 1
        if not (ahead and nxt in ahead):
            break
        ahead.discard(nxt)
        q = book.pending.get((caller, nxt))
        if q is not None:
            released.append(q)
        at = nxt
    if jumps is not None and not jumps:
        del book.skips[caller]
    book.received[caller] = nxt
    return released


def send_if_alive(book: CallBook, p: PendingCall, side: CallSide, now: float, sid: str) -> list[Command]:
    """Send ``p`` if the actor is ALIVE (and the side ready), fail it if DEAD,
    else hold it."""
    e = book.entry
    if e is None or e.state in (ActorState.PENDING, ActorState.RESTARTING):
        return []  # buffered until ALIVE
    if e.state is ActorState.DEAD:
        return side.fail(book, p, died(e, p.spec.display_name(), ""), now, sid)
    if not side.ready(book):
        return []  # (held until the side can reach the incarnation)
    p.sent_to = e.incarnation
    return side.send(book, p, now, sid)


def accept_row(book: CallBook, entry: ActorEntry, now: float) -> tuple[bool, ActorEntry | None]:
    """Take the actor's row unless it is older than the one we have:
    (taken, the previous row)."""
    old = book.entry
    if old is not None and (entry.incarnation, _rank(entry.state)) < (old.incarnation, _rank(old.state)):
        return False, old  # stale
    book.changed_at = now
    book.entry = entry
    return True, old


def settle(book: CallBook, entry: ActorEntry, side: CallSide, now: float, sid: str) -> list[Command]:
    """Apply the rules of a (taken) row to every pending call, in caller and
    sequence order."""
    cmds: list[Command] = []
    for p in sorted(book.pending.values(), key=lambda p: (p.spec.caller_id, p.spec.sequence_no)):
        if entry.state is ActorState.DEAD:
            cmds += side.fail(book, p, died(entry, p.spec.display_name(), ""), now, sid)
        elif p.sent_to is not None and p.sent_to < entry.incarnation:
            # the call went to an incarnation that died
            if p.cancelled:
                cmds += side.fail(book, p, _cancelled(p.spec), now, sid)  # (cancelled calls are not retried)
            elif may_retry(entry, p):
                p.attempt += 1
                p.sent_to = None
                cmds += send_if_alive(book, p, side, now, sid)
            else:
                cmds += side.fail(book, p, in_flight_lost(entry, p.spec), now, sid)
        elif p.sent_to is None and entry.state is ActorState.ALIVE and book.sendable(p):
            cmds += send_if_alive(book, p, side, now, sid)
    return cmds


def cancel(book: CallBook, p: PendingCall, side: CallSide, now: float, sid: str) -> list[Command]:
    """``penumbra.cancel`` of pending call ``p`` (see the module docstring)."""
    if p.sent_to is None:
        return side.fail(book, p, _cancelled(p.spec), now, sid)
    if p.cancelled:
        return []
    p.cancelled = True
    side.note_cancel(book, p, now, sid)
    e = book.entry
    if e is not None and e.state is ActorState.ALIVE and e.incarnation == p.sent_to:
        return side.send_cancel(book, p, now, sid)
    if e is not None and e.incarnation > p.sent_to:
        return side.fail(book, p, _cancelled(p.spec), now, sid)
    return []  # (the row is behind: settle fails it when it catches up)


def floor_notice(book: CallBook, caller: str, seqs, incarnation: int) -> int | None:
    """Calls ``seqs`` of ``caller`` were resolved by ``incarnation`` (and
    removed from ``book``): the floor to tell the live incarnation, if it
    needs telling.  The live incarnation runs a caller's calls without gaps:
    if the next call it will get is not the one after these (a call between
    was resolved elsewhere: by an older incarnation, or failed at the
    caller), or an older incarnation resolved these, it must hear where the
    caller's order goes on.  (Found by the swarm, seed 195: a restarted
    actor waited forever for a call an old one had answered.)"""
    e = book.entry
    if e is None or e.state is not ActorState.ALIVE or not book.pending:
        return None
    floor = book.floor(caller)
    if not floor or not (incarnation < e.incarnation or floor > max(seqs) + 1):
        return None
    # (the scan last: it is O(pending), and most replies stop above)
    if not any(c == caller and p.sent_to == e.incarnation for (c, _), p in book.pending.items()):
        return None
    return floor


def stale(book: CallBook, p: PendingCall, incarnation: int, side: CallSide, now: float, sid: str) -> list[Command]:
    """The actor side that got ``p`` is incarnation ``incarnation``, not the
    one ``p`` was sent to: it never ran there; send it again once the row
    names a later live incarnation."""
    e = book.entry
    if e is not None and e.incarnation > incarnation and p.sent_to is not None and p.sent_to < e.incarnation:
        return []  # handled when we saw the new incarnation
    p.sent_to = None
    if e is not None and e.state is ActorState.ALIVE and e.incarnation > incarnation:
        return send_if_alive(book, p, side, now, sid)
    return []
