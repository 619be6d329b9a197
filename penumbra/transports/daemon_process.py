"""What a daemon asks the operating system about processes and memory.

The memory it may offer (``available_memory``, the default of the
``memory`` resource), whether a process lives (``_alive``) and how a
worker ended (``_exit_status``, for the reason a ``WorkerCrashed`` gives),
and how an embedded daemon learns that its driver is gone
(``PARENT_DEATH_SIGNAL``, ``_parent_gone``).  Linux only, as the daemon is;
each degrades to a safe answer where ``/proc`` or ``prctl`` is missing.
"""

from __future__ import annotations

import os
import signal

def available_memory() -> int:
    """Bytes of memory available now (``MemAvailable``), or the physical
    memory where /proc/meminfo cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 << 30


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _exit_status(pid: int) -> str:
    if not pid:
        return ""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return "" if state != "Z" else "exited"
    except OSError:
        return "killed or exited"


# What PR_SET_PDEATHSIG sends us.  Not SIGTERM: Linux sends it when the
# *thread* that started us ends, though its process lives on (a test's
# ``Cluster.add_node`` or an ``init()`` from a thread that then returns), so
# on it we stop only if the parent process is really gone.
PARENT_DEATH_SIGNAL = signal.SIGUSR2


def _set_pdeathsig() -> None:
    """Be told (``PARENT_DEATH_SIGNAL``, so we can still clean up) when our
    parent dies.  Until trio's receiver takes the signal over, it is
    harmless (``_watch_parent`` notices a parent gone meanwhile)."""
    signal.signal(PARENT_DEATH_SIGNAL, lambda signum, frame: None)
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, PARENT_DEATH_SIGNAL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _parent_gone(pid: int) -> bool:
    return os.getppid() != pid and not _alive(pid)
