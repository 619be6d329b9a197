"""What the examples share: the command line, starting the runtime, timing,
progress lines, plots and the closing summary.

Only the *driver* side of an example lives here.  Everything that runs
remotely (remote functions, actor classes, the toy environments) is in the
example's own file, so each example reads top to bottom as one Ray program
and its remote code never depends on this module being importable by a
worker.

This module imports neither penumbra nor Ray at import time: ``--ray``
runs an example with ``import ray`` in a Python that may not have penumbra
installed, and matplotlib is optional there too (no plot is written, and
the summary says why).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Check", "ExampleResult", "Session", "base_parser", "plot_figure"]

RUNTIME_HELP = """\
runtimes:
  (default)     penumbra's real runtime: ray.init() starts a cluster on this machine
  --simulated   penumbra's simulator: the same program, in virtual time, on
                --nodes virtual nodes of --num-cpus CPUs each; the code really
                runs, but its virtual time is the network's and the cost
                model's, plus --task-time per task or actor call
  --ray         Ray itself (import ray instead of penumbra): the program uses
                nothing but Ray Core's API
"""


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The flags every example takes (runtime, cluster size, seed, output);
    the example adds its own (``--workers``, ``--iterations`` ...)."""
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=RUNTIME_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("runtime")
    which = g.add_mutually_exclusive_group()
    which.add_argument("--simulated", action="store_true",
                       help="run on penumbra's simulator (virtual time) instead of real processes")
    which.add_argument("--ray", action="store_true",
                       help="run with `import ray` (Ray must be installed) instead of penumbra")
    g.add_argument("--address", default=None,
                   help="join a running cluster (HOST:PORT) instead of starting one on this machine")
    g.add_argument("--num-cpus", type=int, default=2,
                   help="CPUs of the cluster started here (per node with --simulated; default: %(default)s)")
    g.add_argument("--nodes", type=int, default=1,
                   help="virtual nodes, with --simulated only (default: %(default)s)")
    g.add_argument("--task-time", type=float, default=None,
                   help="with --simulated: the virtual seconds of work of every task and actor call (the "
                        "simulator does not time the real work; default: its own, 0.001)")
    o = p.add_argument_group("output")
    o.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: %(default)s)")
    o.add_argument("--out", default=".", help="directory the plot is written to (default: the current one)")
    o.add_argument("--no-plot", action="store_true", help="do not write a plot")
    o.add_argument("--quiet", action="store_true", help="print the summary only, not a line per step")
    return p


@dataclass
class Check:
    """One verified claim about a result: what was checked, and whether it held."""

    what: str
    passed: bool

    def __str__(self) -> str:
        return f"check: {self.what}: {'ok' if self.passed else 'FAILED'}"


@dataclass
class ExampleResult:
    """What every example returns from ``main(argv)``: the fields tests
    assert on, beside each example's own (``values``)."""

    example: str
    runtime: str                      # "penumbra", "penumbra-simulated" or "ray"
    wall_seconds: float
    virtual_seconds: float | None     # the simulator's clock; None on real processes
    remote_calls: int                 # tasks and actor calls the example submitted
    checks: list[Check]
    plot: str | None
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.checks)


