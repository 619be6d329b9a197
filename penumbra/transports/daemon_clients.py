"""A daemon's drivers and command-line clients.

Part of ``Daemon`` (see daemon.py).  A driver (``init()``, on this host over
the Unix socket or from another over TCP) or a ``penumbra`` command connects
with a ``ClientHello`` and is registered with the node machine as a client
of its job (``serve_driver``).  Besides core messages it may ask for the
cluster's addresses (``penumbra status``: ``PeerTable``), the node's
timeline (``penumbra.timeline()``), or the cluster's stop (``penumbra
stop``).  Objects a client puts inline come with the message that puts them
(``_from_client``).
"""

from __future__ import annotations

import logging
import os
import time

import trio

import msgspec

from ..core.messages import ClientDisconnected, PutObject, RegisterClient
from ..core.msg_direct import DirectCallsRan, DirectCallsRecorded
from . import protocol as P
from .wire import Channel, ConnectionClosed

logger = logging.getLogger("penumbra.daemon")  # (one logger for the whole daemon: its log reads as one)


class DaemonClients:
    """(``Daemon``'s) driver and CLI connections; see the module docstring."""

    # ---------------------------------------------------------------- clients
    def _from_client(self, cid: str, d: P.Deliver) -> None:
        msg = d.msg
        t = type(msg)
        if t is PutObject and d.attachments:
            att = d.attachments.get(msg.object_id)
            if att is not None and att[0] == "i":
                self.objects.put_inline(msg.object_id, att[1])
        elif t is DirectCallsRan:
            d = P.Deliver(d.to, self._direct_ran(msg), d.attachments, d.src)
        elif t is DirectCallsRecorded:  # (a caller's results: their inline data goes into the store here)
            for e in msg.entries:
                for o in e.outputs:
                    if o.data is not None:
                        self.objects.put_inline(o.object_id, o.data)
        self.deliver_local(d)

    def _direct_ran(self, msg: DirectCallsRan) -> DirectCallsRan:
        """An actor worker's report of direct calls (transports/actor_server.py):
        their small outputs go into the store here, as a routed call's do
        (``Ran``), and their spans move from the worker's clock
        (``time.perf_counter``) to the node's (trio's), as ``_span`` does."""
        shift = trio.current_time() - time.perf_counter()
        entries = []
        for e in msg.entries:
            for o in e.outputs:
                if o.data is not None:
                    self.objects.put_inline(o.object_id, o.data)
            if e.span is not None:
                e = msgspec.structs.replace(e, span=(e.span[0] + shift, e.span[1] + shift))
            entries.append(e)
        return msgspec.structs.replace(msg, entries=tuple(entries))

    async def serve_driver(self, ch: Channel, hello: P.ClientHello) -> None:
        cid = hello.client_id
        if cid in self.clients:
            cid = f"{cid}.{os.urandom(3).hex()}"
        self.clients[cid] = ch
        self.client_jobs[cid] = hello.job_id
        self._send(ch, P.ClientWelcome(self.node_id, self.cfg.session, self.cfg.shm_root, hello.job_id, cid, self.address))
        node = self.node_id  # (the incarnation it registered with, see ``_rejoin``)
        self.host.deliver(node, RegisterClient(client=cid, job_id=hello.job_id, is_driver=hello.is_driver))
        try:
            async for item in ch:
                t = type(item)
                if t is P.Deliver:
                    self._from_client(cid, item)
                elif t is P.ClientHello:  # job id learned after connecting
                    self.client_jobs[cid] = item.job_id
                    self.host.deliver(node, RegisterClient(client=cid, job_id=item.job_id, is_driver=item.is_driver))
                elif t is P.StopCluster:  # penumbra stop (the head's ``run`` tells its nodes as it stops)
                    self.request_stop()
                elif t is P.AddressesRequest:
                    if self.cfg.head:
                        head = self.host.machines.get("head")
                        chains = head.chain.configs() if head is not None else ()
                        self._send(ch, P.PeerTable(self._addresses(), self.node_id, self._replica_table(), chains,
                                                   self._links(), self.cluster_id, dict(self.earlier)))
                    else:
                        self._send(ch, P.PeerTable(self._addresses(), self.head_node or self.node_id,
                                                   {r: self.address for r in self.hosted_replicas},
                                                   cluster=self.replica_cluster))
                elif t is P.TimelineRequest:
                    self._send(ch, self._timeline())
                if not ch.buffered:
                    self.host.pump()
        except ConnectionClosed:
            pass
        finally:
            if self.clients.get(cid) is ch:
                self.clients.pop(cid, None)
                self.client_jobs.pop(cid, None)
            if not self.stopping:
                self.host.deliver(node, ClientDisconnected(client=cid))

    def _timeline(self) -> P.TimelineReply:
        """What ran on this node's workers (``core.timeline``), with the
        reading of its clock against the wall clock."""
        node = self.host.machines.get(self.node_id)
        tl = getattr(node, "timeline", None)
        runs = tuple(tl.runs) if tl is not None else ()
        return P.TimelineReply(self.node_id, runs, trio.current_time(), time.time(),
                               tl.recorded if tl is not None else 0, tl.limit if tl is not None else 0)

    def _addresses(self) -> dict[str, str]:
        """Node id -> host:port of every node daemon this one knows of."""
        table = dict(self.peers)
        table[self.node_id] = self.address
        if not self.cfg.head and self.head_node:
            table.setdefault(self.head_node, self.cfg.head_address)
        return table
