"""Exceptions raised by penumbra, with Ray's names as aliases.

The one to know is ``TaskError`` (Ray: ``RayTaskError``): when a task raises,
``get`` raises an exception that is *both* a ``TaskError`` and an instance of
the user's own exception class, carrying the remote traceback::

    try:
        penumbra.get(f.remote())
    except ValueError as e:          # the user's class still matches
        print(e)                     # includes the remote traceback

A task that depends on a failed task fails with the same cause.
"""

from __future__ import annotations

import os
import socket
import traceback as _traceback
from typing import Any

__all__ = [
    "PenumbraError",
    "TaskError",
    "WorkerCrashedError",
    "NodeDiedError",
    "ActorError",
    "ActorDiedError",
    "ActorUnavailableError",
    "ObjectLostError",
    "ObjectReconstructionFailedError",
    "GetTimeoutError",
    "TaskCancelledError",
    "TaskUnschedulableError",
    "ObjectStoreFullError",
    "SerializationError",
    "RuntimeEnvError",
    "PenumbraSystemError",
    "ClusterConnectionLostError",
    "UnserializableException",
    "from_error_info",
    # Ray's names
    "RayError",
    "RayTaskError",
    "RayActorError",
    "RaySystemError",
]


class PenumbraError(Exception):
    """Base class of every penumbra error (Ray: ``RayError``)."""


class TaskError(PenumbraError):
    """A task raised.  ``cause`` is the original exception; ``traceback_str``
    is the remote traceback as text.

    ``cause`` is never ``None``.  When the exception itself cannot be pickled
    (it holds a lock, a socket ...), it is replaced by a stand-in, as Ray
    keeps a readable one: an instance of the *same class* built without its
    ``__init__``, whose ``args`` are the original's message and whose
    attributes are those of the original that could be pickled (so ``except
    TheClass`` still works), or, if the class cannot be pickled or rebuilt
    either, an ``UnserializableException`` carrying the original's repr.

    ``get`` raises ``as_instanceof_cause()`` of this: an object of a class
    derived from both ``TaskError`` and ``type(cause)``.

    Nested failures (a task that calls ``get`` on a failed child and does
    not catch the error, or whose argument is a failed task's result) keep
    the *root* exception as ``cause``, so ``except ValueError`` still
    catches it however deep it was raised; the text names every task on the
    way, outermost first, each with its own traceback (as Ray's
    ``RayTaskError`` does).
    """

    def __init__(self, function_name: str = "", traceback_str: str = "", cause: BaseException | None = None,
                 pid: int | None = None, host: str | None = None, cause_repr: str = "") -> None:
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        self.host = host
        self.cause_repr = cause_repr or (repr(cause) if cause is not None else "")
        # (not super(): in a TaskError(X), that is X's __init__, which may
        # want other arguments -- JSONDecodeError, UnicodeDecodeError)
        BaseException.__init__(self, self._message())

    @classmethod
    def from_exception(cls, function_name: str, exc: BaseException) -> "TaskError":
        """The error task ``function_name`` leaves when it raised ``exc``.

        If ``exc`` is itself a task's error (the task did not catch a failed
        child's error), the root cause carries on and the child's text
        follows this task's traceback.
        """
        tb = _format_task_traceback(exc)
        if isinstance(exc, TaskError):
            return cls(function_name, tb, exc.cause, os.getpid(), socket.gethostname(), exc.cause_repr)
        return cls(function_name, tb, exc, os.getpid(), socket.gethostname())

    def _message(self) -> str:
        where = f" (pid={self.pid}, host={self.host})" if self.pid else ""
        cause = self.cause
        cause_name = ("TaskError" if cause is None else cause.type_name if type(cause) is UnserializableException
                      else type(cause).__name__)
        head = f"{cause_name}: task {self.function_name}{where} raised:"
        return f"{head}\n{self.traceback_str.rstrip()}" if self.traceback_str else f"{head} {self.cause_repr}"

    def __str__(self) -> str:
        return self._message()

    def _state(self) -> tuple:
        return (self.function_name, self.traceback_str, self.cause, self.pid, self.host, self.cause_repr)

    def _pickled_state(self) -> tuple:
        """``_state()`` as it pickles: a stand-in cause is rebuilt without
        calling its class's ``__init__``."""
        state = TaskError._state(self)
        cause = state[2]
        if cause is not None and getattr(cause, "__dict__", {}).get(_STAND_IN):
            state = state[:2] + (_StandInPickle(cause),) + state[3:]
        return state

    def with_picklable_cause(self, dumps) -> "TaskError":
        """This error with a cause that ``dumps`` can pickle: the cause
        itself, or its stand-in (see the class docstring)."""
        try:
            dumps(self.cause)
            return self
        except Exception:
            pass
        return TaskError(self.function_name, self.traceback_str, _stand_in(self.cause, dumps), self.pid, self.host,
                         self.cause_repr)

    def __reduce__(self):
        return (TaskError, self._pickled_state())

    def as_instanceof_cause(self) -> "TaskError":
        """An exception that is a ``TaskError`` and an instance of the cause's
        class, so ``except UserError`` still catches it.

        A class that cannot take part (it cannot be subclassed, its
        ``__init_subclass__`` or ``__new__`` refuses, its layout clashes)
        gives ``self``: a plain ``TaskError`` whose ``cause`` is readable.
        """
        cause = self.cause
        if cause is None:
            return self
        cause_cls = type(cause)
        if isinstance(cause, TaskError):
            return cause
        if isinstance(self, cause_cls):
            return self  # already one: a TaskError(X), or X is a base of TaskError (Exception)
        try:
            cls = _dual_classes.get(cause_cls)
            if cls is None:
                cls = _make_dual(cause_cls)
                _dual_classes[cause_cls] = cls
            inst = cls.__new__(cls)
            TaskError.__init__(inst, *self._state())
            inst.args = getattr(cause, "args", ())
        except Exception:
            return self
        return inst


