"""Object spilling (Ray's): the store's pinned objects go to local disk
instead of making a put fail, and come back on ``get``.

Three layers, as the feature is built:

* the core's decision (``StoreAccounting``/``NodeMachine``): what to spill,
  when, restore on want, file deletion on release -- pure, driven by hand;
* the real runtime: a 64 MiB store holding 3x its size, byte-exact, files
  in the spill directory appearing and going, ``ObjectStoreFullError`` only
  when the disk refuses too;
* the simulator running the same program with the same results.
"""

from __future__ import annotations

from collections import deque

import pytest

from penumbra.core.gcs import GcsReplica
from penumbra.core.ids import driver_task_id, put_object_id
from penumbra.core.messages import (
    DeleteSpilled,
    Evict,
    NodeWelcome,
    ObjectRestored,
    ObjectsReady,
    ObjectsSpilled,
    PutDone,
    PutFailed,
    PutObject,
    ReleaseObjects,
    RestoreObject,
    Send,
    SetTimer,
    SpillFailed,
    SpillObjects,
    WatchObjects,
)
from penumbra.core.node import NodeConfig, NodeMachine
from penumbra.core.objects import StoreAccounting
from penumbra.core.records import ChainConfig, ErrorKind
from penumbra.core.specs import ResourceSet


def oid(i: int):
    return put_object_id(driver_task_id(1), i + 1)


# ============================================================================ the decision


def test_unpinned_objects_are_evicted_before_pinned_ones_are_spilled() -> None:
    s = StoreAccounting(100, spilling=True, spill_threshold=1.0)
    s.admit(oid(0), 30, pin=("client", "c"))
    s.admit(oid(1), 30)  # unpinned: a cached copy
    s.admit(oid(2), 30, pin=("client", "c"))
    adm = s.admit(oid(3), 30, pin=("client", "c"))
    assert adm.ok and adm.evicted == (oid(1),) and adm.spill == ()
    s.validate()


def test_pinned_objects_are_spilled_in_lru_order() -> None:
    s = StoreAccounting(100, spilling=True, spill_threshold=1.0)
    for i in range(3):
        s.admit(oid(i), 30, pin=("client", "c"))
    s.touch(oid(0))  # now 1 is the least recently used, then 2
    adm = s.admit(oid(3), 50, pin=("client", "c"))
    assert adm.ok and adm.spill == (oid(1), oid(2))
    # admitted against the room the spills will free
    assert s.used == 140 and s.spilling_bytes == 60
    s.validate()
    evict, unpinned = s.spill_done(adm.spill)
    assert evict == [oid(1), oid(2)] and unpinned == []
    assert s.used == 80 and list(s.spilled) == [oid(1), oid(2)] and s.spilled_bytes == 60
    assert s.spilled[oid(1)].pins == {("client", "c"): 1}  # the client still holds it
    s.validate()


def test_inputs_of_running_tasks_are_not_spilled() -> None:
    s = StoreAccounting(100, spilling=True, spill_threshold=1.0)
    s.admit(oid(0), 60, pin=("task", "t"))
    s.admit(oid(1), 30, pin=("client", "c"))
    adm = s.admit(oid(2), 50, pin=("client", "c"))
    assert not adm.ok and adm.error.kind is ErrorKind.OBJECT_STORE_FULL
    assert "running tasks" in adm.error.message
    s.validate()


def test_the_high_water_mark_spills_in_the_background() -> None:
    s = StoreAccounting(100, spilling=True, spill_threshold=0.5)
    assert s.admit(oid(0), 30, pin=("client", "c")).spill == ()
    adm = s.admit(oid(1), 30, pin=("client", "c"))  # 60 pinned > 50
    assert adm.ok and adm.spill == (oid(0),)
    # one batch in flight at a time
    assert s.admit(oid(2), 10, pin=("client", "c")).spill == ()
    s.validate()


def test_a_failed_spill_leaves_objects_in_memory_and_fails_the_next_admission() -> None:
    s = StoreAccounting(100, spilling=True, spill_threshold=1.0)
    s.admit(oid(0), 60, pin=("client", "c"))
    adm = s.admit(oid(1), 60, pin=("client", "c"))
    assert adm.ok and adm.spill == (oid(0),)
    s.spill_failed(adm.spill, "No space left on device: /spill")
    assert oid(0) in s.objects and s.over == 20
    s.validate()
    bad = s.admit(oid(2), 10, pin=("client", "c"))
    assert not bad.ok and "No space left on device" in bad.error.message
    assert "object spilling" in bad.error.message
    s.remove(oid(1))  # enough released: back under capacity
    assert s.over == 0
    s.validate()


