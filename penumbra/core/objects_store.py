"""One node's object store, in numbers: what is in it, who pins it, what goes.

Theory of operation
-------------------
``StoreAccounting`` is the bookkeeping of one node's object store: which
objects are in it, their sizes, who pins them, and least-recently-used order.
It never touches bytes (the driver's store does); it decides.  Rules:

* ``used`` never exceeds ``capacity``;
* a pinned object is never evicted (pins are counted per holder: a task using
  the object as an input, a client that ``put`` it);
* to admit an object, unpinned objects are evicted oldest first, and only if
  that frees enough room; otherwise nothing is evicted and admission fails
  with the sizes involved (the user sees ``ObjectStoreFullError``);
* an object lineage cannot rebuild (``final``: an actor method's output, see
  core/lineage.py) goes last: only once every other unpinned object is
  chosen, and spilling (below) cannot make the rest of the room.  Evicting
  one loses it for good (``ObjectLostError``) while a caller may still hold
  its ref; a task's output evicted instead is only re-run if wanted.  (Found
  by the real-runtime swarm, seed 27 in 8 MiB stores: a 1 MiB output
  evicted the 8-byte results of 30 actor calls, the oldest in the store,
  before the driver read them.)

Spilling (``spilling=True``; Ray's object spilling).  Objects pinned only by
clients (a ``put`` whose ref is alive) can leave memory for the node's local
disk instead of making admission fail.  (A task's output is not pinned:
nothing counts references to it -- see ``api/refs.py`` -- so it is still
evicted and rebuilt from lineage; spilled, its file would stay until the
job ended, as nobody would say when it may go.)

* an admission that eviction cannot satisfy picks pinned objects, least
  recently used first, to spill (``SpillObjects``); the new object is
  admitted at once, against the room the spills will free (their bytes are
  *spilling*: in memory until the write completes, then ``Evict``).  So
  ``used - spilling_bytes <= capacity`` always (``over`` aside, below);
* past the high-water mark (``spill_threshold`` of capacity in pinned
  bytes) the same happens in the background, one batch in flight at a time,
  so that a later admission rarely has to wait for a spill;
* a spilled object is *spilled on this node*: its GCS location stays (a
  fetch from another node reads the file), its pins stay (the client still
  holds the ref), and wanting it here restores it (``RestoreObject``), which
  is an admission like any other (it may spill others);
* a restored object keeps its file (``disk_copy``), as Ray does: spilling it
  again is free (``Evict`` only, no write); the file is deleted
  (``DeleteSpilled``) once the object leaves for good -- freed, evicted,
  unpinned while spilled (an unpinned spilled object is evicted, as an
  unpinned one in memory would be), or its job ended;
* ``SpillFailed`` (the disk is full or unwritable) leaves the objects in
  memory; what was admitted against them is ``over`` capacity until enough
  is dropped, and until the disk may have room again (one of our spill
  files is deleted, or ``ObjectManager.SPILL_RETRY`` seconds pass) an
  admission that needs a spill fails with ``ObjectStoreFullError`` carrying
  the disk's reason.
``ObjectManager`` (``objects.py``) owns one and turns its decisions into
commands; this module only decides.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Hashable

from .ids import ObjectId
from .records import ErrorInfo, ErrorKind

__all__ = ["StoreAccounting", "Admission"]


@dataclass(slots=True)
class _Stored:
    size: int
    pins: dict[Hashable, int] = field(default_factory=dict)
    final: bool = False  # lineage cannot rebuild it: evicted last (see the module docstring)


@dataclass(frozen=True, slots=True)
class Admission:
    ok: bool
    evicted: tuple[ObjectId, ...] = ()
    error: ErrorInfo | None = None
    spill: tuple[ObjectId, ...] = ()  # pinned objects to write to disk now
    to_disk: tuple[ObjectId, ...] = ()  # pinned objects already on disk: just leave memory


def _client_only(o: _Stored) -> bool:
    """Whether only clients pin ``o`` (a put whose ref is alive): such an
    object may be spilled.  An input of a running task is being read from
    memory, so it stays."""
    return bool(o.pins) and all(type(h) is tuple and h[0] == "client" for h in o.pins)


_ADMITTED = Admission(True)  # (immutable: shared by every plain admission)


class StoreAccounting:
    """Capacity, pins and LRU order of one node's object store."""

    def __init__(self, capacity: int, spilling: bool = False, spill_threshold: float = 0.8) -> None:
        if capacity <= 0:
            raise ValueError(f"object store capacity must be > 0 bytes, got {capacity}")
        if not 0.0 < spill_threshold <= 1.0:
            raise ValueError(f"the spilling threshold is a fraction of the store's capacity in (0, 1], "
                             f"got {spill_threshold!r} (Ray's default is 0.8)")
        self.capacity = capacity
        self.used = 0
        self.pinned_bytes = 0
        self.objects: OrderedDict[ObjectId, _Stored] = OrderedDict()  # LRU first
        self.evictions = 0
        # ---- spilling (see the module docstring)
        self.spilling_enabled = spilling
        self.spill_threshold = spill_threshold
        self.spilling: set[ObjectId] = set()  # in memory, being written to disk
        self.spilling_bytes = 0
        self.spilled: OrderedDict[ObjectId, _Stored] = OrderedDict()  # on disk only (pins kept)
        self.spilled_bytes = 0
        self.restoring: set[ObjectId] = set()
        self.disk_copy: set[ObjectId] = set()  # in memory, and their spill file is still valid
        self.spill_error: str | None = None  # why the last spill failed (None once one succeeds)
        self.over = 0  # bytes admitted against spills that failed
        self.files_to_delete: list[ObjectId] = []  # spill files the driver must delete
        self.unpinned_spilled: list[ObjectId] = []  # spilled objects whose last pin went
        self.spills = 0
        self.restores = 0

    def __contains__(self, oid: ObjectId) -> bool:
        return oid in self.objects

    def size_of(self, oid: ObjectId) -> int:
        return self.objects[oid].size

    def touch(self, oid: ObjectId) -> None:
        if oid in self.objects:
            self.objects.move_to_end(oid)

    def is_pinned(self, oid: ObjectId) -> bool:
        o = self.objects.get(oid)
        return o is not None and bool(o.pins)

    def admit(self, oid: ObjectId, size: int, pin: Hashable | None = None, restored: bool = False,
              final: bool = False) -> Admission:
        """Make room for and record ``oid``; evicts unpinned objects (LRU),
        then spills pinned ones if spilling is on, then evicts unpinned
        ``final`` ones.  ``restored``: its bytes were read back from its
        spill file, which stays valid.  ``final``: lineage cannot rebuild
        ``oid`` (an actor method's output), so it is evicted last."""
        if size < 0:
            raise ValueError(f"object size must be >= 0, got {size}")
        existing = self.objects.get(oid)
        if existing is not None:
            self.objects.move_to_end(oid)
            existing.final = existing.final or final
            if pin is not None:
                self.pin(oid, pin)
            return _ADMITTED
        need = self.used - self.spilling_bytes + size - self.capacity
        victims: list[ObjectId] = []
        spill: list[ObjectId] = []
        if need > 0:
            freed = self._victims(need, False, victims)
            if freed < need and self.spilling_enabled and self.spill_error is None:
                spill = self._spill_candidates(need - freed)
                freed += sum(self.objects[o].size for o in spill)
            if freed < need:
                freed += self._victims(need - freed, True, victims)
            if freed < need:
                return Admission(False, error=self._full_error(oid, size))
            for vid in victims:
                self._drop(vid)
            self.evictions += len(victims)
        old = self.spilled.pop(oid, None)
        if old is not None:
            # a copy on disk from before (a restore, or the task re-ran):
            # memory holds it now, with the pins it had
            self.spilled_bytes -= old.size
            self.restoring.discard(oid)
            if restored and old.pins:
                self.disk_copy.add(oid)
            else:  # (unpinned: it will be evicted, never spilled again)
                self._delete_file(oid)
        self.objects[oid] = _Stored(size, final=final)
        self.used += size
        if old is not None and old.pins:
            self.objects[oid].pins = old.pins
            self.pinned_bytes += size
        if pin is not None:
            self.pin(oid, pin)
        write, moved = self.start_spills(spill)
        w2, m2 = self.start_spills(self.background_spill())
        if victims or write or moved or w2 or m2:
            return Admission(True, tuple(victims), spill=tuple(write + w2), to_disk=tuple(moved + m2))
        return _ADMITTED

    def _victims(self, need: int, final: bool, out: list[ObjectId]) -> int:
        """Add to ``out`` unpinned objects whose ``final`` is ``final``,
        least recently used first, until their sizes reach ``need``; returns
        their total size."""
        freed = 0
        for vid, v in self.objects.items():
            if v.pins or v.final is not final or vid in self.spilling:
                continue
            out.append(vid)
            freed += v.size
            if freed >= need:
                break
        return freed

    def _full_error(self, oid: ObjectId, size: int) -> ErrorInfo:
        if self.spilling_enabled and self.spill_error is not None:
            why = (f"and spilling to disk failed: {self.spill_error}. Free space in the object spilling "
                   f"directory (or point object_spilling_directory at a disk with room), free references "
                   f"to objects you no longer need, or start the node with a larger object_store_memory.")
        elif self.spilling_enabled:
            why = ("and what is pinned cannot be spilled to disk (inputs of running tasks). Free references "
                   "to objects you no longer need, run fewer tasks at once, or start the node with a "
                   "larger object_store_memory.")
        else:
            why = ("Free references to objects you no longer need, or start the node "
                   "with a larger object_store_memory.")
        return ErrorInfo(
            ErrorKind.OBJECT_STORE_FULL,
            f"cannot store object {oid.short()} of {size} bytes: the object store "
            f"holds {self.used} of {self.capacity} bytes, {self.pinned_bytes} of them "
            f"pinned (in use by running tasks or held by clients that put them){',' if self.spilling_enabled else '.'} "
            + why,
        )

    # ------------------------------------------------------------------ spilling
    def _spill_candidates(self, need: int) -> list[ObjectId]:
        """Pinned, spillable objects, least recently used first, until their
        sizes reach ``need`` (all of them if they do not)."""
        out: list[ObjectId] = []
        got = 0
        for oid, o in self.objects.items():
            if got >= need:
                break
            if oid in self.spilling or not _client_only(o):
                continue
            out.append(oid)
            got += o.size
        return out

    def background_spill(self) -> list[ObjectId]:
        """Objects to spill because pinned bytes passed the high-water mark
        (none while a spill is in flight, or after one failed)."""
        if not self.spilling_enabled or self.spilling or self.spill_error is not None:
            return []
        excess = self.pinned_bytes - self.spill_threshold * self.capacity
        if excess <= 0:
            return []
        return self._spill_candidates(int(excess) + 1)

    def start_spills(self, oids) -> tuple[list[ObjectId], list[ObjectId]]:
        """Spill ``oids``: returns (to write: now *spilling*, already on
        disk: moved to ``spilled`` now, the driver only evicts them)."""
        write: list[ObjectId] = []
        moved: list[ObjectId] = []
        for oid in oids:
            o = self.objects[oid]
            if oid in self.disk_copy:
                self.disk_copy.discard(oid)
                self._drop(oid)
                self.spilled[oid] = o
                self.spilled_bytes += o.size
                self.spills += 1
                moved.append(oid)
            elif oid not in self.spilling:
                self.spilling.add(oid)
                self.spilling_bytes += o.size
                write.append(oid)
        return write, moved

    def spill_done(self, oids) -> tuple[list[ObjectId], list[ObjectId]]:
        """The driver wrote ``oids`` to disk: they leave memory.  Returns
        (to evict from memory, unpinned meanwhile: to forget here)."""
        self.spill_error = None
        evict: list[ObjectId] = []
        unpinned: list[ObjectId] = []
        for oid in oids:
            if oid not in self.spilling:
                # dropped while it was being written (freed, its job ended)
                self._delete_file(oid)
                continue
            o = self.objects[oid]
            self.spilling.discard(oid)
            self.spilling_bytes -= o.size
            if o.pins and not _client_only(o):
                # a task took it as an input meanwhile: it reads it from
                # memory, so it stays there (its file is kept for later)
                self.disk_copy.add(oid)
                self.over = max(self.over, self.used - self.spilling_bytes - self.capacity)
                continue
            self._drop(oid)
            evict.append(oid)
            self.spills += 1
            if o.pins:
                self.spilled[oid] = o
                self.spilled_bytes += o.size
            else:
                self._delete_file(oid)
                unpinned.append(oid)
        self._settle_over()
        return evict, unpinned

    def spill_failed(self, oids, reason: str) -> None:
        """The driver could not write ``oids``: they stay in memory."""
        self.spill_error = reason or "the spill failed"
        for oid in oids:
            if oid in self.spilling:
                self.spilling.discard(oid)
                self.spilling_bytes -= self.objects[oid].size
            else:
                self.files_to_delete.append(oid)  # (whatever part of it was written)
        self.over = max(self.over, self.used - self.spilling_bytes - self.capacity)
        self._settle_over()

    def _settle_over(self) -> None:
        if self.over:
            self.over = max(0, min(self.over, self.used - self.spilling_bytes - self.capacity))

    def _delete_file(self, oid: ObjectId) -> None:
        """Have the driver delete ``oid``'s spill file.  The disk gets room
        back, so a spill that failed for want of it may succeed now."""
        self.files_to_delete.append(oid)
        self.spill_error = None

    def forget_spilled(self, oid: ObjectId) -> bool:
        """Drop the spilled copy of ``oid`` (its file is to be deleted)."""
        o = self.spilled.pop(oid, None)
        if o is None:
            return False
        self.spilled_bytes -= o.size
        self.restoring.discard(oid)
        self._delete_file(oid)
        return True

    def pin(self, oid: ObjectId, holder: Hashable) -> None:
        o = self.objects[oid]
        if not o.pins:
            self.pinned_bytes += o.size
        o.pins[holder] = o.pins.get(holder, 0) + 1

    def unpin(self, oid: ObjectId, holder: Hashable) -> None:
        o = self.objects.get(oid)
        if o is None:
            o = self.spilled.get(oid)
            if o is not None and holder in o.pins:
                n = o.pins[holder]
                if n <= 1:
                    del o.pins[holder]
                    if not o.pins:
                        self.unpinned_spilled.append(oid)
                else:
                    o.pins[holder] = n - 1
            return
        n = o.pins.get(holder, 0)
        if n <= 1:
            o.pins.pop(holder, None)
        else:
            o.pins[holder] = n - 1
        if not o.pins and n:
            self.pinned_bytes -= o.size
            if self.disk_copy:
                self._drop_disk_copy(oid)

    def _drop_disk_copy(self, oid: ObjectId) -> None:
        """An unpinned object is evicted, never spilled: its spill file
        (kept from a restore) has no use left."""
        if oid in self.disk_copy:
            self.disk_copy.discard(oid)
            self._delete_file(oid)

    def unpin_holder(self, holder: Hashable) -> None:
        for oid, o in self.objects.items():
            if holder in o.pins:
                del o.pins[holder]
                if not o.pins:
                    self.pinned_bytes -= o.size
                    self._drop_disk_copy(oid)
        for oid, o in self.spilled.items():
            if holder in o.pins:
                del o.pins[holder]
                if not o.pins:
                    self.unpinned_spilled.append(oid)

    def remove(self, oid: ObjectId) -> bool:
        """Forget ``oid`` even if pinned (its bytes are gone: node reset)."""
        if oid not in self.objects:
            return self.forget_spilled(oid)
        self._drop(oid)
        return True

    def _drop(self, oid: ObjectId) -> None:
        o = self.objects.pop(oid)
        self.used -= o.size
        if o.pins:
            self.pinned_bytes -= o.size
        if oid in self.spilling:  # (its spill's completion deletes the file)
            self.spilling.discard(oid)
            self.spilling_bytes -= o.size
        if oid in self.disk_copy:  # (gone for good: so is its file)
            self.disk_copy.discard(oid)
            self._delete_file(oid)
        self._settle_over()

    def validate(self) -> None:
        assert 0 <= self.used - self.spilling_bytes <= self.capacity + self.over, (
            self.used, self.spilling_bytes, self.over, self.capacity)
        assert self.spilling <= self.objects.keys(), "spilling an object not in memory"
        assert self.spilling_bytes == sum(self.objects[o].size for o in self.spilling)
        assert not (self.spilled.keys() & self.objects.keys()), "an object both in memory and spilled"
        assert self.restoring <= self.spilled.keys(), "restoring an object not spilled"
        assert self.disk_copy <= self.objects.keys() and not (self.disk_copy & self.spilling), "disk copy state"
        assert all(self.objects[o].pins for o in self.disk_copy), "a spill file kept for an unpinned object"
        assert self.spilled_bytes == sum(o.size for o in self.spilled.values())
        assert self.spilling_enabled or not (self.spilled or self.spilling), "spilled with spilling off"
        assert self.used == sum(o.size for o in self.objects.values()), "used != sum of sizes"
        assert self.pinned_bytes == sum(o.size for o in self.objects.values() if o.pins)
        for oid, o in self.objects.items():
            assert all(n > 0 for n in o.pins.values()), (oid, o.pins)
