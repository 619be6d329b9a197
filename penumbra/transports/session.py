"""The two random strings a cluster starts with: its session name and its
token.

Kept apart from ``wire`` and ``shm_store`` so that ``init()`` can start its
daemon before it imports trio and numpy (the daemon's start-up and the
driver's imports then overlap).
"""

from __future__ import annotations

import os
import secrets

__all__ = ["new_session_name", "new_token"]


def new_session_name(prefix: str = "s") -> str:
    """A fresh, unique session name (``<prefix><pid>_<random hex>``)."""
    return f"{prefix}{os.getpid()}_{secrets.token_hex(4)}"


def new_token(nbytes: int = 32) -> str:
    """A fresh random cluster token (hex), for ``serve_*``/``connect_*``."""
    return secrets.token_hex(nbytes)
