"""Messages between clients (drivers, and workers acting as clients) and their node.

A client registers, submits tasks, puts objects, watches and releases them,
cancels, kills actors, reads and writes the GCS through its node
(``ClientGcsRequest``) and says when it blocks.  The node answers with
``ObjectsReady``, ``PutDone``/``PutFailed``, ``ClientGcsReply`` and
``ActorRegistered``.  The messages module (``messages.py``) re-exports every
name.
"""

from __future__ import annotations

from typing import Any

from .ids import ActorId, ObjectId, TaskId
from .msg_base import Message, install_protocol
from .records import ErrorInfo, ObjectInfo
from .specs import TaskSpec
from .tables_ops import Op, Query

__all__ = [
    "RegisterClient",
    "ClientDisconnected",
    "SubmitTask",
    "WatchObjects",
    "CancelWatch",
    "ObjectsReady",
    "PutObject",
    "PutDone",
    "PutFailed",
    "ReleaseObjects",
    "CancelTask",
    "KillActor",
    "WorkerBlocked",
    "WorkerUnblocked",
    "ClientGcsRequest",
    "ClientGcsReply",
    "ActorRegistered",
]


# ===========================================================================
# Clients (drivers and workers) <-> their node


class RegisterClient(Message):
    """A driver (or worker acting as a client) connects to its node."""

    client: str
    job_id: int = 0
    is_driver: bool = True


class ClientDisconnected(Message):
    client: str


class SubmitTask(Message):
    """Submit a task or an actor call (``spec.actor_id``) or actor creation."""

    client: str
    spec: TaskSpec


class WatchObjects(Message):
    """Tell ``client`` (``ObjectsReady``) as each object becomes available.

    With ``fetch``, remote objects are pulled into this node's store; that is
    what ``get`` and ``wait(fetch_local=True)`` need.  With ``need`` > 1 the
    node holds its reports until that many objects are ready and then sends
    them together (after that, each as it comes): a ``get`` of N results
    with no timeout hears once, not N times.  A client that must know what
    is ready at any moment (a timeout may cut it short) leaves ``need`` at 1.
    """

    client: str
    req_id: int
    object_ids: tuple[ObjectId, ...]
    fetch: bool = True
    need: int = 1


class CancelWatch(Message):
    client: str
    req_id: int


class ObjectsReady(Message):
    """Node to client: these watched objects are available on the node."""

    req_id: int
    objects: tuple[tuple[ObjectId, ObjectInfo], ...]


class PutObject(Message):
    """A client stored an object in the node's store; admit and record it.

    The node answers ``PutDone`` or ``PutFailed`` (store full).  The object is
    pinned for ``client`` until ``ReleaseObjects`` or disconnect.
    """

    client: str
    req_id: int
    object_id: ObjectId
    size: int


class PutDone(Message):
    req_id: int
    object_id: ObjectId


class PutFailed(Message):
    req_id: int
    object_id: ObjectId
    error: ErrorInfo


class ReleaseObjects(Message):
    """``client`` holds no more refs to these objects it put: unpin them.
    ``free``: no ref to them ever left the client either, so nobody can ask
    for them again: delete them now (unless something else pins them)."""

    client: str
    object_ids: tuple[ObjectId, ...]
    free: bool = False


class CancelTask(Message):
    """Cancel a task (``force``: kill its worker; ``recursive``: children)."""

    client: str
    task_id: TaskId
    force: bool = False
    recursive: bool = True


class KillActor(Message):
    client: str
    actor_id: ActorId
    no_restart: bool = True
    # exit_actor(): the call of the actor that ends it (the calls before it
    # still return their results)
    exiting: TaskId | None = None


class WorkerBlocked(Message):
    """A worker waits in ``get`` for non-local objects: lend out its CPU."""

    worker_id: str


class WorkerUnblocked(Message):
    worker_id: str


class ClientGcsRequest(Message):
    """A client's read or write through its node (``get_actor``, ``nodes``)."""

    client: str
    req_id: int
    request: Op | Query


class ClientGcsReply(Message):
    req_id: int
    result: Any


class ActorRegistered(Message):
    """Node to client: the named actor's registration result (the client
    matches it by ``actor_id``).

    ``error`` is set when the name is taken (the holder's id in ``holder``).
    """

    actor_id: ActorId
    error: str = ""
    holder: ActorId | None = None


install_protocol(__name__)
