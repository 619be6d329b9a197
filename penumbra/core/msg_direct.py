"""Messages of direct actor calls: caller <-> actor worker, worker -> node, client <-> node.

Theory of operation
-------------------
A direct call goes from the caller's process (a driver or a worker, driving
an ``ActorCaller``, core/actor_caller.py) straight to the actor's worker
process (driving an ``ActorInbox``, core/actor_inbox.py), and the result
comes back the same way; nodes are off the critical path:

* caller -> worker: ``DirectCall`` (run this call; ``floor`` says where the
  caller's order resumes), ``DirectCancel`` (``penumbra.cancel``) and
  ``DirectFloor`` (calls below ``floor`` are resolved: do not wait for them);
* worker -> caller: ``DirectReply`` (the call ran, or failed, or reached the
  wrong incarnation: ``stale``);
* worker -> its node: ``ActorEndpoint`` once the actor is constructed (the
  node publishes it in the GCS, ``endpoint_key``), and ``DirectCallsRan``
  in batches (the node records the outputs, the task rows, the stories and
  the timeline, as for a call it dispatched itself);
* client <-> its node: ``WatchActor`` (follow this actor's row and
  endpoint) answered by ``ActorWatched`` now and at every change;
  ``DirectCallFailed`` (a call the client failed itself: store its error)
  and ``CallsSkipped`` (the client hands its calls to the routed path: the
  router must not wait for the ones it resolved already).

Outputs travel as ``DirectOutput``: small values inline (the encoded
bytes), large ones as "in the store of node N" (written to that node's
shared-memory store, and reported to it, before the reply is sent, so a
ref to it that leaves the caller is found through the node and the GCS).

The simulator carries these too (penumbra/sim/direct.py), and its trace
hashes them like any message (a report's ``entries``, like ``outputs``, are
left out of a trace line).  The routed path's records and messages did not
change.  The messages module does not re-export these names: import them
from here.
"""

from __future__ import annotations

from .ids import ActorId, ObjectId, TaskId
from .msg_base import Message, install_protocol
from .records import ActorEntry, ErrorInfo
from .specs import Record, TaskSpec

__all__ = [
    "DirectOutput",
    "EndpointRow",
    "endpoint_key",
    "DirectCall",
    "DirectReply",
    "DirectCancel",
    "DirectFloor",
    "DirectRan",
    "DirectCallsRan",
    "DirectCallsRecorded",
    "ActorEndpoint",
    "WatchActor",
    "ActorWatched",
    "CallsSkipped",
    "DirectCallFailed",
]


# ===========================================================================
# Values carried by the messages


class DirectOutput(Record):
    """One return value of a direct call.

    ``data`` set: the value's encoded bytes travel with the message (small
    values).  ``data`` None: the value is in the shared-memory store of node
    ``node`` (``size`` bytes there), and that node was told (``DirectCallsRan``)
    before any reply naming it was sent."""

    object_id: ObjectId
    size: int
    data: bytes | None = None
    node: str = ""

    def __post_init__(self) -> None:
        if self.data is None and not self.node:
            raise ValueError(f"DirectOutput {self.object_id!r}: neither inline data nor a node holding it; "
                             f"give data=<bytes> or node=<node id>")


class EndpointRow(Record):
    """Where incarnation ``incarnation`` of an actor takes direct calls: the
    value of the GCS key-value row ``endpoint_key(actor_id)``.  ``endpoint``
    is opaque to the core (the transport's address: a Unix socket path, a
    TCP host:port); ``node`` is the node hosting that incarnation."""

    actor_id: ActorId
    incarnation: int
    endpoint: str
    node: str = ""


def endpoint_key(actor_id: ActorId) -> str:
    """The GCS key-value key holding an actor's ``EndpointRow`` (written
    with ``PutEndpoint``, which never lets an older incarnation's row
    replace a newer one's)."""
    return f"endpoint:{actor_id.hex()}"


class DirectRan(Record):
    """One call an actor worker ran (or failed), as its node records it.

    ``outputs`` as in the reply (inline data or in this node's store) when
    the call returned; ``error`` when it raised or was cancelled (then
    ``outputs`` is empty).  ``span``: (start, end) on the worker's clock,
    for the timeline; None: (now - duration, now) at the node."""

    spec: TaskSpec
    attempt: int = 0
    outputs: tuple[DirectOutput, ...] = ()
    error: ErrorInfo | None = None
    duration: float = 0.0
    span: tuple[float, float] | None = None


# ===========================================================================
# Caller <-> actor worker


