"""Swarm workloads on the real runtime: both drivers must agree.

Theory of operation
-------------------
The swarm (``swarm``) proves things about the simulator; the real runtime
(``transports``) runs the same core machines, but through other code: the
trio daemons, worker processes, the shared-memory store, the client.  This
module runs a swarm seed's ``Workload`` as an ordinary Ray-API program
(``import penumbra as ray``) on a cluster of real daemons on this machine,
and compares every value with the simulator's fault-free reference run
(``run_plan(plan, faults=False).results``), per key, with the swarm's own
rules (``checkers.check_results`` and ``taints._taints``).

The translation (``RealProgram``) keeps every value the same function of
the workload: a task computes ``digest(key, inputs[, children])`` from the
values of its arguments, exactly as ``VerifyExecutor`` does; a nested task
submits its children with ``.remote()`` and ``get``s them in order; an actor
keeps one chain per caller, as ``VActor`` does; puts are ``ray.put``.
Every object is as large as the plan says (``size``): a value travels as
``(digest, padding)`` whose padding is a pattern of the digest, so a
corrupted or truncated transfer shows as a wrong value, not as luck.

Faults are real: ``"worker"`` SIGKILLs the worker running a chosen task
(a parent task blocked in ``get`` on its held child, when the plan has one
with retries left), ``"node"`` SIGKILLs a non-head node daemon while a task
is running on it, mid-run, and a node of the same shape joins after (as
the swarm's crashes restart), ``"actor"`` SIGKILLs an actor's worker in
the middle of a call (a replay actor's where there is one: it restarts,
replays, and every value must still be exact).  Tasks hold at a file barrier until the
fault is in, so it always lands mid-task (``tests/test_chaos.py``'s way).
What a fault may legitimately change is tainted by ``taints._taints``, fed
with what really happened: each task's executions (marker files, and the
GCS's attempt count), the actors that restarted or died (their GCS rows and
their constructors' markers), and the node that died.

What is translated differently, and why (none changes a value):

* a put the plan makes from a driver on another node is made by the main
  driver (a second driver process per node is a test of ownership, not of
  values; such a put is never tainted ``lost`` here);
* calls the plan makes from a second driver go through the main driver's
  handle, carrying the caller's index: each caller's chain is still in its
  order (the main driver's order is one the plan allows);
* the cluster is the plan's nodes 0, 1 and the last (the nodes with the
  custom resource and the GPUs), with the plan's CPUs and resources, and a
  store big enough for the workload (``REAL_STORE``); ``store=`` makes the
  stores small instead, so that outputs are evicted and rebuilt from
  lineage, and the swarm's ``"store"`` taints apply.

Everything else is translated as the simulator runs it: nested tasks two
deep (children of half a CPU, retried without limit), tasks that raise
(``DesignedFailure``: the same message), ``max_retries``, custom resources
and fractional GPUs, actors with ``max_restarts``/``max_task_retries``,
``replay=True`` with ``checkpoint_interval``, actors holding half a GPU,
``kill`` (no restart), ``cancel`` of actor calls, ``wait`` (checked by
``check_waits``, its timing loosely), and placement groups (tasks and an
actor in a bundle, through ``PlacementGroupSchedulingStrategy``).

Seeds whose plan does not fit (``misfit``; 8 of the first 300): a task
asks more than any of those nodes has, a STRICT_SPREAD group needs more
nodes than would survive a kill, the store cannot hold the workload, or the
reference holds an error that depends on timing in a way the taints do not
cover (a full store or an evicted object in the simulator's small stores).

Where it lives: this module runs a plan and checks it (``run_real``,
``check_real``, ``penumbra verify --real``); what runs in the workers is
``realrun_worker``, the real cluster and which plans fit it
``realrun_fit`` (re-exported here).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..api import functions as ray  # the Ray API, as ``import penumbra as ray`` has it (the root re-exports it)
from ..core.layout import ClusterLayout, NodeShape
from ..core.records import ActorState, ErrorKind
from ..exceptions import GetTimeoutError, ObjectStoreFullError
from . import checkers as C
from .realrun_fit import REAL_STORE, misfit, real_layout, real_nodes, translatable
from .realrun_worker import Control, CorruptValue, DesignedFailure, _blob, _RealActor, _task, _touch, _value
from .workload import SLOT, digest

__all__ = ["REAL_STORE", "FAULTS", "RealRun", "RealReport", "misfit", "real_layout", "run_real", "check_real",
           "sample", "run_real_cli", "DesignedFailure",
           # (re-exported: the tests reach them here)
           "real_nodes", "translatable"]

FAULTS = ("none", "worker", "node", "actor")

# timing of the real cluster: a dead node is noticed within seconds
HEARTBEAT = 0.2
NODE_TIMEOUT = 2.0
# the "node" fault arms this far into the submission schedule
ARM_AT = 0.25


# ===========================================================================
# which seeds to run


def sample(count: int, fault: str = "none", start: int = 0, limit: int = 1000, store: int = REAL_STORE) -> list[int]:
    """The first ``count`` seeds from ``start`` that fit (``misfit``, with
    their reference runs, in stores of ``store`` bytes) and, for a fault,
    have a task it can target (``_choose_victim``): a deterministic sample."""
    from .plans import plan_seed
    from .runner import run_plan

    out = []
    for s in range(start, start + limit):
        plan = translatable(plan_seed(s))
        if misfit(plan, store=store):
            continue
        ref = run_plan(plan, faults=False, validate=False)
        if misfit(plan, ref, store) or (fault != "none" and not _choose_victim(plan, ref, fault)[0]):
            continue
        out.append(s)
        if len(out) == count:
            break
    return out


# ===========================================================================
# running it


@dataclass
class RealRun:
    """What the real program produced, and what happened to it."""

    seed: int
    fault: str
    results: dict[str, tuple] = field(default_factory=dict)
    # key -> the message of the error its get raised (``results`` records
    # only the kind, as the simulator's reference does: messages differ)
    messages: dict[str, str] = field(default_factory=dict)
    waits: dict[str, C.WaitOutcome] = field(default_factory=dict)
    violations: list[C.Violation] = field(default_factory=list)
    taints: dict[str, set[str]] = field(default_factory=dict)
    landed: str = ""  # what the fault did ("" if nothing)
    hit: bool = False  # it hit a task of the run mid-flight
    target: str = ""  # the item the fault was aimed at
    executions: dict[str, int] = field(default_factory=dict)  # key -> starts seen (tasks, children, calls)
    wall: float = 0.0


def _outcome(e: BaseException) -> tuple:
    """A ``get``'s exception as the swarm records it: ("e", kind, message)."""
    from ..exceptions import (ActorDiedError, ActorUnavailableError, NodeDiedError, ObjectLostError,
                              RuntimeEnvError, TaskCancelledError, TaskError, TaskUnschedulableError,
                              WorkerCrashedError)

    if isinstance(e, TaskError):
        cause = e.cause
        while isinstance(cause, TaskError) and cause.cause is not None and cause.cause is not cause:
            cause = cause.cause
        return ("e", ErrorKind.TASK_ERROR, str(cause))
    kinds = [(TaskCancelledError, ErrorKind.TASK_CANCELLED), (WorkerCrashedError, ErrorKind.WORKER_CRASHED),
             (NodeDiedError, ErrorKind.NODE_DIED), (ActorDiedError, ErrorKind.ACTOR_DIED),
             (ActorUnavailableError, ErrorKind.ACTOR_UNAVAILABLE), (ObjectLostError, ErrorKind.OBJECT_LOST),
             (TaskUnschedulableError, ErrorKind.TASK_UNSCHEDULABLE),
             (ObjectStoreFullError, ErrorKind.OBJECT_STORE_FULL), (RuntimeEnvError, ErrorKind.RUNTIME_ENV)]
    for cls, kind in kinds:
        if isinstance(e, cls):
            return ("e", kind, "")
    raise e


