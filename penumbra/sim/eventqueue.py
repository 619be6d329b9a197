"""The simulator's event queue: SimPy's environment on a bucketed calendar.

Why its own module: the queue is the one structure every part of the
kernel pushes into (hosts, clients, the network, ``call_at``), and its
ordering rule is what makes a run reproducible.  It knows nothing of hosts
or machines: entries are tuples whose fourth element is the function that
handles them.

Theory of operation
-------------------
SimPy's queue holds ``(time, priority, eid, event)`` 4-tuples; the kernel
pushes longer tuples ``(time, priority, eid, fn, ...)`` into the same queue
and dispatches them as ``fn(entry)``: no object per message.  eids are
unique, so tuples never compare beyond their third element.  ``_Calendar``
keeps them in exactly the order one heap would (see its docstring), and
``_Environment`` teaches ``env.step`` (and so ``env.run``) to run kernel
entries as well as SimPy events.  The entry layouts are listed below.
"""

from __future__ import annotations

from collections import deque
from functools import partial
from heapq import heappop, heappush
from typing import Any

import simpy

__all__ = ["_Calendar", "_Environment", "_simpy_process", "_NORMAL", "_URGENT"]

_NORMAL = 1  # simpy.events.NORMAL
_URGENT = 0  # simpy.events.URGENT

# ===========================================================================
# Queue entries.  SimPy's queue holds (time, priority, eid, event) 4-tuples;
# the kernel pushes longer tuples (time, priority, eid, fn, ...) into the same
# queue (a ``_Calendar``: time buckets, not one heap entry per message) and
# dispatches them as ``fn(entry)``: no object per message.  eids are unique,
# so tuples never compare beyond their third element.  The kernel's
# environment subclass teaches ``env.step`` (and so ``env.run``) about them.
#
#   network batch: (t, 1, eid, dst._on_net, msgs, dst_epoch, src, src_epoch, depart, link|None)
#   local events:  (t, 1, eid, dst._on_local, events, dst_epoch)
#   host wake-up:  (t, 1, eid, host._on_wake, epoch)
#   callback:      (t, 1, eid, kernel._on_call, fn, args, owner|None, owner_epoch)
#   run horizon:   (t, 0, eid, kernel._on_stop, token)



