"""Tests for penumbra.transports.wire: framing, batching, handshake, limits.

Every test runs its trio code under ``trio.fail_after``; nothing sleeps and
hopes: tests wait on events, on replies, or on
``trio.testing.wait_all_tasks_blocked``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import socket
import struct
import sys
import textwrap
from functools import partial

import msgspec
import pytest
import trio
import trio.testing

from penumbra.core import messages as M
from penumbra.transports import wire
from penumbra.transports.wire import (
    ConnectionClosed,
    HandshakeError,
    Ping,
    Pong,
    ProtocolError,
)
from penumbra.transports.wire_codec import codec, schema_fingerprint

pytestmark = pytest.mark.timeout(60)

TOKEN = "test-token-0123456789"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(async_fn, *args, timeout: float = 20.0):
    async def main():
        with trio.fail_after(timeout):
            return await async_fn(*args)

    return trio.run(main)


async def echo(ch: wire.Channel) -> None:
    async for msg in ch:
        await ch.send(msg)


async def read_frame(stream: trio.abc.ReceiveStream, buf: bytearray) -> bytes | None:
    """One frame body from a raw stream (None at EOF)."""
    while True:
        if len(buf) >= 4:
            (n,) = struct.unpack(">I", buf[:4])
            if len(buf) >= 4 + n:
                body = bytes(buf[4 : 4 + n])
                del buf[: 4 + n]
                return body
        data = await stream.receive_some(65536)
        if not data:
            return None
        buf += data


def hello(token: str = TOKEN, **extra) -> bytes:
    obj = {"penumbra": wire.PROTOCOL_VERSION, "token": token, "role": "test", "name": "raw",
           "schema": schema_fingerprint()}
    obj.update(extra)
    return wire.encode_frame(json.dumps(obj).encode())


async def raw_exchange(host: str, port: int, payload: bytes) -> dict | None:
    """Send raw bytes as a client; the server's first reply frame (JSON), if any."""
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        if payload:
            await stream.send_all(payload)
        body = await read_frame(stream, bytearray())
        return None if body is None else json.loads(body)


# ---------------------------------------------------------------- framing


def test_frame_format_on_the_wire():
    """After the hello, a frame is a 4-byte big-endian length, a format byte
    (0x01: typed) and a msgpack array of tagged arrays, one per message."""

    async def main():
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(wire.serve_tcp, "127.0.0.1", 0, echo, TOKEN)
            stream = await trio.open_tcp_stream(host, port)
            buf = bytearray()
            await stream.send_all(hello())
            reply = json.loads(await read_frame(stream, buf))
            assert reply["ok"] is True and reply["penumbra"] == wire.PROTOCOL_VERSION
            msgs = [Ping(1), Pong(2, b"x" * 10)]
            body = b"\x01" + msgspec.msgpack.encode([["Ping", 1, b""], ["Pong", 2, b"x" * 10]])
            await stream.send_all(struct.pack(">I", len(body)) + body)
            # The echo server replies message by message: one frame each.
            got = []
            while len(got) < 2:
                frame = await read_frame(stream, buf)
                assert frame[0] == 0x01
                got.extend(msgspec.msgpack.decode(frame[1:]))
            assert got == [["Ping", 1, b""], ["Pong", 2, b"x" * 10]]
            await stream.aclose()
            nursery.cancel_scope.cancel()

    run(main)


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_round_trip_messages(kind, tmp_path):
    payloads = [
        Ping(0),
        M.GcsReply(req_id=7, result={"a": [1, 2, 3]}, shard=1, stimulus_id="s-1"),
        M.Log(level="info", text="hi", job_id=3),
        ("a tuple", None, 1.5),
        b"z" * 300_000,  # bigger than the receive buffer
        bytearray(b"y" * 70_000),  # sent as two buffers
    ]

    async def main():
        async with trio.open_nursery() as nursery:
            if kind == "tcp":
                host, port = await nursery.start(wire.serve_tcp, "127.0.0.1", 0, echo, TOKEN)
                ch = await wire.connect_tcp(host, port, TOKEN, "driver", "d1")
            else:
                path = await nursery.start(wire.serve_unix, str(tmp_path / "s.sock"), echo, TOKEN)
                ch = await wire.connect_unix(path, TOKEN, "driver", "d1")
            async with ch:
                assert ch.peer_role == "server"
                if kind == "tcp":
                    assert ch._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                for p in payloads:
                    await ch.send(p)
                    assert await ch.receive() == p
            nursery.cancel_scope.cancel()

    run(main)


