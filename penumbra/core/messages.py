"""Every event a machine takes in and every command it gives out.

Theory of operation
-------------------
A core machine is driven by ``handle(event, now) -> list[Command]``.  Events
are what happened (a message arrived, a timer fired, a worker crashed);
commands are what the machine wants done (send a message, start a worker,
fetch an object).  Both are frozen, slotted dataclasses, built with keyword
arguments, and both carry a ``stimulus_id``: the id of the external stimulus
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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable

from .ids import ActorId, ObjectId, TaskId
from .records import (
    ActorEntry,
    ChainConfig,
    ErrorInfo,
    NodeLoad,
    ObjectInfo,
)
from .specs import Payload, ResourceSet, TaskSpec
from .tables import Op, Query

_frozen = dataclass(frozen=True, slots=True, kw_only=True)


# ===========================================================================
# Base classes


@_frozen
class Event:
    stimulus_id: str = ""


@_frozen
class Command:
    stimulus_id: str = ""


@_frozen
class Message(Event):
    """An event that travels from one machine to another via ``Send``."""


# ===========================================================================
# Generic commands and events


@_frozen
class Send(Command):
    to: str
    msg: Message


@_frozen
class SetTimer(Command):
    at: float
    key: Hashable


@_frozen
class TimerFired(Event):
    key: Hashable


@_frozen
class Log(Command):
    """Something a person should see (``level``: 'warning', 'info', ...).

    ``job_id`` routes it to that job's driver when set.
    """

    level: str
    text: str
    job_id: int | None = None


# ===========================================================================
# GCS: chain replication (replica <-> replica, client <-> replica)


@_frozen
class GcsWrite(Message):
    """A client asks the chain head to apply ``op``.

    ``req_id`` is unique per client; ``low_water`` is the client's lowest
    request id still outstanding, so replicas may forget dedup entries below
    it.  A replica that is not the head drops the request (the client retries
    after a timeout or a new chain config).
    """

    client: str
    req_id: int
    op: Op
    shard: int = 0
    low_water: int = 0


@_frozen
class GcsRead(Message):
    """A client asks the chain tail to answer ``query``."""

    client: str
    req_id: int
    query: Query
    shard: int = 0


@_frozen
class GcsReply(Message):
    """The tail's answer to a write (after it is committed) or a read."""

    req_id: int
    result: Any
    shard: int = 0


@_frozen
class GcsForward(Message):
    """Replica to successor: apply the write with sequence number ``seq``."""

    shard: int
    epoch: int
    seq: int
    client: str
    req_id: int
    op: Op
    low_water: int = 0


@_frozen
class GcsAck(Message):
    """Successor to predecessor: everything up to ``seq`` is committed."""

    shard: int
    epoch: int
    seq: int


@_frozen
class GcsNotify(Message):
    """Pub/sub: ``key`` of ``table`` changed to ``value`` (``None``: deleted).

    Sent by the tail after the change is committed.  Delivery is at least
    once (a new tail re-sends what the old one may not have); ``version`` is
    the shard's sequence number, so a subscriber can drop stale repeats.
    """

    table: str
    key: Hashable
    value: Any
    version: int
    shard: int = 0


@_frozen
class ChainConfigMsg(Message):
    """The chain master's current configuration of one shard."""

    config: ChainConfig


@_frozen
class StateTransferRequest(Message):
    """A joining replica asks the current tail for a snapshot."""

    replica: str
    shard: int


@_frozen
class StateSnapshot(Message):
    """The tail's state for a joining replica, as of ``seq``."""

    shard: int
    epoch: int
    seq: int
    snapshot: Any
    dedup: Any


@_frozen
class ReplicaHeartbeat(Message):
    replica: str
    shard: int
    seq: int = 0
    epoch: int = 0  # the epoch of the chain config the replica has (0: none)
    caught_up: bool = True  # holds every committed write (a new member: once synced)


