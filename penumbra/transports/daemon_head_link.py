"""A node daemon's link to its head: connecting, fencing, rejoining.

Part of ``Daemon`` (see daemon.py).  A node daemon holds one connection to
the head daemon (``connect_head``).  Its node incarnation ends two ways:

* the head declares it dead (``StopNode``: ``_fenced``), since the cluster
  has already re-homed its work and the old incarnation must not carry on;
* the connection is lost (the head was killed, its host died, the network
  is cut): the head has declared the node dead already.

Either way the daemon drops the incarnation (workers, objects, drivers)
and comes back under a new node id (``_rejoin``), retrying the head's
address for ``_head_wait`` seconds (without limit for a node hosting GCS
replicas: they may hold the only copies of acknowledged writes).  An
incarnation that ended within seconds of joining makes the next wait first
(exponential backoff with jitter, logged once and then every minute with
the count: ``_incarnation_ended``, rejoin_backoff.py), so a head that keeps
dropping this node is not met with a tight loop of rejoins.  A head that
drops the connection says why first (``Closing``): the node logs it.  The
replicas it hosts are not part of the incarnation: they stay, paused until
the head it reaches says which cluster it is (``_on_head_info``; see "A
head of another cluster" in daemon.py).
"""

from __future__ import annotations

import logging
import math
import os
import signal

import trio

from ..core.node import NodeMachine
from . import protocol as P
from .daemon_config import _JOIN_TIMEOUT
from .wire import ConnectionClosed, HandshakeError, connect_tcp

logger = logging.getLogger("penumbra.daemon")  # (one logger for the whole daemon: its log reads as one)


