"""A GCS replica's part in flushing old rows to disk, and in copying them to a joiner.

Theory of operation
-------------------
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
Joining after a flush
    A joiner's snapshot carries the flushed-row index but not the rows
    (see "Joining" in ``gcs.py``): it asks the tail for them, a few segments
    at a time (``FlushedRowsRequest``); the tail loads each (``LoadRows``)
    and answers ``FlushedRowsCopy``, and the joiner writes it to its own
    disk (``FlushRows``) before it reports ready.

``ReplicaFlushing`` holds these methods; ``GcsReplica`` (``gcs.py``)
derives from it and owns the state they use (set up in its ``__init__``)
and the rest of the protocol they call (``_apply``, ``_after_apply``,
``_on_write``, ``_joined``).  Events reach them through ``gcs._HANDLERS``.
"""

from __future__ import annotations

from typing import Any

from .messages import (
    Command,
    FlushedRowsCopy,
    FlushedRowsRequest,
    FlushRows,
    GcsRead,
    GcsReply,
    GcsWrite,
    LoadRows,
    RowsLoaded,
    Send,
)
from .tables_ops import FlushOld, Op, RestoreRows

__all__ = ["ReplicaFlushing"]


class ReplicaFlushing:
    """The flushing half of ``GcsReplica`` (a mixin: see the module doc)."""

    # ------------------------------------------------------------------ copying flushed rows to a joiner
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
        if what[0] == "c":  # rows for a joiner (see "Joining" in gcs.py)
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