@_frozen
class ReplicaJoin(Message):
    """A (re)started replica asks the chain master to be added to a chain."""

    replica: str
    shard: int


@_frozen
class ReplicaReady(Message):
    """A joining replica has its snapshot and can become the tail."""

    replica: str
    shard: int
    seq: int


# ===========================================================================
# Clients (drivers and workers) <-> their node


@_frozen
class RegisterClient(Message):
    """A driver (or worker acting as a client) connects to its node."""

    client: str
    job_id: int = 0
    is_driver: bool = True


@_frozen
class ClientDisconnected(Message):
    client: str


@_frozen
class SubmitTask(Message):
    """Submit a task or an actor call (``spec.actor_id``) or actor creation."""

    client: str
    spec: TaskSpec


@_frozen
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


@_frozen
class CancelWatch(Message):
    client: str
    req_id: int


@_frozen
class ObjectsReady(Message):
    """Node to client: these watched objects are available on the node."""

    req_id: int
    objects: tuple[tuple[ObjectId, ObjectInfo], ...]


@_frozen
class PutObject(Message):
    """A client stored an object in the node's store; admit and record it.

    The node answers ``PutDone`` or ``PutFailed`` (store full).  The object is
    pinned for ``client`` until ``ReleaseObjects`` or disconnect.
    """

    client: str
    req_id: int
    object_id: ObjectId
    size: int


@_frozen
class PutDone(Message):
    req_id: int
    object_id: ObjectId


@_frozen
class PutFailed(Message):
    req_id: int
    object_id: ObjectId
    error: ErrorInfo


@_frozen
class ReleaseObjects(Message):
    """``client`` holds no more refs to these objects it put: unpin them.
    ``free``: no ref to them ever left the client either, so nobody can ask
    for them again: delete them now (unless something else pins them)."""

    client: str
    object_ids: tuple[ObjectId, ...]
    free: bool = False


@_frozen
class CancelTask(Message):
    """Cancel a task (``force``: kill its worker; ``recursive``: children)."""

    client: str
    task_id: TaskId
    force: bool = False
    recursive: bool = True


@_frozen
class KillActor(Message):
    client: str
    actor_id: ActorId
    no_restart: bool = True
    # exit_actor(): the call of the actor that ends it (the calls before it
    # still return their results)
    exiting: TaskId | None = None


@_frozen
class WorkerBlocked(Message):
    """A worker waits in ``get`` for non-local objects: lend out its CPU."""

    worker_id: str


@_frozen
class WorkerUnblocked(Message):
    worker_id: str


@_frozen
class ClientGcsRequest(Message):
    """A client's read or write through its node (``get_actor``, ``nodes``)."""

    client: str
    req_id: int
    request: Op | Query


@_frozen
class ClientGcsReply(Message):
    req_id: int
    result: Any


@_frozen
class ActorRegistered(Message):
    """Node to client: the named actor's registration result (the client
    matches it by ``actor_id``).

    ``error`` is set when the name is taken (the holder's id in ``holder``).
    """

    actor_id: ActorId
    error: str = ""
    holder: ActorId | None = None


# ===========================================================================
# Node <-> its worker processes (commands out, events in)


@_frozen
class StartWorker(Command):
    worker_id: str


@_frozen
class WorkerStarted(Event):
    worker_id: str


@_frozen
class WorkerStartFailed(Event):
    worker_id: str
    reason: str


@_frozen
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


@_frozen
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


@_frozen
class TaskRaised(Event):
    """The user's code raised.  ``retryable`` is the worker's reading of the
    spec's ``retry_exceptions``; ``error`` carries the serialized exception."""

    worker_id: str
    task_id: TaskId
    error: ErrorInfo
    retryable: bool = False
    duration: float = 0.0
    span: tuple[float, float] | None = None  # as ``TaskFinished.span``


