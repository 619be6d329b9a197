"""The bytes of a node's objects, and turning values into bytes and back.

The core's ``StoreAccounting`` decides what a node keeps; this module holds
it.  Small objects (serialized under ``INLINE_THRESHOLD``) live in the
daemon's memory and travel inside messages; large ones live in the node's
shared-memory store (``shm_store.ShmStore``), written once by whoever
produced them and read zero-copy by every process on the node.  Errors live
as ``ErrorInfo`` (they are small and also in the GCS).

``encode_value``/``decode_value`` are what workers and drivers use: a value
becomes an attachment (inline bytes, or a size once written to shared
memory); an attachment becomes a value (or ``ErrorValue``).
"""

from __future__ import annotations

import os
from typing import Any

from ..api.refs import ObjectRef
from ..api.runtime import ErrorValue
from ..core.ids import ObjectId
from ..core.records import ErrorInfo
from .serialization import INLINE_THRESHOLD, deserialize, serialize
from .shm_store import ShmStore, StoreFullError

__all__ = ["NodeObjects", "encode_value", "decode_value", "INLINE_THRESHOLD", "LazyShm"]


class NodeObjects:
    """One node's object bytes (owned by its daemon)."""

    def __init__(self, shm: ShmStore) -> None:
        self.shm = shm
        self.inline: dict[ObjectId, bytes] = {}
        self.errors: dict[ObjectId, ErrorInfo] = {}

    def has(self, oid: ObjectId) -> bool:
        return oid in self.inline or oid in self.errors or self.shm.contains(oid)

    def attachment(self, oid: ObjectId) -> tuple | None:
        data = self.inline.get(oid)
        if data is not None:
            return ("i", data)
        err = self.errors.get(oid)
        if err is not None:
            return ("e", err)
        try:
            return ("s", self.shm.size_of(oid))
        except KeyError:
            return None

    def put_inline(self, oid: ObjectId, data: bytes) -> None:
        self.inline[oid] = data

    def put_error(self, oid: ObjectId, error: ErrorInfo) -> None:
        self.errors[oid] = error

    def delete(self, oid: ObjectId) -> None:
        if self.inline.pop(oid, None) is None and self.errors.pop(oid, None) is None:
            self.shm.delete(oid)

    def read_bytes(self, oid: ObjectId) -> Any:
        """The object's serialized bytes, for a transfer (None if absent)."""
        data = self.inline.get(oid)
        if data is not None:
            return data
        try:
            return self.shm.get(oid)
        except KeyError:
            return None

    def write_bytes(self, oid: ObjectId, data: Any) -> int:
        """Store bytes received from another node; returns the size."""
        n = len(data)
        if n <= INLINE_THRESHOLD:
            self.inline[oid] = bytes(data)
        elif not self.shm.contains(oid):
            self.shm.put_bytes(oid, data)
        return n


    def restore_file(self, oid: ObjectId, path: str) -> int:
        """Read a spilled object back from its file straight into the store
        (one copy: the kernel's, into the shared-memory allocation); returns
        its size.  Raises OSError (the file is gone or short) or a store
        error (no room)."""
        with open(path, "rb", buffering=0) as f:
            n = os.fstat(f.fileno()).st_size
            if n <= INLINE_THRESHOLD:
                self.inline[oid] = f.read()
                return n
            if self.shm.contains(oid):
                return n
            view = self.shm.create(oid, n)
            try:
                got = 0
                while got < n:
                    k = f.readinto(view[got:])
                    if not k:
                        raise OSError(f"spill file {path} is shorter than it was ({got} of {n} bytes)")
                    got += k
            except BaseException:
                del view
                self.shm.abort(oid)
                raise
            del view
            self.shm.seal(oid)
        return n


def encode_value(oid: ObjectId, value: Any, shm: ShmStore, subject: str = "value") -> tuple[int, bytes | None]:
    """Serialize ``value``; small: (size, bytes); large: written to ``shm``
    under ``oid``, (size, None).

    Raises:
        SerializationError: the value cannot be pickled.
        ObjectStoreFullError: the shared-memory store has no room.
    """
    s = serialize(value, ref_type=ObjectRef, subject=subject)
    if s.is_inline():
        data = s.to_bytes()
        return len(data), data
    try:
        shm.put_serialized(oid, s)
    except StoreFullError as e:
        from ..exceptions import ObjectStoreFullError

        raise ObjectStoreFullError(
            f"cannot store an object of {s.total_size} bytes in this node's shared memory: {e}"
        ) from None
    return s.total_size, None


def decode_value(oid: ObjectId, att: tuple, shm: ShmStore | None) -> Any:
    kind = att[0]
    if kind == "i":
        return deserialize(att[1])
    if kind == "e":
        return ErrorValue(att[1])
    if kind == "s":
        if shm is None:
            raise RuntimeError("object is in shared memory but this process has no store attached")
        return deserialize(shm.get(oid))
    raise ValueError(f"unknown attachment kind {kind!r}")


class LazyShm:
    """Attaches the shared-memory store only if a value turns out large:
    ``owner.shm`` (a client runtime's lazily-attached store) is read only
    when ``encode_value`` needs it."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner

    def put_serialized(self, oid, s):
        return self.owner.shm.put_serialized(oid, s)
