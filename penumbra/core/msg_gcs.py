"""Messages of the GCS chains: clients and replicas, replicas among themselves.

Chain replication (``GcsWrite`` to the head, ``GcsForward`` down the chain,
``GcsAck`` back up, ``GcsReply`` from the tail, ``GcsNotify`` to
subscribers), reconfiguration by the chain master (``ChainConfigMsg``,
heartbeats, joining with a state transfer), and flushing old rows to disk
(the replica decides, the driver writes and reads: ``FlushRows``,
``LoadRows`` -> ``RowsLoaded``, and the joiner's copies of flushed
segments).  The protocol itself is explained in ``gcs.py``; the messages
module (``messages.py``) re-exports every name.
"""

from __future__ import annotations

from typing import Any, Hashable

from .msg_base import Command, Event, Message, install_protocol
from .records import ChainConfig
from .tables_ops import Op, Query

__all__ = [
    "GcsWrite",
    "GcsRead",
    "GcsReply",
    "GcsForward",
    "GcsAck",
    "GcsNotify",
    "ChainConfigMsg",
    "StateTransferRequest",
    "StateSnapshot",
    "ReplicaHeartbeat",
    "ReplicaJoin",
    "ReplicaReady",
    "FlushRows",
    "LoadRows",
    "RowsLoaded",
    "FlushedRowsRequest",
    "FlushedRowsCopy",
]


# ===========================================================================
# GCS: chain replication (replica <-> replica, client <-> replica)


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


class GcsRead(Message):
    """A client asks the chain tail to answer ``query``."""

    client: str
    req_id: int
    query: Query
    shard: int = 0


class GcsReply(Message):
    """The tail's answer to a write (after it is committed) or a read."""

    req_id: int
    result: Any
    shard: int = 0


class GcsForward(Message):
    """Replica to successor: apply the write with sequence number ``seq``."""

    shard: int
    epoch: int
    seq: int
    client: str
    req_id: int
    op: Op
    low_water: int = 0


class GcsAck(Message):
    """Successor to predecessor: everything up to ``seq`` is committed."""

    shard: int
    epoch: int
    seq: int


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


class ChainConfigMsg(Message):
    """The chain master's current configuration of one shard."""

    config: ChainConfig


class StateTransferRequest(Message):
    """A joining replica asks the current tail for a snapshot."""

    replica: str
    shard: int


class StateSnapshot(Message):
    """The tail's state for a joining replica, as of ``seq``."""

    shard: int
    epoch: int
    seq: int
    snapshot: Any
    dedup: Any


class ReplicaHeartbeat(Message):
    replica: str
    shard: int
    seq: int = 0
    epoch: int = 0  # the epoch of the chain config the replica has (0: none)
    caught_up: bool = True  # holds every committed write (a new member: once synced)


class ReplicaJoin(Message):
    """A (re)started replica asks the chain master to be added to a chain."""

    replica: str
    shard: int


class ReplicaReady(Message):
    """A joining replica has its snapshot and can become the tail."""

    replica: str
    shard: int
    seq: int


# ===========================================================================
# GCS flushing (see core/gcs_flush.py): the replica decides, the driver
# writes and reads the disk


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


class LoadRows(Command):
    """Read flushed rows back: ``wants`` is ``((table, key, segment), ...)``.
    Completes with ``RowsLoaded(token)`` holding the rows found (a row the
    disk lacks is simply absent)."""

    shard: int
    token: Hashable
    wants: tuple


class RowsLoaded(Event):
    """The answer to ``LoadRows(token)``: ``rows`` is ``((table, key, row), ...)``."""

    token: Hashable
    rows: tuple


class FlushedRowsRequest(Message):
    """A GCS replica joining after a flush asks a chain member for the
    flushed rows of one segment that its snapshot's index names: the index
    came with the snapshot, the rows did not, and its own disk lacks them.
    ``wants`` is ``((table, key, segment), ...)``, all of ``segment``."""

    replica: str
    shard: int
    segment: int
    wants: tuple


class FlushedRowsCopy(Message):
    """The answer to ``FlushedRowsRequest``: the rows of ``segment`` the
    sender's disk holds, ``((table, key, row), ...)`` (one segment per
    message: at most ``FlushConfig.batch`` rows)."""

    shard: int
    segment: int
    rows: tuple


install_protocol(__name__)
