"""How a daemon moves core messages: routing, sending, worker output.

Part of ``Daemon`` (see daemon.py: the class is assembled from one mixin per
seam, all sharing the state ``Daemon.__init__`` sets up, on one trio
thread, so no locks).  This one is the daemon's switchboard:

* ``route`` is ``MachineHost``'s exit for every message to an address not in
  this process: a client (driver or worker) of this node, another node
  (directly if a channel exists, else through the head), a GCS replica
  (hosted by a node daemon the head knows of, else the head daemon's), or
  the head (held while a recovering head waits for its replicas);
* ``_send`` never blocks the machines: a frame goes in the channel's queue,
  and the batch's channels are flushed once (``_flush_dirty``) after the
  host pumps; a peer that reads nothing gets a task of its own that waits;
* ``forward_output`` carries worker prints and cluster warnings to the
  job's drivers, wherever in the cluster they are connected.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from ..core.messages import Log, Message, ObjectsReady
from . import protocol as P
from .wire import Channel, ConnectionClosed

logger = logging.getLogger("penumbra.daemon")  # (one logger for the whole daemon: its log reads as one)


class DaemonRouting:
    """(``Daemon``'s) routing of core messages and output; see the module docstring."""

    # ================================================================== routing
    def route(self, to: str, msg: Message, src: str) -> None:
        if self.replicas_paused and src in self.hosted_replicas:
            return  # (no head of their cluster to talk to: see "A head of another cluster")
        ch = self.clients.get(to)
        if ch is not None:
            self._to_client(ch, to, msg)
            return
        if to.startswith("node:"):
            # direct if we have a channel to that node, else through the head
            ch = self.node_channels.get(to) or self.peer_channels.get(to) or self.head_channel
        elif to.startswith("gcs:"):
            # a replica hosted by a node daemon (the head knows which), else
            # the head daemon's
            nid = self.replica_routes.get(to)
            ch = self.node_channels.get(nid) if nid is not None else self.head_channel
        elif to == "head":
            if self._head_backlog is not None:
                self._head_backlog.append(P.Deliver(to, msg, None, src))  # the head is being recovered
                return
            ch = self.head_channel
        else:
            ch = None
        if ch is None:
            logger.debug("no route to %s for %s from %s; dropped", to, type(msg).__name__, src)
            return
        self._send(ch, P.Deliver(to, msg, None, src))

    def _send(self, ch: Channel, item: Any) -> None:
        try:
            # Inside a pump, ``_flush_dirty`` writes the channel once the
            # batch is handled: waking its flusher task too would cost a
            # task switch per frame for a flusher that finds nothing to do.
            ch.send_nowait(item, defer_flush=self.host._pumping)
            self._dirty.add(ch)
        except trio.WouldBlock:
            # the peer is not reading: wait for room in a task of its own
            self.nursery.start_soon(self._send_later, ch, item)
        except (ConnectionClosed, trio.ClosedResourceError) as e:
            logger.debug("send to %s failed: %s", ch.peer_name, e)

    async def _send_later(self, ch: Channel, item: Any) -> None:
        try:
            await ch.send(item)
        except (ConnectionClosed, trio.ClosedResourceError) as e:
            logger.debug("send to %s failed: %s", ch.peer_name, e)

    def _flush_dirty(self) -> None:
        """After a batch of events: put every queued reply on the wire now."""
        dirty, self._dirty = self._dirty, set()
        for ch in dirty:
            try:
                ch.flush_nowait()
            except ConnectionClosed:
                pass

    def _to_client(self, ch: Channel, to: str, msg: Message) -> None:
        atts = None
        if type(msg) is ObjectsReady:
            atts = {}
            for oid, info in msg.objects:
                if info.error is not None:
                    atts[oid] = ("e", info.error)
                else:
                    a = self.objects.attachment(oid)
                    if a is not None:
                        atts[oid] = a
        self._send(ch, P.Deliver(to, msg, atts))

    def deliver_local(self, d: P.Deliver) -> None:
        # (called from connection loops, which pump at the end of each batch)
        if d.to in self.host.machines:
            self.host.post(d.to, d.msg)
        else:
            self.route(d.to, d.msg, d.src)

    # ================================================================== logs
    def _on_log(self, src: str, cmd: Log) -> None:
        level = logging.WARNING if cmd.level == "warning" else logging.INFO
        logger.log(level, "%s: %s", src, cmd.text)
        self.forward_output(P.ClusterLog(cmd.level, cmd.text), cmd.job_id)

    def forward_output(self, item: Any, job_id: int | None, from_peer: bool = False) -> None:
        """Hand worker output or a cluster warning to the job's drivers,
        wherever they are connected."""
        sent = False
        for cid, ch in list(self.clients.items()):
            job = self.client_jobs.get(cid)
            if job is not None and (job_id is None or job == job_id):
                self._send(ch, item)
                sent = True
        if sent or from_peer:
            return
        wrapped = ("output", job_id, item)
        if self.cfg.head:
            for ch in list(self.node_channels.values()):
                self._send(ch, wrapped)
        elif self.head_channel is not None:
            self._send(self.head_channel, wrapped)
