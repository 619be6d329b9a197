"""The paper's Figure 11 on the simulator: task recovery (11a) and actor recovery (11b).

``fig11a``: chains of 100 ms tasks while nodes are removed and added: every
result is produced, right, and throughput recovers.  ``fig11b``: an actor's
methods replayed after its node dies, with and without checkpoints.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..core.layout import ClusterLayout, NodeShape
from ..core.records import ActorState
from ..core.scheduler import SchedulerConfig
from ..core.specs import ResourceSet
from .cluster import SimCluster
from .costs import CostModel
from .experiments_results import ExperimentResult, Progress, preset_costs
from .workloads import ActorRounds, ChainStream, TaskModel

__all__ = [
    "fig11a",
    "fig11b",
]


# ===========================================================================
# Figure 11a: task recovery


def fig11a(size: str = "quick", preset: str = "paper", seed: int = 0, progress: bool = True) -> ExperimentResult:
    costs = preset_costs(preset)
    if size == "quick":
        n, cpus, chains, length = 4, 2, 16, 30
        kills, adds, horizon, binw = [(1.0, "node:2"), (1.5, "node:3")], [2.5, 3.0], 30.0, 0.25
    else:
        n, cpus, chains, length = 10, 4, 60, 120
        kills, adds, horizon, binw = [(3.0, "node:7"), (4.0, "node:8"), (5.0, "node:9")], [7.0, 8.0, 9.0], 120.0, 0.5
    layout = ClusterLayout(nodes=(NodeShape(ResourceSet.of(CPU=cpus)),) * n, gcs_shards=2, chain_length=2,
                           scheduler=SchedulerConfig(forward_queue_threshold=2), node_timeout=0.5)
    t0w = time.perf_counter()
    c = SimCluster(layout, costs=costs, seed=seed, trace="key")
    c.wait_ready(timeout=30)
    execs: list[tuple[float, bool]] = []  # (time, re-execution?)
    seen: set = set()

    def done(node, spec, attempt, t) -> None:
        execs.append((t, spec.task_id in seen))
        seen.add(spec.task_id)

    c.on_task_done.append(done)
    d = c.driver("node:0")
    start = c.now
    s = ChainStream(d, chains, length, duration=0.1, size=1000).start()
    for t, addr in kills:
        c.kernel.call_at(start + t, c.crash_node, addr)
    for t in adds:
        c.kernel.call_at(start + t, c.add_node)
    prog = Progress(chains * length, "fig11a", progress)
    while not s.complete and c.now < start + horizon:
        c.run_until(lambda: s.complete, min(0.5, start + horizon - c.now))
        prog.update(len(s.done_times))
    prog.close()
    end = c.now
    nb = int(math.ceil((end - start) / binw))
    orig, rerun, produced = [0] * nb, [0] * nb, [0] * nb
    for t, again in execs:
        k = min(nb - 1, int((t - start) / binw))
        (rerun if again else orig)[k] += 1
    for t in s.done_times:
        produced[min(nb - 1, int((t - start) / binw))] += 1
    rows = [[round(i * binw, 3), orig[i] / binw, rerun[i] / binw, produced[i] / binw,
             sum(1 for a, n_ in c.nodes.items() if n_.born_at <= start + i * binw and (n_.died_at is None or n_.died_at > start + i * binw))]
            for i in range(nb)]
    res = ExperimentResult(
        "fig11a", f"task recovery: {chains} chains of {length} tasks of 100 ms, nodes removed and added",
        ["time (s)", "tasks/s (first runs)", "tasks/s (re-executions)", "results/s (driver)", "nodes alive"],
        rows, hashes=[c.trace_hash()], size=size, preset=preset, seed=seed)
    before = [r[3] for r in rows if kills and r[0] + binw <= kills[0][0] and r[0] >= binw]
    # (a steady stretch once the nodes are back, before chains run out)
    after = [r[3] for r in rows if adds and adds[-1] + 1.0 <= r[0] and r[0] + binw <= min(adds[-1] + 4.0, end - start - 1.0)]
    res.summary["tasks"] = chains * length
    res.summary["results produced"] = len(s.done_times)
    res.summary["re-executions"] = sum(1 for _, again in execs if again)
    res.summary["lineage reconstructions (head)"] = c.head.recovery.reexecuted
    res.summary["tasks re-submitted from dead nodes (head)"] = c.head.recovery.resubmitted
    res.summary["throughput before failures (results/s)"] = sum(before) / len(before) if before else float("nan")
    res.summary["throughput after nodes re-added (results/s)"] = sum(after) / len(after) if after else float("nan")
    res.summary["makespan (s)"] = end - start
    res.checks["every task's result was produced"] = s.complete and len(s.done_times) == chains * length
    res.checks["every chain's final value is right (no errors)"] = s.all_correct()
    res.checks["lost work was re-executed"] = res.summary["re-executions"] > 0
    if before and after:
        res.checks["throughput recovers (>= 70% of before)"] = res.summary["throughput after nodes re-added (results/s)"] >= 0.7 * res.summary["throughput before failures (results/s)"]
    res.series = {"t": [r[0] for r in rows], "orig": [r[1] for r in rows], "rerun": [r[2] for r in rows],
                  "produced": [r[3] for r in rows], "nodes": [r[4] for r in rows],
                  "kills": [t for t, _ in kills], "adds": adds}
    res.wall_seconds = time.perf_counter() - t0w
    return res


# ===========================================================================
# Figure 11b: actor recovery


def _actor_run(interval: int, n: int, actors: int, rounds: int, kill_round: int, kill: list[str],
               costs: CostModel, seed: int, prog: Progress | None, base: float) -> dict[str, Any]:
    layout = ClusterLayout(nodes=(NodeShape(ResourceSet()),) + (NodeShape(ResourceSet.of(CPU=4)),) * (n - 1),
                           gcs_shards=4, chain_length=2, node_timeout=0.5)
    c = SimCluster(layout, costs=costs, seed=seed, trace="key")
    c.wait_ready(timeout=30)
    d = c.driver("node:0")
    handles = [d.create_actor(TaskModel(init=0), cls="Counter", replay=True, max_restarts=-1,
                              max_task_retries=-1, checkpoint_interval=interval) for _ in range(actors)]
    killed_at: list[float] = []
    seen: set = set()
    reruns: list[float] = []  # when a method ran again (a replay after a restart)

    def done(node, spec, attempt, t) -> None:
        if spec.actor_id is None or spec.actor_creation is not None:
            return
        if spec.task_id in seen:
            reruns.append(t)
        seen.add(spec.task_id)

    c.on_task_done.append(done)

    def on_round(r: int) -> None:
        if r == kill_round:
            killed_at.append(c.now)
            for a in kill:
                c.crash_node(a)

    start = c.now
    rr = ActorRounds(d, handles, rounds, duration=0.005, on_round=on_round).start()
    while not rr.complete and c.now < start + 600:
        c.run_until(lambda: rr.complete, 0.5)
        if prog:
            prog.update(base + rr.round)
    hosts = {}
    for h in handles:
        e = c.head.actors.actors.get(h.actor_id)
        if e is not None:
            hosts[e.node] = hosts.get(e.node, 0) + 1
    return {"replayed": c.head.actors.replayed, "calls": actors * rounds, "done": len(rr.done_times),
            "wrong": len(rr.wrong), "errors": len(rr.errors), "complete": rr.complete,
            "makespan": c.now - start, "times": [t - start for t in rr.done_times],
            "reruns": [t - start for t in reruns],
            "killed_at": killed_at[0] - start if killed_at else None,
            "alive": sum(1 for h in handles if (e := c.head.actors.actors.get(h.actor_id)) is not None and e.state is ActorState.ALIVE),
            "restarted": sum(1 for h in handles if (e := c.head.actors.actors.get(h.actor_id)) is not None and e.restarts > 0),
            "hash": c.trace_hash()}


def fig11b(size: str = "quick", preset: str = "paper", seed: int = 0, progress: bool = True,
           interval: int | None = None) -> ExperimentResult:
    costs = preset_costs(preset)
    if size == "quick":
        n, actors, rounds, kill_round, kill = 5, 40, 30, 21, ["node:3", "node:4"]
    else:
        n, actors, rounds, kill_round, kill = 11, 2000, 30, 21, ["node:9", "node:10"]
    interval = interval or 5
    t0 = time.perf_counter()
    prog = Progress(2 * rounds, "fig11b", progress)
    without = _actor_run(0, n, actors, rounds, kill_round, kill, costs, seed, prog, 0)
    withc = _actor_run(interval, n, actors, rounds, kill_round, kill, costs, seed, prog, rounds)
    prog.close()
    rows = []
    for label, r in (("no checkpoints", without), (f"checkpoint every {interval} calls", withc)):
        rows.append([label, r["calls"], r["done"], r["restarted"], r["replayed"], r["wrong"], r["errors"], r["makespan"]])
    res = ExperimentResult(
        "fig11b", f"actor recovery: {actors} actors on {n - 1} nodes, {len(kill)} nodes killed at round {kill_round} of {rounds}",
        ["run", "calls", "completed", "actors restarted", "methods replayed", "wrong values", "errors", "makespan (s)"],
        rows, hashes=[without["hash"], withc["hash"]], size=size, preset=preset, seed=seed)
    ratio = without["replayed"] / max(1, withc["replayed"])
    res.summary["replayed without / with checkpoints"] = ratio
    res.checks["every call completed in both runs"] = without["complete"] and withc["complete"] and without["done"] == without["calls"] and withc["done"] == withc["calls"]
    res.checks["actors on the killed nodes were restarted"] = without["restarted"] > 0 and withc["restarted"] > 0
    res.checks["checkpoints cut replayed methods by an order of magnitude (>= 10x)"] = ratio >= 10
    res.checks["every call returned the value of an exactly-once run"] = without["wrong"] == 0 and withc["wrong"] == 0 and without["errors"] == 0 and withc["errors"] == 0
    res.summary["methods re-executed (seen by the workers) without / with"] = f"{len(without['reruns'])} / {len(withc['reruns'])}"
    res.series = {"without": without["times"], "with": withc["times"], "killed_at": without["killed_at"], "interval": interval,
                  "without_reruns": without["reruns"], "with_reruns": withc["reruns"]}
    res.wall_seconds = time.perf_counter() - t0
    return res