CFG = ChainConfig(shard=0, epoch=1, replicas=("g",))
MiB = 1 << 20


class SpillBox:
    """A node and its GCS replica, with a hand-driven disk: the test plays
    the driver for ``SpillObjects``/``RestoreObject``."""

    def __init__(self, store: int = 100 * MiB, threshold: float = 1.0) -> None:
        self.gcs = GcsReplica("g", 0, config=CFG)
        self.node = NodeMachine("node:0", NodeConfig(
            resources=ResourceSet.of(CPU=1), object_store_memory=store, spilling=True, spill_threshold=threshold))
        self.out: list = []
        self._run([("cmds", self.node.start(0.0))])
        self.feed(NodeWelcome(configs=(CFG,)))
        self.req = 0

    def feed(self, ev):
        return self._run([("node", ev)])

    def _run(self, first):
        queue = deque(first)
        out = []
        while queue:
            target, item = queue.popleft()
            if target == "node":
                cmds = self.node.handle(item, 0.0)
                self.node.validate()
            elif target == "g":
                cmds = self.gcs.handle(item, 0.0)
            else:
                cmds = item
            for c in cmds:
                if isinstance(c, Send) and c.to == "g":
                    queue.append(("g", c.msg))
                elif isinstance(c, Send) and c.to == "node:0":
                    queue.append(("node", c.msg))
                elif isinstance(c, (SetTimer, Send)) and not (isinstance(c, Send) and c.to.startswith("c:")):
                    pass
                else:
                    out.append(c)
        self.out += out
        return out

    def put(self, i: int, size: int):
        self.req += 1
        return self.feed(PutObject(client="c:d", req_id=self.req, object_id=oid(i), size=size))

    def location(self, i: int):
        row = self.gcs.tables.data["objects"].get(oid(i))
        return None if row is None else set(row.locations)


def of(cmds, kind):
    return [c for c in cmds if isinstance(c, kind)]


def replies(cmds, kind):
    return [c.msg for c in cmds if isinstance(c, Send) and isinstance(c.msg, kind)]


def test_node_spills_restores_on_get_and_deletes_files_on_release() -> None:
    box = SpillBox(store=100 * MiB)
    for i in range(3):
        assert replies(box.put(i, 30 * MiB), PutDone)
    cmds = box.put(3, 30 * MiB)
    (spill,) = of(cmds, SpillObjects)
    assert spill.object_ids == (oid(0),) and spill.sizes == (30 * MiB,)
    # the put waits while the spill makes room (memory holds 120 of 100 MiB)
    assert not replies(cmds, PutDone) and box.node.pending_puts
    cmds = box.feed(ObjectsSpilled(object_ids=(oid(0),)))
    assert [e.object_id for e in of(cmds, Evict)] == [oid(0)]
    assert replies(cmds, PutDone)
    assert box.location(0) == {"node:0"}  # spilled on this node: still found here

    # get: restored first (which spills the least recently used, object 1)
    cmds = box.feed(WatchObjects(client="c:d", req_id=50, object_ids=(oid(0),)))
    (restore,) = of(cmds, RestoreObject)
    assert restore.object_id == oid(0) and not replies(cmds, ObjectsReady)
    cmds = box.feed(ObjectRestored(object_id=oid(0), size=30 * MiB))
    (ready,) = replies(cmds, ObjectsReady)
    assert ready.objects[0][0] == oid(0) and ready.objects[0][1].error is None
    assert [c.object_ids for c in of(cmds, SpillObjects)] == [(oid(1),)]
    assert [c.object_ids for c in of(cmds, DeleteSpilled)] == [(oid(0),)]
    box.feed(ObjectsSpilled(object_ids=(oid(1),)))

    # released: the spilled object's file and location go
    cmds = box.feed(ReleaseObjects(client="c:d", object_ids=(oid(1),), free=True))
    assert [c.object_ids for c in of(cmds, DeleteSpilled)] == [(oid(1),)]
    assert not box.location(1)
    assert not box.node.objects.store.spilled


def test_node_put_fails_only_when_the_disk_fails_too() -> None:
    box = SpillBox(store=100 * MiB)
    for i in range(3):
        box.put(i, 30 * MiB)
    (spill,) = of(box.put(3, 30 * MiB), SpillObjects)
    box.feed(SpillFailed(object_ids=spill.object_ids, reason="[Errno 28] No space left on device"))
    (failed,) = replies(box.put(4, 30 * MiB), PutFailed)
    assert failed.error.kind is ErrorKind.OBJECT_STORE_FULL
    assert "No space left on device" in failed.error.message