@_frozen
class WorkerCrashed(Event):
    """The worker process died (killed, segfault, OOM) or exited."""

    worker_id: str
    reason: str = ""


@_frozen
class KillWorker(Command):
    worker_id: str
    reason: str = ""


@_frozen
class InterruptTask(Command):
    """Ask a worker to interrupt a running task (non-force cancel)."""

    worker_id: str
    task_id: TaskId


@_frozen
class CheckpointActor(Command):
    """Ask an actor's worker to save its state (after ``index`` calls).

    Completes with ``ActorCheckpointed`` (or ``WorkerCrashed``).
    """

    worker_id: str
    actor_id: ActorId
    index: int


@_frozen
class ActorCheckpointed(Event):
    """The actor's state after ``index`` calls, serialized (kept in the GCS,
    so it survives the node)."""

    worker_id: str
    actor_id: ActorId
    index: int
    payload: Payload


# ===========================================================================
# Objects: a node's store and transfers between nodes


@_frozen
class Fetch(Command):
    """Copy ``object_id`` from ``from_node``'s store into ours.

    Completes with ``FetchCompleted`` or ``FetchFailed``.
    """

    object_id: ObjectId
    from_node: str
    size: int


@_frozen
class FetchCompleted(Event):
    object_id: ObjectId
    size: int


@_frozen
class FetchFailed(Event):
    object_id: ObjectId
    from_node: str
    reason: str = ""


@_frozen
class Evict(Command):
    """Free the bytes of ``object_id`` in this node's store."""

    object_id: ObjectId


@_frozen
class StoreError(Command):
    """Materialise ``error`` as the value of these objects in our store."""

    object_ids: tuple[ObjectId, ...]
    error: ErrorInfo


# ===========================================================================
# Scheduling: nodes <-> head (global scheduler, monitor)


@_frozen
class NodeJoin(Message):
    node_id: str
    resources: ResourceSet
    address: str = ""


@_frozen
class NodeWelcome(Message):
    """Head to a joining node: the GCS chains to talk to."""

    configs: tuple[ChainConfig, ...]


@_frozen
class Heartbeat(Message):
    node_id: str
    load: NodeLoad
    # the node's own count of heartbeats sent (1, 2, ...; 0: not counted):
    # a gap means heartbeats were lost on the way (see core/head.py)
    seq: int = 0


@_frozen
class ForwardTask(Message):
    """Local scheduler to global scheduler: place this task for me.

    ``reason`` is one of 'overloaded', 'infeasible', 'remote_inputs',
    'resubmit', 'spread', 'affinity'.
    """

    spec: TaskSpec
    from_node: str
    reason: str
    attempt: int = 0


@_frozen
class PlaceTask(Message):
    """Global scheduler to a node: run this task here."""

    spec: TaskSpec
    attempt: int = 0
    reconstruction: bool = False


@_frozen
class ReconstructObject(Message):
    """A node found ``object_id`` lost; ask the head to rebuild it."""

    object_id: ObjectId
    node_id: str


@_frozen
class ObjectUnrecoverable(Message):
    """Head to node: ``object_id`` cannot be rebuilt; use ``error``."""

    object_id: ObjectId
    error: ErrorInfo


@_frozen
class NodeDied(Event):
    """Delivered to the head's monitor by a driver that *knows* (the
    simulator's omniscient view, or an orderly ``penumbra stop``); the
    monitor otherwise infers death from missed heartbeats."""

    node_id: str


@_frozen
class JobFinished(Message):
    """A driver exited or disconnected (node to head): its job ends.  The
    head decides what that means (Ray's rule): its queued and running tasks
    are cancelled everywhere, its non-detached actors die, its objects are
    released and, once every node has cleared it, its GCS rows are
    forgotten (see ``head.HeadMachine._on_job_finished``)."""

    job_id: int


