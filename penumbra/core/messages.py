"""Every event a machine takes in and every command it gives out.

Theory of operation
-------------------
A core machine is driven by ``handle(event, now) -> list[Command]``.  Events
are what happened (a message arrived, a timer fired, a worker crashed);
commands are what the machine wants done (send a message, start a worker,
fetch an object).  Both are frozen ``msgspec.Struct``s (``msg_base``), built
with keyword arguments, and both carry a ``stimulus_id``: the id of the external stimulus
that caused them, so a story can be told for any task ("what happened to X,
and why").

Three rules keep the drivers thin and the machines testable:

1. **Every I/O command completes with an event.**  ``Fetch`` ends in
   ``FetchCompleted`` or ``FetchFailed``; ``StartWorker`` in ``WorkerStarted``
   or ``WorkerStartFailed``; ``Execute`` in ``TaskFinished``, ``TaskRaised``
   or ``WorkerCrashed``.  A driver never decides anything; it reports.
2. **Each failure mode is its own event** (``WorkerCrashed``,
   ``FetchFailed``, ``NodeDied`` ...), never a generic error.
3. **Time is an argument.**  A machine wanting to be woken returns
   ``SetTimer(at=..., key=...)``; the driver later delivers ``TimerFired``
   with the same key.  Timers cannot be cancelled: a machine ignores a key it
   no longer expects.

``Message`` events travel between machines: a machine emits
``Send(to=address, msg=message)`` and the driver delivers ``message`` to the
machine at ``address`` as an event.  Addresses are strings: ``"head"``,
``"node:<id>"``, ``"gcs:<shard>:<replica>"``, and clients (drivers and
workers) named by the transport.

Where they are
--------------
The classes live in modules grouped by who sends them; this module
re-exports every one, so ``from penumbra.core.messages import X`` keeps
working everywhere:

* ``msg_base.py``: ``Event``, ``Command``, ``Message``, ``Send``, timers,
  ``Log``, and the fast pickling and ``__init__`` every class gets;
* ``msg_gcs.py``: the GCS chains (clients and replicas, reconfiguration,
  flushing rows to disk);
* ``msg_client.py``: clients (drivers, workers) and their node;
* ``msg_node.py``: a node's machine and its own driver (workers, store,
  transfers, spilling);
* ``msg_head.py``: nodes and the head (scheduling, jobs, placement groups,
  head recovery);
* ``msg_actors.py``: actor calls between nodes and the head's actor
  management.

(The classes pickle under the module that defines them: every process
imports the same modules, so that is invisible outside a pickle's bytes.)
"""

from __future__ import annotations

from .msg_base import (  # noqa: F401
    Event,
    Command,
    Message,
    Send,
    SetTimer,
    TimerFired,
    Log,
)
from .msg_gcs import (  # noqa: F401
    GcsWrite,
    GcsRead,
    GcsReply,
    GcsForward,
    GcsAck,
    GcsNotify,
    ChainConfigMsg,
    StateTransferRequest,
    StateSnapshot,
    ReplicaHeartbeat,
    ReplicaJoin,
    ReplicaReady,
    FlushRows,
    LoadRows,
    RowsLoaded,
    FlushedRowsRequest,
    FlushedRowsCopy,
)
from .msg_client import (  # noqa: F401
    RegisterClient,
    ClientDisconnected,
    SubmitTask,
    WatchObjects,
    CancelWatch,
    ObjectsReady,
    PutObject,
    PutDone,
    PutFailed,
    ReleaseObjects,
    CancelTask,
    KillActor,
    WorkerBlocked,
    WorkerUnblocked,
    ClientGcsRequest,
    ClientGcsReply,
    ActorRegistered,
)
from .msg_node import (  # noqa: F401
    StartWorker,
    WorkerStarted,
    WorkerStartFailed,
    Execute,
    TaskFinished,
    TaskRaised,
    WorkerCrashed,
    KillWorker,
    InterruptTask,
    CheckpointActor,
    ActorCheckpointed,
    Fetch,
    FetchCompleted,
    FetchFailed,
    Evict,
    StoreError,
    SpillObjects,
    ObjectsSpilled,
    SpillFailed,
    RestoreObject,
    ObjectRestored,
    RestoreFailed,
    DeleteSpilled,
)
from .msg_head import (  # noqa: F401
    NodeJoin,
    NodeWelcome,
    Heartbeat,
    ForwardTask,
    PlaceTask,
    ReconstructObject,
    ObjectUnrecoverable,
    NodeDied,
    JobFinished,
    Fenced,
    StopNode,
    ClusterStatusRequest,
    ClusterStatus,
    JobEnded,
    JobCleared,
    DropObjects,
    PrepareBundles,
    BundlesPrepared,
    BundlesPrepareFailed,
    CommitBundles,
    BundlesCommitted,
    ReleaseBundles,
    BundlesReleased,
    ChainQuery,
    ChainReport,
    TasksHeldQuery,
    TasksHeldReport,
)
from .msg_actors import (  # noqa: F401
    ActorCall,
    ActorCallDone,
    ActorFloor,
    ActorCallStale,
    StartActor,
    ActorReported,
    KillActorRequest,
    StopActor,
    CancelActorCall,
    OwnerDied,
)

from . import msg_actors, msg_client, msg_gcs, msg_head, msg_node  # noqa: E402

# the base classes, and every name of the other parts (each part lists its own)
__all__ = [
    "Event", "Command", "Message", "Send", "SetTimer", "TimerFired", "Log",
    *msg_gcs.__all__,
    *msg_client.__all__,
    *msg_node.__all__,
    *msg_head.__all__,
    *msg_actors.__all__,
]
