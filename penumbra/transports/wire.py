"""Framing, handshake and message channels over trio sockets.

Every real-runtime process (the head/GCS server, node daemons, workers and
drivers) talks to its peers through a :class:`Channel`.  This module owns the
bytes on the wire; it knows nothing about what the messages mean.

Theory of operation
-------------------
**Framing.**  A connection carries a sequence of *frames*::

    frame = length (4 bytes, unsigned, big-endian) + body (length bytes)

``length`` counts the body only.  A receiver refuses any length above its
``max_frame_size`` (default :data:`MAX_FRAME_SIZE`, 1 GiB) with a
:class:`ProtocolError` that ends the connection.  A frame larger than the
receive buffer gets its own array, which starts at 256 KiB and doubles only
as the bytes actually arrive: announcing 1 GiB and sending 4 bytes costs
256 KiB, not a 1 GiB allocation zeroed on the event loop (a 100 MiB frame
is received as fast as with one up-front array).  The partial frame lives
on the channel, so a cancelled ``receive`` resumes it.

**Handshake.**  The first frame in each direction is a small JSON object
(at most :data:`MAX_HELLO_SIZE` bytes, UTF-8).  The client opens with::

    {"penumbra": 1, "token": "<cluster token>", "role": "worker", "name": "w-3"}

and the server answers ``{"penumbra": 1, "ok": true, "role": ..., "name":
...}`` or refuses with ``{"penumbra": 1, "ok": false, "error": "<why>"}``
and closes.  The server checks the token with :func:`hmac.compare_digest`.
A peer whose first frame is not a well-formed hello (garbage bytes, an
oversized length prefix, non-JSON, wrong protocol version, wrong token) or
that sends nothing within ``handshake_timeout`` seconds is refused and
logged with its address; the server keeps serving everyone else.

**Hostile peers.**  Nothing a peer sends before it authenticates can
crash, stall or bloat a listener:

* *Contained errors.*  Every exception in the server handshake is caught,
  logged with the peer's address, and closes only that connection; nothing
  reaches the ``serve_tcp``/``serve_unix`` nursery (before this, one hello
  of 60,000 ``[`` -- ``RecursionError`` in ``json.loads`` -- or a token
  holding a lone surrogate -- ``UnicodeEncodeError`` -- stopped the whole
  daemon).  ``trio.Cancelled`` and other BaseExceptions still propagate.
* *Bounded parsing.*  ``json.loads`` never sees a hello with more than
  :data:`MAX_HELLO_BRACKETS` ``[``/``{`` bytes (a byte count, which bounds
  the nesting far below the recursion limit), and a hello nesting deeper
  than :data:`MAX_HELLO_DEPTH` is refused.  A token is compared as bytes
  (``surrogatepass``), so any string is just a right or wrong token; role
  and name must be encodable text.
* *Small buffers.*  A connection receives into :data:`HANDSHAKE_BUFFER`
  (4 KiB, enough for a hello; a larger hello grows it with the bytes that
  come) until it authenticates, and only then gets the 256 KiB buffer.
* *A cap on handshakes.*  Each listener runs at most ``max_handshakes``
  (default :data:`MAX_HANDSHAKES`) handshakes at once; each is bounded by
  ``handshake_timeout``.  At the cap the listener stops accepting, and new
  connections wait in the kernel's accept backlog until a handshake ends.
  They are not refused because the legitimate bursts (hundreds of workers
  or drivers connecting at once) would then fail, while a flood can only
  delay a good client, by at most ``handshake_timeout``; and queued
  connections cost kernel memory only.  So 1,000 idle connections hold
  256 x 4 KiB of buffers, not 1,000 x 256 KiB.
* *A quiet log.*  A listener logs at most :data:`REFUSAL_LOG_BURST` refused
  or failed handshakes per :data:`REFUSAL_LOG_INTERVAL` seconds; the rest
  are counted, and the count is logged with the next line (or when the
  listener stops).  :class:`ListenerStats` counts every one.

.. warning::

   After the handshake every frame body is a **pickle** (protocol 5), and
   unpickling runs arbitrary code chosen by the sender.  A channel therefore
   never unpickles a byte from a peer that has not proven it knows the
   cluster token: unpickling data from an unauthenticated peer would be
   remote code execution.  The token itself travels in clear text, so on an
   untrusted network run the cluster inside a private network, a VPN or an
   SSH tunnel (or wrap the stream in TLS and use :func:`open_channel` /
   :func:`accept_channel`).  Treat the token like a password.

**Messages and batching.**  After the handshake a frame body is
``pickle.dumps(list_of_messages, protocol=5)``: *every* frame carries a
list, pickled once, so a burst of small messages costs one ``pickle.dumps``,
one frame and one system call, and repeated classes are memoised inside the
batch.  :meth:`Channel.send_nowait` appends to an outbox; a background
flusher task wakes when the current task yields and writes everything queued
as ONE frame.  :meth:`Channel.send` writes immediately when the socket is
free (lowest latency, one frame per call) and otherwise joins the outbox.

**Backpressure.**  The outbox holds at most ``max_outbox`` messages.  When it
is full, :meth:`Channel.send_nowait` raises :class:`trio.WouldBlock` and
:meth:`Channel.send` waits for room.  Room appears as the flusher hands the
queue to the kernel, so a slow reader slows its writers instead of growing
memory without bound.

**Speed.**  trio's :class:`trio.SocketStream` yields to the scheduler on
every successful ``send``/``receive_some`` (a full scheduler pass, ~10 us on
a small machine).  Channels over sockets instead drive a non-blocking stdlib
socket directly: they try ``recv_into``/``send`` first and only park in
:func:`trio.lowlevel.wait_readable`/``wait_writable`` when the kernel says
``EAGAIN``.  To stay fair, a channel yields once every
:data:`YIELD_EVERY` operations that completed without blocking, and every
operation still raises :class:`trio.Cancelled` promptly when its scope is
cancelled.  Any trio :class:`~trio.abc.Stream` (TLS, in-memory test streams)
works too, through the slower generic path: see :func:`open_channel`.

**Errors.**  Every way a connection can end surfaces as
:class:`ConnectionClosed` (``clean`` is true for an orderly close at a frame
boundary or a local close).  :class:`ProtocolError` (a garbled stream) and
:class:`HandshakeError` (refused or failed handshake) are subclasses.
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import math
import os
import pickle
import socket
import stat
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self

import trio

from .session import new_token

__all__ = [
    "DEFAULT_MAX_OUTBOX",
    "HANDSHAKE_TIMEOUT",
    "MAX_FRAME_SIZE",
    "MAX_HELLO_SIZE",
    "PROTOCOL_VERSION",
    "YIELD_EVERY",
    "Channel",
    "ConnectionClosed",
    "FrameTooLarge",
    "HandshakeError",
    "ListenerStats",
    "MAX_HANDSHAKES",
    "Ping",
    "Pong",
    "ProtocolError",
    "accept_channel",
    "connect_tcp",
    "connect_unix",
    "encode_frame",
    "new_token",
    "open_channel",
    "serve_tcp",
    "serve_unix",
]

logger = logging.getLogger("penumbra.transports.wire")

#: Version of this wire protocol, sent in every hello.
PROTOCOL_VERSION = 1
#: Largest frame body accepted or sent by default (1 GiB).
MAX_FRAME_SIZE = 1 << 30
#: Largest hello frame (the first frame, before authentication).
MAX_HELLO_SIZE = 64 * 1024
#: Seconds a peer has to complete the handshake.
HANDSHAKE_TIMEOUT = 10.0
#: Deepest JSON nesting accepted in a hello (a real one is a flat object).
MAX_HELLO_DEPTH = 8
#: A hello with more ``[``/``{`` bytes than this is refused without parsing.
MAX_HELLO_BRACKETS = 64
#: Receive buffer of a connection that has not authenticated yet (a hello
#: fits; a larger one grows it with the bytes that actually arrive).
HANDSHAKE_BUFFER = 4096
#: Default bound on handshakes in progress per listener.
MAX_HANDSHAKES = 256
#: A listener logs at most REFUSAL_LOG_BURST refusals per
#: REFUSAL_LOG_INTERVAL seconds and counts the rest (reported with the next
#: line it logs), so a flood of bad connections cannot fill the log.  A burst
#: rather than one line, so that an occasional refusal (a client with the
#: wrong token) is always logged in full.
REFUSAL_LOG_BURST = 5
REFUSAL_LOG_INTERVAL = 10.0
#: Default bound on queued, not yet written messages per channel.
DEFAULT_MAX_OUTBOX = 65536
#: A channel yields to the scheduler after this many operations that did not block.
YIELD_EVERY = 64
#: Seconds ``aclose`` waits for queued messages to be written.
CLOSE_FLUSH_TIMEOUT = 5.0

_PICKLE_PROTOCOL = 5
_HEADER = struct.Struct(">I")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from
_dumps = pickle.dumps
_loads = pickle.loads
_RECV_BUFFER = 256 * 1024
# Frames at most this large are sent as one buffer (header + body copied
# together); larger ones as two buffers, to avoid copying big bodies.
_JOIN_LIMIT = 64 * 1024
# Zeros appended to grow a big frame's array (see _grow).  64 KiB steps
# measured as fast as 1 MiB ones for a 100 MiB frame.
_ZEROS = bytes(64 * 1024)


# ===========================================================================
# Errors


class ConnectionClosed(Exception):
    """The connection ended; nothing more can be sent or received on it.

    Attributes:
        reason: what happened, in words.
        clean: ``True`` for an orderly end: the peer closed at a frame
            boundary, or this side closed the channel.  ``async for`` over a
            channel stops quietly on a clean end and raises otherwise.
    """

    def __init__(self, reason: str, *, clean: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.clean = clean


class ProtocolError(ConnectionClosed):
    """The peer sent bytes that break the protocol (bad length, bad pickle ...)."""


class HandshakeError(ConnectionClosed):
    """The handshake failed: refused by the server, or no valid reply in time."""


class FrameTooLarge(ValueError):
    """A single message pickles to more than the channel's ``max_frame_size``.

    The connection stays usable; only that message was not sent.  Send large
    values through the object store instead of inside messages.
    """


# ===========================================================================
# Transport-level frames


@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness probe; the peer is expected to answer ``Pong(seq)``."""

    seq: int
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Pong:
    seq: int
    payload: bytes = b""


