"""Real Python programs on the simulator, in virtual time: ``SimRuntime``.

``penumbra.init(simulated=True)`` (or ``simulated=SimConfig(...)``) runs an
unchanged API program (``f.remote``, ``get``, actors ...) on a ``SimCluster``:
the same core machines as the real runtime, on the SimPy kernel, with the
network, costs and faults of the simulator.  The user's functions and actor
methods really run (their return values are real values); only *time* is
simulated.

Theory of operation
-------------------
**Clients.**  The driver (``SimRuntime``) and every simulated worker that runs
a task (``_WorkerRuntime``) are ``Runtime``s, each a kernel client colocated
with its node and speaking the same messages as
``penumbra.transports.client.ClientRuntime``: ``SubmitTask``,
``WatchObjects``/``CancelWatch`` for ``get``/``wait``, ``PutObject``,
``ReleaseObjects``, ``ClientGcsRequest``, ``ClusterStatusRequest``,
``CancelTask``, ``KillActor``, and, for a worker blocked in ``get``,
``WorkerBlocked``/``WorkerUnblocked``.  A worker's client id is its worker id,
so nested tasks and actor calls are submitted to (and ordered per) the
worker that made them, as in the real system.

**Values.**  A node's simulated store holds real serialized bytes
(``penumbra.transports.serialization``): a task's return values, ``put``
values, and what fetches copy between nodes.  ``get`` deserializes from the
store of the caller's node, so values have copy semantics (numpy arrays come
back read-only, as from Ray's shared memory) and objects have their real
sizes (what the network and the store accounting are charged).

**The executor** (``PythonExecutor``, the cluster's ``Executor``) runs each
``Execute`` the way ``penumbra.transports.worker`` does: the function or
class comes from the GCS function table (payload ``(blob, sys_path)``),
dependency values from the node's store, errors become ``TaskError``
payloads (``retry_exceptions``, ``num_returns`` checks included), an actor's
instance lives on its simulated worker, and checkpoints use
``__penumbra_checkpoint__``/``__penumbra_restore__`` or ``__dict__``.  A
task's virtual duration is ``SimConfig.task_time`` (plus the cost model's
``task_overhead`` and store writes), never wall time.

**Threads and the hand-off.**  Every task body runs on a thread of its own
(a *fiber*), because it may block in the API (``get``, ``wait``, a GCS
request, ``put``) halfway through.  Exactly one thread runs at any moment:

* the *loop thread* is the driver thread that is blocked in an API call: it
  runs the kernel (``cluster.run_until``) until its answer arrives;
* when the kernel starts a task (an ``Execute``, then a ``call_at`` on the
  node at the same instant), the loop thread *switches* to a new fiber:
  it releases the fiber's ``go`` semaphore and waits on its ``back``
  semaphore;
* the fiber runs user code until it finishes (its ``Outcome`` goes to
  ``node.complete``) or blocks in the API: it then sends its messages,
  registers what it waits for, releases ``back`` and waits on ``go``
  (*parks*);
* a message to a worker's client that satisfies a parked fiber's wait
  schedules a resume on the fiber's node (``host.call_at``), as does its
  virtual timeout; the resume switches to the fiber again.

While a fiber runs, ``penumbra.api.context``'s current runtime is swapped
for the fiber's worker runtime (and restored when it parks), so the API
sees the right client; since only one thread runs, the swap is safe.  So
are ``sys.stdout`` and ``sys.stderr``, so that what a task prints is
prefixed as a real worker's output is (``_FiberOutput``).  The
order of everything is the kernel's, so the same seed and program give the
same results and the same trace hash.

Virtual time
    ``get(timeout=...)`` and ``wait(timeout=...)`` are in *virtual* seconds.
    Nothing advances virtual time but the simulation: ``time.sleep`` in user
    code blocks the whole simulation in wall time and advances nothing (use
    ``penumbra.sim.runtime.sleep`` for a virtual sleep).  Tasks submitted by
    the driver make progress only while the driver is blocked in the API
    (``get``, ``wait``, ``put``, ``get_actor`` ...).  A ``get`` without a
    timeout gives up with ``SimulationStalled`` when the simulation is
    stuck: ``SimConfig.max_blocking_time`` virtual seconds passed and no
    task is running towards an end (none has a completion or a virtual
    timeout scheduled: every task waits for something never produced).

Limits
    * Call the driver-side API from one thread at a time; threads started
      inside a task must not call the API.
    * ``await ref`` inside async actors is not supported (``ray.get`` works).
    * Cancelling a running task raises ``KeyboardInterrupt`` in it at once if
      it is parked in an API call (``sleep``, ``get``, ``wait``), as a real
      worker's signal wakes a blocking call, and otherwise at its next API
      call (pure computation cannot be preempted in a fiber).
    * A simulated node crash unwinds the tasks running there by raising an
      internal ``BaseException`` at their next API call; user code that
      swallows ``BaseException`` keeps its thread until shutdown.
    * The driver lives on ``SimConfig.driver_node``: crashing that node ends
      the program (every further blocking call raises ``PenumbraError``).
    * User code must not wait in wall time for another simulated task
      (a ``threading.Lock`` held by a parked task, a ``queue.Queue`` fed by
      another): the other task cannot run meanwhile (a warning is logged
      after a minute).
    * Same seed, same program: same results, virtual times and trace hash,
      in any process.  With ``gcs_shards > 1`` the trace hash may differ
      between runs (not the results): cloudpickle gives classes defined in
      functions or ``__main__`` a random id, which ends up in their
      function id and so picks their function-table shard.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..api import context
from ..api.context import TaskContext, job_namespace, use_task_context
from ..api.execution import (
    actor_state,
    assigned_resources,
    call_args,
    construct_actor,
    environment,
    exit_error,
    gpu_ids_for,
    install_terminate,
    output_name,
    restore_actor,
    set_visible_gpus,
    split_returns,
    task_env,
    task_error,
)
from ..api.generators import is_generator_result, stream_values
from ..api.refs import ObjectRef
from ..api.runtime import ErrorValue, Runtime
from ..core.client import ClientMachine, ConnectionLost, Fail, Resolve, ShutDown, TimedOut
from ..core.ids import ActorId, ObjectId, TaskId
from ..core.layout import ClusterLayout, NodeShape
from ..core.messages import (
    ActorRegistered,
    CancelTask,
    CheckpointActor,
    ClientGcsReply,
    ClientGcsRequest,
    ClusterStatus,
    ClusterStatusRequest,
    Execute,
    KillActor,
    ObjectsReady,
    PutDone,
    PutFailed,
    PutObject,
    RegisterClient,
    ReleaseObjects,
    Send,
    SubmitTask,
    WorkerBlocked,
    WorkerUnblocked,
)
from ..core.records import ErrorInfo, ErrorKind
from ..core.specs import Payload, ResourceSet, TaskSpec
from ..core.tables import KvIncrement
from ..exceptions import (
    GetTimeoutError,
    ObjectStoreFullError,
    PenumbraError,
)
from ..transports.serialization import deserialize, serialize
from .cluster import (
    AddNode,
    CrashNode,
    Executor,
    Outcome,
    SimCluster,
    SimNode,
    SimWorker,
)
from .costs import LOCAL, PAPER, ZERO, CostModel
from .faults import FaultSchedule

__all__ = [
    "AddNode",
    "CrashNode",
    "FaultSchedule",
    "PythonExecutor",
    "SimConfig",
    "SimRuntime",
    "SimulationStalled",
    "current_simulation",
    "now",
    "sleep",
    "start_simulated",
]

logger = logging.getLogger("penumbra")

_PRESETS = {"PAPER": PAPER, "LOCAL": LOCAL, "ZERO": ZERO}


class SimulationStalled(PenumbraError, TimeoutError):
    """A blocking call without a timeout waited ``max_blocking_time`` virtual
    seconds and no task is running towards an end: the program is
    deadlocked (a task waits for an object never produced, an actor waits
    for itself, a task needs resources no node has...)."""


@dataclass(frozen=True)
class SimConfig:
    """How to simulate: the cluster, the costs, the seed and the faults.

    Args:
        nodes: a number of identical nodes (each with ``num_cpus``,
            ``num_gpus``, ``resources``, ``object_store_memory``), or one entry
            per node: a ``NodeShape``, or a dict of resources (``{"CPU": 4,
            "GPU": 1, "ssd": 1}``; ``CPU`` defaults to ``num_cpus``).
        num_cpus, num_gpus, resources, object_store_memory: the shape of each
            node when ``nodes`` is a number (default 2 CPUs, 1 GiB); the same
            arguments given to ``init`` take precedence.
        costs: a ``CostModel`` or the name of a preset: ``"PAPER"`` (the Ray
            paper's testbed, default), ``"LOCAL"`` or ``"ZERO"``.
        seed: the seed of every random choice of the simulation.
        faults: a ``FaultSchedule`` or a list of ``(time, fault)``
            (``CrashNode("node:1")``, ``Crash``, ``Partition``, ...), with times
            in virtual seconds *after* ``init`` returns.
        task_time: the virtual seconds of work of every task and actor call
            (the cost model adds its ``task_overhead`` and store writes), or
            ``task_time(spec) -> seconds``.
        driver_node: the index of the node the driver runs on.
        detect: how the head finds dead nodes: ``"heartbeat"`` (missed
            heartbeats, as the real system) or ``"omniscient"`` (told at once,
            after ``detect_delay``).
        gcs_shards, chain_length: the GCS's shards and replicas per shard.
        trace: ``"key"`` (default), ``"type"``, ``"full"`` or ``False``; the
            trace's hash is ``runtime.trace_hash()``.
        validate: check every machine's invariants after every event (slow).
        max_blocking_time: a blocking call with no timeout raises
            ``SimulationStalled`` when this many virtual seconds passed and
            then no task is running towards an end (checked again every as
            many seconds while some are).
        layout: extra ``ClusterLayout`` fields (``heartbeat_interval``,
            ``node_timeout``, ``scheduler``...; ``spilling=False`` to make a
            full store fail puts instead of spilling them).
        disk_bytes: each node's disk for spilled objects (0: unbounded).
    """

    nodes: int | Sequence[Mapping[str, float] | NodeShape] = 1
    num_cpus: float | None = None
    num_gpus: float | None = None
    resources: Mapping[str, float] | None = None
    object_store_memory: int | None = None
    costs: CostModel | str = "PAPER"
    seed: int = 0
    faults: Any = None
    task_time: float | Callable[[TaskSpec], float] = 0.001
    driver_node: int = 0
    detect: str = "heartbeat"
    detect_delay: float = 0.0
    gcs_shards: int = 1
    chain_length: int = 1
    trace: Any = "key"
    validate: bool = False
    max_blocking_time: float = 60.0
    layout: Mapping[str, Any] = field(default_factory=dict)
    disk_bytes: int = 0

    def cost_model(self) -> CostModel:
        c = self.costs
        if isinstance(c, CostModel):
            return c
        if isinstance(c, str) and c.upper() in _PRESETS:
            return _PRESETS[c.upper()]
        raise ValueError(f"SimConfig.costs must be a CostModel or one of {sorted(_PRESETS)}, got {c!r}")

    def shapes(self, num_cpus=None, num_gpus=None, resources=None, object_store_memory=None) -> tuple[NodeShape, ...]:
        """The node shapes, with ``init``'s arguments taking precedence."""
        cpus = _first(num_cpus, self.num_cpus, 2)
        gpus = _first(num_gpus, self.num_gpus, 0)
        extra = dict(_first(resources, self.resources, {}))
        store = int(_first(object_store_memory, self.object_store_memory, 1 << 30))
        for k in extra:
            if k in ("CPU", "GPU"):
                raise ValueError(f"use num_cpus/num_gpus instead of resources={{{k!r}: ...}}")

        def shape(amounts: Mapping[str, float]) -> NodeShape:
            # every node offers ``memory`` (bytes, for ``memory=`` requests), as
            # Ray's do: Ray gives the store 30% of the node's memory and this
            # resource 70%, so a simulated node has 7/3 of its store
            amounts = {"memory": default_memory_resource(store), **amounts}
            return NodeShape(resources=ResourceSet.from_dict(amounts), object_store_memory=store)

        if isinstance(self.nodes, int):
            if self.nodes < 1:
                raise ValueError(f"SimConfig.nodes must be >= 1, got {self.nodes}")
            return (shape({"CPU": cpus, "GPU": gpus, **extra}),) * self.nodes
        if any(v is not None for v in (num_cpus, num_gpus, resources)):
            raise ValueError("SimConfig.nodes lists each node's resources: do not also pass num_cpus, num_gpus "
                             "or resources to init()")
        out = []
        for n in self.nodes:
            if isinstance(n, NodeShape):
                out.append(n)
            elif isinstance(n, Mapping):
                out.append(shape({"CPU": cpus, **n}))
            else:
                raise TypeError(f"each entry of SimConfig.nodes is a NodeShape or a dict of resources, got {n!r}")
        if not out:
            raise ValueError("SimConfig.nodes is empty")
        return tuple(out)


def default_memory_resource(object_store_memory: int) -> int:
    """A simulated node's ``memory`` resource: 70% of a node whose store
    holds the other 30%, Ray's split."""
    return object_store_memory * 7 // 3


def _first(*values):
    for v in values:
        if v is not None:
            return v
    return None


# ===========================================================================
# fibers: task threads that hand control back and forth with the loop


_START, _READY, _TIMEOUT, _KILLED = "start", "ready", "timeout", "killed"
_WALL_WARNING = 60  # seconds of wall time a task may run without handing back before we warn


class _WorkerKilled(BaseException):
    """Unwinds a task thread whose simulated worker is gone (not an
    ``Exception``, so that user code does not catch it by accident)."""


class _Wait:
    __slots__ = ("ready", "scheduled", "timed")

    def __init__(self, ready: Callable[[], bool], timed: bool) -> None:
        self.ready = ready
        self.scheduled = False
        self.timed = timed


class _FiberOutput(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` while a simulated task runs: its lines
    go to the driver's stream prefixed as a real worker's are, ``(name
    pid=N)`` (see ``execution.output_name``: the function's name, or the
    actor's class name or ``repr()``).  Every simulated worker is this
    process, so ``N`` is its pid.  A line left unended when the task parks
    or ends is written then."""

    def __init__(self, target: Any, fiber: "_Fiber") -> None:
        self.target = target
        self.fiber = fiber
        self.buf: list[str] = []
        self.in_repr = False

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.buf.append(s)
        if "\n" in s and not self.in_repr:
            self._emit()
        return len(s)

    def flush(self) -> None:
        if self.buf and not self.in_repr:
            self._emit()

    def _emit(self) -> None:
        text, self.buf = "".join(self.buf), []
        spec = self.fiber.cmd.spec
        actor = self.fiber.worker.actor_state if spec.actor_id is not None else None
        if spec.actor_creation is not None:
            cls_name = spec.actor_creation.cls.name.rsplit(".", 1)[-1]
        else:
            cls_name = type(actor).__name__ if actor is not None else ""
        self.in_repr = True  # (what an actor's __repr__ prints is written after, under the class name)
        try:
            name = output_name(spec.display_name(), actor, cls_name)
        finally:
            self.in_repr = False
        side, self.buf = "".join(self.buf), []
        self._write(text, name)
        self._write(side, cls_name)

    def _write(self, text: str, name: str) -> None:
        if not text:
            return
        prefix = f"({name} pid={os.getpid()})"
        try:
            self.target.write("".join(f"{prefix} {line}\n" for line in text.splitlines()))
            self.target.flush()
        except Exception:  # noqa: BLE001 - the driver's stream is closed: the output is lost, not the task
            pass


class _Fiber:
    """One task running on a thread of its own, switched to and from."""

    def __init__(self, sim: SimRuntime, rt: _WorkerRuntime, node: SimNode, worker: SimWorker,
                 cmd: Execute, body: Callable[[_Fiber], Outcome | None]) -> None:
        self.sim = sim
        self.rt = rt
        self.node = node
        self.worker = worker
        self.cmd = cmd
        self.go = threading.Semaphore(0)
        self.back = threading.Semaphore(0)
        self.reason = _START
        self.wait: _Wait | None = None
        self.done = False
        self.killed = False
        self.interrupted = False
        self.env_vars: tuple = ()  # runtime_env env_vars, set while it runs
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, args=(body,), daemon=True,
                                       name=f"penumbra-sim {worker.worker_id} {cmd.spec.display_name()}")

    def _main(self, body) -> None:
        self.go.acquire()
        try:
            self.outcome = body(self)
        except _WorkerKilled:
            self.outcome = None
        except BaseException as e:  # noqa: BLE001 - a simulator bug: re-raised on the loop thread
            self.error = e
        finally:
            self.done = True
            self.back.release()

    def switch(self, reason: str) -> None:
        """Loop side: run the fiber until it parks or ends."""
        self.reason = reason
        sim = self.sim
        prev_rt, prev_cur = context._runtime, sim.current
        prev_out, prev_err = sys.stdout, sys.stderr
        context._runtime = self.rt
        sim.current = self
        # CUDA_VISIBLE_DEVICES names the task's GPUs while it runs, as in a
        # real worker: the environment is the process's, but only one fiber
        # runs at a time, so setting it on each switch in is exact
        prev_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        set_visible_gpus(gpu_ids_for(self.cmd.gpu_ids))
        env = environment(self.env_vars)  # (its env_vars, the same way)
        env.__enter__()
        # (only one thread runs: the task's prints are its own while it does)
        out, err = sys.stdout, sys.stderr = _FiberOutput(prev_out, self), _FiberOutput(prev_err, self)
        try:
            self.go.release()
            while not self.back.acquire(timeout=_WALL_WARNING):
                logger.warning(
                    "penumbra simulator: task %s has run for %d s of wall time without handing control back "
                    "(is it blocked on a lock or event held by another simulated task? only one task runs at "
                    "a time in the simulator)", self.cmd.spec.display_name(), _WALL_WARNING)
        finally:
            env.__exit__(None, None, None)
            out.flush()
            err.flush()
            if sys.stdout is out:
                sys.stdout = prev_out
            if sys.stderr is err:
                sys.stderr = prev_err
            context._runtime = prev_rt
            sim.current = prev_cur
            if prev_visible is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = prev_visible

    def park(self) -> str:
        """Fiber side: hand control back until resumed; returns why."""
        self.back.release()
        self.go.acquire()
        return self.reason


# ===========================================================================
# clients: the driver's and the simulated workers' runtimes


class _Waiter:
    """What a blocked API call waits on: the outcome the client machine
    gives it (``state``: ``"done"``, ``"timeout"`` or ``"fail"``)."""

    __slots__ = ("state", "value")

    def __init__(self) -> None:
        self.state: str | None = None
        self.value: Any = None


class _WatchTimeout(Exception):
    def __init__(self, partial: dict) -> None:
        self.partial = partial


def _decode(item: Any) -> Any:
    """A value from a node's store entry ``(size, value)``."""
    v = item[1]
    if v.__class__ is bytes:
        return deserialize(v)
    if isinstance(v, ErrorInfo):
        return ErrorValue(v)
    return v  # stored by another executor (a model's plain value)


class _SimClient(Runtime):
    """What the driver and the workers share: one kernel client on a node."""

    kind = "client"

    def __init__(self, sim: SimRuntime, address: str, node: str, *, job_id: int, is_worker: bool,
                 namespace: str = "") -> None:
        self.sim = sim
        self.client_id = address
        self.node_id = node
        self.address = f"sim://{node}"
        self.job_id = job_id
        self.is_worker = is_worker
        self.namespace = namespace
        self.alive = True
        # what waits for what: the pure client machine the real client runs
        self.machine = ClientMachine(address, node)
        self._functions: dict[bytes, Any] = {}
        self._exported: set[bytes] = set()
        self.client = sim.kernel.add_client(address, self._on_message, colocated_with=node, kind=self.kind)

    @property
    def namespace(self) -> str:
        """The driver's namespace; in a worker, that of the job whose task
        runs on this fiber (see ``context.job_namespace``)."""
        return job_namespace(self) if self.is_worker else self._namespace

    @namespace.setter
    def namespace(self, value: str) -> None:
        self._namespace = value

    # ------------------------------------------------------------------ plumbing
    def _dead(self) -> BaseException:
        return PenumbraError(f"this simulated client ({self.client_id}) is gone: the simulation was shut down "
                             f"or its node {self.node_id} crashed")

    def _send(self, msg: Any) -> None:
        if not self.alive:
            raise self._dead()
        self.client.send(self.node_id, msg)

    def _node(self) -> SimNode:
        return self.sim.cluster.nodes[self.node_id]

    def _on_message(self, msg: Any) -> None:
        t = msg.__class__
        if t is ObjectsReady:
            self._run(self.machine.on_objects(msg.req_id, msg.objects, None, msg.stimulus_id))
        elif t is ClientGcsReply or t is PutDone or t is PutFailed or t is ClusterStatus:
            self._run(self.machine.on_reply(msg.req_id, msg))
        elif t is ActorRegistered:
            self._run(self.machine.handle(msg))
        else:
            return
        self._poke()

    def _run(self, cmds: list) -> None:
        """Carry out the client machine's commands."""
        for c in cmds:
            t = c.__class__
            if t is Send:
                if self.alive:
                    self.client.send(self.node_id, c.msg)
            elif t is Resolve:
                c.waiter.state, c.waiter.value = "done", c.value
            elif t is TimedOut:
                c.waiter.state, c.waiter.value = "timeout", c.partial
            elif t is Fail:
                c.waiter.state, c.waiter.value = "fail", (c.reason, c.detail)

    def _await(self, w: _Waiter, rid: int, timeout: float | None) -> _Waiter:
        """Block until ``w`` has its outcome, or ``timeout``: then the
        machine decides (the answer, if it came first, or a timeout)."""
        if not self._block(lambda: w.state is not None, timeout):
            self._run(self.machine.give_up(rid))
        if w.state == "fail":
            raise self._dead()
        return w

    def _poke(self) -> None:
        pass

    def _block(self, ready: Callable[[], bool], timeout: float | None) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def _request(self, make: Callable[[int], Any], timeout: float | None, what: str) -> Any:
        if not self.alive:
            raise self._dead()
        w = _Waiter()
        rid, cmds = self.machine.request(w, make)
        self._run(cmds)
        if self._await(w, rid, timeout).state != "done":
            raise GetTimeoutError(f"{what} got no answer from the simulated node within {timeout} virtual seconds")
        return w.value

    def _watch(self, ids: Sequence[ObjectId], need: int, timeout: float | None, fetch: bool) -> dict:
        uniq = tuple(dict.fromkeys(ids))
        if not 0 < need <= len(uniq):
            raise ValueError(f"cannot wait for {need} of {len(uniq)} distinct object(s); "
                             f"ask for between 1 and {len(uniq)}")
        cid = self.client_id
        blocked = self.is_worker
        if blocked:
            self._send(WorkerBlocked(worker_id=cid))
        try:
            if not self.alive:
                raise self._dead()
            w = _Waiter()
            rid, cmds = self.machine.watch(w, uniq, need, fetch=fetch, report_need=self.report_need(need, timeout))
            self._run(cmds)
            if self._await(w, rid, timeout).state != "done":
                raise _WatchTimeout(w.value)
            return w.value
        finally:
            if blocked and self.alive:
                self._send(WorkerUnblocked(worker_id=cid))

    # ------------------------------------------------------------------ Runtime
    def submit(self, spec: TaskSpec) -> None:
        self._send(SubmitTask(client=self.client_id, spec=spec))

    def create_actor(self, spec: TaskSpec, timeout: float | None) -> None:
        a = spec.actor_creation
        if not a.name:
            self.submit(spec)
            return
        if not self.alive:
            raise self._dead()
        w = _Waiter()
        rid, cmds = self.machine.register_actor(w, a.actor_id, SubmitTask(client=self.client_id, spec=spec))
        self._run(cmds)
        if self._await(w, rid, timeout).state != "done":
            raise GetTimeoutError(f"registering actor name {a.name!r} timed out after {timeout} virtual seconds")
        reply = w.value
        if reply.error:
            raise ValueError(reply.error)

    def get_objects(self, ids: Sequence[ObjectId], timeout: float | None) -> list[Any]:
        missing = list(dict.fromkeys(ids))
        values: dict[ObjectId, Any] = {}
        for _attempt in range(3):
            try:
                results = self._watch(missing, len(missing), timeout, True)
            except _WatchTimeout as t:
                not_ready = [o for o in missing if o not in t.partial]
                raise GetTimeoutError(
                    f"get timed out after {timeout} virtual seconds: {len(not_ready)} of {len(ids)} object(s) "
                    f"not ready (first: {not_ready[0].hex() if not_ready else '?'})"
                ) from None
            store = self._node().store
            vanished = []
            for oid, (info, _) in results.items():
                if info.error is not None:
                    values[oid] = ErrorValue(info.error)
                    continue
                item = store.get(oid)
                if item is None:
                    vanished.append(oid)  # evicted between the reply and our read
                else:
                    values[oid] = _decode(item)
            if not vanished:
                return [values[oid] for oid in ids]
            missing = vanished
        raise PenumbraError("objects kept vanishing from the simulated store while being read; the store is thrashing")

    def wait_objects(self, ids: Sequence[ObjectId], num_returns: int, timeout: float | None,
                     fetch_local: bool) -> set[ObjectId]:
        try:
            results = self._watch(ids, num_returns, timeout, fetch_local)
        except _WatchTimeout as t:
            return set(t.partial)
        return set(results)

    def put_object(self, oid: ObjectId, value: Any) -> None:
        data = serialize(value, ref_type=ObjectRef, subject="the value passed to put()").to_bytes()
        size = len(data)
        if not self.alive:
            raise self._dead()
        sim = self.sim
        self._node().store[oid] = (size, data)
        sim.put_owner[oid] = self
        w = _Waiter()
        cid = self.client_id
        rid, cmds = self.machine.request(w, lambda rid: PutObject(client=cid, req_id=rid, object_id=oid, size=size))
        t = sim.cluster.costs.store_write_time(size)
        if t > 0:
            sim.kernel.call_after(t, self._run, cmds)  # written first, then the node is told
        else:
            self._run(cmds)
        if self._await(w, rid, 60.0).state != "done":
            raise GetTimeoutError("put() got no answer from the simulated node within 60 virtual seconds")
        reply = w.value
        if reply.__class__ is PutFailed:
            sim.put_owner.pop(oid, None)
            raise ObjectStoreFullError(reply.error.message)

    def release(self, oids: Sequence[ObjectId], free: bool = False) -> None:
        self.sim.release(oids, free)

    def cancel(self, task_id: TaskId, force: bool, recursive: bool) -> None:
        self._send(CancelTask(client=self.client_id, task_id=task_id, force=force, recursive=recursive))

    def kill_actor(self, actor_id: ActorId, no_restart: bool, exiting: TaskId | None = None) -> None:
        self._send(KillActor(client=self.client_id, actor_id=actor_id, no_restart=no_restart, exiting=exiting))

    def gcs_request(self, request: Any, timeout: float | None) -> Any:
        reply = self._request(lambda rid: ClientGcsRequest(client=self.client_id, req_id=rid, request=request),
                              timeout, "a GCS request")
        return reply.result

    def cluster_status(self, timeout: float | None) -> Any:
        return self._request(lambda rid: ClusterStatusRequest(client=self.client_id, req_id=rid), timeout,
                             "cluster status")

    def timeline_runs(self, timeout: float | None) -> Any:
        """Every simulated node's runs, read from its machine (virtual
        seconds: offset 0).  A node that crashed and restarted keeps only
        its new machine's runs, as a restarted daemon would."""
        from ..core.timeline import NodeRuns

        cluster = self.sim.cluster
        if cluster is None:
            raise PenumbraError("the simulation has been shut down: its timeline is gone; call "
                                "penumbra.timeline() before penumbra.shutdown()")
        out = []
        for address, node in cluster.nodes.items():
            tl = getattr(node.machine, "timeline", None)
            if tl is not None:
                out.append(NodeRuns(address, tl.snapshot(), 0.0, tl.recorded, tl.limit))
        return out

    def _strip(self) -> None:
        """After shutdown: drop everything heavy, keep a small shell."""
        self.alive = False
        self.client = None
        self.machine.handle(ShutDown())  # (nothing blocks any more: no one to tell)
        self._functions = {}


class _WorkerRuntime(_SimClient):
    """The runtime a simulated worker's tasks see (``current_runtime()``
    while they run): nested submissions, gets and puts go to its node."""

    kind = "worker"

    def __init__(self, sim: SimRuntime, node: SimNode, worker: SimWorker) -> None:
        super().__init__(sim, worker.worker_id, node.address, job_id=0, is_worker=True)
        self.worker = worker
        self.fibers: list[_Fiber] = []

    @property
    def actor_instance(self) -> Any:
        """The actor this worker hosts (``exit_actor`` runs its
        ``__ray_shutdown__``), or None."""
        return self.worker.actor_state

    def store_yielded(self, oid: ObjectId, value: Any) -> None:
        """Store one value a generator task yielded (see ``api.generators``)."""
        self.put_object(oid, value)
        self.release([oid])

    def task_cancelled(self, task_id: TaskId) -> bool:
        # (the node took the task off the worker's running set: cancelled;
        # a sync actor's call stays on it, flagged)
        return task_id not in self.worker.running or task_id in self.worker.cancelled

    def _send(self, msg: Any) -> None:
        if not self.alive:
            if self.sim.fibers.get(threading.get_ident()) is not None:
                raise _WorkerKilled()
            raise self._dead()
        self.client.send(self.node_id, msg)

    def _block(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        fiber = self.sim.fibers.get(threading.get_ident())
        if fiber is None or fiber.rt is not self:
            raise PenumbraError(
                f"a penumbra API call reached the simulated worker {self.client_id} from a thread the simulator "
                f"does not manage ({threading.current_thread().name}): inside a simulated task, call the API from "
                f"the task's own thread only (no threads, no 'await ref' in async actors)"
            )
        return self.sim.fiber_block(fiber, ready, timeout)

    def _poke(self) -> None:
        sim = self.sim
        for f in self.fibers:
            w = f.wait
            if w is not None and not w.scheduled and w.ready():
                w.scheduled = True
                sim.schedule_resume(f, w, _READY)

    def shutdown(self) -> None:  # a worker does not shut the simulation down
        pass

    def _strip(self) -> None:
        super()._strip()
        self.worker = None
        self.fibers = []


# ===========================================================================
# the driver


class SimRuntime(_SimClient):
    """The driver's runtime on a simulated cluster (what ``init(simulated=...)``
    makes current).  Also the coordinator of the simulated workers' runtimes
    and task threads.

    Useful attributes: ``cluster`` (the ``SimCluster``), ``now`` (virtual
    seconds), ``executions`` (one ``(time, node, worker, task name,
    attempt)`` per task started), ``trace_hash()``.
    """

    kind = "driver"

    def __init__(self, config: SimConfig | None = None, *, num_cpus=None, num_gpus=None, resources=None,
                 object_store_memory=None, namespace: str = "") -> None:
        cfg = config if config is not None else SimConfig()
        self.config = cfg
        self.fibers: dict[int, _Fiber] = {}  # thread ident -> fiber
        self.current: _Fiber | None = None
        self.put_owner: dict[ObjectId, _SimClient] = {}
        self.workers: dict[str, _WorkerRuntime] = {}
        self.shells: list[_SimClient] = []
        self.executions: list[tuple[float, str, str, str, int]] = []
        self.closed = False
        self.final_time = 0.0
        self.final_trace_hash = ""
        self._drive_lock = threading.RLock()
        tt = cfg.task_time
        self._task_time = tt if callable(tt) else (lambda spec, _t=float(tt): _t)
        shapes = cfg.shapes(num_cpus, num_gpus, resources, object_store_memory)
        if not 0 <= cfg.driver_node < len(shapes):
            raise ValueError(f"SimConfig.driver_node={cfg.driver_node} but there are {len(shapes)} node(s)")
        # (objects spill to the simulated nodes' disks when their stores are
        # full, as on the real runtime; layout={"spilling": False} to fail)
        layout = ClusterLayout(nodes=shapes, gcs_shards=cfg.gcs_shards, chain_length=cfg.chain_length,
                               **{"spilling": True, **dict(cfg.layout)})
        self.executor = PythonExecutor(self)
        self.cluster = SimCluster(layout, costs=cfg.cost_model(), seed=cfg.seed, executor=self.executor,
                                  trace=cfg.trace, validate=cfg.validate, detect=cfg.detect,
                                  detect_delay=cfg.detect_delay, disk_bytes=cfg.disk_bytes)
        self.kernel = self.cluster.kernel
        self.cluster.wait_ready(timeout=60.0)
        super().__init__(self, "driver", f"node:{cfg.driver_node}", job_id=0, is_worker=False, namespace=namespace)
        self.kernel.on_crash.append(self._on_crash)
        self.kernel.on_log.append(self._on_log)
        self._send(RegisterClient(client=self.client_id, job_id=0, is_driver=True))
        self.job_id = self.gcs_request(KvIncrement("job_counter"), timeout=30.0)
        self._send(RegisterClient(client=self.client_id, job_id=self.job_id, is_driver=True))
        self.started_at = self.kernel.now
        if cfg.faults:
            sched = cfg.faults if isinstance(cfg.faults, FaultSchedule) else FaultSchedule(list(cfg.faults))
            self.installed_faults = self.cluster.install(sched, offset=self.started_at)
        _SHELLS.append(self)

    # ------------------------------------------------------------------ views
    @property
    def now(self) -> float:
        """Virtual seconds since the simulation started."""
        return self.kernel.now if self.kernel is not None else self.final_time

    def trace_hash(self) -> str:
        """The hash of everything that happened so far (same seed and program:
        same hash)."""
        return self.cluster.trace_hash() if self.cluster is not None else self.final_trace_hash

    # ------------------------------------------------------------------ driver side
    def _block(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        if ready():
            return True
        if not self.alive:
            raise self._dead()
        if threading.get_ident() in self.fibers:
            raise PenumbraError("a simulated task used the driver's runtime directly; use the penumbra API "
                                "(penumbra.get ...) inside tasks")
        if timeout is not None and timeout <= 0:
            return bool(ready())
        horizon = self.config.max_blocking_time if timeout is None else timeout
        t0 = self.kernel.now
        with self._drive_lock:
            while True:
                self.cluster.run_until(lambda: ready() or not self.alive, horizon)
                if not self.alive:
                    raise self._dead()
                if ready():
                    return True
                if timeout is not None:
                    return False
                if not self._busy():
                    raise SimulationStalled(
                        f"a blocking call waited {self.kernel.now - t0:g} virtual seconds and no task is running "
                        f"towards an end (virtual time {self.kernel.now:.6f}): the program is deadlocked (a task "
                        f"waiting for an object never produced, an actor calling itself, a task needing resources "
                        f"no node has...); SimConfig.max_blocking_time={horizon:g}")

    def _busy(self) -> bool:
        """Is any task running towards an end: a completion scheduled, or a
        task waiting with a virtual timeout?"""
        for f in self.fibers.values():
            if f.wait is not None and f.wait.timed:
                return True
        for node in self.cluster.nodes.values():
            if node.alive:
                for w in node.workers.values():
                    for token in w.running.values():
                        if token > 0:
                            return True
        return False

    def _dead(self) -> BaseException:
        if self.closed:
            return PenumbraError("this simulated penumbra runtime has been shut down; call penumbra.init() again")
        return PenumbraError(f"the simulated node {self.node_id} that runs the driver crashed: the program "
                             f"cannot continue (crash other nodes, or choose SimConfig.driver_node)")

    def _on_crash(self, kernel, address: str) -> None:
        if address == self.node_id and self.alive:
            self.alive = False
            self._run(self.machine.handle(ConnectionLost(detail=f"its node {address} crashed")))
            kernel.crash(self.client_id)

    def _on_log(self, t: float, address: str, cmd) -> None:
        if cmd.job_id == self.job_id and cmd.level in ("warning", "error"):
            logger.warning("%s", cmd.text)

    # ------------------------------------------------------------------ coordination
    def worker_runtime(self, node: SimNode, worker: SimWorker) -> _WorkerRuntime:
        rt = self.workers.get(worker.worker_id)
        if rt is None:
            rt = self.workers[worker.worker_id] = _WorkerRuntime(self, node, worker)
            self.shells.append(rt)
        return rt

    def release(self, oids: Sequence[ObjectId], free: bool = False) -> None:
        """The last ref to these put objects died: the client that put each
        one releases its pin (refcounts are per process; all of the
        simulation's clients share this one).  ``free``: delete them too."""
        if self.closed:
            return
        by_owner: dict[str, tuple[_SimClient, list[ObjectId]]] = {}
        for oid in oids:
            owner = self.put_owner.pop(oid, None)
            if owner is not None and owner.alive:
                by_owner.setdefault(owner.client_id, (owner, []))[1].append(oid)
        for owner, lst in by_owner.values():
            owner.client.send(owner.node_id, ReleaseObjects(client=owner.client_id, object_ids=tuple(lst), free=free))

    def start_fiber(self, fiber: _Fiber) -> None:
        fiber.thread.start()
        self.fibers[fiber.thread.ident] = fiber
        fiber.rt.fibers.append(fiber)
        self.run_fiber(fiber, _START)

    def run_fiber(self, fiber: _Fiber, reason: str) -> None:
        """Loop side: switch to ``fiber``; when it ends, complete its task."""
        fiber.switch(reason)
        if not fiber.done:
            return
        self._forget(fiber)
        if fiber.error is not None:
            raise fiber.error
        out = fiber.outcome
        w = fiber.worker
        tid = fiber.cmd.spec.task_id
        if out is not None and w.alive and w.running.get(tid) == 0 and fiber.node.alive:
            fiber.node.complete(w, fiber.cmd, out)
        self.executor.next_in_line(fiber.node, w)

    def _forget(self, fiber: _Fiber) -> None:
        fiber.thread.join()  # it is done: only the thread's exit is left
        self.fibers.pop(fiber.thread.ident, None)
        try:
            fiber.rt.fibers.remove(fiber)
        except ValueError:
            pass

    def schedule_resume(self, fiber: _Fiber, wait: _Wait, reason: str, at: float | None = None) -> None:
        host = fiber.node.host
        t = max(self.kernel.now, host.now) if at is None else max(at, host.now)
        host.call_at(t, self._resume, fiber, wait, reason)

    def _resume(self, fiber: _Fiber, wait: _Wait, reason: str) -> None:
        if fiber.wait is not wait or fiber.done:
            return
        fiber.wait = None
        self.run_fiber(fiber, reason)

    def fiber_block(self, fiber: _Fiber, ready: Callable[[], bool], timeout: float | None) -> bool:
        """Fiber side of a blocking call: park until ``ready()`` or timeout."""
        self._check_fiber(fiber)
        if ready():
            return True
        if timeout is not None and timeout <= 0:
            return False
        w = _Wait(ready, timeout is not None)
        fiber.wait = w
        if timeout is not None:
            host = fiber.node.host
            self.schedule_resume(fiber, w, _TIMEOUT, at=max(self.kernel.now, host.now) + timeout)
        fiber.park()
        fiber.wait = None
        self._check_fiber(fiber)
        return bool(ready())

    def _check_fiber(self, fiber: _Fiber) -> None:
        if fiber.killed or fiber.reason == _KILLED or not fiber.worker.alive or self.closed:
            fiber.killed = True
            raise _WorkerKilled()
        if not fiber.interrupted and fiber.cmd.spec.task_id not in fiber.worker.running:
            fiber.interrupted = True  # cancelled (InterruptTask): raise once, as the real worker does
            raise KeyboardInterrupt

    def interrupt(self, worker: SimWorker, task_id: TaskId) -> None:
        """``InterruptTask`` took ``task_id`` off ``worker``: wake its fiber
        now if it is parked (asleep, or blocked in ``get``), so it sees
        ``KeyboardInterrupt`` at once, as a real worker's blocking call is
        woken by the signal."""
        rt = self.workers.get(worker.worker_id)
        if rt is None:
            return
        for f in rt.fibers:
            if f.cmd.spec.task_id == task_id and f.wait is not None and not f.done:
                self.schedule_resume(f, f.wait, "interrupted")

    def kill_fiber(self, fiber: _Fiber) -> None:
        fiber.killed = True
        fiber.wait = None
        if self.current is fiber:
            return  # it raises at its next API call
        for _ in range(100):
            if fiber.done:
                break
            fiber.switch(_KILLED)
        if fiber.done:
            self._forget(fiber)

    def worker_gone(self, node: SimNode, worker: SimWorker) -> None:
        rt = self.workers.pop(worker.worker_id, None)
        worker.actor_state = None
        if rt is None:
            return
        rt.alive = False
        for f in list(rt.fibers):
            self.kill_fiber(f)
        rt._run(rt.machine.handle(ConnectionLost(detail=f"its worker {worker.worker_id} is gone")))
        if self.kernel.is_alive(rt.client_id):
            self.kernel.remove_client(rt.client_id)

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.alive = False
        for f in list(self.fibers.values()):
            self.kill_fiber(f)
        self.final_trace_hash = self.cluster.trace_hash()
        self.final_time = self.kernel.now
        for rt in self.shells:
            rt._strip()
        self.shells = []
        self.workers = {}
        self.fibers = {}
        self.put_owner = {}
        self.executor.sim = None
        self._strip()
        self.cluster = None
        self.kernel = None
        self.executor = None


_SHELLS: list[SimRuntime] = []  # see _SimClient._strip


# ===========================================================================
# the executor: real Python code on simulated workers


class PythonExecutor(Executor):
    """Runs each task's real function or actor method (see the module doc)."""

    def __init__(self, sim: SimRuntime) -> None:
        self.sim = sim
        # a sequential actor's worker runs one call at a time, in the order
        # its node sent them (the node sends calls ahead): the calls waiting
        # behind the running one, per worker
        self.lines: dict[str, deque[Execute]] = {}
        self.actor_life: dict[str, Any] = {}  # worker -> the resources its actor holds for life
        self.actor_env: dict[str, tuple] = {}  # worker -> its actor's runtime_env env_vars
        self.actor_scheduling: dict[str, Any] = {}  # worker -> its actor creation's scheduling strategy

    def start_worker(self, node: SimNode, worker_id: str) -> float | None:
        return node.cluster.costs.worker_start

    def execute(self, node: SimNode, worker: SimWorker, cmd: Execute) -> Outcome | None:
        # running, its completion not yet scheduled: lets InterruptTask find it
        worker.running[cmd.spec.task_id] = 0
        if worker.sequential and cmd.spec.actor_id is not None:
            line = self.lines.get(worker.worker_id)
            if line is not None:
                line.append(cmd)  # behind the call running now
                return None
            self.lines[worker.worker_id] = deque()
        node.host.call_at(node.host.now, self._start, node, worker, cmd)
        return None

    def interrupt(self, worker: SimWorker, task_id: TaskId) -> None:
        if self.sim is not None:
            self.sim.interrupt(worker, task_id)

    def next_in_line(self, node: SimNode, worker: SimWorker) -> None:
        """A call on ``worker`` is over: start the one waiting behind it
        (when the finished one's completion is due)."""
        line = self.lines.get(worker.worker_id)
        if line is None:
            return
        if not line or not worker.alive:
            del self.lines[worker.worker_id]
            return
        cmd = line.popleft()
        node.host.call_at(max(node.host.now, worker.free_at), self._start, node, worker, cmd)

    def _start(self, node: SimNode, worker: SimWorker, cmd: Execute) -> None:
        sim = self.sim
        if sim is None or not worker.alive or worker.running.get(cmd.spec.task_id) != 0:
            self.next_in_line(node, worker)  # (cancelled or gone: the next one's turn)
            return
        spec = cmd.spec
        if spec.task_id in worker.cancelled:
            # a sync actor's call cancelled before it started: it never runs
            name = spec.display_name()
            node.complete(worker, cmd, Outcome("raise", 0.0, error=ErrorInfo(
                ErrorKind.TASK_CANCELLED, f"task {name} was cancelled", task_name=name)))
            self.next_in_line(node, worker)
            return
        sim.executions.append((sim.kernel.now, node.address, worker.worker_id, spec.display_name(), cmd.attempt))
        worker.began[spec.task_id] = sim.kernel.now  # (its bar on the timeline starts here)
        rt = sim.worker_runtime(node, worker)
        if spec.actor_creation is not None:
            self.actor_env[worker.worker_id] = spec.env_vars
        fiber = _Fiber(sim, rt, node, worker, cmd, self._body)
        fiber.env_vars = task_env(spec, self.actor_env.get(worker.worker_id))
        sim.start_fiber(fiber)

    # ------------------------------------------------------------------ in the task's thread
    def _body(self, fiber: _Fiber) -> Outcome:
        cmd = fiber.cmd
        spec = cmd.spec
        rt = fiber.rt
        rt.job_id = spec.job_id
        aid = spec.actor_id or (spec.actor_creation.actor_id if spec.actor_creation else None)
        # (GPU ids only: the simulation's tasks share one process, so no
        # CUDA_VISIBLE_DEVICES)
        if spec.actor_creation is not None:
            self.actor_life[fiber.worker.worker_id] = spec.actor_creation.resources
        if spec.actor_creation is not None:
            self.actor_scheduling[fiber.worker.worker_id] = spec.scheduling
        ctx = TaskContext(spec.task_id, spec.job_id, aid, cmd.attempt, spec.display_name(), gpu_ids=cmd.gpu_ids,
                          resources=assigned_resources(spec, self.actor_life.get(fiber.worker.worker_id)),
                          env_vars=fiber.env_vars,
                          scheduling=spec.scheduling or self.actor_scheduling.get(fiber.worker.worker_id))
        duration = float(self.sim._task_time(spec))
        try:
            with use_task_context(ctx):
                if spec.actor_creation is not None:
                    self._create_actor(fiber)
                    result = None
                else:
                    args, kwargs = self._args(fiber)
                    if spec.actor_id is not None:
                        actor = fiber.worker.actor_state
                        if actor is None:
                            raise PenumbraError(f"actor method {spec.display_name()} ran on a worker without "
                                                f"its actor")
                        fn = getattr(actor, spec.method)
                    else:
                        fn = rt.load_function(spec.function.function_id)
                    result = fn(*args, **kwargs)
                    if inspect.iscoroutine(result):
                        result = asyncio.run(result)
                    if spec.num_returns == 1 and is_generator_result(result):
                        result = stream_values(spec, result, rt.store_yielded)
            return self._finish(spec, result, duration)
        except _WorkerKilled:
            raise
        except KeyboardInterrupt:
            name = spec.display_name()
            return Outcome("raise", duration, error=ErrorInfo(ErrorKind.TASK_CANCELLED, f"task {name} was cancelled",
                                                              task_name=name))
        except SystemExit as e:  # (an actor's fiber blocks until its worker is stopped: see exit_error)
            try:
                info = exit_error(spec, e, rt)
                if info is None:
                    return Outcome("crash", duration)  # a non-zero status: the worker process dies
                return Outcome("raise", duration, error=info, retryable=False)
            except _WorkerKilled:
                raise
            except BaseException as err:  # noqa: BLE001
                return self._raised(spec, err, duration)
        except BaseException as e:  # noqa: BLE001 - user code may raise anything
            return self._raised(spec, e, duration)

    def _args(self, fiber: _Fiber) -> tuple[list, dict]:
        spec = fiber.cmd.spec
        store = fiber.node.store
        values = []
        for dep in spec.dependencies:
            item = store.get(dep)
            if item is None:
                v: Any = ErrorValue(ErrorInfo(ErrorKind.OBJECT_LOST, f"input {dep.short()} vanished from the store"))
            else:
                v = _decode(item)
            values.append(v)
        return call_args(spec, values)

    def _create_actor(self, fiber: _Fiber) -> None:
        cmd = fiber.cmd
        cls = fiber.rt.load_function(cmd.spec.function.function_id)
        if cmd.checkpoint is not None and cmd.checkpoint.data is not None:
            obj = restore_actor(cls, cmd.checkpoint.data)
        else:
            args, kwargs = self._args(fiber)
            obj = construct_actor(cls, args, kwargs)
        fiber.worker.actor_state = install_terminate(obj)

    def _finish(self, spec: TaskSpec, result: Any, duration: float) -> Outcome:
        datas, sizes = [], []
        try:
            for v in split_returns(spec, result):
                data = serialize(v, ref_type=ObjectRef, subject=f"the return value of {spec.display_name()}").to_bytes()
                datas.append(data)
                sizes.append(len(data))
        except Exception as e:  # noqa: BLE001 - a num_returns mismatch, unpicklable results
            return self._raised(spec, e, duration)
        return Outcome("ok", duration, values=tuple(datas), sizes=tuple(sizes))

    def _raised(self, spec: TaskSpec, e: BaseException, duration: float) -> Outcome:
        info, retryable = task_error(spec, e)
        return Outcome("raise", duration, error=info, retryable=retryable)

    # ------------------------------------------------------------------ on the loop thread
    def checkpoint(self, node: SimNode, worker: SimWorker, cmd: CheckpointActor) -> Payload:
        actor = worker.actor_state
        try:
            data = actor_state(actor)
        except Exception as e:  # noqa: BLE001 - the real worker process would die of it
            logger.warning("checkpointing actor %s failed (%s: %s): its worker dies", cmd.actor_id.short(),
                           type(e).__name__, e)
            node.cluster.kill_worker(node.address, worker.worker_id,
                                     reason=f"checkpointing the actor failed: {type(e).__name__}: {e}")
            return Payload(0, None)
        return Payload(len(data), data)

    def worker_gone(self, node: SimNode, worker: SimWorker) -> None:
        if self.sim is not None:
            self.sim.worker_gone(node, worker)
        else:
            worker.actor_state = None


# ===========================================================================
# entry points


def start_simulated(simulated: Any, *, num_cpus=None, num_gpus=None, resources=None, object_store_memory=None,
                    namespace: str = "") -> SimRuntime:
    """What ``penumbra.init(simulated=...)`` calls: ``True``, a ``SimConfig``
    or a dict of ``SimConfig`` fields."""
    if simulated is True:
        cfg = SimConfig()
    elif isinstance(simulated, SimConfig):
        cfg = simulated
    elif isinstance(simulated, Mapping):
        cfg = SimConfig(**simulated)
    else:
        raise TypeError(f"init(simulated=...) takes True, a penumbra.sim.runtime.SimConfig or a dict of its "
                        f"fields, got {simulated!r}")
    return SimRuntime(cfg, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                      object_store_memory=object_store_memory, namespace=namespace)


def current_simulation() -> SimRuntime:
    """The ``SimRuntime`` of the running simulation (from the driver or a task).

    Raises:
        PenumbraError: penumbra is not initialized, or not on the simulator.
    """
    rt = context.current_runtime()
    sim = getattr(rt, "sim", None)
    if not isinstance(sim, SimRuntime) or sim.closed:
        raise PenumbraError("penumbra is not running on the simulator: use penumbra.init(simulated=True)")
    return sim


def now() -> float:
    """The current virtual time, in seconds."""
    return current_simulation().now


def sleep(seconds: float) -> None:
    """Let ``seconds`` of virtual time pass (from the driver or inside a
    task); ``time.sleep`` would only stop the whole simulation in wall time."""
    if seconds < 0:
        raise ValueError(f"sleep() needs seconds >= 0, got {seconds!r}")
    current_simulation()
    rt = context.current_runtime()
    rt._block(lambda: False, float(seconds))
