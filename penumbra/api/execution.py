"""What a worker does with a task, whichever driver runs it.

The real worker process (``penumbra.transports.worker``) and the simulator's
Python executor (``penumbra.sim.runtime``) run the same user code with the
same rules; the rules live here, once: how inputs become arguments, how a
result becomes ``num_returns`` values, how an exception becomes the error
every caller sees, and how an actor's state is checkpointed and restored.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import io
import os
import pickle
import threading
import traceback
from typing import Any

from ..core.ids import ObjectId
from ..core.records import ErrorInfo, ErrorKind
from ..core.specs import Payload, TaskSpec
from ..exceptions import GetTimeoutError, PenumbraError, TaskError, from_error_info
from .args import dumps, loads, unpack_args
from .runtime import ErrorValue

__all__ = ["environment", "task_env", "call_args", "split_returns", "task_error", "exit_error", "exit_status",
           "output_name", "actor_state", "restore_actor", "construct_actor", "install_terminate", "terminate_actor",
           "end_actor", "gpu_ids_for", "set_visible_gpus", "assigned_resources"]

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


@contextlib.contextmanager
def environment(env_vars: tuple[tuple[str, str], ...]):
    """Set a task's ``runtime_env`` env_vars while it runs, then put back
    what was there (process-wide: one task at a time on a worker's main
    thread; an actor's are set for its life instead, see ``task_env``)."""
    if not env_vars:
        yield
        return
    saved = {k: os.environ.get(k) for k, _ in env_vars}
    os.environ.update(env_vars)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def task_env(spec: TaskSpec, actor_env: tuple[tuple[str, str], ...] | None) -> tuple[tuple[str, str], ...]:
    """The env_vars a running task (and what it submits) sees: its own, or,
    for an actor's method, those of the actor's creation (an actor keeps its
    runtime_env for life; its callers' do not apply to it)."""
    if spec.actor_id is not None:
        return actor_env or ()
    return spec.env_vars


def call_args(spec: TaskSpec, values: list[Any]) -> tuple[list, dict]:
    """The call's ``(args, kwargs)`` from its decoded inputs, in dependency
    order; an input that holds an error raises it (the task fails with the
    same cause).

    numpy arrays among the arguments are read-only, as in Ray, which hands
    them to the task zero-copy: a large one comes from the object store
    (read-only shared memory), and a small one, sent inside the task's
    message, is made read-only too (``_ReadOnlyArgs``), so that a task
    behaves the same whatever the size of its input."""
    for v in values:
        if type(v) is ErrorValue:
            raise from_error_info(v.info, loads)
    return unpack_args(spec.args, values, _load_args)


def _readonly_frombuffer(*args: Any) -> Any:
    try:
        from numpy._core.numeric import _frombuffer  # numpy 2
    except ImportError:
        from numpy.core.numeric import _frombuffer
    arr = _frombuffer(*args)
    arr.flags.writeable = False
    return arr


class _ReadOnlyArgs(pickle.Unpickler):
    """Unpickles a task's arguments with numpy arrays read-only: protocol 5
    rebuilds a (non-object) array from its buffer with
    ``numpy.core.numeric._frombuffer``; this one marks the result
    read-only."""

    def find_class(self, module: str, name: str) -> Any:
        if name == "_frombuffer" and module in ("numpy._core.numeric", "numpy.core.numeric"):
            return _readonly_frombuffer
        return super().find_class(module, name)


def _load_args(data: bytes) -> Any:
    if b"_frombuffer" not in data:
        return loads(data)  # (no numpy array inside: the C fast path)
    return _ReadOnlyArgs(io.BytesIO(data)).load()


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
    if inspect.isgenerator(result):
        return _first_values(spec, result, n)
    try:
        values = list(result)
    except TypeError:
        values = None
    if values is None or len(values) != n:
        raise ValueError(
            f"task {spec.display_name()} has num_returns={n} but returned "
            f"{'a ' + type(result).__name__ if values is None else str(len(values)) + ' values'}"
        )
    return values


def _first_values(spec: TaskSpec, gen, n: int) -> list[Any]:
    """A generator's first ``n`` values as a task's ``n`` returns (Ray does
    not run it further).  If it raises after k values, the first k returns
    keep their values and the rest hold the error, as in Ray."""
    values: list[Any] = []
    try:
        for v in gen:
            values.append(v)
            if len(values) == n:
                break
    except Exception as e:  # noqa: BLE001 - the user's generator may raise anything
        info, _ = task_error(spec, e)
        return values + [ErrorValue(info)] * (n - len(values))
    if len(values) != n:
        raise ValueError(f"task {spec.display_name()} has num_returns={n} but returned {len(values)} values")
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
        # the user's exception cannot be pickled: a stand-in of its class
        # (or one carrying its repr) takes its place, as in Ray
        err = err.with_picklable_cause(dumps)
        data = dumps(err)
    # (the short text names the root cause, not a child's whole error text)
    root = e.cause if isinstance(e, TaskError) and e.cause is not None else e
    info = ErrorInfo(ErrorKind.TASK_ERROR, f"{type(root).__name__}: {root}", Payload(len(data), data), task_name=name)
    return info, _retryable(spec, e)


def output_name(task_name: str, actor: Any = None, actor_class: str = "") -> str:
    """The name in the ``(name pid=N)`` prefix of what a task prints, as in
    Ray: in an actor (``actor_class`` given), the actor's ``repr()`` if its
    class defines ``__repr__`` (Ray's way to tell actors apart in the log),
    else the class name (and the class name while the actor is being
    made: ``actor`` None); in a task, the function's name."""
    if actor_class:
        if actor is not None and type(actor).__repr__ is not object.__repr__:
            try:
                return repr(actor)
            except Exception:  # noqa: BLE001 - a broken __repr__ must not lose the output
                pass
        return actor_class
    return task_name.rsplit(".", 1)[-1] if task_name else "worker"


def exit_status(e: SystemExit) -> int:
    """The process exit status ``sys.exit(code)`` asks for: 0 for
    ``sys.exit()`` and ``sys.exit(0)``, the number given, 1 for anything else
    (``sys.exit("message")``)."""
    code = e.code
    if code is None:
        return 0
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    return 1


def exit_error(spec: TaskSpec, e: SystemExit, rt: Any) -> ErrorInfo | None:
    """What user code calling ``sys.exit()`` (``SystemExit``) leaves, as in
    Ray, where it exits the worker process: never a ``SystemExit`` raised
    again in the caller (which would end the driver silently).

    * Status 0 (``sys.exit()``) is an exit on purpose.  In an actor (a
      method or its constructor) it ends the actor for good, as
      ``exit_actor()`` does: no restart, whatever ``max_restarts`` says;
      this call and every later one fail with ``ActorDiedError`` (this
      blocks until the node stops the worker).  In a task it fails the task
      with ``WorkerCrashedError``, not retried; the worker lives on.
    * Any other status is the worker crashing, as if it called
      ``os._exit(status)``: returns ``None``, and the caller must end the
      worker as a crash (the real worker exits; the simulator's worker
      dies).  An actor is then restarted if ``max_restarts`` allows, and a
      task retried if ``max_retries`` does (Ray's doc programs crash
      actors this way on purpose).

    Raises:
        PenumbraError: the actor's node did not stop it in time.
    """
    if exit_status(e) != 0:
        return None
    aid = spec.actor_id or (spec.actor_creation.actor_id if spec.actor_creation else None)
    if aid is not None:
        end_actor(rt, aid, exiting=spec.task_id)
    name = spec.display_name()
    return ErrorInfo(ErrorKind.WORKER_CRASHED,
                     f"task {name} called sys.exit(0), which ends its worker: the task failed. "
                     f"To fail a task, raise an exception; to end an actor, call penumbra.actor.exit_actor()",
                     task_name=name)


# How long an actor that ends itself waits for its node to stop its worker
# before it gives up and says so (the node acts within milliseconds).
_EXIT_WAIT = 60.0
# An object no task ever makes: waiting on it is a wait that only the
# worker's own end (or the timeout) can finish, on either driver.
_NEVER = ObjectId(b"\x00" * 20)


def end_actor(rt, actor_id, exiting=None) -> None:
    """Ask the node to stop actor ``actor_id`` for good (no restart), and
    block until it stops this worker: nothing after this runs, and the
    call's result is the actor's death, as in Ray.  For ``exit_actor()``
    and for an actor method that calls ``sys.exit()``; ``exiting`` is the
    call doing so (the calls before it still return their results).

    Raises:
        PenumbraError: the node did not stop the worker in time.
    """
    rt.kill_actor(actor_id, True, exiting=exiting)
    try:
        rt.get_objects([_NEVER], _EXIT_WAIT)
    except GetTimeoutError:
        pass
    raise PenumbraError(f"the actor was not stopped within {_EXIT_WAIT:g} s of asking its node to end it; "
                        "is the node overloaded or its connection lost?")


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
