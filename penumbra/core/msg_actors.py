"""Messages of actors: calls between nodes, and the head's actor management.

A caller's node sends ``ActorCall`` to the actor's host, which answers
``ActorCallDone`` (or ``ActorCallStale`` for a call to an incarnation that
is gone) and tells callers how far it got (``ActorFloor``); calls are
cancelled with ``CancelActorCall``.  The head starts, stops and kills
actors (``StartActor``, ``StopActor``, ``KillActorRequest``), hosts report
their state (``ActorReported``), and a node reports a dead owner so that its
actors share its fate (``OwnerDied``).  The messages module
(``messages.py``) re-exports every name.
"""

from __future__ import annotations

from .ids import ActorId, TaskId
from .msg_base import Message, install_protocol
from .records import ActorEntry, ErrorInfo
from .specs import Payload, TaskSpec

__all__ = [
    "ActorCall",
    "ActorCallDone",
    "ActorFloor",
    "ActorCallStale",
    "StartActor",
    "ActorReported",
    "KillActorRequest",
    "StopActor",
    "CancelActorCall",
    "OwnerDied",
]


# ===========================================================================
# Actors


class ActorCall(Message):
    """Caller's node to the actor's host node: run this method call.

    ``incarnation`` is the incarnation the caller's node believes alive;
    ``floor`` is the caller's lowest sequence number not yet resolved, so a
    restarted actor knows where that caller's order resumes.
    """

    spec: TaskSpec
    from_node: str
    incarnation: int
    floor: int = 0
    attempt: int = 0


class ActorCallDone(Message):
    """Host node to caller's node: these calls are resolved (ran or failed)
    by the actor's ``incarnation``."""

    actor_id: ActorId
    caller_id: str
    sequence_nos: tuple[int, ...]
    incarnation: int = -1


class ActorFloor(Message):
    """Caller's node to the actor's host: this caller's calls below ``floor``
    are all resolved.  Sent when an older incarnation resolved a call the
    live one was told to wait for (otherwise every call carries its floor)."""

    actor_id: ActorId
    caller_id: str
    floor: int
    incarnation: int


class ActorCallStale(Message):
    """Host to caller's node: the call's incarnation is not the live one."""

    spec: TaskSpec
    incarnation: int


class StartActor(Message):
    """Head to a node: (re)create this actor here (placement was decided),
    restoring ``checkpoint`` and replaying ``replay`` (paper-style)."""

    entry: ActorEntry
    replay: tuple[TaskSpec, ...] = ()
    checkpoint: Payload | None = None
    # per caller, the next sequence number after the calls the checkpoint
    # holds: those ran already and must not run again
    seqs: tuple[tuple[str, int], ...] = ()


class ActorReported(Message):
    """Node to head: the actor's worker died or its constructor failed."""

    actor_id: ActorId
    incarnation: int
    node_id: str
    error: ErrorInfo
    creation_failed: bool = False
    entry: ActorEntry | None = None  # the row as the node knows it


class KillActorRequest(Message):
    """Node to head: a client asked to kill an actor (or, with a
    ``reason``, the actor's host ends it: ``__ray_terminate__``)."""

    actor_id: ActorId
    no_restart: bool = True
    reason: str = ""


class StopActor(Message):
    """Head to host node: kill the actor's worker now (``graceful``: after
    the actor's ``__ray_shutdown__`` ran, if it has one)."""

    actor_id: ActorId
    incarnation: int
    reason: str = ""
    graceful: bool = False


# ===========================================================================
# Actors: cancelling a call, and an owner's fate


class CancelActorCall(Message):
    """Caller's node to the actor's host: ``penumbra.cancel`` of a call sent
    to incarnation ``incarnation``.  Queued there, it fails with
    TASK_CANCELLED and never runs; running, its worker gets
    ``InterruptTask`` (an async call's asyncio task is cancelled; a sync or
    threaded call runs on and only sees ``is_canceled()``), and its result
    becomes TASK_CANCELLED whatever the method returns (Ray's rule for
    actor tasks)."""

    actor_id: ActorId
    task_id: TaskId
    caller_id: str
    sequence_no: int
    incarnation: int


class OwnerDied(Message):
    """A node to the head: the worker ``owner`` died, and it had created
    these non-detached actors (Ray's fate sharing: an actor dies with the
    worker that created it, its owner)."""

    owner: str
    actor_ids: tuple[ActorId, ...]
    reason: str = ""


install_protocol(__name__)
