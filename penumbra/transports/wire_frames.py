"""Frames, the errors that end a connection, and the byte pipes under a channel.

The lowest layer of the wire stack (:mod:`penumbra.transports.wire` is the
entry point; :mod:`~penumbra.transports.wire_channel` builds on this).  It
knows the shape of a frame and how bytes move, nothing about what a frame
holds.

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

**Pipes.**  A channel reads and writes through a transport: a non-blocking
stdlib socket driven with ``trio.lowlevel`` waits (the fast path: the system
call is tried first, and only ``EAGAIN`` parks the task), or any
:class:`trio.abc.Stream` (TLS, in-memory test streams; every operation
yields).

**Errors.**  Every way a connection can end surfaces as
:class:`ConnectionClosed` (``clean`` is true for an orderly close at a frame
boundary or a local close).  :class:`ProtocolError` (a garbled stream) and
:class:`HandshakeError` (refused or failed handshake) are subclasses.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import trio

#: Largest frame body accepted or sent by default (1 GiB).
MAX_FRAME_SIZE = 1 << 30

_HEADER = struct.Struct(">I")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from
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
    """The peer sent bytes that break the protocol (bad length, a body that does not decode ...)."""


class HandshakeError(ConnectionClosed):
    """The handshake failed: refused by the server, or no valid reply in time."""


class FrameTooLarge(ValueError):
    """A single message encodes to more than the channel's ``max_frame_size``.

    The connection stays usable; only that message was not sent.  Send large
    values through the object store instead of inside messages.
    """


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
