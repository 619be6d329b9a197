"""Objects on a node: finding and pulling objects (store accounting in ``objects_store.py``).

Theory of operation
-------------------
The bookkeeping of the node's store -- what is in it, who pins it, what is
evicted or spilled to make room -- is ``StoreAccounting``, in
``objects_store.py`` (re-exported here, with ``Admission``); its rules,
spilling included, are explained there.

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

from dataclasses import dataclass
from collections.abc import Set as AbstractSet
from typing import Callable, Hashable

from .dead_nodes import DeadNodes
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
from .objects_store import Admission, StoreAccounting
from .records import ErrorInfo, ObjectEntry, ObjectInfo
from .tables import AddLocation, ForgetObject, Get, RemoveLocation, Subscribe, Unsubscribe

__all__ = ["StoreAccounting", "Admission", "ObjectManager"]


_NONE: frozenset = frozenset()  # (shared; an empty frozenset is not a singleton)


@dataclass(slots=True)
class _Want:
    oid: ObjectId
    waiters: dict[Hashable, bool]  # token -> wants it local (fetch)
    entry: ObjectEntry | None = None
    subscribed: bool = False
    fetching_from: str | None = None
    # (both start as the shared empty frozenset, and get a set of their
    # own only once something is added: two empty sets were 432 bytes a
    # want, and most wants never add to either)
    failed_from: AbstractSet[str] = _NONE
    reconstruct_asked_at: float | None = None
    located_told: AbstractSet[Hashable] = _NONE
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
        self.dead_nodes = DeadNodes()  # (the latest only: core/dead_nodes.py)
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
                  resolve: bool = True, job_id: int | None = None, final: bool = False) -> tuple[Admission, list[Command]]:
        """A new object was written into our store (a task output, a put, a
        fetched copy).  Admit it, evicting as needed.  ``resolve=False``:
        do not tell its waiters yet (``resolve`` later: a task's outputs are
        announced once all of them are admitted).  ``job_id``: the job of
        the client that put it (the GCS refuses the row once the job ended).
        ``final``: lineage cannot rebuild it (an actor method's output): the
        store evicts it last."""
        if self.store.spill_error is not None:
            self._maybe_retry_spilling(now)
        adm = self.store.admit(oid, size, pin, final=final)
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
            if w.located_told:
                w.located_told.update(untold)
            else:
                w.located_told = set(untold)
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
            w.failed_from = _NONE
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
        # (a copy of an actor method's output may be the last one: kept as its primary is)
        final = w is not None and w.entry is not None and w.entry.actor_id is not None
        adm, cmds = self.add_local(oid, size, now, sid, final=final)
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
        if w.failed_from:
            w.failed_from.add(from_node)
        else:
            w.failed_from = {from_node}
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
