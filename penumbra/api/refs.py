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

``get`` (a ref's value) and ``put`` (a value's ref) live here too, with the
ref whose future protocol reads values with ``get`` and whose counts
``put`` starts; ``penumbra.api.functions`` re-exports them.
"""

from __future__ import annotations

import numbers
import threading
import weakref
from typing import Any

from .._codepickle import loads
from ..core.ids import ObjectId, TaskId, put_object_id
from ..exceptions import from_error_info
from .context import current_runtime, task_context
from .runtime import ErrorValue

__all__ = ["ObjectRef", "get", "put"]

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
    # An ObjectRef is awaitable (``await ref``, ``asyncio.gather(ref)``) and
    # speaks asyncio's future protocol (``add_done_callback``, ``done``,
    # ``result`` ...), so that ``asyncio.wait([ref, ...])`` takes refs as
    # Ray's do (Python 3.11's ``asyncio.wait`` calls ``add_done_callback``
    # on what it is given) and returns them in its ``done``/``pending``
    # sets.  No thread blocks while a ref is awaited: see ``_loop_future``.

    def __await__(self):
        """``await ref``: its value (or its error, raised)."""
        return self.as_future().__await__()

    def as_future(self):
        """An ``asyncio.Future`` of the running loop resolved with the value
        (Ray's ``ObjectRef.as_future``).  Each call gets a future of its
        own, so cancelling it (``asyncio.wait_for``, a cancelled task)
        cancels no other wait for the same ref."""
        shared = _loop_future(self)
        mine = shared.get_loop().create_future()
        _chain(shared, mine)
        return mine

    def future(self):
        """A ``concurrent.futures.Future`` resolved with the value (or the
        error); ``asyncio.wrap_future(ref.future())`` turns it into an
        asyncio one.  No thread waits for it on the real runtime; on the
        simulator a daemon thread does (the simulation runs while it waits)."""
        import concurrent.futures

        fut: concurrent.futures.Future = concurrent.futures.Future()
        rt = current_runtime()
        notify = getattr(rt, "notify_ready", None)
        if notify is None:
            threading.Thread(target=_resolve, args=(self, fut), daemon=True, name="penumbra-ref-future").start()
        else:
            notify(self._id, lambda err: _resolver().submit(self, fut, err))
        return fut

    # asyncio's future protocol, on the running loop's future for this ref
    def add_done_callback(self, fn, *, context=None) -> None:
        """Call ``fn(ref)`` on the running loop once the value is ready."""
        fut = _loop_future(self)
        wrappers = _callbacks.setdefault(self, {})

        def call(_f, fn=fn, ref=self) -> None:
            fn(ref)

        wrappers.setdefault(fn, []).append(call)
        fut.add_done_callback(call, context=context)

    def remove_done_callback(self, fn) -> int:
        wrappers = _callbacks.get(self, {}).pop(fn, [])
        futs = _loop_futures.get(self)
        n = 0
        if futs:
            for fut in futs.values():
                for call in wrappers:
                    n += fut.remove_done_callback(call)
        return n

    def done(self) -> bool:
        """Whether the value is ready (as this process's event loop has
        seen it, else asked now without waiting)."""
        fut = _current_loop_future(self)
        if fut is not None:
            return fut.done()
        return bool(current_runtime().wait_objects([self._id], 1, 0, False))

    def result(self):
        """The value, once ``done()`` (asyncio's ``Future.result``): raises
        ``asyncio.InvalidStateError`` before."""
        fut = _current_loop_future(self)
        if fut is not None:
            return fut.result()
        if not self.done():
            import asyncio

            raise asyncio.InvalidStateError(f"{self!r} is not ready yet")
        return get(self)

    def exception(self):
        """The error the value holds, once ``done()`` (None if it holds none)."""
        fut = _current_loop_future(self)
        if fut is not None:
            return fut.exception()
        try:
            self.result()
        except BaseException as e:  # noqa: BLE001
            import asyncio

            if isinstance(e, asyncio.InvalidStateError):
                raise
            return e
        return None

    def cancelled(self) -> bool:
        """Always False: a ref is not cancelled by asyncio (``penumbra.cancel``
        cancels its task, and the ref then holds ``TaskCancelledError``)."""
        return False


# ref -> {loop: the asyncio future of that loop resolved with its value}
_loop_futures: "weakref.WeakKeyDictionary[ObjectRef, dict]" = weakref.WeakKeyDictionary()
# ref -> {user callback: [its wrappers]} (remove_done_callback)
_callbacks: "weakref.WeakKeyDictionary[ObjectRef, dict]" = weakref.WeakKeyDictionary()


def _current_loop_future(ref: ObjectRef):
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return (_loop_futures.get(ref) or {}).get(loop)


def _loop_future(ref: ObjectRef):
    """The running loop's future for ``ref``, made (and its value asked
    for) the first time: a runtime with ``notify_ready`` (the real one)
    calls back from a node watch, and the value is read on the loop once
    it is local; another (the simulator) is driven by ``_AsyncWatch``."""
    import asyncio

    loop = asyncio.get_running_loop()
    futs = _loop_futures.get(ref)
    if futs is None:
        futs = _loop_futures[ref] = {}
    fut = futs.get(loop)
    if fut is not None:
        return fut
    fut = futs[loop] = loop.create_future()
    rt = current_runtime()
    notify = getattr(rt, "notify_ready", None)
    if notify is None:
        _AsyncWatch.of(loop, rt).add(ref, fut)
    else:
        def ready(err, ref=ref, fut=fut, loop=loop) -> None:  # (on the runtime's thread)
            try:
                loop.call_soon_threadsafe(_settle, ref, fut, err)
            except RuntimeError:
                pass  # the loop is closed: nobody waits any more

        notify(ref._id, ready)
    return fut


def _settle(ref: ObjectRef, fut, err: BaseException | None) -> None:
    """(on the loop) ``fut`` gets ``ref``'s value, which is ready and local:
    ``get`` returns at once."""
    if fut.done():
        return
    if err is not None:
        fut.set_exception(err)
        return
    try:
        value = get(ref)
    except BaseException as e:  # noqa: BLE001 - the value is an error: the future holds it
        fut.set_exception(e)
    else:
        fut.set_result(value)


def _chain(src, dst) -> None:
    def copy(f) -> None:
        if dst.done():
            return
        if f.cancelled():
            dst.cancel()
        elif f.exception() is not None:
            dst.set_exception(f.exception())
        else:
            dst.set_result(f.result())

    src.add_done_callback(copy)


_BUSY_STEP = 0.001  # virtual seconds


class _AsyncWatch:
    """For a runtime that cannot call back (the simulator: it runs only
    while the driver is blocked in the API), the loop's refs are waited for
    on the loop's own thread: when no other callback is ready to run, it
    blocks in ``wait`` until one of them is ready (the simulation runs
    meanwhile, in virtual time, and says if it is stuck); otherwise it lets
    the simulation run for a moment only, and the other callbacks run next."""

    _by_loop: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def __init__(self, loop, rt) -> None:
        self.loop = loop
        self.rt = rt
        self.pending: dict = {}  # ref -> its loop future
        self.scheduled = False

    @classmethod
    def of(cls, loop, rt) -> "_AsyncWatch":
        w = cls._by_loop.get(loop)
        if w is None or w.rt is not rt:
            w = cls._by_loop[loop] = cls(loop, rt)
        return w

    def add(self, ref: ObjectRef, fut) -> None:
        self.pending[ref] = fut
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.pump)

    def pump(self) -> None:
        self.scheduled = False
        pending = {r: f for r, f in self.pending.items() if not f.done()}
        self.pending = pending
        if not pending:
            return
        busy = bool(getattr(self.loop, "_ready", ()))  # other callbacks are ready to run
        try:
            # (busy: a short step of virtual time, not none at all, so that a
            # coroutine polling ``ref.done()`` cannot stop the simulation)
            ready = self.rt.wait_objects([r._id for r in pending], 1, _BUSY_STEP if busy else None, True)
        except BaseException as e:  # noqa: BLE001 - the simulation is stuck or gone: every waiter hears it
            for r, f in pending.items():
                f.set_exception(e)
            self.pending = {}
            return
        for r, f in list(pending.items()):
            if r._id in ready:
                del self.pending[r]
                _settle(r, f, None)
        if self.pending and not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.pump)


class _Resolver:
    """One daemon thread that gives ``ref.future()``s their values once the
    runtime says they are ready (``notify_ready`` calls back on its own
    thread, which must not block; the ``get`` here returns at once)."""

    def __init__(self) -> None:
        import queue

        self.queue: "queue.SimpleQueue" = queue.SimpleQueue()
        threading.Thread(target=self.run, daemon=True, name="penumbra-ref-futures").start()

    def submit(self, ref: ObjectRef, fut, err: BaseException | None) -> None:
        self.queue.put((ref, fut, err))

    def run(self) -> None:
        while True:
            ref, fut, err = self.queue.get()
            if err is not None:
                if fut.set_running_or_notify_cancel():
                    fut.set_exception(err)
                continue
            _resolve(ref, fut)


_resolver_instance: _Resolver | None = None


def _resolver() -> _Resolver:
    global _resolver_instance
    with _lock:
        if _resolver_instance is None:
            _resolver_instance = _Resolver()
        return _resolver_instance


def _resolve(ref: ObjectRef, fut) -> None:
    if not fut.set_running_or_notify_cancel():
        return  # cancelled by its holder
    try:
        fut.set_result(get(ref))
    except BaseException as e:  # noqa: BLE001
        fut.set_exception(e)


# -- reading and writing values (see the module doc) ---------------------------
def _check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or timeout < 0:
        raise ValueError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
    return float(timeout)


def _raise_if_error(value: Any) -> Any:
    if type(value) is ErrorValue:
        raise from_error_info(value.info, loads)
    return value


def get(object_refs, *, timeout: float | None = None):
    """The value(s) of one ref or a list of refs, waiting until ready.

    Raises:
        GetTimeoutError: not ready within ``timeout`` seconds.
        TaskError: the task raised (also an instance of the user's class).
        WorkerCrashedError, ActorDiedError, ObjectLostError, TaskCancelledError.
    """
    timeout = _check_timeout(timeout)
    rt = current_runtime(auto_init=True)
    if type(object_refs) is ObjectRef:
        return _raise_if_error(rt.get_objects([object_refs._id], timeout)[0])
    if not isinstance(object_refs, (list, tuple)):
        raise ValueError(
            f"'object_refs' must be an ObjectRef or a list of ObjectRefs, got {type(object_refs).__name__}"
        )
    ids = []
    for i, r in enumerate(object_refs):
        if type(r) is not ObjectRef:
            raise TypeError(f"get() expects ObjectRefs, but item {i} is a {type(r).__name__}: {r!r}")
        ids.append(r._id)
    if not ids:
        return []
    values = rt.get_objects(ids, timeout)
    return [_raise_if_error(v) for v in values]


def put(value: Any) -> ObjectRef:
    """Store ``value`` in the object store; returns its ref.

    The object stays pinned while this process holds a ref to it.  ``put``
    objects cannot be rebuilt from lineage if every copy is lost.
    """
    if isinstance(value, ObjectRef):
        raise TypeError(
            "put() of an ObjectRef is not allowed: pass the ref itself, or put() the value it refers to"
        )
    rt = current_runtime(auto_init=True)
    ctx = task_context()
    oid = put_object_id(ctx.task_id, next(ctx.puts))
    rt.put_object(oid, value)
    mark_owned_put(oid)
    return ObjectRef(oid)


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

