"""How fast and how big can the simulator go, and how well does it predict?

Three parts (all by default; ``--only`` picks one):

``throughput``
    Figure 8b's workload (empty tasks, one closed-loop driver per node) on
    ``--nodes`` virtual nodes (default 1,000) under the PAPER cost model:
    boot, warm up, then count simulated tasks finished per wall-clock second
    and per CPU second of this process.  ``--breakdown`` also times the core
    machines' ``handle`` calls (the part the simulator cannot speed up);
    ``--profile`` prints the top of a cProfile of the measured window.
``big``
    A ``--big-nodes`` (default 10,000) node cluster runs the same workload
    for a short window, in a child process so that its peak memory
    (``ru_maxrss``) is its own.
``partitions``
    One simulation across processes (``penumbra.sim.partition``): Figure
    8b's workload on ``--nodes`` nodes, started at ``--setup-at`` s and run
    for ``--measure`` tasks per node, with 1 process and with
    ``--partitions`` (default 2) processes, and with ``--address`` (or
    ``--ray``) as actors on that cluster too: the trace hashes (must agree),
    wall time, each partition's CPU time, and the window exchange (batches
    between partitions, their pickling cost, the lockstep's cost a window)
    with a model of 16 and 64 partitions.
``fidelity``
    The real runtime on this machine (``penumbra.init(num_cpus=2)``): async
    and sync empty tasks/s, ``--reps`` times (the machine is shared: the
    spread is reported), with each process's CPU time per task; the LOCAL
    cost model is built from these with ``CostModel.from_benchmark`` and the
    simulator's prediction of the same workloads on one node is compared
    with the measurement.  ``--write-local`` prints the ``from_benchmark``
    arguments to paste into ``penumbra/sim/costs.py``.

Times on a shared machine vary by 2x between runs: run more than once.

Run: ``python bench/bench_sim.py [--only throughput|big|partitions|fidelity] [--nodes 1000]``
(``--only partitions --address local`` adds actors on a new local cluster).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from penumbra.sim import experiments as E  # noqa: E402
from penumbra.sim.costs import LOCAL, PAPER, CostModel  # noqa: E402

TARGET_TASKS_PER_WALL_S = 10_000  # one process, 1,000 nodes (issue 17)
TARGET_BIG_MB = 4_000  # peak memory of the 10,000-node run (issue 17)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ===========================================================================
# throughput


def throughput(nodes: int, warm: float, measure: float, breakdown: bool, profile: bool, cpus: int = 16) -> dict:
    from collections import defaultdict

    from penumbra.sim.workloads import ClosedLoop

    t0 = time.perf_counter()
    c = E.scalability_cluster(nodes, PAPER, 0, cpus=cpus)
    c.wait_ready(timeout=600)
    boot = time.perf_counter() - t0
    for a in list(c.nodes):
        ClosedLoop(c.driver(a), window=64, batch=16).start()
    rate = E.node_task_rate(PAPER)
    c.run_for(warm / rate)
    acc: dict = defaultdict(float)
    if breakdown:
        pt = time.perf_counter
        for h in c.kernel.hosts.values():
            m = h.machine
            orig = m.handle

            def timed(ev, now, orig=orig, kind=h.kind):
                t = pt()
                r = orig(ev, now)
                acc[kind] += pt() - t
                return r

            m.handle = timed
    f0, s0 = c.tasks_finished(), c.now
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    w0, p0 = time.perf_counter(), time.process_time()
    c.run_for(measure / rate)
    wall, cpu = time.perf_counter() - w0, time.process_time() - p0
    if prof is not None:
        prof.disable()
    n = c.tasks_finished() - f0
    out = {
        "nodes": nodes, "boot_wall_s": boot, "tasks": n, "sim_seconds": c.now - s0,
        "simulated_tasks_per_s": n / (c.now - s0), "wall_s": wall, "cpu_s": cpu,
        "sim_tasks_per_wall_s": n / wall, "sim_tasks_per_cpu_s": n / cpu, "peak_rss_mb": _rss_mb(),
        "events": c.kernel.stats()["events_handled"],
    }
    if breakdown:
        core = sum(acc.values())
        out["core_handle_cpu_per_task_us"] = {k: v / n * 1e6 for k, v in acc.items()}
        out["core_share_of_cpu"] = core / cpu
    if prof is not None:
        import io
        import pstats

        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
        out["profile"] = s.getvalue()
    return out


# ===========================================================================
# a big cluster, in a child process


def big_child(nodes: int, measure: float, cpus: int, shards_per: int) -> None:
    from penumbra.core.gcs import GcsTiming
    from penumbra.core.layout import ClusterLayout, NodeShape
    from penumbra.core.specs import ResourceSet
    from penumbra.sim.cluster import SimCluster
    from penumbra.sim.workloads import ClosedLoop

    t0 = time.perf_counter()
    layout = ClusterLayout(
        nodes=(NodeShape(ResourceSet.of(CPU=cpus)),) * nodes,
        gcs_shards=max(1, nodes // shards_per), chain_length=1,
        gcs_timing=GcsTiming(heartbeat_interval=0.1, heartbeat_timeout=0.4),
        heartbeat_interval=0.5, node_timeout=5.0, gcs_retry_after=1.0,
    )
    c = SimCluster(layout, costs=PAPER, seed=0, trace="type")
    build = time.perf_counter() - t0
    c.wait_ready(timeout=600)
    boot = time.perf_counter() - t0
    rss_boot = _rss_mb()
    for a in list(c.nodes):
        ClosedLoop(c.driver(a), window=64, batch=16).start()
    rate = E.node_task_rate(PAPER)
    w = time.perf_counter()
    c.run_for(100 / rate)  # warm up: ~100 tasks per node
    f0, s0 = c.tasks_finished(), c.now
    w0 = time.perf_counter()
    c.run_for(measure / rate)
    wall = time.perf_counter() - w0
    n = c.tasks_finished() - f0
    print(json.dumps({
        "nodes": nodes, "gcs_shards": layout.gcs_shards, "hosts": len(c.kernel.hosts), "build_s": build,
        "boot_wall_s": boot, "boot_sim_s": s0 - (s0 - c.now) if False else None, "rss_after_boot_mb": rss_boot,
        "warm_wall_s": w0 - w, "tasks": n, "sim_seconds": c.now - s0,
        "simulated_tasks_per_s": n / (c.now - s0), "per_node": n / (c.now - s0) / nodes,
        "wall_s": wall, "sim_tasks_per_wall_s": n / wall, "total_tasks": c.tasks_finished(),
        "events": c.kernel.stats()["events_handled"], "peak_rss_mb": _rss_mb(),
        "total_wall_s": time.perf_counter() - t0, "trace": c.trace_hash(),
    }))


def big(nodes: int, measure: float, cpus: int, shards_per: int) -> dict:
    cmd = [sys.executable, __file__, "--big-child", str(nodes), "--measure", str(measure), "--cpus", str(cpus),
           "--shards-per", str(shards_per)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"the {nodes}-node run failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ===========================================================================
# one simulation across processes


def partitions(nodes: int, measure: float, setup_at: float, counts: list[int], address: str | None = None,
               api: str = "penumbra") -> dict:
    """Runs of 1 and ``counts[-1]`` partitions as local processes, and, with
    ``address`` (or ``api="ray"``), as actors on that cluster; the window
    exchange's costs; a model of 16 and 64 partitions."""
    import pickle

    from penumbra.sim import partition as P

    spec = P.ScalabilitySpec(nodes=nodes, setup_at=setup_at)
    until = setup_at + measure / E.node_task_rate(PAPER)
    kinds = {"processes": {}}
    if address is not None or api != "penumbra":
        kinds[f"actors ({api})"] = {"address": address, "api": api}
    runs: dict[str, dict[int, dict]] = {}
    for kind, kw in kinds.items():
        runs[kind] = {}
        for n in counts:
            r = P.run_partitioned(spec, n, until, processes=True, **kw)
            # what a window costs beyond the partitions' own work: the
            # slowest partition's CPU is the floor, the rest is the exchange
            # (calls, pickles, waking each other) and the machine's noise
            sync = (r.windows_wall_s - max(r.partition_cpu_s)) / r.windows
            runs[kind][n] = {"trace": r.trace_hash, "tasks": r.tasks_finished, "events": r.events,
                             "windows": r.windows, "window_s": r.window, "wall_s": r.wall_s,
                             "build_wall_s": r.build_wall_s, "workload_wall_s": r.workload_wall_s,
                             "windows_wall_s": r.windows_wall_s, "partition_cpu_s": r.partition_cpu_s,
                             "exchanged_batches": r.exchanged_batches, "coordinator_exchange_s": r.exchange_s,
                             "sync_per_window_us": sync * 1e6, "runner": r.runner,
                             "partition_hosts": r.partition_hosts, "partition_peak_rss_mb": r.partition_peak_rss_mb}
    # the exchange's cost per batch: pickle + unpickle a window's worth, as the pipes do
    p = P._Partition(P.ScalabilitySpec(nodes=min(nodes, 200), setup_at=setup_at), 0, 2)
    t, k, sample = 0.0, 0, []
    u2 = setup_at + 20 / E.node_task_rate(PAPER)
    while t < u2:
        k += 1
        t = min(u2, k * p.min_latency())
        out, _ = p.advance(t, [])
        sample += out[1]
    c0 = time.process_time()
    for _ in range(3):
        pickle.loads(pickle.dumps(sample, pickle.HIGHEST_PROTOCOL))
    per_batch = (time.process_time() - c0) / 3 / max(1, len(sample))
    # the lockstep alone: a window's round trip (calls, pipes, waking each
    # partition) with almost no work in it, on 2 nodes (median of 3: the
    # machine is shared)
    tiny = P.ScalabilitySpec(nodes=2, setup_at=0.01)
    lockstep: dict[str, dict[int, float]] = {}
    for kind, kw in kinds.items():
        lockstep[kind] = {}
        for n in counts:
            reps = []
            for _ in range(3):
                r = P.run_partitioned(tiny, n, 0.01 + 1500 * 30e-6, processes=True, **kw)
                reps.append((r.windows_wall_s - max(r.partition_cpu_s)) / r.windows)
            lockstep[kind][n] = statistics.median(reps)
    procs = runs["processes"]
    base, most = procs[counts[0]], procs[counts[-1]]
    tasks = base["tasks"]
    work = sum(base["partition_cpu_s"]) / tasks  # CPU a task in one process
    # batches between partitions a task, if machines are dealt out at
    # random: a fraction (P-1)/P of all inter-machine batches
    cross_per_task = most["exchanged_batches"] / tasks / ((counts[-1] - 1) / counts[-1]) if counts[-1] > 1 else 0.0
    windows_per_task = most["windows"] / tasks
    model: dict[str, list[dict]] = {}
    for kind in runs:
        # a window's lockstep, measured with counts[-1] partitions, taken to
        # grow with the partitions the driver calls one by one
        sync = max(0.0, lockstep[kind][counts[-1]])
        model[kind] = []
        for n in (2, 16, 64):
            for size in (nodes, 10 * nodes, 100 * nodes):
                # each batch between partitions is pickled by its sender and
                # unpickled by its receiver (the driver only moves bytes);
                # windows are simulated time, tasks grow with the nodes: the
                # windows a task falls as 1/nodes (the work a task is taken
                # not to grow with the cluster, which flatters big ones)
                exch = cross_per_task * (n - 1) / n * per_batch
                lock = windows_per_task * nodes / size * sync * n / max(2, counts[-1])
                per_task = (work + exch) / n + lock
                model[kind].append({"partitions": n, "nodes": size, "wall_per_task_us": per_task * 1e6,
                                    "speedup": work / per_task, "exchange_share": (exch / n + lock) / per_task})
    return {"nodes": nodes, "runs": runs, "pickle_per_batch_us": per_batch * 1e6,
            "lockstep_per_window_us": {k: {n: v * 1e6 for n, v in lk.items()} for k, lk in lockstep.items()},
            "measured_speedup": {kind: rk[counts[0]]["workload_wall_s"] / rk[counts[-1]]["workload_wall_s"]
                                 for kind, rk in runs.items()},
            "cpu_per_task_us": work * 1e6,
            "cross_batches_per_task_all": cross_per_task, "windows_per_task": windows_per_task, "model": model,
            "hashes_agree": len({r["trace"] for rk in runs.values() for r in rk.values()}) == 1}


