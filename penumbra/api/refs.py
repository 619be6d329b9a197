"""``ObjectRef``: a future for an object in the cluster.

An ``ObjectRef`` is an object id plus local reference counting: while any
``ObjectRef`` for a ``put`` object made by this process is alive, the object
stays pinned in its node's store; when the last one dies the runtime is told
(``release``), and the object becomes evictable like any other.  Objects
returned by tasks are never pinned by references: they can be evicted and,
if needed again, rebuilt from lineage.

A ``put`` object whose ref never left this process (never pickled, never
passed to a task, ``binary()`` never asked for) is *private*: when its last
ref dies nobody anywhere can name it again, so it is released with
``free=True`` and its memory is reused at once instead of waiting for LRU
eviction (what Ray does for every object whose count drops to zero; penumbra
has no distributed reference counting, so a ref that escaped keeps the
object cached until capacity pressure evicts it).

Refs pickle as their id, so they can be passed to tasks inside containers;
they compare and hash by id.
"""

from __future__ import annotations

import threading

from ..core.ids import ObjectId, TaskId

__all__ = ["ObjectRef"]

_counts: dict[ObjectId, int] = {}
_owned_puts: set[ObjectId] = set()
_private: set[ObjectId] = set()  # owned puts whose ref never left this process
_lock = threading.Lock()
# Bumped at every shutdown.  Ids are deterministic, so the next session's
# objects have the same ids as this one's: a ref that outlives its session
# (kept in a global, a cycle not yet collected) must neither keep a new
# object of the same id pinned nor release it when it finally dies.
_generation = 0


class ObjectRef:
    __slots__ = ("_id", "_gen", "__weakref__")

    def __init__(self, object_id: ObjectId | bytes) -> None:
        if not isinstance(object_id, ObjectId):
            if not isinstance(object_id, (bytes, bytearray)) or len(object_id) != 20:
                raise TypeError(f"ObjectRef needs a 20-byte object id, got {object_id!r}")
            object_id = ObjectId(object_id)
        self._id = object_id
        with _lock:
            self._gen = _generation
            _counts[object_id] = _counts.get(object_id, 0) + 1

    def __del__(self) -> None:
        oid = self._id
        release = free = False
        try:
            with _lock:
                if getattr(self, "_gen", -1) != _generation:
                    return  # a ref of an earlier session
                n = _counts.get(oid, 0) - 1
                if n <= 0:
                    _counts.pop(oid, None)
                    if oid in _owned_puts:
                        _owned_puts.discard(oid)
                        release = True
                        free = oid in _private
                        _private.discard(oid)
                else:
                    _counts[oid] = n
            if release:
                from .context import runtime_or_none

                rt = runtime_or_none()
                if rt is not None:
                    rt.release((oid,), free=free)
        except Exception:
            pass  # interpreter shutdown

    # -- identity ------------------------------------------------------------
    @property
    def id(self) -> ObjectId:
        return self._id

    def binary(self) -> bytes:
        _private.discard(self._id)  # a ref can be rebuilt from these bytes
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

    def __class_getitem__(cls, item):
        """``ObjectRef[int]`` in annotations, as in Ray (the type is not checked)."""
        import types

        return types.GenericAlias(cls, item)

    def __reduce__(self):
        _private.discard(self._id)  # pickled: it may live on elsewhere
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
        _private.add(oid)


def mark_escaped(oid: ObjectId) -> None:
    """``oid``'s ref left this process (e.g. a task argument): when this
    process drops it, the object is only released, not freed."""
    _private.discard(oid)


def _reset_for_shutdown() -> None:
    global _generation
    with _lock:
        _generation += 1
        _counts.clear()
        _owned_puts.clear()
        _private.clear()


def refcount(oid: ObjectId) -> int:
    return _counts.get(oid, 0)

