"""Utilities built on the public API, as in ``ray.util``.

``ActorPool`` spreads work over a fixed set of actors.  They use nothing but
``remote``, ``get`` and ``wait``, so they run unchanged on the real runtime
and on the simulator.
"""

from .actor_pool import ActorPool

__all__ = ["ActorPool"]
