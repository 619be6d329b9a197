"""Transport-level messages: what processes say beyond the core's messages.

The core's messages (``penumbra.core.messages``) travel between processes
inside ``Deliver`` envelopes.  The rest is the plumbing the core does not
see: object bytes riding along with core messages (``Attachments``), a
worker's conversation with its daemon (``Run``/``Ran``/``Raised``),
transfers between node daemons (``FetchRequest``/``FetchReply``), worker
output on its way to the driver, and membership of the daemons.

An *attachment* is how an object's value travels:

==================  ===================================================
``("i", bytes)``     inline: the serialized value itself (small objects)
``("s", size)``      in the node's shared-memory store under its id
``("e", ErrorInfo)`` an error in place of a value
==================  ===================================================

All are frozen ``msgspec.Struct``s (like the core's messages; unlike them,
positional arguments are allowed), encoded as msgpack by the wire layer
after the handshake (never before: see ``wire`` and ``wire_codec``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..core.ids import ActorId, ObjectId, TaskId
from ..core.messages import Message
from ..core.records import ErrorInfo
from ..core.specs import Payload, TaskSpec



class _Wire(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The base of the transport's own messages: frozen, compared by value;
    on the wire a tagged array, as the core's (see ``wire_codec``)."""


Attachment = tuple  # ("i", bytes) | ("s", int) | ("e", ErrorInfo)


class Deliver(_Wire):
    """Carry core message ``msg`` to address ``to`` (with object values)."""

    to: str
    msg: Message
    attachments: dict[ObjectId, Attachment] | None = None
    src: str = ""


# -- a client (driver or worker) and its daemon ---------------------------------


class ClientHello(_Wire):
    """First message of a driver or a worker-as-client after the handshake."""

    client_id: str
    pid: int
    is_driver: bool
    job_id: int = 0
    worker_id: str = ""


class ClientWelcome(_Wire):
    node_id: str
    session: str
    shm_root: str
    job_id: int
    client_id: str
    address: str = ""


class Output(_Wire):
    """Lines a worker printed, on their way to the job's driver."""

    job_id: int
    prefix: str
    text: str
    stream: str = "stdout"


class ClusterLog(_Wire):
    """A warning from the cluster for the driver (an infeasible task ...)."""

    level: str
    text: str


# -- a worker and its daemon -----------------------------------------------------


class Run(_Wire):
    """Daemon to worker: execute ``spec`` with these dependency values."""

    spec: TaskSpec
    attempt: int
    args: tuple[Attachment, ...]  # one per dependency, in order
    checkpoint: Payload | None = None
    gpu_ids: tuple[int, ...] = ()  # GPU instances on the node the task or actor holds
    # an actor's creation: which incarnation of it this worker runs (its
    # direct calls name it, see transports/actor_server.py)
    incarnation: int = 0


class Ran(_Wire):
    """Worker to daemon: the task returned.

    ``outputs``: per return value, (object id, size, inline bytes or None
    when written to the shared-memory store).
    """

    task_id: TaskId
    outputs: tuple[tuple[ObjectId, int, bytes | None], ...]
    duration: float
    # when it ended, on the host's monotonic clock (``time.perf_counter``):
    # the daemon turns it into the run's span on its node's clock
    ended: float = 0.0


class Raised(_Wire):
    task_id: TaskId
    error: ErrorInfo
    retryable: bool
    duration: float
    ended: float = 0.0  # as ``Ran.ended``


class Interrupt(_Wire):
    task_id: TaskId


class Checkpoint(_Wire):
    actor_id: ActorId
    index: int


class Checkpointed(_Wire):
    actor_id: ActorId
    index: int
    state: bytes


class Exit(_Wire):
    """Daemon to worker: finish and exit (orderly shutdown)."""


# -- daemons ---------------------------------------------------------------------


