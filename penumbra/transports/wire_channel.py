"""A :class:`Channel`: messages over one authenticated connection.

Built on :mod:`~penumbra.transports.wire_frames` (frames and byte pipes);
:mod:`penumbra.transports.wire` makes channels (handshake, listeners,
connectors) and is where to import them from.

Theory of operation
-------------------
A channel is created unauthenticated, receiving into a small
:data:`HANDSHAKE_BUFFER`, and refuses to decode anything until the
handshake in ``wire`` calls ``_authenticate`` (after which the buffer grows
to 256 KiB): a frame may hold pickled values (see ``wire_codec``), and
unpickling runs code chosen by the sender.

**Messages and batching.**  After the handshake a frame body is a format
byte and one msgpack list of messages (:mod:`~penumbra.transports.
wire_codec`, which encodes the whole frame, length included, in one
buffer): *every* frame carries a list, so a burst of small messages costs
one encode, one frame and one system call.  A frame that does not decode
(garbage, an unknown message name, a field of the wrong type, a truncated
body) ends the connection with a :class:`ProtocolError` saying what was
wrong.  :meth:`Channel.send_nowait` appends to an outbox; a background
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
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from typing import Any, Self

import trio

from .wire_frames import (
    _CONNECTION_ERRORS,
    _HEADER,
    MAX_FRAME_SIZE,
    ConnectionClosed,
    FrameTooLarge,
    ProtocolError,
    _grow,
    _SocketTransport,
    _StreamTransport,
    _unpack_header,
)
from .wire_codec import WireDecodeError, codec

# One logger for the whole wire stack (wire, wire_channel, ...), so that
# configuring "penumbra.transports.wire" covers every line it logs.
logger = logging.getLogger("penumbra.transports.wire")

#: Receive buffer of a connection that has not authenticated yet (a hello
#: fits; a larger one grows it with the bytes that actually arrive).
HANDSHAKE_BUFFER = 4096
#: Default bound on queued, not yet written messages per channel.
DEFAULT_MAX_OUTBOX = 65536
#: A channel yields to the scheduler after this many operations that did not block.
YIELD_EVERY = 64
#: Seconds ``aclose`` waits for queued messages to be written.
CLOSE_FLUSH_TIMEOUT = 5.0

_RECV_BUFFER = 256 * 1024
# Frames at most this large may be written straight from the sender's
# thread or task (``_flush_now``, ``write_from_thread``); larger ones go
# through the flusher, which writes them in pieces as the socket takes them.
_JOIN_LIMIT = 64 * 1024

#: What :meth:`Channel.write_from_thread` did.
WROTE = "wrote"
PARTLY = "partly"
NOT_NOW = "not now"
FAILED = "failed"



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
        self.send_error: OSError | None = None  # a failed write_from_thread, to record
        # state
        self._error: ConnectionClosed | None = None
        self._closed = False
        self._torn = False
        self._fast_ops = 0
        self._codec = codec()
        self._encode_frame = self._codec.encode

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
            # (a frame may be half written: then no last words, see ``send_last_words``)
            self._torn = bool(self._pending) or self._writing
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
            # Never decode a byte from a peer that has not proven the token.
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
            msgs = self._codec.decode(body)
        except WireDecodeError as exc:
            err = ProtocolError(f"{self.peer_address} sent a frame that does not decode ({exc}); "
                                "closing the connection")
            err.__cause__ = exc
            # (logged here, once: the handlers see only a lost connection)
            logger.warning("%s (%s %s)", err.reason, self.peer_role, self.peer_name)
            raise self._fail(err) from exc
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
        """The handshake succeeded: decoding is allowed, and the buffer grows to full size."""
        self._authenticated = True
        if len(self._buf) < _RECV_BUFFER:
            self._resize_buffer(_RECV_BUFFER)

    async def _receive_raw_frame(self, limit: int) -> bytes:
        """One frame body, not decoded (the handshake's JSON hello)."""
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
            FrameTooLarge: ``msg`` encodes to more than ``max_frame_size``.
            TypeError, pickle.PicklingError (what encoding raised): ``msg``
                cannot be encoded (a value of the wrong type in a typed
                field, an unpicklable value in an untyped one).  Nothing
                was sent for it.
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

        Raises the encoding error of ``mine`` (a message in the outbox) if it
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
            data = self._encode_frame(batch)
        except Exception:
            data = None
        if data is not None and len(data) - 4 <= self._fast_limit:
            # The common case: one small frame, one system call.
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
        # Not encodable, or big: the general path (a big frame is not encoded twice).
        chunks, bad = self._encode(batch, data)
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

    # ------------------------------------------------- sends from another thread

    def write_from_thread(self, msg: Any) -> str:
        """Write ``msg`` now, on the calling thread, after whatever is queued.

        For a client whose user threads send without waking the loop's
        thread (see :mod:`~penumbra.transports.direct_send`): when no one
        else is writing, the queued messages and ``msg`` go out as one
        frame with one system call, in order.

        Returns :data:`WROTE` (all of it), :data:`PARTLY` (the kernel took part of the frame; the rest
        is pending, and the caller must have the loop's thread call
        :meth:`resume_writing`), or :data:`NOT_NOW`: nothing was taken,
        send through the loop instead (the queue stays as it was, so order
        is kept).  ``NOT_NOW`` when the flusher is awake or bytes are
        pending (the socket is someone else's), over a generic stream, and
        for a frame above the one-buffer limit or a message that does not
        encode (the loop's path splits and reports those).

        The caller must hold the one lock that also guards every call the
        loop's thread makes into this channel's send side (``send_nowait``,
        ``flush_nowait``, ``resume_writing``).  Nothing here touches trio
        (it is not thread-safe): a write that fails returns :data:`FAILED`,
        its error kept in ``send_error`` for the loop's thread to record
        (:meth:`record_send_error`), as a failed write there would be.

        Raises:
            ConnectionClosed: the connection has ended.
        """
        if self._error is not None:
            self._raise_closed()
        sock = self._sock
        if (sock is None or self._writing or self._pending or self._room is not None
                or not (self._flusher is None or self._flusher_parked)):
            return NOT_NOW
        outbox = self._outbox
        batch = outbox + [msg] if outbox else [msg]
        try:
            data = self._encode_frame(batch)
        except Exception:
            return NOT_NOW
        if len(data) - 4 > self._fast_limit:
            return NOT_NOW
        if outbox:
            self._outbox = []
        self.frames_sent += 1
        self.messages_sent += len(batch)
        try:
            k = sock.send(data)
        except BlockingIOError:
            k = 0
        except OSError as exc:
            self.send_error = exc
            return FAILED
        if k < len(data):
            self._pending.append(memoryview(data)[k:])
            return PARTLY
        return WROTE

    def resume_writing(self) -> None:
        """(the loop's thread) Write what a ``write_from_thread`` left pending."""
        if self._pending and not self._writing and self._error is None:
            self._wake_flusher()

    def record_send_error(self) -> None:
        """(the loop's thread) A ``write_from_thread`` failed: the connection
        is lost (as when a write on the loop's thread fails)."""
        exc, self.send_error = self.send_error, None
        if exc is not None:
            self._io_error(exc, "sending")

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

    def _encode(self, batch: list[Any], frame: bytearray | None = None,
                ) -> tuple[list[bytes], list[tuple[Any, BaseException]]]:
        """Encode ``batch`` into frames: ([buffers to write], [(bad msg, error)]);
        a batch above ``max_frame_size`` is split in halves until each fits.
        ``frame``: the batch already encoded, if it was."""
        if frame is None:
            try:
                frame = self._encode_frame(batch)
            except Exception:
                return self._encode_salvage(batch)
        n = len(frame) - 4
        if n > self.max_frame_size:
            if len(batch) == 1:
                exc = FrameTooLarge(
                    f"a {type(batch[0]).__name__} encodes to {n} bytes, above this channel's "
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
        return [frame], []

    def _encode_salvage(self, batch: list[Any]) -> tuple[list[bytes], list[tuple[Any, BaseException]]]:
        """The batch did not encode: drop the messages that do not, keep the rest."""
        good = []
        bad: list[tuple[Any, BaseException]] = []
        for m in batch:
            try:
                self._encode_frame([m])
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

    async def send_last_words(self, msg: Any, timeout: float = 1.0) -> bool:
        """Write ``msg`` on a channel the peer broke with a bad frame, before closing it.

        A :class:`ProtocolError` ends the channel (the byte stream from the
        peer is out of step: nothing more can be read), but the way to the
        peer is still whole, so one last message (``protocol.Closing``)
        lets the peer say why its connection ended instead of seeing it
        closed for no reason.  Best effort: returns False, having written
        nothing, unless the channel ended on a ProtocolError, no frame of
        ours was cut short, and the write finished within ``timeout``.
        """
        if self._closed or self._torn or self._writing or not isinstance(self._error, ProtocolError):
            return False
        try:
            frame = self._encode_frame([msg])
        except Exception:
            return False
        with trio.move_on_after(timeout):
            try:
                await self._t.send_all(frame)
                return True
            except (*_CONNECTION_ERRORS, trio.BusyResourceError, trio.ClosedResourceError):
                return False
        self._torn = True  # (cut off mid-write: another try would garble the stream)
        return False

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
