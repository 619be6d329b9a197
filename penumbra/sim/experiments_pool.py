"""Independent simulations of an experiment in a pool of worker processes.

Figure 8b's points (one cluster size each) are independent simulations:
each builds its own ``SimCluster`` from the seed, so running them in
separate processes gives the same rows and trace hashes as running them one
after another here.  ``run_points`` hands them to a
``concurrent.futures.ProcessPoolExecutor`` and gives the results back in
the order asked for.

Choices, and why:

* **Largest first.**  A point's cost grows with its nodes (the 1,000-node
  point of the full figure is most of its time), so the pool starts the big
  ones first and fills in with small ones: the last to finish is short.
* **spawn, not fork.**  By the time the pool starts, the parent may run
  threads (tqdm's monitor thread once a bar is drawn, pytest-timeout's, an
  ``init``-ed client's I/O thread); ``fork`` copies the locks they hold and
  can deadlock the child.  ``forkserver`` would avoid that too, but leaves a
  server process behind and saves nothing here: each worker lives for the
  whole run and imports penumbra once (a fraction of a second against
  minutes).  ``spawn`` is also what macOS and Windows do.
* **Progress.**  A worker reports ``(index, fraction)`` of its point on a
  queue as its simulated time advances; the parent wakes at least every
  ``POLL`` seconds, drains it and calls ``on_progress``, so the bar moves
  within long points.
* **No hangs.**  Every wait has a timeout: a worker that raises fails its
  point (``PointError`` naming it, with the worker's traceback); one that
  dies (killed, out of memory) breaks the pool and the points it was
  running are named; a point silent for ``stall_timeout`` seconds is taken
  for hung.  On any error, or an interrupt (Ctrl-C, SIGTERM), the workers
  are terminated before the parent returns; workers ignore SIGINT so that
  Ctrl-C on a terminal reaches the parent only, which cleans up.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

__all__ = ["PointError", "run_points", "default_jobs", "POLL", "STALL_TIMEOUT"]

POLL = 0.25  # seconds: how often the parent wakes to move the progress and check on workers
STALL_TIMEOUT = 1800.0  # seconds a running point may go without reporting progress before it is called hung

_reports: Any = None  # (in a worker) the queue progress goes to


class PointError(RuntimeError):
    """A point run in a worker process failed, died or hung."""


def _init_worker(reports: Any) -> None:
    global _reports
    _reports = reports
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (the parent handles Ctrl-C and terminates us)


def _run_one(call: Callable[..., dict[str, Any]], index: int, item: Any) -> dict[str, Any]:
    """In a worker: run ``call(item, on_progress)``, reporting to the parent."""
    reports = _reports
    reports.put((index, 0.0))  # (started: the stall clock of this point runs from here)
    last = [0.0]

    def on_progress(fraction: float) -> None:
        now = time.monotonic()
        if fraction >= 1.0 or now - last[0] >= 0.1:  # (a report a tenth of a second at most)
            last[0] = now
            reports.put((index, float(fraction)))

    return call(item, on_progress)


def run_points(call: Callable[..., dict[str, Any]], items: Sequence[Any], *, jobs: int,
               label: Callable[[Any], str], cost: Callable[[Any], float] = lambda item: 0.0,
               on_progress: Callable[[int, float], Any] | None = None,
               stall_timeout: float = STALL_TIMEOUT) -> list[dict[str, Any]]:
    """Run ``call(item, on_progress)`` for every item in up to ``jobs``
    worker processes; return the results in the order of ``items``.

    Args:
        call: a picklable callable (a module-level function, or a
            ``functools.partial`` of one) returning a picklable dict.
        label: names an item in errors (``"the 500-node point"``).
        cost: the larger, the earlier an item is started.
        on_progress: ``(index, fraction)`` as items advance (in the parent).
        stall_timeout: seconds a started item may go without a report.

    Raises:
        PointError: an item raised in its worker (the message names it and
            carries the worker's traceback), its worker died, or it hung.
    """
    if not (isinstance(jobs, int) and jobs >= 1):
        raise ValueError(f"jobs must be a whole number of processes >= 1, got {jobs!r}")
    if not stall_timeout > 0:
        raise ValueError(f"stall_timeout must be a number of seconds > 0, got {stall_timeout!r}")
    ctx = multiprocessing.get_context("spawn")
    reports = ctx.SimpleQueue()  # (a put is written at once: a worker that dies right after has said it started)
    results: list[dict[str, Any] | None] = [None] * len(items)
    heard: dict[int, float] = {}  # started, unfinished items: when each was last heard from
    ex = ProcessPoolExecutor(max_workers=max(1, min(jobs, len(items))), mp_context=ctx,
                             initializer=_init_worker, initargs=(reports,))
    restore = _raise_on_sigterm()
    clean = False
    try:
        order = sorted(range(len(items)), key=lambda i: (-cost(items[i]), i))
        futures: dict[Future, int] = {ex.submit(_run_one, call, i, items[i]): i for i in order}
        pending = set(futures)
        last_any = time.monotonic()
        while pending:
            done, pending = wait(pending, timeout=POLL, return_when=FIRST_COMPLETED)
            now = time.monotonic()
            while not reports.empty():
                i, fraction = reports.get()
                last_any = now
                if results[i] is None:
                    heard[i] = now
                    if on_progress is not None:
                        on_progress(i, fraction)
            for f in done:
                i = futures[f]
                try:
                    results[i] = f.result(timeout=0)
                except BrokenProcessPool:
                    running = " and ".join(label(items[j]) for j in sorted(heard)) or label(items[i])
                    raise PointError(f"a worker process ended abruptly (killed, out of memory, or crashed in C) "
                                     f"while running {running}; run with --jobs 1 to see it in this "
                                     f"process") from None
                except Exception as e:  # (the worker's exception; its traceback is chained as __cause__)
                    tb = getattr(e.__cause__, "tb", "")
                    raise PointError(f"{label(items[i])} failed in a worker process: {type(e).__name__}: {e}"
                                     + (f"\nthe worker's traceback:{tb}" if tb else "")) from e
                heard.pop(i, None)
                last_any = now
                if on_progress is not None:
                    on_progress(i, 1.0)
            hung = [j for j, t in heard.items() if now - t > stall_timeout]
            if hung or (pending and not heard and now - last_any > stall_timeout):
                what = " and ".join(label(items[j]) for j in sorted(hung)) or "the worker processes"
                raise PointError(f"{what} reported no progress for {stall_timeout:g} s: taken for hung and "
                                 f"stopped; run with --jobs 1 to watch it in this process")
        clean = True
        return [r for r in results if r is not None]
    finally:
        restore()
        if not clean:
            _terminate(ex)
        ex.shutdown(wait=True, cancel_futures=True)
        reports.close()


def _terminate(ex: ProcessPoolExecutor) -> None:
    """Stop the pool's workers now (a failure or an interrupt: they may be
    deep in a long point, which ``shutdown`` would wait for).  Python 3.11's
    executor has no public way to do this (3.14's ``terminate_workers``)."""
    procs = list((getattr(ex, "_processes", None) or {}).values())
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 5
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(timeout=5)


def _raise_on_sigterm() -> Callable[[], None]:
    """While the pool runs, SIGTERM raises ``KeyboardInterrupt`` in the main
    thread (so the ``finally`` terminates the workers) instead of ending the
    parent and leaving them running; returns what restores the handler."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    old = signal.getsignal(signal.SIGTERM)
    if old is not signal.SIG_DFL:  # (someone else handles it: leave theirs)
        return lambda: None

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    return lambda: signal.signal(signal.SIGTERM, old)


def default_jobs() -> int:
    """The default pool size: every CPU of the machine (``os.cpu_count()``)."""
    return os.cpu_count() or 1
