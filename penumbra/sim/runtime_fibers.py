"""Fibers: the simulated tasks' threads, handing control to and fro.

A simulated task runs real user code that may block in the API halfway
through, so each runs on a thread of its own (a ``_Fiber``); exactly one
thread runs at any moment, and the kernel's order decides which.

Theory of operation
-------------------
**Threads and the hand-off.**  Every task body runs on a thread of its own
(a *fiber*), because it may block in the API (``get``, ``wait``, a GCS
request, ``put``) halfway through.  Exactly one thread runs at any moment:

* the *loop thread* is the driver thread that is blocked in an API call: it
  runs the kernel (``cluster.run_until``) until its answer arrives;
* when the kernel starts a task (an ``Execute``, then a ``call_at`` on the
  node at the same instant), the loop thread *switches* to a new fiber:
  it releases the fiber's ``go`` semaphore and waits on its ``back``
  semaphore;
* the fiber runs user code until it finishes (its ``Outcome`` goes to
  ``node.complete``) or blocks in the API: it then sends its messages,
  registers what it waits for, releases ``back`` and waits on ``go``
  (*parks*);
* a message to a worker's client that satisfies a parked fiber's wait
  schedules a resume on the fiber's node (``host.call_at``), as does its
  virtual timeout; the resume switches to the fiber again.

While a fiber runs, ``penumbra.api.context``'s current runtime is swapped
for the fiber's worker runtime (and restored when it parks), so the API
sees the right client; since only one thread runs, the swap is safe.  So
are ``sys.stdout`` and ``sys.stderr``, so that what a task prints is
prefixed as a real worker's output is (``_FiberOutput``).  The
order of everything is the kernel's, so the same seed and program give the
same results and the same trace hash.

``SimRuntime`` (``runtime.py``) is the loop side: it starts, resumes and
kills fibers; ``_WorkerRuntime`` (``runtime_clients.py``) is what a fiber's
code sees as its runtime.  Both appear here in annotations only, never
imported: they import this module.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from ..api import context
from ..api.execution import environment, gpu_ids_for, output_name, set_visible_gpus
from ..core.messages import Execute
from .cluster import Outcome, SimNode, SimWorker

logger = logging.getLogger("penumbra")


_START, _READY, _TIMEOUT, _KILLED = "start", "ready", "timeout", "killed"
_WALL_WARNING = 60  # seconds of wall time a task may run without handing back before we warn


class _WorkerKilled(BaseException):
    """Unwinds a task thread whose simulated worker is gone (not an
    ``Exception``, so that user code does not catch it by accident)."""


class _Wait:
    __slots__ = ("ready", "scheduled", "timed")

    def __init__(self, ready: Callable[[], bool], timed: bool) -> None:
        self.ready = ready
        self.scheduled = False
        self.timed = timed


class _FiberOutput(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` while a simulated task runs: its lines
    go to the driver's stream prefixed as a real worker's are, ``(name
    pid=N)`` (see ``execution.output_name``: the function's name, or the
    actor's class name or ``repr()``).  Every simulated worker is this
    process, so ``N`` is its pid.  A line left unended when the task parks
    or ends is written then."""

    def __init__(self, target: Any, fiber: "_Fiber") -> None:
        self.target = target
        self.fiber = fiber
        self.buf: list[str] = []
        self.in_repr = False

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.buf.append(s)
        if "\n" in s and not self.in_repr:
            self._emit()
        return len(s)

    def flush(self) -> None:
        if self.buf and not self.in_repr:
            self._emit()

    def _emit(self) -> None:
        text, self.buf = "".join(self.buf), []
        spec = self.fiber.cmd.spec
        actor = self.fiber.worker.actor_state if spec.actor_id is not None else None
        if spec.actor_creation is not None:
            cls_name = spec.actor_creation.cls.name.rsplit(".", 1)[-1]
        else:
            cls_name = type(actor).__name__ if actor is not None else ""
        self.in_repr = True  # (what an actor's __repr__ prints is written after, under the class name)
        try:
            name = output_name(spec.display_name(), actor, cls_name)
        finally:
            self.in_repr = False
        side, self.buf = "".join(self.buf), []
        self._write(text, name)
        self._write(side, cls_name)

    def _write(self, text: str, name: str) -> None:
        if not text:
            return
        prefix = f"({name} pid={os.getpid()})"
        try:
            self.target.write("".join(f"{prefix} {line}\n" for line in text.splitlines()))
            self.target.flush()
        except Exception:  # noqa: BLE001 - the driver's stream is closed: the output is lost, not the task
            pass


class _Fiber:
    """One task running on a thread of its own, switched to and from."""

    def __init__(self, sim: "SimRuntime", rt: "_WorkerRuntime", node: SimNode, worker: SimWorker,
                 cmd: Execute, body: Callable[[_Fiber], Outcome | None]) -> None:
        self.sim = sim
        self.rt = rt
        self.node = node
        self.worker = worker
        self.cmd = cmd
        self.go = threading.Semaphore(0)
        self.back = threading.Semaphore(0)
        self.reason = _START
        self.wait: _Wait | None = None
        self.done = False
        self.killed = False
        self.interrupted = False
        self.env_vars: tuple = ()  # runtime_env env_vars, set while it runs
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, args=(body,), daemon=True,
                                       name=f"penumbra-sim {worker.worker_id} {cmd.spec.display_name()}")

    def _main(self, body) -> None:
        self.go.acquire()
        try:
            self.outcome = body(self)
        except _WorkerKilled:
            self.outcome = None
        except BaseException as e:  # noqa: BLE001 - a simulator bug: re-raised on the loop thread
            self.error = e
        finally:
            self.done = True
            self.back.release()

    def switch(self, reason: str) -> None:
        """Loop side: run the fiber until it parks or ends."""
        self.reason = reason
        sim = self.sim
        prev_rt, prev_cur = context._runtime, sim.current
        prev_out, prev_err = sys.stdout, sys.stderr
        context._runtime = self.rt
        sim.current = self
        # CUDA_VISIBLE_DEVICES names the task's GPUs while it runs, as in a
        # real worker: the environment is the process's, but only one fiber
        # runs at a time, so setting it on each switch in is exact
        prev_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        set_visible_gpus(gpu_ids_for(self.cmd.gpu_ids))
        env = environment(self.env_vars)  # (its env_vars, the same way)
        env.__enter__()
        # (only one thread runs: the task's prints are its own while it does)
        out, err = sys.stdout, sys.stderr = _FiberOutput(prev_out, self), _FiberOutput(prev_err, self)
        try:
            self.go.release()
            while not self.back.acquire(timeout=_WALL_WARNING):
                logger.warning(
                    "penumbra simulator: task %s has run for %d s of wall time without handing control back "
                    "(is it blocked on a lock or event held by another simulated task? only one task runs at "
                    "a time in the simulator)", self.cmd.spec.display_name(), _WALL_WARNING)
        finally:
            env.__exit__(None, None, None)
            out.flush()
            err.flush()
            if sys.stdout is out:
                sys.stdout = prev_out
            if sys.stderr is err:
                sys.stderr = prev_err
            context._runtime = prev_rt
            sim.current = prev_cur
            if prev_visible is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = prev_visible

    def park(self) -> str:
        """Fiber side: hand control back until resumed; returns why."""
        self.back.release()
        self.go.acquire()
        return self.reason