class _Calendar:
    """The event queue: entries in (time, priority, eid) order, bucketed by time.

    Why not one heap: at 1,000 nodes the queue holds ~16,000 entries at only
    ~850 distinct times (hosts in step, messages of one instant), and 97% of
    pushes land on a time already queued.  So entries of priority NORMAL
    wait in one FIFO ``deque`` per time (``buckets``), and only the distinct
    times are in a heap (``times``): a push is a dict lookup and an append,
    a pop a ``popleft``.  eids grow with every push, so appending keeps each
    bucket in eid order and the order is exactly the one heap's.  The rare
    entries of other priorities (run horizons, SimPy's URGENT events, a
    rescheduled ``StopSimulation``) go to a small heap of their own
    (``other``) and are merged by comparing whole entries.

    A time with a single entry keeps the entry itself, not a deque (most
    times in a small simulation): a deque is made when a second one comes.
    Invariant: ``times`` holds exactly the keys of ``buckets``, and no
    bucket is empty.

    **Small queues** (a swarm seed's few hosts: tens of entries) are cheaper
    as one plain heap: ``heapq.heappush`` is one C call, where a bucket push
    is Python code.  So a calendar starts ``small``, with its NORMAL
    entries in ``heap`` (the kernel pushes with ``push_small``, a
    ``functools.partial`` of ``heappush``: no Python frame), and the
    kernel's loop turns it into buckets (``grow``) once the heap holds more
    than ``SMALL_LIMIT`` entries, for good.  The order is the same in
    both: (time, priority, eid).
    """

    __slots__ = ("times", "buckets", "other", "barriers", "small", "heap", "push_small")

    SMALL_LIMIT = 512

    def __init__(self) -> None:
        self.times: list[float] = []
        self.buckets: dict[float, deque] = {}
        self.other: list[tuple] = []
        self.small = True
        self.heap: list[tuple] = []  # the NORMAL entries while ``small``
        self.push_small = partial(heappush, self.heap)
        # the times of the queued entries that may touch any host (a
        # ``kernel.call_at`` callback, a SimPy event of priority NORMAL): no
        # host handles an event ahead of the first (see ``Host._drain``).
        # Kept by whoever pushes and pops such an entry.
        self.barriers: list[float] = []

    def push(self, entry: tuple) -> None:
        if entry[1] == _NORMAL:
            if self.small:
                heappush(self.heap, entry)
                return
            t = entry[0]
            b = self.buckets.get(t)
            if b is None:
                self.buckets[t] = entry  # a lone entry waits as itself (no deque)
                heappush(self.times, t)
            elif b.__class__ is tuple:
                self.buckets[t] = deque((b, entry))
            else:
                b.append(entry)
        else:
            heappush(self.other, entry)

    def grow(self) -> None:
        """Leave ``small``: the heap's entries move into buckets, in order."""
        if not self.small:
            return
        self.small = False
        heap = sorted(self.heap)
        self.heap.clear()
        for e in heap:
            self.push_normal(e)

    def push_normal(self, entry: tuple) -> None:
        """``push`` for an entry known to have priority NORMAL, once not
        ``small`` (hot path)."""
        t = entry[0]
        b = self.buckets.get(t)
        if b is None:
            self.buckets[t] = entry
            heappush(self.times, t)
        elif b.__class__ is tuple:
            self.buckets[t] = deque((b, entry))
        else:
            b.append(entry)

    def pop(self) -> tuple:
        """Remove and return the first entry (``IndexError`` when empty)."""
        times, other = self.times, self.other
        if self.small:
            heap = self.heap
            if heap and not (other and other[0] < heap[0]):
                return heappop(heap)
            return heappop(other)
        if times:
            t = times[0]
            b = self.buckets[t]
            if b.__class__ is tuple:
                if other and other[0] < b:
                    return heappop(other)
                heappop(times)
                del self.buckets[t]
                return b
            if other and other[0] < b[0]:
                return heappop(other)
            item = b.popleft()
            if not b:
                heappop(times)
                del self.buckets[t]
            return item
        return heappop(other)

    def first_time(self) -> float:
        """The time of the first entry (``inf`` when empty)."""
        times, other = self.times, self.other
        if self.small:
            times = self.heap
            if times:
                t = times[0][0]
                return other[0][0] if other and other[0][0] < t else t
            return other[0][0] if other else float("inf")
        if times:
            t = times[0]
            return other[0][0] if other and other[0][0] < t else t
        return other[0][0] if other else float("inf")

    def __len__(self) -> int:
        return (sum(1 if b.__class__ is tuple else len(b) for b in self.buckets.values())
                + len(self.other) + len(self.heap))

    def __bool__(self) -> bool:
        return bool(self.times or self.other or self.heap)


def _simpy_process(env: simpy.Environment, item: tuple) -> None:
    """What ``simpy.Environment.step`` does with an entry it popped."""
    env._now = item[0]
    if item[1] == _NORMAL:
        heappop(env._cal.barriers)  # (see _Environment.schedule)
    event = item[3]
    callbacks, event.callbacks = event.callbacks, None
    try:
        for callback in callbacks:
            callback(event)
    except simpy.core.StopSimulation:
        event.callbacks = callbacks[callbacks.index(callback) + 1:]
        env.schedule(event, -1)
        raise
    if not event._ok and not hasattr(event, "_defused"):
        exc = type(event._value)(*event._value.args)
        exc.__cause__ = event._value
        raise exc


class _Environment(simpy.Environment):
    """A ``simpy.Environment`` on the kernel's ``_Calendar``: its ``step``
    (and so ``env.run``) also runs kernel entries."""

    def __init__(self, initial_time: float = 0) -> None:
        super().__init__(initial_time)
        self._queue = self._cal = _Calendar()  # type: ignore[assignment]

    def schedule(self, event: Any, priority: int = _NORMAL, delay: float = 0) -> None:
        t = self._now + delay
        if priority == _NORMAL:
            # a SimPy process may do anything to any host when it resumes:
            # a barrier to the hosts' look-ahead (the other priorities wait
            # in ``other``, which hosts look at as well)
            heappush(self._cal.barriers, t)
        self._cal.push((t, priority, next(self._eid), event))

    def peek(self) -> float:
        return self._cal.first_time()

    def step(self) -> None:
        try:
            item = self._cal.pop()
        except IndexError:
            raise simpy.core.EmptySchedule from None
        if len(item) == 4:
            _simpy_process(self, item)
        else:
            self._now = item[0]
            item[3](item)

