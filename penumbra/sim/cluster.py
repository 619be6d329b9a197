"""The simulated cluster: the core's machines on the SimPy kernel.

Theory of operation
-------------------
``SimCluster`` builds a cluster the way every driver does
(``core.layout.build_machines``): a head, ``gcs_shards`` chains of
``chain_length`` GCS replicas, and nodes.  Each machine runs on a kernel
host (``penumbra.sim.kernel``), which charges CPU by the cost model and
carries its ``Send``/``SetTimer`` commands over the simulated network.
Nothing here decides anything: this module only carries out the node-local
commands and feeds their completions back in as events.

Where the parts live: the node-local world (``SimNode``: byte store,
worker processes, transfers) and the interface of pluggable task
execution (``Executor``, ``Outcome``, ``SimWorker``) are in
``penumbra.sim.node``; driver programs (``SimDriver``, ``SimActor``,
``SimWaiter``) in ``penumbra.sim.driver``; the default executor
(``ModelExecutor``) in ``penumbra.sim.workloads``.  This module builds the
cluster from them, breaks it (below) and reports on it; every name above
stays importable from here.  Imports run one way: cluster -> workloads ->
driver, node -> kernel.

Failures
    ``crash_node`` (the node's machine, store, workers and drivers vanish; the
    head learns of it by missed heartbeats, or at once with
    ``detect="omniscient"``), ``add_node``/``replace_node`` (a node restarts
    under a *new* address and node id: the core never reuses one),
    ``crash_replica``/``restart_replica`` (a replica restarts empty, as
    ``GcsReplica(joining=True)``, and copies its state from the tail),
    ``crash_head``/``recover_head`` (the head's host dies with the GCS
    replicas that live there; a new head rebuilds its state from the
    surviving replicas: core/head.py, "Recovery"), where replicas live
    (``ClusterLayout.replica_hosts`` puts a replica on a node's host: it
    dies with that node, and restarts empty on the node that replaces it),
    partitions, isolation, slow hosts, lossy links, and stop-the-world
    pauses (``pause``: the head, a node or a driver stands still for a while,
    as under SIGSTOP).  The same faults as data
    (``FaultSchedule`` with ``CrashNode``/``AddNode`` and the kernel's fault
    types), scheduled or drawn from a seed, go through ``cluster.install``.

Determinism
    Every random choice comes from the kernel's seed (the head's global
    scheduler gets ``kernel.derive_rng("head")``); the trace hash
    (``cluster.trace_hash()``, printed by ``summary()``) is the same for the
    same seed and configuration on every run.

Example::

    c = SimCluster(nodes=4, costs=PAPER, seed=1)
    c.wait_ready()
    d = c.driver(node="node:0")
    g = workloads.chains(8, 10, duration=0.1)
    specs = g.submit(d)
    d.watch([s.return_ids[0] for s in specs])
    c.crash_node("node:2", restart_after=0.5)
    c.run_until(lambda: d.all_ready(specs), timeout=60)
    c.summary()
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from penumbra.core.gcs import GcsReplica
from penumbra.core.layout import ClusterLayout, NodeShape, make_node, node_address
from penumbra.core.messages import NodeDied, PutObject, WorkerCrashed
from penumbra.core.specs import ResourceSet, TaskSpec
from penumbra.core.tables import key_shard

from .costs import PAPER, CostModel
from .direct import SimDirect, direct_calls_default
from .driver import SimActor, SimDriver, SimWaiter
from .faults import Crash, Fault, FaultSchedule, Installed, Restart
from .kernel import Host, SimKernel, gc_paused
from .network import Network, SizeModel
from .node import _NODE_COMMANDS, Executor, Outcome, SimNode, SimWorker
from .trace import Trace
from .workloads import ModelExecutor

__all__ = [
    "SimCluster",
    "SimNode",
    "SimWorker",
    "SimDriver",
    "SimActor",
    "Outcome",
    "Executor",
    "CrashNode",
    "AddNode",
    "SimWaiter",
]


# ===========================================================================
# cluster-level faults (data, for FaultSchedule)


def _cluster_of(ctx: Installed) -> "SimCluster":
    c = getattr(ctx.kernel, "cluster", None)
    if c is None:
        raise RuntimeError("this fault needs a SimCluster: install it with cluster.install(schedule)")
    return c


@dataclass(frozen=True, slots=True)
class CrashNode(Fault):
    """Crash node ``address``; with ``restart_after``, a node of the same
    shape joins that much later under a new address (the core never reuses a
    node id)."""

    address: str
    restart_after: float | None = None

    def apply(self, ctx: Installed) -> None:
        _cluster_of(ctx).crash_node(self.address, restart_after=self.restart_after)

    def targets(self) -> tuple[str, ...]:
        return (self.address,)

    def __str__(self) -> str:
        after = f" restart_after={self.restart_after:g}" if self.restart_after is not None else ""
        return f"CrashNode({self.address}{after})"


@dataclass(frozen=True, slots=True)
class AddNode(Fault):
    """A new node joins (shaped like node ``like``, or like the layout's
    first node)."""

    like: str | None = None

    def apply(self, ctx: Installed) -> None:
        c = _cluster_of(ctx)
        c.add_node(like=self.like)

    def targets(self) -> tuple[str, ...]:
        return (self.like,) if self.like else ()

    def __str__(self) -> str:
        return f"AddNode(like={self.like})"


@dataclass(frozen=True, slots=True)
class CrashHead(Fault):
    """The head's host dies (the head and the GCS replicas that live with
    it); with ``recover_after``, a new head recovers that much later from
    the replicas alive then (``SimCluster.crash_head``)."""

    recover_after: float | None = None

    def apply(self, ctx: Installed) -> None:
        c = _cluster_of(ctx)
        if c.kernel.is_alive("head"):
            c.crash_head(recover_after=self.recover_after)

    def targets(self) -> tuple[str, ...]:
        return ("head",)

    def __str__(self) -> str:
        after = f" recover_after={self.recover_after:g}" if self.recover_after is not None else ""
        return f"CrashHead({after.strip()})"


# ===========================================================================
# the cluster


class SimCluster:
    """A whole simulated cluster (see the module docstring).

    Args:
        layout: the cluster's shape (``core.layout.ClusterLayout``); default:
            ``nodes`` nodes of ``cpus`` CPUs, one GCS shard of one replica.
        nodes, cpus, object_store_memory: shortcuts used when ``layout`` is
            None (``nodes`` also overrides the layout's node count, repeating
            its first shape).
        costs: the cost model (``PAPER``, a calibrated ``LOCAL``, ``ZERO``).
        seed: the seed of every random choice (network faults, the global
            scheduler's tie breaks, drawn fault schedules).
        rack_size: nodes per rack (the head and GCS replicas share a rack of
            their own, ``"control"``).
        executor: task execution (default ``workloads.ModelExecutor()``).
        trace: ``"key"`` (default), ``"type"`` (cheapest), ``False`` (none)
            or a ``Trace``.
        validate: call every machine's ``validate()`` after every event
            (slow; for tests).
        detect: ``"heartbeat"`` (the head finds dead nodes by missed
            heartbeats) or ``"omniscient"`` (the simulator tells it, after
            ``detect_delay``).
        start: boot the machines now (at time 0).
        disk_bytes: each node's spill disk, in bytes (0: unbounded); a spill
            that does not fit fails as a full disk does (``SpillFailed``).
        gc_off: pause Python's cyclic garbage collector while the simulation
            runs (``run``/``run_until``): its full collections walk every
            live object, which at thousands of nodes costs more than the
            simulation itself.  Reference counting still frees everything
            that is not part of a cycle; the collector runs again after,
            without a pass over what the simulation keeps (see
            ``kernel.gc_paused``).
        machines: build only the machines for which ``machines(address)``
            is true; it is asked once per machine, in build order (the head,
            the GCS replicas chain by chain, the nodes).  The others are run
            by another partition of a partitioned run
            (``penumbra.sim.partition``): here they are stand-ins
            (``kernel.add_remote``) that messages can be sent to, and cost
            next to nothing.  Default: build every machine.
        direct_calls: actor calls go straight from caller to the actor's
            worker (``penumbra.sim.direct``), as on the real runtime; False:
            through the nodes (the routed path).  ``replay=True`` actors
            always take the routed path.  Default: the real runtime's
            switch, ``PENUMBRA_DIRECT_CALLS`` (on unless "0").
    """

    def __init__(
        self,
        layout: ClusterLayout | None = None,
        *,
        nodes: int | None = None,
        cpus: float = 2,
        object_store_memory: int = 1 << 30,
        costs: CostModel = PAPER,
        seed: int = 0,
        rack_size: int = 40,
        executor: Any = None,
        trace: Any = "key",
        validate: bool = False,
        detect: str = "heartbeat",
        detect_delay: float = 0.0,
        print_logs: bool = False,
        network: Network | None = None,
        start: bool = True,
        gc_off: bool = True,
        disk_bytes: int = 0,
        machines: Callable[[str], bool] | None = None,
        direct_calls: bool | None = None,
    ) -> None:
        if layout is None:
            shape = NodeShape(resources=ResourceSet.of(CPU=cpus), object_store_memory=object_store_memory)
            layout = ClusterLayout(nodes=(shape,) * (2 if nodes is None else nodes))
        elif nodes is not None:
            layout = dataclasses.replace(layout, nodes=tuple(layout.nodes[i % len(layout.nodes)] for i in range(nodes)))
        if detect not in ("heartbeat", "omniscient"):
            raise ValueError(f"detect must be 'heartbeat' or 'omniscient', got {detect!r}")
        if rack_size < 1:
            raise ValueError(f"rack_size must be >= 1, got {rack_size}")
        self.layout = layout
        self.costs = costs
        self.disk_bytes = disk_bytes
        self.seed = seed
        self.rack_size = rack_size
        self.detect = detect
        self.detect_delay = detect_delay
        self.validate = validate
        self.gc_off = gc_off
        if executor is None:
            executor = ModelExecutor()
        self.executor = executor
        if trace is True or trace == "key" or trace == "type" or trace == "full":
            trace = Trace(fields="key" if trace is True else trace)
        elif trace is False or trace is None or trace == "none":
            trace = None
        if network is None:
            network = Network.from_costs(costs, size_of=SizeModel(costs.message_bytes, overrides={
                # a put's bytes are written into the local store, not sent
                PutObject: costs.message_bytes,
            }))
        self.kernel = SimKernel(seed, network=network, costs=costs, trace=trace, print_logs=print_logs)
        self.kernel.cluster = self  # for cluster-level faults (CrashNode, AddNode)
        self.kernel.on_crash.append(self._on_crash)
        self.kernel.on_restart.append(self._on_restart)
        # actor calls straight from caller to actor worker (penumbra.sim.direct)
        self.direct = SimDirect(self, direct_calls_default() if direct_calls is None else bool(direct_calls))
        self.nodes: dict[str, SimNode] = {}
        self.replicas: list[str] = []
        # every node's address, in order, built here or not (``machines``);
        # and the machines another partition runs: address -> stand-in
        self.node_addresses: list[str] = []
        self.remote: dict[str, Any] = {}
        self._mine = machines if machines is not None else (lambda address: True)
        self._drivers_made = 0  # (names drivers: with reserve_driver, not only those made here)
        # replica -> the node whose host runs it (``layout.replica_hosts``;
        # it moves to the node that replaces a dead one); the others live
        # with the head
        self.replica_node: dict[str, str] = dict(layout.replica_hosts)
        self.head_recoveries = 0
        self.drivers: dict[str, SimDriver] = {}
        self.next_node = 0
        self.next_job = 1
        self.on_task_done: list[Callable[[SimNode, TaskSpec, int, float], Any]] = []
        self.events: list[tuple[float, str, str]] = []  # (time, what, address): crashes, joins
        self._started = False
        self._build()
        if start:
            self.start()

    # ------------------------------------------------------------------ building
    def _build(self) -> None:
        from penumbra.core.head import HeadMachine

        k = self.kernel
        lay = self.layout
        mine = self._mine
        self.head_host = None
        if mine("head"):
            self.head_host = k.add_host("head", HeadMachine(lay.head_config(), k.derive_rng("head")), rack="control",
                                        kind="head", validate_every_step=self.validate)
        else:
            self.remote["head"] = k.add_remote("head", rack="control", kind="head")
        from .gcsdisk import SimGcsDisk

        self.gcs_disk = SimGcsDisk()  # where flushed GCS rows go (GcsTiming.flush)
        for chain in lay.chains():
            for r in chain.replicas:
                m = GcsReplica(r, chain.shard, "head", lay.gcs_timing, config=chain)
                on = lay.replica_hosts.get(r)
                # (a replica on a node's host sits in that node's rack)
                rack = "control" if on is None else int(on.split(":")[1]) // self.rack_size
                if not mine(r):
                    self.remote[r] = k.add_remote(r, rack=rack, kind="gcs")
                    continue
                k.add_host(r, m, self.gcs_disk.handlers, rack=rack, kind="gcs", validate_every_step=self.validate)
                self.replicas.append(r)
        for shape in lay.nodes:
            if mine(node_address(self.next_node)):
                self._new_node(shape, None)
            else:
                i = self.next_node
                self.next_node += 1
                a = node_address(i)
                self.node_addresses.append(a)
                self.remote[a] = k.add_remote(a, rack=i // self.rack_size, kind="node")

    def _new_node(self, shape: NodeShape, rack: Any) -> SimNode:
        i = self.next_node
        self.next_node += 1
        address = node_address(i)
        self.node_addresses.append(address)
        if rack is None:
            rack = i // self.rack_size
        node = SimNode(self, address, i, shape, rack)
        machine = make_node(self.layout, i, shape)
        handlers = {t: (lambda f: (lambda host, cmd: f(node, host, cmd)))(f) for t, f in _NODE_COMMANDS.items()}
        node.host = self.kernel.add_host(address, machine, handlers, rack=rack, kind="node",
                                         validate_every_step=self.validate)
        self.nodes[address] = node
        return node

    def start(self) -> None:
        """Boot every machine (head, then GCS replicas, then nodes) now."""
        if self._started:
            return
        self._started = True
        k = self.kernel
        for address in ([] if self.head_host is None else ["head"]) + self.replicas + list(self.nodes):
            self._boot(k.hosts[address])

    def _boot(self, host: Host) -> None:
        host.call_at(max(host.now, self.kernel.now), self._run_start, host)

    @staticmethod
    def _run_start(host: Host) -> None:
        start = getattr(host.machine, "start", None)
        if start is not None:
            host.carry_out(start(host.now))

    # ------------------------------------------------------------------ views
    @property
    def now(self) -> float:
        return self.kernel.env.now

    @property
    def head(self):
        """The head machine (global scheduler, monitor, chain master, actors)."""
        return self.kernel.hosts["head"].machine

    def node(self, address: str) -> SimNode:
        return self.nodes[address]

    def alive_nodes(self) -> list[str]:
        return [a for a, n in self.nodes.items() if n.alive]

    def replica(self, address: str) -> GcsReplica | None:
        return self.kernel.hosts[address].machine

    def gcs_row(self, table: str, key: Any) -> Any:
        """The row of ``key`` in ``table`` at its shard's tail (an observation,
        not a GCS read)."""
        head = self.head
        shard = key_shard(table, key, len(head.chain.shards))
        tail = head.chain.shards[shard].config.tail
        m = self.kernel.hosts[tail].machine
        if m is None:
            return None
        row = m.tables.data[table].get(key)
        if row is None and m.tables.flush_next:  # (flushed: what the disk holds)
            seg = m.tables.flushed_segment(table, key)
            if seg is not None:
                row = self.gcs_disk.segments(tail).get((shard, seg), {}).get((table, key))
        return row

    def tasks_finished(self) -> int:
        """Tasks that completed successfully on any node so far."""
        return sum(n.finished for n in self.nodes.values())

    def is_ready(self) -> bool:
        """Every live node joined, was welcomed and has its workers up."""
        head = self.head
        if head is None:
            return False
        known = head.scheduler.nodes
        for a, n in self.nodes.items():
            if not n.alive:
                continue
            m = n.machine
            if not m.welcomed or m.scheduler.pending_starts or a not in known:
                return False
        return True

    # ------------------------------------------------------------------ running
    @contextlib.contextmanager
    def _running(self):
        if not self.gc_off:
            yield
            return
        with gc_paused():
            yield

    def run(self, until: float) -> None:
        """Run until simulated time ``until``."""
        if until > self.kernel.now:
            with self._running():
                self.kernel.run(until=until)

    def run_for(self, dt: float) -> None:
        self.run(self.kernel.now + dt)

    def run_until(self, predicate: Callable[[], bool], timeout: float, check_every: float | None = None) -> bool:
        """Run until ``predicate()`` or ``timeout`` simulated seconds pass."""
        with self._running():
            return self.kernel.run_until(predicate, timeout, check_every)

    def wait_ready(self, timeout: float = 10.0) -> float:
        """Run until the cluster is up (``is_ready``); returns the time.

        Raises:
            TimeoutError: it was not up within ``timeout`` simulated seconds.
        """
        step = max(1e-3, self.costs.worker_start / 4 if self.costs.worker_start else 1e-3)
        if not self.run_until(self.is_ready, timeout, check_every=step):
            raise TimeoutError(f"the simulated cluster was not up after {timeout}s of simulated time "
                               f"(nodes not ready: {[a for a, n in self.nodes.items() if n.alive and not n.machine.welcomed][:5]})")
        return self.now

    # ------------------------------------------------------------------ drivers
    def driver(self, node: str = "node:0", *, job_id: int | None = None, name: str | None = None,
               cpu: bool = False) -> SimDriver:
        """A new driver program on ``node`` (its own job unless ``job_id``).

        ``cpu``: model the program's own CPU (``costs.client_call`` per
        submitted task, one thread); by default drivers cost nothing."""
        if node in self.remote:
            raise ValueError(f"cannot place a driver on {node!r}: another partition runs that node; "
                             f"reserve_driver({node!r}) takes the ids a driver there would have")
        if node not in self.nodes or not self.nodes[node].alive:
            raise ValueError(f"cannot place a driver on {node!r}: no such live node (live: {self.alive_nodes()[:8]})")
        if job_id is None:
            job_id = self.next_job
            self.next_job += 1
        address = name or f"driver:{job_id}:{self._drivers_made}"
        self._drivers_made += 1
        d = SimDriver(self, address, node, job_id)
        if cpu:
            d.call_cost = self.costs.client_call
        self.drivers[address] = d
        return d

    def reserve_driver(self, node: str) -> str:
        """The ids (job, address) that ``driver(node)`` would take, for a
        ``node`` another partition runs (``machines``): taken here too, so
        that every later id agrees across partitions, and the address is a
        stand-in that messages can be sent to.  Returns the address."""
        if node not in self.remote:
            raise ValueError(f"reserve_driver is for a node another partition runs; {node!r} is "
                             f"{'run here: use driver()' if node in self.nodes else 'no node of this cluster'}")
        job_id = self.next_job
        self.next_job += 1
        address = f"driver:{job_id}:{self._drivers_made}"
        self._drivers_made += 1
        self.remote[address] = self.kernel.add_remote(address, colocated_with=node, kind="driver")
        return address

    # ------------------------------------------------------------------ failures
    def crash_node(self, address: str, restart_after: float | None = None) -> bool:
        """Crash a node: its machine, store, workers and drivers vanish.  With
        ``restart_after``, a node of the same shape joins that much later
        under a new address.  Returns False if it was already dead."""
        node = self.nodes.get(address)
        if node is None:
            raise ValueError(f"no node {address!r}")
        if not self.kernel.crash(address):
            return False
        if restart_after is not None:
            self.kernel.call_after(restart_after, self.replace_node, address)
        return True

    def replace_node(self, address: str) -> str:
        """A node shaped like (dead) ``address`` joins under a new address
        (the GCS replicas its host ran restart empty on the new one)."""
        return self.add_node(like=address)

    def add_node(self, shape: NodeShape | None = None, *, rack: Any = None, like: str | None = None) -> str:
        """A new node joins now; returns its address.  Made ``like`` a dead
        node, its host takes over the dead one's GCS replicas: they restart
        empty and join their chains again (copying the tail's state)."""
        if like is not None:
            shape = self.nodes[like].shape
            rack = self.nodes[like].rack if rack is None else rack
        node = self._new_node(shape or self.layout.nodes[0], rack)
        self.events.append((self.now, "join", node.address))
        self.kernel.note(node.address, "node joins")
        if self._started:
            self._boot(node.host)
        if like is not None and not self.nodes[like].alive:
            for r in sorted(r for r, n in self.replica_node.items() if n == like):
                self.replica_node[r] = node.address
                self.restart_replica(r)
        return node.address

    def replicas_with_head(self) -> list[str]:
        """The GCS replicas on the head's host (they die with the head)."""
        return [r for r in self.replicas if r not in self.replica_node]

    def crash_head(self, recover_after: float | None = None) -> list[str]:
        """The head's host dies: the head machine and the GCS replicas that
        live with it (those not placed on nodes by
        ``layout.replica_hosts``).  Nodes, drivers and the other replicas
        run on; what they send the head meanwhile is lost.  With
        ``recover_after``, a new head recovers that much later
        (``recover_head``).  Returns the replicas that died."""
        if not self.kernel.crash("head"):
            raise ValueError("the head is down already; recover it first (cluster.recover_head())")
        self.events.append((self.now, "crash", "head"))
        died = [r for r in self.replicas_with_head() if self.kernel.crash(r)]
        if recover_after is not None:
            self.kernel.call_after(recover_after, self.recover_head)
        return died

    def recover_head(self, recover_from: Iterable[str] | None = None, restart_replicas: bool = True) -> tuple[str, ...]:
        """Start a new head that rebuilds its state from the surviving GCS
        replicas (core/head.py, "Recovery: a new head from surviving
        replicas").  ``recover_from``: the replicas to ask (default: every
        replica alive now).  With ``restart_replicas`` the replicas of the
        head's host come back too, empty, and join their chains again.
        Returns the replicas asked.

        Raises:
            ValueError: the head is alive, or no replica survives to recover from.
        """
        k = self.kernel
        if k.hosts["head"].alive:
            raise ValueError("the head is alive: crash it first (cluster.crash_head())")
        survivors = tuple(recover_from) if recover_from is not None else tuple(
            r for r in self.replicas if k.hosts[r].alive)
        if not survivors:
            raise ValueError("no GCS replica survives to recover the head from: place replicas on nodes "
                             "(ClusterLayout.replica_hosts) so that the GCS outlives its head")
        self.head_recoveries += 1
        config = dataclasses.replace(self.layout.head_config(), recover_from=survivors)
        from penumbra.core.head import HeadMachine

        k.restart("head", HeadMachine(config, k.derive_rng(f"head/recovered/{self.head_recoveries}")))
        self.events.append((self.now, "recover", "head"))
        if restart_replicas:
            for r in self.replicas_with_head():
                if not k.hosts[r].alive:
                    self.restart_replica(r)
        return survivors

    def crash_replica(self, address: str, restart_after: float | None = None) -> bool:
        """Crash a GCS replica; with ``restart_after`` it restarts empty and
        joins its chain again (copying the tail's state)."""
        if address not in self.replicas:
            raise ValueError(f"no GCS replica {address!r} (replicas: {self.replicas})")
        ok = self.kernel.crash(address)
        if ok and restart_after is not None:
            self.kernel.call_after(restart_after, self.restart_replica, address)
        return ok

    def restart_replica(self, address: str) -> bool:
        return self.kernel.restart(address, self.restart_factory(address))

    def restart_factory(self, address: str) -> Any:
        """A fresh machine for a restarted host (GCS replicas only).  A
        replica restarts empty: its disk of flushed rows too (``SimGcsDisk``)."""
        if address in self.replicas:
            shard = int(address.split(":")[1])
            self.gcs_disk.forget(address)
            return GcsReplica(address, shard, "head", self.layout.gcs_timing, joining=True)
        if address in self.nodes:
            raise ValueError(f"nodes do not restart under their old address ({address}); use "
                             f"cluster.crash_node({address!r}, restart_after=...) or CrashNode(...)")
        raise ValueError(f"cannot restart {address!r}: only GCS replicas restart in place")

    def kill_worker(self, node: str, worker_id: str, reason: str = "killed by the simulation") -> None:
        """The worker process dies (as if OOM-killed)."""
        n = self.nodes[node]
        w = n.workers.get(worker_id)
        if w is not None and w.alive:
            n._kill(w)
            self.kernel.inject(node, WorkerCrashed(worker_id=worker_id, reason=reason))

    def partition(self, a: Iterable[str], b: Iterable[str] | None = None, duration: float | None = None) -> int:
        net = self.kernel.network
        pid = net.partition(sorted(a), None if b is None else sorted(b))
        self.kernel.note("*", f"partition {sorted(a)} | {'rest' if b is None else sorted(b)}")
        if duration is not None:
            self.kernel.call_after(duration, net.heal, pid)
        return pid

    def isolate(self, address: str, duration: float | None = None) -> int:
        net = self.kernel.network
        pid = net.isolate(address)
        self.kernel.note(address, "isolate")
        if duration is not None:
            self.kernel.call_after(duration, net.heal, pid)
        return pid

    def heal(self, pid: int | None = None) -> None:
        self.kernel.network.heal(pid)
        self.kernel.note("*", "heal")

    def slow(self, address: str, factor: float, duration: float | None = None) -> None:
        """Multiply ``address``'s CPU costs (and, for a node, its workers'
        task times) by ``factor``."""
        k = self.kernel
        before = k.host(address).cpu_factor
        k.slow(address, factor)
        k.note(address, f"slow x{factor:g}")
        if duration is not None:
            k.call_after(duration, k.slow, address, before)

    def pause(self, address: str, duration: float, timers_first: bool = True) -> bool:
        """Stop ``address`` (the head, a node, a GCS replica or a driver) for
        ``duration`` seconds, as SIGSTOP and SIGCONT would (see
        ``SimKernel.pause``): the head's monitor, a node's heartbeats, a
        driver's program stand still; what is sent to it waits.  A node's
        workers carry on.  Returns False if it is down."""
        return self.kernel.pause(address, duration, timers_first)

    def link_fault(self, src: Iterable[str] | None = None, dst: Iterable[str] | None = None, *, drop: float = 0.0,
                   delay: float = 0.0, duplicate: float = 0.0, duration: float | None = None) -> int:
        net = self.kernel.network
        rid = net.add_fault(None if src is None else sorted(src), None if dst is None else sorted(dst),
                            drop=drop, delay=delay, duplicate=duplicate)
        if duration is not None:
            self.kernel.call_after(duration, net.remove_fault, rid)
        return rid

    def stall(self, src: Iterable[str] | None, dst: Iterable[str] | None, duration: float) -> int:
        """The links from ``src`` to ``dst`` stall for ``duration`` seconds
        (as TCP connections may): what is sent on them meanwhile arrives in
        one burst, in the order sent, when the stall ends (a heartbeat storm
        when ``dst`` is the head)."""
        if duration <= 0:
            raise ValueError(f"stall: duration must be > 0 seconds, got {duration!r}")
        net = self.kernel.network
        rid = net.add_fault(None if src is None else sorted(src), None if dst is None else sorted(dst),
                            hold_until=self.now + duration)
        self.kernel.call_after(duration, net.remove_fault, rid)
        return rid

    def install(self, schedule: FaultSchedule, *, offset: float = 0.0) -> Installed:
        """Arm a fault schedule.  ``Crash``/``Restart`` of a node become
        ``CrashNode``/``AddNode`` (nodes come back under new addresses);
        replicas restart in place, empty; ``Crash("head", restart_after)``
        becomes ``CrashHead`` (the head's host, its replicas with it; a
        new head recovers from the survivors)."""
        events = []
        for t, f in schedule:
            if isinstance(f, Crash) and f.address == "head":
                f = CrashHead(f.restart_after)  # (with its replicas; it comes back recovered)
            elif isinstance(f, Crash) and f.address in self.nodes:
                f = CrashNode(f.address, f.restart_after)
            elif isinstance(f, Restart) and f.address in self.nodes:
                f = AddNode(like=f.address)
            events.append((t, f))
        return FaultSchedule(events).install(self.kernel, restart=self.restart_factory, offset=offset)

    def random_faults(self, seed: int, *, horizon: float, start: float = 0.0, protect: Iterable[str] = ("node:0",),
                      replicas: bool = False, **rates: Any) -> FaultSchedule:
        """A schedule drawn from ``seed`` over the current nodes (and the GCS
        replicas with ``replicas=True``), minus ``protect``; ``rates`` as
        ``FaultSchedule.random`` (``crash_rate``, ``restart_after``,
        ``partition_rate``, ``slow_rate``, ``link_fault_rate``, ...)."""
        hosts = list(self.nodes) + (self.replicas if replicas else [])
        return FaultSchedule.random(seed, hosts=hosts, horizon=horizon, start=start, protect=protect, **rates)

    # ------------------------------------------------------------------ kernel hooks
    def _on_crash(self, kernel: SimKernel, address: str) -> None:
        node = self.nodes.get(address)
        if node is None:
            return
        now = kernel.now
        node.crashed(now)
        self.events.append((now, "crash", address))
        for r in sorted(r for r, n in self.replica_node.items() if n == address):
            kernel.crash(r)  # the GCS replicas its host ran die with it
        for d in list(self.drivers.values()):
            if d.node == address and d.alive:
                # (the program hears of it before it stops: what a driver
                # whose daemon died is told)
                d.connection_lost(f"its node {address} crashed")
                kernel.crash(d.address)
        if self.detect == "omniscient":
            kernel.inject("head", NodeDied(node_id=address, stimulus_id=f"node-died:{address}"), at=now + self.detect_delay)

    def _on_restart(self, kernel: SimKernel, address: str) -> None:
        if address in self.replicas:
            self.events.append((kernel.now, "restart", address))
        host = kernel.hosts.get(address)
        if host is not None:
            self._boot(host)

    # ------------------------------------------------------------------ reporting
    def trace_hash(self) -> str:
        t = self.kernel.trace
        return t.hexdigest() if t is not None else ""

    def stats(self) -> dict[str, Any]:
        s = self.kernel.stats()
        s["nodes_alive"] = len(self.alive_nodes())
        s["tasks_finished"] = self.tasks_finished()
        if self.kernel.trace is not None:
            s["trace"] = self.trace_hash()
        return s

    def summary(self, print_it: bool = True) -> str:
        """One line: counters and the trace hash (printed by default)."""
        line = self.kernel.summary(print_it=False) + f" tasks={self.tasks_finished()}"
        if print_it:
            print(line)
        return line

    def validate_all(self) -> None:
        """Check every live machine's invariants now."""
        for h in self.kernel.hosts.values():
            if h.alive and h.machine is not None:
                v = getattr(h.machine, "validate", None)
                if v is not None:
                    v()
