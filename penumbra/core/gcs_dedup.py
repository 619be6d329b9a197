"""A GCS replica's duplicate table: ``(client, req_id) -> (seq, result)``.

Why a class of its own: memory.  Every replica remembers the requests it
applied, per client, until the client's ``low_water`` passes them (see
"Duplicates" in ``gcs.py``).  The low water only reaches a replica with the
client's next write to the *same shard*, so on a big cluster (10,000 nodes
over 5,000 shards: a node writes to a given shard a few times at most) the
last request of almost every (shard, client) pair is kept for good.  A dict
per pair holding one entry cost about 340 bytes (the dict, its key table,
the ``(seq, result)`` tuple); here a client with exactly one entry keeps a
bare ``(req_id, seq, result)`` tuple instead (~64 bytes), and only a client
with several requests outstanding has a dict.

What it answers is exactly what the dict per client answered, in the same
order: ``as_dicts()`` rebuilds that form (``{client: {req_id: (seq,
result)}}``, clients and requests in the order they were first remembered,
a client whose requests were all forgotten kept with an empty dict) for
the state snapshot a joining replica copies, so the snapshot -- and every
trace that records it -- is the same as before.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DedupTable"]

_TRIM_ALL_ABOVE = 4096  # a client with more entries: sweep them all for late retries


class DedupTable:
    """``(client, req_id) -> (seq, result)`` of the writes a replica applied.

    Per client the value is a ``(req_id, seq, result)`` tuple (one entry) or a
    dict ``{req_id: (seq, result)}`` in the order remembered (none or several).
    """

    __slots__ = ("_by",)

    def __init__(self) -> None:
        self._by: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._by)

    def lookup(self, client: str, req_id: int) -> tuple[int, Any] | None:
        """``(seq, result)`` of ``req_id`` from ``client``, if remembered."""
        v = self._by.get(client)
        if v is None:
            return None
        if v.__class__ is tuple:
            return (v[1], v[2]) if v[0] == req_id else None
        return v.get(req_id)

    def remember(self, client: str, req_id: int, seq: int, result: Any, low_water: int) -> None:
        """Remember ``req_id``'s outcome and forget ``client``'s requests below
        ``low_water`` (every id below it was answered): mostly from the front,
        since requests arrive in id order, and all of them now and then for
        retries that arrived late."""
        by = self._by
        v = by.get(client)
        if v is None:
            if not low_water or req_id >= low_water:
                by[client] = (req_id, seq, result)  # the common case: one entry
                return
            seen: dict[int, Any] = {}
        elif v.__class__ is tuple:
            seen = {v[0]: (v[1], v[2])}
        else:
            seen = v
        seen[req_id] = (seq, result)
        if low_water:
            while seen:
                first = next(iter(seen))
                if first >= low_water:
                    break
                del seen[first]
            if len(seen) > _TRIM_ALL_ABOVE:
                for r in [r for r in seen if r < low_water]:
                    del seen[r]
        if len(seen) == 1:
            (r, (s, res)), = seen.items()
            by[client] = (r, s, res)
        else:
            by[client] = seen

    def forget_client(self, client: str) -> None:
        """Forget every request of ``client`` (a node dead long ago: see
        core/dead_nodes.py)."""
        self._by.pop(client, None)

    def forget(self, client: str, req_id: int) -> None:
        """Forget one request (used by a planted bug of the swarm)."""
        v = self._by.get(client)
        if v is None:
            return
        if v.__class__ is tuple:
            if v[0] == req_id:
                self._by[client] = {}
        else:
            v.pop(req_id, None)

    def last_req(self, client: str) -> int:
        """The highest request id remembered from ``client`` (0: none)."""
        v = self._by.get(client)
        if not v:
            return 0
        if v.__class__ is tuple:
            return v[0]
        return max(v)

    def as_dicts(self) -> dict[str, dict[int, tuple[int, Any]]]:
        """``{client: {req_id: (seq, result)}}``: the snapshot's form (fresh
        dicts: the snapshot does not share them with this table)."""
        return {c: ({v[0]: (v[1], v[2])} if v.__class__ is tuple else dict(v)) for c, v in self._by.items()}

    @classmethod
    def from_dicts(cls, dicts: dict[str, dict[int, tuple[int, Any]]]) -> DedupTable:
        """The table a snapshot's ``as_dicts()`` describes."""
        t = cls()
        by = t._by
        for c, v in dicts.items():
            if len(v) == 1:
                (r, (s, res)), = v.items()
                by[c] = (r, s, res)
            else:
                by[c] = dict(v)
        return t
