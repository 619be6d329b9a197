"""Collecting every node's timeline from a real cluster.

Each node daemon keeps the runs of its node's workers (``core.timeline``)
and answers a ``TimelineRequest``.  The collector -- a driver's
``penumbra.timeline()``, or ``penumbra timeline --address`` -- asks one
daemon where every node daemon listens (``AddressesRequest``), then asks
each of them, at once, over the cluster's token-authenticated TCP.  Each
answer carries the node's clock reading against ``time.time()``, so the
runs of all nodes land on one wall-clock axis (as far as the hosts' clocks
agree).

A node that does not answer within the timeout is left out, with its id in
``missing``: a timeline of the nodes that answered is more use than none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import trio

from ..core.timeline import NodeRuns
from . import protocol as P
from .wire import ConnectionClosed, HandshakeError, connect_tcp

__all__ = ["Collected", "collect", "fetch_timelines"]


@dataclass
class Collected:
    nodes: list[NodeRuns] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)  # node id -> why it gave nothing


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"a daemon's address must be HOST:PORT, got {address!r}")
    return host or "127.0.0.1", int(port)


async def _ask(address: str, token: str, request, want: type, timeout: float):
    host, port = _split(address)
    name = f"cli:{os.getpid()}"
    with trio.fail_after(timeout):
        ch = await connect_tcp(host, port, token, "cli", name)
        try:
            await ch.send(P.ClientHello(name, os.getpid(), False, 0))
            await ch.receive()  # the welcome
            await ch.send(request)
            while True:
                reply = await ch.receive()
                if type(reply) is want:
                    return reply
        finally:
            await ch.aclose()


async def fetch_timelines(address: str, token: str, timeout: float = 15.0) -> Collected:
    """Every node's runs, from the cluster whose daemon listens at ``address``.

    Raises:
        OSError, HandshakeError, trio.TooSlowError: the daemon at ``address``
            cannot be reached (or refuses the token).
    """
    table = await _ask(address, token, P.AddressesRequest(), P.PeerTable, timeout)
    out = Collected()
    replies: dict[str, P.TimelineReply] = {}

    async def one(node_id: str, where: str) -> None:
        try:
            replies[node_id] = await _ask(where, token, P.TimelineRequest(), P.TimelineReply, timeout)
        except (OSError, ConnectionClosed, HandshakeError, trio.TooSlowError, ValueError) as e:
            out.missing[node_id] = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__

    async with trio.open_nursery() as nursery:
        for node_id, where in sorted(table.peers.items()):
            nursery.start_soon(one, node_id, where)
    for node_id in sorted(replies):
        r = replies[node_id]
        out.nodes.append(NodeRuns(r.node_id, list(r.runs), r.wall - r.clock, r.recorded, r.limit))
    return out


def collect(address: str, token: str, timeout: float = 15.0) -> Collected:
    """``fetch_timelines`` from a thread with no trio loop (the CLI)."""
    return trio.run(fetch_timelines, address, token, timeout)
