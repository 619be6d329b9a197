"""Tests for penumbra.transports.direct_send: sends written on the caller's thread.

A client's fire-and-forget messages (``SubmitTask``, actor calls) and its
requests' messages are written to the socket by the user's thread itself
when nothing is queued ahead of them, instead of being handed to the trio
thread.  What must hold: every message arrives once, and those one thread
sends arrive in the order it sent them, whichever path each took (direct,
through the loop, or direct but left partly pending when the socket was
full); a failed direct write ends the connection as a failed write on the
loop does; and a real runtime's round trips take the direct path.

Real sockets, real trio threads; nothing sleeps and hopes: every wait polls
a condition with a deadline.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import trio

from penumbra.transports import direct_send, wire
from penumbra.transports.bridge import TrioThread
from penumbra.transports.direct_send import DirectSender
from penumbra.transports.wire_channel import NOT_NOW, PARTLY, WROTE

pytestmark = pytest.mark.timeout(60)

TOKEN = "test-token-direct-send-0123"


def _until(cond, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


class _Pair:
    """A server on one trio thread collecting what it receives (once
    ``reading`` is set), and a client channel on another, with its
    ``DirectSender``."""

    def __init__(self, tmp_path, *, sndbuf: int | None = None, reading: bool = True) -> None:
        self.received: list = []
        self.server_channels: list = []
        self.server = TrioThread(name="test-server").start()
        self.client = TrioThread(name="test-client").start()
        self.reading = threading.Event()
        if reading:
            self.reading.set()
        path = str(tmp_path / "s.sock")
        try:
            self.server.call(self._serve, path, timeout=10)
            self.ch = self.client.call(wire.connect_unix, path, TOKEN, "driver", "d", timeout=10)
            if sndbuf is not None:
                self.ch._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            self.sender = DirectSender(self.ch, self.client)
            self.client.on_idle(self.sender.flush_on_loop)
            _until(self.client.idle, "the client loop to be idle")
        except BaseException:
            self.close()
            raise

    async def _serve(self, path: str) -> None:
        await self.server.nursery.start(wire.serve_unix, path, self._collect, TOKEN)

    async def _collect(self, ch) -> None:
        self.server_channels.append(ch)
        while not self.reading.is_set():
            await trio.sleep(0.005)  # (the test holds the reader back to fill the socket)
        async for m in ch:
            self.received.append(m)

    def close(self) -> None:
        self.client.stop()
        self.server.stop()


@pytest.fixture
def pair(tmp_path):
    p = _Pair(tmp_path)
    yield p
    p.close()


def test_bridge_is_idle_only_when_every_job_has_run():
    tt = TrioThread(name="test-idle").start()
    try:
        _until(tt.idle, "a fresh loop to park")
        running, release = threading.Event(), threading.Event()

        def job():
            running.set()
            release.wait(10)  # (holds the loop: a job still running)

        tt.submit(job)
        assert not tt.idle()  # queued
        assert running.wait(10)
        assert not tt.idle()  # running
        tt.submit(lambda: None)
        release.set()
        _until(tt.idle, "the loop to run both jobs and park")
    finally:
        tt.stop()


def test_no_future_from_a_stopped_loop():
    """A request made after the loop stopped fails at once (nothing would
    ever complete its future: requests no longer go through ``submit``)."""
    tt = TrioThread(name="test-stopped").start()
    tt.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        tt.future()


def test_direct_write_when_idle_and_in_order_with_loop_sends(pair):
    sender = pair.sender
    n = 600
    for i in range(n):
        if i % 7 == 3:
            pair.client.submit(sender.send_on_loop, i)  # a request queued on the loop
        else:
            sender.send(i)
        if i % 50 == 0:
            _until(pair.client.idle, "the loop to drain")
    _until(lambda: len(pair.received) == n, f"{n} messages")
    assert pair.received == list(range(n))
    assert sender.direct >= 10  # at least the first after each drain
    assert sender.via_loop > 0  # and some queued behind the loop's jobs


def test_lone_send_goes_direct_a_burst_through_the_loop(pair, monkeypatch):
    # (a gap no scheduling delay reaches: every send after the first is
    # part of the burst, however loaded the machine)
    monkeypatch.setattr(direct_send, "BURST_GAP", 60.0)
    sender = pair.sender
    sender.send("lone", kind="submit")
    assert (sender.direct, sender.via_loop) == (1, 0)
    burst = [("b", i) for i in range(200)]
    for m in burst:
        sender.send(m, kind="submit")
    sender.send("another kind", kind="other")  # lone of its kind, but the loop is busy or not
    _until(lambda: len(pair.received) == 202, "the burst")
    assert pair.received == ["lone"] + burst + ["another kind"]
    assert sender.via_loop >= 200


def test_queued_messages_go_first_in_the_direct_frame(pair):
    """What the loop queued without flushing (a reply's ``CancelWatch``)
    goes out ahead of a direct write, in the same frame."""
    got = []

    def queue_two():
        with pair.sender.lock:
            pair.ch.send_nowait("queued-1", defer_flush=True)
            pair.ch.send_nowait("queued-2", defer_flush=True)
        got.append(pair.ch.outbox_size)

    pair.client.run_sync(queue_two, timeout=10)
    assert got == [2]
    frames = pair.ch.frames_sent
    with pair.sender.lock:
        assert pair.ch.write_from_thread("direct") is WROTE
    assert pair.ch.frames_sent == frames + 1 and pair.ch.outbox_size == 0
    _until(lambda: len(pair.received) == 3, "three messages")
    assert pair.received == ["queued-1", "queued-2", "direct"]


def test_many_threads_each_in_order_none_lost_or_doubled(pair):
    sender = pair.sender
    per, nthreads = 400, 4

    def run(t: int) -> None:
        for i in range(per):
            sender.send((t, i))
            if i % 97 == 0:
                pair.client.submit(sender.send_on_loop, (t, "loop", i))

    threads = [threading.Thread(target=run, args=(t,)) for t in range(nthreads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    want = nthreads * (per + len(range(0, per, 97)))
    _until(lambda: len(pair.received) == want, f"{want} messages")
    for t in range(nthreads):
        mine = [m for m in pair.received if m[0] == t]
        assert len(mine) == per + len(range(0, per, 97))
        plain = [m[1] for m in mine if len(m) == 2]
        assert plain == list(range(per))
        # a loop-queued message follows the direct one sent just before it
        for i in range(0, per, 97):
            assert mine.index((t, "loop", i)) > mine.index((t, i))
    assert sender.direct > 0


def test_full_socket_leaves_the_rest_pending_and_keeps_order(tmp_path):
    p = _Pair(tmp_path, sndbuf=4096, reading=False)
    try:
        sender, ch = p.sender, p.ch
        big = b"x" * 3000
        n = 400
        for i in range(n):
            sender.send((i, big))
        # the peer reads nothing: the socket filled, a direct write was cut
        # short and everything after it queued behind the pending bytes
        assert sender.via_loop > 0
        with sender.lock:
            assert ch.write_from_thread("not now") is NOT_NOW
        p.reading.set()
        _until(lambda: len(p.received) == n, f"{n} messages")
        assert [m[0] for m in p.received] == list(range(n))
        assert all(m[1] == big for m in p.received)
    finally:
        p.close()


def test_partial_write_is_finished_by_the_loop(tmp_path):
    p = _Pair(tmp_path, sndbuf=4096, reading=False)
    try:
        ch, sender = p.ch, p.sender
        results = []
        with sender.lock:
            for i in range(200):
                r = ch.write_from_thread((i, b"y" * 2000))
                results.append(r)
                if r is not WROTE:
                    break
        assert results[-1] is PARTLY, results[-3:]
        sender._on_loop(sender._resume)  # what DirectSender.send does after PARTLY
        p.reading.set()
        n = len(results)
        _until(lambda: len(p.received) == n, f"{n} messages")
        assert [m[0] for m in p.received] == list(range(n))
    finally:
        p.close()


def test_failed_direct_write_ends_the_channel(pair):
    _until(lambda: pair.server_channels, "the server's side")
    sc = pair.server_channels[0]
    pair.server.call(sc.aclose, timeout=10)

    def send_until_closed() -> bool:
        try:
            pair.sender.send(b"z" * 1000)
        except RuntimeError:  # pragma: no cover - the loop stopped
            return True
        return pair.ch.closed

    _until(send_until_closed, "the client channel to see the peer gone")
    with pytest.raises(wire.ConnectionClosed):
        with pair.sender.lock:
            pair.ch.write_from_thread("after")


def test_close_stops_direct_writes(pair):
    pair.sender.close()
    pair.sender.send("via the loop")
    assert (pair.sender.direct, pair.sender.via_loop) == (0, 1)
    _until(lambda: pair.received == ["via the loop"], "the message")


# ---------------------------------------------------------------- a real runtime


def test_round_trips_do_not_hand_sends_to_the_trio_thread(monkeypatch):
    import penumbra as ray
    from penumbra.api.context import current_runtime

    # (round trips faster than BURST_GAP would count as a burst: not the
    # rule under test here)
    monkeypatch.setattr(direct_send, "BURST_GAP", 0.0)

    ray.init(num_cpus=1, object_store_memory=64 << 20)
    try:
        @ray.remote
        def f(x):
            return x + 1

        @ray.remote
        class A:
            def m(self, x):
                return x * 2

        a = A.remote()
        assert ray.get(a.m.remote(1)) == 2
        rt = current_runtime()
        _until(rt.bridge.idle, "the driver's loop to be idle")

        def counts():
            # the node's channel, and the actor worker's (direct calls)
            links = rt.direct_calls.links.links.values() if rt.direct_calls is not None else ()
            senders = [rt.sender] + [link.sender for link in links]
            return sum(s.direct for s in senders), sum(s.via_loop for s in senders)

        d0, l0 = counts()
        for i in range(30):
            assert ray.get(f.remote(i)) == i + 1
            assert ray.get(a.m.remote(i)) == 2 * i
            v = ray.put(i)
            assert ray.get(v) == i
            del v
        direct, via_loop = counts()
        direct, via_loop = direct - d0, via_loop - l0
        # each iteration: two submissions (the actor call straight to its
        # worker), one watch (the actor call's reply needs none), a put (and
        # its release, lone or with the next): all written by this thread
        assert direct >= 30 * 4, (direct, via_loop)
        assert via_loop <= 30, (direct, via_loop)
    finally:
        ray.shutdown()


def test_more_than_the_outbox_holds_queued_at_once_all_arrive_in_order(tmp_path):
    """A burst queued on the loop before anything is written (the reader
    held back, so the outbox cannot drain) larger than the channel's outbox
    (``max_outbox``): what does not fit waits in the sender and goes after,
    in order, with later sends behind it (it was dropped: an answer awaited
    for it never came)."""
    p = _Pair(tmp_path, reading=False)
    try:
        p.ch.max_outbox = 64  # (the real bound, 65,536, made small)
        n = 1000

        def burst():
            for i in range(n):
                p.sender.send_on_loop(i)

        p.client.call(_async(burst), timeout=10)
        assert p.sender.overflow  # (more than the outbox holds)
        p.sender.send(n)  # a later send, from a user's thread: behind the rest
        p.reading.set()
        _until(lambda: len(p.received) == n + 1, f"{n + 1} messages")
        assert p.received == list(range(n + 1))
        _until(lambda: p.sender.overflow is None, "the overflow to drain")
        p.sender.send(n + 1)
        _until(lambda: len(p.received) == n + 2, "one more")
    finally:
        p.close()


def _async(fn):
    async def run():
        fn()

    return run
