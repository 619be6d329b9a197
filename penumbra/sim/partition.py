"""One simulation across several processes: conservative time windows.

Theory of operation
-------------------
The virtual cluster's *machines* (the head, each GCS replica, each node with
the drivers and workers on it) are dealt out over ``partitions`` worker
processes.  Every worker builds the whole cluster from the same ``SimSpec``
(so ids, job numbers and addresses agree everywhere) and then *disowns* the
endpoints of the machines it does not run: their queued work goes stale
(their epoch moves on) and they never run.

The workers advance in lockstep windows of simulated time no longer than
the network's smallest latency between two machines (``W``)::

    for each window [T, T + W):
        every worker: deliver the batches addressed to it (sorted), then
                      run its own kernel to T + W
        exchange:     the batches each sent to other machines in the window

A message sent in a window arrives at least ``W`` later, so in a later
window: no worker ever receives something in its past (the classic
conservative, YAWNS-style synchronisation).  Messages between two machines
*always* go through the exchange, even when both are in one partition, so
the order in which a host receives them does not depend on how the machines
were dealt out: at a window's end the batches are delivered in the order
(arrival time, destination, source) -- stable, so one source's batches keep
the order it sent them in.  Messages within a machine (a node and its
drivers and workers: loopback) never leave its partition.

**Identical for any number of partitions.**  A host's events then come in
the same order whatever the partitioning, and so does everything it does.
The trace is hashed per address (``PartitionTrace``: each address's records
in its own running hash, pickled without memo so that equal values give
equal bytes in every process) and the run's hash combines the addresses'
hashes in sorted order.  Results (tasks finished) add up over partitions.
So 1, 2 or 3 partitions give the same hash and the same results; that is
tested (``tests/test_sim_cluster.py``).  This hash is not the plain
``SimKernel``'s (whose equal-time ties break by global insertion order);
a run with ``partitions=1`` is the reference.

**Scope.**  Fault-free runs: crashes, network partitions and per-message
fault rules act on one process's view and are refused (``PartitionError``).
The per-host RNG rule holds (machines draw from ``kernel.derive_rng``).
Each worker still builds every machine; idle, disowned ones cost memory but
no time.

**Processes.**  ``processes=True`` (default): partition 0 runs in the
calling process, each other one in a local child process
(``multiprocessing``, fork), talking over pipes; a child pickles its
outgoing batches per destination and the coordinator passes the bytes on
unread.  ``False`` runs the partitions one after another in this process
(for tests and as the reference).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import multiprocessing
import pickle
import time
from collections.abc import Callable
from typing import Any

from .trace import Trace

__all__ = ["PartitionError", "PartitionTrace", "PartitionedResult", "ScalabilitySpec", "SimSpec",
           "run_partitioned"]


class PartitionError(RuntimeError):
    """A partitioned run cannot do what was asked (see the module's Scope)."""


# ===========================================================================
# the trace, hashed per address


class PartitionTrace(Trace):
    """A ``Trace`` whose hash is the same however the addresses are dealt
    out over processes: each address's records feed its own hash.

    ``digests(owned)`` gives the owned addresses' hashes; ``combine`` makes
    the run's hash from all of them."""

    _PER = 512  # records of one address per hashed chunk

    def __init__(self, fields: str = "key") -> None:
        super().__init__(fields=fields)
        self._per: dict[str, list] = {}
        self._hashers: dict[str, Any] = {}

    def _flush(self) -> None:
        rec = self._rec
        if len(rec) < 4096:
            return
        self._spread(rec)

    def _spread(self, rec: list) -> None:
        per = self._per
        for r in rec:
            lst = per.get(r[1])
            if lst is None:
                lst = per[r[1]] = []
            lst.append(r)
            if len(lst) >= self._PER:
                self._hash_into(r[1], lst)
                per[r[1]] = []
        self._hashed += len(rec)
        self._rec = []

    def _hash_into(self, address: str, lst: list, hasher: Any = None) -> None:
        h = hasher if hasher is not None else self._hashers.get(address)
        if h is None:
            h = self._hashers[address] = hashlib.blake2b(digest_size=16)
        buf = io.BytesIO()
        p = pickle.Pickler(buf, 4)
        p.fast = True  # no memo: equal values give equal bytes in any process
        p.dump(lst)
        h.update(buf.getvalue())

    def digests(self, owned: Callable[[str], bool]) -> dict[str, str]:
        """``{address: hash}`` of the addresses ``owned`` says are ours."""
        self._spread(self._rec)
        out = {}
        for a in sorted(set(self._per) | set(self._hashers)):
            if not owned(a):
                continue
            h = self._hashers.get(a)
            h = h.copy() if h is not None else hashlib.blake2b(digest_size=16)
            if self._per.get(a):
                self._hash_into(a, self._per[a], h)
            out[a] = h.hexdigest()
        return out

    @staticmethod
    def combine(digests: dict[str, str]) -> str:
        h = hashlib.blake2b(digest_size=16)
        for a in sorted(digests):
            h.update(f"{a}={digests[a]};".encode())
        return h.hexdigest()

    def hexdigest(self) -> str:
        return self.combine(self.digests(lambda a: True))


# ===========================================================================
# what to simulate


class SimSpec:
    """What a partitioned run simulates.  Picklable (it goes to every
    worker); each method must act the same in every worker.

    ``build(trace)``: a ``SimCluster`` made with ``start=False`` and
    ``trace=trace``.  ``setup(cluster, owned)``: at ``setup_at`` seconds of
    simulated time, in every worker: create what the workload needs for
    every node (ids must agree), and start it only where ``owned(address)``.
    """

    setup_at: float = 0.0
    trace_fields: str = "key"  # what a trace record holds (see ``Trace``)

    def build(self, trace: Trace) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def setup(self, cluster: Any, owned: Callable[[str], bool]) -> None:  # pragma: no cover
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class ScalabilitySpec(SimSpec):
    """Figure 8b's workload: ``nodes`` nodes, one closed-loop driver each
    (``experiments.scalability_cluster``), started at ``setup_at``."""

    nodes: int = 8
    seed: int = 0
    cpus: int = 4
    preset: str = "paper"
    window: int = 64
    batch: int = 16
    setup_at: float = 0.5
    trace_fields: str = "type"  # as experiments_fig8.scalability_cluster

    def build(self, trace: Trace) -> Any:
        from .experiments_fig8 import scalability_cluster
        from .experiments_results import preset_costs

        c = scalability_cluster(self.nodes, preset_costs(self.preset), self.seed, cpus=self.cpus,
                                trace=trace, start=False)
        return c

    def setup(self, cluster: Any, owned: Callable[[str], bool]) -> None:
        from .workloads import ClosedLoop

        for a in list(cluster.nodes):
            d = cluster.driver(a)  # in every worker: job ids agree
            if owned(a):
                ClosedLoop(d, window=self.window, batch=self.batch).start()


# ===========================================================================
# one partition


class _Standin:
    """The sender of a batch from another partition (never crashes here)."""

    epoch = 0
    crashed_at = float("-inf")


_STANDIN = _Standin()


def _deal(cluster: Any, partitions: int) -> dict[str, int]:
    """machine -> partition: the head in 0; replicas and nodes round-robin
    (in build order, the same in every worker)."""
    net = cluster.kernel.network
    out = {net.machine_of("head"): 0}
    for i, r in enumerate(cluster.replicas):
        out[net.machine_of(r)] = i % partitions
    for i, a in enumerate(cluster.nodes):
        out[net.machine_of(a)] = (i + len(cluster.replicas)) % partitions
    return out


class _Partition:
    """Partition ``index`` of ``count``: a whole cluster, running its share."""

    def __init__(self, spec: SimSpec, index: int, count: int) -> None:
        self.spec, self.index, self.count = spec, index, count
        self.trace = PartitionTrace(spec.trace_fields)
        c = self.cluster = spec.build(self.trace)
        if c._started:
            raise PartitionError("SimSpec.build must make the cluster with start=False "
                                 "(a partitioned run disowns machines before they boot)")
        self.net = c.kernel.network
        self.part_of = _deal(c, count)
        c.start()
        self._disown()
        self.net.capture = []
        self.setup_done = False
        self._mine: list = []  # batches between this partition's own machines, for the next window

    def owned(self, address: str) -> bool:
        m = self.net.machine_of(address)
        return self.part_of.get(m, 0) == self.index

    def _disown(self) -> None:
        for a, ep in self.cluster.kernel.endpoints.items():
            if not self.owned(a) and not getattr(ep, "_disowned", False):
                ep.epoch += 1  # what is queued for it goes stale
                ep._disowned = True
                if hasattr(ep, "pending"):
                    ep.pending = {}

    def min_latency(self) -> float:
        return self.net.min_machine_latency()

    def advance(self, until: float, inbound: list) -> tuple[list[list], float]:
        """Deliver ``inbound`` batches (and those this partition sent to its
        own machines last window), run to ``until``; returns the batches
        sent to other partitions' machines (per destination partition; its
        own entry stays empty) and the time of the first thing left to do
        here (``inf``: nothing)."""
        c = self.cluster
        k = c.kernel
        net = self.net
        if net._cut or net._faulty:
            raise PartitionError("partitioned runs are fault-free: network partitions and fault rules act "
                                 "on one process's view; run this simulation in one SimCluster instead")
        if not self.setup_done and until > self.spec.setup_at >= k.now:
            if k.now < self.spec.setup_at:
                self._deliver(inbound)
                inbound = []
                c.run(self.spec.setup_at)
            self.spec.setup(c, self.owned)
            self._disown()
            self.setup_done = True
        self._deliver(inbound)
        if until > k.now:
            c.run(until)
        out = self._collect()
        mine = self._mine = out[self.index]
        out[self.index] = []
        nxt = k._cal.first_time()
        for r in mine:
            if r[0] < nxt:
                nxt = r[0]
        return out, nxt

    def _deliver(self, chunks: list) -> None:
        # ``chunks``: per source partition, in partition order, a list of
        # batches or its pickle (bytes, passed through the coordinator as is)
        inbound = self._mine
        self._mine = []
        for ch in chunks:
            if ch:
                inbound += pickle.loads(ch) if isinstance(ch, bytes) else ch
        if not inbound:
            return
        k = self.cluster.kernel
        eps = k.endpoints
        push, eid = k._push, k._eid
        inbound.sort(key=lambda r: (r[0], r[1], r[2]))  # stable: a source keeps its order
        if inbound[0][0] < k.now:
            raise PartitionError(f"a batch for {inbound[0][1]!r} arrives at {inbound[0][0]!r}, before this "
                                 f"partition's time {k.now!r}: the window is longer than a latency")
        for arrival, dst, src, msgs, depart in inbound:
            ep = eps[dst]
            push((arrival, 1, next(eid), ep._on_net, msgs, ep.epoch, _STANDIN, 0, depart))

    def _collect(self) -> list[list]:
        net = self.net
        out: list[list] = [[] for _ in range(self.count)]
        part_of, machine = self.part_of, net._machine
        for r in net.capture:
            out[part_of.get(machine[r[3]], 0)].append((r[0], r[3], r[6], r[4], r[8]))
        for link in net.captured_links:
            link.last = None  # shipped: later sends start a new batch
        net.capture = []
        net.captured_links = []
        return out

    def result(self) -> dict[str, Any]:
        c = self.cluster
        hosts = c.kernel.hosts
        return {
            "digests": self.trace.digests(self.owned),
            "tasks_finished": sum(n.finished for a, n in c.nodes.items() if self.owned(a)),
            "events": sum(h.handled for a, h in hosts.items() if self.owned(a)),
            "now": c.now,
        }


def _first_arrival(out: list[list]) -> float:
    return min((r[0] for o in out for r in o), default=float("inf"))


def _serve(conn: Any, spec: SimSpec, index: int, count: int) -> None:
    """A worker process: build partition ``index`` and serve the coordinator."""
    try:
        p = _Partition(spec, index, count)
        conn.send(("ready", p.min_latency()))
        busy = 0.0
        while True:
            msg = conn.recv()
            if msg[0] == "advance":
                t0 = time.process_time()
                out, nxt = p.advance(msg[1], msg[2])
                n, first = sum(map(len, out)), _first_arrival(out)
                # pickled here, per destination: the coordinator only moves bytes
                out = [pickle.dumps(o, pickle.HIGHEST_PROTOCOL) if o else b"" for o in out]
                busy += time.process_time() - t0
                conn.send(("out", (out, nxt, n, first)))
            elif msg[0] == "result":
                r = p.result()
                r["cpu_s"] = busy
                conn.send(("result", r))
            else:
                break
    except BaseException as e:  # report, do not hang the coordinator
        try:
            conn.send(("error", f"partition {index}: {type(e).__name__}: {e}"))
        except Exception:
            pass
    finally:
        conn.close()


# ===========================================================================
# the coordinator


@dataclasses.dataclass
class PartitionedResult:
    partitions: int
    window: float
    windows: int
    trace_hash: str
    tasks_finished: int
    events: int
    wall_s: float
    workload_wall_s: float       # wall time of the windows after the workload started (setup_at)
    exchange_s: float            # coordinator time spent routing batches (wall)
    exchanged_batches: int       # batches that crossed between partitions
    partition_cpu_s: list[float]  # each partition's CPU time in advance()
    digests: dict[str, str] = dataclasses.field(repr=False, default_factory=dict)


class _Local:
    """A partition run in this process, behind the same calls as a worker."""

    def __init__(self, spec: SimSpec, index: int, count: int) -> None:
        self.p = _Partition(spec, index, count)
        self.cpu = 0.0
        self._out: Any = None

    def start(self) -> float:
        return self.p.min_latency()

    def send_advance(self, until: float, inbound: list) -> None:
        t0 = time.process_time()
        out, nxt = self.p.advance(until, inbound)
        self.cpu += time.process_time() - t0
        self._out = (out, nxt, sum(map(len, out)), _first_arrival(out))

    def recv_out(self) -> tuple[list, float, int, float]:
        return self._out

    def result(self) -> dict[str, Any]:
        r = self.p.result()
        r["cpu_s"] = self.cpu
        return r

    def close(self) -> None:
        pass


class _Remote:
    """A partition in a child process."""

    def __init__(self, ctx: Any, spec: SimSpec, index: int, count: int) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, spec, index, count), daemon=True,
                                name=f"penumbra-sim-partition-{index}")
        self.proc.start()
        child.close()

    def _recv(self, want: str) -> Any:
        msg = self.conn.recv()
        if msg[0] == "error":
            raise PartitionError(msg[1])
        assert msg[0] == want, msg
        return msg[1]

    def start(self) -> float:
        return self._recv("ready")

    def send_advance(self, until: float, inbound: list) -> None:
        self.conn.send(("advance", until, inbound))

    def recv_out(self) -> tuple[list, float, int, float]:
        return self._recv("out")

    def result(self) -> dict[str, Any]:
        self.conn.send(("result",))
        return self._recv("result")

    def close(self) -> None:
        try:
            self.conn.send(("stop",))
        except (OSError, BrokenPipeError):
            pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def run_partitioned(spec: SimSpec, partitions: int, until: float, *, window: float | None = None,
                    processes: bool = True, on_window: Callable[[float], Any] | None = None) -> PartitionedResult:
    """Simulate ``spec`` to ``until`` seconds over ``partitions`` partitions.

    Args:
        window: the synchronisation window (default and maximum: the
            network's smallest latency between machines).
        processes: one child process per partition (default), or all in
            this process, one after another.
        on_window: called with the simulated time after each window.

    Raises:
        ValueError: ``partitions`` < 1, a window longer than the smallest
            latency between machines, or a latency of 0 (nothing to overlap).
        PartitionError: a worker failed (its error is in the message).
    """
    if not (isinstance(partitions, int) and partitions >= 1):
        raise ValueError(f"partitions must be a whole number >= 1, got {partitions!r}")
    ctx = multiprocessing.get_context("fork") if processes else None
    workers: list[Any] = []
    w0 = time.perf_counter()
    try:
        # Partition 0 runs here, in the coordinator (one process fewer to
        # schedule and to wake each window); the others in child processes.
        for i in range(partitions):
            workers.append(_Remote(ctx, spec, i, partitions) if processes and i else _Local(spec, i, partitions))
        lat = min(w.start() for w in workers)
        if lat <= 0:
            raise ValueError("a partitioned run needs a positive network latency between machines (the "
                             "window that partitions may run ahead); this cost model has 0")
        if window is None:
            window = lat
        elif not 0 < window <= lat:
            raise ValueError(f"window must be in (0, {lat:g}] s (the smallest latency between machines), "
                             f"got {window!r}")
        inbound: list[list] = [[] for _ in range(partitions)]  # per partition: a chunk from each
        w_setup = None
        t, n, ex, batches, k, skipped = 0.0, 0, 0.0, 0, 0, 0
        nxt = 0.0
        while t < until:
            # Windows lie on the grid [kW, (k+1)W), the same for any
            # partitioning; windows where nothing at all is due are skipped
            # (the first thing due anywhere decides; a stale entry of a
            # disowned machine can only make a window run for nothing).
            jump = int(nxt // window) if nxt < until else int(until // window)
            if jump > k:
                skipped += jump - k
                k = jump
            k += 1
            t = min(until, k * window)
            if w_setup is None and t > spec.setup_at:
                w_setup = time.perf_counter()
            for i in list(range(1, partitions)) + [0]:  # the children first: they run meanwhile
                workers[i].send_advance(t, inbound[i])
            outs = [w.recv_out() for w in workers]
            e0 = time.perf_counter()
            inbound = [[out[0][j] for out in outs] for j in range(partitions)]
            nxt = min(out[1] for out in outs)
            if t < spec.setup_at:
                nxt = min(nxt, spec.setup_at)  # the workload starts then
            for out in outs:
                batches += out[2]
                if out[3] < nxt:
                    nxt = out[3]
            ex += time.perf_counter() - e0
            n += 1
            if on_window is not None:
                on_window(t)
        # deliver nothing more: batches still in flight stay in flight
        w_end = time.perf_counter()
        results = [w.result() for w in workers]
    finally:
        for w in workers:
            w.close()
    digests: dict[str, str] = {}
    for r in results:
        digests.update(r["digests"])
    return PartitionedResult(
        partitions=partitions, window=window, windows=n, trace_hash=PartitionTrace.combine(digests),
        tasks_finished=sum(r["tasks_finished"] for r in results), events=sum(r["events"] for r in results),
        wall_s=time.perf_counter() - w0, workload_wall_s=w_end - (w_setup or w_end), exchange_s=ex, exchanged_batches=batches,
        partition_cpu_s=[r["cpu_s"] for r in results], digests=digests)
