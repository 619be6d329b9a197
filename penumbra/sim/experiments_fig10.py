"""The paper's Figure 10 on the simulator: the GCS's fault tolerance (10a) and flushing (10b).

``fig10a``: a chain of two GCS replicas, one killed mid-run: the client
sees the latency stay low and no acknowledged write lost.  ``fig10b``: a
long run of tasks with and without flushing old rows to disk: memory stays
flat with flushing while the throughput holds (``_deep_size`` and
``_gcs_row_bytes`` measure the GCS's rows).
"""

from __future__ import annotations

import random
import sys
import time
from typing import Any

from ..core.gcs import FlushConfig, GcsTiming
from ..core.layout import ClusterLayout, NodeShape
from ..core.messages import ReleaseObjects
from ..core.scheduler import SchedulerConfig
from ..core.specs import ResourceSet
from ..core.tables import Get, KvPut
from .cluster import SimCluster
from .costs import CostModel
from .experiments_results import (
    MB,
    ExperimentResult,
    Progress,
    _run_with_progress,
    linear_fit,
    node_task_rate,
    preset_costs,
)
from .workloads import TaskModel

__all__ = [
    "fig10a",
    "fig10b",
]


# ===========================================================================
# Figure 10a: GCS fault tolerance


def fig10a(size: str = "quick", preset: str = "paper", seed: int = 0, progress: bool = True,
           victim: str = "gcs:0:1", concurrency: int = 4) -> ExperimentResult:
    costs = preset_costs(preset)
    duration = 0.3 if size == "quick" else 3.0
    layout = ClusterLayout(nodes=(NodeShape(ResourceSet.of(CPU=2)),) * 2, gcs_shards=1, chain_length=2)
    t0w = time.perf_counter()
    c = SimCluster(layout, costs=costs, seed=seed, trace="key")
    c.wait_ready(timeout=30)
    d = c.driver("node:0")
    start = c.now
    # the seed picks the moment of the failure (within the middle third),
    # so the replica dies at a different point of its heartbeat cycle
    kill_at = start + duration * (1 / 3 + random.Random(seed).random() / 12)
    back_at, end = start + 2 * duration / 3, start + duration
    ops: list[tuple[float, float, str, int]] = []  # (sent, acked, key, value)
    state = {"next": 0, "outstanding": 0, "stop": False}

    def issue() -> None:
        if state["stop"]:
            return
        i = state["next"]
        state["next"] += 1
        key, value = f"k{i}", i * 7 + 1
        sent = d.now
        state["outstanding"] += 1

        def acked(result, sent=sent, key=key, value=value) -> None:
            state["outstanding"] -= 1
            ops.append((sent, d.now, key, value))
            issue()

        d.gcs(KvPut(key, value), acked)

    for _ in range(concurrency):
        issue()
    c.kernel.call_at(kill_at, c.crash_replica, victim)
    c.kernel.call_at(back_at, c.restart_replica, victim)
    prog = Progress(duration, "fig10a", progress)
    _run_with_progress(c, end, prog)
    state["stop"] = True
    c.run_until(lambda: state["outstanding"] == 0, 1.0)
    rejoined = victim in c.head.chain.shards[0].config.replicas
    # read every acknowledged write back (a few reads in flight at a time:
    # a flood would hold up the replicas' heartbeats and get them cut)
    got: dict[str, Any] = {}
    keys = [k for _, _, k, _ in ops]

    def read_next() -> None:
        if keys:
            key = keys.pop()
            d.gcs(Get("kv", key), lambda v, key=key: (got.__setitem__(key, v), read_next()))

    for _ in range(concurrency * 4):
        read_next()
    c.run_until(lambda: len(got) == len(ops), 60.0)
    prog.close()
    lost = [k for _, _, k, v in ops if got.get(k) != v]
    lat = [b - a for a, b, _, _ in ops]
    # latency over time, in 10 ms bins of the send time (max per bin)
    bins: dict[int, float] = {}
    for a, b, _, _ in ops:
        k = int((a - start) / 0.01)
        bins[k] = max(bins.get(k, 0.0), b - a)
    rows = [[round(k * 0.01, 3), bins[k] * 1e3] for k in sorted(bins)]
    before = [b - a for a, b, _, _ in ops if b < kill_at]
    res = ExperimentResult(
        "fig10a", f"GCS chain of 2 replicas, {victim} killed at {kill_at - start:.3f}s and back at {back_at - start:.3f}s",
        ["time (s)", "max write latency in the 10 ms bin (ms)"], rows, hashes=[c.trace_hash()],
        size=size, preset=preset, seed=seed)
    res.summary["writes acknowledged"] = len(ops)
    res.summary["writes read back intact"] = len(ops) - len(lost)
    res.summary["median latency (ms)"] = sorted(lat)[len(lat) // 2] * 1e3
    res.summary["max latency before the failure (ms)"] = max(before) * 1e3 if before else float("nan")
    res.summary["max latency (ms)"] = max(lat) * 1e3
    res.summary["chain reconfigurations"] = c.head.chain.changes
    res.checks["max client latency under 30 ms (failure detection included)"] = max(lat) < 0.030
    res.checks["no acknowledged write lost"] = not lost and len(got) == len(ops)
    res.checks["the killed replica rejoined the chain"] = rejoined
    res.series = {"sent": [a - start for a, _, _, _ in ops], "latency_ms": [x * 1e3 for x in lat],
                  "kill": kill_at - start, "back": back_at - start}
    res.wall_seconds = time.perf_counter() - t0w
    return res


# ===========================================================================
# Figure 10b: GCS flushing


def _deep_size(obj: Any, seen: set[int]) -> int:
    """Bytes of ``obj`` and what it references, each object counted once
    (``seen``): records, tuples, sets, dicts, strings and bytes."""
    if id(obj) in seen or obj is None or isinstance(obj, (bool, type)):
        return 0
    seen.add(id(obj))
    n = sys.getsizeof(obj)
    if isinstance(obj, (str, bytes, int, float)):
        return n
    if isinstance(obj, dict):
        return n + sum(_deep_size(k, seen) + _deep_size(v, seen) for k, v in obj.items())
    if isinstance(obj, (tuple, list, set, frozenset)):
        return n + sum(_deep_size(x, seen) for x in obj)
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()):
            n += _deep_size(getattr(obj, name, None), seen)
    d = getattr(obj, "__dict__", None)
    if d:
        n += _deep_size(d, seen)
    return n


