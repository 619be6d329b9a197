"""Packing a call's arguments into a task's payload, and unpacking them.

Top-level ``ObjectRef`` arguments become *dependencies*: the scheduler makes
them local before the task runs and the worker passes their values.  Refs
nested inside containers stay refs (Ray's semantics).  A large argument
passed by value (over ``INLINE_ARG_LIMIT`` serialized) is ``put`` first and
passed as a dependency, so it travels once through the object store instead
of inside every message.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import cloudpickle

from .._codepickle import dumps as _code_dumps, loads
from ..core.ids import ObjectId
from ..core.specs import Payload
from ..exceptions import SerializationError
from .refs import ObjectRef, mark_escaped

__all__ = ["INLINE_ARG_LIMIT", "pack_args", "unpack_args", "dumps", "loads", "function_id", "EMPTY_ARGS"]

INLINE_ARG_LIMIT = 100 * 1024
EMPTY_ARGS = Payload(0, None)


class _Dep:
    """Stands in the payload for the value of dependency ``i``."""

    __slots__ = ("i",)

    def __init__(self, i: int) -> None:
        self.i = i

    def __reduce__(self):
        return (_Dep, (self.i,))


def dumps(value: Any) -> bytes:
    # (keeping functions' file names: a task's traceback names the user's file)
    return _code_dumps(value, protocol=5)


def function_id(blob: bytes) -> bytes:
    return hashlib.blake2b(blob, digest_size=16).digest()


def _describe_failure(what: str, value: Any, err: Exception) -> SerializationError:
    inner = _find_unpicklable(value)
    detail = f"; the culprit inside it is {inner}" if inner else ""
    return SerializationError(
        f"{what} (a {type(value).__module__}.{type(value).__qualname__}) could not be serialized: "
        f"{type(err).__name__}: {err}{detail}. Pass something picklable (or create the object "
        f"inside the task instead of passing it in)."
    )


def _find_unpicklable(value: Any, depth: int = 0, path: str = "") -> str | None:
    """Name the innermost member of ``value`` that fails to pickle."""
    if depth > 4:
        return None
    items: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        items = [(f"{path}[{k!r}]", v) for k, v in value.items()]
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        items = [(f"{path}.{k}", v) for k, v in vars(value).items()]
    for where, v in items:
        try:
            cloudpickle.dumps(v, protocol=5)
        except Exception:
            deeper = _find_unpicklable(v, depth + 1, where)
            return deeper or f"{where or 'it'} (a {type(v).__qualname__})"
    return None


def pack_args(args: tuple, kwargs: dict, put: Callable[[Any], ObjectRef]) -> tuple[Payload, tuple[ObjectId, ...], list[ObjectRef]]:
    """(payload, dependencies, refs to keep alive until submitted)."""
    if not args and not kwargs:
        return EMPTY_ARGS, (), []
    deps: list[ObjectId] = []
    keep: list[ObjectRef] = []
    new_args = list(args)
    for i, a in enumerate(new_args):
        if type(a) is ObjectRef:
            new_args[i] = _Dep(len(deps))
            deps.append(a._id)
    new_kwargs = dict(kwargs)
    for k, a in new_kwargs.items():
        if type(a) is ObjectRef:
            new_kwargs[k] = _Dep(len(deps))
            deps.append(a._id)
    try:
        data = dumps((new_args, new_kwargs))
    except Exception as e:
        for i, a in enumerate(new_args):
            try:
                dumps(a)
            except Exception as e2:
                raise _describe_failure(f"argument {i}", a, e2) from None
        for k, a in new_kwargs.items():
            try:
                dumps(a)
            except Exception as e2:
                raise _describe_failure(f"keyword argument {k!r}", a, e2) from None
        raise SerializationError(f"the arguments could not be serialized: {type(e).__name__}: {e}") from None
    if len(data) > INLINE_ARG_LIMIT:
        # put the big ones in the object store and pass them by reference
        for i, a in enumerate(new_args):
            if not isinstance(a, _Dep) and _big(a):
                ref = put(a)
                keep.append(ref)
                new_args[i] = _Dep(len(deps))
                deps.append(ref._id)
        for k, a in list(new_kwargs.items()):
            if not isinstance(a, _Dep) and _big(a):
                ref = put(a)
                keep.append(ref)
                new_kwargs[k] = _Dep(len(deps))
                deps.append(ref._id)
        data = dumps((new_args, new_kwargs))
    for d in deps:
        mark_escaped(d)  # the task may keep the ref (an actor, a return value)
    return Payload(len(data), data), tuple(deps), keep


def _big(value: Any) -> bool:
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes > INLINE_ARG_LIMIT // 2
    try:
        return len(dumps(value)) > INLINE_ARG_LIMIT // 2
    except Exception:
        return False


def unpack_args(payload: Payload, dep_values: list[Any], load: Callable[[bytes], Any] = None) -> tuple[list, dict]:
    """The call's ``(args, kwargs)`` with dependency values substituted
    (``load``: how to unpickle the payload, ``loads`` by default)."""
    if payload.size == 0 or payload.data is None:
        return [], {}
    args, kwargs = (load or loads)(payload.data)
    if dep_values:
        for i, a in enumerate(args):
            if type(a) is _Dep:
                args[i] = dep_values[a.i]
        for k, a in kwargs.items():
            if type(a) is _Dep:
                kwargs[k] = dep_values[a.i]
    return args, kwargs
