"""Real Python programs on the simulator, in virtual time: ``SimRuntime``.

``penumbra.init(simulated=True)`` (or ``simulated=SimConfig(...)``) runs an
unchanged API program (``f.remote``, ``get``, actors ...) on a ``SimCluster``:
the same core machines as the real runtime, on the SimPy kernel, with the
network, costs and faults of the simulator.  The user's functions and actor
methods really run (their return values are real values); only *time* is
simulated.

Theory of operation
-------------------
The driver here (``SimRuntime``) is one of several pieces, each in a module
of its own (lowest first), where its part of the theory is told:

``runtime_config``
    ``SimConfig`` (how to simulate) and ``SimulationStalled``.
``runtime_fibers``
    threads and the hand-off: every task body runs on a thread of its own
    (a *fiber*) and exactly one thread runs at any moment.
``runtime_clients``
    the clients (the driver's and the simulated workers' ``Runtime``s,
    speaking the real client's messages) and values (real serialized
    bytes in the simulated stores).
``runtime_executor``
    the executor (``PythonExecutor``): each ``Execute`` run the way a real
    worker runs it.
``runtime`` (this module)
    the driver's runtime, which also coordinates the workers' runtimes and
    the fibers (it is the loop side of the hand-off), and the entry points
    (``start_simulated``, ``current_simulation``, ``now``, ``sleep``).

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

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..api import context
from ..core.client import ConnectionLost
from ..core.ids import ObjectId, TaskId
from ..core.layout import ClusterLayout
from ..core.messages import RegisterClient, ReleaseObjects
from ..core.tables import KvIncrement
from ..exceptions import PenumbraError
from .cluster import AddNode, CrashNode, SimCluster, SimNode, SimWorker
from .faults import FaultSchedule
from .runtime_clients import _SimClient, _WorkerRuntime
from .runtime_config import SimConfig, SimulationStalled, default_memory_resource  # noqa: F401 - (re-exported)
from .runtime_executor import PythonExecutor
from .runtime_fibers import _KILLED, _START, _TIMEOUT, _Fiber, _Wait, _WorkerKilled

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
                                  detect_delay=cfg.detect_delay, disk_bytes=cfg.disk_bytes,
                                  direct_calls=cfg.direct_calls)
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

