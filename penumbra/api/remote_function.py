"""``@penumbra.remote`` functions."""

from __future__ import annotations

import functools
import inspect
import threading
from typing import Any

from ..core.ids import child_task_id
from ..core.specs import FunctionDescriptor, TaskSpec
from .args import dumps, function_id, pack_args
from .context import current_runtime, task_context
from .dag import FunctionNode
from .generators import refs_for, returns_mode
from .options import TASK_OPTIONS, exception_names, merge_env, scheduling_for, task_resources, validate
from .refs import ObjectRef, put

__all__ = ["RemoteFunction"]


class _Exported:
    """A pickled function and the runtimes it was exported to.

    A remote function that travels inside another (a task calling ``f.remote``)
    arrives with the descriptor under which it was already exported, so the
    worker does not pickle and export it again.

    The pickle is made afresh for each runtime: what it embeds (the
    descriptors of the remote functions it calls) is only true of the
    cluster it was made for.  (A pickle cached across ``shutdown``/``init``
    told the next cluster's workers that an inner function was exported when
    that cluster had never seen it.)
    """

    __slots__ = ("descriptor", "blob", "runtimes", "lock", "preexported")

    def __init__(self, descriptor: FunctionDescriptor | None = None) -> None:
        self.descriptor = descriptor  # the descriptor of the latest export
        self.blob: bytes | None = None
        self.runtimes: dict[int, FunctionDescriptor] = {}  # runtime.key -> its export
        self.lock = threading.Lock()
        self.preexported = descriptor is not None

    def current_descriptor(self) -> FunctionDescriptor | None:
        """The descriptor if it is known to the current cluster, else None
        (an export to an earlier cluster, before shutdown/init, does not
        count: that cluster's function table is gone)."""
        from .context import runtime_or_none

        if self.preexported:
            return self.descriptor
        rt = runtime_or_none()
        return self.runtimes.get(rt.key) if rt is not None else None

    def ensure(self, obj: Any, name: str, rt) -> FunctionDescriptor:
        if self.preexported:
            return self.descriptor
        fd = self.runtimes.get(rt.key)
        if fd is not None:
            return fd
        with self.lock:
            fd = self.runtimes.get(rt.key)
            if fd is None:
                # pickled at first use, not at decoration: the function may
                # refer to globals defined after it (as in Ray)
                try:
                    blob = dumps(obj)
                except Exception as e:
                    from ..exceptions import SerializationError

                    raise SerializationError(
                        f"{name} could not be serialized to ship it to workers: {type(e).__name__}: {e}. "
                        f"Remote functions and classes must be picklable by cloudpickle (do not close over "
                        f"locks, sockets, open files or similar)."
                    ) from None
                fd = FunctionDescriptor(function_id(blob), name)
                rt.export_function(fd.function_id, blob)
                self.blob, self.descriptor = blob, fd
                self.runtimes[rt.key] = fd
        return fd


class RemoteFunction:
    """A function that runs as a task: call ``.remote(...)`` to get refs."""

    def __init__(self, fn, options: dict[str, Any], _exported: _Exported | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"@remote needs a function or a class, got {fn!r}")
        self._function = fn
        self._name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        self._options = validate(options, TASK_OPTIONS, f"remote function {self._name}")
        self._exported = _exported or _Exported()
        o = self._options
        self._resources = task_resources(o)
        self._generator = inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)
        self._num_returns = returns_mode(o.get("num_returns"), self._generator)
        self._max_retries = 3 if o.get("max_retries") is None else o["max_retries"]
        r = o.get("retry_exceptions")
        self._retry = False if r is None else (r if isinstance(r, bool) else exception_names(r))
        self._task_name = o.get("name") or ""
        self._plain = o.get("scheduling_strategy") is None  # (then only a captured parent's group applies)
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"Remote functions cannot be called directly. Instead of running "
            f"'{self._function.__name__}()', try '{self._function.__name__}.remote()'."
        )

    def options(self, **options) -> "RemoteFunction":
        """A copy of this remote function with some options overridden."""
        merged = {**self._options, **options}
        return RemoteFunction(self._function, merged, self._exported)

    def remote(self, *args, **kwargs):
        rt = current_runtime(auto_init=True)
        fd = self._exported.ensure(self._function, self._name, rt)
        ctx = task_context()
        payload, deps, keep = pack_args(args, kwargs, _put)
        resources, strategy = self._resources, None
        if not self._plain or ctx.scheduling is not None:
            strategy, resources, _ = scheduling_for(self._options, resources, ctx.scheduling)
        tid = child_task_id(ctx.task_id, next(ctx.submitted))
        spec = TaskSpec(
            task_id=tid, job_id=ctx.job_id, parent_task_id=ctx.task_id, function=fd,
            args=payload, dependencies=deps, num_returns=1 if self._num_returns < 0 else self._num_returns,
            resources=resources, max_retries=self._max_retries,
            retry_exceptions=self._retry, name=self._task_name, scheduling=strategy,
            env_vars=merge_env(ctx.env_vars, self._options.get("runtime_env")),
        )
        rt.submit(spec)
        del keep  # implicit puts stay pinned by the task's dependency pin
        return refs_for(spec, self._num_returns)

    def bind(self, *args, **kwargs) -> FunctionNode:
        """A lazy call of this function (Ray's DAG API): ``.execute()`` runs it."""
        return FunctionNode(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<penumbra remote function {self._name}>"

    def __reduce__(self):
        # pickled into tasks that call it: carry the export (if it was made
        # to the cluster we are connected to now), not the lock
        return (_rebuild_function, (self._function, self._options, self._exported.current_descriptor()))


def _rebuild_function(fn, options, descriptor):
    return RemoteFunction(fn, options, _Exported(descriptor))


def _put(value):
    return put(value)