_dual_classes: dict[type, type] = {}

# Marks a stand-in cause (in its ``__dict__``): it pickles as its class, its
# args and its attributes, and is rebuilt without its class's ``__init__``.
_STAND_IN = "_penumbra_stand_in"


class UnserializableException(PenumbraError):
    """Stands for a task's exception that could not be pickled, nor rebuilt
    as an instance of its own class (its class cannot be pickled either):
    ``TaskError.cause`` is then this, carrying the original's repr.

    Attributes:
        type_name: the original exception's class name.
        original_repr: ``repr()`` of the original exception.
    """

    def __init__(self, type_name: str = "", original_repr: str = "") -> None:
        self.type_name = type_name
        self.original_repr = original_repr
        super().__init__(f"{original_repr} (a {type_name} that could not be pickled; this stands for it)")

    def __reduce__(self):
        return (UnserializableException, (self.type_name, self.original_repr))


class _StandInPickle:
    """How a stand-in cause pickles: its class, args and attributes."""

    __slots__ = ("cause",)

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause

    def __reduce__(self):
        c = self.cause
        return (_rebuild_stand_in, (type(c), tuple(c.args), dict(c.__dict__)))


def _rebuild_stand_in(cls: type, args: tuple, state: dict) -> BaseException:
    inst = cls.__new__(cls)
    inst.args = args
    inst.__dict__.update(state)
    return inst


