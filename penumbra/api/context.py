"""The one runtime context of a process, and the current task.

``current_runtime()`` is the runtime ``init`` connected (or the worker's own).
The *task context* says which task is running on this thread: ids of tasks
and objects created here derive from it, so it must be exact.  It lives in a
``contextvars.ContextVar`` so that threaded and async actors, which run
several calls at once, each see their own.
"""

from __future__ import annotations

import contextvars
import itertools
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from ..core.ids import ActorId, TaskId, driver_task_id

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["TaskContext", "current_runtime", "set_runtime", "task_context", "use_task_context", "driver_context",
           "job_namespace_key", "job_namespace"]

_runtime: "Runtime | None" = None
_lock = threading.RLock()


@dataclass(slots=True, eq=False)
class TaskContext:
    task_id: TaskId
    job_id: int
    actor_id: ActorId | None = None
    attempt: int = 0
    name: str = ""
    # the n-th task submitted / object put while this task runs
    submitted: itertools.count = field(default_factory=itertools.count)
    puts: itertools.count = field(default_factory=lambda: itertools.count(1))
    gpu_ids: tuple = ()  # what get_gpu_ids() returns (the GPUs the task or actor holds)
    resources: dict = field(default_factory=dict)  # what get_assigned_resources() returns
    env_vars: tuple = ()  # runtime_env env_vars the tasks it submits inherit
    # the task's (or its actor's) scheduling strategy: a placement group
    # that captures child tasks passes on to the tasks submitted here
    scheduling: object = None


_driver_ctx: TaskContext | None = None
_task_ctx: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar("penumbra_task", default=None)


# ``init`` with no arguments, registered by ``functions`` (which imports this
# module, so it cannot be imported from here).
_auto_init: Callable[[], object] | None = None


def set_auto_init(hook: Callable[[], object] | None) -> None:
    global _auto_init
    _auto_init = hook


def auto_init_enabled() -> bool:
    """Implicit init is on unless ``PENUMBRA_ENABLE_AUTO_CONNECT`` (or Ray's
    ``RAY_ENABLE_AUTO_CONNECT``) is ``0``."""
    for name in ("PENUMBRA_ENABLE_AUTO_CONNECT", "RAY_ENABLE_AUTO_CONNECT"):
        v = os.environ.get(name)
        if v is not None:
            return v.strip().lower() not in ("0", "false", "no", "off")
    return True


def current_runtime(auto_init: bool = False) -> "Runtime":
    """The current runtime.  With ``auto_init`` (the calls Ray starts a
    cluster for: ``.remote()``, ``get``, ``wait``, ``put``, ``get_actor``,
    ``nodes`` ...), a process that never called ``init`` gets one here, as
    ``init()`` would start it, the way Ray's first remote API call does."""
    rt = _runtime
    if rt is None:
        if auto_init and _auto_init is not None and auto_init_enabled():
            with _lock:
                if _runtime is None:
                    _auto_init()
            if _runtime is not None:
                return _runtime
        from ..exceptions import PenumbraError

        raise PenumbraError(
            "penumbra is not initialized: call penumbra.init() first "
            "(or init(address='host:port') to join a running cluster)"
        )
    return rt


def runtime_or_none() -> "Runtime | None":
    return _runtime


def set_runtime(rt: "Runtime | None", job_id: int | None = None, env_vars: tuple = ()) -> None:
    global _runtime, _driver_ctx
    with _lock:
        _runtime = rt
        _driver_ctx = (TaskContext(driver_task_id(job_id), job_id, env_vars=env_vars)
                       if rt is not None and job_id is not None else None)


def driver_context() -> TaskContext | None:
    return _driver_ctx


def task_context() -> TaskContext:
    ctx = _task_ctx.get()
    if ctx is not None:
        return ctx
    if _driver_ctx is not None:
        return _driver_ctx
    current_runtime()  # raises the not-initialized error
    raise RuntimeError("no task context")


class use_task_context:
    """``with use_task_context(ctx):`` makes ``ctx`` current on this thread."""

    __slots__ = ("ctx", "token")

    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx

    def __enter__(self) -> TaskContext:
        self.token = _task_ctx.set(self.ctx)
        return self.ctx

    def __exit__(self, *exc) -> None:
        _task_ctx.reset(self.token)


def job_namespace_key(job_id: int) -> str:
    """The GCS ``kv`` key under which a driver records its job's namespace
    (``init`` writes it), for the job's workers to read."""
    return f"namespace:job:{job_id}"


_job_namespaces: dict[tuple[int, int], str] = {}  # (runtime key, job id) -> namespace


def job_namespace(rt: "Runtime") -> str:
    """The namespace of the job whose task runs on this thread, in a worker
    (a job's tasks and actors are in its driver's namespace, as in Ray):
    read from the GCS once per job and remembered.  A job whose driver
    recorded none (an older driver) is in ``""``."""
    ctx = _task_ctx.get()
    job = ctx.job_id if ctx is not None else getattr(rt, "job_id", 0)
    key = (rt.key, job)
    ns = _job_namespaces.get(key)
    if ns is None:
        from ..core.tables import Get

        ns = rt.gcs_request(Get("kv", job_namespace_key(job)), timeout=30.0)
        ns = _job_namespaces[key] = ns if isinstance(ns, str) else ""
    return ns