def _record(value: Any, size: int) -> tuple:
    """A ``get``'s value as the swarm records it; a value of the wrong
    size or pattern is recorded as what it is (it will not compare equal)."""
    try:
        v = _value(value)
    except CorruptValue as e:
        return ("v", f"corrupt: {e}")
    if len(value[1]) != size:
        return ("v", f"{v:#x} with {len(value[1])} bytes instead of {size}")
    return ("v", v)


class _FaultThread(threading.Thread):
    """Lands the run's fault when its barrier says the target is mid-task,
    then releases every held task (``go``)."""

    def __init__(self, run: "_Run") -> None:
        super().__init__(name="realrun-fault", daemon=True)
        self.run_ = run
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def _holds(self) -> dict[str, int]:
        d = os.path.join(self.run_.ctl.dir, "hold")
        out = {}
        for name in os.listdir(d):
            if name.endswith(".tmp"):
                continue
            key, pid = name.rsplit(".", 1)
            out[key] = int(pid)
        return out

    def run(self) -> None:
        r = self.run_
        try:
            if r.fault in ("worker", "actor"):
                self._worker()
            elif r.fault == "node":
                self._node()
        except BaseException as e:  # noqa: BLE001 - reported by the run
            self.error = e
        finally:
            _touch(os.path.join(r.ctl.dir, "go"), "go")

    def _until(self, cond, deadline: float) -> bool:
        while not cond():
            if self.stop.is_set() or time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def _worker(self) -> None:
        r = self.run_
        ctl = r.ctl
        want = [ctl.victim] + ([ctl.victim_child] if ctl.victim_child else [])
        if not self._until(lambda: all(k in self._holds() for k in want), r.fault_deadline):
            return
        if ctl.victim_child:
            time.sleep(0.05)  # the parent has entered its get
        pid = self._holds()[ctl.victim]
        os.kill(pid, signal.SIGKILL)
        r.hit = True
        r.landed = f"SIGKILL of {'the actor' if r.fault == 'actor' else 'worker'} {pid} running {ctl.victim}" + (
            f" (blocked in get on {ctl.victim_child})" if ctl.victim_child else "")

    def _node(self) -> None:
        r = self.run_
        victim = r.ctl.victim
        # The victim (sent there by a soft node affinity, submitted near the
        # middle of the run) holds when it starts there, and the node dies
        # then: always mid-task, mid-run.  Without a victim, every task that
        # starts there from ARM_AT of the schedule on holds, and the node
        # dies with the first.  (Not both: held tasks could fill the node's
        # CPUs, and the victim would queue behind them for ever.)
        def ready() -> bool:
            if not victim and time.monotonic() >= r.t0 + r.plan.horizon * r.time_scale * ARM_AT and not r.armed:
                _touch(os.path.join(r.ctl.dir, "armed"), "armed")
                r.armed = True
            holds = self._holds()
            return victim in holds if victim else bool(holds)

        if not self._until(ready, r.fault_deadline):
            return  # the program ended first (or the deadline): the fault did not land
        held = sorted(self._holds())
        doomed = r.doomed
        actors = sorted(k for k, node in _markers(r.ctl.dir, "i").items() if node == doomed.node_id)
        r.killed_at = time.monotonic() - r.t0
        r.cluster.remove_node(doomed)  # SIGKILL: its workers and its objects go with it
        r.hit = True
        r.landed = f"SIGKILL of node daemon {doomed.node_id} while running {', '.join(held)}" + (
            f", hosting actors {', '.join(actors)}" if actors else "")
        # a node of the same shape joins, as the swarm's crashed nodes restart
        r.cluster.add_node(**r.node_args[1])