def test_channel_over_generic_streams():
    """open_channel/accept_channel work over any trio Stream (here, in memory)."""

    async def main():
        a, b = trio.testing.memory_stream_pair()
        result = {}

        async def server():
            ch = await wire.accept_channel(b, TOKEN, name="mem-server")
            result["server"] = ch
            await echo(ch)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(server)
            ch = await wire.open_channel(a, TOKEN, "driver", "mem-client")
            assert ch.peer_name == "mem-server"
            for i in range(50):
                ch.send_nowait(Ping(i))
            await ch.send(Pong(99))
            got = [await ch.receive() for _ in range(51)]
            assert got == [Ping(i) for i in range(50)] + [Pong(99)]
            assert result["server"].peer_name == "mem-client"
            await ch.aclose()

    run(main)


# --------------------------------------------------------------- batching


def test_send_nowait_batches_into_one_frame_in_order():
    async def main():
        received = []
        done = trio.Event()
        server_ch = {}

        async def collect(ch):
            server_ch["ch"] = ch
            async for m in ch:
                received.append(m)
                if len(received) == 2001:
                    done.set()

        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(wire.serve_tcp, "127.0.0.1", 0, collect, TOKEN)
            ch = await wire.connect_tcp(host, port, TOKEN, "driver", "d")
            for i in range(1000):
                ch.send_nowait(Ping(i))
            await ch.send(Pong(-1))  # joins the queued batch: still one frame
            for i in range(1000, 2000):
                ch.send_nowait(Ping(i))
            await done.wait()
            assert received == [Ping(i) for i in range(1000)] + [Pong(-1)] + [Ping(i) for i in range(1000, 2000)]
            assert ch.messages_sent == 2001
            assert ch.frames_sent == 2
            assert server_ch["ch"].frames_received == 2
            await ch.aclose()
            nursery.cancel_scope.cancel()

    run(main)


def test_flush_nowait_writes_queue_immediately():
    async def main():
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(wire.serve_tcp, "127.0.0.1", 0, echo, TOKEN)
            ch = await wire.connect_tcp(host, port, TOKEN, "driver", "d")
            for i in range(10):
                ch.send_nowait(Ping(i))
            assert ch.frames_sent == 0 and ch.outbox_size == 10
            ch.flush_nowait()  # no yield needed
            assert ch.frames_sent == 1 and ch.outbox_size == 0
            assert [await ch.receive() for _ in range(10)] == [Ping(i) for i in range(10)]
            ch.flush_nowait()  # nothing queued: a no-op
            assert ch.frames_sent == 1
            await ch.aclose()
            with pytest.raises(ConnectionClosed):
                ch.flush_nowait()
            nursery.cancel_scope.cancel()

    run(main)


def test_aclose_flushes_queued_messages():
    async def main():
        received = []
        done = trio.Event()

        async def collect(ch):
            async for m in ch:
                received.append(m)
            done.set()  # clean EOF ends the loop quietly

        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(wire.serve_tcp, "127.0.0.1", 0, collect, TOKEN)
            ch = await wire.connect_tcp(host, port, TOKEN, "driver", "d")
            for i in range(500):
                ch.send_nowait(Ping(i))
            await ch.aclose()
            await done.wait()
            assert received == [Ping(i) for i in range(500)]
            nursery.cancel_scope.cancel()

    run(main)


