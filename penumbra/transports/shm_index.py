"""The shared metadata of a store: its object table and its free-extent list.

The meta file (layout in :mod:`~penumbra.transports.shm_layout`) is mapped
by every process attached to a session and updated only under the store's
lock (``ShmStore._lock``), which every method here expects to be held:

* **Object table**: open addressing on ``crc32(id)``, linear probing, and
  backward-shift deletion (no tombstones, so a lookup stops at the first
  empty slot).  A deleted region still pinned by a view stays in the table
  as a *zombie* under a key made from its offset.  Inserts are refused
  above 85% load (a zombie always fits: it replaces the entry just removed).
* **Free list**: the arena's free extents, sorted by offset, in two
  ``uint64`` arrays; first-fit allocation, and coalescing with both
  neighbours on free.

:class:`_IndexMixin` is one part of
:class:`~penumbra.transports.shm_store.ShmStore` (the class that sets the
attributes it uses in ``_open``); it holds no state of its own.
"""

from __future__ import annotations

import numpy as np

from .shm_layout import (
    _ENTRY,
    _H_ENTRIES,
    _H_NEXT,
    _H_USED,
    _H_ZOMBIES,
    _MAX_LOAD,
    _SLOT,
    _ST_EMPTY,
    _ST_ZOMBIE,
    _STATE_AT,
    _U64,
    ID_SIZE,
    StoreError,
    StoreFullError,
    _home,
)


class _IndexMixin:
    """The object table and free list of :class:`ShmStore` (lock held by the caller)."""

    # ------------------------------------------------------------ header

    def _h(self, off: int) -> int:
        return _U64.unpack_from(self._meta, off)[0]

    def _hset(self, off: int, value: int) -> None:
        _U64.pack_into(self._meta, off, value)

    # ------------------------------------------------------------ table

    def _slot_pos(self, i: int) -> int:
        return self._table_off + i * _SLOT

    def _find(self, key: bytes) -> int:
        """Slot index of the live (created or sealed) entry for ``key``, or -1."""
        meta = self._meta
        n = self._nslots
        i = _home(key, n)
        for _ in range(n):
            pos = self._table_off + i * _SLOT
            st = meta[pos + _STATE_AT]
            if st == _ST_EMPTY:
                return -1
            if st != _ST_ZOMBIE and meta[pos : pos + ID_SIZE] == key:
                return i
            i += 1
            if i == n:
                i = 0
        return -1

    def _find_zombie(self, key: bytes) -> int:
        meta = self._meta
        n = self._nslots
        i = _home(key, n)
        for _ in range(n):
            pos = self._table_off + i * _SLOT
            st = meta[pos + _STATE_AT]
            if st == _ST_EMPTY:
                return -1
            if st == _ST_ZOMBIE and meta[pos : pos + ID_SIZE] == key:
                return i
            i += 1
            if i == n:
                i = 0
        return -1

    def _read(self, i: int) -> tuple:
        return _ENTRY.unpack_from(self._meta, self._slot_pos(i))

    def _insert(self, key: bytes, state: int, kind: int, offset: int, alloc: int, size: int) -> None:
        n = self._nslots
        entries = self._h(_H_ENTRIES)
        # A zombie replaces the entry just removed: it must always fit.
        limit = n - 1 if state == _ST_ZOMBIE else _MAX_LOAD * n
        if entries + 1 > limit:
            raise StoreFullError(
                f"the object table is full ({entries} of {n} slots, objects and zombies); "
                "delete objects or create the store with a larger max_objects"
            )
        meta = self._meta
        i = _home(key, n)
        while meta[self._table_off + i * _SLOT + _STATE_AT] != _ST_EMPTY:
            i += 1
            if i == n:
                i = 0
        _ENTRY.pack_into(meta, self._slot_pos(i), key, state, kind, offset, alloc, size, self._pid)
        self._hset(_H_ENTRIES, entries + 1)
        if state == _ST_ZOMBIE:
            self._hset(_H_ZOMBIES, self._h(_H_ZOMBIES) + 1)

    def _remove(self, i: int) -> None:
        """Empty slot ``i`` (backward-shift deletion: no tombstones)."""
        meta = self._meta
        n = self._nslots
        toff = self._table_off
        if meta[toff + i * _SLOT + _STATE_AT] == _ST_ZOMBIE:
            self._hset(_H_ZOMBIES, self._h(_H_ZOMBIES) - 1)
        self._hset(_H_ENTRIES, self._h(_H_ENTRIES) - 1)
        j = i
        while True:
            meta[toff + i * _SLOT : toff + (i + 1) * _SLOT] = bytes(_SLOT)
            while True:
                j = (j + 1) % n
                pos = toff + j * _SLOT
                if meta[pos + _STATE_AT] == _ST_EMPTY:
                    return
                k = _home(meta[pos : pos + ID_SIZE], n)
                # Entry j may stay if its home lies cyclically in (i, j].
                if (i <= j and i < k <= j) or (i > j and (k > i or k <= j)):
                    continue
                break
            meta[toff + i * _SLOT : toff + (i + 1) * _SLOT] = meta[toff + j * _SLOT : toff + (j + 1) * _SLOT]
            i = j

    # ------------------------------------------------------------ free list

    def _alloc(self, need: int) -> int:
        """First-fit allocation of ``need`` bytes (a multiple of 64); -1 if none."""
        n = self._h(_H_NEXT)
        if n == 0:
            return -1
        lens = self._ext_len[:n]
        i = int(np.argmax(lens >= need))
        if int(lens[i]) < need:
            return -1
        off = int(self._ext_off[i])
        if int(lens[i]) == need:
            self._ext_off[i : n - 1] = self._ext_off[i + 1 : n]
            self._ext_len[i : n - 1] = self._ext_len[i + 1 : n]
            self._hset(_H_NEXT, n - 1)
        else:
            self._ext_off[i] = off + need
            self._ext_len[i] = int(lens[i]) - need
        self._hset(_H_USED, self._h(_H_USED) + need)
        return off

    def _free(self, off: int, length: int) -> None:
        n = self._h(_H_NEXT)
        eo, el = self._ext_off, self._ext_len
        i = int(np.searchsorted(eo[:n], off))
        prev = i > 0 and int(eo[i - 1]) + int(el[i - 1]) == off
        nxt = i < n and off + length == int(eo[i])
        if prev and nxt:
            el[i - 1] = int(el[i - 1]) + length + int(el[i])
            eo[i : n - 1] = eo[i + 1 : n]
            el[i : n - 1] = el[i + 1 : n]
            self._hset(_H_NEXT, n - 1)
        elif prev:
            el[i - 1] = int(el[i - 1]) + length
        elif nxt:
            eo[i] = off
            el[i] = int(el[i]) + length
        else:
            if n >= self._maxext:  # pragma: no cover - impossible by construction
                raise StoreError("free list overflow")
            eo[i + 1 : n + 1] = eo[i:n].copy()
            el[i + 1 : n + 1] = el[i:n].copy()
            eo[i] = off
            el[i] = length
            self._hset(_H_NEXT, n + 1)
        self._hset(_H_USED, self._h(_H_USED) - length)

    def _largest_free(self) -> int:
        n = self._h(_H_NEXT)
        return int(self._ext_len[:n].max()) if n else 0
