"""``Queue``: a first-in, first-out queue shared by tasks and actors
(Ray's ``ray.util.queue``).

The items live in one async actor, so any process that holds the queue (it
pickles: pass it to tasks and actors like a handle) puts to and gets from
the same place.  A blocking ``put`` on a full queue or ``get`` on an empty
one waits *inside the actor* (an ``await`` on an ``asyncio.Queue``), so
thousands of blocked callers cost the actor no threads, and a caller's
``timeout`` is applied there too: ``Full``/``Empty`` come back as the
actor's error, which ``get`` re-raises as an instance of the same class.

Order is FIFO per queue; when several producers wait on a full queue (or
several consumers on an empty one), which of them goes first is not
specified, as in Ray.

The queue dies with the job that made it (its actor is not detached);
``shutdown()`` ends it earlier.
"""

from __future__ import annotations

import asyncio
import queue as _stdqueue
from collections.abc import Iterable
from typing import Any

from ..api import functions as _api

__all__ = ["Empty", "Full", "Queue"]


class Empty(_stdqueue.Empty):
    """Raised by ``get`` on an empty queue: at once when not blocking, or
    when the timeout passed with nothing to take."""


class Full(_stdqueue.Full):
    """Raised by ``put`` on a full queue: at once when not blocking, or when
    the timeout passed with no room made."""


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"'timeout' must be a non-negative number or None, got {timeout!r}")


class _QueueActor:
    """Holds the items (an async actor: every wait is an ``await``)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.queue.qsize()

    def empty(self) -> bool:
        return self.queue.empty()

    def full(self) -> bool:
        return self.queue.full()

    async def put(self, item: Any, timeout: float | None = None) -> None:
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            raise Full(f"the queue stayed full (maxsize {self.maxsize}) for {timeout} s") from None

    async def get(self, timeout: float | None = None) -> Any:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            raise Empty(f"the queue stayed empty for {timeout} s") from None

    def put_nowait(self, item: Any) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            raise Full(f"the queue is full (maxsize {self.maxsize})") from None

    def put_nowait_batch(self, items: list) -> None:
        # all or nothing: a batch that does not fit is refused whole
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            raise Full(
                f"cannot add {len(items)} items to a queue holding {self.queue.qsize()} "
                f"of at most {self.maxsize}"
            )
        for item in items:
            self.queue.put_nowait(item)

    def get_nowait(self) -> Any:
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            raise Empty("the queue is empty") from None

    def get_nowait_batch(self, num_items: int) -> list:
        if num_items > self.queue.qsize():
            raise Empty(f"cannot take {num_items} items from a queue holding {self.queue.qsize()}")
        return [self.queue.get_nowait() for _ in range(num_items)]


class Queue:
    """A FIFO queue on the cluster, shared by whoever holds it::

        from penumbra.util.queue import Queue, Empty
        q = Queue(maxsize=100)
        q.put(1)
        consume.remote(q)        # the queue travels like an actor handle

    Args:
        maxsize: most items held at once; 0 (the default) for no bound.
        actor_options: options for the actor that holds the items (as for
            ``.options()``), e.g. ``{"num_cpus": 1}`` or a name.

    Raises:
        ValueError: a negative ``maxsize``.
    """

    def __init__(self, maxsize: int = 0, actor_options: dict | None = None) -> None:
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 0:
            raise ValueError(f"maxsize must be a non-negative int (0 for no bound), got {maxsize!r}")
        self.maxsize = maxsize
        options = {"num_cpus": 0, **(actor_options or {})}
        self.actor = _api.remote(_QueueActor).options(**options).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """How many items the queue holds now."""
        return _api.get(self.actor.qsize.remote())

    def qsize(self) -> int:
        """Same as ``size()``."""
        return self.size()

    def empty(self) -> bool:
        """Whether the queue holds nothing now."""
        return _api.get(self.actor.empty.remote())

    def full(self) -> bool:
        """Whether the queue holds ``maxsize`` items now."""
        return _api.get(self.actor.full.remote())

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``; when full, wait for room (at most ``timeout`` s,
        ``None`` for as long as it takes) or, with ``block=False``, fail at once.

        Raises:
            Full: no room, and not blocking or the timeout passed.
            ValueError: a negative timeout.
        """
        if not block:
            return _api.get(self.actor.put_nowait.remote(item))
        _check_timeout(timeout)
        _api.get(self.actor.put.remote(item, timeout))

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """``put`` for asyncio code (awaits instead of blocking the loop)."""
        if not block:
            return await self.actor.put_nowait.remote(item)
        _check_timeout(timeout)
        await self.actor.put.remote(item, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Take the next item; when empty, wait for one (at most ``timeout``
        s, ``None`` for as long as it takes) or, with ``block=False``, fail at once.

        Raises:
            Empty: nothing to take, and not blocking or the timeout passed.
            ValueError: a negative timeout.
        """
        if not block:
            return _api.get(self.actor.get_nowait.remote())
        _check_timeout(timeout)
        return _api.get(self.actor.get.remote(timeout))

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """``get`` for asyncio code (awaits instead of blocking the loop)."""
        if not block:
            return await self.actor.get_nowait.remote()
        _check_timeout(timeout)
        return await self.actor.get.remote(timeout)

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``."""
        return self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable) -> None:
        """Add every item of ``items`` at once, or none of them.

        Raises:
            Full: they do not all fit.
            TypeError: ``items`` is not iterable.
        """
        if not isinstance(items, Iterable):
            raise TypeError(f"put_nowait_batch takes an iterable of items, got {type(items).__name__}")
        _api.get(self.actor.put_nowait_batch.remote(list(items)))

    def get_nowait(self) -> Any:
        """``get(block=False)``."""
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list:
        """Take ``num_items`` items at once, in order, or none.

        Raises:
            Empty: fewer than ``num_items`` are there.
            ValueError: ``num_items`` is not a non-negative int.
        """
        if not isinstance(num_items, int) or isinstance(num_items, bool) or num_items < 0:
            raise ValueError(f"num_items must be a non-negative int, got {num_items!r}")
        return _api.get(self.actor.get_nowait_batch.remote(num_items))

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """End the queue's actor; the items it held are gone.  (penumbra
        ends it at once either way: the actor holds nothing to flush, so
        ``force`` and ``grace_period_s`` are accepted for Ray's signature.)"""
        if self.actor is not None:
            _api.kill(self.actor)
        self.actor = None
