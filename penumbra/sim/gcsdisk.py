"""The GCS replicas' disk in the simulator (GCS flushing, Figure 10b).

A replica that flushes emits ``FlushRows(shard, segment, rows)``; one that
needs flushed rows back emits ``LoadRows`` and waits for ``RowsLoaded``
(see "Flushing" in ``core/gcs.py``).  ``SimGcsDisk`` carries both out the
way the real head daemon does with files (``transports/gcsdisk.py``): a
segment is written once per shard (every replica of a chain flushes the
same rows under the same number, so later copies are skipped), and a load
reads each whole segment it needs.  A dict stands in for the files; the
bytes are counted (pickled, as the real driver writes them) and a read
takes ``latency + bytes / bandwidth`` of simulated time.  Writes cost the
replica nothing: the real driver writes from a thread.
"""

from __future__ import annotations

import pickle
from typing import Any

from penumbra.core.messages import FlushRows, LoadRows, RowsLoaded

__all__ = ["SimGcsDisk"]


class SimGcsDisk:
    """Flushed GCS segments of one simulated cluster, by (shard, segment).

    Args:
        latency: seconds per read (a seek and a file open).
        bandwidth: bytes/second a read streams at (an SSD by default).
    """

    def __init__(self, latency: float = 100e-6, bandwidth: float = 500e6) -> None:
        if latency < 0 or bandwidth <= 0:
            raise ValueError(f"the GCS disk needs latency >= 0 and bandwidth > 0, got {latency!r}, {bandwidth!r}")
        self.latency = latency
        self.bandwidth = bandwidth
        self.segments: dict[tuple[int, int], dict[tuple[str, Any], Any]] = {}
        self.sizes: dict[tuple[int, int], int] = {}
        self.bytes_written = 0
        self.bytes_read = 0
        self.rows_written = 0
        self.loads = 0

    @property
    def handlers(self) -> dict[type, Any]:
        """``add_host`` handlers for a GCS replica's host."""
        return {FlushRows: self.on_flush, LoadRows: self.on_load}

    def on_flush(self, host: Any, cmd: FlushRows) -> None:
        key = (cmd.shard, cmd.segment)
        if key in self.segments:
            return  # another replica of the chain wrote this segment already
        self.segments[key] = {(table, k): row for table, k, row in cmd.rows}
        size = len(pickle.dumps(cmd.rows, protocol=pickle.HIGHEST_PROTOCOL))
        self.sizes[key] = size
        self.bytes_written += size
        self.rows_written += len(cmd.rows)

    def on_load(self, host: Any, cmd: LoadRows) -> None:
        rows = []
        segs = set()
        for table, k, seg in cmd.wants:
            segs.add(seg)
            found = self.segments.get((cmd.shard, seg))
            if found is not None and (table, k) in found:
                rows.append((table, k, found[(table, k)]))
        size = sum(self.sizes.get((cmd.shard, s), 0) for s in segs)
        self.bytes_read += size
        self.loads += 1
        host.deliver_after(self.latency + size / self.bandwidth,
                           RowsLoaded(token=cmd.token, rows=tuple(rows), stimulus_id=cmd.stimulus_id))

    def __repr__(self) -> str:
        return (f"<SimGcsDisk {len(self.segments)} segments, {self.rows_written} rows, "
                f"{self.bytes_written / 1e6:.1f} MB written, {self.loads} loads>")
