"""Placement groups, as in ``ray.util.placement_group``.

A placement group reserves *bundles* of resources across the cluster, all
or none, so that a gang of tasks and actors can be scheduled into them
(``PlacementGroupSchedulingStrategy``).  The reservation itself is the
core's (``penumbra.core.placement``): this module writes the group's row
to the GCS, reads it back, and asks for readiness with a tiny task that
can only run once a bundle is reserved (as Ray does).
"""

from __future__ import annotations

import numbers
from typing import Any

from ..core.placement import STRATEGIES, InGroup
from ..core.records import PlacementGroupEntry
from ..core.specs import ResourceSet
from ..core.tables import CreatePlacementGroup, Get, RemovePlacementGroup, Scan
from .placement_group_handle import PlacementGroupHandle, PlacementGroupID

__all__ = [
    "PlacementGroup",
    "PlacementGroupID",
    "placement_group",
    "remove_placement_group",
    "get_placement_group",
    "placement_group_table",
    "get_current_placement_group",
]


class PlacementGroup(PlacementGroupHandle):
    """A handle to a placement group (picklable: pass it to tasks)."""

    def ready(self):
        """An ObjectRef that resolves (to this group) once every bundle is
        reserved; it never resolves for a group that cannot be placed
        (``get(pg.ready(), timeout=...)``) or was removed (an error)."""
        from .scheduling_strategies import PlacementGroupSchedulingStrategy

        return _ready_check.options(
            num_cpus=0, scheduling_strategy=PlacementGroupSchedulingStrategy(self), max_retries=-1,
            name=f"placement_group_ready:{self.id}",
        ).remote(self)

    def wait(self, timeout_seconds: float | None = 30) -> bool:
        """Whether the group is reserved within ``timeout_seconds``."""
        from ..api.functions import wait

        done, _ = wait([self.ready()], timeout=timeout_seconds)
        return bool(done)

    def __reduce__(self):
        return (PlacementGroup, (str(self.id), self._bundles))


def _ready(pg):
    return pg


def _make_ready_check():
    from ..api.remote_function import RemoteFunction

    return RemoteFunction(_ready, {"num_cpus": 0})


_ready_check = _make_ready_check()


def _runtime():
    from ..api.context import current_runtime

    return current_runtime(auto_init=True)


def _check_bundles(bundles: Any) -> list[dict[str, float]]:
    if not isinstance(bundles, (list, tuple)) or not bundles:
        raise ValueError(f"placement_group() needs a non-empty list of bundles (resource dicts such as "
                         f"{{'CPU': 1}}), got {bundles!r}")
    out = []
    for i, b in enumerate(bundles):
        if not isinstance(b, dict) or not b:
            raise ValueError(f"bundle {i} must be a non-empty dict of resource name -> amount, got {b!r}")
        for k, v in b.items():
            if not isinstance(k, str) or not k:
                raise ValueError(f"bundle {i}: resource names must be non-empty strings, got {k!r}")
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or v != v or v < 0:
                raise ValueError(f"bundle {i}: resource {k!r} must be a number >= 0, got {v!r}")
        if not any(v > 0 for v in b.values()):
            raise ValueError(f"bundle {i} asks for nothing ({b!r}): every bundle needs some resource > 0")
        out.append({k: float(v) for k, v in b.items() if v})
    return out


