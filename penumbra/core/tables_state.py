"""One GCS shard replica's tables: rows, indexes, snapshots and reads.

Theory of operation
-------------------
``TablesState`` is the state of a shard replica (the tables are listed in
``tables.py``): the rows, the subscriptions, two secondary indexes and the
index of flushed rows.  It answers reads (``read``, and ``read_loaded`` once
flushed rows came back from disk), copies itself for a state transfer
(``snapshot``/``restore``), and keeps the indexes in step when a write puts
a task or object row (``_put_task``, ``_put_object``).

It does not apply ops: ``Tables`` (``tables.py``) adds ``apply``, which
looks each op's handler up in ``tables._APPLY`` (the handlers are in
``tables.py`` and ``tables_flush.py``).  The split keeps the handlers of
forgetting and flushing, which need this state, below the dispatch table
that names them.

Two secondary indexes are derived from the tables (never replicated, rebuilt
after a state transfer): tasks not yet finished by node, and objects by the
node holding a copy.  They answer "what did the dead node have?" without a
scan.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Hashable

from .ids import ObjectId, TaskId
from .records import ActorState, ObjectEntry, TaskEntry, TaskState
from .specs import TaskSpec
from .tables_ops import (
    TABLES,
    ActorLogRange,
    ActorsOnNode,
    Change,
    Get,
    GetMany,
    Keys,
    ObjectsOnNode,
    Query,
    Scan,
    TableSizes,
    TasksOnNode,
    UnplacedTasks,
)

__all__ = ["TablesState", "index_add", "index_discard", "index_items"]


# The indexes by node (a shard's pending tasks and its objects on each node)
# hold a bare id while a node has one, and a set from the second on: a
# one-element set per (shard, node) was ~216 bytes a task at 10,000 nodes
# over 5,000 shards, where a node mostly has one task or object of a given
# shard's.  Nobody sees the difference: ``index_items`` is what is read,
# and it is read sorted.
def index_items(by: dict, key: Hashable) -> Iterable:
    """The ids under ``key`` (in no order)."""
    s = by.get(key)
    return () if s is None else s if s.__class__ is set else (s,)


def index_add(by: dict, key: Hashable, item: Hashable) -> None:
    s = by.get(key)
    if s is None:
        by[key] = item
    elif s.__class__ is set:
        s.add(item)
    elif s != item:
        by[key] = {s, item}


def index_discard(by: dict, key: Hashable, item: Hashable) -> None:
    """Take ``item`` from under ``key``; a key left with none goes."""
    s = by.get(key)
    if s is None:
        return
    if s.__class__ is set:
        s.discard(item)
        if not s:
            del by[key]
    elif s == item:
        del by[key]


class TablesState:
    """The tables of one shard replica, without the function that changes
    them (``Tables.apply`` in ``tables.py``)."""

    __slots__ = ("data", "subs", "_tasks_by_node", "_objects_by_node",
                 "flushed", "flush_jobs", "flush_next", "flush_out", "flush_track", "flush_cand")

    def __init__(self) -> None:
        self.data: dict[str, dict] = {t: {} for t in TABLES}
        # (table, key-or-None) -> set of subscriber addresses
        self.subs: dict[tuple[str, Hashable], set[str]] = {}
        # node -> its pending tasks, its objects: one id bare while it is the
        # only one, a set from the second on (``index_add``)
        self._tasks_by_node: dict[str, TaskId | set[TaskId]] = {}
        self._objects_by_node: dict[str, ObjectId | set[ObjectId]] = {}
        # flushing (see "Flushing" in tables_flush.py): key -> segment, per table; per
        # (table, job) the keys flushed (job None: not known at the time);
        # the next segment number; the last flush's rows, for the replica
        self.flushed: dict[str, dict] = {"tasks": {}, "objects": {}}
        self.flush_jobs: dict[tuple[str, int | None], list] = {}
        self.flush_next = 0
        self.flush_out: tuple[int, tuple] | None = None
        # from the first FlushOld on: the rows that may go, per table, in
        # the order they became eligible (so a flush never scans the rows
        # that must stay, such as objects still held somewhere)
        self.flush_track = False
        self.flush_cand: dict[str, dict] = {"tasks": {}, "objects": {}}

    # -- replication support --------------------------------------------------
    def snapshot(self) -> tuple:
        """A copy for state transfer (records are immutable: shallow copies).
        Once anything was flushed, a third part holds the flush index."""
        snap = (
            {t: dict(rows) for t, rows in self.data.items()},
            {k: set(v) for k, v in self.subs.items()},
        )
        if self.flush_track:
            snap += (self._flush_state(),)
        return snap

    def _flush_state(self) -> tuple:
        return ({t: dict(idx) for t, idx in self.flushed.items()},
                {k: list(v) for k, v in self.flush_jobs.items()}, self.flush_next,
                {t: dict(c) for t, c in self.flush_cand.items()})

    @classmethod
    def restore(cls, snap: tuple[dict, dict]) -> "TablesState":
        t = cls()
        data, subs = snap[0], snap[1]
        if len(snap) > 2:
            flushed, jobs, t.flush_next, cand = snap[2]
            t.flushed = {name: dict(idx) for name, idx in flushed.items()}
            t.flush_jobs = {k: list(v) for k, v in jobs.items()}
            t.flush_cand = {name: dict(c) for name, c in cand.items()}
            t.flush_track = True
        t.data = {name: dict(rows) for name, rows in data.items()}
        t.subs = {k: set(v) for k, v in subs.items()}
        for tid, entry in t.data["tasks"].items():
            if entry.state is TaskState.PENDING and entry.node:
                index_add(t._tasks_by_node, entry.node, tid)
        for oid, entry in t.data["objects"].items():
            for n in entry.locations:
                t._index_object(n, oid)
        return t

    def fingerprint(self) -> tuple:
        """A comparable summary of the replicated state (for tests/checkers)."""
        fp = tuple(
            (name, tuple(sorted((repr(k), repr(v)) for k, v in rows.items())))
            for name, rows in sorted(self.data.items())
        )
        if self.flush_track:
            fp += (("flushed", self.flush_next, tuple(
                (name, tuple(sorted((repr(k), v) for k, v in idx.items()))) for name, idx in sorted(self.flushed.items()))),)
        return fp

    # -- flushing ---------------------------------------------------------------
    def flushed_rows(self) -> int:
        """How many rows are on disk (flushed and not brought back)."""
        return sum(len(idx) for idx in self.flushed.values())

    def flushed_segment(self, table: str, key: Hashable) -> int | None:
        """The segment holding ``key`` of ``table`` if it is flushed."""
        idx = self.flushed.get(table)
        return None if idx is None else idx.get(key)

    def flushed_wants(self, q: Query) -> tuple:
        """``((table, key, segment), ...)``: the rows ``q`` needs that are on
        disk only (empty: ``read`` answers it from memory)."""
        if isinstance(q, Get):
            keys: tuple = (q.key,)
        elif isinstance(q, GetMany):
            keys = q.keys
        else:
            return ()
        idx = self.flushed.get(q.table)
        if not idx:
            return ()
        return tuple((q.table, k, idx[k]) for k in keys if k in idx)

    def read_loaded(self, q: Query, rows: tuple) -> Any:
        """Answer ``q`` with ``rows`` (loaded from disk) filling in flushed
        keys; memory wins, and a key no longer flushed (forgotten meanwhile)
        is not filled in."""
        got = {(table, key): row for table, key, row in rows}
        idx = self.flushed.get(getattr(q, "table", ""), {})
        mem = self.data[q.table]

        def one(k: Hashable) -> Any:
            v = mem.get(k)
            if v is None and k in idx:
                v = got.get((q.table, k))
            return v

        if isinstance(q, GetMany):
            return tuple(one(k) for k in q.keys)
        return one(q.key)

    # -- subscriptions ----------------------------------------------------------
    def subscribers(self, table: str, key: Hashable) -> set[str]:
        a = self.subs.get((table, key))
        b = self.subs.get((table, None))
        if a and b:
            return a | b
        return a or b or set()

    # -- reads --------------------------------------------------------------------
    def read(self, q: Query) -> Any:
        d = self.data
        if isinstance(q, Get):
            return d[q.table].get(q.key)
        if isinstance(q, GetMany):
            rows = d[q.table]
            return tuple(rows.get(k) for k in q.keys)
        if isinstance(q, Scan):
            return tuple(d[q.table].values())
        if isinstance(q, TasksOnNode):
            tasks = d["tasks"]
            return tuple(tasks[t] for t in sorted(self.node_tasks(q.node)))
        if isinstance(q, ObjectsOnNode):
            return tuple(sorted(self.node_objects(q.node)))
        if isinstance(q, ActorsOnNode):
            return tuple(
                e
                for e in d["actors"].values()
                if e.node == q.node and e.state in (ActorState.ALIVE, ActorState.PENDING)
            )
        if isinstance(q, Keys):
            return tuple(sorted(d[q.table], key=repr))
        if isinstance(q, UnplacedTasks):
            return tuple(sorted((e for e in d["tasks"].values() if e.state is TaskState.PENDING and not e.node),
                                key=lambda e: e.spec.task_id))
        if isinstance(q, TableSizes):
            return tuple((name, len(rows)) for name, rows in d.items())
        if isinstance(q, ActorLogRange):
            log = d["actor_log"]
            out = []
            for i in range(q.start, q.end):
                v = log.get((q.actor_id, i))
                if v is None:
                    break
                # the spec logged with the call (its task row may be on
                # another shard); a bare task id: the row, if it is here
                out.append(TaskEntry(v) if isinstance(v, TaskSpec) else d["tasks"].get(v))
            return tuple(out)
        raise TypeError(f"unknown GCS query {q!r}")

    # -- what a write changes besides its row: the indexes ----------------------
    # index helpers
    def _index_task(self, tid: TaskId, old: TaskEntry | None, new: TaskEntry) -> None:
        if old is not None and old.state is TaskState.PENDING and old.node:
            # (an empty set is 216 bytes: left behind, one stayed for every
            # node that ever ran a task of this shard's, about one a task
            # at 10,000 nodes and 5,000 shards: index_discard drops it)
            index_discard(self._tasks_by_node, old.node, tid)
        if new.state is TaskState.PENDING and new.node:
            index_add(self._tasks_by_node, new.node, tid)

    def node_objects(self, node: str) -> Iterable[ObjectId]:
        """The objects this shard knows on ``node`` (in no order)."""
        return index_items(self._objects_by_node, node)

    def node_tasks(self, node: str) -> Iterable[TaskId]:
        """This shard's tasks pending on ``node`` (in no order)."""
        return index_items(self._tasks_by_node, node)

    def _index_object(self, node: str, oid: ObjectId) -> None:
        index_add(self._objects_by_node, node, oid)

    def _unindex_object(self, node: str, oid: ObjectId) -> None:
        index_discard(self._objects_by_node, node, oid)

    def _pop_node_objects(self, node: str) -> Iterable[ObjectId]:
        """Take every object off ``node`` in the index (the node died)."""
        s = self._objects_by_node.pop(node, None)
        return () if s is None else s if s.__class__ is set else (s,)

    def _put_task(self, tid: TaskId, new: TaskEntry) -> list[Change]:
        rows = self.data["tasks"]
        self._index_task(tid, rows.get(tid), new)
        rows[tid] = new
        if self.flush_track:
            self.flushed["tasks"].pop(tid, None)  # (in memory again)
            if new.state is not TaskState.PENDING and new.spec.actor_creation is None:
                self.flush_cand["tasks"][tid] = None
            else:
                self.flush_cand["tasks"].pop(tid, None)
        return [("tasks", tid, new)]

    def _put_object(self, oid: ObjectId, old: ObjectEntry | None, new: ObjectEntry) -> Change:
        old_locs = old.locations if old is not None else frozenset()
        if not old_locs:
            for n in new.locations:  # the common case: a new object
                self._index_object(n, oid)
        elif old_locs != new.locations:
            for n in old_locs - new.locations:
                self._unindex_object(n, oid)
            for n in new.locations - old_locs:
                self._index_object(n, oid)
        self.data["objects"][oid] = new
        if self.flush_track:
            self.flushed["objects"].pop(oid, None)  # (in memory again)
            if new.locations:
                self.flush_cand["objects"].pop(oid, None)
            else:
                self.flush_cand["objects"][oid] = None
        return ("objects", oid, new)