class DirectCall(Message):
    """Caller to the actor's worker: run this method call.

    ``incarnation`` is the incarnation the caller believes it is talking
    to; ``floor`` is the caller's lowest unresolved sequence number for this
    actor (so the worker knows where the caller's order resumes: calls below
    it will never come); ``attempt`` counts resends to a new incarnation
    (``max_task_retries``).  The caller's address for the reply is the
    connection the call came on; ``spec.caller_id`` names the caller."""

    spec: TaskSpec
    incarnation: int
    floor: int = 0
    attempt: int = 0


class DirectReply(Message):
    """Worker to caller: call ``caller_id``#``sequence_no`` is resolved by
    incarnation ``incarnation``: it returned ``outputs`` (one per return id,
    in order) or failed with ``error``.  ``stale``: not run, this worker is
    incarnation ``incarnation``, not the one the call was sent to."""

    actor_id: ActorId
    caller_id: str
    sequence_no: int
    incarnation: int
    task_id: TaskId | None = None
    outputs: tuple[DirectOutput, ...] = ()
    error: ErrorInfo | None = None
    stale: bool = False


class DirectCancel(Message):
    """Caller to worker: ``penumbra.cancel`` of a call sent there.  Queued,
    it fails with TASK_CANCELLED and never runs; running, the worker
    interrupts it (``force``: the worker process is killed, Ray's
    force=True) and its result becomes TASK_CANCELLED whatever it returns."""

    actor_id: ActorId
    caller_id: str
    sequence_no: int
    task_id: TaskId
    incarnation: int
    force: bool = False


class DirectFloor(Message):
    """Caller to worker: this caller's calls below ``floor`` are resolved
    (an older incarnation answered one, or the caller failed it itself):
    calls queued behind them may run.  (Every ``DirectCall`` carries the
    floor too; this is for when no call follows.)"""

    actor_id: ActorId
    caller_id: str
    floor: int
    incarnation: int


# ===========================================================================
# Actor worker -> its node


class ActorEndpoint(Message):
    """The actor's worker to its node, once the actor is constructed: take
    direct calls for incarnation ``incarnation`` at ``endpoint``.  The node
    publishes it (``EndpointRow`` under ``endpoint_key``) and tells its
    watching clients."""

    worker_id: str
    actor_id: ActorId
    incarnation: int
    endpoint: str


class DirectCallsRan(Message):
    """The actor's worker to its node, in batches, off the critical path:
    these calls ran (or failed).  The node records their outputs in its
    store and the GCS, the task rows, stories and timeline, as if it had
    dispatched them (results of an incarnation the node no longer hosts are
    dropped, as the routed path drops a superseded instance's)."""

    worker_id: str
    actor_id: ActorId
    incarnation: int
    entries: tuple[DirectRan, ...]


class DirectCallsRecorded(Message):
    """A caller to its node: record these direct calls' results here, as a
    routed call's are (outputs in the store and the GCS, or the error),
    for whoever else gets their refs: results answered by an actor
    incarnation that died since, which may have died before its batched
    report reached its node.  (A call that failed at the caller, without
    a reply, goes as ``DirectCallFailed``.)  ``entries`` as in
    ``DirectCallsRan`` (inline outputs carry their data)."""

    client: str
    entries: tuple[DirectRan, ...]


# ===========================================================================
# Client <-> its node


class WatchActor(Message):
    """A client to its node: send me (``ActorWatched``) this actor's row and
    endpoint now and at every change, until the actor is DEAD or I
    disconnect.  Sent again, the node re-reads both and answers again
    (after a lost connection to the worker, say)."""

    client: str
    actor_id: ActorId


class ActorWatched(Message):
    """Node to client: the actor's row and endpoint as the node knows them
    now (either may be None: not known yet, or gone)."""

    actor_id: ActorId
    entry: ActorEntry | None = None
    endpoint: EndpointRow | None = None


class CallsSkipped(Message):
    """A client to its node, before it hands calls to the routed path that
    it sent directly until now (a ``replay=True`` actor, or a worker it
    cannot reach): its calls to ``actor_id`` strictly between ``after`` and
    ``before`` (``after`` -1: from the first) are resolved already (they
    were answered directly, or failed at the client), so the node's router
    must not wait for them."""

    client: str
    actor_id: ActorId
    caller_id: str
    after: int
    before: int


class DirectCallFailed(Message):
    """A client to its node: call ``spec`` failed at the client, without a
    reply from the actor's worker (its actor died or was killed, it was
    cancelled before it was sent, its worker could not be reached): store
    ``error`` as its outputs, as the router does for a call it fails, so a
    process handed one of its refs finds the error (no worker reports such
    a call)."""

    client: str
    spec: TaskSpec
    error: ErrorInfo
    attempt: int = 0


from ._pickling import install as _install_pickling  # noqa: E402

_install_pickling(DirectOutput, EndpointRow, DirectRan)
install_protocol(__name__)
