"""A GCS shard replica (chain replication, pub/sub) and the chain master.

Theory of operation
-------------------
Each GCS shard is a chain of replicas ``head -> ... -> tail`` (van Renesse &
Schneider's chain replication, as in the Ray paper).  The tables and the op
log are in ``tables.py``; this module only orders and replicates ops.

Writes
    A client sends ``GcsWrite`` to the head.  The head gives the op the next
    sequence number, applies it, and sends ``GcsForward`` to its successor;
    each replica applies in sequence order and forwards.  The tail applies,
    *commits*: it replies ``GcsReply`` to the client, sends ``GcsNotify`` to
    the subscribers of what changed, and sends ``GcsAck`` upstream.  A replica
    keeps every entry it forwarded in its *log* until the ack comes back, so
    it can re-send it after a failure.
Reads
    ``GcsRead`` goes to the tail, which has only committed writes: reads are
    linearizable.
Duplicates
    Clients retry.  Every replica remembers ``(client, req_id) -> (seq,
    result)`` for requests it applied (forgetting those below the client's
    ``low_water``), so a retried write is applied once and answered with the
    first result.
Failures
    The chain master (``ChainMaster``, run by the head) watches
    ``ReplicaHeartbeat``; a silent replica is cut out and a new
    ``ChainConfig`` with a higher epoch goes to every replica and client.
    When a replica gets a new predecessor it sends it ``GcsSync`` with its
    sequence number; the predecessor re-sends every logged entry above it,
    then ``GcsCaughtUp``.  A replica that becomes the tail commits every entry
    in its log (replies may repeat: clients drop duplicates).
Joining
    A (re)started replica sends ``ReplicaJoin`` to the master, which answers
    with the shard's config; the joiner asks the tail for a snapshot
    (``StateTransferRequest``/``StateSnapshot``).  From the snapshot on, the
    tail retains its log so nothing committed after the snapshot is missed.
    The joiner reports ``ReplicaReady`` and the master appends it as the new
    tail; it serves reads only once its predecessor says it has caught up.
    After a flush the snapshot carries the flushed-row *index* but not the
    rows, which are on the chain members' own disks; so before it reports
    ready the joiner copies them, one segment per message
    (``FlushedRowsRequest`` -> the member loads them with ``LoadRows`` ->
    ``FlushedRowsCopy``), and writes them to its own disk (``FlushRows``).
    Otherwise, once the old members die and the joiner is the tail, a read
    of a flushed row (lineage reconstruction) would find nothing.  A row a
    member no longer holds is one a later logged op takes out of the index
    (``RestoreRows``, ``ForgetJob``): the joiner applies it before it serves.

A new head
    The replicas need no head to keep their config and serve: writes go
    through each chain's head replica, reads to its tail, as before; only
    reconfiguration waits.  A recovering head asks replicas for their view
    (``ChainQuery``, answered with ``ChainReport``) and starts its master
    with ``ChainMaster.from_reports``: per shard the highest epoch reported,
    members that did not say they are caught up in that epoch counted as
    not caught up (so the silent ones are cut only once a caught-up member
    lives).  A heartbeat naming a newer epoch than the master's (a config
    the reports missed) makes it ask that replica and adopt the answer,
    and change nothing in that shard meanwhile; a ``ReplicaReady`` from a
    replica that joined under the old head appends it (see core/head.py,
    "Recovery").

Forgetting
    Rows are deleted only by ops, like any write (``ForgetJob`` once a job
    ended and every node dropped its work, ``ForgetObject`` for a freed
    private put), so every replica forgets the same rows at the same point
    of the log; the rule of what goes and when is in ``tables.py``.

Flushing
    With ``GcsTiming.flush`` set (a ``FlushConfig``), the head replica of a
    chain checks, every ``interval`` seconds, whether its tables hold more
    than ``max_rows`` task and object rows; if so it writes ``FlushOld`` to
    its own log (as client ``replica_id``), so the whole chain flushes the
    same rows at the same log point (what may go is in ``tables.py``).
    Each replica, applying it, emits ``FlushRows`` for its driver to write.
    A read at the tail that needs flushed rows emits ``LoadRows`` and is
    answered on ``RowsLoaded``.  A write to a flushed key waits at the head
    (with every write behind it, so writes keep their order) while the row
    loads, then goes in after a logged ``RestoreRows``.  The disk itself is
    the driver's: files under the session directory on the real runtime, a
    modelled disk in the simulator.

The invariant that matters: **no acknowledged write is lost while one replica
of the chain lives.**  A client is acknowledged only by the tail; every
replica before the tail has the entry (it was forwarded through them), so any
surviving replica that becomes the tail has it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._fastinit import install_init as _install_init
from .messages import (
    ChainConfigMsg,
    ChainQuery,
    ChainReport,
    Fenced,
    Command,
    Event,
    GcsAck,
    GcsForward,
    GcsNotify,
    GcsRead,
    GcsReply,
    GcsWrite,
    Message,
    ReplicaHeartbeat,
    ReplicaJoin,
    ReplicaReady,
    Send,
    SetTimer,
    StateSnapshot,
    StateTransferRequest,
    TimerFired,
)
from .records import ChainConfig
from .messages import FlushedRowsCopy, FlushedRowsRequest, FlushRows, LoadRows, RowsLoaded
from .tables import Change, FlushOld, Op, RestoreRows, Subscribe, Tables

__all__ = [
    "GcsSync",
    "GcsCaughtUp",
    "GcsRejoin",
    "GcsReplica",
    "ChainMaster",
    "GcsTiming",
    "FlushConfig",
]

_frozen = dataclass(frozen=True, slots=True, kw_only=True)


@_frozen
class GcsSync(Message):
    """New successor to predecessor: I have applied up to ``seq``."""

    shard: int
    epoch: int
    seq: int
    replica: str


@_frozen
class GcsCaughtUp(Message):
    """Predecessor to successor: you now have everything up to ``seq``."""

    shard: int
    epoch: int
    seq: int


@_frozen
class GcsRejoin(Message):
    """Predecessor to successor: I no longer hold the entries you lack (your
    snapshot came from a replica that is not your predecessor, e.g. when
    several replicas joined at once): join again, copying from the tail."""

    shard: int
    epoch: int


@dataclass(frozen=True, slots=True)
class FlushConfig:
    """When a GCS chain flushes old rows to disk (see "Flushing" above and in
    ``tables.py``).

    Args:
        interval: seconds between the head replica's checks.
        max_rows: flush when the shard holds more task and object rows than
            this (all of them, counting rows that must stay, such as
            objects still held in a store); a flush moves every row that
            may go but ``keep_rows`` per table, up to ``batch``.
        keep_rows: per table, the rows that became flushable last always
            stay in memory (the horizon: recent rows are the ones read back
            most).
        batch: the most rows one flush moves (one segment on disk).

    Raises:
        ValueError: a value that cannot work (say which, and what to pass).
    """

    interval: float = 1.0
    max_rows: int = 20_000
    keep_rows: int = 2_000
    batch: int = 20_000

    def __post_init__(self) -> None:
        if not (isinstance(self.interval, (int, float)) and self.interval > 0):
            raise ValueError(f"FlushConfig.interval must be a positive number of seconds, got {self.interval!r}")
        for name in ("max_rows", "keep_rows", "batch"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "keep_rows" else 1):
                raise ValueError(f"FlushConfig.{name} must be a{' non-negative' if name == 'keep_rows' else ' positive'} "
                                 f"int, got {v!r}")
        if self.keep_rows >= self.max_rows:
            raise ValueError(f"FlushConfig.keep_rows ({self.keep_rows}) must be below max_rows ({self.max_rows}): "
                             f"otherwise nothing would ever be flushed (e.g. max_rows=20000, keep_rows=2000)")

    @classmethod
    def from_value(cls, value: "FlushConfig | dict | bool | None") -> "FlushConfig | None":
        """From a user's setting: None/False (off), True (defaults), a dict
        of fields, or a ``FlushConfig``."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"interval", "max_rows", "keep_rows", "batch"}
            if unknown:
                raise ValueError(f"unknown GCS flush setting(s) {sorted(unknown)}; use interval, max_rows, "
                                 f"keep_rows, batch")
            return cls(**value)
        raise ValueError(f"the GCS flush setting must be True, False, None or a dict of FlushConfig fields "
                         f"(interval, max_rows, keep_rows, batch), got {value!r}")


