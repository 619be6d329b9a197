"""Simulated driver programs: ``SimDriver`` submits tasks, watches objects, calls actors.

Why its own module: a driver is a program's side of the cluster -- a
kernel client on a node's machine that carries out the pure
``core.client.ClientMachine``'s commands -- not part of the node-local
world (``penumbra.sim.node``) nor of how the cluster is built and broken
(``penumbra.sim.cluster``).  ``SimCluster.driver`` makes them; a driver
reaches its cluster only through what ``DriverCluster`` lists, so this
module does not import the cluster.

Theory of operation
-------------------
Drivers (``SimDriver``)
    Kernel clients placed on a node's machine (loopback to it), which build
    ``TaskSpec``s with deterministic ids, submit them, create actors and call
    them, ``put`` objects, watch objects (``WatchObjects``) and read values
    from their node's store.  They cost no CPU and run no SimPy process: they
    react to messages with callbacks.  A driver dies with its node.

See ``SimDriver`` for what waits for what, and ``SimWaiter`` for the
callbacks a request ends in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from penumbra.core.client import ClientMachine, ConnectionLost, Fail, Report, Resolve, ShutDown, TimedOut
from penumbra.core.ids import ActorId, ObjectId, TaskId, actor_id_of, child_task_id, driver_task_id, put_object_id
from penumbra.core.messages import (
    ActorRegistered,
    CancelTask,
    ClientDisconnected,
    ClientGcsReply,
    ClientGcsRequest,
    ClusterStatus,
    ClusterStatusRequest,
    KillActor,
    ObjectsReady,
    PutDone,
    PutFailed,
    PutObject,
    RegisterClient,
    Send,
    SetTimer,
    SubmitTask,
    TimerFired,
)
from penumbra.core.records import ErrorInfo, ObjectInfo
from penumbra.core.specs import EMPTY, ActorSpec, FunctionDescriptor, Payload, ResourceSet, TaskSpec

if TYPE_CHECKING:  # pragma: no cover
    from .costs import CostModel
    from .kernel import SimKernel
    from .node import SimNode

__all__ = ["SimDriver", "SimWaiter", "SimActor", "DriverCluster"]


class DriverCluster(Protocol):
    """What a ``SimDriver`` uses of its cluster (``SimCluster`` is the one).

    Why a protocol: the cluster makes its drivers, so an import of the
    cluster here would be a circle.
    """

    kernel: SimKernel
    costs: CostModel
    nodes: dict[str, SimNode]
    direct: Any  # ``penumbra.sim.direct.SimDirect``


# ===========================================================================
# drivers


class SimWaiter:
    """What waits for one of a ``SimDriver``'s requests: the callbacks its
    ``ClientMachine``'s commands end in (each optional).

    ``report(oid, info, now)``: a watched object is ready (each once);
    ``done(value)``: the answer (a reply message, or a watch's reports
    ``{oid: (info, None)}``); ``timeout(partial)``: its time ran out first;
    ``fail(reason, detail)``: the connection to the node is gone
    (``core.client.LOST`` or ``SHUT_DOWN``).  ``record``: also note each
    report in the driver's ``ready``."""

    __slots__ = ("report", "done", "timeout", "fail", "record")

    def __init__(self, report=None, done=None, timeout=None, fail=None, record: bool = False) -> None:
        self.report = report
        self.done = done
        self.timeout = timeout
        self.fail = fail
        self.record = record