def test_backpressure_bounded_outbox():
    """A full outbox makes send_nowait raise WouldBlock and send() wait."""

    async def main():
        # lockstep streams: a write completes only when the peer reads it.
        a, b = trio.testing.lockstep_stream_pair()
        async with trio.open_nursery() as nursery:
            server = {}

            async def accept():
                server["ch"] = await wire.accept_channel(b, TOKEN)

            nursery.start_soon(accept)
            ch = await wire.open_channel(a, TOKEN, "driver", "d", max_outbox=4)
            await trio.testing.wait_all_tasks_blocked()
            for i in range(4):
                ch.send_nowait(Ping(i))
            with pytest.raises(trio.WouldBlock):
                ch.send_nowait(Ping(99))
            # The flusher takes the batch and blocks writing it (nobody reads).
            await trio.testing.wait_all_tasks_blocked()
            assert ch.outbox_size == 0
            for i in range(4, 8):
                ch.send_nowait(Ping(i))
            sent = trio.Event()

            async def blocked_sender():
                await ch.send(Ping(8))
                sent.set()

            nursery.start_soon(blocked_sender)
            await trio.testing.wait_all_tasks_blocked()
            assert not sent.is_set()  # waiting for room
            peer = server["ch"]
            got = [await peer.receive() for _ in range(9)]
            assert got == [Ping(i) for i in range(9)]
            assert sent.is_set()
            await ch.aclose()
            await peer.aclose()

    run(main)


# -------------------------------------------------------------- handshake


@pytest.fixture
def wire_log(caplog):
    caplog.set_level(logging.INFO, logger="penumbra.transports.wire")
    return caplog


def _refusals(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "refused connection" in r.getMessage()]


