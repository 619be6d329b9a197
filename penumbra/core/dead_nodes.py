"""How many dead nodes the cluster remembers, and the ordered set that keeps them.

A node that dies never comes back under its id (a restarted or rejoining
daemon is a new node: core/node.py), so whatever the head, the GCS and the
nodes keep about a dead node only answers late questions: a heartbeat or a
write from an incarnation cut off before it heard it was declared dead (it
is fenced or refused), ``penumbra status`` listing the dead, a straggling
location.  Kept for every dead node, that grows without bound with churn:
a node daemon that kept rejoining (20,694 incarnations in 95 minutes) grew
its head by a node's worth of state each time.

So, as Ray does (``RAY_maximum_gcs_dead_node_cached_count``, 1,000 by
default: the GCS keeps that many dead nodes in its node table and forgets
the oldest), every place that remembers dead nodes keeps the latest
``RETENTION`` of them and forgets the oldest beyond: the head's monitor and
global scheduler, each GCS shard's node rows, dead-node fence, write dedup
and subscriptions, and each node's view of the membership.  A node cut off
for longer than ``RETENTION`` later deaths is no longer recognised as dead
by its heartbeats (they are ignored as an unknown node's); the fence of the
GCS no longer refuses its writes.  Until then nothing changes: below the
bound, every structure behaves exactly as if it kept them all.

``RETENTION`` is read when a death is recorded, so a test may lower it.
"""

from __future__ import annotations

from typing import Iterator

__all__ = ["RETENTION", "DeadNodes"]

#: Dead nodes remembered (Ray: ``RAY_maximum_gcs_dead_node_cached_count``).
RETENTION = 1000


class DeadNodes:
    """Node ids declared dead, oldest first, at most ``RETENTION`` of them.

    ``add`` returns the ids forgotten to make room (oldest first), so the
    owner can drop what else it keeps about them.
    """

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: dict[str, None] = {}

    def add(self, node: str) -> list[str]:
        ids = self._ids
        if node in ids:
            return []
        ids[node] = None
        over = len(ids) - RETENTION
        if over <= 0:
            return []
        it = iter(ids)
        gone = [next(it) for _ in range(over)]
        for n in gone:
            del ids[n]
        return gone

    def discard(self, node: str) -> None:
        self._ids.pop(node, None)

    def __contains__(self, node: object) -> bool:
        return node in self._ids

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __eq__(self, other: object) -> bool:
        """Equal to a set of the same ids (it stands in for one), or to
        another ``DeadNodes`` of the same ids."""
        if isinstance(other, DeadNodes):
            return self._ids.keys() == other._ids.keys()
        if isinstance(other, (set, frozenset)):
            return self._ids.keys() == other
        return NotImplemented

    __hash__ = None  # (mutable)

    def __repr__(self) -> str:
        return f"DeadNodes({list(self._ids)!r})"