@dataclass(frozen=True, slots=True)
class GcsTiming:
    """Timeouts of the GCS (seconds).  Defaults follow Figure 10a's setting:
    failure detection well within 30 ms of a replica dying.  ``flush``:
    when to flush old rows to disk (None: never, the default)."""

    heartbeat_interval: float = 0.005
    heartbeat_timeout: float = 0.020
    resend_after: float = 0.010
    client_retry_after: float = 0.050
    flush: FlushConfig | None = None


@dataclass(slots=True)
class _Entry:
    seq: int
    client: str
    req_id: int
    op: Op
    low_water: int
    result: Any
    changes: list[Change]
    direct: tuple[str, list[Change]] | None = None  # (subscriber, current rows)
    sent_at: float = 0.0  # when last forwarded to the successor


class GcsReplica:
    """One replica of one GCS shard.  ``handle(event, now) -> commands``."""

    def __init__(
        self,
        replica_id: str,
        shard: int,
        master: str = "head",
        timing: GcsTiming = GcsTiming(),
        config: ChainConfig | None = None,
        joining: bool = False,
    ) -> None:
        self.replica_id = replica_id
        self.shard = shard
        self.master = master
        self.timing = timing
        self.config: ChainConfig | None = config
        self.tables = Tables()
        self.seq = 0  # last applied
        self.committed = 0  # known committed (acked by the tail)
        self.log: dict[int, _Entry] = {}  # applied, not yet acked downstream
        self.succ_seq = 0  # the highest seq our successor is known to have applied
        self.dedup: dict[str, dict[int, tuple[int, Any]]] = {}
        # per client: the highest low_water it sent (every id below it was
        # answered and will never be needed again)
        self.floors: dict[str, int] = {}
        self.retain_from: int | None = None  # tail keeps log after a snapshot
        # After a new predecessor, wait for its GcsCaughtUp before serving
        # reads, and serve them only once seq >= reads_from.
        self._awaiting_catchup = False
        self.reads_from: int = 0
        self.pending_reads: list[GcsRead] = []
        self.joining = joining
        self.awaiting_append = False  # copied a snapshot; waiting to be added
        self.active = config is not None and replica_id in config.replicas
        self._timer_started = False
        self._last_forward_at: float = 0.0
        self._nb_config: ChainConfig | None = None
        self._nb: tuple[str | None, str | None] = (None, None)
        # flushing (see "Flushing" above)
        self._flush_check_at = 0.0  # the head's next look at the row count
        self._internal_req = 0  # req ids of our own ops (FlushOld, RestoreRows)
        self._loads: dict[Any, tuple] = {}  # LoadRows token -> ("r", read) | ("w", wants)
        self._load_count = 0
        self._parked: list[GcsWrite] = []  # writes waiting for rows to load, in order
        self._loading: set[tuple[str, Any]] = set()
        # joining after a flush (see "Joining" above): segment -> the wants
        # of it still to copy, and when we last asked for the first ones
        self._copying: dict[int, tuple] = {}
        self._copy_asked: set[int] = set()
        self._copy_asked_at: float | None = None

    # ------------------------------------------------------------------ roles
    @property
    def is_head(self) -> bool:
        c = self.config
        return c is not None and self.active and c.replicas[0] == self.replica_id

    @property
    def is_tail(self) -> bool:
        c = self.config
        return c is not None and self.active and c.replicas[-1] == self.replica_id

    def _neighbours(self) -> tuple[str | None, str | None]:
        """(predecessor, successor) in the current config, cached per config."""
        c = self.config
        if c is not self._nb_config:
            self._nb_config = c
            self._nb = (c.predecessor(self.replica_id), c.successor(self.replica_id))
        return self._nb

    def _successor(self) -> str | None:
        return self._neighbours()[1] if self.active else None

    def _predecessor(self) -> str | None:
        return self._neighbours()[0] if self.active else None

    # ------------------------------------------------------------------ entry
    def start(self, now: float) -> list[Command]:
        """Commands to issue when the replica boots (heartbeats, joining)."""
        cmds: list[Command] = [SetTimer(at=now + self.timing.heartbeat_interval, key=("gcs", "tick"))]
        self._timer_started = True
        cmds.append(Send(to=self.master, msg=self._heartbeat()))
        if self.joining:
            cmds.append(Send(to=self.master, msg=ReplicaJoin(replica=self.replica_id, shard=self.shard)))
        return cmds

    def handle(self, event: Event, now: float) -> list[Command]:
        h = _HANDLERS.get(type(event))
        if h is None:
            return []
        return h(self, event, now)

    def _heartbeat(self) -> ReplicaHeartbeat:
        epoch = self.config.epoch if self.config is not None else 0
        caught_up = self.active and not self.joining and self._can_read()
        return ReplicaHeartbeat(replica=self.replica_id, shard=self.shard, seq=self.seq, epoch=epoch, caught_up=caught_up)

    def _redirect(self, client: str, sid: str) -> list[Command]:
        """A request came to the wrong replica: the client's config is old
        (it may have missed a ChainConfigMsg); send it ours."""
        if self.joining or not self.active or self.config is None:
            return []
        return [Send(to=client, msg=ChainConfigMsg(config=self.config, stimulus_id=sid))]

    # ------------------------------------------------------------------ writes
    def _on_write(self, ev: GcsWrite, now: float) -> list[Command]:
        client = ev.client
        req_id = ev.req_id
        if not self.is_head or self.joining:
            return self._redirect(client, ev.stimulus_id)  # the client will retry
        seen = self.dedup.get(client)
        if seen is not None and req_id in seen:
            seq, result = seen[req_id]
            if seq <= self.committed or self.is_tail:
                return [Send(to=client, msg=GcsReply(req_id=req_id, result=result, shard=self.shard, stimulus_id=ev.stimulus_id))]
            # in flight down the chain; the tail will answer.  Unless its
            # reply and the acks were lost: ask down the chain again (a
            # replica that knows it committed acks back up)
            return self._ask_downstream(seq, ev.stimulus_id)
        if client in self.tables.data["dead_nodes"]:
            # a node declared dead (cut off, not crashed) must not write: its
            # work was handed to others.  Tell it to stop.
            return [Send(to=client, msg=Fenced(node_id=client, reason="the GCS refuses writes from a node declared dead", stimulus_id=ev.stimulus_id))]
        if req_id < self.floors.get(client, 0):
            # below what the client said it no longer waits for: a stale copy
            # (a late duplicate or an old retry) of a write already answered,
            # whose dedup entry we have forgotten.  Applying it again would
            # apply it twice (found by the swarm: "write applied twice").
            return []
        if self._parked or (self.tables.flush_next and self._flushed_key(ev.op) is not None):
            return self._park_write(ev, now)  # its row is on disk (or a write ahead of it waits)
        self.seq = seq = self.seq + 1
        entry = self._apply(seq, client, req_id, ev.op, ev.low_water)
        return self._after_apply(entry, ev.stimulus_id, now)

    def _on_forward(self, ev: GcsForward, now: float) -> list[Command]:
        if not self.active or self.joining or ev.shard != self.shard:
            return []
        if ev.epoch != self.config.epoch:
            # from a replica with another view of the chain: maybe one that was
            # cut while alive and still acts on its old config; applying it
            # would fork the history.  (Our real predecessor re-sends once our
            # configs agree.)
            return []
        if ev.seq <= self.seq:
            # a re-send of something we have: the ack it waits for was lost.
            # Tell the sender what we know is committed (everything, at the
            # tail); a middle replica that does not know yet re-sends
            # downstream itself, and the answer comes back up.
            pred = self._predecessor()
            done = self.seq if self.is_tail else self.committed
            if done >= ev.seq:
                if pred is not None:
                    return [Send(to=pred, msg=GcsAck(shard=self.shard, epoch=self.config.epoch, seq=done))]
                return []
            return self._ask_downstream(ev.seq, ev.stimulus_id)
        if ev.seq != self.seq + 1:
            return []  # a gap (a lost message): the predecessor re-sends
        self.seq = ev.seq
        entry = self._apply(ev.seq, ev.client, ev.req_id, ev.op, ev.low_water)
        return self._after_apply(entry, ev.stimulus_id, now)

    def _apply(self, seq: int, client: str, req_id: int, op: Op, low_water: int) -> _Entry:
        result, changes = self.tables.apply(op)
        seen = self.dedup.get(client)
        if seen is None:
            seen = self.dedup[client] = {}
        seen[req_id] = (seq, result)
        floors = self.floors
        if low_water > floors.get(client, 0):
            floors[client] = low_water
        if low_water:
            # requests mostly arrive in id order: forget from the front, and
            # sweep everything now and then for retries that arrived late
            while seen:
                first = next(iter(seen))
                if first >= low_water:
                    break
                del seen[first]
            if len(seen) > 4096:
                for r in [r for r in seen if r < low_water]:
                    del seen[r]
        entry = _Entry(seq, client, req_id, op, low_water, result, changes)
        if isinstance(op, Subscribe):
            # a late subscriber is sent the current value at once, so it
            # cannot miss a change made before it subscribed; a table-wide
            # subscriber is sent every row this shard holds
            if op.key is not None:
                if result is not None:
                    entry.direct = (op.subscriber, [(op.table, op.key, result)])
            else:
                rows = self.tables.data[op.table]
                if rows:
                    entry.direct = (op.subscriber, [(op.table, k, v) for k, v in rows.items()])
        return entry

    def _after_apply(self, entry: _Entry, sid: str, now: float) -> list[Command]:
        if self.tables.flush_out is not None:  # (a FlushOld applied: to disk)
            seg, rows = self.tables.flush_out
            self.tables.flush_out = None
            return [FlushRows(shard=self.shard, segment=seg, rows=rows, stimulus_id=sid)] + self._after_apply(entry, sid, now)
        pred, succ = self._neighbours() if self.active else (None, None)
        if succ is None:  # we are the tail
            self.committed = entry.seq
            cmds = self._commit(entry, sid)
            if self.retain_from is not None:
                self.log[entry.seq] = entry
            if pred is not None:
                cmds.append(Send(to=pred, msg=GcsAck(shard=self.shard, epoch=self.config.epoch, seq=entry.seq, stimulus_id=sid)))
            if self.pending_reads and self._can_read():
                cmds += self._serve_pending_reads()
            return cmds
        self.log[entry.seq] = entry
        entry.sent_at = self._last_forward_at = now
        return [Send(to=succ, msg=self._forward_msg(entry, sid))]

    def _ask_downstream(self, seq: int, sid: str) -> list[Command]:
        """Re-send entry ``seq`` (applied here, not known committed) to our
        successor, whose answer is an ack if it knows more."""
        succ = self._successor()
        e = self.log.get(seq)
        if succ is None or e is None:
            return []
        return [Send(to=succ, msg=self._forward_msg(e, sid))]

    def _forward_msg(self, e: _Entry, sid: str = "") -> GcsForward:
        return GcsForward(
            shard=self.shard, epoch=self.config.epoch, seq=e.seq, client=e.client,
            req_id=e.req_id, op=e.op, low_water=e.low_water, stimulus_id=sid,
        )

    def _commit(self, e: _Entry, sid: str) -> list[Command]:
        """The tail's side effects of a committed entry: reply and notify."""
        cmds: list[Command] = [Send(to=e.client, msg=GcsReply(req_id=e.req_id, result=e.result, shard=self.shard, stimulus_id=sid))]
        if e.direct is not None:
            sub, rows = e.direct
            for table, key, value in rows:
                cmds.append(Send(to=sub, msg=GcsNotify(table=table, key=key, value=value, version=e.seq, shard=self.shard, stimulus_id=sid)))
        subs = self.tables.subs
        if not subs:
            return cmds
        for table, key, value in e.changes:
            # (Tables.subscribers inlined: this runs for every committed change)
            a = subs.get((table, key))
            b = subs.get((table, None))
            if not a and not b:
                continue
            targets = a | b if a and b else a or b
            for sub in sorted(targets) if len(targets) > 1 else targets:
                cmds.append(Send(to=sub, msg=GcsNotify(table=table, key=key, value=value, version=e.seq, shard=self.shard, stimulus_id=sid)))
        return cmds

    def _on_ack(self, ev: GcsAck, now: float) -> list[Command]:
        if not self.active or ev.shard != self.shard or ev.epoch != self.config.epoch or ev.seq > self.seq:
            return []  # (an ack beyond what we applied comes from a forked replica)
        if ev.seq > self.committed:
            self.committed = ev.seq
        if ev.seq > self.succ_seq:
            self.succ_seq = ev.seq
        for s in [s for s in self.log if s <= ev.seq]:
            if self.retain_from is None or s <= self.retain_from:
                del self.log[s]
        pred = self._predecessor()
        if pred is not None:
            return [Send(to=pred, msg=GcsAck(shard=self.shard, epoch=self.config.epoch, seq=ev.seq, stimulus_id=ev.stimulus_id))]
        return []

    # ------------------------------------------------------------------ reads
    def _on_read(self, ev: GcsRead, now: float) -> list[Command]:
        if not self.is_tail or self.joining:
            return self._redirect(ev.client, ev.stimulus_id)
        if not self._can_read():
            self.pending_reads.append(ev)
            return []
        if self.tables.flush_next:
            return self._answer_read(ev)
        return [Send(to=ev.client, msg=GcsReply(req_id=ev.req_id, result=self.tables.read(ev.query), shard=self.shard, stimulus_id=ev.stimulus_id))]

    def _can_read(self) -> bool:
        return not self._awaiting_catchup and self.seq >= self.reads_from

    def _serve_pending_reads(self) -> list[Command]:
        reads, self.pending_reads = self.pending_reads, []
        if self.tables.flush_next:
            return [c for r in reads for c in self._answer_read(r)]
        return [
            Send(to=r.client, msg=GcsReply(req_id=r.req_id, result=self.tables.read(r.query), shard=self.shard, stimulus_id=r.stimulus_id))
            for r in reads
        ]

    # ------------------------------------------------------------------ reconfiguration
    def _on_config(self, ev: ChainConfigMsg, now: float) -> list[Command]:
        new = ev.config
        if new.shard != self.shard:
            return []
        if self.config is not None and new.epoch <= self.config.epoch:
            return []
        old = self.config
        old_pred = old.predecessor(self.replica_id) if old and self.replica_id in old.replicas else None
        old_succ = old.successor(self.replica_id) if old and self.replica_id in old.replicas else None
        self.config = new
        if self.replica_id not in new.replicas:
            self.active = False
            return []
        if self.joining:
            return []  # we are added only after ReplicaReady
        self.active = True
        cmds: list[Command] = []
        pred = new.predecessor(self.replica_id)
        succ = new.successor(self.replica_id)
        if succ != old_succ:
            self.succ_seq = 0  # unknown until it acks or syncs
        if pred is not None and pred != old_pred:
            # tell our new predecessor where we are, so it re-sends the rest
            self._awaiting_catchup = True
            cmds.append(Send(to=pred, msg=GcsSync(shard=self.shard, epoch=new.epoch, seq=self.seq, replica=self.replica_id, stimulus_id=ev.stimulus_id)))
        if pred is None:
            self._awaiting_catchup = False
        if succ is None and old_succ is not None:
            # we became the tail: everything we applied is now committed
            for s in sorted(self.log):
                e = self.log[s]
                cmds += self._commit(e, ev.stimulus_id)
            self.committed = self.seq
            if self.retain_from is None:
                self.log.clear()
            if pred is not None:
                cmds.append(Send(to=pred, msg=GcsAck(shard=self.shard, epoch=new.epoch, seq=self.seq)))
            cmds += self._serve_pending_reads()
        return cmds

    def _on_sync(self, ev: GcsSync, now: float) -> list[Command]:
        if not self.active or ev.shard != self.shard or self._successor() != ev.replica:
            return []
        self.succ_seq = ev.seq
        if any(s not in self.log for s in range(ev.seq + 1, self.seq + 1)):
            # it lacks entries we no longer keep: it must copy state again
            return [Send(to=ev.replica, msg=GcsRejoin(shard=self.shard, epoch=self.config.epoch, stimulus_id=ev.stimulus_id))]
        cmds: list[Command] = [
            Send(to=ev.replica, msg=self._forward_msg(self.log[s], ev.stimulus_id))
            for s in sorted(self.log)
            if s > ev.seq
        ]
        if self._can_read():
            # only a replica that has caught up itself can vouch that the
            # successor has every committed write once it reaches our seq
            # (when several replicas are appended at once, ours may lag);
            # until then the successor's timer re-sends GcsSync
            cmds.append(Send(to=ev.replica, msg=GcsCaughtUp(shard=self.shard, epoch=self.config.epoch, seq=self.seq)))
        # the joiner has our history now; stop retaining
        self.retain_from = None
        for s in [s for s in self.log if s <= self.committed and s <= ev.seq]:
            del self.log[s]
        return cmds

    def _on_caught_up(self, ev: GcsCaughtUp, now: float) -> list[Command]:
        if ev.shard != self.shard or self.config is None or ev.epoch != self.config.epoch:
            return []
        if not self._awaiting_catchup:
            return []
        self._awaiting_catchup = False
        self.reads_from = ev.seq
        if self.is_tail and self._can_read():
            return self._serve_pending_reads()
        return []

    # ------------------------------------------------------------------ joining
    def _on_transfer_request(self, ev: StateTransferRequest, now: float) -> list[Command]:
        if not self.is_tail or ev.shard != self.shard:
            return []
        self.retain_from = self.seq if self.retain_from is None else min(self.retain_from, self.seq)
        snap = self.tables.snapshot()
        dedup = ({c: dict(v) for c, v in self.dedup.items()}, dict(self.floors))
        return [Send(to=ev.replica, msg=StateSnapshot(shard=self.shard, epoch=self.config.epoch, seq=self.seq, snapshot=snap, dedup=dedup, stimulus_id=ev.stimulus_id))]

    def _on_snapshot(self, ev: StateSnapshot, now: float) -> list[Command]:
        if not self.joining or ev.shard != self.shard or self._copying:
            return []  # (a repeat while we copy the first one's flushed rows)
        self.tables = Tables.restore(ev.snapshot)
        dedup, floors = ev.dedup
        self.dedup = {c: dict(v) for c, v in dedup.items()}
        self.floors = dict(floors)
        self.seq = self.committed = ev.seq
        self.log.clear()
        if self.tables.flush_next:
            by_segment: dict[int, list] = {}
            for table, idx in self.tables.flushed.items():
                for key, seg in idx.items():
                    by_segment.setdefault(seg, []).append((table, key, seg))
            if by_segment:
                self._copying = {seg: tuple(by_segment[seg]) for seg in sorted(by_segment)}
                return self._ask_copies(now, ev.stimulus_id)
        return self._joined(ev.stimulus_id)

    def _joined(self, sid: Any) -> list[Command]:
        """The snapshot (and the flushed rows it names) is ours: ready."""
        self.joining = False
        self.active = False  # until the master adds us
        self.awaiting_append = True
        return [Send(to=self.master, msg=ReplicaReady(replica=self.replica_id, shard=self.shard, seq=self.seq, stimulus_id=sid))]

    # at most this many segments asked for at once (each load reads a whole
    # segment of up to FlushConfig.batch rows)
    _COPY_WINDOW = 4

    def _ask_copies(self, now: float, sid: str = "", again: bool = True) -> list[Command]:
        """Ask the tail for the first segments still to copy (``again``:
        those asked already too, their answer may have been lost)."""
        c = self.config
        if c is None or not c.replicas:
            return []
        window = list(self._copying)[:self._COPY_WINDOW]
        ask = window if again else [seg for seg in window if seg not in self._copy_asked]
        if ask:
            self._copy_asked_at = now
        self._copy_asked.update(ask)
        return [Send(to=c.tail, msg=FlushedRowsRequest(replica=self.replica_id, shard=self.shard, segment=seg,
                                                       wants=self._copying[seg], stimulus_id=sid))
                for seg in ask]

    def _on_copy_request(self, ev: FlushedRowsRequest, now: float) -> list[Command]:
        """A joiner lacks flushed rows our disk holds: load and send them."""
        if ev.shard != self.shard or not self.active or self.joining:
            return []
        token = self._new_token()
        self._loads[token] = ("c", ev.replica, ev.segment)
        return [LoadRows(shard=self.shard, token=token, wants=ev.wants, stimulus_id=ev.stimulus_id)]

    def _on_copy(self, ev: FlushedRowsCopy, now: float) -> list[Command]:
        if ev.shard != self.shard or not self.joining or self._copying.pop(ev.segment, None) is None:
            return []  # (a repeat, or from a join we gave up)
        cmds: list[Command] = []
        if ev.rows:
            cmds.append(FlushRows(shard=self.shard, segment=ev.segment, rows=ev.rows, stimulus_id=ev.stimulus_id))
        if not self._copying:
            self._copy_asked.clear()
            self._copy_asked_at = None
            return cmds + self._joined(ev.stimulus_id)
        return cmds + self._ask_copies(now, ev.stimulus_id, again=False)  # slide the window on

    def _on_joined_config(self, ev: ChainConfigMsg, now: float) -> list[Command]:
        """Config handling while joining: find the tail to copy from."""
        new = ev.config
        if new.shard != self.shard or (self.config is not None and new.epoch <= self.config.epoch):
            return []
        if self.replica_id in new.replicas:
            return self._on_config(ev, now)
        self.config = new
        if self._copying:  # keep the snapshot; ask the new tail for the rest
            return self._ask_copies(now, ev.stimulus_id)
        return [Send(to=new.tail, msg=StateTransferRequest(replica=self.replica_id, shard=self.shard, stimulus_id=ev.stimulus_id))]

    def _dispatch_config(self, ev: ChainConfigMsg, now: float) -> list[Command]:
        if self.joining:
            return self._on_joined_config(ev, now)
        if not self.active and self.config is not None and self.replica_id not in ev.config.replicas:
            # we were ready and waiting to be appended; copy again if the tail changed
            self.config = ev.config if ev.config.epoch > self.config.epoch else self.config
            return []
        return self._on_config(ev, now)

    def _on_rejoin(self, ev: GcsRejoin, now: float) -> list[Command]:
        c = self.config
        if ev.shard != self.shard or not self.active or not self._awaiting_catchup or c is None or ev.epoch != c.epoch:
            return []
        # back to joining: the master cuts us and we copy from the tail again
        self.joining = True
        self.active = False
        self._awaiting_catchup = False
        self._copying = {}
        self._copy_asked.clear()
        self.log.clear()
        self.pending_reads = []  # their clients retry at the new tail
        return [Send(to=self.master, msg=ReplicaJoin(replica=self.replica_id, shard=self.shard, stimulus_id=ev.stimulus_id))]

    # ------------------------------------------------------------------ recovery
    def _on_chain_query(self, ev: ChainQuery, now: float) -> list[Command]:
        """A recovering head asks what we know (see core/head.py, "Recovery:
        a new head from surviving replicas").  Answering changes nothing:
        we keep our config, and keep serving, with or without a head."""
        seen = self.dedup.get(ev.master)
        client_req = max(max(seen, default=0) if seen else 0, self.floors.get(ev.master, 0))
        caught_up = self.active and not self.joining and self._can_read()
        return [Send(to=ev.master, msg=ChainReport(
            replica=self.replica_id, shard=self.shard, config=self.config, seq=self.seq, caught_up=caught_up,
            joining=self.joining or self.awaiting_append, client_req=client_req, stimulus_id=ev.stimulus_id))]

    # ------------------------------------------------------------------ timers
    def _join_retries(self, now: float) -> list[Command]:
        """Re-send the joining steps whose message may have been lost."""
        c = self.config
        if self.joining:
            if c is None or self.replica_id in c.replicas:
                return [Send(to=self.master, msg=ReplicaJoin(replica=self.replica_id, shard=self.shard))]
            if self._copying:
                if self._copy_asked_at is not None and now - self._copy_asked_at < self.timing.heartbeat_timeout:
                    return []
                return self._ask_copies(now)
            return [Send(to=c.tail, msg=StateTransferRequest(replica=self.replica_id, shard=self.shard))]
        if self.awaiting_append:
            if c is not None and self.replica_id in c.replicas:
                self.awaiting_append = False
                return []
            return [Send(to=self.master, msg=ReplicaReady(replica=self.replica_id, shard=self.shard, seq=self.seq))]
        return []

    def _on_timer(self, ev: TimerFired, now: float) -> list[Command]:
        if ev.key != ("gcs", "tick"):
            return []
        cmds: list[Command] = [
            SetTimer(at=now + self.timing.heartbeat_interval, key=("gcs", "tick")),
            Send(to=self.master, msg=self._heartbeat()),
        ]
        if self.joining or self.awaiting_append:
            cmds += self._join_retries(now)
        if self.timing.flush is not None or self._parked:
            cmds += self._flush_tick(now)
        pred = self._predecessor()
        if pred is not None and self._awaiting_catchup:
            cmds.append(Send(to=pred, msg=GcsSync(shard=self.shard, epoch=self.config.epoch, seq=self.seq, replica=self.replica_id)))
        succ = self._successor()
        if succ is not None and self.log:
            # the oldest unacknowledged entry waited too long (its forward,
            # or the ack, was lost): re-send from it (the successor drops
            # repeats).  Judged by that entry's age, not by the last forward:
            # under steady writes a lost forward would otherwise never be
            # re-sent, and the successor drops everything after the gap.
            # (what the successor lacks is judged by what *it* acknowledged:
            # our own commit point can be ahead of it -- a former tail that
            # committed entries itself before a new tail joined behind it;
            # found by the swarm: acknowledged writes lost after a rejoin)
            pending = sorted(s for s in self.log if s > self.succ_seq)
            if pending and now - self.log[pending[0]].sent_at >= self.timing.resend_after:
                for s in pending[:256]:
                    e = self.log[s]
                    e.sent_at = now
                    cmds.append(Send(to=succ, msg=self._forward_msg(e)))
                self._last_forward_at = now
        return cmds

    # ------------------------------------------------------------------ flushing
    def _internal_write(self, op: Op, sid: str, now: float) -> list[Command]:
        """Apply ``op`` at the head as our own write (client: this replica),
        replicated down the chain like any other."""
        self._internal_req += 1
        rid = self._internal_req
        self.seq = seq = self.seq + 1
        entry = self._apply(seq, self.replica_id, rid, op, rid)
        return self._after_apply(entry, sid, now)

    def _flush_tick(self, now: float) -> list[Command]:
        """The head's periodic look: flush if the shard holds too many rows.
        (Also drops writes parked while we were head, once we are not: their
        clients retry at the new head.)"""
        if not self.is_head or self.joining:
            if self._parked:
                self._parked = []
                self._loading.clear()
            return []
        f = self.timing.flush
        if f is None or now < self._flush_check_at:
            return []
        self._flush_check_at = now + f.interval
        d = self.tables.data
        if len(d["tasks"]) + len(d["objects"]) <= f.max_rows:
            return []
        return self._internal_write(FlushOld(keep=f.keep_rows, limit=f.batch), "gcs-flush", now)

    def flush_now(self, now: float, keep: int = 0, limit: int = 1 << 30) -> list[Command]:
        """Flush at once (tests, operators); only the head replica may."""
        if not self.is_head or self.joining:
            raise RuntimeError(f"{self.replica_id} is not the head of its chain: only the head orders a flush "
                               f"(the rest of the chain flushes when FlushOld reaches them)")
        return self._internal_write(FlushOld(keep=keep, limit=limit), "gcs-flush", now)

    def _flushed_key(self, op: Op) -> tuple[str, Any] | None:
        """The (table, key) ``op`` writes if that row is on disk only."""
        table, key = op.route()
        if key is None or self.tables.flushed_segment(table, key) is None:
            return None
        return table, key

    def _new_token(self) -> tuple:
        self._load_count += 1
        return ("gcs-load", self.replica_id, self._load_count)

    def _park_write(self, ev: GcsWrite, now: float) -> list[Command]:
        self._parked.append(ev)
        tk = self._flushed_key(ev.op) if self.tables.flush_next else None
        if tk is None or tk in self._loading:
            return []
        self._loading.add(tk)
        wants = ((tk[0], tk[1], self.tables.flushed_segment(*tk)),)
        token = self._new_token()
        self._loads[token] = ("w", wants)
        return [LoadRows(shard=self.shard, token=token, wants=wants, stimulus_id=ev.stimulus_id)]

    def _answer_read(self, ev: GcsRead) -> list[Command]:
        wants = self.tables.flushed_wants(ev.query)
        if not wants:
            return [Send(to=ev.client, msg=GcsReply(req_id=ev.req_id, result=self.tables.read(ev.query), shard=self.shard, stimulus_id=ev.stimulus_id))]
        token = self._new_token()
        self._loads[token] = ("r", ev)
        return [LoadRows(shard=self.shard, token=token, wants=wants, stimulus_id=ev.stimulus_id)]

    def _on_rows_loaded(self, ev: RowsLoaded, now: float) -> list[Command]:
        what = self._loads.pop(ev.token, None)
        if what is None:
            return []
        if what[0] == "c":  # rows for a joiner (see "Joining" above)
            return [Send(to=what[1], msg=FlushedRowsCopy(shard=self.shard, segment=what[2], rows=ev.rows,
                                                         stimulus_id=ev.stimulus_id))]
        if what[0] == "r":
            r = what[1]
            result = self.tables.read_loaded(r.query, ev.rows)
            return [Send(to=r.client, msg=GcsReply(req_id=r.req_id, result=result, shard=self.shard, stimulus_id=r.stimulus_id))]
        wants = what[1]
        for table, key, _ in wants:
            self._loading.discard((table, key))
        if not self.is_head or self.joining:
            self._parked = []  # their clients retry at the new head
            self._loading.clear()
            return []
        found = {(t, k) for t, k, _ in ev.rows}
        missing = tuple((t, k) for t, k, _ in wants if (t, k) not in found)
        cmds = self._internal_write(RestoreRows(rows=ev.rows, missing=missing), ev.stimulus_id, now)
        parked, self._parked = self._parked, []
        for w in parked:  # (in order: one that needs another row parks the rest again)
            cmds += self._on_write(w, now)
        return cmds

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        assert self.committed <= self.seq, (self.committed, self.seq)
        for s in self.log:
            assert s <= self.seq, (s, self.seq)
        if self.active and self.config is not None:
            assert self.replica_id in self.config.replicas

    def __repr__(self) -> str:
        role = "head" if self.is_head else "tail" if self.is_tail else "mid" if self.active else "off"
        return f"<GcsReplica {self.replica_id} shard={self.shard} {role} seq={self.seq}>"