@dataclass
class _Run:
    plan: Any
    fault: str
    ctl: Control
    cluster: Any
    doomed: Any
    node_args: list[dict]
    time_scale: float
    layout: ClusterLayout
    t0: float = 0.0
    fault_deadline: float = 0.0
    landed: str = ""
    hit: bool = False  # the fault hit a task mid-flight
    armed: bool = False
    killed_at: float = 0.0
    handles: dict = field(default_factory=dict)  # actor key -> handle
    refs: dict = field(default_factory=dict)  # item key -> ref


def _node_args(shape: NodeShape, spilling: bool = False) -> dict:
    res = dict(shape.resources.to_dict())
    args = {"num_cpus": res.pop("CPU", 0), "num_gpus": res.pop("GPU", 0), "resources": res,
            "object_store_memory": shape.object_store_memory,
            "node_timeout": NODE_TIMEOUT, "heartbeat_interval": HEARTBEAT,
            # (spilling as in the plan's layout, the reference's: a real
            # daemon spills by default, where the reference would evict
            # and rebuild, or fail a put)
            "spilling": spilling}
    return args


def _choose_victim(plan, reference, fault: str) -> tuple[str, str]:
    """What the fault kills: the task (or, for ``"actor"``, the actor call)
    whose first attempt holds until it is killed, and, for the worker
    fault, the child its parent is then blocked in ``get`` on.  ("", "")
    if the plan has nothing to target.

    A task whose reference value is a value (so it runs) and with a retry
    left; for the worker fault a parent if there is one; for the node fault
    one that fits the doomed node (plan node 1).  For the actor fault, a
    call of a restartable actor the plan neither kills nor cancels calls
    of, a replay actor's if there is one (its values must then come back
    exact).  The one submitted nearest the middle of the run."""
    w = plan.workload
    mid = plan.horizon / 2
    if fault == "actor":
        calls = [(a, c) for a in w.actors if a.kill_at is None and a.max_restarts != 0
                 and not any(c.cancel_at is not None for c in a.calls)
                 for c in a.calls if reference.results.get(c.key, ("e",))[0] == "v"]
        pool = [ac for ac in calls if ac[0].replay] or calls
        if not pool:
            return "", ""
        return min(pool, key=lambda ac: (abs(ac[1].at - mid), ac[1].key))[1].key, ""
    ok = [t for t in w.tasks if reference.results.get(t.key, ("e",))[0] == "v" and t.max_retries != 0
          and t.group is None]
    if fault == "node":
        ok = [t for t in ok if t.resources.is_subset_of(plan.layout.nodes[1].resources)]
    if not ok:
        return "", ""
    parents = [t for t in ok if t.model.children] if fault == "worker" else []
    pool = parents or ok
    t = min(pool, key=lambda t: (abs(t.at - mid), t.key))
    return t.key, (t.model.children[0].key if t.model.children and fault == "worker" else "")


