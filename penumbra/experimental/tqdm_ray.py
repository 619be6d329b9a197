"""``tqdm_ray``: progress of work inside tasks, seen at the driver (Ray's
``ray.experimental.tqdm_ray``).

A bar inside a task cannot draw on the driver's terminal, so it reports as
plain lines (``desc: 40/100``) through the task's output, which reaches the
driver prefixed with the task's name and pid like every print of a worker.
A bar reports at most once per ``flush_interval_s`` while it moves, and
once more when it is closed (or its iterable is exhausted), so a fast loop
costs a few lines, not one per item.  The same class works in the driver.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator

__all__ = ["safe_print", "tqdm"]


class tqdm:  # noqa: N801 - Ray's (and tqdm's) name
    """A progress counter over ``iterable`` (or driven by ``update``).

    Args:
        iterable: what to count; iterate the bar to get its items.
        desc: the label at the start of each line.
        total: how many items make 100% (``len(iterable)`` when it has one).
        position, unit, ncols, leave: accepted for Ray's signature.
        flush_interval_s: least time between two reports.
    """

    def __init__(self, iterable: Iterable | None = None, desc: str | None = None, total: int | None = None,
                 position: int | None = None, flush_interval_s: float = 1.0, unit: str | None = None,
                 **_ignored: Any) -> None:
        if flush_interval_s < 0:
            raise ValueError(f"flush_interval_s must be >= 0, got {flush_interval_s!r}")
        self.iterable = iterable
        self.desc = desc or ""
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total = total
        self.unit = unit or "it"
        self.n = 0
        self._interval = flush_interval_s
        self._last = 0.0
        self._closed = False

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this tqdm was made without an iterable: call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items (and report, if the interval passed)."""
        self.n += n
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            self._report()

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def refresh(self) -> None:
        self._report()

    def close(self) -> None:
        """Report the final count once."""
        if not self._closed:
            self._closed = True
            self._report()

    def _report(self) -> None:
        of = f"/{self.total}" if self.total is not None else ""
        label = f"{self.desc}: " if self.desc else ""
        print(f"{label}{self.n}{of} {self.unit}", file=sys.stdout, flush=True)

    def __enter__(self) -> "tqdm":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def safe_print(*args: Any, **kwargs: Any) -> None:
    """``print`` that does not break a bar's lines (they are plain lines here)."""
    print(*args, **kwargs)
