"""Random deterministic workloads for the verification swarm.

A ``Workload`` is drawn from a seed: puts, a dynamic task graph (tasks whose
inputs are earlier outputs or puts, some submitting nested child tasks and
waiting for them, some raising), and actors with ordered method calls (some
restartable, some with paper-style replay and checkpoints, some killed).
Everything it computes is a deterministic function of its inputs, so a
fault-free *reference run* tells what every object must hold; a run with
faults must produce the same values, or an error the semantics allow.

Values are 64-bit digests: a task's value digests its key, its inputs'
values and its children's values.  An actor keeps one chain per caller:
a call digests the caller's previous link (the actor's initial state for
its first call) with the call, and returns it.  Calls from different
callers interleave as timing has it, but each caller's calls run in its
order, so every value is still a deterministic function of the workload.

``VerifyExecutor`` is the simulator's executor for these models.  It runs
nested tasks by making the worker a client of its node (``SubmitTask``,
``WatchObjects``, ``WorkerBlocked``/``WorkerUnblocked``), and records every
actor method execution so the checkers can verify ordering.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field, replace
from typing import Any

from ..core.ids import ActorId, ObjectId, TaskId, child_task_id
from ..core.messages import (
    Execute,
    ObjectsReady,
    SubmitTask,
    WatchObjects,
    WorkerBlocked,
    WorkerUnblocked,
)
from ..core.records import ErrorInfo, ErrorKind
from ..core.specs import FunctionDescriptor, Payload, ResourceSet, TaskSpec
from ..sim.cluster import Executor, Outcome

__all__ = ["VTask", "VChild", "VActor", "VCall", "TaskPlan", "ActorPlan", "CallPlan", "PutPlan", "WaitPlan",
           "Workload", "GroupPlan", "SLOT", "SLOTS_PER_NODE", "add_groups", "CUSTOM", "GPUS_PER_NODE", "STORE_SIZES", "LARGE_SIZES", "generate", "add_gpus", "add_callers", "add_grandchildren", "add_remote_puts", "add_waits", "VerifyExecutor", "digest"]


def digest(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "big")


# -- the shapes both ``swarm.plan_seed`` and the strategies draw from --------------

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


@dataclass(frozen=True, slots=True)
class TaskPlan:
    key: str
    deps: tuple[str, ...]  # keys of puts / tasks / calls
    model: VTask
    resources: ResourceSet
    max_retries: int
    at: float
    group: tuple[str, int] | None = None  # (placement group key, bundle index; -1: any)


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

    def size(self) -> int:
        """Items with a value (the waits are not counted)."""
        return len(self.puts) + len(self.tasks) + sum(len(a.calls) for a in self.actors)

    def describe(self) -> str:
        nested = sum(1 for t in self.tasks if t.model.children)
        raising = sum(1 for t in self.tasks if t.model.raises)
        grouped = sum(1 for t in self.tasks if t.group) + sum(1 for a in self.actors if a.group)
        groups = "".join(f", group {g.key} ({g.bundles} x {SLOT}, {g.strategy}; {grouped} items in it)" for g in self.groups)
        return (f"{len(self.puts)} puts, {len(self.tasks)} tasks ({nested} nested, {raising} raising), "
                f"{len(self.actors)} actors with {sum(len(a.calls) for a in self.actors)} calls, "
                f"{len(self.waits)} waits{groups}")

    def submitted_at(self) -> list[tuple[str, float]]:
        """Every item with a value, and when the driver submits it."""
        out = [(p.key, p.at) for p in self.puts] + [(t.key, t.at) for t in self.tasks]
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


# ===========================================================================


@dataclass(slots=True)
class _Waiting:
    """A parent task whose worker waits for its children."""

    node: Any
    worker: Any
    cmd: Execute
    inputs: tuple
    children: tuple[TaskSpec, ...]
    values: dict[ObjectId, Any] = field(default_factory=dict)
    req_id: int = 0
    done: bool = False


@dataclass(frozen=True, slots=True)
class ActorExec:
    """One actor method execution, as the worker saw it."""

    actor_id: ActorId
    worker_id: str
    caller: str
    seq: int
    task_id: TaskId
    at: float


class VerifyExecutor(Executor):
    """Runs ``VTask``/``VActor``/``VCall`` models with real values."""

    def __init__(self, crash_rate: float = 0.0, rng: random.Random | None = None) -> None:
        self.crash_rate = crash_rate  # chance a task's worker dies mid-task (a fault)
        self.rng = rng or random.Random(0)
        self.actor_log: list[ActorExec] = []
        self.executions: dict[TaskId, int] = {}  # task -> times it started (crashed or not)
        self.attempts: dict[TaskId, list[int]] = {}  # task -> the attempt number of each start, in order
        self.instances: dict[ActorId, list[str]] = {}  # actor -> workers it ran on
        self.crashes = 0
        self._clients: dict[str, Any] = {}
        self._waiting: dict[tuple[str, int], _Waiting] = {}
        self._next_req = 1
        self.cluster = None

    # -- helpers --------------------------------------------------------------
    def _inputs(self, node, spec: TaskSpec) -> tuple | ErrorInfo:
        out = []
        for d in spec.dependencies:
            item = node.store.get(d)
            if item is None:
                return ErrorInfo(ErrorKind.OBJECT_LOST, f"input {d.short()} is not in the store")
            out.append(item[1])
        return tuple(out)

    def _maybe_crash(self) -> bool:
        if self.crash_rate and self.rng.random() < self.crash_rate:
            self.crashes += 1
            return True
        return False

    # -- the executor interface --------------------------------------------------
    def execute(self, node, worker, cmd: Execute) -> Outcome | None:
        spec = cmd.spec
        model = spec.args.data
        inputs = self._inputs(node, spec)
        if isinstance(inputs, ErrorInfo):
            return Outcome("raise", error=inputs)
        if isinstance(model, VActor):
            if cmd.checkpoint is not None and cmd.checkpoint.data is not None:
                worker.actor_state = cmd.checkpoint.data
            else:
                worker.actor_state = {"": digest("init", model.key, inputs)}
            self.instances.setdefault(spec.actor_creation.actor_id, []).append(worker.worker_id)
            return Outcome("ok", 0.001)
        if isinstance(model, VCall):
            self.actor_log.append(ActorExec(spec.actor_id, worker.worker_id, spec.caller_id, spec.sequence_no,
                                            spec.task_id, node.cluster.now))
            if self._maybe_crash():
                return Outcome("crash", model.duration / 2)
            state = worker.actor_state
            link = digest(state.get(spec.caller_id, state[""]), model.key, inputs)
            worker.actor_state = {**state, spec.caller_id: link}  # a new dict: checkpoints keep the old one
            return Outcome("ok", model.duration, values=(link,), sizes=(model.size,))
        if isinstance(model, (VTask, VChild)):
            self.executions[spec.task_id] = self.executions.get(spec.task_id, 0) + 1
            self.attempts.setdefault(spec.task_id, []).append(cmd.attempt)
            if self._maybe_crash():
                return Outcome("crash", model.duration / 2)
            if model.raises:
                name = spec.display_name()
                return Outcome("raise", model.duration, error=ErrorInfo(
                    ErrorKind.TASK_ERROR, f"{model.key} raised (by design)", Payload(16, model.key), task_name=name))
            children = getattr(model, "children", ())
            if not children:
                return Outcome("ok", model.duration, values=(digest(model.key, inputs),), sizes=(model.size,))
            return self._start_children(node, worker, cmd, model, inputs)
        raise TypeError(f"VerifyExecutor cannot run {model!r}")

    def checkpoint(self, node, worker, cmd) -> Payload:
        return Payload(64, worker.actor_state)

    def worker_gone(self, node, worker) -> None:
        for key in [k for k in self._waiting if k[0] == worker.worker_id]:
            self._waiting[key].done = True
            del self._waiting[key]
        client = self._clients.pop(worker.worker_id, None)
        if client is not None:
            try:
                node.cluster.kernel.remove_client(worker.worker_id)
            except Exception:
                pass

    # -- nested tasks: the worker acts as a client of its node ---------------------
    def _client(self, node, worker):
        c = self._clients.get(worker.worker_id)
        if c is None:
            kernel = node.cluster.kernel
            wid = worker.worker_id
            c = kernel.add_client(wid, lambda msg, wid=wid: self._on_message(wid, msg), colocated_with=node.address, kind="worker")
            self._clients[wid] = c
        return c

    def _start_children(self, node, worker, cmd: Execute, model: VTask, inputs: tuple) -> None:
        spec = cmd.spec
        fn = FunctionDescriptor(b"verify:child", "child")
        kids = tuple(
            TaskSpec(task_id=child_task_id(spec.task_id, j), job_id=spec.job_id, parent_task_id=spec.task_id,
                     function=fn, args=Payload(0, ch), resources=ResourceSet.of(CPU=0.5), max_retries=-1,
                     name=ch.key)
            for j, ch in enumerate(model.children)
        )
        client = self._client(node, worker)
        rid = self._next_req
        self._next_req += 1
        w = _Waiting(node, worker, cmd, inputs, kids, req_id=rid)
        self._waiting[(worker.worker_id, rid)] = w
        me = worker.worker_id
        for k in kids:
            client.send(node.address, SubmitTask(client=me, spec=k))
        client.send(node.address, WorkerBlocked(worker_id=me))
        client.send(node.address, WatchObjects(client=me, req_id=rid, object_ids=tuple(k.return_ids[0] for k in kids), fetch=True))
        return None

    def _on_message(self, wid: str, msg: Any) -> None:
        if type(msg) is not ObjectsReady:
            return
        w = self._waiting.get((wid, msg.req_id))
        if w is None or w.done:
            return
        for oid, info in msg.objects:
            if info.error is not None:
                w.values[oid] = info.error
            else:
                item = w.node.store.get(oid)
                w.values[oid] = item[1] if item is not None else ErrorInfo(ErrorKind.OBJECT_LOST, "child output vanished")
        if len(w.values) < len(w.children):
            return
        w.done = True
        del self._waiting[(wid, msg.req_id)]
        client = self._clients.get(wid)
        if client is not None:
            client.send(w.node.address, WorkerUnblocked(worker_id=wid))
        model = w.cmd.spec.args.data
        vals = [w.values[k.return_ids[0]] for k in w.children]
        errors = [v for v in vals if isinstance(v, ErrorInfo)]
        if errors:
            out = Outcome("raise", model.duration, error=errors[0])
        else:
            out = Outcome("ok", model.duration, values=(digest(model.key, w.inputs, tuple(vals)),), sizes=(model.size,))
        w.node.complete(w.worker, w.cmd, out)
