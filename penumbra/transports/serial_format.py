"""The contiguous form of a serialized value, and how its buffers get there.

:mod:`penumbra.transports.serialization` turns a value into a pickle stream
plus out-of-band buffers; this module holds what that pair becomes once it is
laid out in one region (a shared-memory segment, or ``bytes`` sent inline in
a message), so that the object store can write it without knowing anything
about pickling:

* :class:`SerializedObject`: the stream, the buffers and the layout (bare
  form, or the ``PNB1`` framed form with a buffer table; see the
  serialization module's docstring for the byte layout).  Buffers start at
  multiples of :data:`ALIGNMENT`.
* :func:`copy_into`: one memcpy, or for buffers of 8 MiB and more one slice
  per thread (:func:`set_copy_threads`), because copying into warm shared
  memory is the cost of a large ``put``.
* ``_ArrowPayload``: a pyarrow Table or RecordBatch kept as an Arrow IPC
  stream that is written straight into the destination (one copy).

Nothing here imports a pickler, so the shared-memory store depends on this
layout only, not on cloudpickle.
"""

from __future__ import annotations

import os
import struct
from typing import Any

__all__ = [
    "ALIGNMENT",
    "INLINE_THRESHOLD",
    "SerializedObject",
    "copy_into",
    "set_copy_threads",
]

#: Values whose serialized size is at most this many bytes may travel inline
#: in a message instead of through the object store (Ray uses 100 KiB too).
INLINE_THRESHOLD = 100 * 1024

#: Every out-of-band buffer starts at a multiple of this many bytes from the
#: start of the region (the store hands out 64-byte aligned regions).
ALIGNMENT = 64

_MAGIC = b"PNB1"
_HEADER = struct.Struct("<4sIIIQ")  # magic, flags, nbuf, reserved, inband length
_HEADER_SIZE = _HEADER.size  # 24
_FLAG_REFS = 1

# Buffers at least this large are copied with several threads (see
# copy_into and set_copy_threads).
_PARALLEL_COPY_MIN = 8 * 1024 * 1024
_copy_threads = 0  # 0: as many as the usable cores, at most 4 (see _threads_for)


def set_copy_threads(n: int) -> int:
    """Copy buffers of 8 MiB and more with ``n`` threads; ``0`` (the
    default) uses one per usable core, at most 4.  Returns the previous
    setting.

    Measured on a 2-core machine (``bench/bench_store.py``): into warm
    memory, two threads copy 100 MiB at about 7.5 GB/s against 5.5 for one;
    with both cores busy with other processes, about the same as one.
    """
    global _copy_threads
    old = _copy_threads
    _copy_threads = max(0, int(n))
    return old


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


_AUTO_THREADS = max(1, min(4, _usable_cores()))


def _threads_for(nbytes: int) -> int:
    """How many threads copy a buffer of ``nbytes``."""
    if nbytes < _PARALLEL_COPY_MIN:
        return 1
    return _copy_threads or _AUTO_THREADS


# ---------------------------------------------------------- arrow payloads


def _pa():
    import pyarrow

    return pyarrow


class _ArrowPayload:
    """A pyarrow Table or RecordBatch to be written as one Arrow IPC stream.

    The stream is written straight into the destination region by
    :meth:`write_into` (one copy of the data, done by Arrow's parallel
    memcpy); :meth:`materialize` makes a standalone buffer when one is needed
    (sending the value over the network).
    """

    __slots__ = ("_buffer", "nbytes", "obj")

    def __init__(self, obj: Any) -> None:
        pa = _pa()
        self.obj = obj
        self._buffer = None
        sink = pa.MockOutputStream()
        self._write(sink)
        self.nbytes = sink.size()

    def _write(self, sink: Any) -> None:
        pa = _pa()
        with pa.ipc.new_stream(sink, self.obj.schema) as writer:
            writer.write(self.obj)

    def write_into(self, dest: memoryview) -> None:
        pa = _pa()
        if self._buffer is not None:
            copy_into(dest, self._buffer)
            return
        sink = pa.FixedSizeBufferWriter(pa.py_buffer(dest))
        threads = _threads_for(self.nbytes)
        if threads > 1:
            sink.set_memcopy_threads(threads)
            sink.set_memcopy_threshold(_PARALLEL_COPY_MIN)
        self._write(sink)
        if sink.tell() != self.nbytes:  # pragma: no cover - arrow invariant
            raise RuntimeError("Arrow IPC stream size changed between sizing and writing")

    def materialize(self) -> Any:
        if self._buffer is None:
            pa = _pa()
            sink = pa.BufferOutputStream()
            self._write(sink)
            self._buffer = sink.getvalue()
        return self._buffer


# --------------------------------------------------------- SerializedObject


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) & ~(ALIGNMENT - 1)


