"""The simulator's executor for the swarm's workload models.

``VerifyExecutor`` runs ``VTask``/``VChild``/``VActor``/``VCall`` models
(``workload``) with real values: a task's value digests its key, its
inputs' values and its children's; an actor keeps one chain per caller.
It runs nested tasks by making the worker a client of its node
(``SubmitTask``, ``WatchObjects``, ``WorkerBlocked``/``WorkerUnblocked``),
models worker crashes (mid-task, or blocked in ``get`` on children), and
records every actor method execution (``ActorExec``) so the checkers can
verify ordering.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
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
from .workload import VActor, VCall, VChild, VTask, digest

__all__ = ["VerifyExecutor", "ActorExec"]


def _returns(spec: TaskSpec, value: int, size: int) -> tuple[tuple, tuple]:
    """``(values, sizes)`` of a task whose first return is ``value``: return
    ``i`` > 0 holds ``digest(value, i)`` (what ``checkers.check_returns``
    holds every run to)."""
    n = spec.num_returns
    if n == 1:
        return (value,), (size,)
    return (value,) + tuple(digest(value, i) for i in range(1, n)), (size,) * n


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
    crash_after: bool = False  # the worker dies right after it unblocks (a fault)


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
        # the chance that a nested task's worker dies while blocked in get
        # (or right after it unblocks), drawn from its own generator
        self.blocked_crash_rate = 0.0
        self.block_rng = random.Random(0)
        self.blocked_crashes = 0  # workers killed while blocked

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
            if getattr(model, "flaky", 0) > cmd.attempt:
                return Outcome("raise", model.duration, retryable=bool(spec.retry_exceptions), error=ErrorInfo(
                    ErrorKind.TASK_ERROR, f"{model.key} raised on an early attempt (by design)", Payload(16, model.key),
                    task_name=spec.display_name()))
            if model.raises:
                name = spec.display_name()
                return Outcome("raise", model.duration, error=ErrorInfo(
                    ErrorKind.TASK_ERROR, f"{model.key} raised (by design)", Payload(16, model.key), task_name=name))
            children = getattr(model, "children", ())
            if not children:
                return Outcome("ok", model.duration, *_returns(spec, digest(model.key, inputs), model.size))
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
        if self.blocked_crash_rate and self.block_rng.random() < self.blocked_crash_rate:
            if self.block_rng.random() < 0.6:
                delay = self.block_rng.choice((0.0005, 0.002, 0.005, 0.01))
                node.cluster.kernel.call_after(delay, self._kill_blocked, node, worker, w)
            else:
                w.crash_after = True
        return None

    def _kill_blocked(self, node, worker, w: _Waiting) -> None:
        """The worker dies while still blocked on its children (a fault)."""
        if w.done or not worker.alive or not node.alive:
            return
        self.blocked_crashes += 1
        node.cluster.kill_worker(node.address, worker.worker_id, "the worker died while blocked in get (modelled crash)")

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
        if w.crash_after:
            out = Outcome("crash", model.duration / 2)  # after it took its CPU back (or ran on debt)
        elif errors:
            out = Outcome("raise", model.duration, error=errors[0])
        else:
            out = Outcome("ok", model.duration, *_returns(w.cmd.spec, digest(model.key, w.inputs, tuple(vals)), model.size))
        w.node.complete(w.worker, w.cmd, out)
