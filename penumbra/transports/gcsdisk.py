"""A daemon's disk for flushed GCS rows (GCS flushing, Figure 10b).

The GCS replicas decide what to flush and when (see "Flushing" in
``core/gcs.py``); this module only carries out their two commands:

* ``FlushRows(shard, segment, rows)``: write the rows to
  ``<session_dir>/gcs-flush/shard-<s>/segment-<n>.pkl`` (pickled
  ``{(table, key): row}``, written to a temporary name and renamed, so a
  reader never sees half a file).  Every replica of a chain flushes the same
  rows under the same number, and the replicas of one daemon share this
  directory, so the first write of a segment serves them all and later ones
  are skipped.  Every daemon hosting replicas (the head, a node started with
  ``--gcs-replica``) writes its own copy; a replica joining after a flush
  writes the rows it copied from the tail the same way (see "Joining" in
  ``core/gcs.py``), since a new daemon's session directory starts empty.
* ``LoadRows(shard, token, wants)``: read the segments named, wait for one
  still being written, and deliver ``RowsLoaded(token, rows)`` to the
  replica that asked.  A few recently read segments stay in memory: a
  reconstruction reads rows of the same tasks, flushed together.

Disk work runs in a worker thread (``trio.to_thread``), never on the trio
thread that runs the machines.  The files go with the session directory.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections import OrderedDict
from typing import Any

import trio

from ..core.messages import FlushRows, LoadRows, RowsLoaded

__all__ = ["GcsDisk"]

logger = logging.getLogger("penumbra.gcsdisk")


def _write_segment(path: str, rows: tuple) -> int:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    data = pickle.dumps({(table, key): row for table, key, row in rows}, protocol=pickle.HIGHEST_PROTOCOL)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return len(data)


def _read_segment(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except FileNotFoundError:
        # (the replica then sees the rows as missing, not a hang)
        logger.warning("flushed GCS segment %s is missing; its rows read as absent", path)
        return {}


class GcsDisk:
    """Flushed GCS segments of the head daemon, under ``directory``.

    Args:
        directory: where segment files go (``<session_dir>/gcs-flush``).
        host: the ``MachineHost`` running the replicas (completions go back
            through ``host.deliver``).
        nursery: where the disk tasks run.
        cache_segments: how many recently read segments to keep in memory.
    """

    def __init__(self, directory: str, host: Any, nursery: trio.Nursery, cache_segments: int = 4) -> None:
        self.directory = directory
        self.host = host
        self.nursery = nursery
        self.cache_segments = cache_segments
        self._written: set[tuple[int, int]] = set()
        self._writing: dict[tuple[int, int], trio.Event] = {}
        self._cache: OrderedDict[tuple[int, int], dict] = OrderedDict()
        self.bytes_written = 0
        self.rows_written = 0
        self.loads = 0

    def install(self) -> "GcsDisk":
        self.host.on(FlushRows, self.on_flush)
        self.host.on(LoadRows, self.on_load)
        return self

    def path(self, shard: int, segment: int) -> str:
        return os.path.join(self.directory, f"shard-{shard}", f"segment-{segment}.pkl")

    # -- commands (on the trio thread: start the work, never wait) ----------
    def on_flush(self, src: str, cmd: FlushRows) -> None:
        key = (cmd.shard, cmd.segment)
        if key in self._written or key in self._writing:
            return  # another replica of the chain flushed the same segment
        self._writing[key] = trio.Event()
        self.nursery.start_soon(self._write, key, cmd.rows)

    def on_load(self, src: str, cmd: LoadRows) -> None:
        self.nursery.start_soon(self._load, src, cmd)

    # -- the work ---------------------------------------------------------------
    async def _write(self, key: tuple[int, int], rows: tuple) -> None:
        try:
            n = await trio.to_thread.run_sync(_write_segment, self.path(*key), rows)
            self.bytes_written += n
            self.rows_written += len(rows)
            self._written.add(key)
        except OSError as e:  # a full or broken disk: the rows read as missing later
            logger.error("could not write flushed GCS segment %s: %s", self.path(*key), e)
        finally:
            self._writing.pop(key).set()

    async def _segment(self, key: tuple[int, int]) -> dict:
        seg = self._cache.get(key)
        if seg is not None:
            self._cache.move_to_end(key)
            return seg
        pending = self._writing.get(key)
        if pending is not None:
            await pending.wait()
        seg = await trio.to_thread.run_sync(_read_segment, self.path(*key))
        self._cache[key] = seg
        while len(self._cache) > self.cache_segments:
            self._cache.popitem(last=False)
        return seg

    async def _load(self, src: str, cmd: LoadRows) -> None:
        rows = []
        for table, key, segment in cmd.wants:
            seg = await self._segment((cmd.shard, segment))
            row = seg.get((table, key))
            if row is not None:
                rows.append((table, key, row))
        self.loads += 1
        self.host.deliver(src, RowsLoaded(token=cmd.token, rows=tuple(rows), stimulus_id=cmd.stimulus_id))
