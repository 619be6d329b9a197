"""A node's object store in shared memory, shared by its daemon, workers and drivers.

Theory of operation
-------------------
Measured on this machine (``bench/bench_store.py``), a tmpfs page costs far
more to *allocate* and to *fault in* than to fill: writing 100 MiB into a new
``/dev/shm`` file runs at about 0.9 GB/s (ftruncate + mmap) or 1.4 GB/s
(``write``), whatever the copy method, while copying into pages that already
exist and are already mapped runs at 6.5 GB/s (one thread) to 9 GB/s (two).
So the store keeps its objects in an **arena**: one big file per session,
mapped once by every process that attaches, whose pages are reused by one
object after another.  Three files per session live in ``root``::

    penumbra-<session>-meta        header, object table, free list (~5 MiB)
    penumbra-<session>-arena       the arena (sparse; committed as it is used)
    penumbra-<session>-obj-<hex>   one file per object that did not fit the arena

* **Metadata** is in shared memory too: an open-addressing hash table from
  the 20-byte object id to (state, offset, size), and a sorted list of free
  extents (first fit, coalescing).  Every process updates it under one lock
  (``flock`` on the meta file, plus a thread lock), held for a few
  microseconds; copying data happens outside it.
* **Committing**: the arena is a sparse file.  Before a region above the
  committed watermark is handed out, the pages are reserved with
  ``posix_fallocate``, so a full tmpfs gives a clean :class:`ShmSpaceError`
  and never a SIGBUS on a later write.
* **Faulting**: a process writing into arena chunks it has not touched yet
  pre-faults them with ``madvise(MADV_POPULATE_READ)`` (one system call
  instead of one page fault per 4 KiB page).  Later writes to reused pages
  run at memcpy speed.
* **Pinning** keeps views valid after a delete.  A process that holds a view
  (from :meth:`ShmStore.get` or :meth:`ShmStore.create`) holds a shared
  open-file-description byte-range lock (``F_OFD_SETLK``) on the object's
  region, counted per process and released when the last view (numpy arrays
  and Arrow tables built on it included) is garbage-collected.  ``delete``
  of a pinned region only unlinks the id and parks the region as a *zombie*;
  it goes back to the free list once nobody holds a lock on it
  (:meth:`ShmStore.reap`, run automatically when an allocation fails).  The
  kernel drops the locks of a process that dies, so a crashed reader never
  pins memory forever.
* **Spilling**: an object that does not fit in the arena (too big, or the
  arena is fragmented or full of zombies) gets its own file instead
  (``posix_fallocate`` + ``mmap(MAP_POPULATE)``).  A mapped file stays valid
  after it is unlinked, so those need no pins.  ``capacity=0`` gives a store
  with no arena where every object is a file (slow to write, see above).

Rules
-----
* Capacity and eviction are decided elsewhere (the core's store accounting);
  this class stores, opens and deletes.  It fails cleanly instead:
  :class:`StoreFullError` when no space can be found, :class:`ShmSpaceError`
  when the tmpfs itself is full.
* Objects are immutable once sealed; a view from :meth:`ShmStore.get` is
  read-only.  An object is visible to :meth:`get` / :meth:`contains` only
  once sealed.
* A crashed creator's unsealed objects are reclaimed by :meth:`ShmStore.reap`
  (it checks the creator pid).
* Linux only (OFD locks, ``MADV_POPULATE_READ`` is used when available).
* Nothing leaks: :func:`cleanup_session` (usable by any process, e.g. a parent
  after a crash) unlinks every file of a session, :func:`session_store` is a
  context manager that always does, and :func:`stale_sessions` finds sessions
  whose creator process is gone.

Where things live
-----------------
This module is the client: :class:`ShmStore` (creating and attaching,
``create``/``seal``/``get``/``delete``, reaping, stats, fork handling) and
:func:`session_store`.  Its parts are below it:
:mod:`~penumbra.transports.shm_index` (the object table and free list in the
meta file), :mod:`~penumbra.transports.shm_arena` (committing, pre-faulting
and pinning arena regions) and :mod:`~penumbra.transports.shm_layout` (file
names, byte layout, errors, session housekeeping), whose public names are
re-exported here.
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import os
import secrets
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np

from .serial_format import SerializedObject, copy_into
from .session import new_session_name, pid_alive
from .shm_arena import _ArenaMixin
from .shm_index import _IndexMixin
from .shm_layout import (
    ID_SIZE,
    ObjectExistsError,
    ObjectNotFoundError,
    ROOT,
    ShmSpaceError,
    StoreError,
    StoreFullError,
    StoreNotFoundError,
    _ALIGN,
    _CHUNK,
    _HDR_SIZE,
    _H_ARENA,
    _H_COMMITTED,
    _H_ENTRIES,
    _H_FILEBYTES,
    _H_MAXEXT,
    _H_NEXT,
    _H_PID,
    _H_SLOTS,
    _H_USED,
    _H_VERSION,
    _H_ZOMBIES,
    _KIND_ARENA,
    _KIND_FILE,
    _META_MAGIC,
    _MetaLock,
    _POPULATE_MIN,
    _SLOT,
    _STATE_AT,
    _ST_CREATED,
    _ST_SEALED,
    _ST_ZOMBIE,
    _U32,
    _U64,
    _VERSION,
    _as_id,
    _check_session,
    _fallocate,
    _prefix,
    _space_error,
    _zombie_key,
    cleanup_session,
    cleanup_stale_sessions,
    session_segments,
    stale_sessions,
)

__all__ = [
    "ID_SIZE",
    "ROOT",
    "ObjectExistsError",
    "ObjectNotFoundError",
    "ShmSpaceError",
    "ShmStore",
    "StoreError",
    "StoreFullError",
    "StoreNotFoundError",
    "cleanup_session",
    "cleanup_stale_sessions",
    "new_session_name",
    "session_segments",
    "session_store",
    "stale_sessions",
]


# ---------------------------------------------------------------- the store


class ShmStore(_IndexMixin, _ArenaMixin):
    """One node's shared-memory object store, as seen by one process.

    ``ShmStore(session, capacity=N)`` creates the store (the node daemon does
    this once); ``ShmStore(session)`` attaches to it (workers, drivers).
    Every method may be called from any attached process.

    Args:
        session: the session name (letters, digits, ``_``, ``.``); every file
            of the store is named ``penumbra-<session>-...``.
        root: the directory of the files, a tmpfs (``/dev/shm``).
        capacity: create the store with an arena of this many bytes; 0 for
            no arena (one file per object).  None (default) attaches to an
            existing store.
        max_objects: size of the object table (when creating); each slot is
            64 bytes of shared memory.  Objects plus zombies must stay below
            85% of it.
        prefault: when creating, :meth:`reserve` the whole arena now (start-up
            costs about 0.6 s per GiB on our 2-core box; no first-write cost
            later).
        spill_to_files: put an object that does not fit in the arena in its
            own file instead of raising :class:`StoreFullError`.

    Raises:
        FileExistsError: creating a store that exists.
        StoreNotFoundError: attaching to a store that does not exist.
        ShmSpaceError: creating a store the tmpfs has no room for.
    """

    def __init__(
        self,
        session: str,
        root: str = ROOT,
        *,
        capacity: int | None = None,
        max_objects: int = 1 << 16,
        prefault: bool = False,
        spill_to_files: bool = True,
    ) -> None:
        self.session = _check_session(session)
        self.root = root
        self.spill_to_files = spill_to_files
        self._prefix = _prefix(session, root)
        self._meta_path = self._prefix + "meta"
        self._arena_path = self._prefix + "arena"
        self._closed = False
        if capacity is not None:
            self._create_files(int(capacity), int(max_objects))
        self._open()
        if prefault and self._arena_size:
            self.reserve()

    # ------------------------------------------------------------ set-up

    def _create_files(self, capacity: int, max_objects: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        if max_objects < 16:
            raise ValueError("max_objects must be >= 16")
        capacity = (capacity + _ALIGN - 1) // _ALIGN * _ALIGN
        nslots = max_objects
        maxext = nslots + 2
        size = _HDR_SIZE + nslots * _SLOT + 16 * maxext
        tmp = self._prefix + f"meta.tmp{os.getpid()}_{secrets.token_hex(3)}"
        made_arena = False
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _fallocate(fd, 0, size, f"{size} bytes for the object table", self.root)
            if capacity:
                afd = os.open(self._arena_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                made_arena = True
                try:
                    os.ftruncate(afd, capacity)
                finally:
                    os.close(afd)
            hdr = bytearray(_HDR_SIZE)
            hdr[0:8] = _META_MAGIC
            _U32.pack_into(hdr, _H_VERSION, _VERSION)
            _U32.pack_into(hdr, _H_SLOTS, nslots)
            _U64.pack_into(hdr, _H_ARENA, capacity)
            _U64.pack_into(hdr, _H_MAXEXT, maxext)
            _U64.pack_into(hdr, _H_PID, os.getpid())
            if capacity:
                _U64.pack_into(hdr, _H_NEXT, 1)
                ext_off = _HDR_SIZE + nslots * _SLOT
                os.pwrite(fd, _U64.pack(0), ext_off)
                os.pwrite(fd, _U64.pack(capacity), ext_off + 8 * maxext)
            os.pwrite(fd, bytes(hdr), 0)
            # Publish atomically: attachers never see a half-written header.
            os.link(tmp, self._meta_path)
        except BaseException as e:
            if made_arena:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._arena_path)
            if isinstance(e, FileExistsError):
                raise FileExistsError(
                    f"an object store for session {self.session!r} already exists in {self.root}; "
                    "attach with ShmStore(session) or remove it with cleanup_session(session)"
                ) from None
            raise
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _open(self) -> None:
        try:
            fd = os.open(self._meta_path, os.O_RDWR)
        except FileNotFoundError:
            raise StoreNotFoundError(
                f"no object store for session {self.session!r} in {self.root}: "
                "create it first with ShmStore(session, capacity=...)"
            ) from None
        try:
            meta = mmap.mmap(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        if meta[0:8] != _META_MAGIC or _U32.unpack_from(meta, _H_VERSION)[0] != _VERSION:
            meta.close()
            os.close(fd)
            raise StoreError(f"{self._meta_path} is not a penumbra object store (version {_VERSION})")
        self._pid = os.getpid()
        self._fork_gen = _fork_generation[0]
        self._meta_fd = fd
        self._meta = meta
        self._lock = _MetaLock(fd)
        self._nslots = _U32.unpack_from(meta, _H_SLOTS)[0]
        self._arena_size = _U64.unpack_from(meta, _H_ARENA)[0]
        self._maxext = _U64.unpack_from(meta, _H_MAXEXT)[0]
        self._table_off = _HDR_SIZE
        ext = _HDR_SIZE + self._nslots * _SLOT
        self._ext_off = np.frombuffer(meta, dtype="<u8", count=self._maxext, offset=ext)
        self._ext_len = np.frombuffer(meta, dtype="<u8", count=self._maxext, offset=ext + 8 * self._maxext)
        self._states = np.frombuffer(meta, dtype=np.uint8, count=self._nslots * _SLOT, offset=_HDR_SIZE)[
            _STATE_AT::_SLOT
        ]
        self._arena_fd: int | None = None
        self._arena: mmap.mmap | None = None
        if self._arena_size:
            afd = os.open(self._arena_path, os.O_RDWR)
            self._arena_fd = afd
            self._arena = mmap.mmap(afd, self._arena_size)
        self._touched = bytearray((self._arena_size + _CHUNK - 1) // _CHUNK)
        self._can_populate = True
        # Pins: (offset, alloc) -> number of live views in this process.
        self._pins: dict[tuple[int, int], int] = {}
        self._pin_lock = threading.Lock()
        self._unpins: collections.deque = collections.deque()
        self._finalizers: dict[int, weakref.ref] = {}
        _live_stores.add(self)

    def _check(self) -> None:
        if self._closed:
            raise StoreError(f"the object store of session {self.session!r} is closed")
        if self._fork_gen != _fork_generation[0]:
            # Forked: the file descriptions (and so the locks) are shared with
            # the parent.  Open our own.
            self._after_fork()

    def _after_fork(self) -> None:
        self._pins = {}
        self._unpins = collections.deque()
        self._pin_lock = threading.Lock()
        # Don't close the inherited descriptors' mappings: inherited views may
        # still use them.  Just stop using them for locking.
        self._open()

    # ------------------------------------------------------------ objects

    def _file_path(self, key: bytes) -> str:
        return self._prefix + "obj-" + key.hex()

    def create(self, object_id: bytes, size: int) -> memoryview:
        """Allocate an object of ``size`` bytes and return a writable view of it.

        Fill the view, then :meth:`seal` the object (or :meth:`abort` it).
        The view must not be written after ``seal``.  Objects go into the
        arena, or into their own file when they don't fit (``spill_to_files``).

        Raises:
            ObjectExistsError: the id is already in the store.
            StoreFullError: no room (arena full and spilling disabled, or the
                object table is full).
            ShmSpaceError: the shared-memory filesystem is full.
        """
        self._check()
        key = _as_id(object_id)
        size = int(size)
        if size < 0:
            raise ValueError("size must be >= 0")
        alloc = max(_ALIGN, (size + _ALIGN - 1) // _ALIGN * _ALIGN)
        off = -1
        with self._lock:
            if self._find(key) >= 0:
                raise ObjectExistsError(f"object {key.hex()} already exists in the store")
            if self._arena_size and alloc <= self._arena_size:
                off = self._alloc(alloc)
                if off < 0:
                    self._reap_locked()
                    off = self._alloc(alloc)
                if off >= 0:
                    try:
                        self._commit(off + alloc)
                        self._insert(key, _ST_CREATED, _KIND_ARENA, off, alloc, size)
                    except BaseException:
                        self._free(off, alloc)
                        raise
            if off < 0:
                if not self.spill_to_files:
                    raise StoreFullError(
                        f"no room for an object of {size} bytes in the arena "
                        f"({self._h(_H_USED)} of {self._arena_size} bytes in use, "
                        f"largest free extent {self._largest_free()} bytes) and spilling to files is disabled"
                    )
                # Reserve the id now; make the file outside the lock.
                self._insert(key, _ST_CREATED, _KIND_FILE, 0, 0, size)
        if off >= 0:
            if alloc >= _POPULATE_MIN:
                self._populate(off, alloc)
            return self._view(off, size, alloc, writable=True)
        try:
            return self._create_file(key, size)
        except BaseException:
            with self._lock:
                i = self._find(key)
                if i >= 0:
                    self._remove(i)
            raise

    def _create_file(self, key: bytes, size: int) -> memoryview:
        path = self._file_path(key)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise ObjectExistsError(f"object {key.hex()} already exists in the store") from None
        except OSError as e:
            raise _space_error(f"a file for object {key.hex()}", e, self.root) from e
        try:
            if size == 0:
                return memoryview(bytearray(0))
            _fallocate(fd, 0, size, f"{size} bytes for object {key.hex()}", self.root)
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        os.close(fd)
        with self._lock:
            self._hset(_H_FILEBYTES, self._h(_H_FILEBYTES) + size)
        return memoryview(mm)

    def seal(self, object_id: bytes) -> None:
        """Make a created object immutable and visible to every process.

        Raises:
            ObjectNotFoundError: the id was never created, or was deleted.
            StoreError: the object is already sealed.
        """
        self._check()
        key = _as_id(object_id)
        with self._lock:
            i = self._find(key)
            if i < 0:
                # Deleted before seal: drop the file we may have made for it.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._file_path(key))
                raise ObjectNotFoundError(f"object {key.hex()} is not in the store (deleted before seal?)")
            pos = self._slot_pos(i)
            if self._meta[pos + _STATE_AT] != _ST_CREATED:
                raise StoreError(f"object {key.hex()} is already sealed")
            self._meta[pos + _STATE_AT] = _ST_SEALED

    def abort(self, object_id: bytes) -> None:
        """Drop a created, unsealed object (e.g. when filling it failed)."""
        self._check()
        key = _as_id(object_id)
        with self._lock:
            i = self._find(key)
            if i >= 0 and self._meta[self._slot_pos(i) + _STATE_AT] == _ST_CREATED:
                self._delete_slot(i, key)

    def put_serialized(self, object_id: bytes, obj: SerializedObject) -> int:
        """Create, fill and seal an object from a serialized value.

        Returns the object's size in bytes.  Read it back with
        ``deserialize(store.get(object_id))``.
        """
        view = self.create(object_id, obj.total_size)
        try:
            obj.write_to(view)
        except BaseException:
            del view
            self.abort(object_id)
            raise
        del view
        self.seal(object_id)
        return obj.total_size

    def put_bytes(self, object_id: bytes, data: Any) -> int:
        """Create, fill and seal an object holding the bytes of ``data``."""
        src = memoryview(data).cast("B")
        view = self.create(object_id, src.nbytes)
        try:
            if src.nbytes:
                copy_into(view, src)
        except BaseException:
            del view
            self.abort(object_id)
            raise
        del view
        self.seal(object_id)
        return src.nbytes

    def get(self, object_id: bytes) -> memoryview:
        """A read-only, zero-copy view of a sealed object.

        The view (and whatever is built on it: numpy arrays, Arrow tables)
        stays valid after the object is deleted, for as long as it is alive.

        Raises:
            ObjectNotFoundError: the id is not in the store or not sealed.
        """
        self._check()
        key = _as_id(object_id)
        with self._lock:
            i = self._find(key)
            if i < 0:
                raise ObjectNotFoundError(f"object {key.hex()} is not in the store")
            _, state, kind, off, alloc, size, _ = self._read(i)
            if state != _ST_SEALED:
                raise ObjectNotFoundError(f"object {key.hex()} is not sealed yet")
            if kind == _KIND_ARENA:
                return self._view(off, size, alloc, writable=False)
            if size == 0:
                return memoryview(b"")
            fd = os.open(self._file_path(key), os.O_RDONLY)
            try:
                mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
            return memoryview(mm)

    def contains(self, object_id: bytes) -> bool:
        """True if the object is in the store and sealed."""
        self._check()
        key = _as_id(object_id)
        with self._lock:
            i = self._find(key)
            return i >= 0 and self._meta[self._slot_pos(i) + _STATE_AT] == _ST_SEALED

    __contains__ = contains

    def size_of(self, object_id: bytes) -> int:
        """The size in bytes of a sealed object.

        Raises:
            ObjectNotFoundError: the id is not in the store or not sealed.
        """
        self._check()
        key = _as_id(object_id)
        with self._lock:
            i = self._find(key)
            if i < 0 or self._meta[self._slot_pos(i) + _STATE_AT] != _ST_SEALED:
                raise ObjectNotFoundError(f"object {key.hex()} is not in the store")
            return self._read(i)[5]

    def delete(self, object_id: bytes) -> bool:
        """Remove an object (sealed or not); returns False if it was absent.

        Views already handed out stay valid; the memory is reused once they
        are all gone (see :meth:`reap`).
        """
        self._check()
        key = _as_id(object_id)
        with self._lock:
            i = self._find(key)
            if i < 0:
                return False
            self._delete_slot(i, key)
            return True

    def _delete_slot(self, i: int, key: bytes) -> None:
        _, _, kind, off, alloc, size, _ = self._read(i)
        self._remove(i)
        if kind == _KIND_FILE:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._file_path(key))
            self._hset(_H_FILEBYTES, max(0, self._h(_H_FILEBYTES) - size))
        elif self._pinned(off, alloc):
            self._insert(_zombie_key(off), _ST_ZOMBIE, _KIND_ARENA, off, alloc, 0)
        else:
            self._free(off, alloc)

    def reap(self) -> int:
        """Reclaim zombie regions nobody holds a view of any more, and the
        unsealed objects of creators that died.  Returns the bytes freed.

        ``create`` runs this when the arena has no room; a daemon may also run
        it now and then (cheap when there is nothing to do).
        """
        self._check()
        with self._lock:
            return self._reap_locked()

    def _reap_locked(self) -> int:
        freed = 0
        me = self._pid
        if self._h(_H_ZOMBIES):
            # Read every zombie first: removals shift slots around.
            zombies = [self._read(i)[3:5] for i in np.flatnonzero(self._states == _ST_ZOMBIE).tolist()]
            for off, alloc in zombies:
                if not self._pinned(off, alloc):
                    j = self._find_zombie(_zombie_key(off))
                    if j >= 0:
                        self._remove(j)
                        self._free(off, alloc)
                        freed += alloc
        abandoned = []
        for i in np.flatnonzero(self._states == _ST_CREATED).tolist():
            key, _, kind, _, alloc, size, pid = self._read(i)
            if pid != me and not pid_alive(pid):
                abandoned.append((key, alloc if kind == _KIND_ARENA else size))
        for key, nbytes in abandoned:
            j = self._find(key)
            if j >= 0:
                self._delete_slot(j, key)
                freed += nbytes
        return freed

    def reserve(self, nbytes: int | None = None, *, step: int = 64 << 20) -> int:
        """Reserve (``posix_fallocate``) and pre-fault the first ``nbytes`` of
        the arena (all of it by default) in this process, a ``step`` at a time
        so that the store lock is never held long.  A node daemon can run this
        in a thread at start-up: the first writes then run at memcpy speed.
        Returns the committed size.

        Raises:
            ShmSpaceError: the shared-memory filesystem has no room.
        """
        self._check()
        end = self._arena_size if nbytes is None else min(int(nbytes), self._arena_size)
        pos = 0
        while pos < end:
            nxt = min(end, pos + step)
            with self._lock:
                self._commit(nxt)
            self._populate(pos, nxt - pos)
            pos = nxt
        return self._h(_H_COMMITTED)

    def object_ids(self, *, sealed_only: bool = True) -> list[bytes]:
        """The ids in the store (sealed ones only, by default)."""
        self._check()
        with self._lock:
            states = (_ST_SEALED,) if sealed_only else (_ST_SEALED, _ST_CREATED)
            idx = np.flatnonzero(np.isin(self._states, states)).tolist()
            return [self._read(i)[0] for i in idx]

    def stats(self) -> dict[str, int]:
        """Counters: ``capacity`` (arena bytes), ``committed``, ``used``
        (allocated, zombies included), ``zombies`` and ``zombie_bytes``,
        ``free``, ``largest_free``, ``objects``, ``file_bytes`` (spilled)."""
        self._check()
        with self._lock:
            zidx = np.flatnonzero(self._states == _ST_ZOMBIE).tolist()
            zbytes = sum(self._read(i)[4] for i in zidx)
            used = self._h(_H_USED)
            return {
                "capacity": self._arena_size,
                "committed": self._h(_H_COMMITTED),
                "used": used,
                "free": self._arena_size - used,
                "largest_free": self._largest_free(),
                "objects": self._h(_H_ENTRIES) - self._h(_H_ZOMBIES),
                "zombies": self._h(_H_ZOMBIES),
                "zombie_bytes": zbytes,
                "file_bytes": self._h(_H_FILEBYTES),
                "max_objects": self._nslots,
            }

    # ------------------------------------------------------------ teardown

    def close(self) -> None:
        """Detach this process (the store and its objects remain).

        Views already handed out stay valid: the arena stays mapped, and this
        process's pins held, until the last of them is gone.
        """
        if self._closed:
            return
        self._closed = True
        _live_stores.discard(self)
        if self._fork_gen != _fork_generation[0]:
            return
        self._ext_off = self._ext_len = self._states = None  # type: ignore[assignment]
        with contextlib.suppress(BufferError):
            self._meta.close()
        with contextlib.suppress(OSError):
            os.close(self._meta_fd)
        with self._pin_lock:
            if not self._pins:
                self._close_arena()

    def _close_arena(self) -> None:
        if self._arena is not None:
            with contextlib.suppress(BufferError):
                self._arena.close()
            self._arena = None
        if self._arena_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._arena_fd)
            self._arena_fd = None

    def cleanup(self) -> int:
        """Unlink every file of this session and close.  Returns the number of
        files removed.  Views still held stay valid."""
        n = cleanup_session(self.session, self.root)
        self.close()
        return n

    def __enter__(self) -> ShmStore:
        return self

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"capacity={self._arena_size}"
        return f"ShmStore(session={self.session!r}, root={self.root!r}, {state})"


_live_stores: weakref.WeakSet[ShmStore] = weakref.WeakSet()
_fork_generation = [0]


def _after_fork_in_child() -> None:
    _fork_generation[0] += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def session_store(
    session: str | None = None,
    *,
    capacity: int = 256 << 20,
    root: str = ROOT,
    **kwargs: Any,
) -> Iterator[ShmStore]:
    """Create a store, yield it, and unlink every file of the session on exit,
    whatever happens (also when the body raises)::

        with session_store(capacity=1 << 30) as store:
            store.put_serialized(oid, serialize(x))
    """
    session = session or new_session_name()
    try:
        store = ShmStore(session, root, capacity=capacity, **kwargs)
    except BaseException:
        cleanup_session(session, root)
        raise
    try:
        yield store
    finally:
        store.close()
        cleanup_session(session, root)
