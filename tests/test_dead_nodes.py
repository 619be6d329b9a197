"""Dead nodes cost the head bounded memory (core/dead_nodes.py).

A node daemon that kept rejoining made 20,694 incarnations in 95 minutes,
and everything the head, the GCS and the other nodes kept per dead node
grew with them.  Now each keeps the latest ``RETENTION`` dead nodes (Ray:
``RAY_maximum_gcs_dead_node_cached_count``) and forgets the oldest; below
the bound nothing changes.
"""

from __future__ import annotations

import gc
import tracemalloc

import pytest

import penumbra.core.dead_nodes as dead_nodes
from penumbra.core.dead_nodes import DeadNodes
from penumbra.core.messages import Fenced, Heartbeat
from penumbra.core.records import NodeLoad
from penumbra.core.specs import ResourceSet
from penumbra.verification.node_churn import NodeChurn


@pytest.fixture
def retention(monkeypatch):
    monkeypatch.setattr(dead_nodes, "RETENTION", 20)
    return 20


def test_dead_nodes_keep_the_latest_and_say_which_they_forgot(retention):
    d = DeadNodes()
    forgotten = [old for i in range(25) for old in d.add(f"n{i}")]
    assert forgotten == [f"n{i}" for i in range(5)]
    assert list(d) == [f"n{i}" for i in range(5, 25)] and len(d) == 20
    assert "n4" not in d and "n5" in d
    assert d.add("n5") == []  # (already there: stays where it was)
    d.discard("n5")
    assert "n5" not in d and d == {f"n{i}" for i in range(6, 25)}


def _sizes_of_what_is_kept(c: NodeChurn) -> dict:
    head = c.head
    reps = [m for a, m in c.net.machines.items() if a.startswith("gcs:")]
    node = c.net.machines["node:0"]
    return {
        "head.dead_nodes": len(head.dead_nodes),
        "head.scheduler.nodes": len(head.scheduler.nodes),
        "gcs.dead_nodes": max(len(r.tables.data["dead_nodes"]) for r in reps),
        "gcs.nodes": max(len(r.tables.data["nodes"]) for r in reps),
        "gcs.dedup": max(len(r.dedup) for r in reps),
        "gcs.floors": max(len(r.floors) for r in reps),
        "gcs.subscribers": max(sum(len(s) for s in r.tables.subs.values()) for r in reps),
        "node.nodes": len(node.nodes),
        "node.dead": len(node.objects.dead_nodes),
        "node.gcs.versions": len(node.gcs.versions),
    }


@pytest.mark.timeout(120)
def test_the_head_keeps_bounded_state_however_many_nodes_die(retention):
    c = NodeChurn(shards=2)
    for _ in range(60):
        c.incarnation()
    sizes_60, bytes_60 = _sizes_of_what_is_kept(c), c.retained()
    for _ in range(240):
        c.incarnation()
    sizes_300, bytes_300 = _sizes_of_what_is_kept(c), c.retained()
    assert sizes_300 == sizes_60, (sizes_60, sizes_300)
    assert sizes_300["head.dead_nodes"] == retention and sizes_300["gcs.dead_nodes"] == retention
    for addr, n in bytes_300.items():  # (pickled state: what each machine keeps, exactly)
        assert n <= bytes_60[addr] * 1.02, (addr, bytes_60[addr], n)
    # the cluster works on: the lasting node is alive and monitored
    assert "node:0" in c.head.misses and sorted(c.head.scheduler.alive_nodes()) == ["node:0"]


@pytest.mark.timeout(120)
def test_retained_memory_stays_flat_across_incarnations(retention):
    """tracemalloc: after a warm-up, 200 more incarnations add (next to)
    nothing the head, the GCS and the lasting node keep.  (Before the bound,
    about 1.5 KB each, growing with every one.)"""
    c = NodeChurn()
    for _ in range(60):
        c.incarnation()
    gc.collect()
    tracemalloc.start()
    try:
        for _ in range(20):
            c.incarnation()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            c.incarnation()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    per = (after - before) / 200
    assert per < 150, f"{per:.0f} B retained per dead node"


def test_a_dead_node_in_the_window_is_still_fenced(retention):
    c = NodeChurn()
    gone = [c.incarnation() for _ in range(30)]
    head = c.head
    recent, forgotten = gone[-1], gone[0]
    load = NodeLoad(queue_length=0, running=0, available=ResourceSet.of(CPU=2), total=ResourceSet.of(CPU=2),
                    mean_task_time=0.0)
    cmds = head.handle(Heartbeat(node_id=recent, load=load, seq=7), c.net.now)
    assert [type(cmd.msg) for cmd in cmds] == [Fenced], cmds
    # one dead longer ago than the bound is not known any more: ignored, as an unknown node's
    assert head.handle(Heartbeat(node_id=forgotten, load=load, seq=7), c.net.now) == []


@pytest.mark.timeout(120)
def test_every_replica_of_a_chain_forgets_the_same_dead_nodes(retention):
    """Forgetting is part of applying ``NodeDown``, so the replicas of a
    chain stay identical (tables, subscriptions, dedup) past the bound."""
    c = NodeChurn(chain=3)
    for _ in range(3 * retention):
        c.incarnation()
    c.net.run_for(0.5)  # (the last writes reach the tail)
    reps = [m for a, m in sorted(c.net.machines.items()) if a.startswith("gcs:")]
    assert len(reps) == 3
    first = reps[0]
    assert len(first.tables.data["dead_nodes"]) == retention
    for r in reps[1:]:
        assert r.tables.fingerprint() == first.tables.fingerprint()
        assert r.tables.subs == first.tables.subs
        assert r.dedup.as_dicts() == first.dedup.as_dicts() and r.floors == first.floors
