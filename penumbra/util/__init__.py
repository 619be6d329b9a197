"""Utilities built on the public API, as in ``ray.util``.

``ActorPool`` spreads work over a fixed set of actors; ``queue.Queue`` is a
FIFO queue held by an async actor, shared by whoever holds it.  They use
nothing but the public API (``remote``, ``get``, ``wait``, ``kill``).
"""

from . import queue
from .actor_pool import ActorPool

__all__ = ["ActorPool", "queue"]
