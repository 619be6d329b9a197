"""Utilities built on the public API, as in ``ray.util``.

``ActorPool`` spreads work over a fixed set of actors; ``queue.Queue`` is a
FIFO queue held by an async actor, shared by whoever holds it.  They use
nothing but the public API (``remote``, ``get``, ``wait``, ``kill``).

``placement_group`` reserves bundles of resources for a gang of tasks and
actors; ``scheduling_strategies`` says where a task or actor runs.
"""

from . import queue, scheduling_strategies
from .actor_pool import ActorPool
from .placement_group import (
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

__all__ = ["ActorPool", "queue", "scheduling_strategies", "placement_group", "get_placement_group",
           "remove_placement_group", "placement_group_table", "get_current_placement_group"]
