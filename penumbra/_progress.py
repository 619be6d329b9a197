"""Progress of long-running commands: a bar on a terminal, plain lines in a log.

``Progress(total, desc)`` draws a ``tqdm`` bar when its stream (stderr by
default) is a terminal.  Otherwise -- output captured into a log, a CI job,
a pipe -- a bar's carriage returns would make a mess of the file, so it
writes a plain line each time another tenth of the work is done (and at
the end)::

    verify: 30/300 seeds (10%), 0 failing, 4.1 s

``PENUMBRA_NO_PROGRESS=1`` silences both.  ``note`` fields (``failing=2``)
go after the count in either form.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

__all__ = ["Progress"]


class Progress:
    """Count ``total`` units of work done; see the module doc.

    Args:
        total: units in the whole run (> 0).
        desc: what is running (``"verify"``).
        unit: the name of a unit, plural (``"seeds"``).
        stream: where to write (default ``sys.stderr``).
        tty: force the terminal (True) or the plain-line (False) form;
            default: whether ``stream`` is a terminal.
    """

    def __init__(self, total: int, desc: str, unit: str = "items", stream: TextIO | None = None,
                 tty: bool | None = None) -> None:
        if total <= 0:
            raise ValueError(f"Progress needs a total > 0 units of work, got {total!r}")
        self.total = total
        self.desc = desc
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = not os.environ.get("PENUMBRA_NO_PROGRESS")
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.done = 0
        self.notes: dict[str, Any] = {}
        self._tenth = 0  # tenths of the run reported as plain lines so far
        self._t0 = time.perf_counter()
        self._bar = None
        if self.enabled and tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit.rstrip("s") or unit, file=self.stream,
                             dynamic_ncols=True, leave=True)

    def update(self, n: int = 1, **notes: Any) -> None:
        """``n`` more units are done; ``notes`` (e.g. ``failing=1``) are shown
        with the count from now on."""
        self.done += n
        self.notes.update(notes)
        if not self.enabled:
            return
        if self._bar is not None:
            if notes:
                self._bar.set_postfix(self.notes, refresh=False)
            self._bar.update(n)
            return
        tenth = min(10, self.done * 10 // self.total)
        if tenth > self._tenth:
            self._tenth = tenth
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        """The plain progress line (what a log gets)."""
        notes = "".join(f", {v} {k}" for k, v in self.notes.items())
        pct = 100 * self.done // self.total
        return (f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct}%){notes}, "
                f"{time.perf_counter() - self._t0:.1f} s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