# ===========================================================================
# fidelity: the real runtime against the LOCAL model


_REAL = r'''
import json, os, sys, time
import penumbra as ray

def tree(pid):
    out = [pid]
    try:
        kids = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        kids = []
    for k in kids:
        out += tree(int(k))
    return out

def cpu(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0

def kind(pid):
    if pid == os.getpid():
        return "driver"
    try:
        cmd = open(f"/proc/{pid}/cmdline").read()
    except OSError:
        return "?"
    if "transports.zygote" in cmd or "transports.worker" in cmd:
        return "worker"
    if "transports.daemon" in cmd:
        return "daemon"
    return "other"

n_async, n_sync, reps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ray.init(num_cpus=2)

@ray.remote
def f():
    return 0

ray.get([f.remote() for _ in range(300)])
for _ in range(50):
    ray.get(f.remote())

def measure(fn, n):
    pids = tree(os.getpid())
    c0 = {p: cpu(p) for p in pids}
    t = time.perf_counter()
    fn(n)
    dt = time.perf_counter() - t
    per = {}
    for p in pids:
        k = kind(p)
        per[k] = per.get(k, 0.0) + (cpu(p) - c0[p]) / n
    return n / dt, per

def run_async(n):
    ray.get([f.remote() for _ in range(n)])

def run_sync(n):
    for _ in range(n):
        ray.get(f.remote())

def run_batches(n):
    for _ in range(n // 50):
        ray.get([f.remote() for _ in range(50)])

out = {"async": [], "sync": [], "batch50": [], "async_cpu": [], "sync_cpu": [], "batch50_cpu": []}
for _ in range(reps):
    r, per = measure(run_async, n_async)
    out["async"].append(r); out["async_cpu"].append(per)
    r, per = measure(run_sync, n_sync)
    out["sync"].append(r); out["sync_cpu"].append(per)
    r, per = measure(run_batches, 1000)
    out["batch50"].append(r); out["batch50_cpu"].append(per)
ray.shutdown()
print(json.dumps(out))
'''