class _Evil:
    """Unpickling this creates a directory: proof that something was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize(
    "case",
    ["wrong_token", "garbage", "huge_length", "non_json", "not_a_hello", "wrong_version", "pickle_first"],
)
def test_handshake_refuses_bad_peers_while_serving_good_ones(case, wire_log, tmp_path):
    marker = str(tmp_path / "pwned")
    evil = pickle.dumps([_Evil(marker)], protocol=5)
    payload = {
        "wrong_token": hello(token="not-the-token") + wire.encode_frame(evil),
        "garbage": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "huge_length": b"\xff\xff\xff\xf0" + b"\x00" * 16,
        "non_json": wire.encode_frame(b"\x00\x01 this is not json"),
        "not_a_hello": wire.encode_frame(b'{"hello": "world"}'),
        "wrong_version": hello(penumbra=999),
        "pickle_first": wire.encode_frame(evil),
    }[case]

    async def main():
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(wire.serve_tcp, "127.0.0.1", 0, echo, TOKEN)
            good = await wire.connect_tcp(host, port, TOKEN, "driver", "good")
            reply = await raw_exchange(host, port, payload)
            # The server answered with an error frame and closed.
            assert reply is not None and reply["ok"] is False and reply["error"]
            # ... and the good client is unaffected.
            for i in range(10):
                await good.send(Ping(i))
                assert await good.receive() == Ping(i)
            await good.aclose()
            nursery.cancel_scope.cancel()
        return reply

    reply = run(main)
    assert not os.path.exists(marker), "the server unpickled data from an unauthenticated peer!"
    refusals = _refusals(wire_log)
    assert len(refusals) == 1 and "127.0.0.1:" in refusals[0], refusals
    if case == "wrong_token":
        assert "token" in reply["error"]
        assert "not-the-token" not in refusals[0]
    if case == "huge_length":
        assert "more than a hello may be" in reply["error"]


def test_handshake_refuses_silent_peer(wire_log):
    async def main():
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(
                partial(wire.serve_tcp, "127.0.0.1", 0, echo, TOKEN, handshake_timeout=0.3)
            )
            silent = await trio.open_tcp_stream(host, port)
            half = await trio.open_tcp_stream(host, port)
            await half.send_all(hello()[:10])  # starts a hello, never finishes it
            good = await wire.connect_tcp(host, port, TOKEN, "driver", "good")
            await good.send(Ping(1))
            assert await good.receive() == Ping(1)
            for stream in (silent, half):
                reply = json.loads(await read_frame(stream, bytearray()))
                assert reply["ok"] is False and "no hello within" in reply["error"]
                assert await stream.receive_some(10) == b""  # then closed
            # The good connection outlives the handshake timeout.
            await good.send(Ping(2))
            assert await good.receive() == Ping(2)
            await good.aclose()
            nursery.cancel_scope.cancel()

    run(main)
    assert len(_refusals(wire_log)) == 2


def test_client_sees_refusal_as_handshake_error():
    async def main():
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(wire.serve_tcp, "127.0.0.1", 0, echo, TOKEN)
            with pytest.raises(HandshakeError, match="wrong cluster token"):
                await wire.connect_tcp(host, port, "wrong", "driver", "d")
            nursery.cancel_scope.cancel()

    run(main)


def test_client_handshake_timeout():
    """A server that never answers the hello: HandshakeError, not a hang."""

    async def main():
        lsock = trio.socket.socket()
        await lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        host, port = lsock.getsockname()
        with pytest.raises(HandshakeError, match="did not answer"):
            await wire.connect_tcp(host, port, TOKEN, "driver", "d", handshake_timeout=0.2)
        lsock.close()

    run(main)


def test_empty_token_is_rejected():
    with pytest.raises(ValueError, match="token"):
        run(wire.connect_tcp, "127.0.0.1", 1, "", "driver", "d")


# ------------------------------------------------------------ frame limits


def test_oversized_incoming_frame_closes_connection():
    async def main():
        seen = {}
        done = trio.Event()

        async def handler(ch):
            try:
                await ch.receive()
            except ProtocolError as exc:
                seen["exc"] = exc
            done.set()

        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(
                partial(wire.serve_tcp, "127.0.0.1", 0, handler, TOKEN, max_frame_size=1024)
            )
            ch = await wire.connect_tcp(host, port, TOKEN, "driver", "d")
            await ch.send(b"x" * 5000)
            await done.wait()
            assert "above the limit of 1024 bytes" in seen["exc"].reason
            with pytest.raises(ConnectionClosed):
                await ch.receive()
            await ch.aclose()
            nursery.cancel_scope.cancel()

    run(main)


def test_garbage_length_after_handshake_is_protocol_error():
    """A huge length prefix is refused before any allocation."""

    async def main():
        a, b = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            server = {}

            async def accept():
                server["ch"] = await wire.accept_channel(b, TOKEN)

            nursery.start_soon(accept)
            await a.send_all(hello())
            await trio.testing.wait_all_tasks_blocked()
            ch = server["ch"]
            await a.send_all(b"\xff\xff\xff\xff")  # 4 GiB announced
            with pytest.raises(ProtocolError, match="above the limit"):
                await ch.receive()
            with pytest.raises(ProtocolError):
                await ch.receive()  # stays failed
            await ch.aclose()

    run(main)


def test_truncated_frame_is_protocol_error_and_clean_eof_ends_iteration():
    async def main():
        a, b = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            server = {}

            async def accept():
                server["ch"] = await wire.accept_channel(b, TOKEN)

            nursery.start_soon(accept)
            await a.send_all(hello())
            await trio.testing.wait_all_tasks_blocked()
            ch = server["ch"]
            body = bytes(codec().encode([Ping(1)])[4:])
            await a.send_all(wire.encode_frame(body) + wire.encode_frame(body)[:-3])
            await a.aclose()
            assert await ch.receive() == Ping(1)
            with pytest.raises(ProtocolError, match="middle of a frame"):
                await ch.receive()

        # clean EOF at a frame boundary: async for just stops
        a, b = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept)
            await a.send_all(hello() + wire.encode_frame(body))
            await a.send_stream.aclose()  # EOF; the server can still answer the hello
            await trio.testing.wait_all_tasks_blocked()
            got = [m async for m in server["ch"]]
            assert got == [Ping(1)]
            with pytest.raises(ConnectionClosed) as info:
                await server["ch"].receive()
            assert info.value.clean

    run(main)


def test_too_large_message_raises_and_channel_survives():
    async def main():
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(wire.serve_tcp, "127.0.0.1", 0, echo, TOKEN)
            ch = await wire.connect_tcp(host, port, TOKEN, "driver", "d", max_frame_size=4096)
            with pytest.raises(wire.FrameTooLarge, match="object store"):
                await ch.send(b"x" * 10_000)
            await ch.send(Ping(1))
            assert await ch.receive() == Ping(1)
            await ch.aclose()
            nursery.cancel_scope.cancel()

    run(main)


def test_unpicklable_message_is_dropped_others_delivered(caplog):
    caplog.set_level(logging.ERROR, logger="penumbra.transports.wire")

    async def main():
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(wire.serve_tcp, "127.0.0.1", 0, echo, TOKEN)
            ch = await wire.connect_tcp(host, port, TOKEN, "driver", "d")
            ch.send_nowait(Ping(1))
            ch.send_nowait(lambda: None)  # cannot be pickled
            ch.send_nowait(Ping(2))
            assert await ch.receive() == Ping(1)
            assert await ch.receive() == Ping(2)
            with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
                await ch.send(lambda: None)
            await ch.send(Ping(3))
            assert await ch.receive() == Ping(3)
            await ch.aclose()
            nursery.cancel_scope.cancel()

    run(main)
    assert any("cannot be sent" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------ channel behaviour


def test_cancelled_receive_leaves_channel_usable():
    async def main():
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(wire.serve_tcp, "127.0.0.1", 0, echo, TOKEN)
            ch = await wire.connect_tcp(host, port, TOKEN, "driver", "d")
            with trio.move_on_after(0.05) as scope:
                await ch.receive()  # nothing comes
            assert scope.cancelled_caught
            await ch.send(Ping(5))
            assert await ch.receive() == Ping(5)
            await ch.aclose()
            with pytest.raises(ConnectionClosed):
                await ch.send(Ping(6))
            with pytest.raises(ConnectionClosed):
                ch.send_nowait(Ping(6))
            nursery.cancel_scope.cancel()

    run(main)


def test_close_wakes_blocked_receiver_and_peer_sees_eof():
    async def main():
        peer_done = trio.Event()
        peer_result = {}

        async def handler(ch):
            peer_result["msgs"] = [m async for m in ch]
            peer_done.set()

        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(wire.serve_tcp, "127.0.0.1", 0, handler, TOKEN)
            ch = await wire.connect_tcp(host, port, TOKEN, "driver", "d")
            await ch.send(Ping(1))
            errors = []

            async def receiver():
                try:
                    await ch.receive()
                except ConnectionClosed as exc:
                    errors.append(exc)

            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            await ch.aclose()
            await peer_done.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert peer_result["msgs"] == [Ping(1)]
            assert len(errors) == 1 and errors[0].clean
            nursery.cancel_scope.cancel()

    run(main)


def test_busy_channel_still_lets_other_tasks_run():
    """Operations that never block still yield every YIELD_EVERY calls."""

    async def main():
        sent = trio.Event()

        async def burst(ch):
            for i in range(2000):
                await ch.send(Ping(i))  # one frame each, written at once
            sent.set()
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(wire.serve_tcp, "127.0.0.1", 0, burst, TOKEN)
            ch = await wire.connect_tcp(host, port, TOKEN, "driver", "d")
            await sent.wait()
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await trio.lowlevel.checkpoint()
                    ticks += 1

            nursery.start_soon(ticker)
            for i in range(2000):
                assert (await ch.receive()).seq == i
            assert ticks >= 2000 // wire.YIELD_EVERY // 2  # (about one per YIELD_EVERY)
            await ch.aclose()
            nursery.cancel_scope.cancel()

    run(main)


def test_two_receivers_conflict():
    async def main():
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(wire.serve_tcp, "127.0.0.1", 0, echo, TOKEN)
            ch = await wire.connect_tcp(host, port, TOKEN, "driver", "d")
            async def first_receiver():
                with pytest.raises(ConnectionClosed):
                    await ch.receive()

            nursery.start_soon(first_receiver)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await ch.receive()
            await ch.aclose()
            nursery.cancel_scope.cancel()

    run(main)


def test_server_closes_connections_when_cancelled():
    async def main():
        async with trio.open_nursery() as nursery:
            server_scope = trio.CancelScope()

            async def server(task_status):
                with server_scope:
                    await wire.serve_tcp("127.0.0.1", 0, echo, TOKEN, task_status=task_status)

            host, port = await nursery.start(server)
            ch = await wire.connect_tcp(host, port, TOKEN, "driver", "d")
            await ch.send(Ping(1))
            assert await ch.receive() == Ping(1)
            server_scope.cancel()
            with pytest.raises(ConnectionClosed):
                await ch.receive()
            with pytest.raises(OSError):
                await wire.connect_tcp(host, port, TOKEN, "driver", "d")
            await ch.aclose()

    run(main)


def test_handler_exception_is_logged_and_server_survives(caplog):
    caplog.set_level(logging.ERROR, logger="penumbra.transports.wire")

    async def handler(ch):
        msg = await ch.receive()
        if msg == "boom":
            raise ValueError("handler bug")
        await echo_first(ch, msg)

    async def echo_first(ch, first):
        await ch.send(first)
        await echo(ch)

    async def main():
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(wire.serve_tcp, "127.0.0.1", 0, handler, TOKEN)
            bad = await wire.connect_tcp(host, port, TOKEN, "driver", "bad")
            await bad.send("boom")
            with pytest.raises(ConnectionClosed):
                await bad.receive()
            good = await wire.connect_tcp(host, port, TOKEN, "driver", "good")
            await good.send(Ping(1))
            assert await good.receive() == Ping(1)
            await bad.aclose()
            await good.aclose()
            nursery.cancel_scope.cancel()

    run(main)
    assert any("failed" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------ unix sockets


def test_unix_socket_file_is_removed_on_close(tmp_path):
    path = str(tmp_path / "head.sock")

    async def main():
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(wire.serve_unix, path, echo, TOKEN)
                assert os.path.exists(path)
                ch = await wire.connect_unix(path, TOKEN, "worker", "w")
                await ch.send(Ping(1))
                assert await ch.receive() == Ping(1)
                await ch.aclose()
                scope.cancel()
        assert not os.path.exists(path)

    run(main)


def test_unix_stale_socket_replaced_live_one_refused(tmp_path):
    path = str(tmp_path / "stale.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # leaves the file behind, nobody listening
    assert os.path.exists(path)

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(wire.serve_unix, path, echo, TOKEN)
            with pytest.raises(OSError) as info:
                await wire.serve_unix(path, echo, TOKEN)
            assert info.value.errno == errno.EADDRINUSE
            ch = await wire.connect_unix(path, TOKEN, "worker", "w")
            await ch.send(Ping(1))
            assert await ch.receive() == Ping(1)
            await ch.aclose()
            nursery.cancel_scope.cancel()
        assert not os.path.exists(path)

    run(main)


def test_unix_refuses_to_replace_a_regular_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("data")
    with pytest.raises(OSError, match="not a socket"):
        run(wire.serve_unix, str(path), echo, TOKEN)
    assert path.read_text() == "data"


# ------------------------------------------------------------- cross-process

CHILD = textwrap.dedent(
    """
    import os, sys, trio
    sys.path.insert(0, sys.argv[1])
    from penumbra.core import messages as M
    from penumbra.transports import wire

    async def main(host, port):
        token = os.environ["PENUMBRA_TEST_TOKEN"]
        ch = await wire.connect_tcp(host, int(port), token, "worker", "child")
        async with ch:
            for i in range(200):
                await ch.send(wire.Ping(i))
                assert await ch.receive() == wire.Pong(i)
            for i in range(1000):
                ch.send_nowait(wire.Ping(i))
            for i in range(1000):
                assert (await ch.receive()).seq == i
            msg = M.GcsReply(req_id=7, result={"k": [1, 2]}, shard=1, stimulus_id="s")
            await ch.send(msg)
            assert await ch.receive() == msg
            print("CHILD OK", ch.peer_role, ch.peer_name, flush=True)

    trio.run(main, sys.argv[2], sys.argv[3])
    """
)


def test_cross_process_tcp():
    async def handler(ch):
        assert ch.peer_role == "worker" and ch.peer_name == "child"
        async for batch in _batches(ch):
            for m in batch:
                ch.send_nowait(Pong(m.seq) if type(m) is Ping else m)

    async def main():
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(partial(wire.serve_tcp, "127.0.0.1", 0, handler, TOKEN, name="head"))
            env = dict(os.environ, PENUMBRA_TEST_TOKEN=TOKEN)
            proc = await trio.run_process(
                [sys.executable, "-c", CHILD, REPO, host, str(port)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=env,
            )
            nursery.cancel_scope.cancel()
        return proc

    proc = run(main, timeout=50)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == "CHILD OK server head"


async def _batches(ch):
    while True:
        try:
            yield await ch.receive_batch()
        except ConnectionClosed:
            return


def test_cross_process_wrong_token_refused():
    script = textwrap.dedent(
        """
        import sys, trio
        sys.path.insert(0, sys.argv[1])
        from penumbra.transports import wire
        async def main(host, port):
            try:
                await wire.connect_tcp(host, int(port), "bad-token", "worker", "child")
            except wire.HandshakeError as exc:
                print("REFUSED", exc.reason)
        trio.run(main, sys.argv[2], sys.argv[3])
        """
    )

    async def main():
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(wire.serve_tcp, "127.0.0.1", 0, echo, TOKEN)
            proc = await trio.run_process(
                [sys.executable, "-c", script, REPO, host, str(port)], capture_stdout=True, check=False
            )
            nursery.cancel_scope.cancel()
        return proc

    proc = run(main, timeout=50)
    assert proc.stdout.decode().startswith("REFUSED"), proc.stdout


def test_a_tcp_connect_nobody_answers_gives_up_after_connect_timeout():
    """A host that drops the connect's packets left ``connect_tcp`` waiting
    for minutes (the kernel's SYN retries); with ``connect_timeout`` it
    raises ``TimeoutError`` (an ``OSError``, like any failed connect).  The
    dropping here is real: a listener whose accept queue is full (backlog
    0, never accepting) drops further SYNs."""
    import time

    srv = socket.socket()
    fill = []
    try:
        srv.bind(("127.0.0.1", 0))
        srv.listen(0)
        port = srv.getsockname()[1]
        for _ in range(3):  # (fill the queue)
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fill.append(s)

        async def main():
            start = time.monotonic()
            with pytest.raises(TimeoutError, match="longer than 0.5 s"):
                await wire.connect_tcp("127.0.0.1", port, "t" * 32, "caller", "test", connect_timeout=0.5)
            assert time.monotonic() - start < 5

        trio.run(main)
    finally:
        for s in fill:
            s.close()
        srv.close()
