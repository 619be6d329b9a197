"""The head daemon's start (fresh or recovering), cluster ids, orderly stop.

Part of ``Daemon`` (see daemon.py, "GCS replicas on nodes" and "A head of
another cluster").  A head started with ``--recover`` rebuilds the
cluster's control state from the GCS replicas of the node daemons that
reconnect to it (``_recover_head``; with ``--recover auto`` from whichever
do, else it starts a fresh cluster: ``_replica_hosts_or_none``,
``_start_fresh_head``), takes the recovered cluster's id and keeps out
replicas of any other (``_adopt_cluster``), and tells every node the id
(``_tell_cluster_id``).  On an orderly stop the head tells its nodes to
stop rather than rejoin (``_stop_nodes``).
"""

from __future__ import annotations

import logging
import random
import secrets

import trio

from ..core.gcs import GcsReplica
from ..core.head import HeadMachine
from ..core.layout import ClusterLayout
from . import protocol as P
from .daemon_addresses import _normal_address
from .daemon_config import AUTO
from .wire import ConnectionClosed

logger = logging.getLogger("penumbra.daemon")  # (one logger for the whole daemon: its log reads as one)


_AUTO_GRACE = 2.0  # s: after the first replica host reconnects, for the others of a restart to come too


class RecoveryError(RuntimeError):
    """A head started with ``--recover`` could not find the replicas."""


