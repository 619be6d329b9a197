"""The Ray paper's experiments on the simulator (``penumbra sim <name>``).

Each experiment builds ``SimCluster``s, runs a modelled workload, and returns
an ``ExperimentResult``: a table (printed), named checks (the property the
paper reports, e.g. "throughput is linear in the number of nodes"), the
series behind its plot, and the trace hash of every simulation it ran.  The
CLI writes ``<out>/<name>.csv`` and ``<out>/<name>.png``.

=======  ===================================================================
fig8b    scalability: empty tasks, one driver per node, 10 to 1,000 nodes;
         throughput in steady state is linear in the nodes and ~1.8M tasks/s
         at 100 nodes under the PAPER preset
fig8a    locality: 1,000 tasks with one input of 100 KB..100 MB on 2 nodes,
         placed by the global scheduler with and without locality
fig10a   GCS fault tolerance: a chain of 2 replicas, one killed mid-run; the
         client-observed latency stays under 30 ms and no acknowledged write
         is lost
fig10b   GCS flushing: a long run of tasks with and without flushing old
         rows to disk; the GCS's memory stays flat with flushing while the
         throughput holds
fig11a   task recovery: chains of 100 ms tasks while nodes are removed and
         added; every result is produced and right; throughput recovers
fig11b   actor recovery: replayed methods with and without checkpoints
=======  ===================================================================

Sizes: ``quick`` runs in seconds (the tests use it), ``full`` is the paper's
scale.  Presets: ``paper`` (``costs.PAPER``) and ``local``
(``costs.LOCAL``, calibrated from this project's real runtime on this
machine).  Everything is seeded: the same arguments print the same trace
hashes.

Where things live: ``experiments_results`` (``ExperimentResult``,
``Progress`` and the helpers every figure uses), one module per figure of
the paper (``experiments_fig8``: scalability and locality,
``experiments_fig10``: the GCS, ``experiments_fig11``: recovery), and this
module: the registry of experiments, ``run``, the CLI and the demo's
simulated part.  Every name these modules hold that callers use is
importable from here as before.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from ..core.layout import ClusterLayout, NodeShape
from ..core.scheduler import SchedulerConfig
from ..core.specs import ResourceSet
from .cluster import SimCluster
from .costs import PAPER
from .experiments_fig8 import fig8a, fig8b, run_scalability_point, scalability_cluster  # noqa: F401 - (re-exported)
from .experiments_fig10 import fig10a, fig10b
from .experiments_fig11 import fig11a, fig11b
from .experiments_results import (  # noqa: F401 - (re-exported: callers use them from here)
    GB,
    KB,
    MB,
    ExperimentResult,
    Progress,
    linear_fit,
    node_task_rate,
    preset_costs,
)
from .experiments_pool import PointError, default_jobs
from .partition import PartitionError, run_partitioned_point
from .workloads import ChainStream

__all__ = [
    "ExperimentResult",
    "EXPERIMENTS",
    "run",
    "run_experiment_cli",
    "run_quick_demo",
    "Progress",
    "linear_fit",
    "node_task_rate",
]


# ===========================================================================
# the registry, running, the CLI

EXPERIMENTS: dict[str, Callable[..., ExperimentResult]] = {
    "fig8a": fig8a,
    "fig8b": fig8b,
    "fig10a": fig10a,
    "fig10b": fig10b,
    "fig11a": fig11a,
    "fig11b": fig11b,
}


def run(name: str, size: str = "quick", preset: str = "paper", seed: int = 0, progress: bool = True,
        nodes: list[int] | None = None, partitions: int | None = None, address: str | None = None,
        api: str = "penumbra", token: str | None = None, jobs: int = 1) -> ExperimentResult:
    """Run one experiment by name.  ``nodes``: the cluster sizes of Figure
    8b (the only experiment whose cluster size is a parameter).
    ``partitions``: Figure 8b only, each point as one simulation split over
    that many partitions (``partition.run_partitioned_point``): local
    processes, or actors on the cluster at ``address`` (with ``api``
    ``"penumbra"`` or ``"ray"``, and the penumbra cluster's ``token``).
    ``jobs``: Figure 8b only, its cluster sizes in a pool of that many
    worker processes (``experiments_pool``), the same table and hashes as
    ``jobs=1`` (one after another in this process).

    Raises:
        ValueError: an unknown experiment or size, bad ``nodes`` or
            ``partitions``, ``nodes`` or ``partitions`` given for an
            experiment other than fig8b, or an address without partitions.
        PartitionError: the cluster at ``address`` cannot be reached or has
            too few CPUs, or a partition failed.
        PointError: with ``jobs`` > 1, a point failed, died or hung in its
            worker process.
    """
    try:
        fn = EXPERIMENTS[name]
    except KeyError:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)} or 'all'") from None
    if size not in ("quick", "full"):
        raise ValueError(f"size must be 'quick' or 'full', got {size!r}")
    kw: dict = {}
    if not (isinstance(jobs, int) and not isinstance(jobs, bool) and jobs >= 1):
        raise ValueError(f"--jobs wants a whole number of worker processes >= 1, got {jobs!r}")
    if jobs > 1:
        if name != "fig8b":
            raise ValueError(f"--jobs runs fig8b's cluster sizes in parallel processes; {name} runs its "
                             f"simulations in this process: drop --jobs, or run fig8b")
        if partitions is not None:
            raise ValueError("--jobs N runs whole cluster sizes in parallel, --partitions splits each one over "
                             "processes: they do not combine; use --jobs 1 with --partitions, or drop --partitions")
        kw["jobs"] = jobs
    if partitions is None:
        if address is not None or api != "penumbra":
            raise ValueError("--address/--ray run the partitions of a simulation as actors on a cluster: add "
                             "--partitions N (fig8b)")
    else:
        if name != "fig8b":
            raise ValueError(f"--partitions splits fig8b's (scalability) simulation over processes; {name} injects "
                             f"failures, which act on one process's view: drop --partitions, or run fig8b")
        if not (isinstance(partitions, int) and partitions >= 1):
            raise ValueError(f"--partitions wants a whole number >= 1, got {partitions!r}")

        def point(n: int, costs: object, seed: int, **opts: object) -> dict:
            return run_partitioned_point(n, preset, seed, partitions=partitions, address=address, api=api,
                                         token=token, **opts)

        kw["point"] = point
    if nodes is not None:
        if name != "fig8b":
            raise ValueError(f"--nodes sets the cluster sizes of fig8b (scalability); {name} runs the cluster the "
                             f"paper's experiment describes: drop --nodes, or run fig8b")
        bad = [n for n in nodes if not (isinstance(n, int) and n >= 1)]
        if bad or not nodes:
            raise ValueError(f"--nodes wants cluster sizes >= 1, comma-separated (e.g. 100,1000), got {nodes!r}")
        kw["nodes"] = list(nodes)
    return fn(size=size, preset=preset, seed=seed, progress=progress, **kw)


def run_experiment_cli(args, token: str | None = None) -> int:
    """``penumbra sim <experiment> [--size] [--preset] [--seed] [--out]
    [--nodes] [--jobs N] [--partitions N [--address A] [--ray]]``;
    ``token``: the cluster token the command line gave (``--token-file``),
    if any.  ``--jobs`` unset: fig8b runs in ``os.cpu_count()`` processes
    (one without more than one CPU, or with ``--partitions``), the other
    experiments here."""
    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    out = getattr(args, "out", "sim-results") or "sim-results"
    os.makedirs(out, exist_ok=True)
    status = 0
    jobs = getattr(args, "jobs", None)
    for name in names:
        n_jobs = jobs
        if n_jobs is None or (args.experiment == "all" and name != "fig8b"):
            # (the default, and with ``all`` what --jobs does not apply to)
            n_jobs = default_jobs() if name == "fig8b" and getattr(args, "partitions", None) is None else 1
        try:
            res = run(name, size=args.size, preset=args.preset, seed=args.seed, jobs=n_jobs,
                      nodes=getattr(args, "nodes", None), partitions=getattr(args, "partitions", None),
                      address=getattr(args, "address", None), api="ray" if getattr(args, "ray", False) else "penumbra",
                      token=token)
        except ValueError as e:
            print(f"penumbra sim: {e}", file=sys.stderr)
            return 2
        except (PartitionError, PointError) as e:
            print(f"penumbra sim: {e}", file=sys.stderr)
            return 1
        print(res.report())
        csv_path = os.path.join(out, f"{name}.csv")
        res.write_csv(csv_path)
        png = os.path.join(out, f"{name}.png")
        try:
            from .plots import plot

            plot(res, png)
            print(f"wrote {csv_path} and {png}")
        except ImportError as e:  # pragma: no cover - matplotlib missing
            print(f"wrote {csv_path} (no plot: {e})")
        print()
        if not res.passed:
            status = 1
    return status


def run_quick_demo() -> dict:
    """``penumbra demo``'s simulated part: Figure 8b on a few nodes and a
    node failure recovered from lineage, in a second or two.  Returns its
    numbers (for the demo's summary)."""
    print("Figure 8b in miniature: empty tasks, one driver per node (PAPER cost model)")
    rows = []
    for n in (2, 4, 8):
        p = run_scalability_point(n, PAPER, 0, warm_tasks=100, measure_tasks=100)
        rows.append((n, p["throughput"]))
        print(f"  {n:2d} nodes: {p['throughput']:>12,.0f} tasks/s of simulated time ({p['per_node']:,.0f} per node)")
    a, b, r2 = linear_fit([r[0] for r in rows], [r[1] for r in rows])
    print(f"  linear: {b:,.0f} tasks/s per node, R^2 = {r2:.4f}")
    print("A node dies under 8 chains of 100 ms tasks; lineage rebuilds what it held:")
    layout = ClusterLayout(nodes=(NodeShape(ResourceSet.of(CPU=2)),) * 4,
                           scheduler=SchedulerConfig(forward_queue_threshold=2), node_timeout=0.5)
    c = SimCluster(layout, costs=PAPER, seed=0)
    c.wait_ready()
    s = ChainStream(c.driver("node:0"), 8, 10, duration=0.1, size=1000).start()
    c.kernel.call_at(c.now + 0.35, c.crash_node, "node:2", 0.5)
    c.run_until(lambda: s.complete, 60)
    print(f"  all {8 * 10} results produced: {s.complete}; every chain returned 10: {s.all_correct()}; "
          f"re-run from lineage: {c.head.recovery.reexecuted}, re-submitted: {c.head.recovery.resubmitted}")
    c.summary()
    return {"per_node": b, "r2": r2, "results": 8 * 10, "correct": bool(s.complete and s.all_correct()),
            "reexecuted": c.head.recovery.reexecuted}
