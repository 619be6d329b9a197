"""Modelled workloads: what simulated tasks do, and task graphs at scale.

Theory of operation
-------------------
A simulated task does not run user code.  Its *model* says how long it
works, how big its outputs are and, optionally, what value they hold (so a
run can check that every result is right after failures).  The model
travels inside the task itself, as ``TaskSpec.args = Payload(size,
data=TaskModel(...))``: the core carries the payload and never reads it;
the executor of the simulated node does (``ModelExecutor``).

``TaskModel``
    ``duration`` (seconds of work on the worker), ``outputs`` (one size in
    bytes per return value), ``compute(inputs) -> value`` (the inputs are
    the values of the task's dependencies, in order; with several returns it
    returns a tuple), ``fail`` ("raise", "crash" or "hang") on the first
    ``fail_attempts`` attempts, and for actors ``init`` (the state a
    creation task gives its actor) and ``update(state, inputs) -> (state,
    value)`` (a method call).
``Dist``
    Durations and sizes drawn from a seeded ``random.Random`` *when the
    workload is generated*, so a workload is plain data and the same seed
    gives the same tasks.
``Graph``
    A DAG of modelled tasks (``GraphTask``: model, dependencies by index,
    resources), in topological order.  Generators: ``chains``,
    ``random_dag``, ``fan_in_tree``, ``independent``; ``graph.submit(driver)``
    turns it into ``TaskSpec``s (deterministic ids) and submits them.
``ClosedLoop``
    A driver pattern: keep ``window`` tasks outstanding, submitted and
    watched in batches of ``batch``; how Figure 8b's drivers and the
    fidelity benchmark load a node.
``ModelExecutor``
    Runs models on simulated workers (``penumbra.sim.node.Executor``):
    the outcome of an ``Execute`` command, the state of actor workers,
    checkpoints.

Everything is deterministic: no wall clock, no unseeded randomness.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from penumbra.core.records import ErrorInfo, ErrorKind
from penumbra.core.specs import Payload, ResourceSet, TaskSpec

from .node import Outcome

if TYPE_CHECKING:  # pragma: no cover
    from penumbra.core.messages import CheckpointActor, Execute

    from .driver import SimDriver
    from .node import SimNode, SimWorker

__all__ = [
    "TaskModel",
    "EMPTY_TASK",
    "Dist",
    "GraphTask",
    "Graph",
    "chains",
    "independent",
    "random_dag",
    "fan_in_tree",
    "ClosedLoop",
    "ChainStream",
    "ActorRounds",
    "ModelExecutor",
    "increment",
    "counter_update",
]


def increment(inputs: tuple) -> Any:
    """``compute`` of a chain link: 1 + the sum of its inputs' values."""
    return 1 + sum(v for v in inputs if isinstance(v, (int, float)))


def counter_update(state: Any, inputs: tuple) -> tuple[Any, Any]:
    """``update`` of a counter actor: count the call, return the new count."""
    n = (state or 0) + 1
    return n, n


@dataclass(frozen=True, slots=True)
class TaskModel:
    """What a simulated task does (see the module docstring).

    Args:
        duration: seconds of work on the worker (the cost model adds its
            fixed ``task_overhead`` and the time to write the outputs).
        outputs: one size in bytes per return value (missing ones: 8).
        compute: ``compute(input_values) -> value`` (a tuple for several
            returns); ``None``: the value is ``None``.
        fail: ``""`` (succeed), ``"raise"`` (the user's code raises),
            ``"crash"`` (the worker process dies) or ``"hang"`` (never ends).
        fail_attempts: fail on attempts ``0 .. fail_attempts-1`` only.
        retryable: a raise counts as retryable (``retry_exceptions``).
        init: for an actor creation task: the actor's initial state.
        update: for an actor method: ``update(state, inputs) -> (state, value)``.
        state_bytes: size of an actor checkpoint.
    """

    duration: float = 0.0
    outputs: tuple[int, ...] = (8,)
    compute: Callable[[tuple], Any] | None = None
    fail: str = ""
    fail_attempts: int = 1
    retryable: bool = False
    init: Any = None
    update: Callable[[Any, tuple], tuple[Any, Any]] | None = None
    state_bytes: int = 64

    def __post_init__(self) -> None:
        if self.duration < 0 or not math.isfinite(self.duration):
            raise ValueError(f"TaskModel.duration must be a finite number >= 0, got {self.duration!r}")
        if self.fail not in ("", "raise", "crash", "hang"):
            raise ValueError(f"TaskModel.fail must be '', 'raise', 'crash' or 'hang', got {self.fail!r}")
        if isinstance(self.outputs, int):
            object.__setattr__(self, "outputs", (self.outputs,))


