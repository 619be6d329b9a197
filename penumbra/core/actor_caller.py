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
the routed path), and ``SetTimer(at, key)`` (deliver ``timer(key)`` then).

Connections.  A lost connection does not fail calls: the worker may be
alive (the link was cut) or dead (its row will say so).  The caller asks the
node again (``Watch``) and, ``RESEND_AFTER`` later, sends the calls still
unresolved at the live incarnation again; the worker's inbox runs a call at
most once per incarnation and answers a repeat with the result it kept.
"""

from __future__ import annotations

from .ids import ActorId, TaskId
from .msg_base import Command
from .msg_direct import ActorWatched, DirectReply, EndpointRow
from .records import ActorEntry, ErrorInfo
from .specs import TaskSpec

__all__ = ["ActorCaller", "Watch", "Resolved", "Failed", "Reroute", "RESEND_AFTER"]

# after a lost connection, how long before the calls in flight are re-sent
# to the same incarnation (seconds; the row may say it died meanwhile)
RESEND_AFTER = 0.2


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


class Reroute(Command):
    """Send call ``spec`` the routed way (``SubmitTask`` to the node): the
    actor keeps the routed path (``replay=True``).  This machine forgets it."""

    spec: TaskSpec


# ===========================================================================


class ActorCaller:
    """One client's direct calls to every actor it calls (see the module
    docstring)."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id

    # ------------------------------------------------------------------ events
    def submit(self, spec: TaskSpec, now: float, sid: str = "") -> list[Command]:
        """A call was made (``handle.method.remote()``)."""
        raise NotImplementedError

    def row(self, actor_id: ActorId, entry: ActorEntry | None, now: float, sid: str = "") -> list[Command]:
        """The actor's row as the node last read it (stale rows are ignored)."""
        raise NotImplementedError

    def endpoint(self, actor_id: ActorId, row: EndpointRow | None, now: float, sid: str = "") -> list[Command]:
        """Where an incarnation of the actor takes direct calls."""
        raise NotImplementedError

    def watched(self, msg: ActorWatched, now: float) -> list[Command]:
        """The node's ``ActorWatched``: the row, then the endpoint."""
        raise NotImplementedError

    def reply(self, msg: DirectReply, now: float) -> list[Command]:
        """A worker's reply (duplicates and replies for calls resolved
        already are ignored)."""
        raise NotImplementedError

    def lost(self, endpoint: str, now: float, sid: str = "") -> list[Command]:
        """The connection to ``endpoint`` closed, or could not be opened."""
        raise NotImplementedError

    def cancel(self, task_id: TaskId, now: float, force: bool = False, sid: str = "") -> tuple[bool, list[Command]]:
        """``penumbra.cancel`` of a call: (was it one of ours, commands).
        Not sent yet: it fails at once.  Sent to the live incarnation: the
        worker decides (``DirectCancel``).  Sent to an incarnation that is
        gone: it fails at once (a cancelled call is never retried)."""
        raise NotImplementedError

    def killed(self, actor_id: ActorId, now: float, sid: str = "") -> list[Command]:
        """This client killed the actor for good: later calls fail at once."""
        raise NotImplementedError

    def timer(self, key, now: float, sid: str = "") -> list[Command]:
        """A ``SetTimer`` this machine asked for fired (other keys: [])."""
        raise NotImplementedError

    # ------------------------------------------------------------------ queries
    def owns(self, task_id: TaskId) -> bool:
        """Is ``task_id`` an unresolved direct call of this client?"""
        raise NotImplementedError

    def pending(self) -> int:
        """How many calls are unresolved."""
        raise NotImplementedError

    def validate(self) -> None:
        raise NotImplementedError