def _stand_in(cause: BaseException, dumps) -> BaseException:
    """A picklable stand-in for ``cause``, which cannot be pickled: an
    instance of its class, made by ``cls.__new__`` (no ``__init__``), with
    ``args`` set to the message and the attributes that pickle; or, when
    the class cannot be pickled or rebuilt, an ``UnserializableException``."""
    cls = type(cause)
    try:
        message = str(cause)
    except Exception:
        message = ""
    try:
        inst = cls.__new__(cls)
        inst.args = (message,) if message else ()
        state = {}
        for k, v in getattr(cause, "__dict__", {}).items():
            try:
                dumps(v)
            except Exception:
                continue
            state[k] = v
        inst.__dict__.update(state)
        inst.__dict__[_STAND_IN] = True
        from ._codepickle import loads  # (a round trip: the class must rebuild where it is read)

        loads(dumps(_StandInPickle(inst)))
        return inst
    except Exception:
        pass
    try:
        text = repr(cause)
    except Exception:
        text = f"<{cls.__name__} object>"
    return UnserializableException(cls.__name__, text)


def _make_dual(cause_cls: type) -> type:
    def __getattr__(self, name: str) -> Any:
        cause = self.__dict__.get("cause")
        if cause is None:
            raise AttributeError(name)
        return getattr(cause, name)

    def __str__(self) -> str:
        return TaskError._message(self)

    def __reduce__(self):
        # rebuilt as the same dual class in any process (``except ValueError``
        # still catches an error passed around as a value)
        return (_rebuild_dual, TaskError._pickled_state(self))

    name = f"TaskError({cause_cls.__name__})"
    return type(name, (TaskError, cause_cls), {
        "__getattr__": __getattr__, "__str__": __str__, "__reduce__": __reduce__,
        "__init__": lambda self, *a, **k: None, "__module__": cause_cls.__module__,
    })


def _rebuild_dual(*state: Any) -> TaskError:
    return TaskError(*state).as_instanceof_cause()


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _format_task_traceback(exc: BaseException) -> str:
    """``exc``'s traceback as text, for a task's error.

    penumbra's own frames before the user's (the worker's loop that called
    the function) are left out, as Ray leaves out its worker's, and so are
    those after them when ``exc`` is a child task's error (the ``get`` that
    raised it): what remains starts in the user's code.  A traceback
    entirely inside penumbra is kept whole.  When ``exc`` is a child task's
    error, its own text (naming that task, with its traceback) replaces the
    usual last line.
    """
    te = _traceback.TracebackException(type(exc), exc, exc.__traceback__)
    frames = list(te.stack)
    users = [not f.filename.startswith(_PACKAGE_DIR) for f in frames]
    if any(users):
        first = users.index(True)
        end = len(users) - users[::-1].index(True) if isinstance(exc, TaskError) else len(users)
        te.stack = _traceback.StackSummary.from_list(frames[first:end])
    lines = list(te.format())
    if isinstance(exc, TaskError):
        tail = len(list(te.format_exception_only()))
        lines[len(lines) - tail:] = [exc._message() + "\n"]
    return "".join(lines)


class WorkerCrashedError(PenumbraError):
    """The worker running the task died (killed, crashed, out of memory) and
    the task has no retries left (``max_retries``)."""


class NodeDiedError(PenumbraError):
    """The node running the task died and the task has no retries left."""


class ActorError(PenumbraError):
    """The actor is dead or unreachable (Ray: ``RayActorError``)."""

    def __init__(self, message: str = "", actor_id: str | None = None) -> None:
        self.actor_id = actor_id
        super().__init__(message)


class ActorDiedError(ActorError):
    """The actor died (its process or node failed, it was killed, its
    constructor raised, or its restarts ran out)."""


class ActorUnavailableError(ActorError):
    """The actor is temporarily unreachable (restarting)."""


class ObjectLostError(PenumbraError):
    """An object's every copy was lost and it cannot be rebuilt (it was made
    by ``put``, or its lineage's retry budget is spent)."""


class ObjectReconstructionFailedError(ObjectLostError):
    """Rebuilding a lost object from its lineage failed."""


class GetTimeoutError(PenumbraError, TimeoutError):
    """``get`` timed out before the objects were ready."""


class TaskCancelledError(PenumbraError):
    """The task was cancelled with ``penumbra.cancel``."""


