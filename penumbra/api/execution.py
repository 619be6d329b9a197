"""What a worker does with a task, whichever driver runs it.

The real worker process (``penumbra.transports.worker``) and the simulator's
Python executor (``penumbra.sim.runtime``) run the same user code with the
same rules; the rules live here, once: how inputs become arguments, how a
result becomes ``num_returns`` values, how an exception becomes the error
every caller sees, and how an actor's state is checkpointed and restored.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import os
import threading
import traceback
from typing import Any

from ..core.records import ErrorInfo, ErrorKind
from ..core.specs import Payload, TaskSpec
from ..exceptions import TaskError, from_error_info
from .args import dumps, loads, unpack_args
from .runtime import ErrorValue

__all__ = ["call_args", "split_returns", "task_error", "actor_state", "restore_actor", "construct_actor", "install_terminate",
           "terminate_actor", "gpu_ids_for", "set_visible_gpus", "assigned_resources"]

# The GPUs this process was started with, if someone restricted them: the
# node's GPU instance i is then the i-th of these (Ray's rule).
_STARTED_VISIBLE = os.environ.get("CUDA_VISIBLE_DEVICES")
_STARTED_IDS = [x for x in _STARTED_VISIBLE.split(",") if x] if _STARTED_VISIBLE else []


def assigned_resources(spec: TaskSpec, actor_life: Any = None) -> dict[str, float]:
    """What ``get_assigned_resources()`` returns while ``spec`` runs: a
    task's request; for an actor (its creation and its methods) what it
    holds for life (``actor_life``: that ``ResourceSet``, for a method) --
    ``{}`` by default, as in Ray, since an actor that does not ask for CPUs
    holds none while it lives."""
    if spec.actor_creation is not None:
        return spec.actor_creation.resources.to_dict()
    if spec.actor_id is not None:
        return actor_life.to_dict() if actor_life is not None else {}
    return spec.resources.to_dict()


def gpu_ids_for(indices: tuple[int, ...]) -> tuple:
    """What ``get_gpu_ids()`` returns for the node's GPU instances
    ``indices``: the indices themselves, or, when the process was started
    with ``CUDA_VISIBLE_DEVICES``, the entries of it they name (strings, as
    Ray returns them then)."""
    if not _STARTED_IDS:
        return tuple(indices)
    return tuple(_STARTED_IDS[i] if i < len(_STARTED_IDS) else str(i) for i in indices)


def set_visible_gpus(ids: tuple) -> None:
    """Point ``CUDA_VISIBLE_DEVICES`` at a task's GPUs (a task without GPUs
    sees what the process was started with).  Process-wide: only for a
    worker process, one task (or one actor) at a time."""
    if ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in ids)
    elif _STARTED_VISIBLE is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = _STARTED_VISIBLE


def call_args(spec: TaskSpec, values: list[Any]) -> tuple[list, dict]:
    """The call's ``(args, kwargs)`` from its decoded inputs, in dependency
    order; an input that holds an error raises it (the task fails with the
    same cause)."""
    for v in values:
        if type(v) is ErrorValue:
            raise from_error_info(v.info, loads)
    return unpack_args(spec.args, values)


def split_returns(spec: TaskSpec, result: Any) -> list[Any]:
    """The task's return values (none for an actor creation).

    Raises:
        ValueError: the function returned a different number of values
            than ``num_returns`` says.
    """
    n = spec.num_returns
    if n == 0 or spec.actor_creation is not None:
        return []
    if n == 1:
        return [result]  # (a generator's values were streamed already: see ``generators``)
    try:
        # a generator gives its first n values (Ray does not run it further)
        values = list(itertools.islice(result, n)) if inspect.isgenerator(result) else list(result)
    except TypeError:
        values = None
    if values is None or len(values) != n:
        raise ValueError(
            f"task {spec.display_name()} has num_returns={n} but returned "
            f"{'a ' + type(result).__name__ if values is None else str(len(values)) + ' values'}"
        )
    return values


def task_error(spec: TaskSpec, e: BaseException) -> tuple[ErrorInfo, bool]:
    """The error a failed task leaves for its callers, and whether
    ``retry_exceptions`` asks for another attempt.

    ``e`` may be a child's ``TaskError`` the task did not catch: the root
    cause carries on (see ``TaskError.from_exception``)."""
    name = spec.display_name()
    err = TaskError.from_exception(name, e)
    try:
        data = dumps(err)
    except Exception:
        # the user's exception cannot be pickled: keep its text
        err = TaskError(name, err.traceback_str, None, err.pid, err.host, cause_repr=err.cause_repr)
        data = dumps(err)
    # (the short text names the root cause, not a child's whole error text)
    root = e.cause if isinstance(e, TaskError) and e.cause is not None else e
    info = ErrorInfo(ErrorKind.TASK_ERROR, f"{type(root).__name__}: {root}", Payload(len(data), data), task_name=name)
    return info, _retryable(spec, e)


def _retryable(spec: TaskSpec, e: BaseException) -> bool:
    r = spec.retry_exceptions
    if r is True:
        return isinstance(e, Exception)
    if not r:
        return False
    names = {f"{c.__module__}.{c.__qualname__}" for c in type(e).__mro__}
    return any(n in names for n in r)


def actor_state(actor: Any) -> bytes:
    """An actor's checkpoint: ``__penumbra_checkpoint__()`` if it has one,
    else its ``__dict__``, pickled."""
    hook = getattr(actor, "__penumbra_checkpoint__", None)
    if hook is not None:
        return dumps(hook())
    state = dict(vars(actor))
    state.pop("__ray_terminate__", None)  # (install_terminate's: bound to this instance)
    return dumps(state)


def run_shutdown(obj: Any) -> None:
    """Run the actor ``obj``'s ``__ray_shutdown__`` to its end, here and now
    (``exit_actor``: the actor ends gracefully); an error in it is printed,
    not raised, as the actor ends anyway."""
    shutdown = getattr(obj, "__ray_shutdown__", None)
    if shutdown is None:
        return
    try:
        result = shutdown()
        if inspect.isawaitable(result):
            # (this thread may be running the actor's event loop: await it
            # on a loop of its own, in a thread of its own)
            errors: list[BaseException] = []

            def run() -> None:
                try:
                    asyncio.run(result)
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)

            t = threading.Thread(target=run, name="penumbra-ray-shutdown")
            t.start()
            t.join()
            if errors:
                raise errors[0]
    except Exception:  # noqa: BLE001 - see above
        traceback.print_exc()


def terminate_actor(obj: Any) -> Any:
    """What ``handle.__ray_terminate__.remote()`` runs in the actor, after
    the calls made before it: the actor's ``__ray_shutdown__``, if it has
    one (its result: a coroutine is awaited like an async method's).  The
    actor's host then ends the actor for good (``core.actors``)."""
    shutdown = getattr(obj, "__ray_shutdown__", None)
    return shutdown() if shutdown is not None else None


def install_terminate(obj: Any) -> Any:
    """Give a new actor instance its ``__ray_terminate__`` (unless its class
    has its own), so the worker runs it like any method."""
    if not hasattr(type(obj), "__ray_terminate__"):
        try:
            obj.__ray_terminate__ = functools.partial(terminate_actor, obj)
        except AttributeError:
            pass  # (a class with __slots__: __ray_terminate__ is then not available)
    return obj


def construct_actor(cls: type, args: list, kwargs: dict, loop: Any = None) -> Any:
    """A new instance of the actor class ``cls``.  An ``async def
    __init__`` (an async actor's) is awaited on the actor's event loop
    ``loop``, as Ray does, so what it starts there (a server, a background
    task) lives with the actor; without a loop (the simulator) it runs to
    its end on a loop of its own.  (``cls(...)`` would fail: Python wants
    ``__init__`` to return None, not a coroutine.)"""
    if not inspect.iscoroutinefunction(getattr(cls, "__init__", None)):
        return cls(*args, **kwargs)
    obj = cls.__new__(cls)
    coro = obj.__init__(*args, **kwargs)
    if loop is None:
        asyncio.run(coro)
    else:
        asyncio.run_coroutine_threadsafe(coro, loop).result()
    return obj


def restore_actor(cls: type, data: bytes) -> Any:
    """An instance of ``cls`` rebuilt from a checkpoint, without running its
    constructor: ``__penumbra_restore__(state)`` if it has one, else its
    ``__dict__`` is set."""
    obj = cls.__new__(cls)
    state = loads(data)
    restore = getattr(obj, "__penumbra_restore__", None)
    if restore is not None:
        restore(state)
    else:
        obj.__dict__.update(state)
    return obj
