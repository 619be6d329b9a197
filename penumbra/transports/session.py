"""The two random strings a cluster starts with (its session name and its
token), and whether a process of ours is still alive.

Kept apart from ``wire`` and ``shm_store`` so that ``init()`` can start its
daemon before it imports trio and numpy (the daemon's start-up and the
driver's imports then overlap).
"""

from __future__ import annotations

import os
import secrets

__all__ = ["new_session_name", "new_token", "pid_alive"]


def new_session_name(prefix: str = "s") -> str:
    """A fresh, unique session name (``<prefix><pid>_<random hex>``)."""
    return f"{prefix}{os.getpid()}_{secrets.token_hex(4)}"


def new_token(nbytes: int = 32) -> str:
    """A fresh random cluster token (hex), for ``serve_*``/``connect_*``."""
    return secrets.token_hex(nbytes)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not).

    ``kill(pid, 0)`` alone is not enough: a daemon started by ``penumbra
    start`` is reparented to pid 1 when the command exits, and where pid 1
    does not reap (some containers and VMs) a killed daemon stays a zombie
    forever; counting it alive would keep its shared memory and its cluster
    entry around for good.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: trust kill()
    return state not in ("Z", "X")