def encode_frame(body: bytes) -> bytes:
    """``body`` with its 4-byte big-endian length prefix (one whole frame)."""
    return _HEADER.pack(len(body)) + body


# ===========================================================================
# Transports: the byte pipes under a channel


class _SocketTransport:
    """A non-blocking stdlib socket driven with ``trio.lowlevel`` waits.

    ``recv_into`` and ``try_send`` attempt the system call first and do not
    yield when it succeeds; only ``EAGAIN`` parks the task on the socket.
    (:class:`Channel` inlines the same logic on its hot paths.)
    """

    __slots__ = ("closed", "sock")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.closed = False

    async def recv_into(self, view: memoryview) -> int:
        sock = self.sock
        while True:
            try:
                return sock.recv_into(view)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)

    def try_send(self, data: Any) -> int:
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0

    async def send_all(self, data: Any) -> None:
        sock = self.sock
        view = memoryview(data)
        while view:
            try:
                n = sock.send(view)
            except BlockingIOError:
                n = 0
            if n:
                view = view[n:]
            if view:
                await trio.lowlevel.wait_writable(sock)

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                trio.lowlevel.notify_closing(self.sock)
            except RuntimeError:  # pragma: no cover - outside trio
                pass
            self.sock.close()


class _StreamTransport:
    """Any :class:`trio.abc.Stream` (SocketStream, SSLStream, test streams)."""

    __slots__ = ("closed", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.closed = False

    async def recv_into(self, view: memoryview) -> int:
        data = await self.stream.receive_some(len(view))
        n = len(data)
        view[:n] = data
        return n

    async def send_all(self, data: Any) -> None:
        await self.stream.send_all(data)

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            await trio.aclose_forcefully(self.stream)

    def close(self) -> None:
        # No synchronous close for a generic stream; ``aclose`` does it.
        pass


_CONNECTION_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


def _grow(body: bytearray, size: int) -> None:
    """Extend ``body`` with zeros to ``size`` bytes, in place.

    Appending a small cached zero block is the cheapest way found to grow
    a bytearray: realloc remaps big arrays instead of copying them, and the
    block stays in cache (``body += bytes(k)`` was ~2x slower: it faults in
    a fresh zero array of k bytes only to copy it).
    """
    zeros = _ZEROS
    step = len(zeros)
    while len(body) + step <= size:
        body += zeros
    if len(body) < size:
        body += zeros[: size - len(body)]


# ===========================================================================
# Channel


class Channel:
    """Messages over one authenticated connection.

    Build channels with :func:`connect_tcp`, :func:`connect_unix`,
    :func:`open_channel`, or receive them in a ``serve_*`` handler; close
    them with ``async with channel:`` or :meth:`aclose`.

    One task at a time may receive; any number may send.  Messages sent
    from one task arrive in the order they were sent, whichever of
    :meth:`send` and :meth:`send_nowait` was used.

    Attributes:
        peer_address: the peer's address as text (for logs).
        peer_role, peer_name: what the peer said in its hello.
        frames_sent, frames_received, messages_sent, messages_received:
            counters (a frame carries one or more messages).
    """

    def __init__(
        self,
        transport: _SocketTransport | _StreamTransport,
        *,
        peer_address: str = "",
        max_frame_size: int = MAX_FRAME_SIZE,
        max_outbox: int = DEFAULT_MAX_OUTBOX,
    ) -> None:
        if max_frame_size < 16:
            raise ValueError("max_frame_size must be at least 16 bytes")
        if max_outbox < 1:
            raise ValueError("max_outbox must be at least 1")
        self._t = transport
        # The stdlib socket for the fast path (None for generic streams).
        self._sock: socket.socket | None = transport.sock if isinstance(transport, _SocketTransport) else None
        self.peer_address = peer_address
        self.peer_role = ""
        self.peer_name = ""
        self.peer_hello: dict[str, Any] = {}
        self.max_frame_size = max_frame_size
        self._fast_limit = min(_JOIN_LIMIT, max_frame_size)  # one-buffer frames
        self.max_outbox = max_outbox
        self.frames_sent = 0
        self.frames_received = 0
        self.messages_sent = 0
        self.messages_received = 0
        # receive side
        # Small until the peer authenticates (a hello fits; see _authenticate),
        # so an idle unauthenticated connection costs little memory.
        self._buf = bytearray(HANDSHAKE_BUFFER)
        self._view = memoryview(self._buf)
        self._big: bytearray | None = None  # a frame larger than _buf, being received
        self._big_have = 0
        self._big_size = 0
        self._start = 0  # first unparsed byte
        self._end = 0  # end of received bytes
        self._inbox: deque[Any] = deque()
        self._receiving = False
        self._authenticated = False
        # send side
        self._outbox: list[Any] = []
        self._pending: deque[memoryview] = deque()  # encoded bytes not yet written
        self._writing = False  # the flusher owns the socket
        self._flusher: trio.lowlevel.Task | None = None
        self._flusher_parked = False
        self._flusher_scope: trio.CancelScope | None = None
        self._room: trio.Event | None = None  # set when the outbox empties
        self._drained: trio.Event | None = None  # set when nothing is left to write
        # state
        self._error: ConnectionClosed | None = None
        self._closed = False
        self._fast_ops = 0

    def __repr__(self) -> str:
        state = "closed" if self._error else "open"
        return f"<Channel {state} peer={self.peer_address!r} {self.peer_role}:{self.peer_name}>"

    # ------------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        """True once the connection has ended (either side, any reason)."""
        return self._error is not None

    @property
    def buffered(self) -> int:
        """Messages received and decoded but not yet taken by ``receive``
        (zero at the end of a batch: a good moment to act on what came)."""
        return len(self._inbox)

    @property
    def outbox_size(self) -> int:
        """Messages queued and not yet encoded."""
        return len(self._outbox)

    def _raise_closed(self) -> None:
        err = self._error
        assert err is not None
        exc = type(err)(err.reason, clean=err.clean)
        raise exc from err.__cause__

    def _fail(self, exc: ConnectionClosed) -> ConnectionClosed:
        """Record the end of the connection (first reason wins) and wake waiters."""
        if self._error is None:
            self._error = exc
            self._outbox.clear()
            self._pending.clear()
            if self._room is not None:
                self._room.set()
            if self._drained is not None:
                self._drained.set()
            if self._flusher_parked:
                self._wake_flusher()
        return self._error

    def _io_error(self, exc: BaseException, doing: str) -> ConnectionClosed:
        if isinstance(exc, trio.ClosedResourceError) or self._closed:
            err = ConnectionClosed("channel closed locally", clean=True)
        else:
            err = ConnectionClosed(f"connection to {self.peer_address} lost while {doing}: {exc!r}")
        err.__cause__ = exc
        return self._fail(err)

    async def _fair_tick(self) -> None:
        """Yield once every YIELD_EVERY non-blocking operations (fairness)."""
        self._fast_ops += 1
        if self._fast_ops >= YIELD_EVERY:
            self._fast_ops = 0
            await trio.lowlevel.cancel_shielded_checkpoint()

    # --------------------------------------------------------------- receive

    async def receive(self) -> Any:
        """The next message.

        Raises:
            ConnectionClosed: the connection ended (``clean`` tells whether it
                ended in order); :class:`ProtocolError` if the peer sent
                something that is not a valid frame.
            trio.BusyResourceError: another task is already receiving.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._inbox:
            await self._receive_more()
        await self._fair_tick()
        return self._inbox.popleft()

    async def receive_batch(self) -> list[Any]:
        """Every message already received (at least one), in order."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._inbox:
            await self._receive_more()
        await self._fair_tick()
        batch = list(self._inbox)
        self._inbox.clear()
        return batch

    def __aiter__(self) -> Channel:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except ConnectionClosed as exc:
            if exc.clean:
                raise StopAsyncIteration from None
            raise

    async def _receive_more(self) -> None:
        """Read until at least one message is in the inbox."""
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this channel")
        if not self._authenticated:
            # Never unpickle a byte from a peer that has not proven the token.
            raise ProtocolError("refusing to receive messages before the handshake has authenticated the peer")
        self._receiving = True
        try:
            while not self._inbox:  # (a big frame goes straight to the inbox)
                if self._error is not None:
                    self._raise_closed()
                # (a frame may carry an empty list: keep reading then)
                if self._end - self._start >= 4 and self._parse() and self._inbox:
                    return
                await self._fill(self.max_frame_size)
        finally:
            self._receiving = False

    def _parse(self) -> bool:
        """Decode every complete frame in the buffer into the inbox."""
        buf = self._buf
        start = self._start
        end = self._end
        limit = self.max_frame_size
        got = False
        while end - start >= 4:
            (n,) = _unpack_header(buf, start)
            if n > limit:
                self._start = start
                raise self._fail(
                    ProtocolError(
                        f"{self.peer_address} sent a frame of {n} bytes, above the "
                        f"limit of {limit} bytes; closing the connection"
                    )
                )
            stop = start + 4 + n
            if stop > end:
                break
            self._start = stop
            self._decode(self._view[start + 4 : stop])
            start = stop
            got = True
        if start == end:
            self._start = self._end = 0
        return got

    def _decode(self, body: Any) -> None:
        try:
            msgs = _loads(body)
        except Exception as exc:
            err = ProtocolError(f"could not unpickle a frame from {self.peer_address}: {exc!r}")
            err.__cause__ = exc
            raise self._fail(err) from exc
        if type(msgs) is not list:
            raise self._fail(
                ProtocolError(f"{self.peer_address} sent a frame that is not a list of messages")
            )
        self.frames_received += 1
        self.messages_received += len(msgs)
        self._inbox.extend(msgs)

    async def _fill(self, limit: int) -> None:
        """Receive more bytes into the buffer (or read one big frame whole)."""
        if self._big is not None:
            await self._read_big_frame()  # resume a big frame a cancel interrupted
            return
        start, end = self._start, self._end
        if start == end:
            self._start = self._end = start = end = 0
        need = 4
        if end - start >= 4:
            (n,) = _unpack_header(self._buf, start)
            if n > limit:
                return  # the caller's parser reports it
            need = 4 + n
            if need > len(self._buf) and self._authenticated:
                self._start_big_frame(n)
                await self._read_big_frame()
                return
        if start and len(self._buf) - start < need:
            # Move the partial frame to the front to make room.
            self._buf[: end - start] = self._buf[start:end]
            self._end = end = end - start
            self._start = 0
        if end == len(self._buf):
            # Only before authentication: a hello larger than the small
            # handshake buffer.  Grow with the bytes that actually came
            # (doubling, up to the announced size, itself <= MAX_HELLO_SIZE).
            self._resize_buffer(min(need, 2 * len(self._buf)))
        view = self._view[end:]
        sock = self._sock
        try:
            if sock is not None:
                # Fast path: try the system call; park only on EAGAIN.
                while True:
                    try:
                        k = sock.recv_into(view)
                        break
                    except BlockingIOError:
                        await trio.lowlevel.wait_readable(sock)
            else:
                k = await self._t.recv_into(view)
        except _CONNECTION_ERRORS as exc:
            raise self._io_error(exc, "receiving") from exc
        if not k:
            if self._end == self._start:
                raise self._fail(ConnectionClosed(f"{self.peer_address} closed the connection", clean=True))
            raise self._fail(
                ProtocolError(f"{self.peer_address} closed the connection in the middle of a frame")
            )
        self._end += k

    def _resize_buffer(self, size: int) -> None:
        """Replace the receive buffer by one of ``size`` bytes, keeping the unparsed bytes."""
        start, end = self._start, self._end
        buf = bytearray(max(size, end - start))
        buf[: end - start] = self._view[start:end]
        self._buf = buf
        self._view = memoryview(buf)
        self._start, self._end = 0, end - start

    def _start_big_frame(self, n: int) -> None:
        """Begin a frame larger than the buffer: it gets its own growing array.

        The array starts at :data:`_RECV_BUFFER` bytes and doubles only when
        the bytes actually received fill it, so a length prefix costs nothing
        until the peer sends that many bytes (no up-front ``bytearray(n)``,
        which would zero up to 1 GiB on the event loop).
        """
        start, end = self._start, self._end
        have = end - start - 4
        body = bytearray(min(n, max(have, _RECV_BUFFER)))
        body[:have] = self._view[start + 4 : end]
        self._start = self._end = 0
        self._big = body
        self._big_have = have
        self._big_size = n

    async def _read_big_frame(self) -> None:
        """Receive the rest of the big frame begun by ``_start_big_frame``, then decode it.

        The partial frame lives on the channel, so a cancelled receive
        resumes where it stopped instead of losing bytes.
        """
        body = self._big
        assert body is not None
        n = self._big_size
        sock = self._sock
        while self._big_have < n:
            have = self._big_have
            if have == len(body):
                _grow(body, min(n, 2 * len(body)))
            view = memoryview(body)[have:]
            try:
                if sock is not None:
                    while True:
                        try:
                            k = sock.recv_into(view)
                            break
                        except BlockingIOError:
                            await trio.lowlevel.wait_readable(sock)
                else:
                    k = await self._t.recv_into(view)
            except _CONNECTION_ERRORS as exc:
                self._big = None
                raise self._io_error(exc, "receiving") from exc
            finally:
                view.release()  # the array can only be resized without exports
            if not k:
                self._big = None
                raise self._fail(
                    ProtocolError(f"{self.peer_address} closed the connection in the middle of a frame")
                )
            self._big_have = have + k
        self._big = None
        self._decode(body)

    @property
    def receive_buffer_size(self) -> int:
        """Bytes allocated to receive: the frame buffer plus any big frame in progress.

        Small (:data:`HANDSHAKE_BUFFER`) until the peer has authenticated,
        and a big frame's array grows only with the bytes actually received.
        """
        big = self._big
        return len(self._buf) + (len(big) if big is not None else 0)

    def _authenticate(self) -> None:
        """The handshake succeeded: unpickling is allowed, and the buffer grows to full size."""
        self._authenticated = True
        if len(self._buf) < _RECV_BUFFER:
            self._resize_buffer(_RECV_BUFFER)

    async def _receive_raw_frame(self, limit: int) -> bytes:
        """One frame body, not unpickled (the handshake's JSON hello)."""
        while True:
            start, end = self._start, self._end
            if end - start >= 4:
                (n,) = _HEADER.unpack_from(self._buf, start)
                if n > limit:
                    raise self._fail(
                        ProtocolError(
                            f"first frame announces {n} bytes, more than a hello may be "
                            f"({limit}); is the peer speaking the penumbra protocol?"
                        )
                    )
                if end - start - 4 >= n:
                    self._start = start + 4 + n
                    return bytes(self._buf[start + 4 : start + 4 + n])
            await self._fill(limit)

    # ------------------------------------------------------------------ send

    def send_nowait(self, msg: Any, *, defer_flush: bool = False) -> None:
        """Queue ``msg``; the flusher writes the whole queue as one frame.

        Cheap (an append) and never yields.  The flusher runs once the
        calling task yields, so a burst of calls becomes one frame.  With
        ``defer_flush`` the flusher is not woken: the caller promises to call
        :meth:`flush_nowait` before it yields (one frame, one system call,
        no task switch).

        Raises:
            trio.WouldBlock: ``max_outbox`` messages are already queued (the
                peer is not keeping up); retry later or ``await send()``.
            ConnectionClosed: the connection has ended.
        """
        if self._error is not None:
            self._raise_closed()
        outbox = self._outbox
        if len(outbox) >= self.max_outbox:
            raise trio.WouldBlock
        outbox.append(msg)
        if not self._writing and not defer_flush:
            self._wake_flusher()

    async def send(self, msg: Any) -> None:
        """Send ``msg``, waiting only if the outbox is full.

        When the socket is free this writes immediately (one frame, no task
        switch).  Returning means the message was handed to the kernel or
        queued behind earlier messages; it does not mean the peer read it.

        Raises:
            ConnectionClosed: the connection has ended.
            FrameTooLarge: ``msg`` pickles to more than ``max_frame_size``.
            pickle.PicklingError (or what pickling raised): ``msg`` cannot
                be pickled.  Nothing was sent for it.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._error is not None:
            self._raise_closed()
        outbox = self._outbox
        while len(outbox) >= self.max_outbox:
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()
            if self._error is not None:
                self._raise_closed()
            outbox = self._outbox
        outbox.append(msg)
        self._flush_now(msg)
        self._fast_ops += 1
        if self._fast_ops >= YIELD_EVERY:
            self._fast_ops = 0
            await trio.lowlevel.cancel_shielded_checkpoint()

    def flush_nowait(self) -> None:
        """Start writing everything queued now, as one frame, without yielding.

        ``send_nowait`` leaves the write to the flusher task, which runs
        only once the caller yields; a loop that handles a batch of events
        and queues their replies can call this once at the end to put the
        replies on the wire immediately, saving a trip through the
        scheduler.  If the socket is busy, the flusher carries on as usual.

        Raises:
            ConnectionClosed: the connection has ended.
        """
        if self._error is not None:
            self._raise_closed()
        if self._outbox:
            self._flush_now(None)

    def _flush_now(self, mine: Any) -> None:
        """Encode the outbox and write it if the socket is free, else wake the flusher.

        Raises the pickling error of ``mine`` (a message in the outbox) if it
        cannot be sent; other bad messages are logged and dropped.
        """
        sock = self._sock
        if self._writing or self._pending or sock is None:
            # The flusher owns the socket (or this is a generic stream).
            if not self._writing:
                self._wake_flusher()
            return
        batch = self._take_outbox()
        try:
            body = _dumps(batch, _PICKLE_PROTOCOL)
        except Exception:
            body = None
        if body is not None and len(body) <= self._fast_limit:
            # The common case: one small frame, one system call.
            data = _pack_header(len(body)) + body
            self.frames_sent += 1
            self.messages_sent += len(batch)
            try:
                k = sock.send(data)
            except BlockingIOError:
                k = 0
            except OSError as exc:
                raise self._io_error(exc, "sending") from exc
            if k < len(data):
                self._pending.append(memoryview(data)[k:])
                self._wake_flusher()
            return
        # Unpicklable, or big: the general path.
        chunks, bad = self._encode(batch)
        if not self._write_now(chunks):
            self._wake_flusher()
        mine_exc = None
        for m, exc in bad:
            if m is mine and mine is not None:
                mine_exc = exc
            else:
                self._report_bad(m, exc)
        if mine_exc is not None:
            raise mine_exc

    def _take_outbox(self) -> list[Any]:
        """Empty the outbox (to encode it) and wake senders waiting for room."""
        batch = self._outbox
        self._outbox = []
        if self._room is not None:
            self._room.set()
            self._room = None
        return batch

    def _write_now(self, chunks: list[bytes]) -> bool:
        """Write ``chunks`` without blocking; queue what the kernel refused.

        Returns True if everything was written.
        """
        t = self._t
        for i, chunk in enumerate(chunks):
            try:
                n = t.try_send(chunk)
            except _CONNECTION_ERRORS as exc:
                raise self._io_error(exc, "sending") from exc
            if n < len(chunk):
                self._pending.append(memoryview(chunk)[n:])
                self._pending.extend(memoryview(c) for c in chunks[i + 1 :])
                return False
        return True

    def _encode(self, batch: list[Any]) -> tuple[list[bytes], list[tuple[Any, BaseException]]]:
        """Pickle ``batch`` into frames: ([buffers to write], [(bad msg, error)])."""
        try:
            body = pickle.dumps(batch, _PICKLE_PROTOCOL)
        except Exception:
            return self._encode_salvage(batch)
        n = len(body)
        if n > self.max_frame_size:
            if len(batch) == 1:
                exc = FrameTooLarge(
                    f"a {type(batch[0]).__name__} pickles to {n} bytes, above this channel's "
                    f"max_frame_size of {self.max_frame_size}; send large values through "
                    "the object store instead"
                )
                return [], [(batch[0], exc)]
            half = len(batch) // 2
            c1, b1 = self._encode(batch[:half])
            c2, b2 = self._encode(batch[half:])
            return c1 + c2, b1 + b2
        self.frames_sent += 1
        self.messages_sent += len(batch)
        if n <= _JOIN_LIMIT:
            return [_HEADER.pack(n) + body], []
        return [_HEADER.pack(n), body], []

    def _encode_salvage(self, batch: list[Any]) -> tuple[list[bytes], list[tuple[Any, BaseException]]]:
        """The batch did not pickle: drop the messages that do not, keep the rest."""
        good = []
        bad: list[tuple[Any, BaseException]] = []
        for m in batch:
            try:
                pickle.dumps(m, _PICKLE_PROTOCOL)
            except Exception as exc:
                bad.append((m, exc))
            else:
                good.append(m)
        if not good:
            return [], bad
        chunks, bad2 = self._encode(good)
        return chunks, bad + bad2

    def _report_bad(self, msg: Any, exc: BaseException) -> None:
        logger.error(
            "dropping a %s for %s: it cannot be sent (%r)",
            type(msg).__name__,
            self.peer_address,
            exc,
        )

    # --------------------------------------------------------------- flusher

    def _wake_flusher(self) -> None:
        if self._flusher is None:
            if self._error is not None:
                return
            self._flusher = trio.lowlevel.spawn_system_task(
                self._flusher_main, name=f"penumbra-flusher {self.peer_address}"
            )
        elif self._flusher_parked:
            self._flusher_parked = False
            trio.lowlevel.reschedule(self._flusher)

    def _flusher_abort(self, _: Any) -> trio.lowlevel.Abort:
        self._flusher_parked = False
        return trio.lowlevel.Abort.SUCCEEDED

    async def _flusher_main(self) -> None:
        # A system task: it must never raise (that would crash trio.run).
        try:
            with trio.CancelScope() as scope:
                self._flusher_scope = scope
                if self._closed:
                    scope.cancel()
                while self._error is None:
                    if not self._outbox and not self._pending:
                        if self._drained is not None:
                            self._drained.set()
                            self._drained = None
                        self._flusher_parked = True
                        await trio.lowlevel.wait_task_rescheduled(self._flusher_abort)
                        continue
                    self._writing = True
                    try:
                        await self._flush()
                    finally:
                        self._writing = False
        except ConnectionClosed:
            pass
        except Exception as exc:  # pragma: no cover - a bug, but keep trio alive
            logger.exception("channel flusher for %s crashed", self.peer_address)
            self._fail(ConnectionClosed(f"flusher crashed: {exc!r}"))
        finally:
            if self._drained is not None:
                self._drained.set()

    async def _flush(self) -> None:
        """Write pending bytes, then everything queued, until nothing is left."""
        t = self._t
        pending = self._pending
        while True:
            while pending:
                chunk = pending.popleft()
                try:
                    await t.send_all(chunk)
                except _CONNECTION_ERRORS as exc:
                    raise self._io_error(exc, "sending") from exc
            if not self._outbox or self._error is not None:
                return
            chunks, bad = self._encode(self._take_outbox())
            for m, exc in bad:
                self._report_bad(m, exc)
            pending.extend(memoryview(c) for c in chunks)

    # ----------------------------------------------------------------- close

    async def aclose(self, flush_timeout: float = CLOSE_FLUSH_TIMEOUT) -> None:
        """Close the channel, first writing what is queued (up to ``flush_timeout`` s).

        Idempotent.  If the calling scope is cancelled, closes at once,
        dropping queued messages.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        try:
            if self._error is None and (self._outbox or self._pending or self._writing):
                if not self._writing:
                    self._wake_flusher()
                if self._drained is None:
                    self._drained = trio.Event()
                with trio.move_on_after(flush_timeout):
                    await self._drained.wait()
            else:
                await trio.lowlevel.checkpoint()
        finally:
            self._close_now()
            await self._t.aclose()

    def _close_now(self) -> None:
        self._closed = True
        self._fail(ConnectionClosed("channel closed locally", clean=True))
        if self._flusher_scope is not None:
            self._flusher_scope.cancel()
        self._t.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# ===========================================================================
# Handshake


def _hello_frame(obj: dict[str, Any]) -> bytes:
    return encode_frame(json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def _check_token(token: str) -> bytes:
    if not isinstance(token, str) or not token:
        raise ValueError("token must be a non-empty string (see new_token())")
    return token.encode("utf-8")


async def _client_handshake(ch: Channel, token: str, role: str, name: str, timeout: float) -> Channel:
    hello = {"penumbra": PROTOCOL_VERSION, "token": token, "role": role, "name": name}
    try:
        with trio.fail_after(timeout):
            await ch._t.send_all(_hello_frame(hello))
            body = await ch._receive_raw_frame(MAX_HELLO_SIZE)
    except trio.TooSlowError:
        raise HandshakeError(f"{ch.peer_address} did not answer the hello within {timeout} s") from None
    except ConnectionClosed as exc:
        raise HandshakeError(f"handshake with {ch.peer_address} failed: {exc.reason}") from exc
    except _CONNECTION_ERRORS as exc:
        raise HandshakeError(f"handshake with {ch.peer_address} failed: {exc!r}") from exc
    reply = _parse_hello(body)
    if not isinstance(reply, dict) or "ok" not in reply:
        raise HandshakeError(f"{ch.peer_address} answered the hello with something that is not a penumbra reply")
    if reply.get("ok") is not True:
        raise HandshakeError(f"{ch.peer_address} refused the connection: {reply.get('error', 'no reason given')}")
    if reply.get("penumbra") != PROTOCOL_VERSION:
        raise HandshakeError(
            f"{ch.peer_address} speaks penumbra protocol {reply.get('penumbra')!r}, "
            f"this process speaks {PROTOCOL_VERSION}; run the same penumbra version everywhere"
        )
    ch.peer_role = str(reply.get("role", ""))
    ch.peer_name = str(reply.get("name", ""))
    ch.peer_hello = reply
    ch._authenticate()
    return ch


def _depth(value: Any) -> int:
    """How deep lists and dicts nest in a parsed JSON value (iteratively)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def _parse_hello(body: bytes) -> Any:
    """The JSON value in a hello frame, or None if it is not one (never raises).

    ``json.loads`` recurses once per nesting level (60,000 ``[`` raise
    ``RecursionError``), so it never sees a body with more than
    MAX_HELLO_BRACKETS ``[``/``{`` (counting them is a cheap byte scan and
    bounds the depth far below the recursion limit); a value nesting deeper
    than MAX_HELLO_DEPTH is refused after parsing.  A real hello is one flat
    object.
    """
    if body.count(b"[") + body.count(b"{") > MAX_HELLO_BRACKETS:
        return None
    try:
        value = json.loads(body.decode("utf-8"))
    except Exception:  # bad UTF-8, bad JSON, a number too long to convert ...
        return None
    return value if _depth(value) <= MAX_HELLO_DEPTH else None


def _is_text(value: Any) -> bool:
    """A str that encodes to UTF-8 (JSON can carry lone surrogates, which do not)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _validate_hello(body: bytes, token: bytes) -> tuple[str | None, dict[str, Any]]:
    """(reason to refuse or None, hello).  Never raises, whatever ``body`` holds."""
    hello = _parse_hello(body)
    if hello is None:
        return "first frame is not a JSON hello; is the peer speaking the penumbra protocol?", {}
    if not isinstance(hello, dict) or "penumbra" not in hello:
        return "first frame is not a penumbra hello", {}
    given = hello.get("token")
    # surrogatepass: a lone surrogate is just a wrong token, not an error
    if not isinstance(given, str) or not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token):
        return "authentication failed: wrong cluster token (check the token the cluster was started with)", {}
    if hello.get("penumbra") != PROTOCOL_VERSION:
        version = hello.get("penumbra")
        shown = repr(version)[:40] if isinstance(version, (int, float, str)) and _is_text(repr(version)) else "?"
        reason = (
            f"protocol version {shown} is not supported (server speaks "
            f"{PROTOCOL_VERSION}); run the same penumbra version everywhere"
        )
        return reason, {}
    if not _is_text(hello.get("role", "")) or not _is_text(hello.get("name", "")):
        return "malformed hello: role and name must be strings", {}
    return None, hello


class _HandshakeLog:
    """A listener's log of refused and failed handshakes, rate-limited.

    At most ``burst`` lines per ``interval`` seconds; further ones are
    counted, and the count is reported with the next line logged (or when
    the listener stops), so a flood of bad connections cannot fill the log.
    """

    def __init__(self, where: str, burst: int | None = None, interval: float | None = None) -> None:
        self.where = where
        self.burst = REFUSAL_LOG_BURST if burst is None else burst
        self.interval = REFUSAL_LOG_INTERVAL if interval is None else interval
        self.suppressed = 0  # not logged since the last line
        self._window_end = -math.inf
        self._used = 0

    def __call__(self, level: int, msg: str, *args: Any, exc_info: BaseException | None = None) -> None:
        now = trio.current_time()
        if now >= self._window_end:
            self._window_end = now + self.interval
            self._used = 0
        if self._used >= self.burst:
            self.suppressed += 1
            return
        self._used += 1
        if self.suppressed:
            msg += " (%d more refused or failed handshakes on %s not logged in the last %g s)"
            args = (*args, self.suppressed, self.where, self.interval)
            self.suppressed = 0
        logger.log(level, msg, *args, exc_info=exc_info)

    def close(self) -> None:
        if self.suppressed:
            logger.warning("%d refused or failed handshakes on %s were not logged", self.suppressed, self.where)
            self.suppressed = 0


def _log_every_line(level: int, msg: str, *args: Any, exc_info: BaseException | None = None) -> None:
    logger.log(level, msg, *args, exc_info=exc_info)


_HandshakeLogger = Callable[..., None]


async def _refuse(ch: Channel, reason: str, log: _HandshakeLogger) -> None:
    log(logging.WARNING, "refused connection from %s: %s", ch.peer_address, reason)
    with trio.move_on_after(1.0):
        try:
            await ch._t.send_all(_hello_frame({"penumbra": PROTOCOL_VERSION, "ok": False, "error": reason}))
        except _CONNECTION_ERRORS:
            pass
    await ch.aclose(flush_timeout=0)


async def _server_handshake(
    ch: Channel, token: bytes, role: str, name: str, timeout: float, log: _HandshakeLogger = _log_every_line
) -> bool:
    """Authenticate the peer on ``ch``; refuse and close it on failure.

    Nothing the peer sends makes this raise (only trio's Cancelled and the
    like, from outside): an unexpected exception is logged with the peer's
    address and the connection closed.
    """
    try:
        return await _server_handshake_steps(ch, token, role, name, timeout, log)
    except Exception as exc:
        log(logging.ERROR, "handshake with %s failed unexpectedly; closing that connection", ch.peer_address,
            exc_info=exc)
        await ch.aclose(flush_timeout=0)
        return False


async def _server_handshake_steps(
    ch: Channel, token: bytes, role: str, name: str, timeout: float, log: _HandshakeLogger
) -> bool:
    reason: str | None = None
    body = b""
    with trio.move_on_after(timeout) as scope:
        try:
            body = await ch._receive_raw_frame(MAX_HELLO_SIZE)
        except ProtocolError as exc:
            reason = exc.reason
        except ConnectionClosed as exc:
            log(logging.INFO, "connection from %s ended before its hello: %s", ch.peer_address, exc.reason)
            await ch.aclose(flush_timeout=0)
            return False
    if scope.cancelled_caught:
        reason = f"sent no hello within {timeout} s"
    hello: dict[str, Any] = {}
    if reason is None:
        reason, hello = _validate_hello(body, token)
    if reason is not None:
        await _refuse(ch, reason, log)
        return False
    ch.peer_role = hello.get("role", "")
    ch.peer_name = hello.get("name", "")
    ch.peer_hello = {k: v for k, v in hello.items() if k != "token"}
    try:
        with trio.fail_after(timeout):
            await ch._t.send_all(_hello_frame({"penumbra": PROTOCOL_VERSION, "ok": True, "role": role, "name": name}))
    except (trio.TooSlowError, *_CONNECTION_ERRORS) as exc:
        log(logging.INFO, "connection from %s lost during the handshake: %r", ch.peer_address, exc)
        await ch.aclose(flush_timeout=0)
        return False
    ch._authenticate()
    return True


# ===========================================================================
# Generic streams


async def open_channel(
    stream: trio.abc.Stream,
    token: str,
    role: str,
    name: str,
    *,
    peer_address: str = "stream",
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    max_frame_size: int = MAX_FRAME_SIZE,
    max_outbox: int = DEFAULT_MAX_OUTBOX,
) -> Channel:
    """Client handshake over any trio Stream (TLS, in-memory ...); the channel.

    Slower than :func:`connect_tcp` (every operation yields); use it where a
    socket is not available.

    Raises:
        HandshakeError: refused by the server, or no valid reply in time.
    """
    _check_token(token)
    ch = Channel(_StreamTransport(stream), peer_address=peer_address, max_frame_size=max_frame_size, max_outbox=max_outbox)
    try:
        return await _client_handshake(ch, token, role, name, handshake_timeout)
    except BaseException:
        await ch.aclose(flush_timeout=0)
        raise


async def accept_channel(
    stream: trio.abc.Stream,
    token: str,
    *,
    role: str = "server",
    name: str = "",
    peer_address: str = "stream",
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    max_frame_size: int = MAX_FRAME_SIZE,
    max_outbox: int = DEFAULT_MAX_OUTBOX,
) -> Channel | None:
    """Server handshake over any trio Stream; the channel, or None if refused.

    A refused peer gets an error frame, is logged, and ``stream`` is closed.
    """
    key = _check_token(token)
    ch = Channel(_StreamTransport(stream), peer_address=peer_address, max_frame_size=max_frame_size, max_outbox=max_outbox)
    try:
        ok = await _server_handshake(ch, key, role, name, handshake_timeout)
    except BaseException:
        await ch.aclose(flush_timeout=0)
        raise
    return ch if ok else None


# ===========================================================================
# Listeners and connectors

Handler = Callable[[Channel], Awaitable[Any]]

# accept() errors that mean "out of resources, try again soon"
_ACCEPT_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
# accept() errors about one connection that died while queued
_ACCEPT_CONN_ERRORS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ECONNRESET}


def _peer_string(family: int, addr: Any, local: str = "", sock: socket.socket | None = None) -> str:
    if family == socket.AF_UNIX:
        where = f"unix:{addr or local}"
        if sock is not None and hasattr(socket, "SO_PEERCRED"):
            try:
                pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
                where += f" (pid {pid})"
            except OSError:  # pragma: no cover
                pass
        return where
    if family == socket.AF_INET6:
        return f"[{addr[0]}]:{addr[1]}"
    return f"{addr[0]}:{addr[1]}"


def _tune(sock: socket.socket) -> None:
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


@dataclass
class ListenerStats:
    """What a ``serve_*`` listener is doing, for monitoring and tests.

    Pass one as ``stats=`` to :func:`serve_tcp` / :func:`serve_unix`; the
    listener keeps it up to date.

    Attributes:
        handshaking: the channels whose peers have not authenticated yet
            (at most ``max_handshakes``).
        peak_handshaking: the most handshakes ever in progress at once.
        accepted: connections accepted.
        authenticated: connections that passed the handshake.
        refused: connections refused or lost before authenticating.
    """

    handshaking: set[Channel] = field(default_factory=set)
    peak_handshaking: int = 0
    accepted: int = 0
    authenticated: int = 0
    refused: int = 0


@dataclass
class _Listener:
    """One listening socket's settings and state (shared by its connection tasks)."""

    lsock: socket.socket
    local: str
    handler: Handler
    key: bytes
    role: str
    name: str
    handshake_timeout: float
    max_frame_size: int
    max_outbox: int
    max_handshakes: int
    slots: trio.Semaphore  # one per handshake in progress
    log: _HandshakeLog
    stats: ListenerStats


async def _serve_connection(lst: _Listener, sock: socket.socket, peer: str) -> None:
    """Handshake, then the handler.  Only BaseExceptions (Cancelled) escape.

    Holds one of the listener's handshake slots until the handshake ends.
    """
    stats = lst.stats
    ch: Channel | None = None
    slot = True
    try:
        ch = Channel(_SocketTransport(sock), peer_address=peer, max_frame_size=lst.max_frame_size,
                     max_outbox=lst.max_outbox)
        stats.handshaking.add(ch)
        ok = await _server_handshake(ch, lst.key, lst.role, lst.name, lst.handshake_timeout, lst.log)
        stats.handshaking.discard(ch)
        lst.slots.release()
        slot = False
        if not ok:
            stats.refused += 1
            return
        stats.authenticated += 1
        try:
            await lst.handler(ch)
        except ConnectionClosed as exc:
            logger.debug("connection from %s (%s %s) ended: %s", peer, ch.peer_role, ch.peer_name, exc.reason)
        except Exception:
            logger.exception("handler for %s (%s %s) failed; closing that connection", peer, ch.peer_role, ch.peer_name)
    except Exception as exc:  # a bug in this module; never take the listener down
        lst.log(logging.ERROR, "connection from %s failed; closing it", peer, exc_info=exc)
    finally:
        if slot:
            if ch is not None:
                stats.handshaking.discard(ch)
            lst.slots.release()
        if ch is None:
            sock.close()
        else:
            try:
                await ch.aclose()
            except Exception as exc:  # pragma: no cover - closing a socket hardly fails
                logger.debug("closing the connection from %s failed: %r", peer, exc)


async def _accept_loop(lst: _Listener, nursery: trio.Nursery) -> None:
    """Accept connections while fewer than ``max_handshakes`` are handshaking.

    At the cap, new connections wait in the kernel's accept backlog (not in
    this process's memory) until a handshake ends; see the module docstring
    for why they are not refused.
    """
    lsock, local, stats = lst.lsock, lst.local, lst.stats
    at_cap_logged = False
    while True:
        if lst.slots.value == 0 and not at_cap_logged:
            lst.log(logging.WARNING, "%d handshakes in progress on %s (the limit); new connections wait in "
                    "the backlog until one ends", len(stats.handshaking), local)
            at_cap_logged = True
        await lst.slots.acquire()
        try:
            conn, addr = await _accept(lsock, local)
        except BaseException:
            lst.slots.release()
            raise
        if lst.slots.value > 0:
            at_cap_logged = False
        try:
            _tune(conn)
            peer = _peer_string(conn.family, addr, local, conn)
        except OSError as exc:  # the peer is already gone
            logger.debug("dropping a connection on %s that failed at once: %r", local, exc)
            conn.close()
            lst.slots.release()
            continue
        stats.accepted += 1
        nursery.start_soon(_serve_connection, lst, conn, peer, name=f"penumbra-conn {peer}")
        in_progress = lst.max_handshakes - lst.slots.value
        if in_progress > stats.peak_handshaking:
            stats.peak_handshaking = in_progress


async def _accept(lsock: socket.socket, local: str) -> tuple[socket.socket, Any]:
    """The next connection on ``lsock`` (retrying errors about one connection)."""
    while True:
        try:
            return lsock.accept()
        except BlockingIOError:
            await trio.lowlevel.wait_readable(lsock)
        except OSError as exc:
            if exc.errno in _ACCEPT_CONN_ERRORS:
                continue
            if exc.errno in _ACCEPT_RESOURCE_ERRORS:
                logger.error("cannot accept a connection on %s: %s; retrying in 0.1 s", local, exc)
                await trio.sleep(0.1)
                continue
            raise


def _new_listener(lsock: socket.socket, local: str, handler: Handler, key: bytes, role: str, name: str,
                  handshake_timeout: float, max_frame_size: int, max_outbox: int, max_handshakes: int,
                  stats: ListenerStats | None) -> _Listener:
    return _Listener(lsock, local, handler, key, role, name, handshake_timeout, max_frame_size, max_outbox,
                     max_handshakes, trio.Semaphore(max_handshakes), _HandshakeLog(local),
                     ListenerStats() if stats is None else stats)


async def _run_listener(lst: _Listener, task_status: Any, started: Any) -> None:
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(started)
            await _accept_loop(lst, nursery)
    finally:
        lst.log.close()


def _check_max_handshakes(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"max_handshakes must be a positive int (handshakes in progress per listener), got {n!r}")


def _close_listener(lsock: socket.socket) -> None:
    try:
        trio.lowlevel.notify_closing(lsock)
    except RuntimeError:  # pragma: no cover
        pass
    lsock.close()


async def serve_tcp(
    host: str | None,
    port: int,
    handler: Handler,
    token: str,
    *,
    role: str = "server",
    name: str = "",
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    max_frame_size: int = MAX_FRAME_SIZE,
    max_outbox: int = DEFAULT_MAX_OUTBOX,
    max_handshakes: int = MAX_HANDSHAKES,
    backlog: int = 1024,
    stats: ListenerStats | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept authenticated connections on TCP ``host:port`` until cancelled.

    Each connection that passes the handshake is served by
    ``await handler(channel)`` in its own task; the channel is closed when
    the handler returns.  A handler that raises is logged and only its
    connection is closed.  Use ``port=0`` for a free port and
    ``await nursery.start(serve_tcp, ...)`` to learn it: ``started`` reports
    the bound ``(host, port)``.

    Nothing a peer sends before it authenticates can raise out of here
    (see "Hostile peers" in the module docstring).

    Args:
        host: address to bind; ``None`` or ``""`` for all interfaces.
        token: the shared secret clients must present.
        handshake_timeout: seconds a peer has to send its hello.
        max_handshakes: handshakes in progress at once; further connections
            wait in the kernel's backlog until one ends.
        stats: a :class:`ListenerStats` this listener keeps up to date.

    Raises:
        OSError: the address cannot be bound (in use, permission ...).
        ValueError: empty token, or ``max_handshakes`` below 1.
    """
    key = _check_token(token)
    _check_max_handshakes(max_handshakes)
    infos = await trio.socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, sockaddr = infos[0]
    lsock = socket.socket(family, type_, proto)
    try:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(sockaddr)
        lsock.listen(backlog)
        lsock.setblocking(False)
        bound = lsock.getsockname()
        local = _peer_string(family, bound)
        logger.info("listening on tcp %s", local)
        lst = _new_listener(lsock, local, handler, key, role, name, handshake_timeout, max_frame_size, max_outbox,
                            max_handshakes, stats)
        await _run_listener(lst, task_status, (bound[0], bound[1]))
    finally:
        _close_listener(lsock)


async def serve_unix(
    path: str | os.PathLike[str],
    handler: Handler,
    token: str,
    *,
    role: str = "server",
    name: str = "",
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    max_frame_size: int = MAX_FRAME_SIZE,
    max_outbox: int = DEFAULT_MAX_OUTBOX,
    max_handshakes: int = MAX_HANDSHAKES,
    backlog: int = 1024,
    stats: ListenerStats | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Like :func:`serve_tcp`, on a Unix domain socket at ``path``.

    A stale socket file left by a dead server is replaced; a live one raises
    ``OSError(EADDRINUSE)``.  The socket file is removed when serving stops
    (if it is still ours).  The file is created with the process umask;
    the token, not file permissions, guards access.
    """
    key = _check_token(token)
    _check_max_handshakes(max_handshakes)
    path = os.fspath(path)
    _remove_stale_unix_socket(path)
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    inode = None
    try:
        try:
            lsock.bind(path)
        except OSError as exc:
            if len(os.fsencode(path)) >= 104:
                raise OSError(exc.errno, f"cannot bind Unix socket {path!r}: {exc.strerror} (paths are limited to ~104 bytes; use a shorter one)") from exc
            raise
        inode = os.stat(path).st_ino
        lsock.listen(backlog)
        lsock.setblocking(False)
        logger.info("listening on unix %s", path)
        lst = _new_listener(lsock, path, handler, key, role, name, handshake_timeout, max_frame_size, max_outbox,
                            max_handshakes, stats)
        await _run_listener(lst, task_status, path)
    finally:
        _close_listener(lsock)
        if inode is not None:
            try:
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            except OSError:
                pass


def _remove_stale_unix_socket(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path!r} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        try:
            os.unlink(path)
            logger.info("removed stale socket file %s", path)
        except FileNotFoundError:
            pass
        return
    else:
        raise OSError(errno.EADDRINUSE, f"a server is already listening on {path!r}")
    finally:
        probe.close()


def _detach(stream: trio.SocketStream) -> socket.socket:
    """Take the stdlib socket out of a trio SocketStream."""
    sock = socket.socket(fileno=stream.socket.detach())
    _tune(sock)
    return sock


async def _connect(
    sock: socket.socket,
    peer: str,
    token: str,
    role: str,
    name: str,
    handshake_timeout: float,
    max_frame_size: int,
    max_outbox: int,
) -> Channel:
    ch = Channel(_SocketTransport(sock), peer_address=peer, max_frame_size=max_frame_size, max_outbox=max_outbox)
    try:
        return await _client_handshake(ch, token, role, name, handshake_timeout)
    except BaseException:
        await ch.aclose(flush_timeout=0)
        raise


async def connect_tcp(
    host: str,
    port: int,
    token: str,
    role: str,
    name: str,
    *,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    max_frame_size: int = MAX_FRAME_SIZE,
    max_outbox: int = DEFAULT_MAX_OUTBOX,
) -> Channel:
    """Connect to a ``serve_tcp`` server and authenticate; the channel.

    Args:
        role, name: who this process is (``"driver"``, ``"worker"`` ...),
            for the server's bookkeeping and logs.

    Raises:
        OSError: cannot connect (refused, unreachable ...).
        HandshakeError: the server refused us (wrong token, version) or
            did not answer within ``handshake_timeout`` seconds.
    """
    _check_token(token)
    stream = await trio.open_tcp_stream(host, port)
    sock = _detach(stream)
    return await _connect(sock, _peer_string(sock.family, sock.getpeername()), token, role, name, handshake_timeout, max_frame_size, max_outbox)


async def connect_unix(
    path: str | os.PathLike[str],
    token: str,
    role: str,
    name: str,
    *,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    max_frame_size: int = MAX_FRAME_SIZE,
    max_outbox: int = DEFAULT_MAX_OUTBOX,
) -> Channel:
    """Like :func:`connect_tcp`, to a ``serve_unix`` server at ``path``."""
    _check_token(token)
    path = os.fspath(path)
    stream = await trio.open_unix_socket(path)
    sock = _detach(stream)
    return await _connect(sock, f"unix:{path}", token, role, name, handshake_timeout, max_frame_size, max_outbox)