def placement_group(bundles: list[dict[str, float]], strategy: str = "PACK", name: str = "",
                    lifetime: str | None = None, _soft_target_node_id=None, bundle_label_selector=None) -> PlacementGroup:
    """Reserve ``bundles`` (resource dicts) across the cluster, all or none.

    Args:
        bundles: e.g. ``[{"CPU": 1, "GPU": 1}, {"CPU": 2}]``.
        strategy: ``"PACK"`` (as few nodes as possible), ``"SPREAD"``
            (different nodes where possible), ``"STRICT_PACK"`` (one node) or
            ``"STRICT_SPREAD"`` (each bundle on a different node).
        name: a name to find the group by (``get_placement_group``); unique
            among the live groups of the namespace.
        lifetime: ``None`` (removed when the job ends) or ``"detached"``.

    Returns at once; ``pg.ready()`` / ``pg.wait()`` tell when it is reserved.

    Raises:
        ValueError: bad bundles, strategy or lifetime, or the name is taken.
    """
    from ..api.context import task_context
    from ..core.ids import child_task_id

    specs = _check_bundles(bundles)
    if strategy not in STRATEGIES:
        raise ValueError(f"placement group strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if lifetime not in (None, "detached"):
        raise ValueError(f"placement group lifetime must be None or 'detached', got {lifetime!r}")
    if not isinstance(name, str):
        raise TypeError(f"placement group name must be a string, got {name!r}")
    rt = _runtime()
    ctx = task_context()
    pg_id = child_task_id(ctx.task_id, next(ctx.submitted)).hex()[:20]
    entry = PlacementGroupEntry(
        pg_id=pg_id, bundles=tuple(ResourceSet.from_dict(b) for b in specs), strategy=strategy,
        name=name or "", namespace=rt.namespace if name else "", job_id=ctx.job_id,
        detached=lifetime == "detached", state="PENDING", nodes=("",) * len(specs),
    )
    result = rt.gcs_request(CreatePlacementGroup(entry), timeout=60.0)
    if result is not True:
        raise ValueError(f"a placement group named {name!r} already exists in namespace {rt.namespace!r} "
                         f"(id {result}); remove it first or pick another name")
    return PlacementGroup(pg_id, specs)


def _group(pg: Any) -> PlacementGroup:
    if not isinstance(pg, PlacementGroup):
        raise TypeError(f"expected a PlacementGroup, got {type(pg).__name__}")
    return pg


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Remove the group (asynchronously): its actors are killed, its tasks
    cancelled or failed, and its resources freed."""
    pg = _group(placement_group)
    _runtime().gcs_request(RemovePlacementGroup(str(pg.id)), timeout=60.0)


def _handle(entry: PlacementGroupEntry) -> PlacementGroup:
    return PlacementGroup(entry.pg_id, [b.to_dict() for b in entry.bundles])


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live group with this name in the current namespace.

    Raises:
        ValueError: there is none.
    """
    rt = _runtime()
    for e in _rows(rt):
        if e.name == placement_group_name and e.namespace == rt.namespace and e.state != "REMOVED":
            return _handle(e)
    raise ValueError(f"Failed to look up placement group with name '{placement_group_name}' in namespace "
                     f"'{rt.namespace}': no such live group")


def _rows(rt) -> tuple:
    rows = rt.gcs_request(Scan("placement_groups"), timeout=30.0)
    return tuple(rows or ())


def _info(e: PlacementGroupEntry) -> dict:
    return {
        "placement_group_id": e.pg_id,
        "name": e.name,
        "bundles": {i: b.to_dict() for i, b in enumerate(e.bundles)},
        "bundles_to_node_id": {i: n for i, n in enumerate(e.nodes) if n},
        "strategy": e.strategy,
        "state": e.state,
        "lifetime": "detached" if e.detached else "non_detached",
    }


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict:
    """One group's state (``{"state": "CREATED", "bundles": ...}``), or, with
    no argument, every group's by id."""
    rt = _runtime()
    if placement_group is not None:
        pg = _group(placement_group)
        e = rt.gcs_request(Get("placement_groups", str(pg.id)), timeout=30.0)
        return _info(e) if e is not None else {}
    return {e.pg_id: _info(e) for e in _rows(rt)}


def get_current_placement_group() -> PlacementGroup | None:
    """The group the current task or actor runs in (None in a driver or
    outside any group)."""
    from ..api.context import task_context

    s = getattr(task_context(), "scheduling", None)
    if not isinstance(s, InGroup):
        return None
    e = _runtime().gcs_request(Get("placement_groups", s.pg_id), timeout=30.0)
    return _handle(e) if e is not None else None
