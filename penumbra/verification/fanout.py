"""Swarm seeds fanned out as tasks on a running cluster, with Ray Core's API only.

Theory of operation
-------------------
``penumbra verify --seeds N`` checks seeds one after another in one process
(``swarm.run_swarm``).  A seed is independent of every other and fully
determined by its number, so seeds parallelise trivially: this module cuts
``range(N)`` into *chunks* and runs each chunk as one task
(``_check_chunk``: ``swarm.check_seed`` for each of its seeds) on whatever
cluster the driver joined.  A chunk, not a seed, is a task because a seed
takes about 0.1 s and a task costs milliseconds to submit, schedule and
return: tens of seeds per task make that overhead small, and enough chunks
(several per CPU) keep every CPU busy until the end.

Only Ray Core's public API is used -- ``init(address=...)``, ``remote``
(with ``max_retries`` and the ``"SPREAD"`` scheduling strategy), ``wait``, ``get``, ``cancel``, ``cluster_resources``,
``get_runtime_context().get_node_id()`` and ``shutdown`` -- through an
``api`` module passed in: ``penumbra`` (the default) or ``ray``.  So the
same code runs on a penumbra cluster or, unchanged, on a Ray cluster
(``penumbra verify --ray``), as long as the workers can import penumbra.
The task names its API by module name so that a worker asks *its own*
runtime for its node id (``import penumbra`` in a Ray worker would start a
penumbra cluster).

The driver keeps a window of about two chunks per CPU in flight and takes
results with ``wait`` as they complete, so progress streams and a chunk's
time in flight is close to its running time, which is what ``timeout``
bounds:

* a chunk whose worker or node dies is re-run by the runtime
  (``max_retries``); if it still fails, its seeds are reported as not run,
  with the error;
* a chunk not done ``timeout`` seconds after it was submitted is cancelled
  (``force=True``: its worker is killed) and its seeds are reported as
  timed out: each one's replay command finds which of them hangs;
* Ctrl-C cancels every chunk in flight and prints what finished.

A planted bug (``plant``) is installed *inside* each chunk task, around its
seeds, and undone before the task returns: it patches ``core/`` classes in
the worker process, where the simulator runs; the driver's (and the
cluster's own) code is never patched.  The worker's own runtime uses no
machine the bugs patch (schedulers, GCS, actor hosts run in the daemons), so
the patch cannot disturb the task that carries it.
"""

from __future__ import annotations

import importlib
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Sequence

__all__ = ["SeedOutcome", "ChunkResult", "FanoutResult", "DEFAULT_TIMEOUT", "MAX_CHUNK", "load_api", "chunk_size",
           "chunks_of", "fan_out", "replay_command", "run_fanout_cli"]

# seconds a chunk may stay in flight (from its submission) before it is
# cancelled and its seeds reported as timed out: a seed takes ~0.1 s, a
# chunk of MAX_CHUNK a few seconds, so this is a hang, not a slow machine
DEFAULT_TIMEOUT = 600.0
MAX_CHUNK = 50  # seeds per task, at most (the task overhead is ~1% of that)
CHUNKS_PER_CPU = 4  # at least this many chunks per CPU when there are enough seeds: an even finish
IN_FLIGHT_PER_CPU = 2  # chunks submitted ahead per CPU: one running, one queued behind it
MAX_RETRIES = 3  # the runtime re-runs a chunk whose worker or node died this many times


@dataclass(frozen=True)
class SeedOutcome:
    """What one seed gave: the fields of ``swarm.SeedReport`` that travel
    (the runs themselves stay in the worker)."""

    seed: int
    ok: bool
    trace_hash: str = ""
    wall: float = 0.0
    violations: tuple[str, ...] = ()  # the first few, as printed
    n_violations: int = 0
    checkers: tuple[str, ...] = ()
    node: str = ""  # the node that ran it (its id)
    error: str = ""  # not run: why (the chunk failed, timed out, was cancelled)

    def summary(self) -> str:
        if self.error:
            return f"seed {self.seed}: NOT CHECKED ({self.error})"
        status = "ok" if self.ok else f"FAILED ({self.n_violations} violations)"
        return f"seed {self.seed}: {status}, trace {self.trace_hash[:16]}, {self.wall:.2f}s"


