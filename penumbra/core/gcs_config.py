"""How a GCS chain is timed and when it flushes: ``GcsTiming``, ``FlushConfig``.

Plain, validated settings shared by the replicas (``gcs.py``), the chain
master (``gcs_master.py``), the head that runs it, the drivers that start
the GCS and the swarm that draws its settings; kept apart so that none of
them needs the replica to name a timeout.  ``gcs.py`` re-exports both.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GcsTiming", "FlushConfig"]


@dataclass(frozen=True, slots=True)
class FlushConfig:
    """When a GCS chain flushes old rows to disk (see "Flushing" in
    ``gcs_flush.py`` and ``tables_flush.py``).

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
