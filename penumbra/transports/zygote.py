"""The zygote: forks worker processes that have already imported everything.

Starting a Python interpreter and importing trio, numpy and penumbra takes a
few hundred milliseconds; ``fork`` of a process that already did takes a few.
The daemon starts one zygote, which imports the worker's modules once and
then forks a worker for every request line it reads on stdin
(``{"worker_id": ...}``).  The zygote is single-threaded (forking a process
with threads is unsafe), dies with its daemon (``PR_SET_PDEATHSIG``), and
lets the kernel reap its children.  Each worker dies with the zygote.
"""

from __future__ import annotations

import json
import os
import signal
import sys


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def main() -> None:
    cfg = json.loads(sys.argv[1])
    token = os.environ.pop("PENUMBRA_TOKEN", "")
    _die_with_parent()
    if os.getppid() != cfg["daemon_pid"]:
        sys.exit(0)  # the daemon died before we could watch it
    # import everything a worker needs, once
    import numpy  # noqa: F401

    from penumbra.transports import worker as worker_mod

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            return  # the daemon closed our stdin: it is gone
        try:
            req = json.loads(line)
        except ValueError:
            continue
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                _die_with_parent()
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.close(devnull)
                worker_mod.run_worker(cfg, token, req["worker_id"])
            finally:
                os._exit(0)


if __name__ == "__main__":
    main()