class TaskUnschedulableError(PenumbraError):
    """A hard scheduling constraint no node can meet: node affinity
    (``soft=False``) to a dead node, or a removed placement group."""


class ObjectStoreFullError(PenumbraError):
    """The object store is full of pinned objects and cannot take this one."""


class SerializationError(PenumbraError, TypeError):
    """A value could not be serialized (or deserialized)."""


class RuntimeEnvError(PenumbraError):
    """The function or class could not be loaded in the worker."""


class PenumbraSystemError(PenumbraError):
    """penumbra itself failed, not the user's code (Ray: ``RaySystemError``,
    which Ray raises when its raylet is killed)."""


class ClusterConnectionLostError(PenumbraSystemError, ConnectionError):
    """This process lost its connection to the cluster: the node daemon it
    talks to was killed or exited (or, in a worker, its node is gone).

    Every call that needs the cluster (``get``, ``wait``, ``put``,
    ``.remote()``, ``nodes`` ...) then raises it at once, and goes on
    raising it until ``shutdown()``; ``init()`` after that starts or joins a
    cluster again.  It is also a ``ConnectionError``, so ``except
    ConnectionError`` catches it.

    Attributes:
        address: the address of the cluster that was lost.
        detail: how the connection ended, as the transport saw it.
    """

    def __init__(self, address: str = "", detail: str = "") -> None:
        self.address = address
        self.detail = detail
        how = f"the connection was lost ({detail})" if detail else "the connection was lost"
        super().__init__(
            f"the penumbra cluster at {address or '?'} is unreachable: {how}. "
            f"Call penumbra.shutdown() and then penumbra.init() to start or join a cluster again."
        )

    def __reduce__(self):
        return (type(self), (self.address, self.detail))


# Ray's names
RayError = PenumbraError
RayTaskError = TaskError
RayActorError = ActorError
RaySystemError = PenumbraSystemError


def from_error_info(info, deserialize=None) -> BaseException:
    """The exception to raise for an ``ErrorInfo`` stored in an object.

    ``deserialize`` turns ``info.payload.data`` back into a ``TaskError``
    (the transport's serializer); without it, or if that fails, the message
    is used.
    """
    from .core.records import ErrorKind

    kind = info.kind
    if kind is ErrorKind.TASK_ERROR:
        err = None
        if info.payload is not None and info.payload.data is not None and deserialize is not None:
            try:
                err = deserialize(info.payload.data)
            except Exception as e:  # the user's exception class is not importable here
                text = f"{info.message} (could not deserialize it here: {e})"
                err = TaskError(info.task_name, info.message, UnserializableException(_type_name(info.message), text),
                                cause_repr=text)
        if isinstance(err, TaskError):
            return err.as_instanceof_cause()
        if isinstance(err, BaseException):
            return err
        return TaskError(info.task_name, info.message,
                         UnserializableException(_type_name(info.message), info.message), cause_repr=info.message)
    cls = {
        ErrorKind.WORKER_CRASHED: WorkerCrashedError,
        ErrorKind.NODE_DIED: NodeDiedError,
        ErrorKind.ACTOR_DIED: ActorDiedError,
        ErrorKind.ACTOR_UNAVAILABLE: ActorUnavailableError,
        ErrorKind.OBJECT_LOST: ObjectLostError,
        ErrorKind.TASK_CANCELLED: TaskCancelledError,
        ErrorKind.TASK_UNSCHEDULABLE: TaskUnschedulableError,
        ErrorKind.OBJECT_STORE_FULL: ObjectStoreFullError,
        ErrorKind.RUNTIME_ENV: RuntimeEnvError,
    }.get(kind, PenumbraError)
    return cls(info.message)


def _type_name(message: str) -> str:
    """The class name an ``ErrorInfo.message`` (``"Type: text"``) starts with."""
    head = message.split(":", 1)[0].strip()
    return head if head.isidentifier() else "Exception"
