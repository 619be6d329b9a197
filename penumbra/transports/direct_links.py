"""A caller's kept connections to actor workers (direct actor calls).

A process that calls actors directly (core/actor_caller.py) holds one
connection per actor worker it talks to, opened on first use and kept
(``Link``).  An *endpoint* is the string an actor's worker publishes
(``ActorEndpoint``; see ``endpoint_of``): its TCP ``host:port``, its Unix
socket path (empty when the session directory's path is too long for one)
and its node.  A caller connected to that same node (so on the worker's
host) connects over the Unix socket; any other over TCP.  Both are
authenticated with the cluster token by the wire hello, like every other
connection of the cluster.

Sending.  ``Link.send`` may be called from any thread (holding the
client's machine lock, so messages leave in the machine's order).  Once the
connection is open, a user's thread writes its call to the socket itself
(``direct_send.DirectSender``: no hop to the trio thread for a lone
message).  Until then messages wait in the link and go out, in order, as
soon as it connects (the connect runs on the trio thread): any number of
them (what the channel's outbox does not take waits in the ``DirectSender``).

Receiving.  Each open link has a receive loop on the trio thread, which
hands every message to ``on_message`` and, when the connection ends or
cannot be made, calls ``on_lost(endpoint, opened)`` once (``opened``
False: it could not be made, so nothing sent on it left this process).
That call is made holding the lock, in the same hold as the link is
dropped: a message sent after it goes to a new link, and the caller's
machine knows exactly which calls may have left (core/actor_caller.py:
what never left may take the routed path, what may have left may not).

Connecting is bounded: ``CONNECT_TIMEOUT`` for TCP (a host that drops
packets), the wire's hello timeout for the hello.
"""

from __future__ import annotations

import logging
import os
import select
from typing import Any, Callable

from .bridge import TrioThread
from .direct_send import DirectSender, IdleFlush
from .wire import ConnectionClosed, connect_tcp, connect_unix

__all__ = ["Link", "Links", "endpoint_of", "parse_endpoint"]

logger = logging.getLogger("penumbra")

_NEW, _CONNECTING, _OPEN, _LOST = "new", "connecting", "open", "lost"

#: seconds a TCP connect to an actor worker may take (on a LAN: well under
#: one); a failed one counts towards giving the direct path up
CONNECT_TIMEOUT = 3.0


def endpoint_of(host: str, port: int, unix_path: str, node: str) -> str:
    """The endpoint string of a worker of node ``node`` listening on TCP
    ``host:port`` and on the Unix socket ``unix_path`` ("": none)."""
    return f"{host}:{port}|{unix_path}|{node}"


def parse_endpoint(endpoint: str) -> tuple[str, int, str, str]:
    """``(host, port, unix_path, node)`` of an endpoint string.

    Raises:
        ValueError: not an endpoint made by ``endpoint_of``.
    """
    parts = endpoint.split("|")
    host, _, port = parts[0].rpartition(":")
    if len(parts) != 3 or not host or not port.isdigit():
        raise ValueError(f"not an actor endpoint: {endpoint!r} (expected 'host:port|/unix/path|node')")
    return host, int(port), parts[1], parts[2]


def _gone(e: BaseException) -> bool:  # (kept for tests and logs)
    """Whether a failed connect says the worker is gone (nothing listens
    there any more: its actor died or moved), not that it is unreachable."""
    if isinstance(e, (ConnectionRefusedError, FileNotFoundError)):
        return True
    cause = e.__cause__
    return isinstance(cause, BaseExceptionGroup) and all(_gone(x) for x in cause.exceptions)


