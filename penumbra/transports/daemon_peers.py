"""Daemon-to-daemon connections: the head's nodes, peers, object transfers.

Part of ``Daemon`` (see daemon.py).  A connection from another daemon is a
node joining (at the head: it is recorded, told ``HeadInfo`` and every
node learns the new ``PeerTable``) or a peer opening a direct link (for
transfers and direct messages).  ``_from_peer`` handles what comes on any
of them, the head's connection included.  ``fetch`` carries out the core's
``Fetch``: ask the daemon holding the object (``FetchRequest``), write the
reply into the store, and tell the core ``FetchCompleted`` or
``FetchFailed`` -- at once if the holder is declared dead meanwhile, so
the object is fetched elsewhere or rebuilt without waiting out the timeout.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import trio

from ..core.messages import Fetch, FetchCompleted, FetchFailed, NodeDied
from . import protocol as P
from .daemon_addresses import _as_seen
from .wire import Channel, ConnectionClosed, ProtocolError, connect_tcp

logger = logging.getLogger("penumbra.daemon")  # (one logger for the whole daemon: its log reads as one)


class DaemonPeers:
    """(``Daemon``'s) connections between daemons; see the module docstring."""

    # ---------------------------------------------------------------- peers
    async def serve_peer(self, ch: Channel, hello: P.NodeHello, incoming: bool) -> None:
        nid = hello.node_id
        if self.cfg.head and incoming:
            self.node_channels[nid] = ch
            self.peers[nid] = _as_seen(hello.address, ch.peer_address)
            if hello.replicas:
                self._offered(nid, hello.replicas, hello.cluster)
            self._send(ch, P.HeadInfo(self._gcs_shards(), self._ask_to_host(nid, hello), self.cluster_id,
                                      self._head_backlog is not None))
            self._broadcast_peers()
        else:
            self.peer_channels[nid] = ch
        try:
            async for item in ch:
                await self._from_peer(ch, item)
                if not ch.buffered:
                    self.host.pump()
        except ConnectionClosed as e:
            if self.cfg.head and incoming and not self.stopping:
                await self._dropping_node(ch, nid, e)
        except Exception as e:
            if not (self.cfg.head and incoming):
                raise  # (the listener logs it and closes the connection)
            logger.exception("handling node %s's messages failed", nid)
            await self._dropping_node(ch, nid, e)
        finally:
            if self.node_channels.get(nid) is ch:
                del self.node_channels[nid]
                self.peers.pop(nid, None)
                for r in [r for r, n in self.replica_routes.items() if n == nid]:
                    del self.replica_routes[r]  # (they come back with the node's next connection)
                self._asked_to_host.discard(nid)
                self.node_clusters.pop(nid, None)
                self.earlier.pop(nid, None)
                self._broadcast_peers()
                if not self.stopping and "head" in self.host.machines:
                    # the daemon is gone: tell the monitor now rather than
                    # waiting for heartbeats to time out
                    self.host.deliver("head", NodeDied(node_id=nid, stimulus_id=f"disconnect:{nid}"))
            if self.peer_channels.get(nid) is ch:
                del self.peer_channels[nid]

    async def _dropping_node(self, ch: Channel, nid: str, exc: BaseException) -> None:
        """(head role) The connection of node ``nid`` ends for ``exc``, not
        because the node closed it: say why in this log and, where the way
        to the node still works, to the node (``Closing``), whose log then
        names the cause.  (A head that closed a node's connection in
        silence once made a node rejoin 20,694 times with nobody able to
        tell why: a message the head could not decode.)"""
        if isinstance(exc, ProtocolError):
            why = f"the head could not read what this node sent: {exc.reason}"
            told = await ch.send_last_words(P.Closing(why))
        elif isinstance(exc, ConnectionClosed):
            why, told = exc.reason, False  # (reset or cut: nothing gets through any more)
        else:
            why = f"the head daemon failed handling this node's messages ({type(exc).__name__}: {exc})"
            told = False
            with trio.move_on_after(1):
                try:
                    await ch.send(P.Closing(why))
                    told = True
                except (ConnectionClosed, trio.ClosedResourceError):
                    pass
        what = "lost" if type(exc) is ConnectionClosed else "dropping"
        logger.warning("%s the connection of node %s (%s): %s%s", what, nid, ch.peer_address, why,
                       "" if told or what == "lost" else " (the node could not be told)")

    def _broadcast_peers(self) -> None:
        table = P.PeerTable(dict(self.peers), self.node_id)
        for ch in list(self.node_channels.values()):
            self._send(ch, table)

    async def _from_peer(self, ch: Channel, item: Any) -> None:
        t = type(item)
        if t is P.Deliver:
            self.deliver_local(item)
        elif t is P.FetchRequest:
            data = self.objects.read_bytes(item.object_id)
            if data is not None and not isinstance(data, bytes):
                data = bytes(data)  # a shared-memory view: copy out for the wire
            if data is None and self.spill.has(item.object_id):
                # spilled here: served from the file, no restore needed
                with contextlib.suppress(OSError):
                    data = bytes(await trio.to_thread.run_sync(self.spill.read, item.object_id, limiter=self.disk_read))
            self._send(ch, P.FetchReply(item.object_id, item.req_id, data, "" if data is not None else "not here"))
        elif t is P.FetchReply:
            w = self.fetch_waiters.pop(item.req_id, None)
            if w is not None:
                w.send_nowait(item)
        elif t is P.PeerTable:
            self.peers = {k: v for k, v in item.peers.items() if k != self.node_id}
            self.head_node = item.head_node
        elif t is P.ReplicasHosted and self.cfg.head:
            self._asked_to_host.discard(item.node_id)
            self._offered(item.node_id, item.replicas, item.cluster)
        elif t is P.HeadInfo and ch is self.head_channel:
            self._on_head_info(item)
        elif t is P.Closing and ch is self.head_channel:
            self.head_closing = item.reason  # (why the head is about to close: the rejoin's log names it)
        elif t is P.StopCluster and ch is self.head_channel:
            logger.info("the head asked this node to stop (penumbra stop)")
            self.stopping = True  # (the head's connection closing next is no reason to rejoin)
            self.request_stop()
        elif t is tuple and item and item[0] == "output":
            self.forward_output(item[2], item[1], from_peer=not self.cfg.head)
            if self.cfg.head:
                for other in list(self.node_channels.values()):
                    if other is not ch:
                        self._send(other, item)

    async def _peer_channel(self, nid: str) -> Channel | None:
        ch = self.peer_channels.get(nid) or self.node_channels.get(nid)
        if ch is not None:
            return ch
        if nid == self.head_node:
            return self.head_channel
        addr = self.peers.get(nid)
        if addr is None:
            return None
        host, port = addr.rsplit(":", 1)
        ch = await connect_tcp(host, int(port), self.cfg.token, "node", self.node_id)
        ch.send_nowait(P.NodeHello(self.node_id, self.address))
        self.nursery.start_soon(self.serve_peer, ch, P.NodeHello(nid, addr), False)
        return ch

    def _known_dead(self, nid: str) -> bool:
        """Whether this node's core has learnt that node ``nid`` is dead (a
        read of its nodes table; the core sends no command for it)."""
        node = self.host.machines.get(self.node_id)
        return getattr(node, "nodes", {}).get(nid) is False

    async def fetch(self, c: Fetch) -> None:
        node = self.node_id
        oid = c.object_id
        if self.objects.has(oid):
            self.host.deliver(node, FetchCompleted(object_id=oid, size=c.size, stimulus_id=c.stimulus_id))
            return
        reason = ""
        try:
            with trio.fail_after(30.0 + c.size / 50e6):
                ch = await self._peer_channel(c.from_node)
                if ch is None:
                    raise ConnectionError(f"no connection to {c.from_node}")
                rid = self.next_fetch
                self.next_fetch += 1
                send, recv = trio.open_memory_channel(1)
                self.fetch_waiters[rid] = send
                self._send(ch, P.FetchRequest(oid, rid))
                while True:
                    with trio.move_on_after(self.cfg.heartbeat_interval):
                        reply = await recv.receive()
                        break
                    if self._known_dead(c.from_node):
                        # cut off (no reset: the reply may never come): give
                        # up now, so the object is fetched elsewhere or
                        # rebuilt, not after the whole timeout
                        self.fetch_waiters.pop(rid, None)
                        raise ConnectionError(f"{c.from_node} was declared dead during the transfer")
            if reply.data is None:
                reason = reply.error or "not there"
            else:
                data = reply.data
                if len(data) > (1 << 20):
                    size = await trio.to_thread.run_sync(self.objects.write_bytes, oid, data)
                else:
                    size = self.objects.write_bytes(oid, data)
                self.host.deliver(node, FetchCompleted(object_id=oid, size=size, stimulus_id=c.stimulus_id))
                return
        except trio.TooSlowError:
            reason = "timed out"
        except (OSError, ConnectionClosed, ConnectionError) as e:
            reason = str(e)
        except Exception as e:  # a store failure: report, never crash the daemon
            logger.exception("fetch of %s failed", oid)
            reason = f"{type(e).__name__}: {e}"
        self.host.deliver(node, FetchFailed(object_id=oid, from_node=c.from_node, reason=reason, stimulus_id=c.stimulus_id))