class DaemonHeadLink:
    """(``Daemon``'s) node role: the connection to the head; see the module docstring."""

    def _fenced(self, reason: str) -> None:
        """The head declared this node dead (``StopNode``).

        The cluster has already re-homed its work (its tasks re-run elsewhere,
        its actors restart, its objects are rebuilt), so the old incarnation
        must not carry on: it would run things twice.  A node daemon drops it
        all -- workers killed, store emptied, its drivers disconnected -- and
        rejoins the head as a fresh node under a new node id (the core never
        reuses one).  The head daemon's own node is never declared dead by
        the monitor; if it is fenced anyway, the daemon stops."""
        if self.cfg.head or self.stopping:
            logger.error("node %s was declared dead by the head (%s); stopping", self.node_id, reason)
            self.request_stop()
            return
        if self._rejoining:
            return
        delay = self._incarnation_ended(
            logging.ERROR, "node %s was declared dead by the head (%s): its tasks re-run on other nodes. It "
            "drops its workers and objects and rejoins as a new node. (A healthy node is declared dead only "
            "when the head heard none of its heartbeats for node_timeout=%gs: this daemon was stopped or cut "
            "off that long; consider a longer --node-timeout.)", self.node_id, reason, self.cfg.node_timeout)
        self._rejoining = True
        self.nursery.start_soon(self._rejoin, "", delay)

    def _incarnation_ended(self, level: int, msg: str, *args) -> float:
        """This node's incarnation ended (fenced, or its head connection
        lost) for the reason ``msg % args`` says: log it after a long life,
        and at the first quick end of a streak with the wait; while the
        streak lasts, one line a minute with the count and the last reason
        instead.  Returns the seconds to wait before rejoining
        (rejoin_backoff.py: 0 after a long life)."""
        plan = self.rejoin_backoff.ended(trio.current_time())
        self._rejoin_quick = plan.quick
        b = self.rejoin_backoff
        if plan.quick == 0:
            logger.log(level, msg, *args)
        elif plan.quick == 1:
            logger.log(level, msg + " -- %.1fs after it joined: it waits %.1fs first (while incarnations keep "
                       "ending within %gs, the wait doubles up to %gs)", *args, plan.lived, plan.delay,
                       b.stable_after, b.cap)
        elif plan.warn:
            logger.warning(
                "node %s: %d incarnations in a row ended within %gs of joining; the last: %s. Rejoining with "
                "backoff, the next in %.1fs (up to %gs; this line repeats at most every %gs while it lasts)",
                self.base_node_id, plan.quick, b.stable_after, msg % args, plan.delay, b.cap, b.report_every)
        else:
            logger.debug(msg, *args)
        return plan.delay

    def _head_wait(self) -> float:
        """Seconds a node that lost its head retries the head's address."""
        if self.cfg.head_wait is not None:
            return self.cfg.head_wait
        # a node hosting GCS replicas holds acknowledged writes that may be
        # the only copies left (the head's host died): it waits for a head
        # to recover them (penumbra start --head --recover), however long
        return math.inf if self.cfg.gcs_replica or self.hosted_replicas else _JOIN_TIMEOUT

    async def _rejoin(self, why: str = "", delay: float = 0.0) -> None:
        """Come back as a fresh node (see ``_fenced``), after ``delay``
        seconds (the backoff of ``_incarnation_ended``).  The GCS replicas
        this daemon hosts are kept: they are chain members, not part of the
        node's incarnation, and may hold the only copies of acknowledged
        writes; they reconnect to whatever head answers at the head
        address (the same head, or one recovering the cluster from them)."""
        old = self.node_id
        try:
            self.host.remove(old)  # what still comes for it is dropped
            for w in list(self.workers.values()):
                w.dead = True
                if w.pid:
                    try:
                        os.kill(w.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            self.workers.clear()
            closing = P.Closing(why or f"its node {old} was declared dead by the head; it rejoins the cluster as a "
                                       f"new node")
            for ch in list(self.clients.values()):
                with trio.move_on_after(1):  # (a driver that reads nothing must not hold us up)
                    try:
                        await ch.send(closing)
                    except (ConnectionClosed, trio.ClosedResourceError):
                        pass
            for ch in list(self.clients.values()) + list(self.peer_channels.values()):
                await ch.aclose()  # its drivers' state was in the old incarnation
            self.clients.clear()
            self.client_jobs.clear()
            self.peer_channels.clear()
            self.objects.inline.clear()
            self.objects.errors.clear()
            for key in self.shm.object_ids(sealed_only=False):
                self.shm.delete(key)
            self.spill.cleanup()  # (the new incarnation's core knows none of them)
            self.incarnation += 1
            self.node_id = f"{self.base_node_id}.{self.incarnation}"
            ch, self.head_channel = self.head_channel, None
            self.replicas_paused = bool(self.hosted_replicas)  # (until the head says it is theirs)
            if ch is not None:
                await ch.aclose()
            if delay > 0:
                await trio.sleep(delay)  # (the old incarnation is gone meanwhile: nothing waits on it)
            deadline = trio.current_time() + self._head_wait()
            tries = 0
            while True:
                try:
                    await self.nursery.start(self.connect_head)
                    break
                except (OSError, ConnectionClosed, HandshakeError, trio.TooSlowError) as e:
                    if trio.current_time() > deadline:
                        raise
                    tries += 1
                    if tries == 1 or tries % 20 == 0:  # (every 10 s: a head may take long to come back)
                        logger.warning("cannot reach the head at %s yet (%s); retrying%s", self.cfg.head_address,
                                       e, " (this node hosts GCS replicas: it waits for a head to recover them)"
                                       if self.hosted_replicas else "")
                    await trio.sleep(0.5)
            self.host.add((self.node_id, NodeMachine(self.node_id, self.layout.node_config(self.layout.nodes[0]))))
            logger.log(logging.WARNING if self._rejoin_quick <= 1 else logging.DEBUG,
                       "node %s rejoined the cluster as %s", old, self.node_id)
        except Exception:
            logger.exception("node %s could not rejoin the cluster (its head stayed unreachable for %g s, "
                             "--head-wait); stopping", old, self._head_wait())
            self.request_stop()
        finally:
            self._rejoining = False

    def _on_head_info(self, info: P.HeadInfo) -> None:
        """(node role) The head says which cluster it is (on connection, and
        again once a recovering head knows): host replicas if asked, and
        let this node's replicas talk only to a head of their own cluster
        (see "A head of another cluster")."""
        if not self.hosted_replicas:
            if (self.cfg.gcs_replica or info.host_replicas) and not info.recovering:
                self._host_replicas(info.gcs_shards, info.cluster)
            return
        if not self.replica_cluster and info.cluster:
            self.replica_cluster = info.cluster  # (hosted while a recovering head did not know it yet)
        if info.recovering or info.cluster == self.replica_cluster:
            if self.replicas_paused:
                logger.info("GCS replicas %s go on in cluster %s", ", ".join(self.hosted_replicas),
                            self.replica_cluster or "(being recovered)")
            self.replicas_paused = False
            return
        self.replicas_paused = True
        logger.error(
            "the head at %s is a NEW cluster (id %s), not the one this node's GCS replicas %s belong to (id %s): "
            "it was started without --recover. The replicas are kept, paused, and stay out of the new cluster "
            "(they may hold the only copies of the earlier cluster's acknowledged writes); this node joins the "
            "new cluster as a plain node. To recover the earlier cluster instead, stop the new head and start "
            "'penumbra start --head --recover %s' at the same address; to drop the earlier state, restart "
            "this node daemon", self.cfg.head_address, info.cluster, ", ".join(self.hosted_replicas),
            self.replica_cluster, self.address)

    async def connect_head(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        host, port = self.cfg.head_address.rsplit(":", 1)
        with trio.fail_after(10):  # (a head host that is down does not refuse: it never answers)
            ch = await connect_tcp(host, int(port), self.cfg.token, "node", self.node_id)
        self.head_channel = ch
        self.head_closing = ""
        # (with the replicas it hosts: the head routes to them from now on)
        ch.send_nowait(P.NodeHello(self.node_id, self.listening, self.hosted_replicas, self.replica_cluster))
        self.rejoin_backoff.joined(trio.current_time())
        task_status.started()
        reason = "the head daemon closed it"  # (a clean end: the head's process exited, or was killed)
        try:
            async for item in ch:
                await self._from_peer(ch, item)
                if not ch.buffered:
                    self.host.pump()
        except ConnectionClosed as e:
            reason = e.reason
        except trio.ClosedResourceError:
            return  # closed by ``_rejoin``
        if self.head_closing:  # (what the head said before it closed: ``Closing``)
            reason = f"{reason}; the head said: {self.head_closing}"
        if self.head_channel is ch and not self.stopping:
            # a reset connection, the head restarting or killed (its host's
            # kernel closes the socket cleanly): the head has declared this
            # node dead already (its connection closed), so come back as a
            # fresh node, as after a fence -- or stop if the head stays
            # unreachable.  (An orderly 'penumbra stop' said StopCluster
            # first, which set ``stopping``.)
            self.head_channel = None
            # until the head it reaches says it is of their cluster
            self.replicas_paused = bool(self.hosted_replicas)
            if not self._rejoining:
                delay = self._incarnation_ended(
                    logging.ERROR, "lost the connection to the head daemon (%s); rejoining as a new node", reason)
                self._rejoining = True
                self.nursery.start_soon(self._rejoin, (
                    f"this node lost its connection to the cluster's head at {self.cfg.head_address} ({reason}): "
                    f"the head daemon was killed, its host died or the network is cut. The node rejoins when "
                    f"the head answers again (restarted, or 'penumbra start --head --recover' from the GCS "
                    f"replicas that survive)"), delay)
        if self.head_channel is ch:  # (not an old one ``_rejoin`` replaced)
            self.request_stop()