class SimDriver:
    """A simulated driver program: a kernel client on ``node``'s machine.

    Build specs with ``spec(model, deps=...)`` (ids derive from the job's root
    task, so runs are reproducible), send them with ``submit``/``submit_many``,
    learn results with ``watch(oids, callback)``; ``ready[oid] = (time,
    ObjectInfo)`` records what became ready (when ``record``).  Values are
    read from the node's store (``value(oid)``), which a watch with
    ``fetch=True`` fills.

    What waits for what is the pure ``core.client.ClientMachine`` (the one
    the real client runs): this class carries its commands out on the
    kernel.  When the driver's node crashes (or ``cut`` ends its
    connection), the machine fails every outstanding request, once, and
    refuses new ones (``SimWaiter.fail``).
    """

    def __init__(self, cluster: DriverCluster, address: str, node: str, job_id: int) -> None:
        self.cluster = cluster
        self.address = address
        self.node = node
        self.job_id = job_id
        self.root = driver_task_id(job_id)
        self.count = 0
        self.puts = 0
        self.alive = True
        self.kernel = cluster.kernel
        self.client = cluster.kernel.add_client(address, self._on_message, colocated_with=node, kind="driver")
        self.ready: dict[ObjectId, tuple[float, ObjectInfo]] = {}
        self.submitted_at: dict[TaskId, float] = {}
        self.keep_submit_times = False
        self.machine = ClientMachine(address, node)
        self._functions: dict[str, FunctionDescriptor] = {}
        self.registered: dict[ActorId, ActorRegistered] = {}
        # CPU of the driver program per submitted task (0: free, the default;
        # cluster.driver(cpu=True) takes the cost model's client_call)
        self.call_cost = 0.0
        self.busy_until = 0.0
        # its actor calls go straight to the actors' workers (``penumbra.sim.direct``)
        direct = cluster.direct
        self.direct = direct.port(self.client, address, node, self.machine, self._run,
                                  lambda: self.alive) if direct.enabled else None
        # actors it holds a handle of with replay=True: their calls take the
        # routed path from the first (the real handle knows it too)
        self.replay_actors: set[ActorId] = set()
        self.client.send(node, RegisterClient(client=address, job_id=job_id, is_driver=True))

    @property
    def now(self) -> float:
        return self.kernel.env._now

    def __repr__(self) -> str:
        return f"<SimDriver {self.address} on {self.node} job={self.job_id}>"

    # ------------------------------------------------------------------ specs
    def function(self, name: str) -> FunctionDescriptor:
        f = self._functions.get(name)
        if f is None:
            f = self._functions[name] = FunctionDescriptor(b"sim:" + name.encode(), name)
        return f

    def next_task_id(self) -> TaskId:
        tid = child_task_id(self.root, self.count)
        self.count += 1
        return tid

    def spec(self, model: Any = None, *, deps: Sequence[ObjectId] = (), resources: ResourceSet = ResourceSet.of(CPU=1),
             name: str = "task", num_returns: int = 1, max_retries: int = 3, args_bytes: int = 0,
             retry_exceptions: bool = False, **kw: Any) -> TaskSpec:
        """The next task of this driver, running ``model`` (a ``TaskModel``;
        ``None``: an empty task)."""
        return TaskSpec(task_id=self.next_task_id(), job_id=self.job_id, parent_task_id=self.root,
                        function=self.function(name), args=Payload(args_bytes, model), dependencies=tuple(deps),
                        num_returns=num_returns, resources=resources, max_retries=max_retries,
                        retry_exceptions=retry_exceptions, **kw)

    # ------------------------------------------------------------------ sending
    def submit(self, spec: TaskSpec) -> TaskSpec:
        if self.alive:
            if self.call_cost:
                self.submit_many((spec,))
                return spec
            if self.keep_submit_times:
                self.submitted_at[spec.task_id] = self.now
            self._submit_now(spec)
        return spec

    def _submit_now(self, spec: TaskSpec) -> None:
        if spec.actor_id is not None and self.direct is not None and spec.actor_id not in self.replay_actors:
            self.direct.submit(spec)  # (a call: to the actor's worker)
        else:
            self.client.send(self.node, SubmitTask(client=self.address, spec=spec))

    def submit_many(self, specs: Iterable[TaskSpec]) -> None:
        if not self.alive:
            return
        if self.call_cost:
            # the program's own CPU: each .remote() takes call_cost seconds
            # of the driver's (single) thread before its message leaves
            t = self.busy_until if self.busy_until > self.now else self.now
            for s in specs:
                t += self.call_cost
                self.kernel.program_call_at(t, self._send_one, s)
            self.busy_until = t
            return
        send = self.client.send
        node = self.node
        me = self.address
        keep = self.keep_submit_times
        now = self.now
        direct = self.direct
        for s in specs:
            if keep:
                self.submitted_at[s.task_id] = now
            if direct is not None and s.actor_id is not None and s.actor_id not in self.replay_actors:
                direct.submit(s)
            else:
                send(node, SubmitTask(client=me, spec=s))

    def _send_one(self, spec: TaskSpec) -> None:
        if self.alive:
            if self.keep_submit_times:
                self.submitted_at[spec.task_id] = self.now
            self._submit_now(spec)

    def remote(self, model: Any = None, **kw: Any) -> TaskSpec:
        """``spec`` + ``submit``: returns the spec (its ``return_ids`` are the futures)."""
        return self.submit(self.spec(model, **kw))

    def watch(self, oids: Sequence[ObjectId], callback: Callable[[ObjectId, ObjectInfo, float], Any] | None = None,
              *, fetch: bool = True, record: bool = True, need: int = 1,
              on_fail: Callable[[str, str], Any] | None = None) -> int:
        """Be told as each object becomes available (``callback(oid, info,
        now)``; with ``record``, also ``ready[oid]``).  ``fetch``: pull the
        objects into this driver's node (as ``get`` does).  ``need``: the
        node may hold its reports until that many are ready (see
        ``WatchObjects``).  ``on_fail(reason, detail)``: the connection was
        lost (or closed) first.  Returns the watch's id, for ``cancel_watch``."""
        if not oids:
            return 0
        w = SimWaiter(report=callback, fail=on_fail, record=record)
        uniq = tuple(dict.fromkeys(oids))
        rid, cmds = self.machine.watch(w, uniq, len(uniq), fetch=fetch, report_need=need, stream=True)
        self._run(cmds)
        return rid

    def get(self, oids: Sequence[ObjectId], waiter: SimWaiter, *, timeout: float | None = None) -> int:
        """``get(oids, timeout)`` as a program does it: ``waiter.done`` gets
        every object's report once all are local (values: ``value(oid)``),
        else ``waiter.timeout`` or ``waiter.fail``, exactly once."""
        uniq = tuple(dict.fromkeys(oids))
        rid, cmds = self.machine.watch(waiter, uniq, len(uniq), fetch=True, report_need=len(uniq) if timeout is None else 1,
                                       deadline=None if timeout is None else self.now + timeout,
                                       stream=waiter.report is not None)
        self._run(cmds)
        return rid

    def wait(self, oids: Sequence[ObjectId], num_returns: int, waiter: SimWaiter, *, timeout: float | None = None,
             fetch: bool = True) -> int:
        """``wait(oids, num_returns, timeout, fetch_local)``: ``waiter.done``
        with the reports once ``num_returns`` are ready, else
        ``waiter.timeout`` (what was ready) or ``waiter.fail``, exactly once."""
        uniq = tuple(dict.fromkeys(oids))
        rid, cmds = self.machine.watch(waiter, uniq, num_returns, fetch=fetch,
                                       report_need=num_returns if timeout is None else 1,
                                       deadline=None if timeout is None else self.now + timeout,
                                       stream=waiter.report is not None)
        self._run(cmds)
        return rid

    def cancel_watch(self, rid: int) -> None:
        """Stop a watch (a ``wait`` that has its answer, or gave up)."""
        self._run(self.machine.cancel(rid))

    def _send_msg(self, msg: Any) -> None:
        if self.alive:
            self.client.send(self.node, msg)

    def _run(self, cmds: list) -> None:
        """Carry out the client machine's commands."""
        for c in cmds:
            t = c.__class__
            if t is Send:
                if not self.alive:
                    continue
                if self.call_cost and self.busy_until > self.now:
                    # in program order: after the submissions still in the driver
                    self.kernel.program_call_at(self.busy_until, self._send_msg, c.msg)
                else:
                    self.client.send(self.node, c.msg)
            elif t is Report:
                w = c.waiter
                now = self.kernel.env._now
                cb = w.report
                for oid, info, _ in c.objects:
                    if w.record:
                        self.ready[oid] = (now, info)
                    if cb is not None:
                        cb(oid, info, now)
            elif t is Resolve:
                if c.waiter.done is not None:
                    c.waiter.done(c.value)
            elif t is TimedOut:
                if c.waiter.timeout is not None:
                    c.waiter.timeout(c.partial)
            elif t is Fail:
                if c.waiter.fail is not None:
                    c.waiter.fail(c.reason, c.detail)
            elif t is SetTimer:
                self.kernel.program_call_at(c.at, self._timer, c.key)

    def _timer(self, key: Any) -> None:
        self._run(self.machine.handle(TimerFired(key=key, stimulus_id=f"client-timer:{self.address}")))

    def put(self, size: int, value: Any = None, callback: Callable[[Any], Any] | None = None,
            oid: ObjectId | None = None) -> ObjectId:
        """Write an object into this node's store, then tell the node
        (``PutObject``); ``callback(PutDone | PutFailed)``.  ``oid``: try
        again to put an object whose put failed (the store was full), as
        Ray's ``put`` keeps trying while it waits for space."""
        if oid is None:
            self.puts += 1
            oid = put_object_id(self.root, self.puts)
        node = self.cluster.nodes[self.node]
        t = self.cluster.costs.store_write_time(size)

        def write() -> None:
            if not self.alive or not node.alive:
                return
            node.store[oid] = (size, value)
            me = self.address
            self._run(self.machine.request(SimWaiter(done=callback), lambda rid: PutObject(
                client=me, req_id=rid, object_id=oid, size=size))[1])

        if t > 0:
            self.kernel.call_after(t, write)
        else:
            write()
        return oid

    def gcs(self, request: Any, callback: Callable[[Any], Any] | None = None) -> int:
        """A GCS read (``Query``) or write (``Op``) through the node."""
        done = None if callback is None else (lambda reply: callback(reply.result))
        me = self.address
        rid, cmds = self.machine.request(SimWaiter(done=done), lambda rid: ClientGcsRequest(
            client=me, req_id=rid, request=request))
        self._run(cmds)
        return rid

    def status(self, callback: Callable[[ClusterStatus], Any]) -> int:
        me = self.address
        rid, cmds = self.machine.request(SimWaiter(done=callback), lambda rid: ClusterStatusRequest(client=me, req_id=rid))
        self._run(cmds)
        return rid

    def cancel(self, spec: TaskSpec, force: bool = False) -> None:
        """Cancel a task (``force``: kill the worker running it)."""
        if self.alive:
            if self.direct is not None and self.direct.cancel(spec.task_id, force):
                return  # (a direct call: its caller's machine decides)
            self.client.send(self.node, CancelTask(client=self.address, task_id=spec.task_id, force=force))

    def call_after(self, dt: float, fn: Callable, *args: Any) -> None:
        """Run ``fn(*args)`` ``dt`` seconds from now, if this driver still lives."""
        self.kernel.call_after(dt, self._guarded, fn, args)

    def _guarded(self, fn: Callable, args: tuple) -> None:
        if self.alive and not self.client.defer(self._guarded, (fn, args)):
            fn(*args)  # (a paused driver runs it when it resumes)

    def close(self) -> None:
        """The driver program exits (its node disconnects it)."""
        if self.alive:
            self.client.send(self.node, ClientDisconnected(client=self.address))
            self.kernel.call_after(1e-9, self._gone)
            self.alive = False
        self._run(self.machine.handle(ShutDown(stimulus_id=f"close:{self.address}")))

    def cut(self, detail: str = "the connection to the node was cut") -> None:
        """The connection to the node ends while the program goes on (a
        daemon killed under a live driver, a reset socket): the node is told
        (``ClientDisconnected``, as a closed socket tells a daemon), and
        everything this driver waits for fails, as every later request does."""
        if self.alive:
            self.client.send(self.node, ClientDisconnected(client=self.address))
            self.kernel.call_after(1e-9, self._gone)
        self.connection_lost(detail)

    def connection_lost(self, detail: str) -> None:
        """(its node crashed, or ``cut``) No more sends; the machine fails
        what waits."""
        self.alive = False
        self._run(self.machine.handle(ConnectionLost(detail=detail, stimulus_id=f"lost:{self.address}")))

    def _gone(self) -> None:
        self.kernel.remove_client(self.address)

    # ------------------------------------------------------------------ actors
    def create_actor(self, model: Any = None, *, cls: str = "Actor", max_restarts: int = 0, max_task_retries: int = 0,
                     replay: bool = False, checkpoint_interval: int = 0, resources: ResourceSet = EMPTY,
                     placement: ResourceSet = ResourceSet.of(CPU=1), max_concurrency: int = 1,
                     name: str | None = None, detached: bool = False, is_async: bool = False) -> "SimActor":
        """Create an actor whose creation task runs ``model`` (its ``init`` is
        the actor's state)."""
        tid = self.next_task_id()
        aspec = ActorSpec(actor_id=actor_id_of(tid), cls=self.function(cls), resources=resources,
                          max_restarts=max_restarts, max_task_retries=max_task_retries,
                          max_concurrency=max_concurrency, is_async=is_async, name=name, detached=detached, replay=replay,
                          checkpoint_interval=checkpoint_interval)
        spec = TaskSpec(task_id=tid, job_id=self.job_id, parent_task_id=self.root,
                        function=self.function(f"{cls}.__init__"), args=Payload(0, model),
                        resources=placement, actor_creation=aspec, max_retries=0)
        self.submit(spec)
        return SimActor(self, aspec, spec)

    # ------------------------------------------------------------------ receiving
    def _on_message(self, msg: Any) -> None:
        t = msg.__class__
        if t is ObjectsReady:
            self._run(self.machine.on_objects(msg.req_id, msg.objects, None, msg.stimulus_id))
        elif t is ClientGcsReply or t is ClusterStatus or t is PutDone or t is PutFailed:
            self._run(self.machine.on_reply(msg.req_id, msg))
        elif t is ActorRegistered:
            self.registered[msg.actor_id] = msg
        elif self.direct is not None:
            self.direct.on_message(msg)  # (a DirectReply, an ActorWatched)

    # ------------------------------------------------------------------ results
    def value(self, oid: ObjectId) -> Any:
        """The value of ``oid`` as this driver's node holds it (after a
        ``watch(fetch=True)`` said it is ready); an ``ErrorInfo`` for an
        object holding an error."""
        info = self.ready.get(oid)
        if info is not None and info[1].error is not None:
            return info[1].error
        found, value = self.local_value(oid)
        if found:
            return value
        return self.cluster.nodes[self.node].store[oid][1]

    def local_value(self, oid: ObjectId) -> tuple[bool, Any]:
        """``(True, value)`` if ``oid`` is a direct call's result that came
        inline in its reply (held here, not in the node's store); else
        ``(False, None)``, and a direct result held elsewhere (in the
        actor's node's store) is forgotten, so that a watch of it asks
        the node, which fetches it (as the real client's get does)."""
        r = self.machine.local.get(oid)
        if r is None:
            return False, None
        att = r[1]
        if att is not None and att[0] == "v":
            return True, att[1]
        if att is None:
            self.machine.forget_local([oid])
        return False, None

    def all_ready(self, specs: Iterable[TaskSpec]) -> bool:
        r = self.ready
        return all(o in r for s in specs for o in s.return_ids)

    def errors(self) -> dict[ObjectId, ErrorInfo]:
        return {o: i.error for o, (_, i) in self.ready.items() if i.error is not None}


