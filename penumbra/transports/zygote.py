"""The zygote: forks worker processes that have already imported everything.

Starting a Python interpreter and importing trio, numpy and penumbra takes
most of a second; ``fork`` of a process that already did takes a few
milliseconds.  The daemon forks its zygote first thing in ``main``, after
its own imports (which are most of a worker's) and before it starts any
thread or opens any socket, so the zygote starts warm and shares the
daemon's imported pages copy-on-write.  The zygote then forks a worker for
every request line it reads on its pipe (``{"worker_id": ...}``).

It is single-threaded (forking a process with threads is unsafe), dies with
its daemon (``PR_SET_PDEATHSIG``), and lets the kernel reap its children.
Each worker dies with the zygote.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from typing import Any, BinaryIO


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class ZygoteHandle:
    """The daemon's side of its zygote: the request pipe and the child's pid
    (the part of ``subprocess.Popen``'s interface the daemon uses)."""

    def __init__(self, pid: int, stdin: BinaryIO) -> None:
        self.pid = pid
        self.stdin = stdin
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the zygote (pid {self.pid}) did not exit within {timeout} s")
            time.sleep(0.005)
        return self.returncode  # type: ignore[return-value]


def fork_zygote(cfg: dict[str, Any], token: str, close_fds: tuple[int, ...] = ()) -> ZygoteHandle:
    """Fork the zygote from the calling process, which must not have started
    a thread yet.  ``close_fds`` are the caller's descriptors the zygote and
    its workers must not hold (a readiness pipe, log files)."""
    from .wire_codec import codec

    codec()  # built once, here, for the daemon, the zygote and every worker (~10 ms)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the zygote
        code = 0
        try:
            os.close(w)
            _become_zygote(close_fds)
            serve(cfg, token, os.fdopen(r, "rb"))
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(r)
    return ZygoteHandle(pid, os.fdopen(w, "wb"))


def _become_zygote(close_fds: tuple[int, ...]) -> None:
    import faulthandler

    faulthandler.disable()
    root = logging.getLogger()
    for h in list(root.handlers):  # the daemon's log is the daemon's
        root.removeHandler(h)
        try:
            h.close()
        except Exception:
            pass
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    os.environ.pop("PENUMBRA_READY_FD", None)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def serve(cfg: dict[str, Any], token: str, requests: BinaryIO) -> None:
    """The zygote's loop: one forked worker per request line, until the
    daemon closes the pipe."""
    _die_with_parent()
    if os.getppid() != cfg["daemon_pid"]:
        return  # the daemon died before we could watch it
    # whatever a worker needs and the daemon did not import
    from penumbra.transports import worker as worker_mod

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        line = requests.readline()
        if not line:
            return  # the daemon closed our pipe: it is gone
        try:
            req = json.loads(line)
        except ValueError:
            continue
        pid = os.fork()
        if pid == 0:
            try:
                requests.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                _die_with_parent()
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.close(devnull)
                worker_mod.run_worker(cfg, token, req["worker_id"])
            finally:
                os._exit(0)