class DaemonHeadRole:
    """(``Daemon``'s) head role: start, recovery, cluster ids, stop; see the module docstring."""

    async def _stop_nodes(self, wait: float = 2.0) -> None:
        """(head role, an orderly stop) Tell every node daemon to stop, and
        wait (up to ``wait`` s) until each has closed its connection.

        A node that sees the head's connection close without a
        ``StopCluster`` before it takes the head for killed and rejoins: a
        plain node retries for 20 s, one hosting GCS replicas without limit
        (it may hold the only copies of acknowledged writes).  So the head
        lets the node close first -- its ``serve_peer`` keeps reading
        meanwhile -- rather than closing right after the send: that could
        drop the message still queued behind other traffic (a replica
        host's chain messages) and, with the node's own messages unread,
        reset the connection.  A node that does not answer within ``wait``
        is closed on (what is queued is written first)."""
        chans = list(self.node_channels.values())
        with trio.move_on_after(wait):
            for ch in chans:
                try:
                    await ch.send(P.StopCluster())
                except (ConnectionClosed, trio.ClosedResourceError):
                    pass
            while any(ch in self.node_channels.values() for ch in chans):
                await trio.sleep(0.02)
        with trio.move_on_after(1):
            for ch in chans:
                await ch.aclose()

    async def _recover_head(self, layout: ClusterLayout) -> None:
        """Start a head that rebuilds the cluster's control state from the
        GCS replicas that survived the old head (``--recover``).

        The design: this daemon listens at the old head's address (same host
        and port), so every node daemon, which retries the head address
        after losing it, reconnects here on its own, saying which replicas
        it hosts (``ReplicasHosted``).  We wait (up to ``recover_wait``)
        for the daemons named in ``recover_from`` to do so; then the head
        machine starts with ``HeadConfig.recover_from`` = their replicas: it
        asks them for their chains and rebuilds every role from the tables
        (core/head.py, "Recovery").  Messages for the head that arrive
        before it exists (a rejoining node's ``NodeJoin``) are held and
        handed to it then.  The replicas that lived in the old head's
        process are gone: this daemon starts empty ones under the same
        addresses, which join their chains again like restarted replicas
        (the master first cuts the dead members of those names).

        With ``--recover auto`` the daemons are the ones that reconnect
        holding replicas (``_replica_hosts_or_none``); if none does within
        ``recover_wait``, this head starts a fresh cluster instead.  The
        recovered cluster keeps its id (``_adopt_cluster``)."""
        import dataclasses

        cfg = self.cfg
        deadline = trio.current_time() + cfg.recover_wait
        if cfg.recover_from == [AUTO]:
            want = await self._replica_hosts_or_none(deadline)
            if want is None:
                logger.warning("no daemon holding GCS replicas reconnected within %g s (--recover auto): "
                               "starting a fresh cluster (id %s)", cfg.recover_wait, self.cluster_id)
                self._start_fresh_head(layout)
                return
        else:
            want = {_normal_address(a): a for a in cfg.recover_from}
        found: dict[str, tuple[str, ...]] = {}
        while True:
            by_address = {_normal_address(addr): nid for nid, addr in self.peers.items()}
            found = {}
            clusters: dict[str, str] = {}
            for key in want:
                nid = by_address.get(key)
                replicas = tuple(sorted(r for r, n in self.replica_routes.items() if n == nid)) if nid else ()
                if replicas:
                    found[key] = replicas
                    clusters[want[key]] = self.node_clusters.get(nid, "")
            if len(found) == len(want):
                break
            if trio.current_time() > deadline:
                missing = [want[k] for k in want if k not in found]
                known = ", ".join(f"{a} ({'hosts replicas' if any(n == nid for n in self.replica_routes.values()) else 'no replicas'})"
                                  for nid, a in self.peers.items()) or "none"
                raise RecoveryError(
                    f"cannot recover the cluster: no daemon hosting GCS replicas reconnected from "
                    f"{', '.join(missing)} within {cfg.recover_wait:g} s (daemons that reconnected: {known}). "
                    f"Give the address (host:port) of a surviving node started with --gcs-replica, as "
                    f"'penumbra status' listed it; this head must listen at the old head's address "
                    f"(same --host and --port) for the nodes to find it")
            await trio.sleep(0.05)
        if len(set(clusters.values())) > 1:
            raise RecoveryError(
                "cannot recover the cluster: the daemons named hold GCS replicas of different clusters ("
                + ", ".join(f"{a}: cluster {c or '?'}" for a, c in clusters.items())
                + "). Name the daemons of one cluster only (penumbra status on their nodes' logs says which)")
        self._adopt_cluster(next(iter(clusters.values())))
        replicas = tuple(r for key in want for r in found[key])
        shards = 1 + max(int(r.split(":")[1]) for r in replicas)
        if shards != layout.gcs_shards:
            layout = dataclasses.replace(layout, gcs_shards=shards)
            self.layout = layout
        head_config = dataclasses.replace(layout.head_config(), recover_from=replicas)
        logger.warning("recovering the cluster from GCS replicas %s", ", ".join(replicas))
        backlog, self._head_backlog = self._head_backlog, None
        self.host.add(("head", HeadMachine(head_config, random.Random(0))), *(
            (r, GcsReplica(r, chain.shard, "head", layout.gcs_timing, joining=True))
            for chain in layout.chains() for r in chain.replicas
        ))
        for d in backlog:
            self.host.post(d.to, d.msg)
        self.host.pump()
        self._tell_cluster_id()

    async def _replica_hosts_or_none(self, deadline: float) -> dict[str, str] | None:
        """(``--recover auto``) Wait until a node daemon holding GCS replicas
        reconnects (then a moment more, for the others of a restart), and
        return their addresses, as ``recover_from`` would name them; None if
        none came before ``deadline``.  Daemons holding replicas of
        different clusters (a fresh head ran here meanwhile) are an error:
        the operator names the ones to recover."""
        first = None
        while True:
            now = trio.current_time()
            hosts = {n for n in self.replica_routes.values() if n in self.peers}
            if hosts and first is None:
                first = now
            if first is not None and (now - first >= _AUTO_GRACE or now > deadline):
                by_cluster: dict[str, list[str]] = {}
                for nid in sorted(hosts):
                    by_cluster.setdefault(self.node_clusters.get(nid, ""), []).append(nid)
                if len(by_cluster) > 1:  # (which one is wanted is not ours to guess)
                    raise RecoveryError(
                        "cannot recover the cluster with --recover auto: the daemons that reconnected hold GCS "
                        "replicas of different clusters (" + "; ".join(
                            f"cluster {c or '?'}: " + ", ".join(self.peers[n] for n in ns)
                            for c, ns in by_cluster.items()) + "). Name the daemons of the cluster to recover "
                        "with --recover HOST:PORT")
                nids = by_cluster.popitem()[1]
                logger.warning("--recover auto: node daemons %s reconnected holding GCS replicas: recovering "
                               "their cluster", ", ".join(self.peers[n] for n in nids))
                return {_normal_address(self.peers[n]): self.peers[n] for n in nids}
            if now > deadline:
                return None
            await trio.sleep(0.05)

    def _start_fresh_head(self, layout: ClusterLayout) -> None:
        """(``--recover auto`` that found nothing to recover) Start the head
        of a new cluster, as ``penumbra start --head`` does, hand it what
        came for it meanwhile, and tell the connected nodes its id."""
        backlog, self._head_backlog = self._head_backlog, None
        self.cluster_id = secrets.token_hex(6)
        for nid, c in self.node_clusters.items():  # (came in the last moment: kept out, see ``_offered``)
            for r in [r for r, n in self.replica_routes.items() if n == nid]:
                del self.replica_routes[r]
            self.earlier[nid] = c
        self.host.add(("head", HeadMachine(layout.head_config(), random.Random(0))), *(
            (r, GcsReplica(r, chain.shard, "head", layout.gcs_timing, config=chain))
            for chain in layout.chains() for r in chain.replicas
        ))
        for d in backlog or ():
            self.host.post(d.to, d.msg)
        self.host.pump()
        self._tell_cluster_id()

    def _tell_cluster_id(self) -> None:
        """(a head that was waiting for replicas) Every connected node learns
        the cluster's id now: one holding replicas of another cluster pauses
        them, one asked to host (or started with --gcs-replica) hosts."""
        for nid, ch in list(self.node_channels.items()):
            hosted = tuple(r for r, n in self.replica_routes.items() if n == nid)
            self._send(ch, P.HeadInfo(self._gcs_shards(), self._ask_to_host(nid, P.NodeHello(nid, "", hosted)),
                                      self.cluster_id))

    def _adopt_cluster(self, cluster: str) -> None:
        """(a recovering head) Take the id of the cluster being recovered,
        and keep out the replicas of any other cluster that nodes offered
        while we waited."""
        self.cluster_id = cluster or secrets.token_hex(6)  # ("": replicas of a version before cluster ids)
        logger.warning("recovering cluster %s", self.cluster_id)
        for nid, c in self.node_clusters.items():
            if c != self.cluster_id:
                for r in [r for r, n in self.replica_routes.items() if n == nid]:
                    del self.replica_routes[r]
                self.earlier[nid] = c
                logger.error("node %s holds GCS replicas of another cluster (id %s), not of the one recovered "
                             "(id %s): they are kept out of it", nid, c or "?", self.cluster_id)
