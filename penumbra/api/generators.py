"""Generator tasks: values that stream out of a task as it yields them.

Ray's three ways to run a generator function (or actor method):

* ``num_returns=N``: exactly N yielded values, as N refs (``execution``
  collects them; nothing streams);
* ``num_returns="streaming"`` (the default for a generator function): the
  call returns an :class:`ObjectRefGenerator`, and each ``next()`` gives the
  ref of the next value *as soon as the task has yielded it*, while the task
  runs on;
* ``num_returns="dynamic"``: the call returns one ref, whose value (once the
  task ends) is a :class:`DynamicObjectRefGenerator` of the values' refs.

How it works: the task's one declared return (index 1) is its *end*: the
worker stores each yielded value, in order, under the object id the task's
id and the value's position make (:func:`stream_item_id`: return index 2,
3, ...), the way ``put`` stores a value, and when the generator is done the
end's value is a ``DynamicObjectRefGenerator`` of them.  Both drivers run
the same code (``stream_values``), so the simulator streams too.  A caller
learns of value *i* by waiting for item *i* or the end, whichever is first:
if the end comes and holds fewer than *i* + 1 values, the stream is over;
if the end holds an error (the task raised at value *i*), ``next()`` hands
out the end's ref once, so ``get`` raises the task's error at the position
it happened, as in Ray.

A value is stored as its task yields it, unpinned: like a finished task's
output it stays in the store until evicted.  Unlike one, a streamed value is
not rebuilt from lineage (``get`` of an evicted one raises
``ObjectLostError``); a retried task yields its values again under the same
ids.

``wait`` lives here too (``penumbra.api.functions`` re-exports it): it takes
generators among its refs, and a generator's ``next()`` waits with it.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterator, Sequence

from ..core.ids import ObjectId, TaskId, return_object_id
from .context import current_runtime
from .execution import task_error
from .refs import ObjectRef, _check_timeout, get
from .runtime import ErrorValue

__all__ = ["DYNAMIC", "STREAMING", "DynamicObjectRefGenerator", "ObjectRefGenerator", "astream_values",
           "is_generator_result", "refs_for", "returns_mode", "stream_item_id", "stream_values", "wait"]

# How an actor's method table (``ActorSpec.methods``, ints) marks a method
# whose values stream (Ray's num_returns="streaming"/"dynamic").
STREAMING = -1
DYNAMIC = -2
_MODES = {"streaming": STREAMING, "dynamic": DYNAMIC}


def returns_mode(num_returns: Any, is_generator: bool) -> int:
    """``num_returns`` as stored: an int >= 0, or ``STREAMING``/``DYNAMIC``
    (a generator function without ``num_returns`` streams, as in Ray)."""
    if isinstance(num_returns, str):
        return _MODES[num_returns]
    if num_returns is None:
        return STREAMING if is_generator else 1
    return num_returns


def refs_for(spec, mode: int):
    """What ``.remote()`` returns for a submitted ``spec`` whose returns are
    ``mode`` (``returns_mode``): a ref, a list of refs, None, or a generator."""
    if mode == 1 or mode == DYNAMIC:
        return ObjectRef(spec.return_ids[0])
    if mode == STREAMING:
        return ObjectRefGenerator(spec.task_id, ObjectRef(spec.return_ids[0]))
    if mode == 0:
        return None
    return [ObjectRef(o) for o in spec.return_ids]


def stream_item_id(task_id: TaskId, i: int) -> ObjectId:
    """The object id of the ``i``-th value a generator task yields."""
    return return_object_id(task_id, 2 + i)


def is_generator_result(result: Any) -> bool:
    return inspect.isgenerator(result) or inspect.isasyncgen(result)


class DynamicObjectRefGenerator:
    """The refs of every value a generator task yielded, in order
    (``num_returns="dynamic"``): iterate it, or ``len()`` it."""

    def __init__(self, refs: list[ObjectRef]) -> None:
        self._refs = list(refs)

    def __iter__(self) -> Iterator[ObjectRef]:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self) -> str:
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"


def stream_values(spec, gen, store: Callable[[ObjectId, Any], None]) -> DynamicObjectRefGenerator:
    """Run ``gen`` to its end, storing each value as it is yielded (the
    worker's side; ``store(oid, value)`` puts it).  If the generator raises,
    its error is stored as the next value (``get`` of that ref raises it)
    and the stream ends there, as in Ray."""
    refs: list[ObjectRef] = []
    try:
        for value in (_steps(gen) if inspect.isasyncgen(gen) else gen):
            _store_next(spec, refs, value, store)
    except Exception as e:  # noqa: BLE001 - the user's generator may raise anything
        _store_next(spec, refs, ErrorValue(task_error(spec, e)[0]), store)
    return DynamicObjectRefGenerator(refs)


def _store_next(spec, refs: list, value: Any, store: Callable[[ObjectId, Any], None]) -> None:
    oid = stream_item_id(spec.task_id, len(refs))
    store(oid, value)
    refs.append(ObjectRef(oid))


def _steps(agen):
    """An async generator's values, one event-loop run per step, on this
    thread (where a driver that cannot block off-thread needs them)."""
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(agen.aclose())
        loop.close()


async def astream_values(spec, agen, store: Callable[[ObjectId, Any], None]) -> DynamicObjectRefGenerator:
    """``stream_values`` for an async generator (an async actor's method);
    ``store`` blocks, so it runs off the event loop."""
    import asyncio

    loop = asyncio.get_running_loop()
    refs: list[ObjectRef] = []
    try:
        async for value in agen:
            await loop.run_in_executor(None, _store_next, spec, refs, value, store)
    except Exception as e:  # noqa: BLE001
        await loop.run_in_executor(None, _store_next, spec, refs, ErrorValue(task_error(spec, e)[0]), store)
    return DynamicObjectRefGenerator(refs)


class ObjectRefGenerator:
    """The refs of a streaming generator task's values, as it yields them.

    ``for ref in gen``: each ``next()`` blocks until the task has yielded
    its next value (or ended) and returns that value's ref; ``get`` it.
    ``async for ref in gen`` does the same without blocking the event loop;
    ``penumbra.wait([gen, ...])`` counts a generator as ready when its next
    value (or its end) is.  If the task raises, the values it yielded come
    first, then one ref whose ``get`` raises the error, then the end.

    Warning: a generator is consumed once, by one thread at a time.
    """

    def __init__(self, task_id: TaskId, end: ObjectRef) -> None:
        self._task_id = task_id
        self._end = end
        self._next_index = 0
        self._finished = False

    # -- what wait() looks at -------------------------------------------------
    def _candidates(self) -> tuple[ObjectRef, ObjectRef]:
        return ObjectRef(stream_item_id(self._task_id, self._next_index)), self._end

    def _is_done(self) -> bool:
        return self._finished

    # -- iteration ------------------------------------------------------------
    def __iter__(self) -> "ObjectRefGenerator":
        return self

    def __next__(self) -> ObjectRef:
        return self._next(None)

    def _next(self, timeout: float | None) -> ObjectRef:
        if self._finished:
            raise StopIteration
        item, end = self._candidates()
        ready, _ = wait([item, end], num_returns=1, timeout=timeout, fetch_local=False)
        if not ready:
            from ..exceptions import GetTimeoutError

            raise GetTimeoutError(f"the generator's next value was not ready within {timeout} s")
        if item in ready:
            self._next_index += 1
            return item
        try:
            values = get(end)
        except Exception:
            # the task failed: a value it yielded before failing is stored
            # before its end is, but a wait for one object may hear of the
            # end first; ask once more for the value before giving the error
            ready, _ = wait([item], num_returns=1, timeout=0, fetch_local=False)
            if ready:
                self._next_index += 1
                return item
            self._finished = True
            return end  # its get raises the task's error, at the value it failed on
        if not isinstance(values, DynamicObjectRefGenerator):
            self._finished = True
            raise TypeError(f"num_returns='streaming' was given for a task that is not a generator: it returned "
                            f"{type(values).__name__}; drop num_returns or make it yield")
        if self._next_index < len(values):
            # yielded before the end, reported after it: it is there
            self._next_index += 1
            return item
        self._finished = True
        raise StopIteration

    def __aiter__(self) -> "ObjectRefGenerator":
        return self

    async def __anext__(self) -> ObjectRef:
        import asyncio

        ref = await asyncio.get_running_loop().run_in_executor(None, self._next_or_none)
        if ref is None:
            raise StopAsyncIteration
        return ref

    def _next_or_none(self) -> ObjectRef | None:
        # (StopIteration cannot cross a future: it is turned into None here)
        try:
            return self._next(None)
        except StopIteration:
            return None

    def completed(self) -> ObjectRef:
        """The ref of the task's end: ready when the task has ended."""
        return self._end

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._task_id.short()}, next={self._next_index})"

    def __reduce__(self):
        return (_rebuild, (bytes(self._task_id), self._end, self._next_index, self._finished))


