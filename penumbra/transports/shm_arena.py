"""The arena's bytes: committing, pre-faulting, and pinning the regions views use.

The arena is one sparse file per session, mapped once by every attached
process (see ``shm_store``'s docstring for why).  This part of
:class:`~penumbra.transports.shm_store.ShmStore` turns an allocated region
into memory a process can use safely:

* **Committing** (``_commit``): pages above the committed watermark are
  reserved with ``posix_fallocate`` before they are handed out, so a full
  tmpfs gives a clean :class:`~penumbra.transports.shm_layout.ShmSpaceError`
  instead of a SIGBUS on a later write.  Under the store lock.
* **Pre-faulting** (``_populate``): once per process and 2 MiB chunk, one
  ``madvise(MADV_POPULATE_READ)`` instead of a page fault per page.
* **Pinning** (``_view``, ``_pin``, ``_drain``): every view holds a shared
  OFD lock on its region, counted per process, released by a weakref
  callback when the last view (and whatever numpy or Arrow built on it) is
  gone.  The callback may run in any thread at any moment, so it only
  queues the unpin; whoever can take the pin lock next applies it.
  ``_pinned`` tells ``delete`` and ``reap`` whether a region is still in
  use here or (through the kernel's lock table) in another process.

:class:`_ArenaMixin` holds no state of its own: ``ShmStore._open`` sets the
attributes it uses.
"""

from __future__ import annotations

import contextlib
import fcntl
import weakref
from typing import Any

import numpy as np

from .shm_layout import (
    _CHUNK,
    _COMMIT_STEP,
    _H_COMMITTED,
    _MADV_POPULATE_READ,
    _fallocate,
    _ofd_lock,
    _ofd_locked_by_others,
)


class _ArenaMixin:
    """Committing, pre-faulting and pinning arena regions for :class:`ShmStore`."""

    def _commit(self, end: int) -> None:
        committed = self._h(_H_COMMITTED)
        if end <= committed:
            return
        new = min(self._arena_size, (end + _COMMIT_STEP - 1) // _COMMIT_STEP * _COMMIT_STEP)
        assert self._arena_fd is not None
        _fallocate(self._arena_fd, committed, new - committed, f"{new - committed} bytes of the arena", self.root)
        self._hset(_H_COMMITTED, new)

    def _populate(self, off: int, length: int) -> None:
        """Pre-fault this process's mapping of [off, off+length) once."""
        if not self._can_populate or self._arena is None:
            return
        c0, c1 = off // _CHUNK, (off + length - 1) // _CHUNK
        touched = self._touched
        c = c0
        while c <= c1:
            if touched[c]:
                c += 1
                continue
            start = c
            while c <= c1 and not touched[c]:
                touched[c] = 1
                c += 1
            a = start * _CHUNK
            b = min(c * _CHUNK, self._arena_size)
            try:
                self._arena.madvise(_MADV_POPULATE_READ, a, b - a)
            except OSError:  # kernel < 5.14: let page faults do it
                self._can_populate = False
                return

    # ------------------------------------------------------------ pins

    def _pin(self, key: tuple[int, int]) -> None:
        with self._pin_lock:
            count = self._pins.get(key, 0)
            if count == 0:
                assert self._arena_fd is not None
                _ofd_lock(self._arena_fd, fcntl.F_RDLCK, key[0], key[1])
            self._pins[key] = count + 1
        self._drain()

    def _make_unpin(self, key: tuple[int, int]) -> Any:
        pid = self._pid
        finalizers = self._finalizers

        def unpin(ref: weakref.ref) -> None:
            # Runs when the view's owner dies, at any point of any thread's
            # code: only queue, and let whoever can take the pin lock work.
            finalizers.pop(id(ref), None)
            if pid == self._pid:
                self._unpins.append(key)
                self._drain()

        return unpin

    def _drain(self) -> None:
        while self._unpins:
            if not self._pin_lock.acquire(blocking=False):
                return
            try:
                while self._unpins:
                    key = self._unpins.popleft()
                    count = self._pins.get(key, 0) - 1
                    if count > 0:
                        self._pins[key] = count
                        continue
                    self._pins.pop(key, None)
                    if self._arena_fd is not None:
                        with contextlib.suppress(OSError):
                            _ofd_lock(self._arena_fd, fcntl.F_UNLCK, key[0], key[1])
                if self._closed and not self._pins:
                    self._close_arena()
            finally:
                self._pin_lock.release()

    def _pinned(self, off: int, alloc: int) -> bool:
        self._drain()
        if self._pins.get((off, alloc), 0) > 0:
            return True
        assert self._arena_fd is not None
        return _ofd_locked_by_others(self._arena_fd, off, alloc)

    def _view(self, off: int, size: int, alloc: int, writable: bool) -> memoryview:
        """A memoryview of arena bytes that pins the region while it (or
        anything built on it) is alive."""
        key = (off, alloc)
        self._pin(key)
        try:
            owner = np.frombuffer(self._arena, dtype=np.uint8, count=size, offset=off)
            if not writable:
                owner.flags.writeable = False
            wr = weakref.ref(owner, self._make_unpin(key))
            self._finalizers[id(wr)] = wr
        except BaseException:
            self._unpins.append(key)
            self._drain()
            raise
        return memoryview(owner)

