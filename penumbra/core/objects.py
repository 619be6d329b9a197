"""Objects on a node: store accounting, and finding and pulling objects.

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
  with the sizes involved (the user sees ``ObjectStoreFullError``).

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

``ObjectManager`` answers "make object X available here" for the node's
scheduler and clients.  It is fed by the GCS: it subscribes to X's object
table row and reacts to each version of it:

=====================  ====================================================
row says               manager does
=====================  ====================================================
not created yet        waits (the creating task is pending somewhere)
holds an error         materialises the error locally; X is available
has live locations     fetches from one (``Fetch``), unless only locating
created, no location   X is lost: asks the head to reconstruct it
=====================  ====================================================

A fetch that fails tries the next location; with none left it waits for the
row to change.  Waiters are tokens chosen by the owner (the node), which the
manager hands back through ``on_ready(oid, info, waiters)``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Hashable

from .ids import ObjectId
from .messages import (
    Command,
    DeleteSpilled,
    Evict,
    Fetch,
    RestoreObject,
    SpillObjects,
    ReconstructObject,
    Send,
    SetTimer,
    StoreError,
)
from .records import ErrorInfo, ErrorKind, ObjectEntry, ObjectInfo
from .tables import AddLocation, ForgetObject, Get, RemoveLocation, Subscribe, Unsubscribe

__all__ = ["StoreAccounting", "Admission", "ObjectManager"]


@dataclass(slots=True)
class _Stored:
    size: int
    pins: dict[Hashable, int] = field(default_factory=dict)


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

    def admit(self, oid: ObjectId, size: int, pin: Hashable | None = None, restored: bool = False) -> Admission:
        """Make room for and record ``oid``; evicts unpinned objects (LRU),
        then spills pinned ones if spilling is on.  ``restored``: its bytes
        were read back from its spill file, which stays valid."""
        if size < 0:
            raise ValueError(f"object size must be >= 0, got {size}")
        existing = self.objects.get(oid)
        if existing is not None:
            self.objects.move_to_end(oid)
            if pin is not None:
                self.pin(oid, pin)
            return _ADMITTED
        need = self.used - self.spilling_bytes + size - self.capacity
        victims: list[ObjectId] = []
        spill: list[ObjectId] = []
        if need > 0:
            freed = 0
            for vid, v in self.objects.items():
                if v.pins or vid in self.spilling:
                    continue
                victims.append(vid)
                freed += v.size
                if freed >= need:
                    break
            if freed < need and self.spilling_enabled and self.spill_error is None:
                spill = self._spill_candidates(need - freed)
                freed += sum(self.objects[o].size for o in spill)
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
        self.objects[oid] = _Stored(size)
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


# ===========================================================================


@dataclass(slots=True)
class _Want:
    oid: ObjectId
    waiters: dict[Hashable, bool]  # token -> wants it local (fetch)
    entry: ObjectEntry | None = None
    subscribed: bool = False
    fetching_from: str | None = None
    failed_from: set[str] = field(default_factory=set)
    reconstruct_asked_at: float | None = None
    located_told: set[Hashable] = field(default_factory=set)
    changed_at: float = 0.0  # when we last learned something about its row

    @property
    def fetch(self) -> bool:
        return any(self.waiters.values())


OnReady = Callable[[ObjectId, ObjectInfo, list[Hashable], float, str], list[Command]]
OnLocated = Callable[[ObjectId, ObjectEntry, list[Hashable], float, str], list[Command]]
GcsWriteFn = Callable[..., list[Command]]


class ObjectManager:
    """Makes objects available on one node; see the module docstring."""

    RECONSTRUCT_RETRY = 1.0  # seconds before asking the head again
    FETCH_RETRY = 0.2
    SPILL_RETRY = 1.0  # seconds after a failed spill before spilling is tried again
    REFRESH = 1.0  # seconds without news before re-reading a wanted object's row

    def __init__(
        self,
        node_id: str,
        address: str,
        capacity: int,
        gcs_write: GcsWriteFn,
        on_ready: OnReady,
        on_located: OnLocated,
        head: str = "head",
        produced_here: Callable[[ObjectId], bool] = lambda oid: False,
        gcs_read: GcsWriteFn | None = None,
        spilling: bool = False,
        spill_threshold: float = 0.8,
    ) -> None:
        self.node_id = node_id
        self.address = address
        self.store = StoreAccounting(capacity, spilling, spill_threshold)
        self.gcs_write = gcs_write
        self.gcs_read = gcs_read
        self.on_ready = on_ready
        self.on_located = on_located
        self.produced_here = produced_here
        self.head = head
        self.errors: dict[ObjectId, ErrorInfo] = {}
        self.wants: dict[ObjectId, _Want] = {}
        self.dead_nodes: set[str] = set()
        self.fetches_started = 0
        self.freed = 0  # objects deleted by ``free`` (their owner's last ref died)
        self.bytes_fetched = 0
        self.fetch_retry_armed = False
        # refresh reads that found news pub/sub had not delivered: expected
        # where messages are lost, a pub/sub bug in a run without faults
        self.refresh_rescues = 0
        self.spill_retry_at = 0.0

    # ------------------------------------------------------------------ queries
    def is_local(self, oid: ObjectId) -> bool:
        return oid in self.store.objects or oid in self.errors

    def info(self, oid: ObjectId) -> ObjectInfo:
        err = self.errors.get(oid)
        if err is not None:
            return ObjectInfo(size=0, error=err)
        return ObjectInfo(size=self.store.objects[oid].size)

    def error_of(self, oid: ObjectId) -> ErrorInfo | None:
        return self.errors.get(oid)

    # ------------------------------------------------------------------ local objects
    def add_local(self, oid: ObjectId, size: int, now: float, sid: str, pin: Hashable | None = None, record: bool = True,
                  resolve: bool = True, job_id: int | None = None) -> tuple[Admission, list[Command]]:
        """A new object was written into our store (a task output, a put, a
        fetched copy).  Admit it, evicting as needed.  ``resolve=False``:
        do not tell its waiters yet (``resolve`` later: a task's outputs are
        announced once all of them are admitted).  ``job_id``: the job of
        the client that put it (the GCS refuses the row once the job ended)."""
        if self.store.spill_error is not None:
            self._maybe_retry_spilling(now)
        adm = self.store.admit(oid, size, pin)
        cmds: list[Command] = []
        if not adm.ok:
            return adm, cmds
        for vid in adm.evicted:
            cmds.append(Evict(object_id=vid, stimulus_id=sid))
            cmds += self.gcs_write(RemoveLocation(vid, self.node_id), None, now, sid)
        cmds += self._spill_commands(adm, sid)
        if record:
            cmds += self.gcs_write(AddLocation(oid, self.node_id, size, job_id=job_id), None, now, sid)
        if resolve:
            cmds += self._resolve(oid, now, sid)
        return adm, cmds

    def resolve(self, oid: ObjectId, now: float, sid: str) -> list[Command]:
        """Tell ``oid``'s waiters it is here (after ``add_local(resolve=False)``)."""
        return self._resolve(oid, now, sid)

    def free(self, oid: ObjectId, now: float, sid: str) -> list[Command]:
        """Delete ``oid`` now, not when LRU eviction gets to it: its owner
        dropped the last ref, which never left the owner.  Kept if anything
        still pins it or waits for it (then it was shared after all)."""
        o = self.store.objects.get(oid)
        if o is None:
            o = self.store.spilled.get(oid)
            if o is None or o.pins or oid in self.wants or oid in self.store.restoring:
                return []
        elif o.pins or oid in self.wants:
            return []
        self.store.remove(oid)
        self.freed += 1
        # a private put's row goes with it: nobody can name it again (the
        # GCS must not keep a row per put ever made)
        op = ForgetObject(oid) if oid.is_put else RemoveLocation(oid, self.node_id)
        return [Evict(object_id=oid, stimulus_id=sid)] + self.gcs_write(op, None, now, sid)

    def add_error(self, oid: ObjectId, error: ErrorInfo, now: float, sid: str, materialise: bool = True) -> list[Command]:
        """``oid`` holds ``error`` (its task failed); it is available here."""
        if oid in self.errors:
            return []
        self.errors[oid] = error
        cmds: list[Command] = []
        if materialise:
            cmds.append(StoreError(object_ids=(oid,), error=error, stimulus_id=sid))
        return cmds + self._resolve(oid, now, sid)

    def _resolve(self, oid: ObjectId, now: float, sid: str) -> list[Command]:
        w = self.wants.pop(oid, None)
        if w is None:
            return []
        cmds: list[Command] = []
        if w.subscribed:
            cmds += self.gcs_write(Unsubscribe(self.address, "objects", oid), None, now, sid)
        return cmds + self.on_ready(oid, self.info(oid), list(w.waiters), now, sid)

    # ------------------------------------------------------------------ wanting
    def want(self, oid: ObjectId, token: Hashable, fetch: bool, now: float, sid: str) -> list[Command]:
        """Register interest; ``on_ready`` fires when ``oid`` is local (if
        ``fetch``) and ``on_located`` when its row is known (if not)."""
        if self.is_local(oid):
            self.store.touch(oid)
            return self.on_ready(oid, self.info(oid), [token], now, sid)
        w = self.wants.get(oid)
        if w is None:
            w = self.wants[oid] = _Want(oid, {})
        w.waiters[token] = w.waiters.get(token, False) or fetch
        cmds: list[Command] = []
        if oid in self.store.spilled:
            # on our disk: read it back (whoever wants it, here or a
            # locate-only waiter: it is ready once it is in memory again)
            return self._restore(oid, sid)
        if not w.subscribed:
            if self.produced_here(oid):
                # its task is queued or running on this node: the object will
                # appear here (or fail here) without asking the GCS; if the
                # task is forwarded, ``producer_left`` subscribes after all
                return cmds
            w.subscribed = True
            cmds += self._subscribe(w, now, sid)
        elif w.entry is not None:
            cmds += self._react(w, now, sid)
        return cmds

    def producer_left(self, oids, now: float, sid: str) -> list[Command]:
        """The task making ``oids`` left this node: follow them in the GCS."""
        cmds: list[Command] = []
        for oid in oids:
            w = self.wants.get(oid)
            if w is not None and not w.subscribed:
                cmds += self._subscribe(w, now, sid)
        return cmds

    def _subscribe(self, w: _Want, now: float, sid: str) -> list[Command]:
        # the reply carries the row as it is now (``on_entry`` via the node),
        # so a notification lost on the way does not leave us waiting
        w.subscribed = True
        w.changed_at = now
        return self.gcs_write(Subscribe(self.address, "objects", w.oid), ("obj-sub", w.oid), now, sid)

    def on_refresh(self, now: float, sid: str) -> list[Command]:
        """Re-read the rows of objects we have waited on for a while without
        news: a notification can be lost (a partition), and pub/sub alone
        would then never tell us."""
        cmds: list[Command] = []
        for w in self.wants.values():
            if w.subscribed and w.fetching_from is None and now - w.changed_at >= self.REFRESH:
                w.changed_at = now
                cmds += self.gcs_read(Get("objects", w.oid), ("obj-refresh", w.oid), now, sid)
        return cmds

    def unwant(self, oid: ObjectId, token: Hashable, now: float, sid: str) -> list[Command]:
        w = self.wants.get(oid)
        if w is None or token not in w.waiters:
            return []
        del w.waiters[token]
        if w.waiters:
            return []
        if w.fetching_from is not None:
            return []  # let the fetch finish; the copy may be useful
        del self.wants[oid]
        if oid in self.store.spilled and not self.store.spilled[oid].pins:
            self.store.unpinned_spilled.append(oid)  # (released while wanted: see drain_spill_changes)
        if w.subscribed:
            return self.gcs_write(Unsubscribe(self.address, "objects", oid), None, now, sid)
        return []

    def on_entry(self, oid: ObjectId, entry: ObjectEntry | None, now: float, sid: str,
                 refresh: bool = False) -> list[Command]:
        """A new version of ``oid``'s object table row (``refresh``: from a
        re-read rather than from pub/sub)."""
        w = self.wants.get(oid)
        if w is None or entry is None:
            return []
        if refresh and entry != w.entry:
            # (notifications and read replies both leave the chain's tail,
            # over one FIFO link: news first seen in a read was never sent)
            self.refresh_rescues += 1
        w.entry = entry
        w.changed_at = now
        return self._react(w, now, sid)

    def _live_locations(self, entry: ObjectEntry, w: _Want) -> list[str]:
        return sorted(
            n for n in entry.locations
            if n != self.node_id and n not in self.dead_nodes and n not in w.failed_from
        )

    def _react(self, w: _Want, now: float, sid: str) -> list[Command]:
        e = w.entry
        if e is None or not e.created:
            return []
        if e.error is not None:
            return self.add_error(w.oid, e.error, now, sid)
        cmds: list[Command] = []
        # locate-only waiters learn where it is
        untold = [t for t, fetch in w.waiters.items() if not fetch and t not in w.located_told]
        if untold:
            w.located_told.update(untold)
            cmds += self.on_located(w.oid, e, untold, now, sid)
        if not w.fetch or w.fetching_from is not None or w.oid not in self.wants:
            return cmds
        locs = self._live_locations(e, w)
        if locs:
            # spread load over replicas deterministically by object id
            src = locs[int.from_bytes(w.oid[:2], "big") % len(locs)]
            w.fetching_from = src
            self.fetches_started += 1
            cmds.append(Fetch(object_id=w.oid, from_node=src, size=e.size, stimulus_id=sid))
            return cmds
        # (a row naming only us, while we lack the bytes, means our copy was
        # evicted and the removal is still in flight: the object is lost)
        live_somewhere = any(n not in self.dead_nodes and n != self.node_id for n in e.locations)
        if not live_somewhere:
            # lost: every copy is gone (or only on dead nodes)
            if w.reconstruct_asked_at is None or now - w.reconstruct_asked_at >= self.RECONSTRUCT_RETRY:
                w.reconstruct_asked_at = now
                cmds.append(Send(to=self.head, msg=ReconstructObject(object_id=w.oid, node_id=self.node_id, stimulus_id=sid)))
                cmds.append(SetTimer(at=now + self.RECONSTRUCT_RETRY, key=("obj", "recheck", w.oid)))
        else:
            # every live copy failed us; try them again a little later
            w.failed_from.clear()
            cmds.append(SetTimer(at=now + self.FETCH_RETRY, key=("obj", "recheck", w.oid)))
        return cmds

    def on_recheck(self, oid: ObjectId, now: float, sid: str) -> list[Command]:
        w = self.wants.get(oid)
        if w is None:
            return []
        return self._react(w, now, sid)

    # ------------------------------------------------------------------ fetches
    def on_fetch_completed(self, oid: ObjectId, size: int, now: float, sid: str) -> tuple[Admission | None, list[Command]]:
        w = self.wants.get(oid)
        if w is not None:
            w.fetching_from = None
        self.bytes_fetched += size
        if self.is_local(oid):
            return None, []
        adm, cmds = self.add_local(oid, size, now, sid)
        if not adm.ok:
            cmds.append(Evict(object_id=oid, stimulus_id=sid))
            if w is not None:
                # tell fetch-waiters: the store is full of pinned objects
                self.wants.pop(oid, None)
                if w.subscribed:
                    cmds += self.gcs_write(Unsubscribe(self.address, "objects", oid), None, now, sid)
                cmds += self.on_ready(oid, ObjectInfo(size=size, error=adm.error), list(w.waiters), now, sid)
        return adm, cmds

    def on_fetch_failed(self, oid: ObjectId, from_node: str, now: float, sid: str) -> list[Command]:
        w = self.wants.get(oid)
        if w is None:
            return []
        w.fetching_from = None
        w.failed_from.add(from_node)
        if not w.waiters:
            del self.wants[oid]
            if w.subscribed:
                return self.gcs_write(Unsubscribe(self.address, "objects", oid), None, now, sid)
            return []
        return self._react(w, now, sid)

    # ------------------------------------------------------------------ spilling
    def _spill_commands(self, adm: Admission, sid: str) -> list[Command]:
        cmds: list[Command] = [Evict(object_id=o, stimulus_id=sid) for o in adm.to_disk]
        if adm.spill:
            objects = self.store.objects
            cmds.append(SpillObjects(object_ids=adm.spill, sizes=tuple(objects[o].size for o in adm.spill),
                                     stimulus_id=sid))
        return cmds

    def _restore(self, oid: ObjectId, sid: str) -> list[Command]:
        store = self.store
        if oid in store.restoring:
            return []
        store.restoring.add(oid)
        return [RestoreObject(object_id=oid, size=store.spilled[oid].size, stimulus_id=sid)]

    def on_spilled(self, oids, now: float, sid: str) -> list[Command]:
        """``ObjectsSpilled``: their bytes are on disk; free their memory.
        Any waiter that came meanwhile gets a restore."""
        evict, unpinned = self.store.spill_done(oids)
        cmds: list[Command] = [Evict(object_id=o, stimulus_id=sid) for o in evict]
        for oid in unpinned:  # released while being written: as an eviction
            cmds += self.gcs_write(RemoveLocation(oid, self.node_id), None, now, sid)
        for oid in evict:
            if oid in self.wants and oid in self.store.spilled:
                cmds += self._restore(oid, sid)
        return cmds + self._more_spills(sid)

    def on_spill_failed(self, oids, reason: str, now: float, sid: str) -> list[Command]:
        """The disk refused: until it has room again (a spill file deleted)
        or ``SPILL_RETRY`` seconds pass, admissions that need a spill fail."""
        self.store.spill_failed(oids, reason)
        self.spill_retry_at = now + self.SPILL_RETRY
        return []

    def _maybe_retry_spilling(self, now: float) -> None:
        if self.store.spill_error is not None and now >= self.spill_retry_at:
            self.store.spill_error = None  # (the disk may have room by now: try again)

    def _more_spills(self, sid: str) -> list[Command]:
        more = self.store.background_spill()
        if not more:
            return []
        write, moved = self.store.start_spills(more)
        return self._spill_commands(Admission(True, spill=tuple(write), to_disk=tuple(moved)), sid)

    def on_restored(self, oid: ObjectId, size: int, now: float, sid: str) -> list[Command]:
        """``ObjectRestored``: its bytes are in memory again.  Admit them
        (which may spill others) and tell the waiters."""
        store = self.store
        if oid in store.objects:
            return []  # stored here again meanwhile (its task re-ran): those are its bytes
        if oid not in store.restoring or oid not in store.spilled:
            # dropped meanwhile (freed, its job ended): not ours to keep
            store.restoring.discard(oid)
            return [Evict(object_id=oid, stimulus_id=sid)]
        if store.spill_error is not None:
            self._maybe_retry_spilling(now)
        adm = store.admit(oid, size, restored=True)
        cmds: list[Command] = []
        if not adm.ok:
            # no room even with spilling: it stays on disk; the waiters
            # hear why (ObjectStoreFullError)
            store.restoring.discard(oid)
            if not store.spilled[oid].pins:
                store.unpinned_spilled.append(oid)  # (released meanwhile: see drain_spill_changes)
            cmds.append(Evict(object_id=oid, stimulus_id=sid))
            w = self.wants.pop(oid, None)
            if w is not None:
                cmds += self.on_ready(oid, ObjectInfo(size=size, error=adm.error), list(w.waiters), now, sid)
            return cmds
        store.restores += 1
        for vid in adm.evicted:
            cmds.append(Evict(object_id=vid, stimulus_id=sid))
            cmds += self.gcs_write(RemoveLocation(vid, self.node_id), None, now, sid)
        cmds += self._spill_commands(adm, sid)
        return cmds + self._resolve(oid, now, sid)

    def on_restore_failed(self, oid: ObjectId, reason: str, now: float, sid: str) -> list[Command]:
        """The spill file could not be read back: our copy is lost.  Its
        location goes, and the waiters follow the GCS row (another copy, or
        lineage reconstruction)."""
        store = self.store
        store.restoring.discard(oid)
        if not store.forget_spilled(oid):
            return []
        cmds = self.gcs_write(RemoveLocation(oid, self.node_id), None, now, sid)
        w = self.wants.get(oid)
        if w is not None and not w.subscribed:
            cmds += self._subscribe(w, now, sid)
        return cmds

    def drain_spill_changes(self, now: float, sid: str) -> list[Command]:
        """Commands owed for spill state changed outside the spill events:
        spilled objects whose last pin went are evicted (file and location),
        and the files of objects that left are deleted."""
        store = self.store
        cmds: list[Command] = []
        if store.unpinned_spilled:
            gone, store.unpinned_spilled = store.unpinned_spilled, []
            for oid in gone:
                o = store.spilled.get(oid)
                if o is None or o.pins or oid in store.restoring or oid in self.wants:
                    continue
                store.forget_spilled(oid)
                cmds += self.gcs_write(RemoveLocation(oid, self.node_id), None, now, sid)
        if store.files_to_delete:
            files, store.files_to_delete = store.files_to_delete, []
            cmds.append(DeleteSpilled(object_ids=tuple(dict.fromkeys(files)), stimulus_id=sid))
        return cmds

    # ------------------------------------------------------------------ cluster events
    def on_node_dead(self, node: str, now: float, sid: str) -> list[Command]:
        self.dead_nodes.add(node)
        cmds: list[Command] = []
        for w in list(self.wants.values()):
            if w.entry is not None and node in w.entry.locations and w.fetching_from is None:
                cmds += self._react(w, now, sid)
        return cmds

    def on_object_unrecoverable(self, oid: ObjectId, error: ErrorInfo, now: float, sid: str) -> list[Command]:
        if oid not in self.wants:
            return []
        return self.add_error(oid, error, now, sid)

    def validate(self) -> None:
        self.store.validate()
        for oid, w in self.wants.items():
            assert not self.is_local(oid) or w.fetching_from is not None or not w.waiters, (
                f"{oid} is local but still wanted by {list(w.waiters)}"
            )
