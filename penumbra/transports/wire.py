"""Framing, handshake and message channels over trio sockets.

Every real-runtime process (the head/GCS server, node daemons, workers and
drivers) talks to its peers through a :class:`Channel`.  This module owns the
bytes on the wire; it knows nothing about what the messages mean.

Theory of operation
-------------------
**Framing** (:mod:`~penumbra.transports.wire_frames`).  A connection carries
a sequence of length-prefixed frames (4-byte big-endian length, then the
body); a receiver refuses a length above its ``max_frame_size``.

**Handshake.**  The first frame in each direction is a small JSON object
(at most :data:`MAX_HELLO_SIZE` bytes, UTF-8).  The client opens with::

    {"penumbra": 2, "token": "<cluster token>", "role": "worker", "name": "w-3",
     "schema": "<fingerprint of the message classes>"}

and the server answers ``{"penumbra": 2, "ok": true, "role": ..., "name":
..., "schema": ...}`` or refuses with ``{"penumbra": 2, "ok": false,
"error": "<why>"}``
and closes.  The server checks the token with :func:`hmac.compare_digest`.
A peer whose first frame is not a well-formed hello (garbage bytes, an
oversized length prefix, non-JSON, wrong protocol version or message
schema, wrong token) or
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

   After the handshake every frame body is msgpack (:mod:`~penumbra.
   transports.wire_codec`): the protocol's messages decode typed, into
   their own classes, and running no code chosen by the sender.  Some
   values still travel as **pickles** (fields that hold anything: a GCS
   reply's result, a table key, a ``Payload``'s data that is not bytes; and
   messages that are not protocol classes), and unpickling runs arbitrary
   code chosen by the sender.  A channel therefore never decodes a byte
   from a peer that has not proven it knows the cluster token (such a peer
   can submit tasks, which run its code anyway).  The token itself travels
   in clear text, so on an untrusted network run the cluster inside a
   private network, a VPN or an SSH tunnel (or wrap the stream in TLS and
   use :func:`open_channel` / :func:`accept_channel`).  Treat the token like
   a password.

**Messages** (:mod:`~penumbra.transports.wire_channel`,
:mod:`~penumbra.transports.wire_codec`).  After the handshake every frame
body is a format byte and one msgpack list of messages; a :class:`Channel`
batches sends, bounds its outbox (backpressure) and drives the socket
directly for speed.  Both sides must agree on the message classes: the
hello carries the protocol version (2: msgpack; 1 pickled) and a
fingerprint of the message schema, and a peer that differs in either is
refused at the hello with a reason that says so.

**Errors.**  Every way a connection can end surfaces as
:class:`ConnectionClosed` (``clean`` is true for an orderly close at a frame
boundary or a local close).  :class:`ProtocolError` (a garbled stream) and
:class:`HandshakeError` (refused or failed handshake) are subclasses.

Where things live
-----------------
* ``wire_frames``: frame format, the connection errors, the byte pipes.
* ``wire_channel``: :class:`Channel` (batching, backpressure, close).
* ``wire_hello``: the hello's format and its bounded validation.
* this module: the handshake, :func:`open_channel` / :func:`accept_channel`,
  the listeners (:func:`serve_tcp`, :func:`serve_unix`) and connectors
  (:func:`connect_tcp`, :func:`connect_unix`), and :class:`Ping` /
  :class:`Pong`.  Every public name of the wire stack is importable from
  here.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

from .session import new_token
from .wire_channel import (
    CLOSE_FLUSH_TIMEOUT,  # noqa: F401  (re-exported: wire.X as before the split)
    DEFAULT_MAX_OUTBOX,
    HANDSHAKE_BUFFER,  # noqa: F401
    YIELD_EVERY,
    Channel,
)
from .wire_frames import (
    _CONNECTION_ERRORS,
    MAX_FRAME_SIZE,
    ConnectionClosed,
    FrameTooLarge,
    HandshakeError,
    ProtocolError,
    _SocketTransport,
    _StreamTransport,
    encode_frame,
)
from .wire_hello import (
    MAX_HELLO_BRACKETS,  # noqa: F401
    MAX_HELLO_DEPTH,  # noqa: F401
    MAX_HELLO_SIZE,
    PROTOCOL_VERSION,
    _check_token,
    _hello_frame,
    _parse_hello,
    _schema_mismatch,
    _validate_hello,
)
from .wire_codec import schema_fingerprint

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

#: Seconds a peer has to complete the handshake.
HANDSHAKE_TIMEOUT = 10.0
#: Default bound on handshakes in progress per listener.
MAX_HANDSHAKES = 256
#: A listener logs at most REFUSAL_LOG_BURST refusals per
#: REFUSAL_LOG_INTERVAL seconds and counts the rest (reported with the next
#: line it logs), so a flood of bad connections cannot fill the log.  A burst
#: rather than one line, so that an occasional refusal (a client with the
#: wrong token) is always logged in full.
REFUSAL_LOG_BURST = 5
REFUSAL_LOG_INTERVAL = 10.0


# ===========================================================================
# Transport-level frames


class Ping(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Liveness probe; the peer is expected to answer ``Pong(seq)``."""

    seq: int
    payload: bytes = b""


class Pong(msgspec.Struct, frozen=True, tag=True, array_like=True):
    seq: int
    payload: bytes = b""


# ===========================================================================
# Handshake


async def _client_handshake(ch: Channel, token: str, role: str, name: str, timeout: float) -> Channel:
    schema = schema_fingerprint()
    hello = {"penumbra": PROTOCOL_VERSION, "token": token, "role": role, "name": name, "schema": schema}
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
    mismatch = _schema_mismatch(reply.get("schema"), schema)
    if mismatch is not None:
        raise HandshakeError(f"{ch.peer_address}: {mismatch}")
    ch.peer_role = str(reply.get("role", ""))
    ch.peer_name = str(reply.get("name", ""))
    ch.peer_hello = reply
    ch._authenticate()
    return ch


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
        reason, hello = _validate_hello(body, token, schema_fingerprint())
    if reason is not None:
        await _refuse(ch, reason, log)
        return False
    ch.peer_role = hello.get("role", "")
    ch.peer_name = hello.get("name", "")
    ch.peer_hello = {k: v for k, v in hello.items() if k != "token"}
    try:
        with trio.fail_after(timeout):
            await ch._t.send_all(_hello_frame({"penumbra": PROTOCOL_VERSION, "ok": True, "role": role, "name": name,
                                               "schema": schema_fingerprint()}))
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
    connect_timeout: float = math.inf,
) -> Channel:
    """Connect to a ``serve_tcp`` server and authenticate; the channel.

    Args:
        role, name: who this process is (``"driver"``, ``"worker"`` ...),
            for the server's bookkeeping and logs.
        connect_timeout: give up the TCP connect after this many seconds
            (a host that drops packets would leave it waiting for minutes).

    Raises:
        OSError: cannot connect (refused, unreachable, ``TimeoutError``
            after ``connect_timeout`` ...).
        HandshakeError: the server refused us (wrong token, version) or
            did not answer within ``handshake_timeout`` seconds.
    """
    _check_token(token)
    with trio.move_on_after(connect_timeout) as scope:
        stream = await trio.open_tcp_stream(host, port)
    if scope.cancelled_caught:
        raise TimeoutError(f"connecting to {host}:{port} took longer than {connect_timeout:g} s")
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

