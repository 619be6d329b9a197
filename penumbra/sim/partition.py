"""One simulation across several processes: conservative time windows.

Theory of operation
-------------------
The virtual cluster's *machines* (the head, each GCS replica, each node with
the drivers and workers on it) are dealt out over ``partitions`` worker
processes.  Every worker builds the cluster from the same ``SimSpec``, but
only its own machines (``SimCluster(machines=...)``): the others are
stand-ins placed on the network (``kernel.add_remote``), which messages can
be sent to and which never run, and the workload takes the same ids for
them (``cluster.reserve_driver``), so ids, job numbers and addresses agree
everywhere while memory per process falls with the number of partitions.

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

**Processes.**  ``processes=True`` (default): partition 0 runs in the
calling process, each other one in a local child process
(``multiprocessing``, fork), talking over pipes; a child pickles its
outgoing batches per destination and the coordinator passes the bytes on
unread.  ``False`` runs the partitions one after another in this process
(for tests and as the reference).  With an ``address`` (or ``api="ray"``)
every partition is an actor on a running penumbra (or Ray) cluster instead,
the window exchange riding on actor calls (``partition_actors``); the
result and the hash are the same.

**Where things live.**  ``partition_step``: the trace, the specs and one
partition's window step (what every runner hosts); ``partition_actors``:
partitions as actors through Ray Core's API; this module: the runners
(this process, local children) and the coordinator.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import pickle
import time
from collections.abc import Callable
from typing import Any

from .partition_actors import ActorCluster
from .partition_step import (  # noqa: F401 - (re-exported: callers use them from here)
    PartitionError,
    PartitionTrace,
    ScalabilitySpec,
    SimSpec,
    _first_arrival,
    _Partition,
)

__all__ = ["PartitionError", "PartitionTrace", "PartitionedResult", "ScalabilitySpec", "SimSpec",
           "run_partitioned"]



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
                finished = p.finished() if msg[3] else None
                busy += time.process_time() - t0
                conn.send(("out", (out, nxt, n, first, finished)))
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
    # per mark asked for: (the end of the first window reaching it, tasks finished by then)
    marks: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    runner: str = "processes"    # where the partitions ran: "here", "processes" or "actors on <where>"
    build_wall_s: float = 0.0    # wall time to build and boot every partition, before the first window
    windows_wall_s: float = 0.0  # wall time of all the windows (the part partition_cpu_s is spent in)
    # each partition's machines built (hosts), and its process's peak memory
    # (MiB; with processes=False, every partition reports this one process)
    partition_hosts: list[int] = dataclasses.field(default_factory=list)
    partition_peak_rss_mb: list[float] = dataclasses.field(default_factory=list)


class _Local:
    """A partition run in this process, behind the same calls as a worker."""

    def __init__(self, spec: SimSpec, index: int, count: int) -> None:
        self.p = _Partition(spec, index, count)
        self.cpu = 0.0
        self._out: Any = None

    def start(self) -> float:
        return self.p.min_latency()

    def send_advance(self, until: float, inbound: list, count: bool = False) -> None:
        t0 = time.process_time()
        out, nxt = self.p.advance(until, inbound)
        finished = self.p.finished() if count else None
        self.cpu += time.process_time() - t0
        self._out = (out, nxt, sum(map(len, out)), _first_arrival(out), finished)

    def recv_out(self) -> tuple:
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

    def send_advance(self, until: float, inbound: list, count: bool = False) -> None:
        self.conn.send(("advance", until, inbound, count))

    def recv_out(self) -> tuple:
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
                    processes: bool = True, on_window: Callable[[float], Any] | None = None,
                    address: str | None = None, api: str = "penumbra", token: str | None = None,
                    marks: tuple[float, ...] | list[float] = ()) -> PartitionedResult:
    """Simulate ``spec`` to ``until`` seconds over ``partitions`` partitions.

    Args:
        window: the synchronisation window (default and maximum: the
            network's smallest latency between machines).
        processes: one child process per partition (default), or all in
            this process, one after another.
        on_window: called with the simulated time after each window.
        address: run each partition as an actor on the cluster there
            (``HOST:PORT``, ``"auto"``: the one started last on this
            machine, ``"local"``: a new one here) instead of as a local
            process (see ``partition_actors``).
        api: ``"penumbra"`` (default) or ``"ray"``: the Ray Core API the
            actors are made with; ``"ray"`` runs them on a Ray cluster
            (``address``) or a local Ray instance (``address=None``).
        token: the penumbra cluster's token (default: as ``penumbra.init``
            finds it: ``$PENUMBRA_TOKEN`` or ``~/.penumbra/clusters.json``).
        marks: simulated times at which to count the tasks finished; the
            count is taken at the end of the first window reaching each
            (``PartitionedResult.marks``).  Marks do not move windows, so
            they do not change the run.

    Raises:
        ValueError: ``partitions`` < 1, a window longer than the smallest
            latency between machines, a latency of 0 (nothing to overlap),
            or ``processes=False`` with actors asked for.
        PartitionError: a worker failed (its error is in the message); the
            cluster at ``address`` cannot be reached or has fewer CPUs than
            ``partitions`` (one per partition actor).
    """
    if not (isinstance(partitions, int) and partitions >= 1):
        raise ValueError(f"partitions must be a whole number >= 1, got {partitions!r}")
    actors = address is not None or api != "penumbra"
    if actors and not processes:
        raise ValueError("processes=False runs every partition in this process; an address (or api='ray') runs "
                         "each as an actor on a cluster: ask for one or the other")
    marks = sorted(marks)
    ctx = multiprocessing.get_context("fork") if processes and not actors else None
    workers: list[Any] = []
    cluster: ActorCluster | None = None
    w0 = time.perf_counter()
    try:
        if actors:
            cluster = ActorCluster(address, api, token)
            runner = f"actors on {cluster.where}"
            workers = cluster.partitions(spec, partitions)  # type: ignore[assignment]
        else:
            # Partition 0 runs here, in the coordinator (one process fewer to
            # schedule and to wake each window); the others in child
            # processes, forked first: forked after partition 0 was built,
            # each would carry a copy-on-write image of it.
            runner = "processes" if processes else "here"
            made: dict[int, Any] = {}
            for i in [*range(1, partitions), 0]:
                made[i] = _Remote(ctx, spec, i, partitions) if processes and i else _Local(spec, i, partitions)
                workers.append(made[i])
            workers = [made[i] for i in range(partitions)]
        lat = min(w.start() for w in workers)
        w_first = time.perf_counter()
        build_wall = w_first - w0
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
        counted: list[tuple[float, int]] = []
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
            count = len(counted) < len(marks) and t >= marks[len(counted)]
            for i in list(range(1, partitions)) + [0]:  # the children first: they run meanwhile
                workers[i].send_advance(t, inbound[i], count)
            outs = cluster.gather(workers) if cluster is not None else [w.recv_out() for w in workers]
            e0 = time.perf_counter()
            inbound = [[out[0][j] for out in outs] for j in range(partitions)]
            nxt = min(out[1] for out in outs)
            if t < spec.setup_at:
                nxt = min(nxt, spec.setup_at)  # the workload starts then
            if len(counted) < len(marks):
                nxt = min(nxt, marks[len(counted)])  # a window must end at or just after each mark
            for out in outs:
                batches += out[2]
                if out[3] < nxt:
                    nxt = out[3]
            if count:
                done = sum(out[4] for out in outs)
                while len(counted) < len(marks) and t >= marks[len(counted)]:
                    counted.append((t, done))
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
        if cluster is not None:
            cluster.close()
    digests: dict[str, str] = {}
    for r in results:
        digests.update(r["digests"])
    return PartitionedResult(
        partitions=partitions, window=window, windows=n, trace_hash=PartitionTrace.combine(digests),
        tasks_finished=sum(r["tasks_finished"] for r in results), events=sum(r["events"] for r in results),
        wall_s=time.perf_counter() - w0, workload_wall_s=w_end - (w_setup or w_end), exchange_s=ex, exchanged_batches=batches,
        partition_cpu_s=[r["cpu_s"] for r in results], digests=digests, marks=counted, runner=runner,
        partition_hosts=[r.get("hosts", 0) for r in results],
        partition_peak_rss_mb=[r.get("peak_rss_mb", 0.0) for r in results],
        build_wall_s=build_wall, windows_wall_s=w_end - w_first)


def run_partitioned_point(n: int, preset: str, seed: int, *, partitions: int, warm_tasks: float = 40,
                          measure_tasks: float = 80, cpus: int = 16, window: int = 64, batch: int = 16,
                          setup_at: float = 0.5, address: str | None = None, api: str = "penumbra",
                          token: str | None = None, on_progress: Callable[[float], Any] | None = None,
                          **_ignored: Any) -> dict[str, Any]:
    """One point of Figure 8b (``experiments_fig8.run_scalability_point``)
    split over ``partitions`` partitions: local processes, or actors on the
    cluster at ``address`` (``run_partitioned``).  The drivers start at
    ``setup_at`` (a fixed time, the same in every partition: after the
    cluster is up, ~0.31 s at 1,000 nodes), then warm up and measure as the
    one-process point does.  The hash is the partitioned run's
    (``PartitionTrace``: the same for any number of partitions, not the
    plain simulator's)."""
    from .experiments_results import node_task_rate, preset_costs

    rate = node_task_rate(preset_costs(preset))
    t0 = setup_at + warm_tasks / rate
    span = measure_tasks / rate
    until = t0 + span
    spec = ScalabilitySpec(nodes=n, seed=seed, cpus=cpus, preset=preset, window=window, batch=batch,
                           setup_at=setup_at)
    shown = [-1.0]

    def tick(t: float) -> None:  # a window is ~30 us of simulated time: report each 1% only
        if on_progress is not None and t / until - shown[0] >= 0.01:
            shown[0] = t / until
            on_progress(min(1.0, shown[0]))

    r = run_partitioned(spec, partitions, until, address=address, api=api, token=token,
                        marks=(t0, t0 + span / 2, until), on_window=tick)
    (ta, fa), (tb, fb), (tc, fc) = r.marks
    first, second = (fb - fa) / (tb - ta), (fc - fb) / (tc - tb)
    return {
        "nodes": n, "throughput": (fc - fa) / (tc - ta), "per_node": (fc - fa) / (tc - ta) / n, "tasks": fc - fa,
        "sim_seconds": tc - ta, "steady": abs(first - second) / max(first, second, 1) if max(first, second) else 0.0,
        "boot_wall": r.build_wall_s, "wall": r.workload_wall_s, "cpu": sum(r.partition_cpu_s),
        "sim_tasks_per_wall_s": r.tasks_finished / r.workload_wall_s if r.workload_wall_s else 0.0,
        "sim_tasks_per_cpu_s": r.tasks_finished / sum(r.partition_cpu_s) if sum(r.partition_cpu_s) else 0.0,
        "hash": r.trace_hash, "partitioned": r,
    }