def run_real(plan, fault: str = "none", *, reference=None, time_scale: float = 1.0, timeout: float = 60.0,
             validate: bool = False, store: int = REAL_STORE) -> RealRun:
    """Run ``plan``'s workload on a real cluster, with ``fault`` injected.

    Args:
        fault: ``"none"``, ``"worker"`` (SIGKILL of the worker running a
            task), ``"node"`` (SIGKILL of a node daemon mid-run) or
            ``"actor"`` (SIGKILL of an actor's worker mid-call).
        reference: the plan's fault-free simulator run (to choose what a
            fault kills among the items that run); without it, no fault
            lands.
        time_scale: real seconds per virtual second of the schedule.
        timeout: how long after the schedule every value must be ready.
        validate: the daemons check their machines' invariants after every
            event (slower).
        store: each node's object store, in bytes.  Smaller than
            ``REAL_STORE``, objects are evicted and rebuilt from lineage, and
            the swarm's ``"store"`` taints apply (a full store's error is no
            longer a wrong value; a lost one of a task that may retry is).

    Raises:
        ValueError: an unknown ``fault``, or a plan that does not fit
            (``misfit``).
    """
    if fault not in FAULTS:
        raise ValueError(f"fault must be one of {FAULTS}, got {fault!r}")
    why = misfit(plan, reference, store)
    if why:
        raise ValueError(f"seed {plan.seed} cannot run on the real runtime here: {why} "
                         f"(pick seeds with realrun.sample)")
    from ..transports.launch import Cluster

    t_start = time.monotonic()
    out = RealRun(plan.seed, fault)
    scratch = tempfile.mkdtemp(prefix=f"penumbra-real-{plan.seed}-")
    for sub in ("x", "i", "hold"):
        os.mkdir(os.path.join(scratch, sub))
    layout = real_layout(plan, store)
    node_args = [_node_args(s, layout.spilling) for s in layout.nodes]
    for a in node_args:
        a["validate"] = validate
    cluster = None
    try:
        cluster = Cluster(head_node_args=node_args[0])
        daemons = [cluster.head] + [cluster.add_node(**a) for a in node_args[1:]]
        ray.init(address=cluster.address, _token=cluster.token)
        cluster.wait_for_nodes()
        victim, victim_child = _choose_victim(plan, reference, fault) if fault != "none" and reference else ("", "")
        if fault != "none" and not victim:
            out.violations.append(C.Violation("harness", f"the plan has nothing the {fault} fault can target "
                                                         f"(see _choose_victim)"))
        out.target = victim
        ctl = Control(scratch, victim=victim, victim_child=victim_child,
                      doomed_node=daemons[1].node_id if fault == "node" else "")
        run = _Run(plan, fault, ctl, cluster, daemons[1], node_args, time_scale, layout)
        _program(run, out, timeout)
        out.landed, out.hit = run.landed, run.hit
        out.executions = _count(scratch, "x")
        _account(run, out)
    finally:
        try:
            ray.shutdown()
        finally:
            if cluster is not None:
                cluster.shutdown()
            shutil.rmtree(scratch, ignore_errors=True)
    out.wall = time.monotonic() - t_start
    return out


