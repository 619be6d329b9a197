"""Random deterministic workloads for the verification swarm.

A ``Workload`` is drawn from a seed: puts, a dynamic task graph (tasks whose
inputs are earlier outputs or puts, some submitting nested child tasks and
waiting for them, some raising), and actors with ordered method calls (some
restartable, some with paper-style replay and checkpoints, some killed).
Drawn on top, each from its own generator: tasks with several returns,
tasks that raise on their first attempts (``retry_exceptions``), cancelled
tasks, freed puts, a second job whose driver exits, threaded, async and
named actors (see ``add_multi_returns`` ... ``add_actor_kinds``).
Everything it computes is a deterministic function of its inputs, so a
fault-free *reference run* tells what every object must hold; a run with
faults must produce the same values, or an error the semantics allow.

Values are 64-bit digests: a task's value digests its key, its inputs'
values and its children's values.  An actor keeps one chain per caller:
a call digests the caller's previous link (the actor's initial state for
its first call) with the call, and returns it.  Calls from different
callers interleave as timing has it, but each caller's calls run in its
order, so every value is still a deterministic function of the workload.

``VerifyExecutor`` (in ``executor``) is the simulator's executor for these
models.  It runs nested tasks by making the worker a client of its node
(``SubmitTask``, ``WatchObjects``, ``WorkerBlocked``/``WorkerUnblocked``),
and records every actor method execution so the checkers can verify
ordering.  This module is plain data and its draws: it imports nothing of
the simulator.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace
from typing import Any

from ..core.specs import ResourceSet

__all__ = ["VTask", "VChild", "VActor", "VCall", "TaskPlan", "ActorPlan", "CallPlan", "PutPlan", "WaitPlan",
           "Workload", "GroupPlan", "JobPlan", "add_multi_returns", "add_flaky", "add_task_cancels", "add_frees",
           "add_jobs", "add_actor_kinds", "SLOT", "SLOTS_PER_NODE", "add_groups", "CUSTOM", "GPUS_PER_NODE",
           "STORE_SIZES", "LARGE_SIZES", "generate", "add_gpus", "add_fractional_gpus", "add_burst", "add_callers",
           "add_grandchildren", "add_remote_puts", "add_waits", "digest"]


def digest(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big")


# -- the shapes both ``plans.plan_seed`` and the strategies draw from --------------

CUSTOM = "special"  # the custom resource some nodes have
GPUS_PER_NODE = 2
STORE_SIZES = (16 << 20, 64 << 20, 1 << 30)
LARGE_SIZES = (1 << 20, 4 << 20)  # "large" objects (to make stores evict)


# -- models (travel in TaskSpec.args.data) -----------------------------------------


@dataclass(frozen=True, slots=True)
class VChild:
    key: str
    size: int = 8
    duration: float = 0.001
    raises: bool = False
    children: tuple["VChild", ...] = ()  # a child may submit (and wait for) its own


@dataclass(frozen=True, slots=True)
class VTask:
    key: str
    size: int = 8
    duration: float = 0.001
    raises: bool = False
    children: tuple[VChild, ...] = ()
    # raises (a TASK_ERROR) on its attempts below this one: with
    # retry_exceptions it is retried (``add_flaky``)
    flaky: int = 0


@dataclass(frozen=True, slots=True)
class VActor:
    key: str


@dataclass(frozen=True, slots=True)
class VCall:
    key: str
    size: int = 8
    duration: float = 0.001


# -- the plan ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PutPlan:
    key: str
    size: int
    at: float
    node: int = 0  # index of the node whose driver puts it (0: the main driver's)
    get_at: float | None = None  # when the main driver first asks for it (None: at once)
    free_at: float | None = None  # the driver drops its last ref then (``add_frees``)


@dataclass(frozen=True, slots=True)
class TaskPlan:
    key: str
    deps: tuple[str, ...]  # keys of puts / tasks / calls
    model: VTask
    resources: ResourceSet
    max_retries: int
    at: float
    group: tuple[str, int] | None = None  # (placement group key, bundle index; -1: any)
    node: int = 0  # index of the node whose driver submits it (0: the main driver's)
    num_returns: int = 1  # > 1: its returns 1.. are items "KEY.rI" (``add_multi_returns``)
    cancel_at: float | None = None  # the driver cancels it then (``add_task_cancels``)
    force_cancel: bool = False  # ... with force=True (its worker is killed)

    def return_keys(self) -> list[str]:
        """The item key of each of its returns (the first is the task's own)."""
        return [self.key] + [f"{self.key}.r{i}" for i in range(1, self.num_returns)]


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """A placement group of ``bundles`` bundles of one ``SLOT`` each, made
    by the driver at ``at`` (removed when the run quiesces)."""

    key: str
    bundles: int
    strategy: str
    at: float

    @property
    def pg_id(self) -> str:
        return f"swarm{self.key}"


@dataclass(frozen=True, slots=True)
class CallPlan:
    key: str
    deps: tuple[str, ...]
    model: VCall
    at: float
    caller: int = 0  # which driver makes the call: 0, or 1 (a second driver, its own handle)
    cancel_at: float | None = None  # its caller cancels it then (penumbra.cancel)


@dataclass(frozen=True, slots=True)
class ActorPlan:
    key: str
    max_restarts: int
    max_task_retries: int
    replay: bool
    checkpoint_interval: int
    at: float
    calls: tuple[CallPlan, ...]
    kill_at: float | None = None  # the driver kills it (no restart) then
    gpus: float = 0.0  # GPUs it holds for life (placed with 1 CPU more)
    group: tuple[str, int] | None = None  # lives in this placement group bundle (holding half a SLOT)
    max_concurrency: int = 1  # > 1: threaded (or async) actor (``add_actor_kinds``)
    is_async: bool = False
    name: str | None = None  # a named actor: the second driver gets it by name


@dataclass(frozen=True, slots=True)
class WaitPlan:
    """``wait(refs, num_returns, timeout, fetch_local)`` by the driver at ``at``.

    A wait has no value to compare with the reference (which objects are
    ready first depends on timing); ``checkers.check_waits`` checks what it
    may rely on instead."""

    key: str
    refs: tuple[str, ...]  # keys of earlier items (distinct)
    num_returns: int
    timeout: float | None  # virtual seconds; None: until num_returns are ready
    fetch: bool  # fetch_local
    at: float


@dataclass(frozen=True, slots=True)
class Workload:
    puts: tuple[PutPlan, ...]
    tasks: tuple[TaskPlan, ...]
    actors: tuple[ActorPlan, ...]
    waits: tuple[WaitPlan, ...] = ()
    groups: tuple[GroupPlan, ...] = ()
    jobs: tuple["JobPlan", ...] = ()  # other drivers that come and go (``add_jobs``)

    def size(self) -> int:
        """Items with a value (the waits are not counted)."""
        return (len(self.puts) + sum(t.num_returns for t in self.tasks)
                + sum(len(a.calls) for a in self.actors))

    def describe(self) -> str:
        nested = sum(1 for t in self.tasks if t.model.children)
        raising = sum(1 for t in self.tasks if t.model.raises)
        grouped = sum(1 for t in self.tasks if t.group) + sum(1 for a in self.actors if a.group)
        groups = "".join(f", group {g.key} ({g.bundles} x {SLOT}, {g.strategy}; {grouped} items in it)" for g in self.groups)
        return (f"{len(self.puts)} puts, {len(self.tasks)} tasks ({nested} nested, {raising} raising), "
                f"{len(self.actors)} actors with {sum(len(a.calls) for a in self.actors)} calls, "
                f"{len(self.waits)} waits{groups}{self._surface()}")

    def _surface(self) -> str:
        """What the draws-surface draws added, if anything."""
        parts = [(sum(t.num_returns > 1 for t in self.tasks), "multi-return"),
                 (sum(bool(t.model.flaky) for t in self.tasks), "retry_exceptions"),
                 (sum(t.cancel_at is not None for t in self.tasks), "cancelled"),
                 (sum(p.free_at is not None for p in self.puts), "freed puts"),
                 (len(self.jobs), "jobs that end"),
                 (sum(a.max_concurrency > 1 for a in self.actors), "concurrent actors"),
                 (sum(bool(a.name) for a in self.actors), "named actors")]
        return "".join(f", {n} {what}" for n, what in parts if n)

    def submitted_at(self) -> list[tuple[str, float]]:
        """Every item with a value, and when the driver submits it."""
        out = [(p.key, p.at) for p in self.puts] + [(k, t.at) for t in self.tasks for k in t.return_keys()]
        out += [(c.key, c.at) for a in self.actors for c in a.calls]
        return out


SLOT = "slot"  # what placement group bundles reserve (2 per node in seeds with groups)
SLOTS_PER_NODE = 2


def add_groups(w: Workload, rng: random.Random, nodes: int, horizon: float) -> Workload:
    """A placement group (gang placement under node failure): bundles of one
    ``SLOT`` on a cluster where every node has ``SLOTS_PER_NODE``, made at
    some time in the first half of the run, and some tasks (and perhaps an
    actor) scheduled into it, into a given bundle or any.  A task in the
    group asks half a slot and no CPU.  The strategy is drawn among those
    the cluster can always meet, even with two nodes gone for good (a cut
    and a long pause): STRICT_SPREAD over at most n-2 bundles, STRICT_PACK
    over at most 2, PACK and SPREAD over 2 (3 on 4 nodes or more)."""
    strategies = ["PACK", "SPREAD", "STRICT_PACK"] + (["STRICT_SPREAD"] if nodes >= 3 else [])
    strategy = rng.choice(strategies)
    # (node 0 never goes; three bundles need two nodes left)
    most = {"STRICT_SPREAD": nodes - 2, "STRICT_PACK": SLOTS_PER_NODE}.get(strategy, 3 if nodes >= 4 else 2)
    g = GroupPlan("g0", rng.randint(1, max(1, most)), strategy, round(rng.uniform(0.0, horizon / 2), 3))
    tasks = []
    for t in w.tasks:
        if rng.random() < 0.35:
            t = replace(t, resources=ResourceSet.from_dict({SLOT: 0.5}), group=(g.key, rng.randint(-1, g.bundles - 1)))
        tasks.append(t)
    actors = list(w.actors)
    plain = [i for i, a in enumerate(actors) if not a.gpus]
    if plain and rng.random() < 0.5:
        i = rng.choice(plain)
        actors[i] = replace(actors[i], group=(g.key, rng.randint(-1, g.bundles - 1)))
    return replace(w, tasks=tuple(tasks), actors=tuple(actors), groups=(g,))


def add_callers(w: Workload, rng: random.Random) -> Workload:
    """A second driver calls some of the actors too (through its own
    handle: its own sequence numbers, ordered independently of the first)."""
    actors = []
    for a in w.actors:
        if rng.random() < 0.5:
            a = replace(a, calls=tuple(replace(c, caller=1) if rng.random() < 0.4 else c for c in a.calls))
        actors.append(a)
    return replace(w, actors=tuple(actors))


def add_cancels(w: Workload, rng: random.Random) -> Workload:
    """Some actor calls are cancelled by their caller a moment after they
    are made (``penumbra.cancel``): queued, running, or already done,
    depending on timing (Ray's rules for actor tasks, see core/actors.py)."""
    actors = []
    for a in w.actors:
        if rng.random() < 0.4:
            a = replace(a, calls=tuple(
                replace(c, cancel_at=round(c.at + rng.choice((0.0, 0.0005, 0.002, 0.01, 0.05)), 4))
                if rng.random() < 0.25 else c for c in a.calls))
        actors.append(a)
    return replace(w, actors=tuple(actors))


def add_remote_puts(w: Workload, rng: random.Random, nodes: int, fails: dict[int, float], horizon: float) -> Workload:
    """A driver on another node puts an object or two, and a task uses
    each: if that node dies, the object is lost for good (a ``put`` has no
    lineage), and its ``get`` must raise ``ObjectLostError``, never hang or
    return something else.  ``fails``: node index -> when it first crashes
    or is cut off; a put on such a node happens well before that, so the
    node has told the GCS about it (an object whose owner dies before
    anyone hears of it is another matter: ownership, not lineage), and
    nobody asks for it until after (a copy fetched in time survives)."""
    if nodes < 2 or rng.random() < 0.6:
        return w
    doomed = sorted(fails)
    i = rng.choice(doomed) if doomed and rng.random() < 0.7 else rng.randrange(1, nodes)
    latest = fails.get(i, horizon) - 0.3
    if latest <= 0:
        return w
    puts, tasks = list(w.puts), list(w.tasks)
    for j in range(rng.randint(1, 2)):
        at = round(rng.uniform(0, latest), 4)
        after = fails[i] if i in fails else at
        p = PutPlan(f"r{j}", rng.choice((64, 4096)), at, node=i, get_at=round(after + rng.uniform(0.05, 0.3), 4))
        puts.append(p)
        model = VTask(f"r{j}t", size=8, duration=0.002)
        tasks.append(TaskPlan(f"r{j}t", (p.key,), model, ResourceSet.of(CPU=0.5), -1,
                              round(after + rng.uniform(0.05, 0.3), 4)))
    return replace(w, puts=tuple(puts), tasks=tuple(tasks))


def add_grandchildren(w: Workload, rng: random.Random) -> Workload:
    """Nested tasks two deep: some children submit children of their own
    and wait for them (the worker blocks again, lending its CPU again)."""
    tasks = []
    for t in w.tasks:
        kids = t.model.children
        if kids and rng.random() < 0.4:
            j = rng.randrange(len(kids))
            grand = tuple(VChild(f"{kids[j].key}g{k}", 8, round(rng.uniform(0.0005, 0.01), 4), rng.random() < 0.05)
                          for k in range(rng.randint(1, 2)))
            kids = kids[:j] + (replace(kids[j], children=grand),) + kids[j + 1:]
            t = replace(t, model=replace(t.model, children=kids))
        tasks.append(t)
    return replace(w, tasks=tuple(tasks))


def add_waits(w: Workload, rng: random.Random, horizon: float) -> Workload:
    """Some ``wait`` calls over items submitted earlier: for ``num_returns``
    of them, or all, with or without a timeout, fetching or not."""
    items = w.submitted_at()
    waits = []
    for i in range(rng.choice((0, 1, 2, 3, 4))):
        at = round(rng.uniform(0, horizon), 4)
        earlier = [k for k, t in items if t < at]
        if not earlier:
            continue
        refs = tuple(rng.sample(earlier, min(len(earlier), rng.randint(1, 6))))
        num = rng.randint(1, len(refs))
        timeout = rng.choice((None, None, 0.001, 0.005, 0.05, 0.3))
        waits.append(WaitPlan(f"w{i}", refs, num, timeout, rng.random() < 0.7, at))
    return replace(w, waits=tuple(waits))


def add_gpus(w: Workload, rng: random.Random, cpu_cap: float) -> Workload:
    """Some tasks ask for GPUs (a quarter, a half or one), and perhaps one
    actor holds half a GPU for life; for a cluster where nodes of at least
    ``cpu_cap`` CPUs have 2 GPUs each.  A GPU task asks for no custom
    resource and at most ``cpu_cap`` CPUs, so it fits a GPU node; with at
    most half a GPU held by an actor, a whole GPU is always left for tasks.
    """
    tasks = []
    for t in w.tasks:
        r = t.resources
        if rng.random() < 0.3 and set(r.to_dict()) == {"CPU"}:
            r = ResourceSet.from_dict({"CPU": min(r.get("CPU"), cpu_cap), "GPU": rng.choice((0.25, 0.5, 1))})
            t = replace(t, resources=r)
        tasks.append(t)
    actors = list(w.actors)
    if actors and rng.random() < 0.5:
        i = rng.randrange(len(actors))
        actors[i] = replace(actors[i], gpus=0.5)
    return replace(w, tasks=tuple(tasks), actors=tuple(actors))


def add_fractional_gpus(w: Workload, rng: random.Random, total: float, cpu_cap: float) -> Workload:
    """GPU requests for a cluster whose GPU nodes have a fractional total
    (``total``: 0.5 or 1.5 GPUs, so one GPU instance is a fraction of a
    GPU, see core/gpus.py): the GPU tasks ask for a quarter or a half (or,
    on 1.5 GPUs with no actor holding part of one, a whole one), and more
    plain tasks ask for GPUs; an actor holding GPUs holds a quarter on half
    a GPU.  Every request fits the GPU instances left beside the actor's, so
    every task can run.  ``cpu_cap``: the fewest CPUs of a GPU node."""
    actors = list(w.actors)
    held = any(a.gpus for a in actors)
    if total < 1:
        asks: tuple[float, ...] = (0.25,) if held else (0.25, 0.5)
        actors = [replace(a, gpus=0.25) if a.gpus else a for a in actors]
    else:
        asks = (0.25, 0.5) if held else (0.25, 0.5, 1)
    tasks = []
    for t in w.tasks:
        r = t.resources.to_dict()
        if "GPU" in r or (set(r) == {"CPU"} and rng.random() < 0.3):
            r = {"CPU": min(r["CPU"], cpu_cap), "GPU": rng.choice(asks)}
            t = replace(t, resources=ResourceSet.from_dict(r))
        tasks.append(t)
    return replace(w, tasks=tuple(tasks), actors=tuple(actors))


def add_burst(w: Workload, rng: random.Random, count: int, at: float, max_cpu: float, consumers: int = 0,
              node: int = 0) -> Workload:
    """``count`` small independent tasks submitted by the driver in one
    instant (``b0``, ``b1``, ...): more than its node queues before it
    forwards work to the global scheduler (spillback); some return 256 KiB.
    Then ``consumers`` tasks (``bc0``, ...), a moment later, each take one or
    two burst outputs as inputs, submitted by a driver on node ``node``,
    where they are remote inputs (the task is forwarded again if they pass
    ``forward_remote_bytes``).
    ``max_cpu``: the fewest CPUs of any node (every task fits every node)."""
    tasks = list(w.tasks)
    for i in range(count):
        model = VTask(f"b{i}", size=rng.choice((8, 8, 256 << 10)), duration=rng.choice((0.0005, 0.001, 0.002)))
        cpu = min(rng.choice((0.25, 0.5, 1)), max_cpu)
        tasks.append(TaskPlan(f"b{i}", (), model, ResourceSet.of(CPU=cpu), -1, at))
    for j in range(consumers):
        deps = tuple(f"b{i}" for i in rng.sample(range(count), min(count, rng.randint(1, 2))))
        model = VTask(f"bc{j}", size=8, duration=0.001)
        tasks.append(TaskPlan(f"bc{j}", deps, model, ResourceSet.of(CPU=min(0.5, max_cpu)), -1,
                              round(at + rng.uniform(0.01, 0.1), 4), node=node))
    return replace(w, tasks=tuple(tasks))


# -- surface the swarm did not use before (issue 14: draws-surface) --------------------


@dataclass(frozen=True, slots=True)
class JobPlan:
    """Another driver program (its own job) on node 0: from ``at`` it puts
    an object, submits ``tasks`` (the first uses the put) and, with
    ``calls``, makes an actor and calls it; at ``close_at`` it exits, done
    or not.  Its job ends: its tasks stop, its actor dies, its objects and
    rows go (``checkers.check_job_ended``).  Nothing of the main workload
    uses its objects, and its values are not compared: only what is left."""

    key: str
    at: float
    close_at: float
    tasks: tuple[VTask, ...]
    put_size: int = 64
    calls: int = 0  # 0: no actor


def add_multi_returns(w: Workload, rng: random.Random) -> Workload:
    """``num_returns > 1`` on some tasks: each return is its own item
    ("t3.r1"), watched and checked (``checkers.check_returns``), and some
    later items take a second return as their input instead of the first."""
    if rng.random() < 0.4:
        return w
    multi: dict[str, list[str]] = {}
    tasks = []
    for t in w.tasks:
        if rng.random() < 0.2:
            t = replace(t, num_returns=rng.choice((2, 2, 3)))
            multi[t.key] = t.return_keys()
        tasks.append(t)

    def rewire(deps: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(rng.choice(multi[d]) if d in multi and rng.random() < 0.6 else d for d in deps)

    tasks = [replace(t, deps=rewire(t.deps)) if t.deps else t for t in tasks]
    actors = [replace(a, calls=tuple(replace(c, deps=rewire(c.deps)) if c.deps else c for c in a.calls))
              for a in w.actors]
    return replace(w, tasks=tuple(tasks), actors=tuple(actors))


def add_flaky(w: Workload, rng: random.Random) -> Workload:
    """``retry_exceptions``: some tasks raise on their first attempt or
    first few (``VTask.flaky``) and are retried; a budget (``max_retries``)
    smaller than that ends them with their error, as in the reference."""
    if rng.random() < 0.5:
        return w
    tasks = []
    for t in w.tasks:
        if rng.random() < 0.2:
            retries = t.max_retries if rng.random() < 0.6 else rng.choice((0, 1, 2))
            t = replace(t, model=replace(t.model, flaky=rng.choice((1, 1, 2, 3))), max_retries=retries)
        tasks.append(t)
    return replace(w, tasks=tuple(tasks))


def add_task_cancels(w: Workload, rng: random.Random) -> Workload:
    """``cancel`` of plain tasks a moment after they are submitted (queued,
    waiting for inputs, running or done, depending on timing); some with
    ``force=True`` (the worker running it is killed)."""
    if rng.random() < 0.5:
        return w
    tasks = []
    for t in w.tasks:
        if rng.random() < 0.15:
            t = replace(t, cancel_at=round(t.at + rng.choice((0.0, 0.0005, 0.002, 0.01, 0.05, 0.2)), 4),
                        force_cancel=rng.random() < 0.3)
        tasks.append(t)
    return replace(w, tasks=tuple(tasks))


def add_frees(w: Workload, rng: random.Random) -> Workload:
    """The main driver drops its last ref to some of its puts once it got
    them and made every call that uses them: a put nothing used is freed
    (``ReleaseObjects(free=True)``: gone from the store and the GCS), one
    passed to tasks is only released (unpinned, evictable)."""
    uses: dict[str, float] = {}
    for t in w.tasks:
        for d in t.deps:
            uses[d] = max(uses.get(d, 0.0), t.at)
    for a in w.actors:
        for c in a.calls:
            for d in c.deps:
                uses[d] = max(uses.get(d, 0.0), c.at)
    waited = {d for x in w.waits for d in x.refs}  # (a wait may hold it: never freed)
    puts = []
    for p in w.puts:
        # (most puts feed tasks: one nothing uses is freed more often)
        if p.node == 0 and p.get_at is None and p.key not in waited and rng.random() < (0.5 if p.key in uses else 0.9):
            p = replace(p, free_at=round(max(p.at, uses.get(p.key, 0.0)) + rng.uniform(0.01, 0.2), 4))
        puts.append(p)
    return replace(w, puts=tuple(puts))


def add_jobs(w: Workload, rng: random.Random, horizon: float) -> Workload:
    """On a third of the seeds, a second driver program (its own job) comes,
    works and exits (``JobPlan``), perhaps in the middle of its work."""
    if rng.random() < 0.65:
        return w
    at = round(rng.uniform(0.0, horizon / 2), 4)
    tasks = []
    for i in range(rng.randint(1, 4)):
        kids = ()
        if rng.random() < 0.25:
            kids = tuple(VChild(f"j0t{i}c{k}", 8, round(rng.uniform(0.001, 0.05), 4)) for k in range(rng.randint(1, 2)))
        tasks.append(VTask(f"j0t{i}", size=rng.choice((8, 4096)), duration=rng.choice((0.002, 0.05, 0.2, 0.5)),
                           children=kids))
    job = JobPlan("j0", at, round(at + rng.choice((0.001, 0.01, 0.05, 0.2, 0.6)), 4), tuple(tasks),
                  put_size=rng.choice((64, 4096)), calls=rng.choice((0, 0, 2, 4)))
    return replace(w, jobs=(job,))


def add_actor_kinds(w: Workload, rng: random.Random) -> Workload:
    """Threaded actors (``max_concurrency`` 2-8), async ones (a cancelled
    running call is interrupted: it raises), and named actors (the second
    driver gets its handle by name, ``get_actor``).  Replay actors stay
    sequential (a checkpoint holds exactly the calls before it)."""
    if rng.random() < 0.4:
        return w
    actors = []
    for a in w.actors:
        if not a.replay and rng.random() < 0.5:
            a = replace(a, max_concurrency=rng.choice((2, 4, 8)), is_async=rng.random() < 0.6)
        if rng.random() < 0.5:
            a = replace(a, name=f"swarm-{a.key}")
        actors.append(a)
    return replace(w, actors=tuple(actors))


def generate(rng: random.Random, *, horizon: float = 1.0, max_tasks: int = 40, custom: tuple[str, ...] = (),
             large: int = 2 << 20, max_cpu: float = 2, custom_cpu: float = 1) -> Workload:
    """A random workload whose submissions spread over ``horizon`` seconds.

    ``custom``: names of custom resources some node has (a task may ask for
    one).  ``large``: the size of "large" objects (to make stores evict).
    ``max_cpu``: the most CPUs of any node, and ``custom_cpu`` the fewest of
    a node with the custom resources: every task fits somewhere (an
    infeasible task rightly stays pending forever).
    """
    puts = []
    for i in range(rng.randint(0, 4)):
        puts.append(PutPlan(f"p{i}", rng.choice((64, 4096, large)), round(rng.uniform(0, horizon * 0.3), 4)))
    keys_at: list[tuple[str, float]] = [(p.key, p.at) for p in puts]
    tasks = []
    n = rng.randint(max(4, max_tasks // 4), max_tasks)
    for i in range(n):
        at = round(rng.uniform(0, horizon), 4)
        earlier = [k for k, t in keys_at if t <= at]
        ndeps = min(len(earlier), rng.choice((0, 0, 1, 1, 2, 3)))
        deps = tuple(rng.sample(earlier, ndeps)) if ndeps else ()
        children: tuple[VChild, ...] = ()
        if rng.random() < 0.15:
            children = tuple(VChild(f"t{i}c{j}", rng.choice((8, 512)), round(rng.uniform(0.0005, 0.02), 4),
                                    rng.random() < 0.05) for j in range(rng.randint(1, 3)))
        model = VTask(
            f"t{i}",
            size=rng.choice((8, 8, 256, 65536, large)),
            duration=round(rng.choice((0.0005, 0.002, 0.01, 0.05)), 4),
            raises=rng.random() < 0.05,
            children=children,
        )
        cpu = min(rng.choice((1, 1, 1, 0.5, 0.25, 2)), max_cpu)
        res = {"CPU": cpu}
        if custom and rng.random() < 0.15:
            res[rng.choice(custom)] = 1
            res["CPU"] = min(cpu, custom_cpu)
        max_retries = -1 if rng.random() < 0.8 else rng.choice((0, 1, 2))
        tasks.append(TaskPlan(f"t{i}", deps, model, ResourceSet.from_dict(res), max_retries, at))
        keys_at.append((f"t{i}", at))
    actors = []
    for a in range(rng.randint(0, 3)):
        at = round(rng.uniform(0, horizon * 0.5), 4)
        replay = rng.random() < 0.5
        calls = []
        t = at
        for c in range(rng.randint(2, 12)):
            t = round(t + rng.uniform(0.001, horizon / 8), 4)
            earlier = [k for k, tt in keys_at if tt <= t and not k.startswith(f"a{a}.")]
            deps = (rng.choice(earlier),) if earlier and rng.random() < 0.3 else ()
            calls.append(CallPlan(f"a{a}.c{c}", deps, VCall(f"a{a}.c{c}", duration=rng.choice((0.0005, 0.005, 0.02))), t))
            keys_at.append((f"a{a}.c{c}", t))
        kill_at = round(t + rng.uniform(0.0, 0.2), 4) if rng.random() < 0.15 else None
        actors.append(ActorPlan(
            f"a{a}",
            max_restarts=-1 if replay or rng.random() < 0.5 else rng.choice((0, 1)),
            max_task_retries=-1 if replay or rng.random() < 0.5 else 0,
            replay=replay,
            checkpoint_interval=rng.choice((0, 2, 3)) if replay else 0,
            at=at,
            calls=tuple(calls),
            kill_at=kill_at,
        ))
    return Workload(tuple(puts), tuple(tasks), tuple(actors))