class Link:
    """One kept connection to an actor worker's endpoint."""

    __slots__ = ("endpoint", "state", "channel", "sender", "waiting", "links")

    def __init__(self, links: "Links", endpoint: str) -> None:
        self.links = links
        self.endpoint = endpoint
        self.state = _NEW
        self.channel = None
        self.sender: DirectSender | None = None
        self.waiting: list[Any] = []  # sent before the connection was open

    def send(self, msg: Any) -> None:
        """Send ``msg`` (any thread, under the links' lock)."""
        if self.state is _OPEN:
            try:
                # (a lone call is written here; a burst goes out as one
                # frame from the loop, see ``DirectSender.lone``)
                self.sender.send(msg, type(msg))
            except RuntimeError:  # the loop stopped: the runtime is shutting down
                pass
            return
        if self.state is _LOST:
            return  # (the caller machine was told: it resends to the next endpoint)
        self.waiting.append(msg)
        if self.state is _NEW:
            self.state = _CONNECTING
            try:
                self.links.bridge.start_soon(self._run)
            except RuntimeError:
                self.state = _LOST

    async def _run(self) -> None:
        links = self.links
        try:
            host, port, unix, node = parse_endpoint(self.endpoint)
            if unix and node == links.node_id and os.path.exists(unix):
                ch = await connect_unix(unix, links.token, "caller", links.name)
            else:
                ch = await connect_tcp(host, port, links.token, "caller", links.name, connect_timeout=CONNECT_TIMEOUT)
        except (OSError, ConnectionClosed, ValueError) as e:
            # (the caller's machine counts these, and says once if it gives
            # the direct path up)
            logger.debug("cannot connect to the actor worker at %s (%s: %s; %s)", self.endpoint, type(e).__name__, e,
                         "gone" if _gone(e) else "unreachable")
            self._lost(opened=False)
            return
        with links.lock:
            if self.state is not _CONNECTING:  # closed meanwhile
                await_close = True
            else:
                await_close = False
                self.channel = ch
                self.sender = DirectSender(ch, links.bridge, links.idle_flush)
                # (any number: what the outbox does not take waits in the
                # sender, fed to it while the replies are read below)
                for m in self.waiting:
                    self.sender.send_on_loop(m)
                self.waiting = []
                self.state = _OPEN
        if await_close:
            await ch.aclose()
            return
        self.sender.flush_on_loop()
        try:
            async for item in ch:
                links.on_message(self, item)
        except ConnectionClosed:
            pass
        except Exception:
            logger.exception("the link to actor endpoint %s failed; closing it", self.endpoint)
        finally:
            self._lost(opened=True)
            try:
                await ch.aclose(flush_timeout=0)
            except Exception:  # noqa: BLE001 - gone anyway
                pass

    def unread(self) -> bool:
        """Whether the worker sent something this link has not handed on
        yet (in the socket, or received and not yet taken)."""
        ch = self.channel
        if self.state is not _OPEN or ch is None or ch.closed:
            return False
        if ch.buffered or ch._end > ch._start:
            return True
        sock = ch._sock
        if sock is None:
            return False
        try:
            return bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):
            return False

    def _lost(self, opened: bool) -> None:
        links = self.links
        with links.lock:
            if self.state is _LOST:
                return
            self.state = _LOST
            self.waiting = []
            if self.sender is not None:
                self.sender.close()
            if links.links.get(self.endpoint) is self:
                del links.links[self.endpoint]
                # (in the same hold: nothing is sent to the endpoint between)
                links.on_lost(self.endpoint, opened)


class Links:
    """A client's links to actor endpoints (see the module docstring).

    Args:
        bridge: the client's trio thread.
        lock: the client's machine lock (held by whoever sends).
        token, name: the cluster token and this client's name, for the hello.
        on_message: ``(link, message)`` for each message a worker sends
            (called on the trio thread, without the lock).
        on_lost: ``(endpoint, opened)`` once a link's connection ended
            (``opened``) or could not be made (on the trio thread, holding
            the lock: it must be reentrant).
    """

    def __init__(self, bridge: TrioThread, lock, token: str, name: str,
                 on_message: Callable[[Link, Any], None], on_lost: Callable[[str, bool], None],
                 idle_flush: IdleFlush | None = None, node_id: str = "") -> None:
        self.bridge = bridge
        self.node_id = node_id  # this client's node: its workers are on this host
        self.idle_flush = idle_flush
        self.lock = lock
        self.token = token
        self.name = name
        self.on_message = on_message
        self.on_lost = on_lost
        self.links: dict[str, Link] = {}

    def send(self, endpoint: str, msg: Any) -> None:
        """Send ``msg`` to ``endpoint``, opening the link if needed (any
        thread, holding ``lock``)."""
        link = self.links.get(endpoint)
        if link is None:
            link = self.links[endpoint] = Link(self, endpoint)
        link.send(msg)

    def close(self) -> None:
        """Stop direct writes on every link (the runtime shuts down; the
        trio thread's stop closes the sockets)."""
        with self.lock:
            for link in self.links.values():
                if link.sender is not None:
                    link.sender.close()
                link.state = _LOST
            self.links.clear()
