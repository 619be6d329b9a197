"""The GCS replicas' disk in the simulator (GCS flushing, Figure 10b).

A replica that flushes emits ``FlushRows(shard, segment, rows)``; one that
needs flushed rows back emits ``LoadRows`` and waits for ``RowsLoaded``
(see "Flushing" in ``core/gcs.py``).  ``SimGcsDisk`` carries both out the
way the real daemons do with files (``transports/gcsdisk.py``), and a load
reads each whole segment it needs.  A dict stands in for the files; the
bytes are counted (pickled, as the real driver writes them) and a read
takes ``latency + bytes / bandwidth`` of simulated time.  Writes cost the
replica nothing: the real driver writes from a thread.

Whose disk: each replica's own.  A replica finds only the segments *it*
wrote (flushing, or copying them when it joined after a flush, see
"Joining" in ``core/gcs.py``), never another replica's, so a join that
forgot the rows shows up here as it would on real hosts.  A restarted
replica starts with an empty disk (``forget``): the real runtime's replicas
restart in a fresh daemon (a node that rejoins, a recovered head) and find
no files of their predecessor, and a node-hosted replica's segments go with
its node.  (This is stricter than the real head daemon, whose replicas share
one directory: sharing could only hide a copy that was never made.)  The
totals count each (shard, segment) once, as a cluster-wide disk did, plus
the further copies (``rows_replicated``).
"""

from __future__ import annotations

import pickle
from typing import Any

from penumbra.core.messages import FlushRows, LoadRows, RowsLoaded

__all__ = ["SimGcsDisk"]


class SimGcsDisk:
    """Flushed GCS segments of one simulated cluster: per replica, by
    (shard, segment).

    Args:
        latency: seconds per read (a seek and a file open).
        bandwidth: bytes/second a read streams at (an SSD by default).
    """

    def __init__(self, latency: float = 100e-6, bandwidth: float = 500e6) -> None:
        if latency < 0 or bandwidth <= 0:
            raise ValueError(f"the GCS disk needs latency >= 0 and bandwidth > 0, got {latency!r}, {bandwidth!r}")
        self.latency = latency
        self.bandwidth = bandwidth
        # replica -> (shard, segment) -> {(table, key): row}, and its size
        self.disks: dict[str, dict[tuple[int, int], dict[tuple[str, Any], Any]]] = {}
        self.sizes: dict[str, dict[tuple[int, int], int]] = {}
        self._first: set[tuple[int, int]] = set()  # (shard, segment) written somewhere
        self.bytes_written = 0
        self.bytes_read = 0
        self.rows_written = 0
        self.rows_replicated = 0  # the chain's further copies (every replica writes its own)
        self.loads = 0

    def segments(self, replica: str) -> dict[tuple[int, int], dict[tuple[str, Any], Any]]:
        """What ``replica``'s disk holds: (shard, segment) -> rows."""
        return self.disks.get(replica, {})

    def forget(self, replica: str) -> None:
        """``replica`` restarts empty: its disk starts empty too."""
        self.disks.pop(replica, None)
        self.sizes.pop(replica, None)

    @property
    def handlers(self) -> dict[type, Any]:
        """``add_host`` handlers for a GCS replica's host."""
        return {FlushRows: self.on_flush, LoadRows: self.on_load}

    def on_flush(self, host: Any, cmd: FlushRows) -> None:
        key = (cmd.shard, cmd.segment)
        disk = self.disks.setdefault(host.address, {})
        if key in disk:
            return  # written once: a segment's content never changes
        disk[key] = {(table, k): row for table, k, row in cmd.rows}
        size = len(pickle.dumps(cmd.rows, protocol=pickle.HIGHEST_PROTOCOL))
        self.sizes.setdefault(host.address, {})[key] = size
        if key in self._first:
            self.rows_replicated += len(cmd.rows)
            return
        self._first.add(key)
        self.bytes_written += size
        self.rows_written += len(cmd.rows)

    def on_load(self, host: Any, cmd: LoadRows) -> None:
        rows = []
        segs = set()
        disk = self.disks.get(host.address, {})
        for table, k, seg in cmd.wants:
            segs.add(seg)
            found = disk.get((cmd.shard, seg))
            if found is not None and (table, k) in found:
                rows.append((table, k, found[(table, k)]))
        sizes = self.sizes.get(host.address, {})
        size = sum(sizes.get((cmd.shard, s), 0) for s in segs)
        self.bytes_read += size
        self.loads += 1
        host.deliver_after(self.latency + size / self.bandwidth,
                           RowsLoaded(token=cmd.token, rows=tuple(rows), stimulus_id=cmd.stimulus_id))

    def __repr__(self) -> str:
        return (f"<SimGcsDisk {len(self._first)} segments, {self.rows_written} rows, "
                f"{self.bytes_written / 1e6:.1f} MB written, {self.loads} loads>")