EMPTY_TASK = TaskModel()


# ===========================================================================
# distributions (drawn at generation time)


@dataclass(frozen=True, slots=True)
class Dist:
    """A distribution of durations (seconds) or sizes (bytes).

    ``Dist.const(0.1)``, ``Dist.uniform(a, b)``, ``Dist.exp(mean)``,
    ``Dist.lognormal(median, sigma)``, ``Dist.loguniform(a, b)`` (sizes
    spread over orders of magnitude), ``Dist.choice(values)``.
    """

    kind: str
    a: float = 0.0
    b: float = 0.0
    values: tuple = ()

    @classmethod
    def const(cls, v: float) -> "Dist":
        return cls("const", v)

    @classmethod
    def uniform(cls, a: float, b: float) -> "Dist":
        return cls("uniform", a, b)

    @classmethod
    def exp(cls, mean: float) -> "Dist":
        return cls("exp", mean)

    @classmethod
    def lognormal(cls, median: float, sigma: float) -> "Dist":
        return cls("lognormal", median, sigma)

    @classmethod
    def loguniform(cls, a: float, b: float) -> "Dist":
        if a <= 0 or b < a:
            raise ValueError(f"loguniform needs 0 < a <= b, got {a!r}, {b!r}")
        return cls("loguniform", a, b)

    @classmethod
    def choice(cls, values: Sequence[float]) -> "Dist":
        return cls("choice", values=tuple(values))

    def draw(self, rng: random.Random) -> float:
        k = self.kind
        if k == "const":
            return self.a
        if k == "uniform":
            return self.a + rng.random() * (self.b - self.a)
        if k == "exp":
            return rng.expovariate(1.0 / self.a) if self.a > 0 else 0.0
        if k == "lognormal":
            return self.a * math.exp(rng.gauss(0.0, self.b))
        if k == "loguniform":
            return math.exp(math.log(self.a) + rng.random() * (math.log(self.b) - math.log(self.a)))
        if k == "choice":
            return self.values[rng.randrange(len(self.values))]
        raise ValueError(f"unknown distribution {k!r}")

    def mean(self) -> float:
        k = self.kind
        if k == "const" or k == "exp":
            return self.a
        if k == "uniform":
            return (self.a + self.b) / 2
        if k == "lognormal":
            return self.a * math.exp(self.b ** 2 / 2)
        if k == "loguniform":
            return (self.b - self.a) / (math.log(self.b) - math.log(self.a)) if self.b > self.a else self.a
        return sum(self.values) / len(self.values)


def _as_dist(v: float | Dist) -> Dist:
    return v if isinstance(v, Dist) else Dist.const(float(v))


# ===========================================================================
# graphs


@dataclass(frozen=True, slots=True)
class GraphTask:
    """One task of a ``Graph``: its model, its inputs (indexes of earlier
    tasks of the graph) and what it asks for."""

    model: TaskModel
    deps: tuple[int, ...] = ()
    resources: ResourceSet = ResourceSet.of(CPU=1)
    name: str = "task"
    max_retries: int = 3
    args_bytes: int = 0


@dataclass
class Graph:
    """A DAG of modelled tasks in topological order (deps point backwards).

    ``expected()`` computes every task's value the way the executor will
    (for checking results); ``submit(driver)`` submits them all.
    """

    tasks: list[GraphTask] = field(default_factory=list)
    groups: dict[str, list[int]] = field(default_factory=dict)  # e.g. chain -> task indexes

    def add(self, task: GraphTask) -> int:
        for d in task.deps:
            if not 0 <= d < len(self.tasks):
                raise ValueError(f"task {len(self.tasks)} depends on {d}, which is not an earlier task")
        self.tasks.append(task)
        return len(self.tasks) - 1

    def __len__(self) -> int:
        return len(self.tasks)

    def expected(self) -> list[Any]:
        vals: list[Any] = []
        for t in self.tasks:
            inputs = tuple(vals[d] for d in t.deps)
            vals.append(t.model.compute(inputs) if t.model.compute is not None else None)
        return vals

    def specs(self, driver: "SimDriver") -> list[TaskSpec]:
        """``TaskSpec``s for every task (the driver's next ids), in order."""
        out: list[TaskSpec] = []
        for t in self.tasks:
            deps = tuple(out[d].return_ids[0] for d in t.deps)
            out.append(driver.spec(t.model, deps=deps, resources=t.resources, name=t.name,
                                   max_retries=t.max_retries, args_bytes=t.args_bytes))
        return out

    def submit(self, driver: "SimDriver") -> list[TaskSpec]:
        specs = self.specs(driver)
        driver.submit_many(specs)
        return specs

    def total_work(self) -> float:
        return sum(t.model.duration for t in self.tasks)


