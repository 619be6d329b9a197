"""Scheduling strategies, as in ``ray.util.scheduling_strategies``.

Pass one as ``scheduling_strategy=`` to ``@remote`` or ``.options()`` (tasks
and actors), or the strings ``"DEFAULT"`` (the bottom-up scheduler's
choice) and ``"SPREAD"`` (spread over the nodes, least loaded first).
``api.options.scheduling_for`` turns them into the core's terms
(``core.placement.InGroup`` / ``OnNode``).
"""

from __future__ import annotations

from typing import Any

from .placement_group_handle import PlacementGroupHandle

__all__ = ["PlacementGroupSchedulingStrategy", "NodeAffinitySchedulingStrategy", "DEFAULT_SCHEDULING_STRATEGY",
           "SPREAD_SCHEDULING_STRATEGY"]

DEFAULT_SCHEDULING_STRATEGY = "DEFAULT"
SPREAD_SCHEDULING_STRATEGY = "SPREAD"


class PlacementGroupSchedulingStrategy:
    """Run in a placement group's reserved resources.

    Args:
        placement_group: the group (``None``: explicitly *not* in a group,
            even inside a task whose group captures its children).
        placement_group_bundle_index: the bundle to run in; -1 (the
            default): any bundle of the group.
        placement_group_capture_child_tasks: tasks and actors this one
            creates go into the group too, unless they say otherwise.

    Raises:
        ValueError: a bundle index out of range, or a request that fits no
            bundle (raised when the task is submitted).
    """

    def __init__(self, placement_group: Any, placement_group_bundle_index: int = -1,
                 placement_group_capture_child_tasks: bool | None = None) -> None:
        if placement_group is not None and not isinstance(placement_group, PlacementGroupHandle):
            raise TypeError(f"placement_group must be a PlacementGroup (from penumbra.util.placement_group"
                            f".placement_group()) or None, got {type(placement_group).__name__}")
        if isinstance(placement_group_bundle_index, bool) or not isinstance(placement_group_bundle_index, int):
            raise TypeError(f"placement_group_bundle_index must be an int, got {placement_group_bundle_index!r}")
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks

    def __repr__(self) -> str:
        return (f"PlacementGroupSchedulingStrategy({self.placement_group!r}, "
                f"bundle_index={self.placement_group_bundle_index}, "
                f"capture_child_tasks={self.placement_group_capture_child_tasks})")


class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id`` (as ``get_runtime_context().get_node_id()``
    or ``nodes()[i]["NodeID"]`` name it).

    With ``soft=False`` the task fails with ``TaskUnschedulableError`` (an
    actor dies) when that node is dead or can never fit the request; with
    ``soft=True`` it then runs wherever the scheduler puts it.
    """

    def __init__(self, node_id: str, soft: bool, _spill_on_unavailable: bool = False,
                 _fail_on_unavailable: bool = False) -> None:
        if not isinstance(node_id, str) or not node_id:
            raise TypeError(f"NodeAffinitySchedulingStrategy needs a node id string, got {node_id!r}")
        self.node_id = node_id
        self.soft = bool(soft)
        self._spill_on_unavailable = _spill_on_unavailable
        self._fail_on_unavailable = _fail_on_unavailable

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"
