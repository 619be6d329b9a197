"""The node daemon: one process per node, hosting the core machines.

A daemon runs the core machines of its node in a trio loop
(``host.MachineHost``) and is their hands:

* **head daemons** (``penumbra start --head``, or the embedded cluster that
  ``init()`` starts) also host the head machine and the GCS replicas;
* every daemon hosts a ``NodeMachine``, a shared-memory object store, and a
  pool of worker processes forked from a *zygote* (a process that imported
  everything once, so a new worker costs a ``fork``, not an interpreter
  start).

Connections (all ``wire`` channels, token-authenticated):

* drivers and workers of this node connect over the daemon's Unix socket (or
  TCP, for a driver on another host); they are *clients* of the node;
* node daemons connect to the head daemon over TCP; the head relays core
  messages between nodes it cannot find directly and tells every node where
  its peers listen (``PeerTable``);
* object transfers go directly between the two daemons concerned
  (``FetchRequest``/``FetchReply``).

The daemon makes no decision of its own: which worker runs what, what to
fetch and what to evict all come from the core as commands.

GCS replicas on nodes (so the control store outlives the head's host):

* a node daemon started with ``--gcs-replica`` hosts one replica of each
  shard, named ``gcs:{shard}:{its first node id}``.  It learns the number
  of shards from the head (``HeadInfo``), tells the head which replica
  addresses it hosts (``ReplicasHosted``, on every connection, before any
  message of theirs), and the replicas join their chains as restarted
  replicas do (core/gcs.py, "Joining").  The head daemon routes ``gcs:*``
  messages to the node channel hosting the replica; a node daemon delivers
  to its own replicas locally and sends the rest to the head;
* the replicas are not part of the node's incarnation: when the node
  rejoins (fenced, or its head connection lost) they stay, and reconnect
  to whatever head answers at the head address; a node hosting them waits
  for a lost head without limit (``head_wait``).  A replica the chain
  master cut while it lived is replaced by an empty one that joins again
  (``_watch_replicas``);
* ``penumbra start --head --recover HOST:PORT`` (``recover_from``) starts a
  head at the old head's address; the surviving node daemons reconnect to
  it by themselves, and once the ones named have, the head machine starts
  with ``HeadConfig.recover_from`` = their replicas (``_recover_head``).

Lifetime: an embedded daemon watches its driver (``--parent-pid``) and exits
when the driver is gone; on exit every worker is killed and the node's
shared memory is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import logging
import os
import random
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from ..core.layout import ClusterLayout, NodeShape
from ..core.gcs import FlushConfig, GcsReplica, GcsTiming
from ..core.head import HeadMachine
from ..core.messages import (
    CheckpointActor,
    ClientDisconnected,
    DeleteSpilled,
    Evict,
    Execute,
    Fetch,
    FetchCompleted,
    FetchFailed,
    InterruptTask,
    KillWorker,
    Log,
    Message,
    NodeDied,
    ObjectRestored,
    ObjectsReady,
    ObjectsSpilled,
    PutObject,
    RegisterClient,
    RestoreFailed,
    RestoreObject,
    SpillFailed,
    SpillObjects,
    StartWorker,
    StopNode,
    StoreError,
    TaskFinished,
    TaskRaised,
    ActorCheckpointed,
    WorkerCrashed,
    WorkerStarted,
    WorkerStartFailed,
)
from ..core.node import NodeMachine
from ..core.records import ErrorInfo, ErrorKind
from ..core.scheduler import SchedulerConfig
from ..core.specs import Payload, ResourceSet
from . import protocol as P
from .host import MachineHost
from .objectstore import NodeObjects
from .shm_store import ShmStore, cleanup_session
from .spill import SpillDir
from .wire import Channel, ConnectionClosed, HandshakeError, connect_tcp, serve_tcp, serve_unix
from .zygote import ZygoteHandle, fork_zygote

__all__ = ["DaemonConfig", "Daemon", "main"]

logger = logging.getLogger("penumbra.daemon")


@dataclass
class DaemonConfig:
    session: str
    token: str
    session_dir: str
    head: bool = True
    head_address: str = ""  # host:port of the head daemon (node role)
    host: str = "127.0.0.1"
    port: int = 0  # TCP port (0: any free port)
    num_cpus: float = 1
    num_gpus: float = 0
    resources: dict[str, float] = field(default_factory=dict)
    object_store_memory: int = 512 << 20
    memory: float | None = None  # the ``memory`` resource in bytes; None: 70% of available RAM, as Ray
    gcs_shards: int = 1
    chain_length: int = 1
    parent_pid: int = 0  # embedded: exit when this process is gone
    validate: bool = False
    # Failure detection (see core/head.py, "The liveness rule"): a node is
    # declared dead after about ``node_timeout`` seconds without heartbeats
    # (a daemon that exits is noticed at once, by its closed connection).
    # In Ray's range: its GCS checks a raylet every 3 s and gives up after 5
    # failed checks of up to 10 s each (health_check_period_ms,
    # health_check_failure_threshold, health_check_timeout_ms), so a
    # process stopped for tens of seconds survives.  Tests pass short values.
    node_timeout: float = 30.0
    heartbeat_interval: float = 1.0
    forward_queue_threshold: int = 100
    shm_root: str = "/dev/shm"
    node_id: str = ""
    # task and actor-call runs the node keeps for ``penumbra.timeline()``
    # (the last N; 0: none; see core/timeline.py)
    timeline_limit: int = 10_000
    # GCS replicas beyond the head's process (see "GCS replicas on nodes"
    # in the module docstring): a node daemon with ``gcs_replica`` hosts one
    # replica of each shard; a head daemon with ``recover_from`` (host:port
    # of surviving daemons that host replicas) is a new head rebuilding the
    # cluster's control state from them, waiting up to ``recover_wait``
    # seconds for those daemons to reconnect to it.
    gcs_replica: bool = False
    replicas_on_nodes: int = 0  # head role: ask this many node daemons to host replicas
    recover_from: list[str] = field(default_factory=list)
    recover_wait: float = 20.0
    # how long a node daemon that lost its head retries the head's address
    # before it stops (None: 20 s, unlimited for a node hosting GCS
    # replicas: it holds the cluster's state until a head recovers it)
    head_wait: float | None = None
    # object spilling (Ray's): pinned objects go to files under this
    # directory when the store is full ("" = the session directory)
    object_spilling_directory: str = ""
    spilling: bool = True
    spill_threshold: float = 0.8
    # GCS flushing (head only): None/False off, True defaults, or a dict of
    # FlushConfig fields; segments go under <session_dir>/gcs-flush
    gcs_flush: Any = None

    def __post_init__(self) -> None:
        if isinstance(self.timeline_limit, bool) or not isinstance(self.timeline_limit, int) or self.timeline_limit < 0:
            raise ValueError(f"timeline_limit must be an int >= 0 (the runs a node keeps for penumbra.timeline(); "
                             f"0 keeps none), got {self.timeline_limit!r}")
        if not (self.heartbeat_interval > 0 and self.node_timeout > self.heartbeat_interval):
            raise ValueError(
                f"node_timeout ({self.node_timeout!r} s) must be longer than heartbeat_interval "
                f"({self.heartbeat_interval!r} s), which must be > 0: a node is declared dead after "
                f"node_timeout without heartbeats (e.g. heartbeat_interval=1, node_timeout=30)")
        if self.gcs_replica and self.head:
            raise ValueError("gcs_replica is for a node daemon (penumbra start --address HEAD --gcs-replica): "
                             "the head daemon hosts the first replica of each shard already")
        if self.replicas_on_nodes and not self.head:
            raise ValueError("replicas_on_nodes is for a head daemon (penumbra start --head --gcs-replicas-on-nodes K)")
        if not (isinstance(self.replicas_on_nodes, int) and self.replicas_on_nodes >= 0):
            raise ValueError(f"replicas_on_nodes must be a whole number >= 0, got {self.replicas_on_nodes!r}")
        if self.recover_from and not self.head:
            raise ValueError("recover_from is for a head daemon (penumbra start --head --recover HOST:PORT)")
        if self.head_wait is not None and not self.head_wait > 0:
            raise ValueError(f"head_wait must be a number of seconds > 0, got {self.head_wait!r}")

    @property
    def unix_path(self) -> str:
        return os.path.join(self.session_dir, "node.sock")


@dataclass
class _Worker:
    worker_id: str
    channel: Channel | None = None
    pid: int = 0
    started_at: float = 0.0
    dead: bool = False
    job_id: int = 0
    running: set = field(default_factory=set)


class Daemon:
    def __init__(self, cfg: DaemonConfig) -> None:
        self.cfg = cfg
        self.node_id = cfg.node_id or f"node:{socket.gethostname()}-{os.getpid()}"
        self.base_node_id = self.node_id
        self.incarnation = 0  # bumped each time it rejoins after being declared dead
        self._rejoining = False
        self.layout: ClusterLayout | None = None
        self.host = MachineHost(route=self.route, validate=cfg.validate)
        self.host.log_sink = self._on_log
        self.host.after_batch = self._flush_dirty
        self._dirty: set[Channel] = set()
        self.shm = ShmStore(cfg.session, root=cfg.shm_root, capacity=cfg.object_store_memory)
        self.objects = NodeObjects(self.shm)
        self.spill = SpillDir(cfg.object_spilling_directory or cfg.session_dir, cfg.session, cfg.session_dir)
        # one spill write and one restore read at a time (a disk likes
        # sequential I/O), and a restore never queues behind a slow write
        self.disk_write = trio.CapacityLimiter(1)
        self.disk_read = trio.CapacityLimiter(1)
        self.clients: dict[str, Channel] = {}
        self.client_jobs: dict[str, int] = {}
        self.workers: dict[str, _Worker] = {}
        self.head_channel: Channel | None = None
        self.node_channels: dict[str, Channel] = {}  # head role: node id -> channel
        self.peers: dict[str, str] = {}  # node id -> host:port
        self.peer_channels: dict[str, Channel] = {}
        self.head_node = ""  # the head daemon's own node id
        self.fetch_waiters: dict[int, trio.MemorySendChannel] = {}
        self.next_fetch = 1
        self.address = ""  # host:port to reach this daemon
        self.listening = ""  # host:port it listens on (the host may be a wildcard)
        self.nursery: trio.Nursery | None = None
        self.zygote: ZygoteHandle | None = None  # set by ``main``
        self.stopping = False
        self.stop_event: trio.Event | None = None
        self.done = trio.Event()  # ``run`` has stopped (in order: a head's nodes were told)
        # GCS replicas on nodes: a node daemon's own replica addresses; the
        # head daemon's routes to replicas hosted by node daemons (replica
        # address -> node id); messages for "head" held while a recovering
        # head waits for its replicas (None: no head is being recovered)
        self.hosted_replicas: tuple[str, ...] = ()
        self.replica_routes: dict[str, str] = {}
        self._asked_to_host: set[str] = set()  # nodes asked to host replicas, not yet hosting them
        self._head_backlog: list[P.Deliver] | None = None

    # ================================================================== routing
    def route(self, to: str, msg: Message, src: str) -> None:
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

    # ================================================================== commands
    def install_handlers(self) -> None:
        h = self.host
        h.on(StartWorker, lambda src, c: self.start_worker(c.worker_id))
        h.on(Execute, lambda src, c: self.execute(c))
        h.on(KillWorker, lambda src, c: self.kill_worker(c.worker_id, c.reason))
        h.on(InterruptTask, lambda src, c: self._worker_send(c.worker_id, P.Interrupt(c.task_id)))
        h.on(CheckpointActor, lambda src, c: self._worker_send(c.worker_id, P.Checkpoint(c.actor_id, c.index)))
        h.on(Fetch, lambda src, c: self.nursery.start_soon(self.fetch, c))
        h.on(Evict, lambda src, c: self.objects.delete(c.object_id))
        h.on(StoreError, lambda src, c: [self.objects.put_error(o, c.error) for o in c.object_ids])
        h.on(StopNode, lambda src, c: self._fenced(c.reason))
        h.on(SpillObjects, lambda src, c: self.nursery.start_soon(self.spill_objects, c))
        h.on(RestoreObject, lambda src, c: self.nursery.start_soon(self.restore_object, c))
        h.on(DeleteSpilled, lambda src, c: [self.spill.delete(o) for o in c.object_ids])

    # ---------------------------------------------------------------- spilling
    async def spill_objects(self, c: SpillObjects) -> None:
        """Write ``c``'s objects to the spill directory in a thread; the core
        hears ``ObjectsSpilled`` (then evicts them) or ``SpillFailed``."""
        node = self.node_id
        spill = self.spill

        def write_all() -> str:
            done = []
            try:
                for oid in c.object_ids:
                    data = self.objects.read_bytes(oid)
                    if data is None:
                        return f"object {oid.short()} is not in the store any more"
                    spill.write(oid, data)
                    del data  # (a shared-memory view: let the region go)
                    done.append(oid)
            except OSError as e:
                for oid in done:
                    spill.delete(oid)
                what = e.strerror or str(e)
                return (f"cannot write {sum(c.sizes)} bytes to the object spilling directory {spill.root}: "
                        f"{what} ({type(e).__name__})")
            return ""

        reason = await trio.to_thread.run_sync(write_all, limiter=self.disk_write)
        if reason:
            logger.warning("spilling %d object(s) failed: %s", len(c.object_ids), reason)
            self.host.deliver(node, SpillFailed(object_ids=c.object_ids, reason=reason, stimulus_id=c.stimulus_id))
        else:
            self.host.deliver(node, ObjectsSpilled(object_ids=c.object_ids, stimulus_id=c.stimulus_id))

    async def restore_object(self, c: RestoreObject) -> None:
        """Read a spilled object back into the store (``ObjectRestored``)."""
        node = self.node_id
        oid = c.object_id

        def read_back() -> int:
            return self.objects.restore_file(oid, self.spill.file(oid))

        try:
            size = await trio.to_thread.run_sync(read_back, limiter=self.disk_read)
        except Exception as e:  # an unreadable file, a full store: the core finds another copy
            logger.warning("restoring %s from %s failed: %s", oid.short(), self.spill.path, e)
            self.host.deliver(node, RestoreFailed(object_id=oid, reason=f"{type(e).__name__}: {e}",
                                                  stimulus_id=c.stimulus_id))
            return
        self.host.deliver(node, ObjectRestored(object_id=oid, size=size, stimulus_id=c.stimulus_id))

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
        logger.error(
            "node %s was declared dead by the head (%s): its tasks re-run on other nodes. It drops its "
            "workers and objects and rejoins as a new node. (A healthy node is declared dead only when "
            "the head heard none of its heartbeats for node_timeout=%gs: this daemon was stopped or cut "
            "off that long; consider a longer --node-timeout.)", self.node_id, reason, self.cfg.node_timeout)
        if not self._rejoining:
            self._rejoining = True
            self.nursery.start_soon(self._rejoin)

    def _head_wait(self) -> float:
        """Seconds a node that lost its head retries the head's address."""
        if self.cfg.head_wait is not None:
            return self.cfg.head_wait
        # a node hosting GCS replicas holds acknowledged writes that may be
        # the only copies left (the head's host died): it waits for a head
        # to recover them (penumbra start --head --recover), however long
        return math.inf if self.cfg.gcs_replica or self.hosted_replicas else _JOIN_TIMEOUT

    async def _rejoin(self, why: str = "") -> None:
        """Come back as a fresh node (see ``_fenced``).  The GCS replicas
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
            if ch is not None:
                await ch.aclose()
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
            logger.warning("node %s rejoined the cluster as %s", old, self.node_id)
        except Exception:
            logger.exception("node %s could not rejoin the cluster (its head stayed unreachable for %g s, "
                             "--head-wait); stopping", old, self._head_wait())
            self.request_stop()
        finally:
            self._rejoining = False

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

    def _host_replicas(self, shards: int) -> None:
        """Host one replica of each of the cluster's ``shards`` (node role,
        ``--gcs-replica``).  Each joins its chain as a restarted replica
        does (core/gcs.py, "Joining"): ``ReplicaJoin`` to the chain master,
        a snapshot from the tail, ``ReplicaReady``; the master appends it as
        the new tail, so from then on no write is acknowledged before it
        holds it."""
        tag = self._replica_tag()
        names = tuple(f"gcs:{s}:{tag}" for s in range(shards))
        self.hosted_replicas = names
        # the head must know the route before their first message asks for an answer
        self._send(self.head_channel, P.ReplicasHosted(self.node_id, names))
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
            if self.head_channel is None:
                continue  # no master to join: wait for the head
            for s, r in enumerate(self.hosted_replicas):
                rep = self.host.machines.get(r)
                if rep is None or rep.joining or rep.awaiting_append or rep.active or rep.config is None:
                    continue
                logger.warning("GCS replica %s was cut out of its chain (epoch %d); it joins again", r,
                               rep.config.epoch)
                self.host.remove(r)
                self.host.add((r, GcsReplica(r, s, "head", self.layout.gcs_timing, joining=True)))
                self.host.pump()

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

    def _worker_send(self, wid: str, item: Any) -> None:
        w = self.workers.get(wid)
        if w is not None and w.channel is not None:
            self._send(w.channel, item)

    # ---------------------------------------------------------------- workers
    def start_worker(self, wid: str) -> None:
        self.workers[wid] = _Worker(wid, started_at=time.monotonic())
        try:
            self._zygote_request({"worker_id": wid})
        except OSError as e:
            self.workers.pop(wid, None)
            self.host.deliver(self.node_id, WorkerStartFailed(worker_id=wid, reason=f"zygote unavailable: {e}"))
            return
        self.nursery.start_soon(self._worker_start_deadline, wid)

    async def _worker_start_deadline(self, wid: str) -> None:
        await trio.sleep(60.0)
        w = self.workers.get(wid)
        if w is not None and w.channel is None and not w.dead:
            w.dead = True
            self.workers.pop(wid, None)
            self.host.deliver(self.node_id, WorkerStartFailed(worker_id=wid, reason="did not connect within 60 s"))

    def _zygote_request(self, req: dict) -> None:
        z = self.zygote
        if z is None or z.poll() is not None:
            raise OSError("the zygote process is not running")
        z.stdin.write((json.dumps(req) + "\n").encode())
        z.stdin.flush()

    def execute(self, c: Execute) -> None:
        w = self.workers.get(c.worker_id)
        if w is None or w.channel is None or w.dead:
            self.host.deliver(self.node_id, WorkerCrashed(worker_id=c.worker_id, reason="worker not connected"))
            return
        args = []
        for dep in c.spec.dependencies:
            a = self.objects.attachment(dep)
            if a is None:
                a = ("e", ErrorInfo(ErrorKind.OBJECT_LOST, f"input {dep.short()} vanished from the store"))
            args.append(a)
        w.running.add(c.spec.task_id)
        w.job_id = c.spec.job_id
        self._send(w.channel, P.Run(c.spec, c.attempt, tuple(args), c.checkpoint, c.gpu_ids))

    def kill_worker(self, wid: str, reason: str) -> None:
        w = self.workers.get(wid)
        if w is None:
            return
        if w.pid:
            try:
                os.kill(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if w.channel is None and not w.dead:
            # never connected: report it gone now
            w.dead = True
            self.workers.pop(wid, None)
            self.host.deliver(self.node_id, WorkerCrashed(worker_id=wid, reason=reason))

    async def serve_worker(self, ch: Channel, hello: P.ClientHello) -> None:
        wid = hello.worker_id
        w = self.workers.get(wid)
        if w is None or w.dead:
            await ch.aclose()
            return
        w.channel = ch
        w.pid = hello.pid
        self.clients[wid] = ch
        self._send(ch, P.ClientWelcome(self.node_id, self.cfg.session, self.cfg.shm_root, 0, wid, self.address))
        self.host.deliver(self.node_id, WorkerStarted(worker_id=wid))
        node = self.node_id
        reason = "the worker process exited"
        try:
            async for item in ch:
                t = type(item)
                if t is P.Ran:
                    w.running.discard(item.task_id)
                    outs = []
                    for oid, size, data in item.outputs:
                        if data is not None:
                            self.objects.put_inline(oid, data)
                        outs.append((oid, size))
                    self.host.post(node, TaskFinished(worker_id=wid, task_id=item.task_id, outputs=tuple(outs),
                                                      duration=item.duration, span=_span(item)))
                elif t is P.Raised:
                    w.running.discard(item.task_id)
                    self.host.post(node, TaskRaised(worker_id=wid, task_id=item.task_id, error=item.error,
                                                    retryable=item.retryable, duration=item.duration, span=_span(item)))
                elif t is P.Deliver:
                    self._from_client(wid, item)
                elif t is P.Output:
                    self.forward_output(item, item.job_id)
                elif t is P.Checkpointed:
                    self.host.post(node, ActorCheckpointed(worker_id=wid, actor_id=item.actor_id, index=item.index, payload=Payload(len(item.state), item.state)))
                if not ch.buffered:
                    self.host.pump()
        except ConnectionClosed as e:
            reason = f"the worker's connection closed ({e.reason})"
        finally:
            self.clients.pop(wid, None)
            if not w.dead:
                w.dead = True
                self.workers.pop(wid, None)
                code = _exit_status(w.pid)
                if code:
                    reason = f"the worker process (pid {w.pid}) died: {code}"
                if not self.stopping:
                    self.host.deliver(node, WorkerCrashed(worker_id=wid, reason=reason))

    # ---------------------------------------------------------------- clients
    def _from_client(self, cid: str, d: P.Deliver) -> None:
        msg = d.msg
        if type(msg) is PutObject and d.attachments:
            att = d.attachments.get(msg.object_id)
            if att is not None and att[0] == "i":
                self.objects.put_inline(msg.object_id, att[1])
        self.deliver_local(d)

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
                                                   self._links()))
                    else:
                        self._send(ch, P.PeerTable(self._addresses(), self.head_node or self.node_id,
                                                   {r: self.address for r in self.hosted_replicas}))
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

    # ---------------------------------------------------------------- peers
    async def serve_peer(self, ch: Channel, hello: P.NodeHello, incoming: bool) -> None:
        nid = hello.node_id
        if self.cfg.head and incoming:
            self.node_channels[nid] = ch
            self.peers[nid] = _as_seen(hello.address, ch.peer_address)
            for r in hello.replicas:
                self.replica_routes[r] = nid
            self._send(ch, P.HeadInfo(self._gcs_shards(), self._ask_to_host(nid, hello)))
            self._broadcast_peers()
        else:
            self.peer_channels[nid] = ch
        try:
            async for item in ch:
                await self._from_peer(ch, item)
                if not ch.buffered:
                    self.host.pump()
        except ConnectionClosed:
            pass
        finally:
            if self.node_channels.get(nid) is ch:
                del self.node_channels[nid]
                self.peers.pop(nid, None)
                for r in [r for r, n in self.replica_routes.items() if n == nid]:
                    del self.replica_routes[r]  # (they come back with the node's next connection)
                self._asked_to_host.discard(nid)
                self._broadcast_peers()
                if not self.stopping and "head" in self.host.machines:
                    # the daemon is gone: tell the monitor now rather than
                    # waiting for heartbeats to time out
                    self.host.deliver("head", NodeDied(node_id=nid, stimulus_id=f"disconnect:{nid}"))
            if self.peer_channels.get(nid) is ch:
                del self.peer_channels[nid]

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
            for r in item.replicas:
                self.replica_routes[r] = item.node_id
            self._asked_to_host.discard(item.node_id)
            logger.info("node %s hosts GCS replicas %s", item.node_id, ", ".join(item.replicas))
        elif t is P.HeadInfo and ch is self.head_channel:
            if (self.cfg.gcs_replica or item.host_replicas) and not self.hosted_replicas:
                self._host_replicas(item.gcs_shards)
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

    # ================================================================== connections
    async def on_connection(self, ch: Channel) -> None:
        role = ch.peer_role
        try:
            with trio.fail_after(10):
                first = await ch.receive()
        except (trio.TooSlowError, ConnectionClosed):
            return
        if role == "worker" and type(first) is P.ClientHello:
            await self.serve_worker(ch, first)
        elif role in ("driver", "cli") and type(first) is P.ClientHello:
            await self.serve_driver(ch, first)
        elif role == "node" and type(first) is P.NodeHello:
            await self.serve_peer(ch, first, True)
        else:
            logger.warning("refusing %s connection from %s: unexpected first message %s", role, ch.peer_address, type(first).__name__)

    async def connect_head(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        host, port = self.cfg.head_address.rsplit(":", 1)
        with trio.fail_after(10):  # (a head host that is down does not refuse: it never answers)
            ch = await connect_tcp(host, int(port), self.cfg.token, "node", self.node_id)
        self.head_channel = ch
        # (with the replicas it hosts: the head routes to them from now on)
        ch.send_nowait(P.NodeHello(self.node_id, self.listening, self.hosted_replicas))
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
        if self.head_channel is ch and not self.stopping:
            # a reset connection, the head restarting or killed (its host's
            # kernel closes the socket cleanly): the head has declared this
            # node dead already (its connection closed), so come back as a
            # fresh node, as after a fence -- or stop if the head stays
            # unreachable.  (An orderly 'penumbra stop' said StopCluster
            # first, which set ``stopping``.)
            logger.error("lost the connection to the head daemon (%s); rejoining as a new node", reason)
            self.head_channel = None
            if not self._rejoining:
                self._rejoining = True
                self.nursery.start_soon(self._rejoin, (
                    f"this node lost its connection to the cluster's head at {self.cfg.head_address} ({reason}): "
                    f"the head daemon was killed, its host died or the network is cut. The node rejoins when "
                    f"the head answers again (restarted, or 'penumbra start --head --recover' from the GCS "
                    f"replicas that survive)"))
        if self.head_channel is ch:  # (not an old one ``_rejoin`` replaced)
            self.request_stop()

    # ================================================================== lifecycle
    def request_stop(self) -> None:
        if self.stop_event is not None:
            self.stop_event.set()

    async def _watch_parent(self) -> None:
        pid = self.cfg.parent_pid
        while True:
            await trio.sleep(0.25)
            if _parent_gone(pid):
                logger.info("the driver (pid %d) is gone; stopping", pid)
                self.request_stop()
                return


    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._run(task_status)
        finally:
            self.done.set()

    async def _run(self, task_status) -> None:
        cfg = self.cfg
        self.stop_event = trio.Event()
        self.install_handlers()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await nursery.start(serve_unix, cfg.unix_path, self.on_connection, cfg.token)
            bound = await nursery.start(serve_tcp, cfg.host, cfg.port, self.on_connection, cfg.token)
            self.listening = f"{cfg.host}:{bound[1]}"  # (a wildcard host: the head puts in what it sees)
            self.address = f"{advertised_host(cfg.host)}:{bound[1]}"
            layout = ClusterLayout(
                nodes=(NodeShape(ResourceSet.from_dict(self._resources()), cfg.object_store_memory),),
                gcs_shards=cfg.gcs_shards, chain_length=cfg.chain_length,
                scheduler=SchedulerConfig(forward_queue_threshold=cfg.forward_queue_threshold),
                heartbeat_interval=cfg.heartbeat_interval, node_timeout=cfg.node_timeout,
                # replicas share this process and talk over reliable links:
                # check on them at a human pace, and retry only after a long
                # silence (a new chain config re-sends at once anyway)
                gcs_timing=GcsTiming(heartbeat_interval=0.1, heartbeat_timeout=1.0, resend_after=0.5,
                                     flush=FlushConfig.from_value(cfg.gcs_flush)),
                gcs_retry_after=2.0,
                own_node=self.node_id if cfg.head else None,
                timeline_limit=cfg.timeline_limit,
                spilling=cfg.spilling, spill_threshold=cfg.spill_threshold,
            )
            self.layout = layout
            # every daemon that may host a GCS replica carries out its flushes
            # (a flush is a logged op: node-hosted replicas flush too)
            from .gcsdisk import GcsDisk

            self.gcs_disk = GcsDisk(os.path.join(cfg.session_dir, "gcs-flush"), self.host, nursery).install()
            if cfg.head and cfg.recover_from:
                await self._recover_head(layout)
            elif cfg.head:
                # together: the head's first words go to the replicas (a
                # subscription to the actor table lost here used to leave
                # the head blind to actors for the GCS client's 2 s retry)
                self.host.add(("head", HeadMachine(layout.head_config(), random.Random(0))), *(
                    (r, GcsReplica(r, chain.shard, "head", layout.gcs_timing, config=chain))
                    for chain in layout.chains() for r in chain.replicas
                ))
            else:
                await nursery.start(self.connect_head)
                if cfg.gcs_replica:
                    nursery.start_soon(self._watch_replicas)
            node = NodeMachine(self.node_id, layout.node_config(layout.nodes[0]))
            self.host.add((self.node_id, node))
            nursery.start_soon(self.host.run)
            if cfg.parent_pid:
                nursery.start_soon(self._watch_parent)
            task_status.started(self.address)
            await self.stop_event.wait()
            self.stopping = True
            if cfg.head:  # an orderly stop (penumbra stop, SIGTERM): the nodes stop too, not rejoin
                await self._stop_nodes()
            nursery.cancel_scope.cancel()

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
        (the master first cuts the dead members of those names)."""
        import dataclasses

        cfg = self.cfg
        self._head_backlog = []
        want = {_normal_address(a): a for a in cfg.recover_from}
        deadline = trio.current_time() + cfg.recover_wait
        found: dict[str, tuple[str, ...]] = {}
        while True:
            by_address = {_normal_address(addr): nid for nid, addr in self.peers.items()}
            found = {}
            for key in want:
                nid = by_address.get(key)
                replicas = tuple(sorted(r for r, n in self.replica_routes.items() if n == nid)) if nid else ()
                if replicas:
                    found[key] = replicas
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

    def _resources(self) -> dict[str, float]:
        r = {"CPU": float(self.cfg.num_cpus)}
        if self.cfg.num_gpus:
            r["GPU"] = float(self.cfg.num_gpus)
        r.update(self.cfg.resources)
        r.setdefault("memory", float(self.cfg.memory if self.cfg.memory is not None else available_memory() * 0.7))
        return {k: v for k, v in r.items() if v}

    def cleanup(self) -> None:
        # a second SIGTERM (trio has restored the default handler by now)
        # must not cut the clean-up short
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        logger.info("stopping: killing workers, removing shared memory of session %s", self.cfg.session)
        self.stopping = True
        for w in list(self.workers.values()):
            if w.pid:
                try:
                    os.kill(w.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.zygote is not None and self.zygote.poll() is None:
            try:
                self.zygote.kill()
                self.zygote.wait(timeout=5)
            except Exception:
                pass
        logger.info("cleanup: workers and zygote stopped")
        try:
            self.shm.close()
        except Exception:
            logger.exception("closing the store")
        n = cleanup_session(self.cfg.session, self.cfg.shm_root)
        logger.info("cleanup: removed %d shared-memory files", n)
        self.spill.cleanup()
        try:
            os.unlink(self.cfg.unix_path)
        except OSError:
            pass


def start_zygote(cfg: DaemonConfig, node_id: str, close_fds: tuple[int, ...] = ()) -> ZygoteHandle:
    """Fork the worker-forking zygote (see ``zygote``).  ``main`` does this
    before it starts a thread or opens a socket."""
    zcfg = {
        "unix_path": cfg.unix_path, "session": cfg.session, "shm_root": cfg.shm_root,
        "node_id": node_id, "daemon_pid": os.getpid(),
    }
    return fork_zygote(zcfg, cfg.token, close_fds)


_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def advertised_host(host: str) -> str:
    """The address others should use to reach a daemon listening on
    ``host``: ``host`` itself, unless it is a wildcard (``--host 0.0.0.0``
    listens on every interface, but ``0.0.0.0:port`` reaches nobody), then
    this machine's first non-loopback IPv4 address (the head still uses the
    address a node's connection came from: see ``_as_seen``)."""
    if host not in _WILDCARDS:
        return host
    for addr in _interface_addresses():
        if not addr.startswith("127."):
            return addr
    try:
        addr = socket.gethostbyname(socket.gethostname())
        if not addr.startswith("127."):
            return addr
    except OSError:
        pass
    return "127.0.0.1"


def _interface_addresses() -> list[str]:
    """The IPv4 address of each interface that has one (SIOCGIFADDR; no
    packet is sent)."""
    import fcntl
    import struct

    out = []
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:
                continue  # no IPv4 address (or down)
            out.append(socket.inet_ntoa(raw[20:24]))
    finally:
        s.close()
    return out


class RecoveryError(RuntimeError):
    """A head started with ``--recover`` could not find the replicas."""


def _normal_address(address: str) -> str:
    """``host:port`` with the host resolved (``localhost`` and
    ``127.0.0.1`` name the same daemon)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        host = socket.gethostbyname(host)
    except OSError:
        pass
    return f"{host}:{port}"


def _as_seen(advertised: str, peer_address: str) -> str:
    """A node's listening address as the head should hand it to the other
    nodes: what it advertised, with a wildcard host replaced by the address
    its connection came from (reachable from the head, so from the cluster)."""
    host, _, port = advertised.rpartition(":")
    if host in _WILDCARDS:
        seen = peer_address.rpartition(":")[0].strip("[]")
        if seen:
            return f"{seen}:{port}"
    return advertised


def available_memory() -> int:
    """Bytes of memory available now (``MemAvailable``), or the physical
    memory where /proc/meminfo cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 << 30


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _span(item: "P.Ran | P.Raised") -> tuple[float, float] | None:
    """A worker's run on the node's (trio) clock: the worker read
    ``time.perf_counter`` when it ended, which trio's clock runs on too
    (plus an offset of its own), on the same host."""
    if not item.ended:
        return None
    end = item.ended + (trio.current_time() - time.perf_counter())
    return (end - item.duration, end)


def _exit_status(pid: int) -> str:
    if not pid:
        return ""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return "" if state != "Z" else "exited"
    except OSError:
        return "killed or exited"


# What PR_SET_PDEATHSIG sends us.  Not SIGTERM: Linux sends it when the
# *thread* that started us ends, though its process lives on (a test's
# ``Cluster.add_node`` or an ``init()`` from a thread that then returns), so
# on it we stop only if the parent process is really gone.
PARENT_DEATH_SIGNAL = signal.SIGUSR2


def _set_pdeathsig() -> None:
    """Be told (``PARENT_DEATH_SIGNAL``, so we can still clean up) when our
    parent dies.  Until trio's receiver takes the signal over, it is
    harmless (``_watch_parent`` notices a parent gone meanwhile)."""
    signal.signal(PARENT_DEATH_SIGNAL, lambda signum, frame: None)
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, PARENT_DEATH_SIGNAL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _parent_gone(pid: int) -> bool:
    return os.getppid() != pid and not _alive(pid)


def _read_config(argv: list[str] | None) -> DaemonConfig:
    """The config, token included, from the pipe ``launch`` hands us
    (``--config-fd``): never from the command line, where ``ps`` shows it."""
    p = argparse.ArgumentParser(prog="python -m penumbra.transports.daemon")
    p.add_argument("--config-fd", type=int, required=True,
                   help="a file descriptor to read the JSON DaemonConfig (with the token) from, to its end")
    args = p.parse_args(argv)
    with os.fdopen(args.config_fd, "rb") as f:
        raw = json.loads(f.read())
    os.environ.pop("PENUMBRA_TOKEN", None)  # our workers need no other token than ours
    return DaemonConfig(**raw)


def _log_to_session(cfg: DaemonConfig) -> None:
    """Log to ``<session_dir>/daemon.log`` (mode 0600), with stdout and
    stderr redirected there at the descriptor level: tracebacks, a crash in
    C (faulthandler writes to fd 2) and whatever runs at interpreter exit
    land in the log too, and no caller's terminal is held open."""
    os.makedirs(cfg.session_dir, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(cfg.session_dir, "daemon.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    for target in (1, 2):
        os.dup2(fd, target)
    os.close(fd)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import faulthandler

    faulthandler.enable()  # to fd 2: the log


def _start_error(cfg: DaemonConfig, exc: BaseException) -> tuple[str, bool]:
    """One line saying why we could not start, and what to do about it; and
    whether the log has more to say (an error we did not foresee)."""
    leaves = [exc]
    while any(isinstance(e, BaseExceptionGroup) for e in leaves):
        leaves = [x for e in leaves for x in (e.exceptions if isinstance(e, BaseExceptionGroup) else (e,))]
    import errno as errno_mod

    from .wire import HandshakeError

    for e in leaves:
        if isinstance(e, OSError) and e.errno == errno_mod.EADDRINUSE:
            return (f"port {cfg.port} on {cfg.host} is already in use (by another penumbra cluster, or another "
                    f"program): choose another with --port, or stop that cluster with 'penumbra stop'"), False
        if isinstance(e, OSError) and e.errno in (errno_mod.EADDRNOTAVAIL, errno_mod.EACCES):
            return (f"cannot listen on {cfg.host}:{cfg.port}: {e.strerror}; choose another --host "
                    f"(an address of this machine) or --port"), False
        if isinstance(e, HandshakeError) and not cfg.head:
            return (f"the head at {cfg.head_address} refused this node ({e}): check that the address is the head's "
                    f"and give the cluster's token with --token-file or $PENUMBRA_TOKEN"), False
        if isinstance(e, trio.TooSlowError) and not cfg.head:
            return (f"no answer from the head at {cfg.head_address} within {_JOIN_TIMEOUT:g} s: check the address "
                    f"(printed by 'penumbra start --head') and that no firewall is in the way"), False
        if isinstance(e, OSError) and not cfg.head and _is_connect_error(e):
            return (f"cannot reach the head at {cfg.head_address}: {e.strerror or e}; check the address "
                    f"(printed by 'penumbra start --head') and that the head runs ('penumbra status')"), False
    for e in leaves:
        if isinstance(e, RecoveryError):
            return str(e), False
    e = leaves[0]
    return (f"the daemon failed to start: {type(e).__name__}: {e} "
            f"(the traceback is in {os.path.join(cfg.session_dir, 'daemon.log')})"), True


def _is_connect_error(e: OSError) -> bool:
    """Whether ``e`` says a connection could not be made (refused, no route,
    unknown host, or trio's "all attempts to connect failed" over those)."""
    import errno as errno_mod

    if isinstance(e, (ConnectionError, socket.gaierror, TimeoutError)):
        return True
    if e.errno in (errno_mod.ECONNREFUSED, errno_mod.EHOSTUNREACH, errno_mod.ENETUNREACH, errno_mod.ETIMEDOUT,
                   errno_mod.EHOSTDOWN):
        return True
    cause = e.__cause__
    return isinstance(cause, BaseExceptionGroup) and all(
        isinstance(x, OSError) and _is_connect_error(x) for x in cause.exceptions)


_JOIN_TIMEOUT = 20.0  # seconds a joining node tries to reach its head (less than launch's 30 s wait)


def main(argv: list[str] | None = None) -> None:
    cfg = _read_config(argv)
    _log_to_session(cfg)
    # the shared memory of this user's daemons that died without cleaning
    # up (SIGKILL, OOM killer): freed now, not at reboot
    from .shm_store import cleanup_stale_sessions
    from .spill import cleanup_spill, cleanup_stale_spill_dirs

    try:
        ours = set(os.listdir(os.path.dirname(cfg.session_dir)))
        for stale in cleanup_stale_sessions(cfg.shm_root, only=ours):
            logger.info("removed the shared memory of session %s (its daemon is gone)", stale)
            cleanup_spill(os.path.join(os.path.dirname(cfg.session_dir), stale))
    except OSError as e:
        logger.warning("could not look for stale sessions: %s", e)
    # and the spilled objects of daemons killed before they could clean up
    for gone in cleanup_stale_spill_dirs(cfg.object_spilling_directory) if cfg.object_spilling_directory else ():
        logger.info("removed %s (its daemon is gone)", gone)
    if cfg.parent_pid:
        _set_pdeathsig()
    node_id = cfg.node_id or f"node:{socket.gethostname()}-{os.getpid()}"
    cfg.node_id = node_id
    ready_fd = os.environ.get("PENUMBRA_READY_FD")
    zygote = start_zygote(cfg, node_id, close_fds=tuple([int(ready_fd)] if ready_fd else []))
    daemon = Daemon(cfg)
    daemon.zygote = zygote

    async def on_signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP, PARENT_DEATH_SIGNAL) as signals:
            async for signum in signals:
                if signum == PARENT_DEATH_SIGNAL:
                    if not cfg.parent_pid or not _parent_gone(cfg.parent_pid):
                        logger.info("the thread that started us ended; process %d lives on: serving on",
                                    cfg.parent_pid)
                        continue
                    logger.info("the driver (pid %d) is gone; stopping", cfg.parent_pid)
                else:
                    logger.info("signal %d: stopping", signum)
                daemon.request_stop()

    started = False

    def tell(msg: dict) -> None:
        line = json.dumps(msg) + "\n"
        if ready_fd:
            os.write(int(ready_fd), line.encode())
            os.close(int(ready_fd))
        else:
            print(line, end="", flush=True)

    async def amain() -> None:
        nonlocal started
        async with trio.open_nursery() as n:
            n.start_soon(on_signals)
            if cfg.head:
                address = await n.start(daemon.run)
            else:
                with trio.fail_after(_JOIN_TIMEOUT):
                    address = await n.start(daemon.run)
            started = True
            tell({"address": address, "node_id": daemon.node_id, "pid": os.getpid()})
            # ``run`` returns once it has stopped in order (a head first
            # tells its nodes, see ``Daemon._stop_nodes``): cancelling it as
            # soon as ``stop_event`` fired raced with that, and a node
            # told nothing takes the head for killed and rejoins
            await daemon.done.wait()
            n.cancel_scope.cancel()  # (``on_signals``)

    # While trio runs, its signal receiver owns these signals; when it closes
    # it restores the handler it found.  Make that a harmless one, so that a
    # signal landing between trio's exit and ``cleanup`` cannot kill us with
    # our shared memory still on disk (``cleanup`` then ignores them).
    def _late_signal(signum, frame) -> None:
        logger.info("signal %d while stopping: already stopping", signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _late_signal)
    profile = os.environ.get("PENUMBRA_PROFILE_DAEMON")  # a path: write cProfile stats there
    try:
        if profile:
            import cProfile

            # CPU time of the loop's thread: waiting in epoll costs nothing
            prof = cProfile.Profile(time.thread_time)
            try:
                prof.runctx("trio.run(amain)", globals(), {"trio": trio, "amain": amain})
            finally:
                prof.dump_stats(profile)
        else:
            trio.run(amain)
    except BaseException as e:
        if started:
            raise  # its traceback goes to stderr: the log
        # could not start: one line for whoever started us (penumbra start
        # prints it), the traceback for the log
        logger.error("could not start", exc_info=True)
        message, see_log = _start_error(cfg, e)
        try:
            tell({"error": message, "see_log": see_log})
        except OSError:
            pass
        sys.exit(1)
    finally:
        daemon.cleanup()


if __name__ == "__main__":
    main()
