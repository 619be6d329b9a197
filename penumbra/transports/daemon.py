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
  with ``HeadConfig.recover_from`` = their replicas (``_recover_head``);
  ``--recover auto`` names none: it recovers from whichever daemons
  reconnect holding replicas within ``recover_wait``, else starts a fresh
  cluster then (a head that a cluster manager restarts runs with it).

A head of another cluster (what a node hosting replicas does when the head
address answers with a head it does not belong to):

* every cluster has an id: a fresh head makes one, a recovering head takes
  the one of the replicas it recovers (and says so to every node);  a node
  learns it from ``HeadInfo`` and its replicas carry it from then on (its
  ``NodeHello`` and ``ReplicasHosted`` name it);
* a node that lost its head pauses its replicas (nothing they send leaves
  the process) until the head it reaches says which cluster it is: the same
  one (the head came back), or a recovering head -- the replicas go on; a
  fresh head (``penumbra start --head`` without ``--recover`` at the same
  address: Kubernetes restarting the head's container, an operator starting
  a new cluster) -- they stay paused.  Their state (which may hold the only
  copies of the old cluster's acknowledged writes) is kept and still offered
  to any later recovering head, but nothing of it enters the new cluster,
  whose head does not route to them.  The node joins the new cluster as a
  plain node (it hosts no replica of the new cluster: its replica names are
  taken); both daemons' logs say so and ``penumbra status`` lists it under
  "earlier cluster" with the command that recovers it instead.

Lifetime: an embedded daemon watches its driver (``--parent-pid``) and exits
when the driver is gone; on exit every worker is killed and the node's
shared memory is removed.

Where it lives.  ``Daemon`` is one object on one trio thread (so no locks),
assembled here from one mixin per seam; each mixin's module says what it
holds and why, and all of them share the state ``Daemon.__init__`` sets up:

* ``daemon_routing``: ``route`` (the host's exit for messages), sending and
  flushing channels, worker output to drivers;
* ``daemon_commands``: the node machine's commands, and spilling to disk;
* ``daemon_workers``: the worker pool and the zygote;
* ``daemon_clients``: drivers and command-line clients;
* ``daemon_peers``: connections between daemons, object transfers;
* ``daemon_head_link``: a node's connection to its head, fencing, rejoining;
* ``daemon_replicas``: GCS replicas hosted on nodes;
* ``daemon_head_role``: the head's start (fresh or recovering), cluster ids,
  its orderly stop;
* ``daemon_config``, ``daemon_addresses``, ``daemon_process``: the config,
  the addresses handed out, what is asked of the operating system.

This module holds the rest: the state, accepting connections, the run and
its stop, the clean-up, and ``main`` (``python -m penumbra.transports.daemon``:
read the config, log to the session, fork the zygote, run, and say why a
start failed in one line).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import secrets
import signal
import socket
import sys
import time

import trio

from ..core.layout import ClusterLayout, NodeShape
from ..core.gcs import FlushConfig, GcsReplica, GcsTiming
from ..core.head import HeadMachine
from ..core.node import NodeMachine
from ..core.scheduler import SchedulerConfig
from ..core.specs import ResourceSet
from . import protocol as P
from .daemon_addresses import advertised_host
from .daemon_clients import DaemonClients
from .daemon_commands import DaemonCommands
from .daemon_config import _JOIN_TIMEOUT, DaemonConfig
from .daemon_head_link import DaemonHeadLink
from .daemon_head_role import DaemonHeadRole, RecoveryError
from .daemon_peers import DaemonPeers
from .daemon_process import PARENT_DEATH_SIGNAL, _parent_gone, _set_pdeathsig, available_memory
from .daemon_replicas import DaemonReplicas
from .daemon_routing import DaemonRouting
from .daemon_workers import DaemonWorkers, _Worker, start_zygote
from .rejoin_backoff import RejoinBackoff
from .host import MachineHost
from .objectstore import NodeObjects
from .shm_store import ShmStore, cleanup_session
from .spill import SpillDir
from .wire import Channel, ConnectionClosed, serve_tcp, serve_unix
from .zygote import ZygoteHandle

__all__ = ["DaemonConfig", "Daemon", "main"]

logger = logging.getLogger("penumbra.daemon")


class Daemon(DaemonRouting, DaemonCommands, DaemonWorkers, DaemonClients, DaemonPeers, DaemonHeadLink,
             DaemonReplicas, DaemonHeadRole):
    def __init__(self, cfg: DaemonConfig) -> None:
        self.cfg = cfg
        self.node_id = cfg.node_id or f"node:{socket.gethostname()}-{os.getpid()}"
        self.base_node_id = self.node_id
        self.incarnation = 0  # bumped each time it rejoins after being declared dead
        self._rejoining = False
        # how soon to rejoin after an incarnation ends (a tight loop of quick
        # ends backs off: rejoin_backoff.py); the streak's length; what the
        # head said (``Closing``) before it closed this node's connection
        self.rejoin_backoff = RejoinBackoff(rng=random.Random())
        self._rejoin_quick = 0
        self.head_closing = ""
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
        self._head_backlog: list[P.Deliver] | None = [] if cfg.recover_from else None
        # cluster ids (see "A head of another cluster"): a head's own
        # ("" while a recovering head waits for its replicas); a node's:
        # the cluster its replicas belong to, and whether they are paused
        # (its head is lost, or belongs to another cluster)
        self.cluster_id = "" if cfg.recover_from else secrets.token_hex(6)
        self.replica_cluster = ""
        self.replicas_paused = False
        self.node_clusters: dict[str, str] = {}  # head role: node id -> cluster of the replicas it offered
        self.earlier: dict[str, str] = {}  # head role: node id -> the other cluster its replicas belong to

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
        # the actor workers' sockets (transports/actor_server.py): a worker
        # killed leaves its socket file behind
        for name in os.listdir(self.cfg.session_dir) if os.path.isdir(self.cfg.session_dir) else ():
            if name.startswith("actor-") and name.endswith(".sock"):
                try:
                    os.unlink(os.path.join(self.cfg.session_dir, name))
                except OSError:
                    pass


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