class SerializedObject:
    """A serialized value: a pickle stream plus out-of-band buffers.

    Attributes:
        inband: the pickle stream (``bytes``).
        refs: every object of ``ref_type`` met while pickling, once per
            occurrence, in pickling order (empty when no ``ref_type``).
        total_size: the size in bytes of the contiguous form
            (:meth:`write_to`, :meth:`to_bytes`).
    """

    __slots__ = ("_chunks", "_offsets", "inband", "refs", "total_size")

    def __init__(self, inband: bytes, chunks: list | None = None, refs: list | None = None) -> None:
        self.inband = inband
        self._chunks = chunks or []
        self.refs = refs or []
        if not self._chunks and not self.refs:
            self._offsets: tuple[int, ...] = ()
            self.total_size = len(inband)
        else:
            pos = _HEADER_SIZE + 16 * len(self._chunks) + len(inband)
            offsets = []
            for c in self._chunks:
                pos = _align(pos)
                offsets.append(pos)
                pos += c.nbytes
            self._offsets = tuple(offsets)
            self.total_size = pos

    def __repr__(self) -> str:
        return (
            f"SerializedObject(total_size={self.total_size}, inband={len(self.inband)}, "
            f"buffers={len(self._chunks)}, refs={len(self.refs)})"
        )

    @property
    def buffers(self) -> list:
        """The out-of-band buffers, as buffer-protocol objects (Arrow payloads
        are materialized into a standalone buffer on first access)."""
        return [c.materialize() if isinstance(c, _ArrowPayload) else c for c in self._chunks]

    @property
    def buffer_sizes(self) -> list[int]:
        return [c.nbytes for c in self._chunks]

    def is_inline(self, threshold: int = INLINE_THRESHOLD) -> bool:
        """True when the value is small enough to travel inside a message."""
        return self.total_size <= threshold

    def write_to(self, dest: memoryview | bytearray) -> int:
        """Write the contiguous form into ``dest`` (at least ``total_size``
        bytes, writable).  Returns the number of bytes written.

        Large buffers are copied with several threads.  The padding between
        buffers is left as it is (the reader never looks at it).
        """
        mv = dest if isinstance(dest, memoryview) else memoryview(dest)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        size = self.total_size
        if len(mv) < size:
            raise ValueError(f"destination has {len(mv)} bytes, the object needs {size}")
        if not self._offsets and not self.refs:
            mv[:size] = self.inband
            return size
        nbuf = len(self._chunks)
        flags = _FLAG_REFS if self.refs else 0
        _HEADER.pack_into(mv, 0, _MAGIC, flags, nbuf, 0, len(self.inband))
        if nbuf:
            table = []
            for off, c in zip(self._offsets, self._chunks):
                table.append(off)
                table.append(c.nbytes)
            struct.pack_into(f"<{2 * nbuf}Q", mv, _HEADER_SIZE, *table)
        start = _HEADER_SIZE + 16 * nbuf
        mv[start : start + len(self.inband)] = self.inband
        for off, c in zip(self._offsets, self._chunks):
            if isinstance(c, _ArrowPayload):
                c.write_into(mv[off : off + c.nbytes])
            else:
                copy_into(mv[off : off + c.nbytes], c)
        return size

    def to_bytes(self) -> bytes:
        """The contiguous form as ``bytes`` (no copy when there are no buffers
        and no refs: the pickle stream itself is returned)."""
        if not self._offsets and not self.refs:
            return self.inband
        nbuf = len(self._chunks)
        flags = _FLAG_REFS if self.refs else 0
        parts: list[Any] = [_HEADER.pack(_MAGIC, flags, nbuf, 0, len(self.inband))]
        table = []
        for off, c in zip(self._offsets, self._chunks):
            table.append(off)
            table.append(c.nbytes)
        if nbuf:
            parts.append(struct.pack(f"<{2 * nbuf}Q", *table))
        parts.append(self.inband)
        pos = _HEADER_SIZE + 16 * nbuf + len(self.inband)
        for off, c in zip(self._offsets, self._chunks):
            if off > pos:
                parts.append(bytes(off - pos))
            parts.append(c.materialize() if isinstance(c, _ArrowPayload) else c)
            pos = off + c.nbytes
        return b"".join(parts)  # one copy


def copy_into(dest: memoryview, src: Any) -> None:
    """Copy the bytes of ``src`` (any contiguous buffer) into ``dest``.

    One memcpy, or for buffers of 8 MiB and more one slice per thread (see
    :func:`set_copy_threads`): numpy's copy releases the GIL, so the slices
    copy in parallel.  (Not pyarrow's parallel memcpy: importing pyarrow
    would cost the first large put some 40 ms.)
    """
    s = src if isinstance(src, memoryview) else memoryview(src)
    if s.format != "B" or s.ndim != 1:
        s = s.cast("B")
    n = dest.nbytes
    threads = _threads_for(n)
    if threads <= 1:
        dest[:] = s
        return
    import numpy as np

    d = np.frombuffer(dest, dtype=np.uint8)
    a = np.frombuffer(s, dtype=np.uint8)
    step = -(-n // threads)
    step += -step % 4096  # slices start on page boundaries
    pool = _copy_pool()
    rest = [pool.submit(np.copyto, d[i : i + step], a[i : i + step]) for i in range(step, n, step)]
    np.copyto(d[:step], a[:step])
    for f in rest:
        f.result()


_pool = None


def _copy_pool():
    global _pool
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        # (the caller copies one slice itself: up to 4 threads by default)
        _pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="penumbra-copy")
    return _pool


def _forget_pool() -> None:
    global _pool
    _pool = None  # its threads did not survive the fork


os.register_at_fork(after_in_child=_forget_pool)
