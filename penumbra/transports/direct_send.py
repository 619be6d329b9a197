"""Sending from the caller's thread: a client's ``.remote()`` without a thread hop.

A client (driver or worker) runs its connection on a trio loop in a
background thread (``bridge.TrioThread``).  Sending through that loop costs
a hand-off: the user's thread queues a job, wakes the loop (an eventfd
write), and the loop's thread, once it has the GIL, pickles and writes.
For a fire-and-forget message such as a ``SubmitTask``, that hand-off is
most of the driver's cost, and its latency is on every round trip.

:class:`DirectSender` is the send side of one client channel, shared by the
loop's thread and the user's threads.  ``send`` from a user thread writes
the message to the socket itself when nothing is ahead of it, and falls
back to the loop otherwise.

Order.  Messages one thread sends arrive in the order it sent them, as
before.  A direct write happens only when

* the loop is idle (``TrioThread.idle``): every job submitted before, a
  fall-back send or a request queued on the loop, has already run, so its
  message is already in the channel's queue or on the wire; and
* the channel has no one writing (``Channel.write_from_thread``): no
  flusher awake, no bytes pending.  What is queued in the channel goes out
  first, in the same frame.

Everything that touches the channel's send side holds ``lock``: the
loop's sends (``send_on_loop``, ``flush_on_loop``) as well as a direct
write, so a direct write and the loop never interleave bytes or take the
same queue twice.  When the kernel takes only part of a frame, the rest is
pending in the channel and the loop's flusher is asked to finish it; until
it has, every send goes through the loop.

A full outbox.  The channel queues at most ``max_outbox`` messages; past
that, ``send_on_loop`` keeps what does not fit (``overflow``, in order) and
a task of the loop feeds it to the channel as the flusher makes room --
until it is empty every send queues behind it (it was dropped, and whoever
waited for an answer to it waited forever).

Losing the connection.  A direct write that fails is reported to the loop
(``Channel.record_send_error``), which ends the channel as a failed write
on the loop would; the receive loop reports the loss to the client's
machine as before, and the client refuses sends after it
(``ClientRuntime._send``).  ``close`` stops direct writes before the
channel is closed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Hashable

import trio

from .bridge import TrioThread
from .wire_channel import FAILED, NOT_NOW, PARTLY, Channel
from .wire_frames import ConnectionClosed

__all__ = ["DirectSender", "IdleFlush"]

logger = logging.getLogger("penumbra")

#: Sends of one kind closer together than this (seconds) are a burst: they
#: go through the loop, which puts a burst on the wire as one frame.
BURST_GAP = 200e-6


class DirectSender:
    """One client channel's send side, for the loop's and the user's threads.

    Attributes:
        direct, via_loop: how many ``send`` calls wrote on the caller's
            thread, and how many went through the loop (for tests and
            benchmarks).
    """

    def __init__(self, channel: Channel, bridge: TrioThread, idle_flush: "IdleFlush | None" = None) -> None:
        self.channel = channel
        self.bridge = bridge
        self.idle_flush = idle_flush  # flushes this channel when the loop is idle (else its owner does)
        self.lock = threading.Lock()
        self.closed = False  # no more direct writes (the channel is closing)
        self.direct = 0
        self.via_loop = 0
        self._last: dict[Hashable, float] = {}  # kind -> when the last send of it was
        self.overflow: list[Any] | None = None  # what the full outbox did not take, in order (see the module doc)

    def lone(self, kind: Hashable) -> bool:
        """Whether a send of ``kind`` now may go direct: the loop is idle and
        the last send of ``kind`` was at least ``BURST_GAP`` ago.

        A lone message is cheapest written here (no hand-off to the loop's
        thread); in a burst (``[f.remote() for ...]``), one frame for many
        messages, written by the loop, costs less per message than a frame
        and a system call each."""
        now = time.perf_counter()
        last = self._last.get(kind, float("-inf"))
        self._last[kind] = now
        return now - last >= BURST_GAP and self.bridge.idle()

    def send(self, item: Any, kind: Hashable = None) -> None:
        """Send ``item`` from any thread: written here and now when nothing
        is ahead of it, else queued on the loop (in order either way).
        With ``kind``, only a lone send of that kind goes direct (``lone``).

        Raises:
            RuntimeError: the loop has stopped (as ``TrioThread.submit``).
        """
        bridge = self.bridge
        if self.overflow is None and (self.lone(kind) if kind is not None else bridge.idle()):
            with self.lock:
                if bridge.idle() and not self.closed and self.overflow is None:
                    try:
                        done = self.channel.write_from_thread(item)
                    except Exception:  # closed: the receive loop reports it
                        done = NOT_NOW
                    else:
                        self.direct += done is not NOT_NOW
                else:
                    done = NOT_NOW
            if done is not NOT_NOW:
                if done is PARTLY:
                    self._on_loop(self._resume)
                elif done is FAILED:
                    self._on_loop(self._record_error)
                return
        self.via_loop += 1
        bridge.submit(self.send_on_loop, item)

    def _on_loop(self, fn) -> None:
        try:
            self.bridge.submit(fn)
        except RuntimeError:  # the loop is gone, and the connection with it
            pass

    def _on_loop_task(self, fn) -> None:
        try:
            self.bridge.start_soon(fn)
        except RuntimeError:  # the loop is gone, and the connection with it
            pass

    async def _drain_overflow(self) -> None:
        """(a task of the loop) Feed ``overflow`` to the channel as it makes
        room, in order; then sends take their usual ways again."""
        ch = self.channel
        while True:
            with self.lock:
                batch = self.overflow
                if not batch:
                    self.overflow = None
                    return
                self.overflow = []
            for item in batch:
                try:
                    await ch.send(item)  # (waits while the outbox is full)
                except (ConnectionClosed, trio.ClosedResourceError) as e:  # the receive loop reports it
                    logger.debug("send failed: %s", e)
                    with self.lock:
                        self.overflow = None
                    return
                except Exception:  # noqa: BLE001 - one that does not encode: the others still go
                    logger.exception("a message could not be sent; dropped")

    def _resume(self) -> None:
        with self.lock:
            self.channel.resume_writing()

    def _record_error(self) -> None:
        with self.lock:
            self.channel.record_send_error()

    def send_on_loop(self, item: Any) -> None:
        """(the loop's thread) Queue ``item``; ``flush_on_loop`` writes the
        queue once the burst of jobs is done."""
        with self.lock:
            if self.overflow is not None:
                self.overflow.append(item)
                return
            try:
                self.channel.send_nowait(item, defer_flush=True)
            except trio.WouldBlock:
                self.overflow = [item]
                self._on_loop_task(self._drain_overflow)
            except Exception as e:  # closed: futures are failed by the receive loop
                logger.debug("send failed: %s", e)
        if self.idle_flush is not None:
            self.idle_flush.dirty.add(self)

    def flush_on_loop(self) -> None:
        """(the loop's thread) Write everything queued, as one frame."""
        with self.lock:
            try:
                self.channel.flush_nowait()
            except Exception as e:
                logger.debug("flush failed: %s", e)

    def close(self) -> None:
        """No more direct writes (before the channel is closed): a write
        in progress finishes first."""
        with self.lock:
            self.closed = True


class IdleFlush:
    """Writes the queued messages of many ``DirectSender``s once the loop
    is idle (one frame each per burst): for the channels a process opens
    besides its node's (direct actor calls), whose owner does not flush
    them itself.  Used on the loop's thread only."""

    def __init__(self, bridge: TrioThread) -> None:
        self.dirty: set[DirectSender] = set()
        bridge.on_idle(self.run)

    def run(self) -> None:
        dirty = self.dirty
        while dirty:
            dirty.pop().flush_on_loop()