def independent(n: int, duration: float | Dist = 0.0, size: float | Dist = 8, *, seed: int = 0,
                resources: ResourceSet = ResourceSet.of(CPU=1), name: str = "task") -> Graph:
    """``n`` tasks without inputs."""
    rng = random.Random(seed)
    d, s = _as_dist(duration), _as_dist(size)
    g = Graph()
    for _ in range(n):
        g.add(GraphTask(TaskModel(d.draw(rng), (int(s.draw(rng)),)), (), resources, name))
    return g


def chains(num_chains: int, length: int, duration: float | Dist = 0.1, size: float | Dist = 8, *,
           seed: int = 0, resources: ResourceSet = ResourceSet.of(CPU=1), max_retries: int = -1,
           interleave: bool = True) -> Graph:
    """``num_chains`` chains of ``length`` tasks; task k of a chain takes task
    k-1's output and returns k + 1 (``increment``), so the last task of every
    chain must return ``length``.  ``interleave`` orders tasks level by level
    (all first links, then all second links, ...), as a driver streaming
    work would submit them."""
    rng = random.Random(seed)
    d, s = _as_dist(duration), _as_dist(size)
    g = Graph()
    idx: list[list[int]] = [[] for _ in range(num_chains)]
    order = ([(c, k) for k in range(length) for c in range(num_chains)] if interleave
             else [(c, k) for c in range(num_chains) for k in range(length)])
    for c, k in order:
        deps = (idx[c][-1],) if idx[c] else ()
        m = TaskModel(d.draw(rng), (int(s.draw(rng)),), compute=increment)
        idx[c].append(g.add(GraphTask(m, deps, resources, f"chain{c}", max_retries)))
    for c in range(num_chains):
        g.groups[f"chain{c}"] = idx[c]
    return g


def fan_in_tree(leaves: int, arity: int = 2, duration: float | Dist = 0.01, size: float | Dist = 1024, *,
                seed: int = 0, resources: ResourceSet = ResourceSet.of(CPU=1)) -> Graph:
    """A reduction: ``leaves`` tasks returning 1, combined ``arity`` at a time
    by tasks summing their inputs; the root returns ``leaves``."""
    rng = random.Random(seed)
    d, s = _as_dist(duration), _as_dist(size)
    g = Graph()
    level = [g.add(GraphTask(TaskModel(d.draw(rng), (int(s.draw(rng)),), compute=lambda i: 1), (), resources, "leaf"))
             for _ in range(leaves)]
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level), arity):
            group = tuple(level[i:i + arity])
            nxt.append(g.add(GraphTask(TaskModel(d.draw(rng), (int(s.draw(rng)),), compute=sum), group, resources, "reduce")))
        level = nxt
    return g


def random_dag(n: int, *, fan_in: int = 2, window: int = 50, duration: float | Dist = Dist.exp(0.01),
               size: float | Dist = Dist.loguniform(1e3, 1e6), seed: int = 0,
               resources: ResourceSet = ResourceSet.of(CPU=1)) -> Graph:
    """``n`` tasks; each takes up to ``fan_in`` inputs among the ``window``
    tasks before it; each returns 1 + the sum of its inputs."""
    rng = random.Random(seed)
    d, s = _as_dist(duration), _as_dist(size)
    g = Graph()
    for i in range(n):
        k = min(i, rng.randint(0, fan_in))
        lo = max(0, i - window)
        deps = tuple(sorted(rng.sample(range(lo, i), min(k, i - lo)))) if i else ()
        g.add(GraphTask(TaskModel(d.draw(rng), (int(s.draw(rng)),), compute=increment), deps, resources, "dag"))
    return g


# ===========================================================================
# a driver pattern: keep a window of tasks outstanding