_HANDLERS = {
    GcsWrite: GcsReplica._on_write,
    GcsForward: GcsReplica._on_forward,
    GcsAck: GcsReplica._on_ack,
    GcsRead: GcsReplica._on_read,
    ChainConfigMsg: GcsReplica._dispatch_config,
    GcsSync: GcsReplica._on_sync,
    GcsCaughtUp: GcsReplica._on_caught_up,
    GcsRejoin: GcsReplica._on_rejoin,
    StateTransferRequest: GcsReplica._on_transfer_request,
    StateSnapshot: GcsReplica._on_snapshot,
    TimerFired: GcsReplica._on_timer,
    ChainQuery: GcsReplica._on_chain_query,
    RowsLoaded: GcsReplica._on_rows_loaded,
    FlushedRowsRequest: GcsReplica._on_copy_request,
    FlushedRowsCopy: GcsReplica._on_copy,
}

_install_init(GcsSync, GcsCaughtUp, GcsRejoin)


# ===========================================================================


@dataclass(slots=True)
class _ShardView:
    config: ChainConfig
    joining: dict[str, float] = field(default_factory=dict)  # replica -> since


class ChainMaster:
    """Keeps each shard's chain configuration; run inside the head.

    It cuts out replicas whose heartbeats stop and appends replicas that
    finished joining.  Every change goes, with a new epoch, to the shard's
    replicas (old and new) and to every listener (nodes and the head's own
    GCS client), which is how clients learn where to send.
    """

    def __init__(self, configs: list[ChainConfig], timing: GcsTiming = GcsTiming(),
                 address: str = "head", recovered: bool = False) -> None:
        self.timing = timing
        self.address = address
        self.shards = {c.shard: _ShardView(c) for c in configs}
        self.last_seen: dict[str, float] = {}
        self.caught_up: dict[str, bool] = {}  # from heartbeats; absent: an original member
        self.dead: set[str] = set()
        self.listeners: dict[str, None] = {}  # (ordered set: one per node)
        self.changes = 0
        # a master started by a recovering head from the replicas' reports
        # (core/head.py, "Recovery"): it does not know who was joining
        # under its predecessor, nor whether every member has caught up
        self.recovered = recovered
        # shard -> the highest epoch a replica's heartbeat named above ours
        # (only after a recovery whose reports missed a newer config): no
        # change to that shard until we have that config (``on_report``),
        # or we would issue a second config under an epoch already taken
        self.newer: dict[int, int] = {}

    @classmethod
    def from_reports(cls, reports: list[ChainReport], shards: set[int] | None = None,
                     timing: GcsTiming = GcsTiming(), address: str = "head") -> "ChainMaster":
        """The master of a recovering head: per shard, the config of the
        highest epoch reported.  A member counts as caught up only if it
        said so in that very epoch (one that did not answer, or answered
        from an older config, may lack acknowledged writes): the heartbeat
        timeout then cuts the silent members only once a caught-up member
        lives.

        Raises:
            ValueError: a shard in ``shards`` has no config among the
                reports (no surviving replica of it was asked).
        """
        best: dict[int, ChainConfig] = {}
        for r in reports:
            c = r.config
            if c is not None and (c.shard not in best or c.epoch > best[c.shard].epoch):
                best[c.shard] = c
        missing = sorted((shards or set()) - set(best))
        if missing:
            raise ValueError(f"no surviving GCS replica reported a config for shard(s) {missing}: name at least "
                             f"one live replica of every shard to recover from")
        m = cls([best[s] for s in sorted(best)], timing, address=address, recovered=True)
        said = {r.replica: r for r in reports}
        for c in best.values():
            for member in c.replicas:
                r = said.get(member)
                m.caught_up[member] = bool(r is not None and r.config is not None and r.config.epoch == c.epoch
                                           and r.caught_up)
        return m

    def on_report(self, ev: ChainReport, now: float) -> list[Command]:
        """A replica's view (asked when its heartbeat named an epoch newer
        than ours: a recovering head's reports missed a newer config)."""
        view = self.shards.get(ev.shard)
        c = ev.config
        if view is None or c is None or c.shard != ev.shard or c.epoch <= view.config.epoch:
            return []
        for member in c.replicas:
            if member not in view.config.replicas:
                self.last_seen.setdefault(member, now)
                self.caught_up.setdefault(member, False)
        if ev.caught_up and ev.replica in c.replicas:
            self.caught_up[ev.replica] = True
        view.config = c
        self.changes += 1
        return []

    def configs(self) -> tuple[ChainConfig, ...]:
        return tuple(self.shards[s].config for s in sorted(self.shards))

    def start(self, now: float) -> list[Command]:
        for v in self.shards.values():
            for r in v.config.replicas:
                self.last_seen[r] = now
        return [SetTimer(at=now + self.timing.heartbeat_interval, key=("chain", "check"))]

    def add_listener(self, address: str) -> None:
        self.listeners[address] = None

    def remove_listener(self, address: str) -> None:
        self.listeners.pop(address, None)

    def handle(self, event: Event, now: float) -> list[Command]:
        if isinstance(event, ReplicaHeartbeat):
            if event.replica in self.dead:
                # cut while alive (its heartbeats were lost): tell it, or it
                # goes on acting on its old config (serving stale reads)
                view = self.shards.get(event.shard)
                if view is not None and event.epoch and event.epoch < view.config.epoch:
                    return [Send(to=event.replica, msg=ChainConfigMsg(config=view.config, stimulus_id=event.stimulus_id))]
                return []
            self.last_seen[event.replica] = now
            view = self.shards.get(event.shard)
            if event.caught_up and view is not None and event.replica in view.config.replicas and event.epoch == view.config.epoch:
                # sticky: a member that has synced once holds every
                # acknowledged write from then on, even while it re-syncs
                # with a new predecessor after a cut
                self.caught_up[event.replica] = True
            if view is not None and event.epoch > view.config.epoch:
                # a config newer than ours: only after a recovery, whose
                # reports missed it.  Ask for it (``on_report`` adopts it).
                self.newer[event.shard] = max(self.newer.get(event.shard, 0), event.epoch)
                return [Send(to=event.replica, msg=ChainQuery(master=self.address, stimulus_id=event.stimulus_id))]
            if view is not None and event.epoch < view.config.epoch and (
                event.replica in view.config.replicas or (event.epoch == 0 and event.replica in view.joining)
            ):
                # it missed a config (a lost message would stall the chain)
                return [Send(to=event.replica, msg=ChainConfigMsg(config=view.config, stimulus_id=event.stimulus_id))]
            return []
        if isinstance(event, TimerFired) and event.key == ("chain", "check"):
            return self._check(now) + [SetTimer(at=now + self.timing.heartbeat_interval, key=("chain", "check"))]
        if isinstance(event, ReplicaJoin):
            return self._on_join(event, now)
        if isinstance(event, ReplicaReady):
            return self._on_ready(event, now)
        if isinstance(event, ChainReport):
            return self.on_report(event, now)
        return []

    def _broadcast(self, view: _ShardView, extra: tuple[str, ...] = (), sid: str = "") -> list[Command]:
        msg = ChainConfigMsg(config=view.config, stimulus_id=sid)
        targets = list(dict.fromkeys(view.config.replicas + tuple(view.joining) + extra))
        seen = set(targets)
        targets += [l for l in self.listeners if l not in seen]
        return [Send(to=t, msg=msg) for t in targets]

    def _check(self, now: float) -> list[Command]:
        cmds: list[Command] = []
        limit = now - self.timing.heartbeat_timeout
        for shard in sorted(self.shards):
            view = self.shards[shard]
            live = tuple(r for r in view.config.replicas if self.last_seen.get(r, now) >= limit)
            gone = [r for r in view.config.replicas if r not in live]
            for r in list(view.joining):
                if self.last_seen.get(r, now) < limit:
                    del view.joining[r]
            if not gone:
                continue
            if self.newer.get(shard, 0) > view.config.epoch:
                continue  # a replica knows a newer config: learn it first
            if not any(self.caught_up.get(r, True) for r in live):
                # every replica is gone, or only members still catching up
                # are left (they lack acknowledged writes): cutting would lose
                # them, so keep the config and wait (a false suspicion heals)
                continue
            self.dead.update(gone)
            view.config = ChainConfig(shard=shard, epoch=view.config.epoch + 1, replicas=live)
            self.changes += 1
            cmds += self._broadcast(view, sid=f"chain-cut:{','.join(gone)}")
        return cmds

    def _on_join(self, ev: ReplicaJoin, now: float) -> list[Command]:
        view = self.shards.get(ev.shard)
        if view is None:
            return []
        self.dead.discard(ev.replica)
        self.last_seen[ev.replica] = now
        if ev.replica in view.config.replicas:
            # restarted with empty state but still listed: cut it first
            view.config = ChainConfig(
                shard=ev.shard, epoch=view.config.epoch + 1,
                replicas=tuple(r for r in view.config.replicas if r != ev.replica),
            )
            self.changes += 1
            view.joining[ev.replica] = now
            return self._broadcast(view, sid=ev.stimulus_id)
        view.joining[ev.replica] = now
        return [Send(to=ev.replica, msg=ChainConfigMsg(config=view.config, stimulus_id=ev.stimulus_id))]

    def _on_ready(self, ev: ReplicaReady, now: float) -> list[Command]:
        view = self.shards.get(ev.shard)
        if view is not None and self.recovered and ev.replica not in view.joining \
                and ev.replica not in view.config.replicas and ev.replica not in self.dead:
            # it joined under the old head (which died before appending
            # it): append it now; if its snapshot is too old for its new
            # predecessor, that one tells it to join again (GcsRejoin)
            view.joining[ev.replica] = now
        if view is None or ev.replica not in view.joining:
            return []
        del view.joining[ev.replica]
        self.last_seen[ev.replica] = now
        self.caught_up[ev.replica] = False  # until its heartbeat says it synced
        view.config = ChainConfig(shard=ev.shard, epoch=view.config.epoch + 1, replicas=view.config.replicas + (ev.replica,))
        self.changes += 1
        return self._broadcast(view, sid=ev.stimulus_id)

    def validate(self) -> None:
        for s, v in self.shards.items():
            assert v.config.shard == s
            assert len(set(v.config.replicas)) == len(v.config.replicas)
