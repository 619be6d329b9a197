"""The top-level API: ``init``, ``get``, ``wait``, ``put`` and friends.

``init`` starts or joins a cluster through the drivers ``penumbra/__init__``
registered (``drivers``: the API never imports a driver).  ``get`` and
``put`` live with ``ObjectRef`` (``refs``), ``wait`` with
``ObjectRefGenerator`` (``generators``) and ``get_actor`` with the actor
handles (``actor``), whose methods use them; they are re-exported here.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..core.tables import KvPut
from . import context, drivers
from .actor import ActorClass, ActorHandle, get_actor, is_actor_call, reset_sequences
from .context import current_runtime, task_context
from .generators import wait
from .options import env_vars_of
from .refs import ObjectRef, _reset_for_shutdown, get, put
from .remote_function import RemoteFunction

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
        rt = drivers.start_simulated(simulated, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                                     object_store_memory=object_store_memory, namespace=namespace)
    else:
        if address is None:
            address = os.environ.get("PENUMBRA_ADDRESS") or None
        if address in (None, "local"):
            system_config = dict(_system_config or {})
            if object_spilling_directory is not None:
                system_config["object_spilling_directory"] = _spill_dir_arg(object_spilling_directory)
            rt = drivers.start_local(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                                     object_store_memory=object_store_memory, system_config=system_config,
                                     namespace=namespace, log_to_driver=log_to_driver)
        else:
            if address == "auto":
                address = drivers.find_cluster()
            if any(v is not None for v in (num_cpus, num_gpus, resources, object_store_memory,
                                           object_spilling_directory)):
                raise ValueError(
                    "num_cpus, num_gpus, resources, object_store_memory and object_spilling_directory describe a "
                    "new node; when joining an existing cluster (address=...), give them to 'penumbra start' "
                    "instead"
                )
            rt = drivers.connect(address, token=_token, namespace=namespace, log_to_driver=log_to_driver)
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