@dataclass(frozen=True)
class ChunkResult:
    node: str
    host: str
    pid: int
    wall: float
    outcomes: tuple[SeedOutcome, ...]


@dataclass
class FanoutResult:
    outcomes: list[SeedOutcome] = field(default_factory=list)
    wall: float = 0.0
    chunks: int = 0
    interrupted: bool = False

    @property
    def failing(self) -> list[SeedOutcome]:
        """Seeds checked and found failing, lowest first."""
        return sorted((o for o in self.outcomes if not o.ok and not o.error), key=lambda o: o.seed)

    @property
    def unchecked(self) -> list[SeedOutcome]:
        """Seeds whose chunk failed or timed out, lowest first."""
        return sorted((o for o in self.outcomes if o.error), key=lambda o: o.seed)

    def per_node(self) -> dict[str, int]:
        """Seeds checked per node id (seeds not run are not counted)."""
        out: dict[str, int] = {}
        for o in self.outcomes:
            if not o.error:
                out[o.node] = out.get(o.node, 0) + 1
        return out


def load_api(name: str = "penumbra") -> ModuleType:
    """The Ray Core API to fan out with: ``"penumbra"`` or ``"ray"``.

    Raises:
        SystemExit: ``ray`` asked for but not installed (penumbra does not
            depend on Ray).
    """
    if name not in ("penumbra", "ray"):
        raise ValueError(f"the fan-out API must be 'penumbra' or 'ray', got {name!r}")
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise SystemExit(f"penumbra verify --ray: cannot import Ray ({e}); install it (pip install ray) in this "
                         "environment, with penumbra importable by its workers, or drop --ray to fan out on a "
                         "penumbra cluster") from None


def chunk_size(n_seeds: int, cpus: float) -> int:
    """Seeds per task: at least ``CHUNKS_PER_CPU`` chunks per CPU (so the
    last chunks finish together), at most ``MAX_CHUNK`` seeds each."""
    if n_seeds <= 0:
        return 1
    per = math.ceil(n_seeds / max(1, int(cpus) * CHUNKS_PER_CPU))
    return max(1, min(MAX_CHUNK, per))


def chunks_of(seeds: Sequence[int], size: int) -> list[tuple[int, ...]]:
    if size < 1:
        raise ValueError(f"a chunk holds at least one seed, got a chunk size of {size}")
    seeds = list(seeds)
    return [tuple(seeds[i:i + size]) for i in range(0, len(seeds), size)]


def replay_command(seed: int, plant: str | None = None) -> str:
    """The command that replays ``seed`` in one process, with its story."""
    return f"penumbra verify --seed {seed}" + (f" --plant {plant}" if plant else "")


# -- the task -----------------------------------------------------------------


def _check_chunk(seeds: tuple[int, ...], plant: str | None, api_name: str) -> ChunkResult:
    """Check ``seeds`` (in the worker), with the bug ``plant`` planted around
    them.  ``api_name`` is the module whose runtime runs this task, asked
    for the node id."""
    import contextlib

    from .bugs import bug_named, planted
    from .swarm import check_seed

    t0 = time.perf_counter()
    try:
        node = str(importlib.import_module(api_name).get_runtime_context().get_node_id())
    except Exception:  # a runtime without node ids: the host still tells machines apart
        node = f"host:{socket.gethostname()}"
    out = []
    with planted(bug_named(plant)) if plant else contextlib.nullcontext():
        for s in seeds:
            t1 = time.perf_counter()
            try:
                r = check_seed(s)
            except Exception as e:  # the swarm's own code raised: this seed fails, the chunk goes on
                what = f"[harness] check_seed raised {type(e).__name__}: {e}"[:500]
                out.append(SeedOutcome(s, False, "", time.perf_counter() - t1, (what,), 1, ("harness",), node))
                continue
            out.append(SeedOutcome(s, r.ok, r.trace_hash, r.wall, tuple(str(v) for v in r.violations[:5]),
                                   len(r.violations), tuple(sorted({v.checker for v in r.violations})), node))
    return ChunkResult(node, socket.gethostname(), os.getpid(), time.perf_counter() - t0, tuple(out))


# -- the driver ---------------------------------------------------------------


