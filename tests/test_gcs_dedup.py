"""The GCS replicas' duplicate table (core/gcs_dedup.py): the same answers
as the dict per client it replaced, in less memory."""

from __future__ import annotations

import pickle
import random
import sys

from penumbra.core.gcs_dedup import DedupTable


class _DictPerClient:
    """The table as it was: a dict per client (the reference)."""

    def __init__(self) -> None:
        self.by: dict[str, dict[int, tuple[int, object]]] = {}

    def remember(self, client, req_id, seq, result, low_water):
        seen = self.by.get(client)
        if seen is None:
            seen = self.by[client] = {}
        seen[req_id] = (seq, result)
        if low_water:
            while seen:
                first = next(iter(seen))
                if first >= low_water:
                    break
                del seen[first]
            if len(seen) > 4096:
                for r in [r for r in seen if r < low_water]:
                    del seen[r]

    def lookup(self, client, req_id):
        seen = self.by.get(client)
        return seen.get(req_id) if seen is not None else None

    def last_req(self, client):
        seen = self.by.get(client)
        return max(seen, default=0) if seen else 0


def test_same_answers_and_snapshot_as_a_dict_per_client() -> None:
    rng = random.Random(7)
    ref, t = _DictPerClient(), DedupTable()
    clients = [f"c{i}" for i in range(6)]
    next_id = dict.fromkeys(clients, 1)
    seq = 0
    for _ in range(20_000):
        c = rng.choice(clients)
        if rng.random() < 0.15 and next_id[c] > 1:
            req = rng.randrange(1, next_id[c])  # a late retry
        else:
            req = next_id[c]
            next_id[c] += rng.choice((1, 1, 1, 2))
        low = rng.choice((0, max(1, req - rng.randrange(0, 4)), req + 1 if rng.random() < 0.02 else req))
        seq += 1
        result = rng.choice((None, True, ("row", seq)))
        ref.remember(c, req, seq, result, low)
        t.remember(c, req, seq, result, low)
        probe = rng.randrange(0, next_id[c] + 1)
        assert t.lookup(c, probe) == ref.lookup(c, probe)
        assert t.last_req(c) == ref.last_req(c)
    snap = t.as_dicts()
    assert snap == ref.by and list(snap) == list(ref.by)
    assert all(list(snap[c]) == list(ref.by[c]) for c in snap)  # the same order: the same pickle
    assert pickle.dumps(snap) == pickle.dumps(ref.by)
    back = DedupTable.from_dicts(snap)
    assert back.as_dicts() == snap and list(back.as_dicts()) == list(snap)


def test_a_client_whose_requests_were_all_forgotten_stays_in_the_snapshot() -> None:
    ref, t = _DictPerClient(), DedupTable()
    for tab in (ref, t):
        tab.remember("a", 3, 1, None, 5)  # below its own low water: forgotten at once
        tab.remember("b", 1, 2, "x", 0)
    assert t.as_dicts() == ref.by == {"a": {}, "b": {1: (2, "x")}}
    assert t.last_req("a") == 0 and t.lookup("a", 3) is None
    t.forget("b", 1)
    assert t.lookup("b", 1) is None and t.as_dicts()["b"] == {}


def test_one_entry_a_client_is_small() -> None:
    """The point of the class: the last request of a (shard, client) pair,
    kept for good on a big cluster, costs a tuple, not a dict."""
    t = DedupTable()
    t.remember("c", 10**6, 10**6, None, 10**6 - 5)
    v = t._by["c"]
    assert isinstance(v, tuple) and sys.getsizeof(v) < sys.getsizeof({1: (1, None)}) / 2
