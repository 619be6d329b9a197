"""``ObjectRef``: a future for an object in the cluster.

An ``ObjectRef`` is an object id plus local reference counting: while any
``ObjectRef`` for a ``put`` object made by this process is alive, the object
stays pinned in its node's store; when the last one dies the runtime is told
(``release``), and the object becomes evictable like any other.  Objects
returned by tasks are never pinned by references: they can be evicted and,
if needed again, rebuilt from lineage.

Refs pickle as their id, so they can be passed to tasks inside containers;
they compare and hash by id.
"""

from __future__ import annotations

import threading

from ..core.ids import ObjectId, TaskId

__all__ = ["ObjectRef"]

_counts: dict[ObjectId, int] = {}
_owned_puts: set[ObjectId] = set()
_lock = threading.Lock()


class ObjectRef:
    __slots__ = ("_id", "__weakref__")

    def __init__(self, object_id: ObjectId | bytes) -> None:
        if not isinstance(object_id, ObjectId):
            if not isinstance(object_id, (bytes, bytearray)) or len(object_id) != 20:
                raise TypeError(f"ObjectRef needs a 20-byte object id, got {object_id!r}")
            object_id = ObjectId(object_id)
        self._id = object_id
        with _lock:
            _counts[object_id] = _counts.get(object_id, 0) + 1

    def __del__(self) -> None:
        oid = self._id
        release = False
        try:
            with _lock:
                n = _counts.get(oid, 0) - 1
                if n <= 0:
                    _counts.pop(oid, None)
                    if oid in _owned_puts:
                        _owned_puts.discard(oid)
                        release = True
                else:
                    _counts[oid] = n
            if release:
                from .context import runtime_or_none

                rt = runtime_or_none()
                if rt is not None:
                    rt.release((oid,))
        except Exception:
            pass  # interpreter shutdown

    # -- identity ------------------------------------------------------------
    @property
    def id(self) -> ObjectId:
        return self._id

    def binary(self) -> bytes:
        return bytes(self._id)

    def hex(self) -> str:
        return self._id.hex()

    def task_id(self) -> TaskId:
        return self._id.task_id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __reduce__(self):
        return (ObjectRef, (bytes(self._id),))

    def __copy__(self) -> "ObjectRef":
        return ObjectRef(self._id)

    def __deepcopy__(self, memo) -> "ObjectRef":
        return ObjectRef(self._id)

    # -- async ---------------------------------------------------------------
    def __await__(self):
        """``await ref`` inside an async actor or coroutine."""
        import asyncio

        from .functions import get

        loop = asyncio.get_running_loop()
        return loop.run_in_executor(None, get, self).__await__()

    def future(self):
        """A ``concurrent.futures.Future`` resolved with the value."""
        import concurrent.futures

        from .functions import get

        fut: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(get(self))
            except BaseException as e:
                fut.set_exception(e)

        threading.Thread(target=run, daemon=True, name="penumbra-ref-future").start()
        return fut


def mark_owned_put(oid: ObjectId) -> None:
    with _lock:
        _owned_puts.add(oid)


def _reset_for_shutdown() -> None:
    with _lock:
        _owned_puts.clear()


def refcount(oid: ObjectId) -> int:
    return _counts.get(oid, 0)