class SimActor:
    """A handle to an actor created by a ``SimDriver``."""

    def __init__(self, driver: SimDriver, spec: ActorSpec, creation: TaskSpec) -> None:
        self.driver = driver
        self.spec = spec
        self.actor_id = spec.actor_id
        self.creation = creation
        self.calls = 0
        if spec.replay:
            driver.replay_actors.add(spec.actor_id)

    def call(self, model: Any = None, *, method: str = "m", deps: Sequence[ObjectId] = (), submit: bool = True) -> TaskSpec:
        """Call ``method`` (running ``model``, e.g. ``TaskModel(update=...)``)."""
        d = self.driver
        spec = TaskSpec(task_id=d.next_task_id(), job_id=d.job_id, parent_task_id=d.root,
                        function=d.function(f"{self.spec.cls.name}.{method}"), args=Payload(0, model),
                        dependencies=tuple(deps), actor_id=self.actor_id, caller_id=d.address,
                        sequence_no=self.calls, method=method)
        self.calls += 1
        if submit:
            d.submit(spec)
        return spec

    def kill(self, no_restart: bool = True) -> None:
        d = self.driver
        if d.alive:
            if no_restart and d.direct is not None:
                d.direct.killed(self.actor_id)  # (later calls fail at once)
            d.client.send(d.node, KillActor(client=d.address, actor_id=self.actor_id, no_restart=no_restart))