class NodeHello(_Wire):
    """A node daemon introduces itself to the head daemon."""

    node_id: str
    address: str  # host:port where it serves transfers and peers
    replicas: tuple[str, ...] = ()  # GCS replicas it hosts (to the head: route them here)
    cluster: str = ""  # the id of the cluster those replicas belong to (see ``HeadInfo.cluster``)


class PeerTable(_Wire):
    """Head daemon to node daemons: where every node daemon listens.

    Answering ``AddressesRequest`` (``penumbra status``), the head daemon
    also says where each GCS replica lives (``replicas``: replica address ->
    host:port of the daemon hosting it), the shards' chains (``chains``:
    ``ChainConfig`` per shard, head of the chain first) and how each node's
    link to the head is doing (``links``: node id -> a few words)."""

    peers: dict[str, str]
    head_node: str = ""
    replicas: dict[str, str] | None = None
    chains: tuple = ()
    links: dict[str, str] | None = None
    # the cluster's id, and the connected node daemons holding GCS replicas
    # of another (earlier) cluster: node id -> that cluster's id
    cluster: str = ""
    earlier: dict[str, str] | None = None


class HeadInfo(_Wire):
    """Head daemon to a node daemon that just connected: what a node needs
    to know of the cluster's shape to host GCS replicas."""

    gcs_shards: int
    host_replicas: bool = False  # the head asks this node to host replicas (--gcs-replicas-on-nodes)
    # The cluster's id: a fresh head makes one, a recovering head takes the
    # one of the replicas it recovers.  A node whose replicas belong to
    # another cluster keeps them out of this one (daemon.py, "A head of
    # another cluster").  "" with ``recovering``: a head still waiting for
    # the replicas it recovers from (it takes their id then, and says it
    # again in another ``HeadInfo``).
    cluster: str = ""
    recovering: bool = False


class ReplicasHosted(_Wire):
    """Node daemon to head daemon: these GCS replica addresses live in my
    process; route their messages over this connection.  Sent on every
    (re)connection, before any message of those replicas."""

    node_id: str
    replicas: tuple[str, ...]
    cluster: str = ""  # the cluster they belong to (the head's, from its ``HeadInfo``)


class Closing(_Wire):
    """Daemon to its drivers, just before it closes their connections: why
    (the connection error they see then names it)."""

    reason: str


class FetchRequest(_Wire):
    object_id: ObjectId
    req_id: int


class FetchReply(_Wire):
    object_id: ObjectId
    req_id: int
    data: Any  # bytes, or None when the object is not there
    error: str = ""


class StopCluster(_Wire):
    """A command-line client asks the head daemon to stop the cluster (which
    passes it on to every node daemon)."""


class AddressesRequest(_Wire):
    """A command-line client asks a daemon where every node daemon it knows
    of listens; the answer is a ``PeerTable`` (the daemon's own node
    included)."""


class TimelineRequest(_Wire):
    """A command-line client or a driver asks a daemon for what ran on its
    node's workers (``penumbra.timeline()``); the answer is a
    ``TimelineReply``."""


class TimelineReply(_Wire):
    """A node's ``TaskRun``s (``core.timeline``), oldest first.  Their times
    are on the node's clock, which read ``clock`` when ``time.time()``
    read ``wall``: a run's wall-clock start is ``start - clock + wall``.
    ``recorded`` counts every run ever kept, ``limit`` how many are kept."""

    node_id: str
    runs: tuple
    clock: float
    wall: float
    recorded: int = 0
    limit: int = 0


from ..core._pickling import install as _install_pickling  # noqa: E402

_MESSAGES = (Deliver, ClientHello, ClientWelcome, Output, ClusterLog, Run, Ran, Raised, Interrupt,
             Checkpoint, Checkpointed, Exit, NodeHello, PeerTable, FetchRequest, FetchReply, StopCluster,
             AddressesRequest, TimelineRequest, TimelineReply, HeadInfo, ReplicasHosted, Closing)
_install_pickling(*_MESSAGES)
