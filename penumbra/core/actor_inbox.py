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

Events (methods): ``call(DirectCall)``, ``finished(task_id, outputs | error)``
(the call ran: its encoded outputs, or the error it raised),
``cancel(DirectCancel)``, ``floor(DirectFloor)``, ``exit(task_id)`` (the
running call ``task_id`` called ``exit_actor()``), ``timer(key)``,
``flush()`` (report what ran now: the worker is about to exit).

Commands: ``Run(spec, attempt)`` (run the call; ends with ``finished``),
``Reply(caller, reply)`` (send ``reply`` to the connection of caller
``caller``), ``Interrupt(task_id, force)`` (a running call was cancelled),
``ReportRan(entries)`` (send ``DirectCallsRan`` to the node), ``EndActor(task_id,
reason)`` (the actor ends itself: ``exit_actor()`` or ``__ray_terminate__``;
every result before it is reported: tell the node, ``KillActor(exiting=task_id)``)
and ``SetTimer(at, key)`` (deliver ``timer(key)`` then).

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

from .ids import ActorId, TaskId
from .msg_base import Command
from .msg_direct import DirectCall, DirectCancel, DirectFloor, DirectOutput, DirectRan, DirectReply
from .records import ErrorInfo
from .specs import TaskSpec

__all__ = ["ActorInbox", "Run", "Reply", "Interrupt", "ReportRan", "EndActor", "REPORT_BATCH", "REPORT_DELAY"]

# a report to the node goes once this many calls ran, or this long
# (seconds) after the first of them, whichever comes first
REPORT_BATCH = 64
REPORT_DELAY = 0.005


# ===========================================================================
# Commands (machine -> driver)


class Run(Command):
    """Run call ``spec`` (``attempt`` counts resends across incarnations);
    it ends with ``finished(spec.task_id, ...)``."""

    spec: TaskSpec
    attempt: int = 0


class Reply(Command):
    """Send ``reply`` to the caller named ``caller`` (``spec.caller_id``:
    the connection its calls came on)."""

    caller: str
    reply: DirectReply


class Interrupt(Command):
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


# ===========================================================================


class ActorInbox:
    """One actor incarnation's direct calls (see the module docstring)."""

    def __init__(self, actor_id: ActorId, incarnation: int, max_concurrency: int = 1) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.actor_id = actor_id
        self.incarnation = incarnation
        self.max_concurrency = max_concurrency

    # ------------------------------------------------------------------ events
    def call(self, msg: DirectCall, now: float) -> list[Command]:
        """A call arrived (maybe again: a repeat is answered from the kept
        result, or ignored while it runs)."""
        raise NotImplementedError

    def finished(self, task_id: TaskId, now: float, outputs: tuple[DirectOutput, ...] = (),
                 error: ErrorInfo | None = None, duration: float = 0.0,
                 span: tuple[float, float] | None = None, sid: str = "") -> list[Command]:
        """Running call ``task_id`` ended: it returned ``outputs`` (one per
        return id, inline or in this node's store) or raised ``error``."""
        raise NotImplementedError

    def cancel(self, msg: DirectCancel, now: float) -> list[Command]:
        raise NotImplementedError

    def floor(self, msg: DirectFloor, now: float) -> list[Command]:
        raise NotImplementedError

    def exit(self, task_id: TaskId, now: float, sid: str = "") -> list[Command]:
        """Running call ``task_id`` called ``exit_actor()``: nothing more
        starts; once the calls running with it ended, ``EndActor``."""
        raise NotImplementedError

    def timer(self, key, now: float, sid: str = "") -> list[Command]:
        """A ``SetTimer`` this machine asked for fired (other keys: [])."""
        raise NotImplementedError

    def flush(self, now: float, sid: str = "") -> list[Command]:
        """Report every call that ran and is not reported yet."""
        raise NotImplementedError

    # ------------------------------------------------------------------ queries
    def running(self) -> int:
        raise NotImplementedError

    def validate(self) -> None:
        raise NotImplementedError