def _gcs_row_bytes(c: SimCluster, replica: str, sample: int = 300) -> tuple[float, float]:
    """Mean bytes in memory of a task row and of an object row, key and dict
    slot included (a sample of what ``replica`` holds; what rows share,
    such as a function's descriptor, counted once): the GCS memory
    estimate's unit costs."""
    t = c.replica(replica).tables.data
    out = []
    for name in ("tasks", "objects"):
        rows = list(t[name].items())[-sample:]
        seen: set[int] = set()
        total = sum(_deep_size(k, seen) + _deep_size(v, seen) for k, v in rows)
        out.append(total / len(rows) + _DICT_SLOT_BYTES if rows else 0.0)
    return out[0], out[1]


_MS_TASK = TaskModel(0.001)  # fig10b's tasks: 1 ms each (the GCS keeps up with 4 CPUs a node)
_DICT_SLOT_BYTES = 40.0  # a dict entry (hash, key and value pointers, spare room)
_INDEX_ENTRY_BYTES = 100.0  # a key in the flushed-row index: a dict slot, the key (a 16- or 20-byte id), a segment number


def _flush_run(flush: FlushConfig | None, ntasks: int, nodes: int, costs: CostModel, seed: int, sample_every: float,
               prog: Progress | None, base: float) -> dict[str, Any]:
    layout = ClusterLayout(nodes=(NodeShape(ResourceSet.of(CPU=4)),) * nodes, gcs_shards=1, chain_length=2,
                           scheduler=SchedulerConfig(forward_queue_threshold=1 << 20),  # tasks stay local
                           gcs_timing=GcsTiming(heartbeat_interval=0.05, heartbeat_timeout=1.0, flush=flush))
    c = SimCluster(layout, costs=costs, seed=seed, trace="key")
    c.wait_ready(timeout=30)
    per = ntasks // nodes
    done = [0]

    def driver_loop(d) -> None:
        # a long-running program: tasks in flight, each result read and
        # dropped (its object freed: the row keeps no location)
        state = {"sent": 0}

        def fill() -> None:
            n = min(16, per - state["sent"])
            if n <= 0:
                return
            specs = [d.spec(_MS_TASK) for _ in range(n)]
            d.submit_many(specs)
            state["sent"] += n
            left = [n]

            def got(oid, info, now) -> None:
                done[0] += 1
                d._send_msg(ReleaseObjects(client=d.address, object_ids=(oid,), free=True))
                left[0] -= 1
                if left[0] == 0:
                    fill()

            d.watch([s.return_ids[0] for s in specs], got, fetch=False, record=False)

        for _ in range(4):  # 64 tasks in flight per driver
            fill()

    for a in list(c.nodes):
        driver_loop(c.driver(a))
    samples: list[tuple[float, int, int, int, int]] = []  # (t, done, task rows, object rows, flushed)
    start = c.now
    rep = "gcs:0:0"

    def sample() -> None:
        t = c.replica(rep).tables
        samples.append((c.now - start, done[0], len(t.data["tasks"]), len(t.data["objects"]), t.flushed_rows()))

    while done[0] < per * nodes and c.now - start < 600:
        c.run_for(sample_every)
        sample()
        if prog:
            prog.update(base + done[0])
    # quiesce: the GCS's backlog of writes reaches every replica
    chain = c.head.chain.shards[0].config.replicas
    last = -1
    while c.now - start < 1200:
        c.run_for(0.05)
        seqs = {c.replica(r).seq for r in chain}
        if len(seqs) == 1 and seqs.pop() == last:
            break
        last = c.replica(chain[0]).seq
    sample()
    bt, bo = _gcs_row_bytes(c, rep)
    chain = c.head.chain.shards[0].config.replicas
    fps = {c.replica(r).tables.fingerprint() for r in chain}  # (after the flush a quiet chain may still do)
    end = samples[-2][0] if len(samples) > 1 else samples[-1][0]
    return {"samples": samples, "task_row_bytes": bt, "object_row_bytes": bo, "complete": done[0] == per * nodes,
            "tasks": done[0], "makespan": end, "throughput": done[0] / end if end else 0.0,
            "identical": len(fps) == 1 and len(chain) == 2, "chain_changes": c.head.chain.changes, "disk": c.gcs_disk, "hash": c.trace_hash()}


