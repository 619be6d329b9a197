"""Plain data shared by the machines: GCS table rows, errors, load reports.

These are values, not events: they travel inside messages and sit in the GCS
tables.  All are frozen ``Record``s (``msgspec.Struct``); a change is a new
record (``msgspec.structs.replace``).
"""

from __future__ import annotations

from enum import Enum

from .ids import ActorId, ObjectId
from .specs import EMPTY, ActorSpec, Payload, Record, ResourceSet, TaskSpec

__all__ = [
    "ErrorKind",
    "ErrorInfo",
    "ObjectInfo",
    "NodeLoad",
    "PlacementGroupEntry",
    "TaskState",
    "TaskEntry",
    "ObjectEntry",
    "NodeEntry",
    "ActorState",
    "ActorEntry",
    "ChainConfig",
]


class ErrorKind(str, Enum):
    """Why an object holds an error instead of a value.

    Each kind maps to one exception class in ``penumbra.exceptions``.
    """

    TASK_ERROR = "task_error"  # the user's code raised; payload has it
    WORKER_CRASHED = "worker_crashed"  # the worker died, retries exhausted
    NODE_DIED = "node_died"  # the node died, retries exhausted
    ACTOR_DIED = "actor_died"  # the actor is dead (or died mid-call)
    ACTOR_UNAVAILABLE = "actor_unavailable"  # reserved: temporarily unreachable
    OBJECT_LOST = "object_lost"  # lost and not reconstructable (put, budget)
    TASK_CANCELLED = "task_cancelled"
    TASK_UNSCHEDULABLE = "task_unschedulable"  # a hard constraint no node can meet (NodeAffinity to a dead node, a removed placement group)
    OBJECT_STORE_FULL = "object_store_full"
    RUNTIME_ENV = "runtime_env"  # the function/class could not be loaded


class ErrorInfo(Record):
    """An error stored in place of an object's value.

    ``payload`` holds the serialized exception for ``TASK_ERROR`` (opaque to
    the core); the other kinds are rebuilt from ``kind`` and ``message``.
    Errors are small and live in the GCS object entry itself, so any node can
    materialise them without fetching anything.
    """

    kind: ErrorKind
    message: str
    payload: Payload | None = None
    task_name: str = ""


class ObjectInfo(Record):
    """What a client learns about an object that became available."""

    size: int
    error: ErrorInfo | None = None


class PlacementGroupEntry(Record):
    """A placement group's row in the GCS (``placement_groups``, shard 0).

    ``state`` is one of ``PENDING`` (not all bundles reserved yet),
    ``CREATED`` (every bundle reserved), ``RESCHEDULING`` (a node holding
    bundles died; they are being reserved again) and ``REMOVED`` (final).
    ``nodes`` gives, per bundle, the node holding it ("" while unplaced).
    """

    pg_id: str
    bundles: tuple  # of ResourceSet, one per bundle
    strategy: str = "PACK"
    name: str = ""
    namespace: str = ""
    job_id: int = 0
    detached: bool = False
    state: str = "PENDING"
    nodes: tuple[str, ...] = ()


class NodeLoad(Record):
    """A node's heartbeat: what the global scheduler places by.

    ``mean_task_time`` is the node's exponential average of task execution
    time (seconds); ``queue_length`` counts tasks queued but not running.
    """

    queue_length: int
    running: int
    available: ResourceSet
    total: ResourceSet
    mean_task_time: float
    store_used: int = 0
    store_capacity: int = 0
    num_workers: int = 0


class TaskState(str, Enum):
    PENDING = "pending"  # recorded, queued or waiting at ``node``
    FINISHED = "finished"  # outputs created (values or errors)
    FAILED = "failed"  # gave up; outputs hold the error


class TaskEntry(Record):
    """A row of the task table: the lineage of every object.

    ``attempt`` counts executions started (0 before the first); retries and
    reconstructions both consume ``spec.max_retries``.
    """

    spec: TaskSpec
    state: TaskState = TaskState.PENDING
    node: str = ""
    attempt: int = 0
    reconstructions: int = 0
    placed: bool = False  # ``node`` was chosen by the global scheduler


class ObjectEntry(Record):
    """A row of the object table: where an object lives and what it is.

    ``created`` becomes true when the object first exists anywhere (a value or
    an error).  An object that was created and has no location left is lost.
    """

    object_id: ObjectId
    size: int = 0
    locations: frozenset[str] = frozenset()
    created: bool = False
    error: ErrorInfo | None = None
    actor_id: ActorId | None = None  # returned by this actor's method

    @property
    def lost(self) -> bool:
        return self.created and self.error is None and not self.locations


class NodeEntry(Record):
    node_id: str
    resources: ResourceSet = EMPTY
    alive: bool = True
    address: str = ""


class ActorState(str, Enum):
    PENDING = "pending"  # registered, creation task not yet run
    ALIVE = "alive"
    RESTARTING = "restarting"
    DEAD = "dead"


class ActorEntry(Record):
    """A row of the actor table.

    ``incarnation`` grows by one at every restart; calls carry the incarnation
    they were sent to, so a host can tell stale calls from fresh ones.
    """

    spec: ActorSpec
    creation: TaskSpec
    state: ActorState = ActorState.PENDING
    node: str = ""
    incarnation: int = 0
    restarts: int = 0
    death_cause: ErrorInfo | None = None
    owner: str = ""  # the client that created it (for ownership semantics)
    # paper-style replay: how many methods ran, and the last checkpoint
    executed: int = 0
    checkpoint_index: int = 0
    checkpoint: ObjectId | None = None
    # DEAD by a graceful end (its job ended): its host runs the actor's
    # ``__ray_shutdown__`` before stopping the worker (Ray's rule; not on
    # penumbra.kill, a crash, or its owner's death)
    graceful: bool = False


class ChainConfig(Record):
    """The replicas of one GCS shard, head first, tail last.

    ``epoch`` grows at every reconfiguration; a replica ignores a config older
    than the one it has.
    """

    shard: int
    epoch: int
    replicas: tuple[str, ...] = ()

    @property
    def head(self) -> str:
        return self.replicas[0]

    @property
    def tail(self) -> str:
        return self.replicas[-1]

    def successor(self, replica: str) -> str | None:
        i = self.replicas.index(replica)
        return self.replicas[i + 1] if i + 1 < len(self.replicas) else None

    def predecessor(self, replica: str) -> str | None:
        i = self.replicas.index(replica)
        return self.replicas[i - 1] if i > 0 else None


from ._pickling import install as _install_pickling  # noqa: E402

_install_pickling(ErrorInfo, ObjectInfo, NodeLoad, PlacementGroupEntry, TaskEntry, ObjectEntry, NodeEntry, ActorEntry, ChainConfig)