@_frozen
class Fenced(Message):
    """Head to a node it has declared dead: stop.  A node that was merely
    cut off (a partition longer than the heartbeat timeout) must not come
    back as a zombie: its tasks were re-run and its objects written off."""

    node_id: str
    reason: str = ""


@_frozen
class StopNode(Command):
    """The node must stop for good (its driver exits the process, or the
    simulator crashes the host); it has been declared dead."""

    reason: str


@_frozen
class ClusterStatusRequest(Message):
    client: str
    req_id: int


@_frozen
class ClusterStatus(Message):
    req_id: int
    # (node id, alive, total resources, latest heartbeat load or None)
    nodes: tuple[tuple[str, bool, ResourceSet, NodeLoad | None], ...]


# ===========================================================================
# Actors


@_frozen
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


@_frozen
class ActorCallDone(Message):
    """Host node to caller's node: these calls are resolved (ran or failed)
    by the actor's ``incarnation``."""

    actor_id: ActorId
    caller_id: str
    sequence_nos: tuple[int, ...]
    incarnation: int = -1


@_frozen
class ActorFloor(Message):
    """Caller's node to the actor's host: this caller's calls below ``floor``
    are all resolved.  Sent when an older incarnation resolved a call the
    live one was told to wait for (otherwise every call carries its floor)."""

    actor_id: ActorId
    caller_id: str
    floor: int
    incarnation: int


@_frozen
class ActorCallStale(Message):
    """Host to caller's node: the call's incarnation is not the live one."""

    spec: TaskSpec
    incarnation: int


@_frozen
class StartActor(Message):
    """Head to a node: (re)create this actor here (placement was decided),
    restoring ``checkpoint`` and replaying ``replay`` (paper-style)."""

    entry: ActorEntry
    replay: tuple[TaskSpec, ...] = ()
    checkpoint: Payload | None = None
    # per caller, the next sequence number after the calls the checkpoint
    # holds: those ran already and must not run again
    seqs: tuple[tuple[str, int], ...] = ()


@_frozen
class ActorReported(Message):
    """Node to head: the actor's worker died or its constructor failed."""

    actor_id: ActorId
    incarnation: int
    node_id: str
    error: ErrorInfo
    creation_failed: bool = False
    entry: ActorEntry | None = None  # the row as the node knows it


@_frozen
class KillActorRequest(Message):
    """Node to head: a client asked to kill an actor (or, with a
    ``reason``, the actor's host ends it: ``__ray_terminate__``)."""

    actor_id: ActorId
    no_restart: bool = True
    reason: str = ""


@_frozen
class StopActor(Message):
    """Head to host node: kill the actor's worker now (``graceful``: after
    the actor's ``__ray_shutdown__`` ran, if it has one)."""

    actor_id: ActorId
    incarnation: int
    reason: str = ""
    graceful: bool = False


@_frozen
class JobEnded(Message):
    """Head to every node: job ``job_id`` is over.  The node drops the job's
    queued tasks, kills the workers running its tasks (nested ones too: they
    carry the job id), returns their resources, refuses the job's tasks from
    now on, and answers ``JobCleared``."""

    job_id: int


@_frozen
class JobCleared(Message):
    """Node to head: this node holds no queued or running task of
    ``job_id`` any more (the head forgets the job's GCS rows once every
    live node has said so)."""

    job_id: int
    node_id: str


@_frozen
class DropObjects(Message):
    """Head to a node: these objects belong to a job that ended and their
    GCS rows are gone; delete the copies held here."""

    object_ids: tuple[ObjectId, ...]


# ====================================================================# Placement groups (see core/placement.py): the head reserves bundles on
# nodes in two phases, prepare then commit, so a group is all or nothing.


@_frozen
class PrepareBundles(Message):
    """Head to a node: set these bundles' resources apart from the free
    pool (not usable by anyone yet).  Answered by ``BundlesPrepared`` or
    ``BundlesPrepareFailed``; a repeat is answered again."""

    pg_id: str
    bundles: tuple[tuple[int, ResourceSet], ...]  # (bundle index, resources)