def fig10b(size: str = "quick", preset: str = "paper", seed: int = 0, progress: bool = True) -> ExperimentResult:
    costs = preset_costs(preset)
    ntasks, nodes = (10_000, 2) if size == "quick" else (200_000, 4)
    flush = FlushConfig(interval=0.02, max_rows=4000, keep_rows=1000, batch=50_000)
    rate = min(node_task_rate(costs), 4 / _MS_TASK.duration) * nodes
    sample_every = max(0.002, ntasks / rate / 40)
    t0 = time.perf_counter()
    prog = Progress(2 * ntasks, "fig10b", progress)
    off = _flush_run(None, ntasks, nodes, costs, seed, sample_every, prog, 0)
    on = _flush_run(flush, ntasks, nodes, costs, seed, sample_every, prog, ntasks)
    prog.close()
    bt, bo = off["task_row_bytes"], off["object_row_bytes"]  # (the same rows in both runs)

    def mb(r: tuple) -> float:
        return (r[2] * bt + r[3] * bo + r[4] * _INDEX_ENTRY_BYTES) / MB

    rows = []
    for label, run_ in (("off", off), ("on", on)):
        for r in run_["samples"]:
            rows.append([label, round(r[0], 4), r[1], r[2] + r[3], r[4], mb(r)])
    res = ExperimentResult(
        "fig10b", f"GCS memory over {ntasks:,} tasks on {nodes} nodes, flushing off and on "
        f"(flush above {flush.max_rows:,} rows, keeping the newest {flush.keep_rows:,})",
        ["flushing", "time (s)", "tasks done", "rows in memory", "rows on disk", "memory (MB, est.)"],
        rows, hashes=[off["hash"], on["hash"]], size=size, preset=preset, seed=seed)
    s_on = [r for r in on["samples"][:-1]]
    peak_on = max(r[2] + r[3] for r in on["samples"])
    end_off = off["samples"][-1]
    quarter = [r for r in s_on if r[1] >= ntasks / 4]
    res.summary["rows in memory at the end, off"] = end_off[2] + end_off[3]
    res.summary["rows in memory at the end, on"] = on["samples"][-1][2] + on["samples"][-1][3]
    res.summary["peak rows in memory, on"] = peak_on
    res.summary["rows on disk at the end, on"] = on["samples"][-1][4]
    res.summary["memory at the end, off (MB, est.)"] = mb(end_off)
    res.summary["memory at the end, on (MB, est.)"] = mb(on["samples"][-1])
    res.summary["bytes in memory per task row / object row"] = f"{bt:.0f} / {bo:.0f}"
    res.summary["throughput off (tasks/s)"] = off["throughput"]
    res.summary["throughput on (tasks/s)"] = on["throughput"]
    res.summary["disk written (MB)"] = on["disk"].bytes_written / MB
    res.summary["chain reconfigurations off / on"] = f"{off['chain_changes']} / {on['chain_changes']}"
    res.summary["replicas identical at the end off / on"] = f"{off['identical']} / {on['identical']}"
    res.checks["every task finished in both runs"] = off["complete"] and on["complete"]
    res.checks["without flushing, memory grows with the tasks run"] = end_off[2] + end_off[3] >= 0.9 * ntasks
    res.checks["with flushing, the rows in memory stay flat (under 2x the threshold after the first quarter)"] = (
        bool(quarter) and max(r[2] + r[3] for r in quarter) <= 2 * flush.max_rows)
    # what still grows is the index of flushed keys: ~100 B a row against
    # the row's own ~1 KB
    def growth(run_: dict) -> float:  # KB per task, fitted over the second half (through the sawtooth)
        pts = [r for r in run_["samples"][:-1] if r[1] >= ntasks / 2]
        if len(pts) < 2:
            return float("nan")
        return linear_fit([r[1] for r in pts], [mb(r) * 1e3 for r in pts])[1]

    res.summary["memory growth over the second half, off / on (KB per task)"] = f"{growth(off):.3f} / {growth(on):.3f}"
    res.checks["with flushing, memory grows under a quarter as fast as without"] = growth(on) < 0.25 * growth(off)
    res.checks["throughput holds with flushing (>= 90% of without)"] = on["throughput"] >= 0.9 * off["throughput"]
    res.checks["the chain's replicas hold identical tables"] = off["identical"] and on["identical"]
    res.series = {
        "off_t": [r[0] for r in off["samples"]], "off_mb": [mb(r) for r in off["samples"]],
        "on_t": [r[0] for r in on["samples"]], "on_mb": [mb(r) for r in on["samples"]],
        "off_done": [r[1] for r in off["samples"]], "on_done": [r[1] for r in on["samples"]],
        "threshold_mb": (flush.max_rows * (bt + bo) / 2) / MB,
        "on_index_mb": [r[4] * _INDEX_ENTRY_BYTES / MB for r in on["samples"]],
    }
    res.wall_seconds = time.perf_counter() - t0
    return res
