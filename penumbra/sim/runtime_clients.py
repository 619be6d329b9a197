"""The simulated clients: the driver's and the workers' ``Runtime``s.

What the driver (``SimRuntime``, in ``runtime.py``) and every simulated
worker that runs a task (``_WorkerRuntime``) share: one kernel client on a
node, driving the pure ``ClientMachine`` the real client runs.

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

``SimRuntime`` appears here in annotations only, never imported: it
imports this module.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from ..api.context import job_namespace
from ..api.refs import ObjectRef
from ..api.runtime import ErrorValue, Runtime
from ..core.client import ClientMachine, Fail, Resolve, ShutDown, TimedOut
from ..core.ids import ActorId, ObjectId, TaskId
from ..core.messages import (
    ActorRegistered,
    CancelTask,
    ClientGcsReply,
    ClientGcsRequest,
    ClusterStatus,
    ClusterStatusRequest,
    KillActor,
    ObjectsReady,
    PutDone,
    PutFailed,
    PutObject,
    Send,
    SubmitTask,
    WorkerBlocked,
    WorkerUnblocked,
)
from ..core.records import ErrorInfo
from ..core.specs import TaskSpec
from ..exceptions import GetTimeoutError, ObjectStoreFullError, PenumbraError
from ..transports.serialization import deserialize, serialize
from .cluster import SimNode, SimWorker
from .runtime_fibers import _READY, _Fiber, _WorkerKilled


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

    def __init__(self, sim: "SimRuntime", address: str, node: str, *, job_id: int, is_worker: bool,
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
        # its actor calls go straight to the actors' workers (``penumbra.sim.direct``)
        direct = sim.cluster.direct
        self.direct = direct.port(self.client, address, node, self.machine, self._run_poke,
                                  lambda: self.alive) if direct.enabled else None

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
        elif self.direct is None or not self.direct.on_message(msg):  # (a DirectReply, an ActorWatched)
            return
        self._poke()

    def _run_poke(self, cmds: list) -> None:
        self._run(cmds)
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
    # An async actor's calls keep the routed path here: the simulator runs
    # each call to completion on an event loop of its own, one at a time
    # (runtime_executor), so a call that awaits another's effect (a
    # util.queue get before its put) can only finish if the calls arrive in
    # that order, and going direct reorders calls of different callers (a
    # task's get came before the driver's put: Ray's actor-queue doc
    # program hung).  Routed, as before direct calls, until the simulator
    # runs concurrent async calls (issue 13).
    direct_async_calls = False

    def submit(self, spec: TaskSpec) -> None:
        self._send(SubmitTask(client=self.client_id, spec=spec))

    def submit_actor_call(self, spec: TaskSpec, direct: bool) -> None:
        if not direct or self.direct is None:
            self.submit(spec)  # (the routed path: a replay=True actor's call, or direct calls off)
            return
        if not self.alive:
            raise self._dead()
        self.direct.submit(spec)

    def hold_args(self, spec: TaskSpec, refs: list) -> None:
        if self.direct is not None:
            self.direct.hold(spec, refs)

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
            for oid, (info, att) in results.items():
                if info.error is not None:
                    values[oid] = ErrorValue(info.error)
                    continue
                if att is not None and att[0] == "v":  # a direct call's result, inline in its reply
                    values[oid] = _decode((info.size, att[1]))
                    continue
                item = store.get(oid)
                if item is None:
                    vanished.append(oid)  # evicted between the reply and our read
                else:
                    values[oid] = _decode(item)
            if not vanished:
                return [values[oid] for oid in ids]
            if self.machine.local:
                self.machine.forget_local(vanished)  # (a direct result elsewhere: ask the node)
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
        if self.machine.local:
            self.machine.forget_local(oids)
            if self.direct is not None:
                self.direct.caller.released(oids)
        self.sim.release(oids, free)

    def cancel(self, task_id: TaskId, force: bool, recursive: bool) -> None:
        if self.direct is not None and self.alive and self.direct.cancel(task_id, force):
            return  # (a direct call of ours: its caller machine decides)
        self._send(CancelTask(client=self.client_id, task_id=task_id, force=force, recursive=recursive))

    def kill_actor(self, actor_id: ActorId, no_restart: bool, exiting: TaskId | None = None) -> None:
        if no_restart and exiting is None and self.direct is not None:
            self.direct.killed(actor_id)  # (later calls fail at once)
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
        from ..core.actor_inbox import REPORT_DELAY
        from ..core.timeline import NodeRuns

        cluster = self.sim.cluster
        if cluster is None:
            raise PenumbraError("the simulation has been shut down: its timeline is gone; call "
                                "penumbra.timeline() before penumbra.shutdown()")
        if self.direct is not None and self.alive:
            # an actor's worker reports the direct calls it ran to its node in
            # batches, at most REPORT_DELAY after the first: let that much
            # virtual time pass (twice, for the hop), so calls whose results
            # the caller already has are on the timeline it reads
            self._block(lambda: False, 2 * REPORT_DELAY)
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

    def __init__(self, sim: "SimRuntime", node: SimNode, worker: SimWorker) -> None:
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

    def kill_actor(self, actor_id: ActorId, no_restart: bool, exiting: TaskId | None = None) -> None:
        w = self.worker
        if exiting is not None and w is not None and self.sim.cluster.direct.exiting(w, exiting):
            return  # (exit_actor() in a direct call: its inbox ends the actor once the calls with it end)
        super().kill_actor(actor_id, no_restart, exiting)

    def shutdown(self) -> None:  # a worker does not shut the simulation down
        pass

    def _strip(self) -> None:
        super()._strip()
        self.worker = None
        self.fibers = []