def _cluster_cpus(api: ModuleType) -> float:
    cpus = float(api.cluster_resources().get("CPU", 0))
    if cpus <= 0:
        raise RuntimeError("the cluster has no CPUs to run seeds on: start its nodes with --num-cpus 1 or more")
    return cpus


def fan_out(api: ModuleType, seeds: Sequence[int], *, plant: str | None = None, chunk: int | None = None,
            timeout: float = DEFAULT_TIMEOUT, in_flight: int | None = None,
            progress: Callable[[FanoutResult, int], None] | None = None, poll: float = 1.0) -> FanoutResult:
    """Check ``seeds`` as chunk tasks on the cluster ``api`` is connected to.

    Args:
        api: ``penumbra`` or ``ray``, already ``init``-ed.
        plant: the name of a bug (``bugs.bug_named``) to plant in each worker.
        chunk: seeds per task (default: ``chunk_size``).
        timeout: seconds a chunk may be in flight before it is cancelled and
            its seeds reported as timed out.
        in_flight: chunks submitted ahead (default: two per CPU).
        progress: called as ``progress(result_so_far, total_seeds)`` after
            each chunk.

    Returns the outcomes, one per seed, in the order chunks completed; on
    Ctrl-C, every chunk in flight is cancelled and what finished is
    returned with ``interrupted`` set.
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    seeds = list(seeds)
    cpus = _cluster_cpus(api)
    size = chunk or chunk_size(len(seeds), cpus)
    todo = chunks_of(seeds, size)
    todo.reverse()  # pop() from the end: the lowest seeds go first
    window = in_flight or max(2, int(cpus) * IN_FLIGHT_PER_CPU)
    # SPREAD: a chunk goes to the least loaded node with a free CPU.  The
    # default (bottom-up) policy keeps tasks on the driver's node until its
    # queue is long (100 tasks on a penumbra daemon), and a window of chunks
    # is far shorter than that: the other nodes would idle.
    task = api.remote(num_cpus=1, max_retries=MAX_RETRIES, scheduling_strategy="SPREAD")(_check_chunk)
    result = FanoutResult(chunks=len(todo))
    pending: dict[Any, tuple[tuple[int, ...], float]] = {}  # ref -> (its seeds, when submitted)
    t0 = time.perf_counter()

    def not_run(batch: tuple[int, ...], why: str) -> None:
        result.outcomes.extend(SeedOutcome(s, False, error=why) for s in batch)

    try:
        while todo or pending:
            while todo and len(pending) < window:
                batch = todo.pop()
                pending[task.remote(batch, plant, api.__name__)] = (batch, time.monotonic())
            ready, _ = api.wait(list(pending), num_returns=1, timeout=poll)
            for ref in ready:
                batch, _since = pending.pop(ref)
                try:
                    got = api.get(ref)
                except Exception as e:  # retries used up, or the task raised: say so, per seed
                    first = str(e).strip().splitlines()
                    not_run(batch, f"its chunk failed: {type(e).__name__}: {first[0] if first else ''}"[:300])
                else:
                    result.outcomes.extend(got.outcomes)
                if progress is not None:
                    progress(result, len(seeds))
            now = time.monotonic()
            for ref, (batch, since) in list(pending.items()):
                if now - since > timeout:
                    pending.pop(ref)
                    _cancel(api, ref)
                    not_run(batch, f"its chunk ({len(batch)} seeds from {batch[0]}) was not done after "
                                   f"{timeout:g} s and was cancelled: one of them may hang")
                    if progress is not None:
                        progress(result, len(seeds))
    except KeyboardInterrupt:
        result.interrupted = True
        for ref in pending:
            _cancel(api, ref)
    result.wall = time.perf_counter() - t0
    return result


def _cancel(api: ModuleType, ref: Any) -> None:
    try:
        api.cancel(ref, force=True)
    except Exception:  # already finished, or its node is gone: nothing left to stop
        pass


# -- the command --------------------------------------------------------------


def _progress_printer(stream=sys.stderr) -> Callable[[FanoutResult, int], None]:
    """``run_swarm``'s progress line: rewritten in place on a terminal, a
    line per tenth of the run otherwise."""
    tty = stream.isatty()
    shown = [0]

    def show(result: FanoutResult, total: int) -> None:
        done = len(result.outcomes)
        if not tty and done < total and done * 10 // max(1, total) == shown[0] * 10 // max(1, total):
            return
        shown[0] = done
        bad = sum(1 for o in result.outcomes if not o.ok)
        nodes = len(result.per_node())
        print(f"\r  {done}/{total} seeds, {bad} failing, on {nodes} node(s)", end="" if tty else "\n",
              file=stream, flush=True)
        if tty and done >= total:
            print(file=stream)

    return show


def run_fanout_cli(args, token_from_args: Callable[[Any, str], str | None]) -> int:
    """``penumbra verify --seeds N --address HOST:PORT [--ray] [--plant BUG]``.

    ``token_from_args(args, command)``: the command line's explicit token
    (``--token-file``, or the deprecated ``--token``), or None.  The CLI,
    which sits above this layer, passes its own reader in."""
    api_name = "ray" if getattr(args, "ray", False) else "penumbra"
    plant = getattr(args, "plant", None)
    if plant:
        from .bugs import bug_named

        try:
            bug = bug_named(plant)  # a typo is caught here, not in every worker
        except KeyError as e:
            print(f"penumbra verify --plant: {e.args[0]}", file=sys.stderr)
            return 2
        print(f"planted bug {bug.name} (in each worker): {bug.description}")
    if args.seeds < 1:
        print(f"penumbra verify: --seeds must be 1 or more, got {args.seeds}", file=sys.stderr)
        return 2
    if args.chunk is not None and args.chunk < 1:
        print(f"penumbra verify: --chunk must be 1 or more seeds per task, got {args.chunk}", file=sys.stderr)
        return 2
    api = load_api(api_name)
    kwargs: dict[str, Any] = {}
    if args.address:
        kwargs["address"] = args.address
    if api_name == "penumbra":
        token = token_from_args(args, "verify")
        if token:
            kwargs["_token"] = token
    where = args.address or "a local Ray instance"
    try:
        api.init(**kwargs)
    except Exception as e:
        print(f"penumbra verify: cannot reach the cluster at {where}: {e}", file=sys.stderr)
        return 1
    try:
        try:
            cpus = _cluster_cpus(api)
        except RuntimeError as e:
            print(f"penumbra verify: {e}", file=sys.stderr)
            return 1
        size = args.chunk or chunk_size(args.seeds, cpus)
        print(f"fanning {args.seeds} seeds out over {api_name} at {where} ({cpus:g} CPUs), "
              f"{size} seeds per task", flush=True)
        res = fan_out(api, range(args.seeds), plant=plant, chunk=size, timeout=args.timeout or DEFAULT_TIMEOUT,
                      progress=_progress_printer())
    finally:
        api.shutdown()
    if res.interrupted and sys.stderr.isatty():
        print(file=sys.stderr)  # end the progress line
    return _report(res, args.seeds, plant)


def _report(res: FanoutResult, total: int, plant: str | None) -> int:
    bad, lost = res.failing, res.unchecked
    ok = len(res.outcomes) - len(bad) - len(lost)
    head = f"{len(res.outcomes)} seeds in {res.wall:.1f}s: {ok} ok, {len(bad)} failing"
    if lost:
        head += f", {len(lost)} not checked"
    if res.interrupted:
        head += f" (interrupted: {total - len(res.outcomes)} of {total} seeds not run)"
    print(head)
    per_node = res.per_node()
    print(f"ran on {len(per_node)} node(s): " + ", ".join(f"{n or '?'} {k}" for n, k in sorted(per_node.items())))
    for o in bad[:10]:
        print(o.summary())
        for v in o.violations:
            print(f"   {v}")
        print(f"   replay: {replay_command(o.seed, plant)}")
    if len(bad) > 10:
        print(f"... and {len(bad) - 10} more failing seeds: " + " ".join(str(o.seed) for o in bad[10:60])
              + (" ..." if len(bad) > 60 else ""))
    for o in lost[:10]:
        print(o.summary())
        print(f"   replay: {replay_command(o.seed, plant)}")
    if len(lost) > 10:
        print(f"... and {len(lost) - 10} more seeds not checked: " + " ".join(str(o.seed) for o in lost[10:60])
              + (" ..." if len(lost) > 60 else ""))
    if res.interrupted:
        return 130
    return 0 if not bad and not lost else 1