def _rebuild(task_id: bytes, end: ObjectRef, index: int, finished: bool) -> ObjectRefGenerator:
    g = ObjectRefGenerator(TaskId(task_id), end)
    g._next_index, g._finished = index, finished
    return g


# -- wait (see the module doc) ----------------------------------------------------
def wait(object_refs: Sequence[ObjectRef], *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Wait until ``num_returns`` of the refs are ready or ``timeout`` passes.

    Returns ``(ready, not_ready)``, both in the order of ``object_refs``.
    A streaming generator (``ObjectRefGenerator``) may stand among the refs:
    it is ready when its next value (or its end) is.
    """
    if isinstance(object_refs, ObjectRef):
        raise TypeError("wait() expects a list of ObjectRefs, not a single ObjectRef; use wait([ref])")
    if not isinstance(object_refs, (list, tuple)):
        raise TypeError(f"wait() expects a list of ObjectRefs, got {type(object_refs).__name__}")
    for i, r in enumerate(object_refs):
        if type(r) is not ObjectRef and type(r) is not ObjectRefGenerator:
            raise TypeError(f"wait() expects ObjectRefs, but item {i} is a {type(r).__name__}: {r!r}")
    if len(set(object_refs)) != len(object_refs):
        raise ValueError("wait() requires a list of unique ObjectRefs")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int) or num_returns < 1 and object_refs:
        raise ValueError(f"num_returns must be a positive integer, got {num_returns!r}")
    if num_returns > len(object_refs):
        raise ValueError(f"num_returns ({num_returns}) cannot exceed the number of refs ({len(object_refs)})")
    timeout = _check_timeout(timeout)
    if not object_refs:
        return [], []
    rt = current_runtime(auto_init=True)
    if any(type(r) is ObjectRefGenerator for r in object_refs):
        return _wait_with_generators(rt, object_refs, num_returns, timeout, fetch_local)
    ready_ids = rt.wait_objects([r._id for r in object_refs], num_returns, timeout, fetch_local)
    ready, not_ready = [], []
    for r in object_refs:
        if r._id in ready_ids and len(ready) < num_returns:
            ready.append(r)
        else:
            not_ready.append(r)
    return ready, not_ready


def _wait_with_generators(rt, items, num_returns: int, timeout: float | None, fetch_local: bool):
    """``wait`` over refs and generators: a generator stands for two ids (its
    next value and its end) and is ready when either is, so asking the node
    for ``num_returns`` ready ids may count one generator twice; ask again,
    for as many more as came up short, until enough items are ready."""
    import time

    ids_of = [(r._id,) if type(r) is ObjectRef else
              (() if r._is_done() else tuple(x._id for x in r._candidates())) for r in items]
    every = list(dict.fromkeys(i for ids in ids_of for i in ids))
    deadline = None if timeout is None else time.monotonic() + timeout
    want = num_returns
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        got = rt.wait_objects(every, min(want, len(every)), left, fetch_local) if every else set()
        ready_idx = [k for k, ids in enumerate(ids_of) if not ids or any(i in got for i in ids)]
        short = num_returns - len(ready_idx)
        if short <= 0 or want >= len(every) or (left is not None and left <= 0):
            break
        want = min(len(every), len(got) + short)
    chosen = set(ready_idx[:num_returns])
    return [r for k, r in enumerate(items) if k in chosen], [r for k, r in enumerate(items) if k not in chosen]
