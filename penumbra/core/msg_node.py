"""What a node's machine exchanges with its own driver: workers, store, disk.

Commands out, events in, and every command completes with an event (the
rules are in ``messages.py``): worker processes (``StartWorker`` ->
``WorkerStarted``/``WorkerStartFailed``, ``Execute`` -> ``TaskFinished``,
``TaskRaised`` or ``WorkerCrashed``, checkpoints), the node's object store
and transfers between nodes (``Fetch`` -> ``FetchCompleted``/``FetchFailed``,
``Evict``), and spilling to the node's local disk (``SpillObjects``,
``RestoreObject``, ``DeleteSpilled``).  The messages module
(``messages.py``) re-exports every name.
"""

from __future__ import annotations

from .ids import ActorId, ObjectId, TaskId
from .msg_base import Command, Event, install_protocol
from .records import ErrorInfo
from .specs import Payload, TaskSpec

__all__ = [
    "StartWorker",
    "WorkerStarted",
    "WorkerStartFailed",
    "Execute",
    "TaskFinished",
    "TaskRaised",
    "WorkerCrashed",
    "KillWorker",
    "InterruptTask",
    "CheckpointActor",
    "ActorCheckpointed",
    "Fetch",
    "FetchCompleted",
    "FetchFailed",
    "Evict",
    "StoreError",
    "SpillObjects",
    "ObjectsSpilled",
    "SpillFailed",
    "RestoreObject",
    "ObjectRestored",
    "RestoreFailed",
    "DeleteSpilled",
]


# ===========================================================================
# Node <-> its worker processes (commands out, events in)


class StartWorker(Command):
    worker_id: str


class WorkerStarted(Event):
    worker_id: str


class WorkerStartFailed(Event):
    worker_id: str
    reason: str


class Execute(Command):
    """Run ``spec`` on ``worker_id``.  Completes with ``TaskFinished``,
    ``TaskRaised`` or ``WorkerCrashed``.  ``attempt`` counts from 0."""

    worker_id: str
    spec: TaskSpec
    attempt: int = 0
    # actor creation only: restore this checkpoint instead of a fresh state
    checkpoint: Payload | None = None
    # the GPU instances (indices on the node) the task or actor holds: what
    # ``get_gpu_ids()`` returns and ``CUDA_VISIBLE_DEVICES`` is set to
    gpu_ids: tuple[int, ...] = ()


class TaskFinished(Event):
    """The task returned.  ``outputs`` are (object id, size) of each return,
    already written to the node's store by the driver."""

    worker_id: str
    task_id: TaskId
    outputs: tuple[tuple[ObjectId, int], ...]
    duration: float = 0.0
    # (start, end) of the run on the node's clock, as the driver measured
    # it (the timeline's bar); None: taken as (now - duration, now)
    span: tuple[float, float] | None = None


class TaskRaised(Event):
    """The user's code raised.  ``retryable`` is the worker's reading of the
    spec's ``retry_exceptions``; ``error`` carries the serialized exception."""

    worker_id: str
    task_id: TaskId
    error: ErrorInfo
    retryable: bool = False
    duration: float = 0.0
    span: tuple[float, float] | None = None  # as ``TaskFinished.span``


class WorkerCrashed(Event):
    """The worker process died (killed, segfault, OOM) or exited."""

    worker_id: str
    reason: str = ""


class KillWorker(Command):
    worker_id: str
    reason: str = ""


class InterruptTask(Command):
    """Ask a worker to interrupt a running task (non-force cancel)."""

    worker_id: str
    task_id: TaskId


class CheckpointActor(Command):
    """Ask an actor's worker to save its state (after ``index`` calls).

    Completes with ``ActorCheckpointed`` (or ``WorkerCrashed``).
    """

    worker_id: str
    actor_id: ActorId
    index: int


class ActorCheckpointed(Event):
    """The actor's state after ``index`` calls, serialized (kept in the GCS,
    so it survives the node)."""

    worker_id: str
    actor_id: ActorId
    index: int
    payload: Payload


# ===========================================================================
# Objects: a node's store and transfers between nodes


class Fetch(Command):
    """Copy ``object_id`` from ``from_node``'s store into ours.

    Completes with ``FetchCompleted`` or ``FetchFailed``.
    """

    object_id: ObjectId
    from_node: str
    size: int


class FetchCompleted(Event):
    object_id: ObjectId
    size: int


class FetchFailed(Event):
    object_id: ObjectId
    from_node: str
    reason: str = ""


class Evict(Command):
    """Free the bytes of ``object_id`` in this node's store."""

    object_id: ObjectId


class StoreError(Command):
    """Materialise ``error`` as the value of these objects in our store."""

    object_ids: tuple[ObjectId, ...]
    error: ErrorInfo


# ===========================================================================
# Spilling: a node's store <-> its local disk (see core/objects_store.py)


class SpillObjects(Command):
    """Write these objects (in this node's store now) to the node's spill
    directory, in the background.  The in-memory copies stay until the
    core says ``Evict``.  Completes with ``ObjectsSpilled`` (all written)
    or ``SpillFailed`` (none kept: the directory is full or unwritable)."""

    object_ids: tuple[ObjectId, ...]
    sizes: tuple[int, ...]


class ObjectsSpilled(Event):
    object_ids: tuple[ObjectId, ...]


class SpillFailed(Event):
    object_ids: tuple[ObjectId, ...]
    reason: str = ""


class RestoreObject(Command):
    """Read ``object_id`` back from the spill directory into the store (the
    file stays until ``DeleteSpilled``).  Completes with ``ObjectRestored``
    or ``RestoreFailed``."""

    object_id: ObjectId
    size: int


class ObjectRestored(Event):
    object_id: ObjectId
    size: int


class RestoreFailed(Event):
    object_id: ObjectId
    reason: str = ""


class DeleteSpilled(Command):
    """Delete the spill files of these objects (released, or restored)."""

    object_ids: tuple[ObjectId, ...]


install_protocol(__name__)