def _markers(scratch: str, kind: str) -> dict[str, str]:
    """``kind`` ("x": executions, "i": actor constructions): key -> what
    the last marker of it says (the node it ran on)."""
    out: dict[str, tuple[int, str]] = {}
    d = os.path.join(scratch, kind)
    for name in os.listdir(d):
        if name.endswith(".tmp"):
            continue
        key, _, ns = name.rsplit(".", 2)  # (an actor call's key has a dot too)
        try:
            with open(os.path.join(d, name)) as f:
                text = f.read()
        except OSError:
            continue
        if key not in out or out[key][0] < int(ns):
            out[key] = (int(ns), text)
    return {k: v[1] for k, v in out.items()}


def _count(scratch: str, kind: str) -> dict[str, int]:
    """How many markers of ``kind`` each key left."""
    out: dict[str, int] = {}
    for name in os.listdir(os.path.join(scratch, kind)):
        if not name.endswith(".tmp"):
            key = name.rsplit(".", 2)[0]
            out[key] = out.get(key, 0) + 1
    return out


def _program(run: _Run, out: RealRun, timeout: float) -> None:
    """The workload as a driver program: every item at its time, then a
    ``get`` of each (bounded), while the fault thread does its part."""
    from ..util.placement_group import placement_group
    from ..util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

    plan, ctl = run.plan, run.ctl
    w = plan.workload
    refs, handles = run.refs, run.handles
    groups: dict[str, Any] = {}
    sizes: dict[str, int] = {p.key: p.size for p in w.puts}
    sizes.update({t.key: t.model.size for t in w.tasks})
    sizes.update({c.key: c.model.size for a in w.actors for c in a.calls})
    events: list[tuple[float, int, Any]] = []

    def add(at: float, fn) -> None:
        events.append((at, len(events), fn))

    plans = {g.key: g for g in w.groups}

    def make_group(key: str):
        # at its time, or when a task first needs it (the simulator lets a
        # task wait for a group not made yet; the API needs the group)
        if key not in groups:
            g = plans[key]
            groups[key] = placement_group([{SLOT: 1}] * g.bundles, strategy=g.strategy)
        return groups[key]

    def in_group(opts: dict, group) -> dict:
        pg = make_group(group[0])
        return {**opts, "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=group[1])}

    for p in w.puts:
        add(p.at, lambda p=p: refs.__setitem__(p.key, _put(_blob(digest("put", p.key), p.size))))
    for g in w.groups:
        add(g.at, lambda g=g: make_group(g.key))
    for t in w.tasks:
        def submit(t=t):
            res = dict(t.resources.to_dict())
            opts = {"num_cpus": res.pop("CPU", 0), "num_gpus": res.pop("GPU", 0), "resources": res,
                    "max_retries": t.max_retries, "name": t.key}
            if t.group is not None:
                opts = in_group(opts, t.group)
            if ctl.doomed_node and t.key == ctl.victim:
                # the node fault's victim: there while it lives, anywhere after
                opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(ctl.doomed_node, soft=True)
            refs[t.key] = _task.options(**opts).remote(ctl, t.model, *[refs[d] for d in t.deps])
        add(t.at, submit)
    for a in w.actors:
        def create(a=a):
            opts = {"max_restarts": a.max_restarts, "max_task_retries": a.max_task_retries,
                    "replay": a.replay, "checkpoint_interval": a.checkpoint_interval}
            if a.gpus:
                opts["num_gpus"] = a.gpus
            if a.group is not None:
                opts = in_group({**opts, "num_cpus": 0, "resources": {SLOT: 0.5}}, a.group)
            handles[a.key] = _RealActor.options(**opts).remote(ctl, a.key)
        add(a.at, create)
        for c in a.calls:
            add(c.at, lambda a=a, c=c: refs.__setitem__(
                c.key, handles[a.key].m.remote(ctl, c.model, c.caller, *[refs[d] for d in c.deps])))
            if c.cancel_at is not None:
                add(c.cancel_at, lambda c=c: ray.cancel(refs[c.key]))
        if a.kill_at is not None:
            add(a.kill_at, lambda a=a: ray.kill(handles[a.key], no_restart=True))
    for wp in w.waits:
        add(wp.at, lambda wp=wp: _wait(wp, refs, out, run.time_scale, timeout))

    run.t0 = time.monotonic()
    end = max([e[0] for e in events] + [plan.horizon])
    run.fault_deadline = run.t0 + end * run.time_scale + 10.0
    faults = _FaultThread(run) if run.fault != "none" else None
    if faults is not None:
        faults.start()
    else:
        _touch(os.path.join(ctl.dir, "go"), "go")
    try:
        for at, _, fn in sorted(events, key=lambda e: (e[0], e[1])):
            delay = run.t0 + at * run.time_scale - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            fn()
        deadline = time.monotonic() + timeout
        for key, _ in sorted(w.submitted_at(), key=lambda x: (x[1], x[0])):
            try:
                value = ray.get(refs[key], timeout=max(0.1, deadline - time.monotonic()))
            except GetTimeoutError:
                out.violations.append(C.Violation("liveness", f"{key} was not ready {timeout:.0f} s after the "
                                                              f"schedule ended (a hang)", key))
                continue
            except Exception as e:  # noqa: BLE001 - an error the object holds
                try:
                    out.results[key] = _outcome(e)
                    out.messages[key] = str(e)
                except Exception:  # noqa: BLE001 - not an error kind of the API
                    out.violations.append(C.Violation("crash", f"{key}: get raised {type(e).__name__}: {e}", key))
                continue
            out.results[key] = _record(value, sizes[key])
    finally:
        if faults is not None:
            faults.stop.set()
            faults.join(timeout=30)
            if faults.error is not None:
                out.violations.append(C.Violation("harness", f"the fault thread raised {faults.error!r}"))


def _put(value: Any):
    """``ray.put``, retried while the store is full, as the swarm's driver
    does (``runner.PUT_TRIES`` x ``PUT_PAUSE``): running tasks unpin what
    they hold, and evictable objects make room."""
    from .runner import PUT_PAUSE, PUT_TRIES

    for _ in range(PUT_TRIES - 1):
        try:
            return ray.put(value)
        except ObjectStoreFullError:
            time.sleep(PUT_PAUSE)
    return ray.put(value)


def _wait(wp, refs: dict, out: RealRun, time_scale: float, timeout: float) -> None:
    """``ray.wait`` as the plan has it; a wait without a timeout is bounded
    by ``timeout`` (returning short then is a hang: ``check_waits`` says so).
    Real time is not the plan's: how long a wait with a timeout took is
    checked loosely here, not by ``check_waits``."""
    objs = [refs[k] for k in wp.refs]
    limit = wp.timeout * time_scale if wp.timeout is not None else timeout
    t0 = time.monotonic()
    ready, _ = ray.wait(objs, num_returns=wp.num_returns, timeout=limit, fetch_local=wp.fetch)
    took = time.monotonic() - t0
    keys = [wp.refs[objs.index(r)] for r in ready]
    o = C.WaitOutcome(started=0.0, ready=keys, done=True, timed_out=len(keys) < wp.num_returns)
    o.twice = [k for i, k in enumerate(keys) if k in keys[:i]]
    if wp.timeout is not None and took > limit + 5.0:
        out.violations.append(C.Violation("waits", f"wait {wp.key} with timeout {limit:.3f}s returned after "
                                                   f"{took:.3f}s", wp.key))
    out.waits[wp.key] = o


def _account(run: _Run, out: RealRun) -> None:
    """What the fault did, in ``taints._taints``'s terms, and the taints."""
    from ..api.context import current_runtime
    from ..core.tables import Get
    from .plans import FaultPlan
    from .taints import _taints

    plan = run.plan
    w = plan.workload
    rt = current_runtime()
    # attempts a task used: its executions, or the GCS's count where the node
    # running (or queueing) it died and it was handed on without running
    attempts: dict[str, int] = {}
    for t in w.tasks:
        n = out.executions.get(t.key, 0)
        try:
            row = rt.gcs_request(Get("tasks", run.refs[t.key].task_id()), timeout=30.0)
        except Exception:  # noqa: BLE001 - no row: its executions alone
            row = None
        if row is not None:
            n = max(n, row.attempt + 1)  # (as run_plan counts them)
        attempts[t.key] = n
    inits = _count(run.ctl.dir, "i")
    disturbed = set()
    for a in w.actors:
        h = run.handles.get(a.key)
        if a.kill_at is not None or h is None:
            disturbed.add(a.key)
            continue
        try:
            row = rt.gcs_request(Get("actors", h.actor_id), timeout=30.0)
        except Exception:  # noqa: BLE001
            row = None
        if (row is None or row.incarnation > 0 or row.state is not ActorState.ALIVE or inits.get(a.key, 0) > 1):
            disturbed.add(a.key)
    # (a worker kill is in the attempts counted above; a node kill is a crash)
    faults = FaultPlan()
    if run.fault == "node" and run.landed:
        faults = FaultPlan(crashes=((round(run.killed_at / run.time_scale, 3), 1, 1.0),))
    real = dataclasses.replace(plan, layout=run.layout, faults=faults,
                               workload=dataclasses.replace(w, puts=tuple(dataclasses.replace(p, node=0)
                                                                          for p in w.puts)))
    # (a store smaller than REAL_STORE evicts: a finite retry budget may be
    # spent rebuilding, as a fault would spend it)
    faulty = run.fault != "none" or run.layout.nodes[0].object_store_memory < REAL_STORE
    out.taints = _taints(real, faulty, attempts, {k: _Keyed(k) for k in attempts}, disturbed)


@dataclass(frozen=True)
class _Keyed:
    """``taints._taints`` reads a task's attempts as
    ``executions[keys[key].task_id]``; here attempts are keyed by item key."""

    key: str

    @property
    def task_id(self) -> str:
        return self.key


# ===========================================================================
# checking it


@dataclass
class RealReport:
    seed: int
    fault: str
    ok: bool
    violations: list[C.Violation]
    landed: str
    wall: float
    run: RealRun | None = None
    hit: bool = False  # the fault hit a task of the run mid-flight

    def summary(self) -> str:
        status = "ok" if self.ok else f"FAILED ({len(self.violations)} violations)"
        hit = f"; fault: {self.landed}" if self.landed else ""
        return f"seed {self.seed} on the real runtime ({self.fault}): {status}, {self.wall:.1f}s{hit}"


def check_real(seed: int, fault: str = "none", *, plan=None, **kw) -> RealReport:
    """Run ``seed`` on the real runtime with ``fault`` and compare it with
    the simulator's fault-free reference run (``check_results`` with the
    taints of what the fault did; waits by ``check_waits``; every item ready
    in bounded time)."""
    from .plans import plan_seed
    from .runner import run_plan

    t0 = time.monotonic()
    plan = translatable(plan or plan_seed(seed))
    ref = run_plan(plan, faults=False, validate=False)
    run = run_real(plan, fault, reference=ref, **kw)
    violations = list(run.violations)
    violations += [_with_message(v, run.messages.get(v.key, ""))
                   for v in C.check_results(ref.results, run.results, run.taints)]
    missing = sorted(set(ref.results) - set(run.results) - {v.key for v in violations})
    violations += [C.Violation("liveness", f"{k} has no result on the real runtime", k) for k in missing]
    violations += C.check_waits(plan.workload.waits, run.waits)
    if fault != "none" and not run.landed:
        violations.append(C.Violation("harness", f"the {fault} fault never landed"))
    return RealReport(seed, fault, not violations, violations, run.landed, time.monotonic() - t0, run, run.hit)


def _with_message(v: C.Violation, message: str) -> C.Violation:
    """``v`` saying what the error the user got said: a result is
    compared by its error's kind only, so its message is not in it."""
    if not message or not v.what.startswith(f"{v.key}: expected"):
        return v
    first = message.splitlines()[0]
    return dataclasses.replace(v, what=f"{v.what}; the error said: {first}")


def run_real_cli(args) -> int:
    """``penumbra verify --real``: ``--seed S`` runs seed S with each fault in
    turn; ``--seeds N`` runs N seeds, the i-th with ``FAULTS[i % 4]``: the
    first seed after the previous one that fits and that fault can target
    (``sample``)."""
    if args.seed is not None:
        runs = [(args.seed, f) for f in FAULTS]
    else:
        runs, start = [], 0
        for i in range(args.seeds):
            fault = FAULTS[i % len(FAULTS)]
            seed = sample(1, fault, start=start)[0]
            runs.append((seed, fault))
            start = seed + 1
    t0 = time.monotonic()
    bad, done = [], 0
    for seed, fault in runs:
        try:
            r = check_real(seed, fault)
        except ValueError as e:  # a seed that does not fit (--seed S)
            print(f"seed {seed} ({fault}): skipped: {e}")
            continue
        if fault != "none" and not r.run.target:
            print(f"seed {seed} ({fault}): skipped: the plan has nothing this fault can target")
            continue
        done += 1
        print(r.summary(), flush=True)
        if not r.ok:
            bad.append(r)
            for v in r.violations[:5]:
                print(f"   {v}")
            print(f"   replay: penumbra verify --real --seed {seed}")
    print(f"{done} real runs in {time.monotonic() - t0:.1f}s: {done - len(bad)} agree with the "
          f"simulator, {len(bad)} do not")
    return 0 if not bad else 1