def measure_real(reps: int, n_async: int = 2000, n_sync: int = 300) -> dict:
    p = subprocess.run([sys.executable, "-c", _REAL, str(n_async), str(n_sync), str(reps)],
                       capture_output=True, text=True, cwd=str(Path(__file__).resolve().parents[1]), timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"the real runtime benchmark failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _ping_latency(n: int = 2000) -> float:
    """One-way latency between two processes over a Unix socket pair, here."""
    import socket

    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # echo
        a.close()
        for _ in range(n):
            b.sendall(b.recv(64))
        os._exit(0)
    b.close()
    t = time.perf_counter()
    for _ in range(n):
        a.sendall(b"x" * 32)
        a.recv(64)
    dt = time.perf_counter() - t
    os.waitpid(pid, 0)
    a.close()
    return dt / n / 2


def _model(node_rate: float, worker_cpu: float, driver_cpu: float, hop: float) -> tuple[dict, CostModel]:
    results = {
        # the node's scheduler is the bottleneck of async tasks: its per-task
        # cost is the machine's (the daemon's CPU, and the contention of four
        # busy processes on two cores)
        "node_tasks_per_s": node_rate,
        # the worker: its CPU per task, plus the two hops from the daemon to
        # the worker process and back (the simulator's workers are not
        # network endpoints)
        "task_overhead": worker_cpu + 2 * hop,
        # the driver's CPU per .remote() (and its share of get())
        "client_call": driver_cpu,
        # one hop between processes: a message through trio, a socket and
        # the other process's event loop
        "latency_loopback": hop,
        "latency_intra_rack": hop,
        "latency_inter_rack": hop,
    }
    return results, CostModel.from_benchmark(results, name="LOCAL")


def calibrate(real: dict) -> tuple[dict, CostModel]:
    """The ``from_benchmark`` arguments from the real measurements.

    Measured directly: the async rate (-> the node's per-task cost), the
    workers' and the driver's CPU per task.  Fitted: the effective one-way
    hop latency, so that the simulated sync rate matches the measured one
    (bisection).  The batch workload is then a prediction (not fitted)."""
    med = statistics.median
    a_cpu = {k: med(r.get(k, 0.0) for r in real["async_cpu"]) for k in ("driver", "daemon", "worker")}
    node_rate, want = med(real["async"]), med(real["sync"])
    lo, hi = 0.0, 5e-3
    for _ in range(14):
        mid = (lo + hi) / 2
        got = predict(_model(node_rate, a_cpu["worker"], a_cpu["driver"], mid)[1], n_async=0, n_sync=100)["sync"]
        lo, hi = (mid, hi) if got > want else (lo, mid)
    return _model(node_rate, a_cpu["worker"], a_cpu["driver"], (lo + hi) / 2)


def predict(costs: CostModel, n_async: int = 2000, n_sync: int = 300, n_batch: int = 0) -> dict:
    """The simulator's async, sync and batch-of-50 empty tasks/s on one
    2-CPU node."""
    from penumbra.sim.cluster import SimCluster
    from penumbra.sim.workloads import ClosedLoop

    from penumbra.core.gcs import GcsTiming
    from penumbra.core.layout import ClusterLayout, NodeShape
    from penumbra.core.specs import ResourceSet

    # the embedded real runtime's layout (transports/daemon.py)
    layout = ClusterLayout(
        nodes=(NodeShape(ResourceSet.of(CPU=2), 1 << 30),), heartbeat_interval=0.2, node_timeout=5.0,
        gcs_timing=GcsTiming(heartbeat_interval=0.1, heartbeat_timeout=1.0, resend_after=0.5), gcs_retry_after=2.0)
    out = {}
    if n_async:
        c = SimCluster(layout, costs=costs, trace=False)
        c.wait_ready()
        d = c.driver(cpu=True)
        specs = [d.spec() for _ in range(n_async)]
        t0 = c.now
        d.submit_many(specs)
        d.watch([s.return_ids[0] for s in specs], fetch=True)
        c.run_until(lambda: len(d.ready) == n_async, 600)
        out["async"] = n_async / (c.now - t0)
    for key, n, w in (("sync", n_sync, 1), ("batch50", n_batch, 50)):
        if not n:
            continue
        c2 = SimCluster(layout, costs=costs, trace=False)
        c2.wait_ready()
        loop = ClosedLoop(c2.driver(cpu=True), window=w, batch=w, limit=n, fetch=True).start()
        t0 = c2.now
        c2.run_until(lambda: loop.finished_at is not None, 600)
        out[key] = n / (loop.finished_at - t0)
    return out


def fidelity(reps: int) -> dict:
    lat = statistics.median(_ping_latency() for _ in range(3))
    real = measure_real(reps)
    results, model = calibrate(real)
    pred = predict(model, n_batch=1000)
    pred_current = predict(LOCAL, n_batch=1000) if LOCAL.calibrated else None
    out = {"real": real, "raw_socket_latency_one_way_s": lat, "from_benchmark": results, "predicted": pred}
    for k in ("async", "sync", "batch50"):
        m = statistics.median(real[k])
        out[f"{k}_measured_median"] = m
        out[f"{k}_measured_spread"] = (min(real[k]), max(real[k]))
        out[f"{k}_predicted"] = pred[k]
        out[f"{k}_error"] = pred[k] / m - 1
        if pred_current is not None:
            out[f"{k}_predicted_by_shipped_LOCAL"] = pred_current[k]
            out[f"{k}_error_shipped_LOCAL"] = pred_current[k] / m - 1
    return out


# ===========================================================================


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("throughput", "big", "partitions", "fidelity"))
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--warm", type=float, default=300, help="warm-up, in tasks per node (steady state from ~300)")
    ap.add_argument("--measure", type=float, default=40, help="measured window, in tasks per node")
    ap.add_argument("--breakdown", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--big-nodes", type=int, default=10_000)
    ap.add_argument("--big-measure", type=float, default=10)
    ap.add_argument("--cpus", type=int, default=4)
    ap.add_argument("--shards-per", type=int, default=2, help="nodes per GCS shard in the big run")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--partitions", type=int, default=2, help="processes for the partitions part (vs 1)")
    ap.add_argument("--address", default=None, metavar="HOST:PORT",
                    help="partitions part: also run the partitions as actors on this penumbra cluster ('local': "
                         "a new one here)")
    ap.add_argument("--ray", action="store_true",
                    help="partitions part: also run them as Ray actors (--address, or a local Ray instance)")
    ap.add_argument("--setup-at", type=float, default=0.35,
                    help="partitions part: simulated seconds of boot before the drivers start")
    ap.add_argument("--big-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    if a.big_child:
        big_child(a.big_child, a.measure, a.cpus, a.shards_per)
        return 0
    results = {}
    if a.only in (None, "throughput"):
        r = throughput(a.nodes, a.warm, a.measure, a.breakdown, a.profile)
        results["throughput"] = r
        print(f"throughput at {r['nodes']} nodes (PAPER, Figure 8b workload): {r['simulated_tasks_per_s']:,.0f} "
              f"simulated tasks/s of simulated time; boot {r['boot_wall_s']:.1f} s wall")
        print(f"  {r['tasks']:,} tasks in {r['wall_s']:.1f} s wall / {r['cpu_s']:.1f} s CPU: "
              f"{r['sim_tasks_per_wall_s']:,.0f} simulated tasks per wall second "
              f"({r['sim_tasks_per_cpu_s']:,.0f} per CPU second; target {TARGET_TASKS_PER_WALL_S:,}: "
              f"{'MET' if r['sim_tasks_per_wall_s'] >= TARGET_TASKS_PER_WALL_S else 'NOT MET'}); "
              f"peak memory {r['peak_rss_mb']:,.0f} MB")
        if "core_share_of_cpu" in r:
            per = ", ".join(f"{k} {v:.0f} us" for k, v in r["core_handle_cpu_per_task_us"].items())
            print(f"  core machines' handle(): {per} per task = {r['core_share_of_cpu'] * 100:.0f}% of the CPU")
        if "profile" in r:
            print(r["profile"])
    if a.only in (None, "big"):
        r = big(a.big_nodes, a.big_measure, a.cpus, a.shards_per)
        results["big"] = r
        print(f"{r['nodes']:,} nodes ({r['hosts']:,} hosts, {r['gcs_shards']:,} GCS shards): boot {r['boot_wall_s']:.0f} s wall "
              f"({r['rss_after_boot_mb']:,.0f} MB); {r['tasks']:,} tasks in {r['sim_seconds'] * 1e3:.2f} ms simulated = "
              f"{r['simulated_tasks_per_s']:,.0f} tasks/s ({r['per_node']:,.0f} per node), "
              f"{r['sim_tasks_per_wall_s']:,.0f} per wall s; {r['total_tasks']:,} tasks in all; peak memory "
              f"{r['peak_rss_mb']:,.0f} MB (target {TARGET_BIG_MB:,}: {'MET' if r['peak_rss_mb'] < TARGET_BIG_MB else 'NOT MET'}); "
              f"total {r['total_wall_s']:.0f} s")
    if a.only in (None, "partitions"):
        r = partitions(a.nodes, a.measure, a.setup_at, [1, a.partitions], a.address, "ray" if a.ray else "penumbra")
        results["partitions"] = r
        for kind, rk in r["runs"].items():
            for n, x in rk.items():
                print(f"{kind}, {n} partition(s), {a.nodes:,} nodes: {x['tasks']:,} tasks in "
                      f"{x['workload_wall_s']:.1f} s wall = {x['tasks'] / x['workload_wall_s']:,.0f} tasks per wall s "
                      f"once the workload runs ({x['build_wall_s']:.1f} s to build and boot; {x['windows']:,} windows "
                      f"of {x['window_s'] * 1e6:.0f} us, {x['sync_per_window_us']:,.0f} us of each beyond the "
                      f"slowest partition's work); CPU per partition "
                      f"{', '.join(f'{c:.1f}' for c in x['partition_cpu_s'])} s; {x['exchanged_batches']:,} batches "
                      f"between partitions; trace {x['trace'][:16]}; machines built per partition "
                      f"{x['partition_hosts']}, peak memory per partition's process "
                      f"{', '.join(f'{m:,.0f}' for m in x['partition_peak_rss_mb'])} MiB (partition 0 runs in "
                      f"this process, which ran the runs before it too)")
            print(f"  {kind}: {r['measured_speedup'][kind]:.2f}x the wall speed of one partition once the "
                  f"workload runs")
        print(f"  trace hashes agree: {r['hashes_agree']}; pickling a batch both ways: "
              f"{r['pickle_per_batch_us']:.1f} us; inter-machine batches a task: "
              f"{r['cross_batches_per_task_all']:.2f}; windows a task: {r['windows_per_task']:.2f}; CPU a task in "
              f"one process: {r['cpu_per_task_us']:.0f} us")
        for kind, lk in r["lockstep_per_window_us"].items():
            print(f"  {kind}: a window's lockstep alone (2 nodes, almost no work): "
                  + ", ".join(f"{v:,.0f} us with {n} partition(s)" for n, v in lk.items()))
        for kind, mk in r["model"].items():
            for m in mk:
                print(f"  model, {kind}, {m['partitions']} partitions, {m['nodes']:,} nodes: {m['speedup']:.1f}x one process, "
                      f"exchange and lockstep {m['exchange_share'] * 100:.0f}% of the wall time")
    if a.only in (None, "fidelity"):
        r = fidelity(a.reps)
        results["fidelity"] = r
        for k in ("async", "sync", "batch50"):
            lo, hi = r[f"{k}_measured_spread"]
            print(f"{k} empty tasks/s on one node: measured {r[f'{k}_measured_median']:,.0f} (median of {a.reps}, "
                  f"range {lo:,.0f}-{hi:,.0f}); LOCAL predicts {r[f'{k}_predicted']:,.0f} ({r[f'{k}_error'] * 100:+.0f}%)"
                  + (f"; shipped LOCAL predicts {r[f'{k}_predicted_by_shipped_LOCAL']:,.0f} "
                     f"({r[f'{k}_error_shipped_LOCAL'] * 100:+.0f}%)" if f"{k}_predicted_by_shipped_LOCAL" in r else ""))
        print("  CostModel.from_benchmark(" + json.dumps({k: round(v, 9) for k, v in r["from_benchmark"].items()}) + ")")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
