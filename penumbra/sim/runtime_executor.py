"""The simulator's executor for real Python code: ``PythonExecutor``.

The cluster's ``Executor`` when a real program runs on the simulator: it
starts each ``Execute`` on a fiber (``runtime_fibers.py``) and runs the
task's real function or actor method there.

Theory of operation
-------------------
**The executor** (``PythonExecutor``, the cluster's ``Executor``) runs each
``Execute`` the way ``penumbra.transports.worker`` does: the function or
class comes from the GCS function table (payload ``(blob, sys_path)``),
dependency values from the node's store, errors become ``TaskError``
payloads (``retry_exceptions``, ``num_returns`` checks included), an actor's
instance lives on its simulated worker, and checkpoints use
``__penumbra_checkpoint__``/``__penumbra_restore__`` or ``__dict__``.  A
task's virtual duration is ``SimConfig.task_time`` (plus the cost model's
``task_overhead`` and store writes), never wall time.

``SimRuntime`` (``runtime.py``) appears here in annotations only, never
imported: it imports this module.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from typing import Any

from ..api.context import TaskContext, use_task_context
from ..api.execution import (
    actor_state,
    assigned_resources,
    call_args,
    construct_actor,
    exit_error,
    install_terminate,
    restore_actor,
    split_returns,
    task_env,
    task_error,
)
from ..api.generators import is_generator_result, stream_values
from ..api.refs import ObjectRef
from ..api.runtime import ErrorValue
from ..core.ids import TaskId
from ..core.messages import CheckpointActor, Execute
from ..core.records import ErrorInfo, ErrorKind
from ..core.specs import Payload, TaskSpec
from ..exceptions import PenumbraError
from ..transports.serialization import serialize
from .cluster import Executor, Outcome, SimNode, SimWorker
from .runtime_clients import _decode
from .runtime_fibers import _Fiber, _WorkerKilled

__all__ = ["PythonExecutor"]

logger = logging.getLogger("penumbra")


class PythonExecutor(Executor):
    """Runs each task's real function or actor method (see the module doc)."""

    def __init__(self, sim: "SimRuntime") -> None:
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