class ClosedLoop:
    """Keep ``window`` tasks outstanding from ``driver``, ``batch`` at a time.

    Each batch is submitted in one instant and watched with one
    ``WatchObjects``; when a batch is complete the next one goes out.  With
    ``window == batch == 1`` this is a synchronous loop (``get`` after each
    ``remote``).  ``make(driver) -> TaskSpec`` builds each task (default: an
    empty task).  ``completed`` counts finished tasks; ``latencies`` (when
    ``keep_latencies``) has submit-to-ready times.
    """

    def __init__(self, driver: "SimDriver", *, window: int = 64, batch: int = 16,
                 make: Callable[["SimDriver"], TaskSpec] | None = None, limit: int | None = None,
                 fetch: bool = False, keep_latencies: bool = False, think: float = 0.0) -> None:
        if window < 1 or batch < 1:
            raise ValueError("window and batch must be >= 1")
        self.driver = driver
        self.window = window
        self.batch = min(batch, window)
        self.make = make or (lambda d: d.spec(EMPTY_TASK))
        self.limit = limit
        self.fetch = fetch
        self.think = think
        self.submitted = 0
        self.completed = 0
        self.outstanding = 0
        self.running = False
        self.keep_latencies = keep_latencies
        self.latencies: list[float] = []
        self.finished_at: float | None = None

    def start(self) -> "ClosedLoop":
        self.running = True
        self._fill()
        return self

    def stop(self) -> None:
        self.running = False

    def _fill(self) -> None:
        d = self.driver
        while self.running and d.alive and self.outstanding + self.batch <= self.window:
            n = self.batch
            if self.limit is not None:
                n = min(n, self.limit - self.submitted)
                if n <= 0:
                    return
            specs = [self.make(d) for _ in range(n)]
            d.submit_many(specs)
            self.submitted += n
            self.outstanding += n
            oids = [s.return_ids[0] for s in specs]
            start = d.now
            state = [n]

            def done(oid, info, now, state=state, start=start):
                self.completed += 1
                self.outstanding -= 1
                if self.keep_latencies:
                    self.latencies.append(now - start)
                state[0] -= 1
                if state[0] == 0:
                    if self.limit is not None and self.completed >= self.limit:
                        self.finished_at = now
                    if self.think > 0:
                        d.call_after(self.think, self._fill)
                    else:
                        self._fill()

            d.watch(oids, done, fetch=self.fetch, record=False)


class ChainStream:
    """Streams ``chains`` chains of ``length`` tasks from ``driver``: link
    k+1 of a chain is submitted when link k's output exists (its only input),
    as a driver streaming dependent work does (Figure 11a).

    Each link returns k + 1 (``increment``); the last link's output is
    fetched to the driver's node so its value can be checked
    (``values[c] == length``).  ``done_times`` has the time each link's
    result was first produced; ``errors`` the links that ended in an error.
    """

    def __init__(self, driver: "SimDriver", chains: int, length: int, *, duration: float = 0.1,
                 size: int = 8, max_retries: int = -1, resources: ResourceSet = ResourceSet.of(CPU=1)) -> None:
        self.driver = driver
        self.chains = chains
        self.length = length
        self.model = TaskModel(duration, (size,), compute=increment)
        self.max_retries = max_retries
        self.resources = resources
        self.done_times: list[float] = []
        self.specs: dict[tuple[int, int], TaskSpec] = {}
        self.errors: list[tuple[int, int, Any]] = []
        self.values: dict[int, Any] = {}
        self.finished_chains = 0

    def start(self) -> "ChainStream":
        for c in range(self.chains):
            self._submit(c, 0, ())
        return self

    def _submit(self, c: int, k: int, deps: tuple) -> None:
        d = self.driver
        spec = d.spec(self.model, deps=deps, resources=self.resources, name=f"chain{c}",
                      max_retries=self.max_retries)
        self.specs[(c, k)] = spec
        d.submit(spec)
        last = k + 1 == self.length
        d.watch(spec.return_ids, lambda oid, info, now: self._done(c, k, oid, info, now), fetch=last, record=last)

    def _done(self, c: int, k: int, oid: Any, info: Any, now: float) -> None:
        self.done_times.append(now)
        if info.error is not None:
            self.errors.append((c, k, info.error))
        if k + 1 < self.length:
            self._submit(c, k + 1, (oid,))
        else:
            self.finished_chains += 1
            self.values[c] = self.driver.value(oid)

    @property
    def complete(self) -> bool:
        return self.finished_chains == self.chains

    def all_correct(self) -> bool:
        return self.complete and not self.errors and all(self.values.get(c) == self.length for c in range(self.chains))