@_frozen
class BundlesPrepared(Message):
    pg_id: str
    node_id: str
    indexes: tuple[int, ...]


@_frozen
class BundlesPrepareFailed(Message):
    """The node's free resources no longer fit the bundles (the head's view
    was stale): nothing was set apart."""

    pg_id: str
    node_id: str
    indexes: tuple[int, ...]
    reason: str = ""


@_frozen
class CommitBundles(Message):
    """Head to a node: every bundle of the group is prepared; make these
    usable (their resources appear under the group's names)."""

    pg_id: str
    indexes: tuple[int, ...]


@_frozen
class BundlesCommitted(Message):
    pg_id: str
    node_id: str
    indexes: tuple[int, ...]
    # what the node's total gained (the group's resource names)
    granted: ResourceSet = ResourceSet()


@_frozen
class ReleaseBundles(Message):
    """Head to a node: give these bundles back (an aborted attempt:
    ``indexes``), or every bundle of the group (removed: ``indexes=None``:
    tasks running in it are killed, queued ones fail)."""

    pg_id: str
    indexes: tuple[int, ...] | None = None


@_frozen
class BundlesReleased(Message):
    pg_id: str
    node_id: str



@_frozen
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


@_frozen
class OwnerDied(Message):
    """A node to the head: the worker ``owner`` died, and it had created
    these non-detached actors (Ray's fate sharing: an actor dies with the
    worker that created it, its owner)."""

    owner: str
    actor_ids: tuple[ActorId, ...]
    reason: str = ""


# ===========================================================================
# Head recovery: a new head rebuilds its state from surviving GCS replicas
# (see "Recovery: a new head from surviving replicas" in core/head.py)


@_frozen
class ChainQuery(Message):
    """A recovering head to a GCS replica: what do you know of your shard?
    The replica answers ``master`` with a ``ChainReport`` (any replica,
    head-less or not, answers; nothing changes in it)."""

    master: str


@_frozen
class ChainReport(Message):
    """A replica's answer to ``ChainQuery``: its current view of its shard.

    The recovering head adopts, per shard, the config of the highest epoch
    reported.  ``client_req`` is the highest request id this replica has
    seen from the asking master's own GCS client (its dedup entries and
    floor): the new head numbers its requests above every one of its
    predecessor's, or a replica would take a new write for a repeat of an
    old one and answer it with the old result."""

    replica: str
    shard: int
    config: ChainConfig | None  # None: it never had one (a replica still joining)
    seq: int  # the last sequence number it applied
    caught_up: bool  # holds every committed write (as in ReplicaHeartbeat)
    joining: bool  # still copying a snapshot, or waiting to be appended
    client_req: int = 0


@_frozen
class TasksHeldQuery(Message):
    """A recovering head to a live node, in two rounds.

    ``task_ids`` None (the first): answer once every GCS write you made
    before this query has landed (your task rows written while there was
    no head waited for the new one: until then a scan of the table misses
    them).  Then, with ``task_ids`` (the tasks pending on you in the table):
    which did you hand to the head (``ForwardTask``), and which have you
    never heard of?  A forwarded one the old head held in its queues when it
    died; one the old head placed on you that you never heard of was placed
    by a ``PlaceTask`` lost with it.  The new head places both."""

    task_ids: tuple[TaskId, ...] | None = None


@_frozen
class TasksHeldReport(Message):
    """A node's answer to ``TasksHeldQuery``: the ones it forwarded (it no
    longer holds them: they are the head's to place) and the ones it never
    heard of."""

    node_id: str
    forwarded: tuple[TaskId, ...]
    unknown: tuple[TaskId, ...] = ()
    settled: bool = False  # the answer to the first round (no task ids asked)
    # the jobs this node saw end (JobEnded): one that ended under the old
    # head but was not forgotten yet is ended again
    ended_jobs: tuple[int, ...] = ()

