"""``ActorPool``: a fixed set of actors that takes work as they free up.

Each piece of work is ``fn(actor, value)``, which must call a method of the
actor and return its ``ObjectRef``; the actor counts as busy until that ref
is ready.  Work submitted while every actor is busy waits in a FIFO queue
and goes to the first actor that frees up.  Results come back either in
submission order (``get_next``, ``map``) or as they finish
(``get_next_unordered``, ``map_unordered``); one pool uses one of the two
orders at a time.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Iterator

from ..api import functions as _api
from ..api.refs import ObjectRef

__all__ = ["ActorPool"]


class ActorPool:
    """Operate on a fixed pool of actors (Ray's ``ray.util.ActorPool``)::

        pool = ActorPool([Worker.remote(), Worker.remote()])
        list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3]))  # [2, 4, 6]

    Warning: a pool is not thread-safe; use it from one thread.
    """

    def __init__(self, actors: list) -> None:
        self._idle: list = list(actors)
        self._busy: dict = {}  # ref -> (index, actor)
        self._by_index: dict[int, Any] = {}  # submission index -> ref, not yet returned
        self._waiting: deque = deque()  # (fn, value, index) with no actor yet
        self._next_index = 0  # index of the next submission
        self._next_return = 0  # index get_next returns next
        self._unordered_used = False

    # ------------------------------------------------------------ submitting
    def submit(self, fn: Callable[[Any, Any], Any], value: Any) -> None:
        """Run ``fn(actor, value)`` on an idle actor, or queue it until one
        frees up; collect the result with ``get_next``/``get_next_unordered``."""
        index = self._next_index
        self._next_index += 1
        if self._idle:
            self._start(fn, value, index, self._idle.pop())
        else:
            self._waiting.append((fn, value, index))

    def _start(self, fn, value, index: int, actor) -> None:
        ref = fn(actor, value)
        if type(ref) is not ObjectRef:
            self._idle.append(actor)
            raise TypeError(
                f"ActorPool: fn(actor, value) must return the ObjectRef of an actor method call "
                f"(e.g. lambda a, v: a.method.remote(v)), got {type(ref).__name__}"
            )
        self._busy[ref] = (index, actor)
        self._by_index[index] = ref

    def _free(self, actor) -> None:
        if self._waiting:
            fn, value, index = self._waiting.popleft()
            self._start(fn, value, index, actor)
        else:
            self._idle.append(actor)

    def map(self, fn: Callable[[Any, Any], Any], values) -> Iterator[Any]:
        """Apply ``fn`` over ``values`` on the pool; an iterator of the
        results in the order of ``values`` (iterate it to get them all)."""
        return self._map(fn, values, self.get_next)

    def map_unordered(self, fn: Callable[[Any, Any], Any], values) -> Iterator[Any]:
        """Like ``map``, but results come as they finish."""
        return self._map(fn, values, self.get_next_unordered)

    def _map(self, fn, values, next_result: Callable[[], Any]) -> Iterator[Any]:
        self._drain()
        for v in values:
            self.submit(fn, v)

        def results():
            while self.has_next():
                yield next_result()

        return results()

    def _drain(self) -> None:
        # what is still in flight from earlier use would be mixed into this
        # map's results: collect it first (Ray does the same)
        while self.has_next():
            try:
                self.get_next_unordered()
            except Exception:  # noqa: BLE001 - an earlier failure is not this map's
                pass

    # ------------------------------------------------------------ results
    def has_next(self) -> bool:
        """Whether results are still to be returned."""
        return bool(self._by_index) or bool(self._waiting)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order, waiting up to ``timeout``
        seconds.

        Raises:
            StopIteration: nothing is pending.
            ValueError: ``get_next_unordered`` was used on this pool since its
                results were last all returned (the order is lost).
            TimeoutError: no result within ``timeout``; with
                ``ignore_if_timedout`` that result is given up and the next
                call moves on to the one after it.
            Whatever the method raised, as ``get`` does.
        """
        if not self.has_next():
            raise StopIteration("no more results to get")
        if self._unordered_used:
            raise ValueError("get_next() cannot be used after get_next_unordered() on the same "
                             "pool until every pending result has been returned")
        index = self._next_return
        ref = self._by_index.get(index)
        if ref is None:
            # still queued behind busy actors: wait for actors to free up
            # (in any order) until it has started
            self._wait_until_started(index, timeout)
            ref = self._by_index[index]
        ready, _ = _api.wait([ref], num_returns=1, timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                self._give_up(index, ref)
            raise TimeoutError(f"ActorPool.get_next: result {index} not ready within {timeout} s")
        return self._take(index, ref)

    def get_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """Whichever pending result is ready first, waiting up to ``timeout``
        seconds (raises like ``get_next``, but never ``ValueError``)."""
        if not self.has_next():
            raise StopIteration("no more results to get")
        refs = list(self._busy)
        ready, _ = _api.wait(refs, num_returns=1, timeout=timeout)
        if not ready:
            if ignore_if_timedout and refs:
                index, _ = self._busy[refs[0]]
                self._give_up(index, refs[0])
            raise TimeoutError(f"ActorPool.get_next_unordered: no result within {timeout} s")
        ref = ready[0]
        index, _ = self._busy[ref]
        self._unordered_used = True
        return self._take(index, ref)

    def _take(self, index: int, ref) -> Any:
        self._done(index, ref)
        return _api.get(ref)

    def _give_up(self, index: int, ref) -> None:
        self._done(index, ref)

    def _done(self, index: int, ref) -> None:
        _, actor = self._busy.pop(ref)
        del self._by_index[index]
        if not self._by_index and not self._waiting:
            # all returned: the next submission is the next to return
            self._next_return = self._next_index
            self._unordered_used = False
        elif index == self._next_return:
            self._next_return += 1  # (in order: the one after it is pending)
        if actor is not None:  # (None: freed already, see _wait_until_started)
            self._free(actor)

    def _wait_until_started(self, index: int, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while index not in self._by_index:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            running = [r for r, (_, a) in self._busy.items() if a is not None]
            ready, _ = _api.wait(running, num_returns=1, timeout=left)
            if not ready:
                raise TimeoutError(f"ActorPool.get_next: result {index} not started within {timeout} s")
            # an actor is done: free it (its result stays to be returned)
            ref = ready[0]
            idx, actor = self._busy[ref]
            self._busy[ref] = (idx, None)
            self._free(actor)

    # ------------------------------------------------------------ actors
    def has_free(self) -> bool:
        """Whether an actor is idle (and no work is waiting for one)."""
        return bool(self._idle) and not self._waiting

    def pop_idle(self):
        """Take an idle actor out of the pool (None if none is idle)."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor) -> None:
        """Add ``actor`` to the pool (it takes waiting work at once)."""
        if any(a == actor for a in self._idle) or any(a == actor for _, a in self._busy.values()):
            raise ValueError("ActorPool.push: this actor is already in the pool")
        self._free(actor)