class Session:
    """Starts the runtime an example asked for, times it, counts its remote
    calls and prints its progress and summary.

    Use as a context manager around the example's work::

        with Session("es", args, ray) as s:
            ...
            s.calls += n
            s.step(i, n_iter, "mean return 42.0")
        result = s.result(checks, plot, values)
    """

    def __init__(self, name: str, args: argparse.Namespace, ray: Any):
        runs_ray = getattr(ray, "__name__", "") == "ray"
        if args.ray != runs_ray:
            raise SystemExit(f"this example was imported with {ray.__name__}, but --ray was "
                             f"{'given' if args.ray else 'not given'}: run it as a script "
                             f"(`python examples/{name}.py --ray`), which picks the module from its command line")
        if args.nodes < 1:
            raise SystemExit(f"--nodes must be >= 1, got {args.nodes}")
        if args.nodes > 1 and not args.simulated:
            raise SystemExit("--nodes is for --simulated only: a real cluster's nodes are the ones "
                             "started with `penumbra start` (join it with --address)")
        if args.simulated and args.address:
            raise SystemExit("--simulated starts a virtual cluster: it cannot join --address")
        if args.task_time is not None and not args.simulated:
            raise SystemExit("--task-time is for --simulated only: on real processes a task takes what it takes")
        if args.task_time is not None and args.task_time < 0:
            raise SystemExit(f"--task-time must be >= 0 virtual seconds, got {args.task_time}")
        if args.num_cpus < 1:
            raise SystemExit(f"--num-cpus must be >= 1, got {args.num_cpus}")
        self.name = name
        self.args = args
        self.calls = 0
        self.ray = ray
        self.runtime = "ray" if args.ray else ("penumbra-simulated" if args.simulated else "penumbra")
        self._t0 = 0.0
        self._wall = 0.0
        self._virtual: float | None = None
        self._virtual0 = 0.0
        self._bar: Any = None  # a tqdm bar on a terminal, False for plain lines
        self._started_here = False

    # -- the runtime ------------------------------------------------------

    def __enter__(self) -> "Session":
        args, ray = self.args, self.ray
        if ray.is_initialized():
            # a caller (a test, a notebook) started the runtime already: use it, if it is the one asked for
            if args.simulated:
                from penumbra.sim.runtime import current_simulation

                current_simulation()  # raises, saying so, when the runtime is not the simulator
        elif args.address:
            ray.init(address=args.address)
            self._started_here = True
        elif args.simulated:
            from penumbra.sim.runtime import SimConfig

            extra = {} if args.task_time is None else {"task_time": args.task_time}
            ray.init(simulated=SimConfig(nodes=args.nodes, num_cpus=args.num_cpus, seed=args.seed, **extra))
            self._started_here = True
        else:
            ray.init(num_cpus=args.num_cpus)
            self._started_here = True
        self._t0 = time.perf_counter()
        self._virtual0 = self.virtual_now() or 0.0
        return self

    def __exit__(self, *exc) -> None:
        self._close_bar()
        self._wall = time.perf_counter() - self._t0
        now = self.virtual_now()
        self._virtual = None if now is None else now - self._virtual0
        if self._started_here:
            self.ray.shutdown()

    def virtual_now(self) -> float | None:
        """The simulator's clock (virtual seconds), or None on real processes."""
        if not self.args.simulated:
            return None
        from penumbra.sim.runtime import now

        return now()

    def elapsed(self) -> float:
        """Seconds since the runtime started, on the clock that means something
        for this runtime: virtual time on the simulator, wall time otherwise."""
        if self.args.simulated:
            return self.virtual_now() - self._virtual0
        return time.perf_counter() - self._t0

    # -- output -----------------------------------------------------------

    def step(self, i: int, n: int, text: str) -> None:
        """Progress: a bar on a terminal (tqdm, when installed), and plain lines
        otherwise (a log gets about twenty per run, and the last step's)."""
        if self.args.quiet:
            return
        if self._bar is None:
            self._bar = False
            if sys.stderr.isatty():
                try:
                    from tqdm import tqdm
                except ImportError:
                    pass
                else:
                    self._bar = tqdm(total=n, desc=self.name, unit="step", file=sys.stderr)
        if self._bar:
            self._bar.update(i - self._bar.n)
            self._bar.set_postfix_str(text)
            if i >= n:
                self._close_bar()
        elif i == n or i == 1 or i % max(1, n // 20) == 0:
            print(f"[{self.name}] {i}/{n} {text}", flush=True)

    def _close_bar(self) -> None:
        if self._bar:
            self._bar.close()
        self._bar = None

    def result(self, checks: list[Check], plot: str | None, values: dict[str, Any]) -> ExampleResult:
        return ExampleResult(example=self.name, runtime=self.runtime, wall_seconds=self._wall,
                             virtual_seconds=self._virtual, remote_calls=self.calls,
                             checks=checks, plot=plot, values=values)


def summary(result: ExampleResult, lines: list[str]) -> None:
    """Print what the example did: its own lines, then time, calls, plot and checks."""
    where = {"penumbra": "penumbra (real processes)", "penumbra-simulated": "penumbra's simulator",
             "ray": "Ray"}[result.runtime]
    print(f"== {result.example} on {where}")
    for line in lines:
        print(f"  {line}")
    took = f"{result.wall_seconds:.1f} s wall"
    if result.virtual_seconds is not None:
        took += f", {result.virtual_seconds:.3f} s virtual"
    print(f"  took {took}; {result.remote_calls} tasks and actor calls")
    if result.plot:
        print(f"  plot written to {result.plot}")
    for c in result.checks:
        print(f"  {c}")
    sys.stdout.flush()


def plot_figure(args: argparse.Namespace, filename: str, draw) -> str | None:
    """Draw a figure with ``draw(fig)`` into ``args.out/filename`` (PNG,
    matplotlib's Agg backend: no display needed); returns the path, or None
    when plots are off or matplotlib is missing (saying so)."""
    if args.no_plot:
        return None
    try:
        import matplotlib
    except ImportError:
        print("  (matplotlib is not installed in this Python: no plot written; pip install matplotlib)")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(args.out, exist_ok=True)
    path = os.path.abspath(os.path.join(args.out, filename))
    fig = plt.figure(figsize=(7, 4.2))
    try:
        draw(fig)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path
