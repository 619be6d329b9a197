"""GCS replicas on node daemons, and the head's view of its nodes' links.

Part of ``Daemon`` (see daemon.py, "GCS replicas on nodes").  On the node
side: host one replica of each shard (``_host_replicas``), and put back in
its chain a replica the chain master cut (``_watch_replicas``).  On the head
side: which connecting node to ask to host replicas (``_ask_to_host``),
where each node-hosted replica is (``_offered`` fills ``replica_routes``,
which ``route`` reads), and what ``penumbra status`` shows of them
(``_replica_table``) and of each node's link (``_links``).
"""

from __future__ import annotations

import logging

import trio

from ..core.gcs import GcsReplica
from . import protocol as P

logger = logging.getLogger("penumbra.daemon")  # (one logger for the whole daemon: its log reads as one)


class DaemonReplicas:
    """(``Daemon``'s) GCS replicas hosted on nodes; see the module docstring."""

    # ---------------------------------------------------------------- GCS replicas
    def _gcs_shards(self) -> int:
        """How many GCS shards this cluster has (head role)."""
        head = self.host.machines.get("head")
        if head is not None:
            return len(head.chain.configs())
        return self.layout.gcs_shards if self.layout is not None else self.cfg.gcs_shards

    def _ask_to_host(self, nid: str, hello: P.NodeHello) -> bool:
        """(head role, ``--gcs-replicas-on-nodes K``) Whether to ask the node
        that just connected to host replicas: while fewer than K connected
        node daemons host them (or were asked to), so a replica host that
        is lost is replaced by the next node to join."""
        k = self.cfg.replicas_on_nodes
        if not k or hello.replicas:
            return False
        hosts = {n for n in self.replica_routes.values() if n in self.node_channels}
        hosts |= {n for n in self._asked_to_host if n in self.node_channels and n != nid}
        if len(hosts) >= k:
            return False
        self._asked_to_host.add(nid)
        return True

    def _replica_tag(self) -> str:
        """What names this daemon's replicas: its first node id without the
        ``node:`` prefix (it outlives rejoins, which change the node id)."""
        base = self.base_node_id
        return base[len("node:"):] if base.startswith("node:") else base

    def _host_replicas(self, shards: int, cluster: str) -> None:
        """Host one replica of each of the cluster's ``shards`` (node role,
        ``--gcs-replica``).  Each joins its chain as a restarted replica
        does (core/gcs.py, "Joining"): ``ReplicaJoin`` to the chain master,
        a snapshot from the tail, ``ReplicaReady``; the master appends it as
        the new tail, so from then on no write is acknowledged before it
        holds it."""
        tag = self._replica_tag()
        names = tuple(f"gcs:{s}:{tag}" for s in range(shards))
        self.hosted_replicas = names
        self.replica_cluster = cluster
        # the head must know the route before their first message asks for an answer
        self._send(self.head_channel, P.ReplicasHosted(self.node_id, names, cluster))
        timing = self.layout.gcs_timing
        self.host.add(*((r, GcsReplica(r, s, "head", timing, joining=True)) for s, r in enumerate(names)))
        logger.info("hosting GCS replicas %s (joining their chains)", ", ".join(names))
        if not self.cfg.gcs_replica:  # (asked by the head: ``run`` did not start the watch)
            self.nursery.start_soon(self._watch_replicas)

    async def _watch_replicas(self) -> None:
        """Put back in its chain a replica the chain master cut while it
        lived (its heartbeats were lost: a partition, a head that was down):
        a cut replica stays out for good, so it is replaced by an empty one
        that joins again and copies the tail's state (as a restarted replica
        would).  A replica cut out is no longer a member: nothing
        acknowledged depends on it."""
        while True:
            await trio.sleep(1.0)
            if self.head_channel is None or self.replicas_paused:
                continue  # no master (of their cluster) to join: wait for the head
            for s, r in enumerate(self.hosted_replicas):
                rep = self.host.machines.get(r)
                if rep is None or rep.joining or rep.awaiting_append or rep.active or rep.config is None:
                    continue
                logger.warning("GCS replica %s was cut out of its chain (epoch %d); it joins again", r,
                               rep.config.epoch)
                self.host.remove(r)
                self.host.add((r, GcsReplica(r, s, "head", self.layout.gcs_timing, joining=True)))
                self.host.pump()

    def _offered(self, nid: str, replicas: tuple[str, ...], cluster: str) -> None:
        """(head role) Node ``nid`` hosts GCS ``replicas`` of ``cluster``:
        route to them if they are this cluster's (or, while a recovering
        head waits, may become so), else keep them out (the node paused
        them when it learnt our id) and say so loudly."""
        self.node_clusters[nid] = cluster
        if self._head_backlog is None and cluster != self.cluster_id:
            self.earlier[nid] = cluster
            logger.error(
                "node %s (%s) holds GCS replicas %s of another cluster (id %s), not of this one (id %s): "
                "this head was started fresh (without --recover) at an address where a cluster lived. They "
                "are kept out of this cluster. To recover that cluster instead, stop this head and run "
                "'penumbra start --head --recover %s' at this address", nid, self.peers.get(nid, "?"),
                ", ".join(replicas), cluster or "?", self.cluster_id, self.peers.get(nid, "NODE:PORT"))
            return
        for r in replicas:
            self.replica_routes[r] = nid
        logger.info("node %s hosts GCS replicas %s", nid, ", ".join(replicas))

    def _replica_table(self) -> dict[str, str]:
        """(head role) Replica address -> host:port of the daemon hosting it."""
        table = {}
        for addr, m in self.host.machines.items():
            if isinstance(m, GcsReplica):
                table[addr] = self.address
        for r, nid in self.replica_routes.items():
            table[r] = self.peers.get(nid, nid)
        return table

    def _links(self) -> dict[str, str]:
        """(head role) How each node's link to the head is doing, as the
        head sees it: the daemon's connection, and the heartbeats its
        monitor missed in a row (``core/head.py``, "The liveness rule")."""
        head = self.host.machines.get("head")
        misses = getattr(head, "misses", {})
        limit = head.config.miss_limit if head is not None else 0
        out = {}
        for nid in set(self.peers) | set(misses) | {self.node_id}:
            if nid == self.node_id:
                out[nid] = "local"
                continue
            connected = nid in self.node_channels
            n = misses.get(nid)
            if not connected:
                out[nid] = "disconnected"
            elif n:
                out[nid] = f"missed {n}/{limit}"
            else:
                out[nid] = "ok"
        return out
