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
    reconfiguration waits.  How a recovering head's master takes over from
    the replicas' reports is in ``gcs_master.py``.

Forgetting
    Rows are deleted only by ops, like any write (``ForgetJob`` once a job
    ended and every node dropped its work, ``ForgetObject`` for a freed
    private put), so every replica forgets the same rows at the same point
    of the log; the rule of what goes and when is in ``tables_flush.py``.

Flushing
    Old rows move to disk through a logged ``FlushOld`` that the head
    replica writes to its own log; a read or write of a flushed row waits
    while the driver loads it.  The replica's side of it is in
    ``gcs_flush.py`` (``ReplicaFlushing``, a base of ``GcsReplica``); what
    may go is in ``tables_flush.py``.

The invariant that matters: **no acknowledged write is lost while one replica
of the chain lives.**  A client is acknowledged only by the tail; every
replica before the tail has the entry (it was forwarded through them), so any
surviving replica that becomes the tail has it.

Where things are
----------------
Here: the replica (``GcsReplica``) and its handler table ``_HANDLERS``,
and the messages replicas send one another on reconfiguration.  The chain
master is in ``gcs_master.py``, the timing and flush settings in
``gcs_config.py``; this module re-exports them so that every name it had
is still importable from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .gcs_config import FlushConfig, GcsTiming
from .gcs_dedup import DedupTable
from .gcs_flush import ReplicaFlushing
from .gcs_master import ChainMaster
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
    Log,  # noqa: F401 (importable from here, as before the split)
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
from .messages import FlushedRowsCopy, FlushedRowsRequest, FlushRows, RowsLoaded
from .msg_base import install_protocol
from .tables import Change, NodeDown, Op, Subscribe, Tables

__all__ = [
    "GcsSync",
    "GcsCaughtUp",
    "GcsRejoin",
    "GcsReplica",
    "ChainMaster",
    "GcsTiming",
    "FlushConfig",
]

class GcsSync(Message):
    """New successor to predecessor: I have applied up to ``seq``."""

    shard: int
    epoch: int
    seq: int
    replica: str


class GcsCaughtUp(Message):
    """Predecessor to successor: you now have everything up to ``seq``."""

    shard: int
    epoch: int
    seq: int


class GcsRejoin(Message):
    """Predecessor to successor: I no longer hold the entries you lack (your
    snapshot came from a replica that is not your predecessor, e.g. when
    several replicas joined at once): join again, copying from the tail."""

    shard: int
    epoch: int


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


class GcsReplica(ReplicaFlushing):
    """One replica of one GCS shard.  ``handle(event, now) -> commands``.

    Its attributes are slots: CPython 3.11 keeps at most 29 of an instance's
    attributes inline; with 32 every replica had a 1.5 KB dict of its own,
    and each attribute read went through it (a cache miss a read with
    thousands of replicas).  An attribute not listed here still works (it
    goes to the instance's ``__dict__``); keep the list in step with
    ``__init__`` (``tests/test_sim_inline_attrs.py`` checks).
    """

    __slots__ = ("replica_id", "shard", "master", "timing", "config", "tables", "seq", "committed",
                 "log", "succ_seq", "dedup", "floors", "retain_from", "_awaiting_catchup",
                 "reads_from", "pending_reads", "joining", "awaiting_append", "active",
                 "_timer_started", "_last_forward_at", "_nb_config", "_nb", "_flush_check_at",
                 "_internal_req", "_loads", "_load_count", "_parked", "_loading", "_copying",
                 "_copy_asked", "_copy_asked_at")

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
        self.dedup = DedupTable()  # (client, req_id) -> (seq, result)
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
        # flushing (see gcs_flush.py)
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
        seen = self.dedup.lookup(client, req_id)
        if seen is not None:
            seq, result = seen
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
        self.dedup.remember(client, req_id, seq, result, low_water)
        floors = self.floors
        if low_water > floors.get(client, 0):
            floors[client] = low_water
        if op.__class__ is NodeDown:
            # only the latest dead nodes are remembered (core/dead_nodes.py)
            for old in self.tables.forget_dead_nodes():
                self.dedup.forget_client(old)
                floors.pop(old, None)
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
        dedup = (self.dedup.as_dicts(), dict(self.floors))
        return [Send(to=ev.replica, msg=StateSnapshot(shard=self.shard, epoch=self.config.epoch, seq=self.seq, snapshot=snap, dedup=dedup, stimulus_id=ev.stimulus_id))]

    def _on_snapshot(self, ev: StateSnapshot, now: float) -> list[Command]:
        if not self.joining or ev.shard != self.shard or self._copying:
            return []  # (a repeat while we copy the first one's flushed rows)
        self.tables = Tables.restore(ev.snapshot)
        dedup, floors = ev.dedup
        self.dedup = DedupTable.from_dicts(dedup)
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
        client_req = max(self.dedup.last_req(ev.master), self.floors.get(ev.master, 0))
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

install_protocol(__name__)  # their generated pickling
