"""The top-level API: ``init``, ``get``, ``wait``, ``put`` and friends."""

from __future__ import annotations

import numbers
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..core.ids import ActorId, put_object_id
from ..core.tables import Get, KvPut
from ..exceptions import from_error_info
from . import context
from .actor import ActorClass, ActorHandle, is_actor_call, reset_sequences
from .args import loads
from .context import current_runtime, task_context
from .generators import ObjectRefGenerator
from .options import env_vars_of
from .refs import ObjectRef, _reset_for_shutdown, mark_owned_put
from .remote_function import RemoteFunction
from .runtime import ErrorValue

__all__ = [
    "init", "shutdown", "is_initialized", "remote", "get", "wait", "put", "cancel", "kill",
    "get_actor", "nodes", "cluster_resources", "available_resources", "get_runtime_context",
    "RuntimeContext", "ClusterInfo",
]


@dataclass
class ClusterInfo:
    """What ``init`` returns (Ray: ``RayContext``)."""

    address: str
    node_id: str
    job_id: int
    dashboard_url: str | None = None
    address_info: dict = field(default_factory=dict)

    def __enter__(self) -> "ClusterInfo":
        return self

    def __exit__(self, *exc) -> None:
        shutdown()

    def disconnect(self) -> None:
        """Disconnect from the cluster (Ray: ``RayContext.disconnect``):
        ``shutdown()``, so an embedded cluster stops and a joined one stays."""
        shutdown()

    def __getitem__(self, key: str) -> Any:  # Ray lets you index the context
        return self.address_info[key]