# Spilling: a node's store <-> its local disk (see core/objects.py)


@_frozen
class SpillObjects(Command):
    """Write these objects (in this node's store now) to the node's spill
    directory, in the background.  The in-memory copies stay until the
    core says ``Evict``.  Completes with ``ObjectsSpilled`` (all written)
    or ``SpillFailed`` (none kept: the directory is full or unwritable)."""

    object_ids: tuple[ObjectId, ...]
    sizes: tuple[int, ...]


@_frozen
class ObjectsSpilled(Event):
    object_ids: tuple[ObjectId, ...]


@_frozen
class SpillFailed(Event):
    object_ids: tuple[ObjectId, ...]
    reason: str = ""


@_frozen
class RestoreObject(Command):
    """Read ``object_id`` back from the spill directory into the store (the
    file stays until ``DeleteSpilled``).  Completes with ``ObjectRestored``
    or ``RestoreFailed``."""

    object_id: ObjectId
    size: int


@_frozen
class ObjectRestored(Event):
    object_id: ObjectId
    size: int


@_frozen
class RestoreFailed(Event):
    object_id: ObjectId
    reason: str = ""


@_frozen
class DeleteSpilled(Command):
    """Delete the spill files of these objects (released, or restored)."""

    object_ids: tuple[ObjectId, ...]

# GCS flushing (see "Flushing" in core/gcs.py): the replica decides, the
# driver writes and reads the disk


@_frozen
class FlushRows(Command):
    """A GCS replica moved these rows out of memory: write them to disk as
    segment ``segment`` of shard ``shard`` (rows: ``(table, key, row)``).
    Every replica of a chain flushes the same rows under the same segment
    number at the same point of the log, so the segment's content depends
    only on (shard, segment): a driver may keep one copy per shard.  No
    completion event: a replica never reads a segment before it asks with
    ``LoadRows``, and the driver answers that only after the write."""

    shard: int
    segment: int
    rows: tuple


@_frozen
class LoadRows(Command):
    """Read flushed rows back: ``wants`` is ``((table, key, segment), ...)``.
    Completes with ``RowsLoaded(token)`` holding the rows found (a row the
    disk lacks is simply absent)."""

    shard: int
    token: Hashable
    wants: tuple


@_frozen
class RowsLoaded(Event):
    """The answer to ``LoadRows(token)``: ``rows`` is ``((table, key, row), ...)``."""

    token: Hashable
    rows: tuple


@_frozen
class FlushedRowsRequest(Message):
    """A GCS replica joining after a flush asks a chain member for the
    flushed rows of one segment that its snapshot's index names: the index
    came with the snapshot, the rows did not, and its own disk lacks them.
    ``wants`` is ``((table, key, segment), ...)``, all of ``segment``."""

    replica: str
    shard: int
    segment: int
    wants: tuple


@_frozen
class FlushedRowsCopy(Message):
    """The answer to ``FlushedRowsRequest``: the rows of ``segment`` the
    sender's disk holds, ``((table, key, row), ...)`` (one segment per
    message: at most ``FlushConfig.batch`` rows)."""

    shard: int
    segment: int
    rows: tuple


# Messages cross processes by the hundred thousand per second: pickle them
# as (class, field values) instead of the slower dataclass default.
from ._pickling import fast_reduce as _fast_reduce  # noqa: E402
from ._fastinit import install_init as _install_init  # noqa: E402
from ._pickling import install as _install_pickling  # noqa: E402

Event.__reduce__ = _fast_reduce  # type: ignore[method-assign]
Command.__reduce__ = _fast_reduce  # type: ignore[method-assign]


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


_PROTOCOL = {c for base in (Event, Command) for c in _all_subclasses(base)}
_install_pickling(*_PROTOCOL)
_install_init(*_PROTOCOL)
