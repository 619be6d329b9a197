"""Messages between the nodes and the head: scheduling, jobs, placement groups, recovery.

A node joins and heartbeats; it forwards the tasks it cannot run to the
head's global scheduler, which places them (``ForwardTask`` ->
``PlaceTask``); lineage reconstruction, node deaths, fencing and status;
the end of a job (``JobEnded`` -> ``JobCleared``, ``DropObjects``);
placement groups reserved in two phases; and a new head rebuilding its
state from the surviving replicas and nodes (``ChainQuery``,
``TasksHeldQuery``).  The messages module (``messages.py``) re-exports every
name.
"""

from __future__ import annotations

from .ids import ObjectId, TaskId
from .msg_base import Command, Event, Message, install_protocol
from .records import ChainConfig, ErrorInfo, NodeLoad
from .specs import ResourceSet, TaskSpec

__all__ = [
    "NodeJoin",
    "NodeWelcome",
    "Heartbeat",
    "ForwardTask",
    "PlaceTask",
    "ReconstructObject",
    "ObjectUnrecoverable",
    "NodeDied",
    "JobFinished",
    "Fenced",
    "StopNode",
    "ClusterStatusRequest",
    "ClusterStatus",
    "JobEnded",
    "JobCleared",
    "DropObjects",
    "PrepareBundles",
    "BundlesPrepared",
    "BundlesPrepareFailed",
    "CommitBundles",
    "BundlesCommitted",
    "ReleaseBundles",
    "BundlesReleased",
    "ChainQuery",
    "ChainReport",
    "TasksHeldQuery",
    "TasksHeldReport",
]


# ===========================================================================
# Scheduling: nodes <-> head (global scheduler, monitor)


class NodeJoin(Message):
    node_id: str
    resources: ResourceSet
    address: str = ""


class NodeWelcome(Message):
    """Head to a joining node: the GCS chains to talk to."""

    configs: tuple[ChainConfig, ...]


class Heartbeat(Message):
    node_id: str
    load: NodeLoad
    # the node's own count of heartbeats sent (1, 2, ...; 0: not counted):
    # a gap means heartbeats were lost on the way (see core/head.py)
    seq: int = 0


class ForwardTask(Message):
    """Local scheduler to global scheduler: place this task for me.

    ``reason`` is one of 'overloaded', 'infeasible', 'remote_inputs',
    'resubmit', 'spread', 'affinity'.
    """

    spec: TaskSpec
    from_node: str
    reason: str
    attempt: int = 0


class PlaceTask(Message):
    """Global scheduler to a node: run this task here."""

    spec: TaskSpec
    attempt: int = 0
    reconstruction: bool = False


class ReconstructObject(Message):
    """A node found ``object_id`` lost; ask the head to rebuild it."""

    object_id: ObjectId
    node_id: str


class ObjectUnrecoverable(Message):
    """Head to node: ``object_id`` cannot be rebuilt; use ``error``."""

    object_id: ObjectId
    error: ErrorInfo


class NodeDied(Event):
    """Delivered to the head's monitor by a driver that *knows* (the
    simulator's omniscient view, or an orderly ``penumbra stop``); the
    monitor otherwise infers death from missed heartbeats."""

    node_id: str


class JobFinished(Message):
    """A driver exited or disconnected (node to head): its job ends.  The
    head decides what that means (Ray's rule): its queued and running tasks
    are cancelled everywhere, its non-detached actors die, its objects are
    released and, once every node has cleared it, its GCS rows are
    forgotten (see ``head.HeadMachine._on_job_finished``)."""

    job_id: int


class Fenced(Message):
    """Head to a node it has declared dead: stop.  A node that was merely
    cut off (a partition longer than the heartbeat timeout) must not come
    back as a zombie: its tasks were re-run and its objects written off."""

    node_id: str
    reason: str = ""


class StopNode(Command):
    """The node must stop for good (its driver exits the process, or the
    simulator crashes the host); it has been declared dead."""

    reason: str


class ClusterStatusRequest(Message):
    client: str
    req_id: int


class ClusterStatus(Message):
    req_id: int
    # (node id, alive, total resources, latest heartbeat load or None)
    nodes: tuple[tuple[str, bool, ResourceSet, NodeLoad | None], ...]


# ===========================================================================
# Jobs: the head ends a job on every node


class JobEnded(Message):
    """Head to every node: job ``job_id`` is over.  The node drops the job's
    queued tasks, kills the workers running its tasks (nested ones too: they
    carry the job id), returns their resources, refuses the job's tasks from
    now on, and answers ``JobCleared``."""

    job_id: int


class JobCleared(Message):
    """Node to head: this node holds no queued or running task of
    ``job_id`` any more (the head forgets the job's GCS rows once every
    live node has said so)."""

    job_id: int
    node_id: str


class DropObjects(Message):
    """Head to a node: these objects belong to a job that ended and their
    GCS rows are gone; delete the copies held here."""

    object_ids: tuple[ObjectId, ...]


# ===========================================================================
# Placement groups (see core/placement.py): the head reserves bundles on
# nodes in two phases, prepare then commit, so a group is all or nothing.


class PrepareBundles(Message):
    """Head to a node: set these bundles' resources apart from the free
    pool (not usable by anyone yet).  Answered by ``BundlesPrepared`` or
    ``BundlesPrepareFailed``; a repeat is answered again."""

    pg_id: str
    bundles: tuple[tuple[int, ResourceSet], ...]  # (bundle index, resources)


class BundlesPrepared(Message):
    pg_id: str
    node_id: str
    indexes: tuple[int, ...]


class BundlesPrepareFailed(Message):
    """The node's free resources no longer fit the bundles (the head's view
    was stale): nothing was set apart."""

    pg_id: str
    node_id: str
    indexes: tuple[int, ...]
    reason: str = ""


class CommitBundles(Message):
    """Head to a node: every bundle of the group is prepared; make these
    usable (their resources appear under the group's names)."""

    pg_id: str
    indexes: tuple[int, ...]


class BundlesCommitted(Message):
    pg_id: str
    node_id: str
    indexes: tuple[int, ...]
    # what the node's total gained (the group's resource names)
    granted: ResourceSet = ResourceSet()


class ReleaseBundles(Message):
    """Head to a node: give these bundles back (an aborted attempt:
    ``indexes``), or every bundle of the group (removed: ``indexes=None``:
    tasks running in it are killed, queued ones fail)."""

    pg_id: str
    indexes: tuple[int, ...] | None = None


class BundlesReleased(Message):
    pg_id: str
    node_id: str


# ===========================================================================
# Head recovery: a new head rebuilds its state from surviving GCS replicas
# (see "Recovery: a new head from surviving replicas" in core/head.py)


class ChainQuery(Message):
    """A recovering head to a GCS replica: what do you know of your shard?
    The replica answers ``master`` with a ``ChainReport`` (any replica,
    head-less or not, answers; nothing changes in it)."""

    master: str


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


install_protocol(__name__)
