"""What a placement group handle holds -- its id and bundles -- as data.

Why a module of its own: the modules that validate where a task runs
(``scheduling_strategies``, ``api.options``) must check that they were given
a placement group, and they sit *below* the remote functions that use them;
``placement_group.PlacementGroup`` adds ``ready()`` and ``wait()``, which
submit a task (a remote function) and so sit *above* them.  The checks test
for the ``PlacementGroupHandle`` here, which every ``PlacementGroup`` is, so
the imports run one way.  Users meet only ``PlacementGroup``.
"""

from __future__ import annotations

__all__ = ["PlacementGroupHandle", "PlacementGroupID"]


class PlacementGroupID(str):
    """A placement group's id (a hex string; ``.hex()`` as in Ray)."""

    def hex(self) -> str:
        return str(self)


class PlacementGroupHandle:
    """A placement group's id and bundles (``placement_group.PlacementGroup``
    is the handle users get: it adds ``ready()``, ``wait()`` and pickling)."""

    def __init__(self, id: str, bundles: list[dict[str, float]]) -> None:
        self.id = PlacementGroupID(id)
        self._bundles = [dict(b) for b in bundles]

    @property
    def bundle_specs(self) -> list[dict[str, float]]:
        """The bundles, as the resource dicts the group was made with."""
        return [dict(b) for b in self._bundles]

    @property
    def bundle_count(self) -> int:
        return len(self._bundles)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroupHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"PlacementGroup(id={self.id}, bundles={self._bundles})"