class ActorRounds:
    """Calls every actor once per round, the next round when the previous
    one is complete (Figure 11b).  Actors are counters: call k of an actor
    must return k + 1 (``counter_update``) if every method ran exactly once
    in order, restarts and replays included.  ``wrong`` lists calls whose
    value was not that; ``done_times`` the time each call completed;
    ``on_round(r)`` runs as round r starts."""

    def __init__(self, driver: "SimDriver", actors: Sequence[Any], rounds: int, *, duration: float = 0.005,
                 on_round: Callable[[int], Any] | None = None) -> None:
        self.driver = driver
        self.actors = list(actors)
        self.rounds = rounds
        self.model = TaskModel(duration, (8,), update=counter_update)
        self.on_round = on_round
        self.round = -1
        self.pending = 0
        self.done_times: list[float] = []
        self.wrong: list[tuple[int, int, Any]] = []
        self.errors: list[tuple[int, int, Any]] = []
        self.finished_at: float | None = None

    def start(self) -> "ActorRounds":
        self._next()
        return self

    def _next(self) -> None:
        self.round += 1
        r = self.round
        if r >= self.rounds:
            self.finished_at = self.driver.now
            return
        if self.on_round is not None:
            self.on_round(r)
        oids = []
        expect = {}
        for i, a in enumerate(self.actors):
            spec = a.call(self.model, method="incr")
            oids.append(spec.return_ids[0])
            expect[spec.return_ids[0]] = (i, spec.sequence_no + 1)
        self.pending = len(oids)

        def done(oid, info, now):
            self.done_times.append(now)
            i, want = expect[oid]
            if info.error is not None:
                self.errors.append((i, want - 1, info.error))
            else:
                got = self.driver.value(oid)
                if got != want:
                    self.wrong.append((i, want - 1, got))
            self.pending -= 1
            if self.pending == 0:
                self._next()

        self.driver.watch(oids, done, fetch=True, record=False)

    @property
    def complete(self) -> bool:
        return self.finished_at is not None


# ===========================================================================
# the default executor: run models


class ModelExecutor:
    """Runs ``TaskModel``s on simulated workers (the default executor).

    A spec without a model (``args.data`` not a ``TaskModel``) is an empty
    task with 8-byte outputs.  Input values are read from the node's store;
    an input missing there is a broken invariant of the core (a task may
    only run once its inputs are local) and raises ``AssertionError``.
    """

    def __init__(self, costs=None) -> None:
        self.costs = costs
        self.executed = 0
        self.checkpoints = 0

    def start_worker(self, node: "SimNode", worker_id: str) -> float | None:
        return node.cluster.costs.worker_start

    def execute(self, node: "SimNode", worker: "SimWorker", cmd: "Execute") -> "Outcome":
        spec = cmd.spec
        m = spec.args.data
        if m.__class__ is not TaskModel:
            m = EMPTY_TASK
        self.executed += 1
        if m.fail and cmd.attempt < m.fail_attempts:
            if m.fail == "crash":
                return Outcome("crash", m.duration)
            if m.fail == "hang":
                return Outcome("hang")
            return Outcome("raise", m.duration, error=ErrorInfo(
                ErrorKind.TASK_ERROR, f"{spec.display_name()} raised (modelled failure, attempt {cmd.attempt})",
                Payload(64), task_name=spec.display_name()), retryable=m.retryable)
        deps = spec.dependencies
        store = node.store
        if deps and (m.compute is not None or m.update is not None):
            inputs = []
            for d in deps:
                got = store.get(d)
                if got is None:
                    raise AssertionError(
                        f"{node.address}: task {spec.display_name()} {spec.task_id.short()} runs but its "
                        f"input {d.short()} is not in the node's store (the core must make inputs "
                        f"local before Execute)")
                inputs.append(got[1])
            inputs = tuple(inputs)
        else:
            inputs = ()
        if spec.actor_creation is not None:
            worker.actor_state = cmd.checkpoint.data if cmd.checkpoint is not None else m.init
            return Outcome("ok", m.duration, values=(None,) * spec.num_returns, sizes=m.outputs)
        if m.update is not None:
            worker.actor_state, value = m.update(worker.actor_state, inputs)
        elif m.compute is not None:
            value = m.compute(inputs)
        else:
            value = None
        n = spec.num_returns
        if n == 1:
            values = (value,)
        elif n == 0:
            values = ()
        else:
            values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * n
        return Outcome("ok", m.duration, values=values, sizes=m.outputs)

    def checkpoint(self, node: "SimNode", worker: "SimWorker", cmd: "CheckpointActor") -> Payload:
        self.checkpoints += 1
        size = 64
        return Payload(size, worker.actor_state)

    def worker_gone(self, node: "SimNode", worker: "SimWorker") -> None:
        worker.actor_state = None


def spread(values: Iterable[Any], k: int) -> list[list[Any]]:
    """Split ``values`` round-robin into ``k`` lists."""
    out: list[list[Any]] = [[] for _ in range(k)]
    for i, v in enumerate(values):
        out[i % k].append(v)
    return out