def init(address: str | None = None, *, num_cpus: float | None = None, num_gpus: float | None = None,
         resources: dict[str, float] | None = None, object_store_memory: int | None = None,
         namespace: str | None = None, ignore_reinit_error: bool = False, simulated: Any = None,
         log_to_driver: bool = True, include_dashboard: bool | None = None, logging_level: Any = None,
         object_spilling_directory: str | None = None,
         _token: str | None = None, _system_config: dict | None = None, **kwargs) -> ClusterInfo:
    """Start or join a cluster and make it current in this process.

    Args:
        address: ``None`` joins the cluster at ``$PENUMBRA_ADDRESS`` when
            that is set (as Ray's ``$RAY_ADDRESS``), and otherwise, like
            ``"local"``, starts an embedded cluster on this
            machine: a GCS, a node daemon and one worker per CPU, all stopped
            by ``shutdown``.  The first ``.remote()``, ``get``, ``put``,
            ``wait``, ``get_actor`` or ``nodes`` of a process that never
            called ``init`` calls ``init()`` (set
            ``PENUMBRA_ENABLE_AUTO_CONNECT=0`` to get an error instead).  ``"host:port"`` joins a cluster started with
            ``penumbra start --head``; ``"auto"`` finds the one started last
            on this machine (or ``$PENUMBRA_ADDRESS``).
        num_cpus, num_gpus, resources: the embedded node's resources
            (default: the machine's CPUs, no GPUs).
        object_store_memory: the embedded node's object store capacity in
            bytes.  When it is full of objects still referenced, the least
            recently used are spilled to disk and read back on ``get``
            (Ray's object spilling); ``ObjectStoreFullError`` only when the
            disk refuses too.
        object_spilling_directory: where the embedded node spills objects
            (default: under its session directory).  Ray's form is accepted
            too: ``_system_config={"object_spilling_config": json.dumps(
            {"type": "filesystem", "params": {"directory_path": DIR}})}``,
            with ``"object_spilling_threshold"`` (default 0.8) and
            ``"automatic_object_spilling_enabled"``.
        namespace: the namespace of named actors.  Without one the job gets
            a fresh anonymous namespace, as in Ray: the named actors it
            creates are then invisible to other jobs (unless they give a
            ``namespace=`` when creating or looking them up).
        simulated: run this program on penumbra's simulator instead (a
            ``penumbra.sim.SimConfig`` or ``True``), with virtual time.

    Raises:
        RuntimeError: already initialized (pass ``ignore_reinit_error=True``).
        ClusterConnectionLostError: the cluster this process was connected
            to is lost; call ``shutdown()`` first.
        ConnectionError: the cluster at ``address`` cannot be reached, or
            refused our token.
    """
    current = context.runtime_or_none()
    if current is not None:
        lost = current.lost_error()
        if lost is not None:
            raise lost  # (it says to call shutdown() first)
        if ignore_reinit_error:
            rt = context.current_runtime()
            return ClusterInfo(getattr(rt, "address", ""), rt.node_id, rt.job_id)
        raise RuntimeError(
            "penumbra.init() was called twice: this process is already connected to a cluster. "
            "Call penumbra.shutdown() first, or pass ignore_reinit_error=True."
        )
    unknown = set(kwargs) - {"_temp_dir", "_node_ip_address", "runtime_env", "configure_logging", "log_style", "local_mode", "dashboard_host", "dashboard_port", "_plasma_directory"}
    if unknown:
        raise TypeError(f"init() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    job_env = env_vars_of(kwargs.get("runtime_env"))
    if namespace is not None and not isinstance(namespace, str):
        raise TypeError(f"init(namespace=...) must be a string, got {namespace!r}")
    anonymous = namespace is None
    namespace = namespace or ""
    if simulated:
        from ..sim.runtime import start_simulated

        rt = start_simulated(simulated, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                             object_store_memory=object_store_memory, namespace=namespace)
    else:
        if address is None:
            address = os.environ.get("PENUMBRA_ADDRESS") or None
        if address in (None, "local"):
            # start the daemon before importing the client side (trio and
            # friends): its start-up and our imports then overlap
            from ..transports.launch import start_embedded

            system_config = dict(_system_config or {})
            if object_spilling_directory is not None:
                system_config["object_spilling_directory"] = _spill_dir_arg(object_spilling_directory)
            pending = start_embedded(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                                     object_store_memory=object_store_memory, system_config=system_config)
            try:
                from ..transports.client import start_local
            except BaseException:
                pending.kill()
                raise
            rt = start_local(pending, namespace=namespace, log_to_driver=log_to_driver)
        else:
            from ..transports.client import connect

            if address == "auto":
                from ..transports.cluster_file import find_cluster

                address = find_cluster()
            if any(v is not None for v in (num_cpus, num_gpus, resources, object_store_memory,
                                           object_spilling_directory)):
                raise ValueError(
                    "num_cpus, num_gpus, resources, object_store_memory and object_spilling_directory describe a "
                    "new node; when joining an existing cluster (address=...), give them to 'penumbra start' "
                    "instead"
                )
            rt = connect(address, token=_token, namespace=namespace, log_to_driver=log_to_driver)
    if anonymous:
        # Ray's anonymous namespace: this job's alone (on the simulator named
        # after the job, so that a run replays exactly)
        rt.namespace = f"anonymous-job-{rt.job_id}" if simulated else str(uuid.uuid4())
    try:
        # (the job's workers read it: their tasks are in this namespace too)
        rt.gcs_request(KvPut(context.job_namespace_key(rt.job_id), rt.namespace), timeout=30.0)
    except BaseException:
        rt.shutdown()
        raise
    context.set_runtime(rt, rt.job_id, job_env)
    return ClusterInfo(getattr(rt, "address", ""), rt.node_id, rt.job_id,
                       address_info={"address": getattr(rt, "address", ""), "node_id": rt.node_id,
                                     "gcs_address": getattr(rt, "address", "")})


context.set_auto_init(init)


def _spill_dir_arg(path: Any) -> str:
    """``init(object_spilling_directory=...)``, checked where it was given."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise TypeError(f"init(object_spilling_directory=...) must be a directory path, got {path!r}")
    return os.path.abspath(os.fspath(path))


def shutdown() -> None:
    """Disconnect; an embedded cluster is stopped and its shared memory freed."""
    rt = context.runtime_or_none()
    if rt is None:
        return
    context.set_runtime(None)
    _reset_for_shutdown()
    reset_sequences()
    rt.shutdown()


def is_initialized() -> bool:
    return context.runtime_or_none() is not None


def remote(*args, **kwargs):
    """Make a function a remote function, or a class an actor class.

    ``@remote`` or ``@remote(num_cpus=..., num_returns=..., ...)``.
    """
    if len(args) == 1 and not kwargs and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError(
            "@remote takes either a function/class or only keyword options, e.g. "
            "@remote(num_cpus=2); got positional arguments " + repr(args)
        )

    def deco(obj):
        return _make_remote(obj, kwargs)

    return deco


def _make_remote(obj, options: dict):
    if isinstance(obj, type):
        return ActorClass(obj, options)
    if callable(obj):
        return RemoteFunction(obj, options)
    raise TypeError(f"@remote can decorate functions and classes, not {type(obj).__name__}")


def _check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or timeout < 0:
        raise ValueError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
    return float(timeout)


def _raise_if_error(value: Any) -> Any:
    if type(value) is ErrorValue:
        raise from_error_info(value.info, loads)
    return value


def get(object_refs, *, timeout: float | None = None):
    """The value(s) of one ref or a list of refs, waiting until ready.

    Raises:
        GetTimeoutError: not ready within ``timeout`` seconds.
        TaskError: the task raised (also an instance of the user's class).
        WorkerCrashedError, ActorDiedError, ObjectLostError, TaskCancelledError.
    """
    timeout = _check_timeout(timeout)
    rt = current_runtime(auto_init=True)
    if type(object_refs) is ObjectRef:
        return _raise_if_error(rt.get_objects([object_refs._id], timeout)[0])
    if not isinstance(object_refs, (list, tuple)):
        raise ValueError(
            f"'object_refs' must be an ObjectRef or a list of ObjectRefs, got {type(object_refs).__name__}"
        )
    ids = []
    for i, r in enumerate(object_refs):
        if type(r) is not ObjectRef:
            raise TypeError(f"get() expects ObjectRefs, but item {i} is a {type(r).__name__}: {r!r}")
        ids.append(r._id)
    if not ids:
        return []
    values = rt.get_objects(ids, timeout)
    return [_raise_if_error(v) for v in values]


def wait(object_refs: Sequence[ObjectRef], *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Wait until ``num_returns`` of the refs are ready or ``timeout`` passes.

    Returns ``(ready, not_ready)``, both in the order of ``object_refs``.
    A streaming generator (``ObjectRefGenerator``) may stand among the refs:
    it is ready when its next value (or its end) is.
    """
    if isinstance(object_refs, ObjectRef):
        raise TypeError("wait() expects a list of ObjectRefs, not a single ObjectRef; use wait([ref])")
    if not isinstance(object_refs, (list, tuple)):
        raise TypeError(f"wait() expects a list of ObjectRefs, got {type(object_refs).__name__}")
    for i, r in enumerate(object_refs):
        if type(r) is not ObjectRef and type(r) is not ObjectRefGenerator:
            raise TypeError(f"wait() expects ObjectRefs, but item {i} is a {type(r).__name__}: {r!r}")
    if len(set(object_refs)) != len(object_refs):
        raise ValueError("wait() requires a list of unique ObjectRefs")
    if isinstance(num_returns, bool) or not isinstance(num_returns, int) or num_returns < 1 and object_refs:
        raise ValueError(f"num_returns must be a positive integer, got {num_returns!r}")
    if num_returns > len(object_refs):
        raise ValueError(f"num_returns ({num_returns}) cannot exceed the number of refs ({len(object_refs)})")
    timeout = _check_timeout(timeout)
    if not object_refs:
        return [], []
    rt = current_runtime(auto_init=True)
    if any(type(r) is ObjectRefGenerator for r in object_refs):
        return _wait_with_generators(rt, object_refs, num_returns, timeout, fetch_local)
    ready_ids = rt.wait_objects([r._id for r in object_refs], num_returns, timeout, fetch_local)
    ready, not_ready = [], []
    for r in object_refs:
        if r._id in ready_ids and len(ready) < num_returns:
            ready.append(r)
        else:
            not_ready.append(r)
    return ready, not_ready


def _wait_with_generators(rt, items, num_returns: int, timeout: float | None, fetch_local: bool):
    """``wait`` over refs and generators: a generator stands for two ids (its
    next value and its end) and is ready when either is, so asking the node
    for ``num_returns`` ready ids may count one generator twice; ask again,
    for as many more as came up short, until enough items are ready."""
    import time

    ids_of = [(r._id,) if type(r) is ObjectRef else
              (() if r._is_done() else tuple(x._id for x in r._candidates())) for r in items]
    every = list(dict.fromkeys(i for ids in ids_of for i in ids))
    deadline = None if timeout is None else time.monotonic() + timeout
    want = num_returns
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        got = rt.wait_objects(every, min(want, len(every)), left, fetch_local) if every else set()
        ready_idx = [k for k, ids in enumerate(ids_of) if not ids or any(i in got for i in ids)]
        short = num_returns - len(ready_idx)
        if short <= 0 or want >= len(every) or (left is not None and left <= 0):
            break
        want = min(len(every), len(got) + short)
    chosen = set(ready_idx[:num_returns])
    return [r for k, r in enumerate(items) if k in chosen], [r for k, r in enumerate(items) if k not in chosen]


def put(value: Any) -> ObjectRef:
    """Store ``value`` in the object store; returns its ref.

    The object stays pinned while this process holds a ref to it.  ``put``
    objects cannot be rebuilt from lineage if every copy is lost.
    """
    if isinstance(value, ObjectRef):
        raise TypeError(
            "put() of an ObjectRef is not allowed: pass the ref itself, or put() the value it refers to"
        )
    rt = current_runtime(auto_init=True)
    ctx = task_context()
    oid = put_object_id(ctx.task_id, next(ctx.puts))
    rt.put_object(oid, value)
    mark_owned_put(oid)
    return ObjectRef(oid)


def _in_event_loop() -> bool:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def cancel(object_ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that produces ``object_ref``; ``get`` then raises
    ``TaskCancelledError``.  ``force`` kills the worker running it.

    An actor method call (Ray's rule for actor tasks): queued, it is
    cancelled and never runs; running in an async actor, its asyncio task
    is cancelled; running in a sync or threaded actor, it is not
    interrupted (actors have state): ``get_runtime_context().is_canceled()``
    turns true in it, and ``get`` raises ``TaskCancelledError`` whatever it
    returns.

    Raises:
        ValueError: ``force=True`` for an actor call: an actor task cannot
            be force-killed; use ``penumbra.kill(actor)`` to kill the actor.
    """
    if type(object_ref) is not ObjectRef:
        raise TypeError(f"cancel() expects an ObjectRef, got {type(object_ref).__name__}")
    if force and is_actor_call(object_ref):
        raise ValueError("force=True is not supported for actor tasks: an actor method call cannot be "
                         "force-killed (it would kill the actor); cancel it with force=False, or kill the "
                         "actor with penumbra.kill(actor)")
    current_runtime().cancel(object_ref._id.task_id, force, recursive)


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Kill an actor; calls in flight fail with ``ActorDiedError``.

    Calls this process makes after ``kill`` returns raise ``ActorDiedError``
    at ``get``.  The kill itself is asynchronous, as in Ray: a call made
    from *another* process at the same moment may still run first.

    With ``no_restart=False`` it is restarted if ``max_restarts`` allows.
    """
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() expects an actor handle, got {type(actor).__name__}")
    current_runtime().kill_actor(actor._actor_id, no_restart)


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """A handle to the named actor.  Raises ``ValueError`` if there is none."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"get_actor() needs a non-empty name, got {name!r}")
    rt = current_runtime(auto_init=True)
    ns = rt.namespace if namespace is None else namespace
    aid = rt.gcs_request(Get("names", (ns, name)), timeout=30.0)
    if aid is None:
        raise ValueError(f"Failed to look up actor with name '{name}' in namespace '{ns}': no such actor "
                         f"(it was never created, or it died)")
    entry = rt.gcs_request(Get("actors", ActorId(aid)), timeout=30.0)
    if entry is None:
        raise ValueError(f"actor '{name}' is registered but its record is missing; retry shortly")
    s = entry.spec
    return ActorHandle(s.actor_id, s.cls.name.rsplit(".", 1)[-1], s.methods, s.is_async, s.cls)


def _status():
    return current_runtime(auto_init=True).cluster_status(timeout=30.0)


def nodes() -> list[dict]:
    """Every node the cluster has seen, alive or dead."""
    out = []
    for node_id, alive, total, load in _status().nodes:
        total = total.to_dict()
        out.append({
            "NodeID": node_id, "Alive": alive, "alive": alive, "Resources": total,
            "NodeManagerAddress": "127.0.0.1", "NodeName": node_id,
        })
    return out


def cluster_resources() -> dict[str, float]:
    """Total resources of the alive nodes."""
    out: dict[str, float] = {}
    for _, alive, total, _load in _status().nodes:
        if alive:
            for k, v in total.to_dict().items():
                out[k] = out.get(k, 0.0) + v
    return out


def available_resources() -> dict[str, float]:
    """Resources free right now on the alive nodes (as of their heartbeats)."""
    out: dict[str, float] = {}
    for _, alive, total, load in _status().nodes:
        if alive:
            avail = load.available if load is not None else total
            for k, v in avail.to_dict().items():
                if v:
                    out[k] = out.get(k, 0.0) + v
    return out


class RuntimeContext:
    """What ``get_runtime_context()`` returns: ids of the current job, task,
    node, worker and actor."""

    def __init__(self, rt, ctx) -> None:
        self._rt = rt
        self._ctx = ctx

    def get_job_id(self) -> str:
        return f"{self._rt.job_id:08x}"

    @property
    def job_id(self):
        return self.get_job_id()

    def get_task_id(self) -> str | None:
        return None if not self._rt.is_worker else self._ctx.task_id.hex()

    def get_node_id(self) -> str:
        return self._rt.node_id

    @property
    def node_id(self):
        return self.get_node_id()

    def get_worker_id(self) -> str:
        return self._rt.client_id

    def get_actor_id(self) -> str | None:
        a = self._ctx.actor_id
        return a.hex() if a is not None else None

    @property
    def namespace(self) -> str:
        return self._rt.namespace

    def get_namespace(self) -> str:
        return self._rt.namespace

    def is_canceled(self) -> bool:
        """Whether ``cancel`` was called on the task running here.  A running
        task is interrupted (``KeyboardInterrupt``) when it can be; a sync or
        threaded actor's call never is (Ray's rule), so it may poll this and
        stop.

        Raises:
            RuntimeError: called outside a task or actor method, or in an
                async actor (there a cancelled call gets
                ``asyncio.CancelledError`` instead, as in Ray).
        """
        if self._ctx.task_id is None or not self._rt.is_worker:
            raise RuntimeError("is_canceled() can only be called inside a task or an actor method")
        if self._ctx.actor_id is not None and _in_event_loop():
            raise RuntimeError("is_canceled() is not available in an async actor: a cancelled call of an async "
                               "actor gets asyncio.CancelledError at its next await instead")
        return self._rt.task_cancelled(self._ctx.task_id)

    @property
    def was_current_actor_reconstructed(self) -> bool:
        return self._ctx.actor_id is not None and getattr(self._rt, "actor_incarnation", 0) > 0

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        """The accelerators this task or actor holds: ``{"GPU": [ids]}``."""
        return {"GPU": [str(i) for i in self._ctx.gpu_ids]}

    def get_assigned_resources(self) -> dict:
        """The resources this task holds (``{"CPU": 1.0}`` by default), or
        those its actor holds for life (``{}`` by default); ``{}`` in the
        driver."""
        return dict(self._ctx.resources)

    @property
    def current_actor(self) -> ActorHandle:
        a = self._ctx.actor_id
        if a is None:
            raise RuntimeError("current_actor is only available inside an actor")
        return self._rt.current_actor_handle()


def get_gpu_ids() -> list:
    """The GPUs this task or actor holds (``num_gpus``), as indices on its
    node -- or, if the node was started with ``CUDA_VISIBLE_DEVICES``, as the
    entries of it (strings).  Empty in the driver and in tasks without GPUs.

    A task's ``CUDA_VISIBLE_DEVICES`` is set to these while it runs.  Tasks
    with fractional ``num_gpus`` share a GPU: ``0.5`` and ``0.5`` get the
    same id.
    """
    return list(task_context().gpu_ids)


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext(current_runtime(), task_context())

