"""``@penumbra.remote`` classes: actors, their handles and methods, and
``get_actor`` (a handle to a named actor: ``ActorClass.remote`` looks one up
for ``get_if_exists``)."""

from __future__ import annotations

import inspect
import itertools
import threading
import weakref
from typing import Any

from ..core.ids import ActorId, actor_id_of, child_task_id
from ..core.specs import EMPTY, ActorSpec, FunctionDescriptor, TaskSpec
from ..core.tables import Get
from .args import pack_args
from .context import current_runtime, task_context
from .dag import ClassMethodNode, ClassNode
from .options import ACTOR_OPTIONS, METHOD_OPTIONS, actor_resources, merge_env, scheduling_for, validate
from .generators import refs_for, returns_mode
from .refs import ObjectRef
from .remote_function import _Exported, _put

__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "get_actor", "method"]

_seq_lock = threading.Lock()
_seqs: dict[tuple[int, ActorId], itertools.count] = {}
# the refs of actor calls made by this process, while they live: cancel
# refuses force=True for them (Ray's rule: an actor task is never killed)
_call_refs: "weakref.WeakSet[ObjectRef]" = weakref.WeakSet()


def is_actor_call(ref: ObjectRef) -> bool:
    """Is ``ref`` the result of an actor method call made in this process?"""
    return ref in _call_refs


def method(*args, num_returns: int | None = None, **other):
    """Decorate an actor method to set its options (``num_returns``), as
    ``@method(num_returns=2)``; a bare ``@method`` marks it with none.

    Raises:
        TypeError: an unknown option, or positional arguments other than
            the one method of a bare ``@method``.
    """
    opts = validate({"num_returns": num_returns, **other} if num_returns is not None else other,
                    METHOD_OPTIONS, "an actor method")

    def deco(fn):
        fn.__penumbra_method_options__ = opts
        return fn

    if args:
        if len(args) == 1 and callable(args[0]) and not opts:
            return deco(args[0])
        raise TypeError("@method takes options by keyword only, e.g. @method(num_returns=2), or none: @method")
    return deco


def _method_table(cls: type) -> tuple[tuple[str, int], ...]:
    out = []
    for name, member in inspect.getmembers(cls):
        # (__ray_shutdown__: its host runs it on a graceful end; see
        # core.actors.ActorHost._stop)
        if name.startswith("__") and name not in ("__call__", "__ray_shutdown__"):
            continue
        if not callable(member):
            continue
        opts = getattr(member, "__penumbra_method_options__", {})
        gen = inspect.isgeneratorfunction(member) or inspect.isasyncgenfunction(member)
        out.append((name, returns_mode(opts.get("num_returns"), gen)))
    return tuple(sorted(out))


def _is_async(cls: type) -> bool:
    return any(inspect.iscoroutinefunction(m) or inspect.isasyncgenfunction(m) for _, m in inspect.getmembers(cls))


class ActorClass:
    """A class whose instances run as actors: ``Cls.remote(...)``."""

    def __init__(self, cls: type, options: dict[str, Any], _exported: _Exported | None = None) -> None:
        self._cls = cls
        self._name = f"{cls.__module__}.{cls.__qualname__}"
        self._options = validate(options, ACTOR_OPTIONS, f"actor class {self._name}")
        self._exported = _exported or _Exported()
        self._methods = _method_table(cls)
        self._is_async = _is_async(cls)
        self.__doc__ = cls.__doc__
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__module__ = cls.__module__

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"Actors cannot be instantiated directly. Instead of '{self._cls.__name__}()', "
            f"use '{self._cls.__name__}.remote()'."
        )

    def bind(self, *args, **kwargs) -> ClassNode:
        """A lazy actor (Ray's DAG API): bind its methods, then ``.execute()``."""
        return ClassNode(self, args, kwargs)

    def options(self, **options) -> "ActorClass":
        return ActorClass(self._cls, {**self._options, **options}, self._exported)

    def remote(self, *args, **kwargs) -> "ActorHandle":
        o = self._options
        rt = current_runtime(auto_init=True)
        if o.get("get_if_exists") and o.get("name"):
            try:
                return get_actor(o["name"], o.get("namespace"))
            except ValueError:
                pass
        fd = self._exported.ensure(self._cls, self._name, rt)
        ctx = task_context()
        payload, deps, keep = pack_args(args, kwargs, _put)
        tid = child_task_id(ctx.task_id, next(ctx.submitted))
        aid = actor_id_of(tid)
        life, placement = actor_resources(o)
        strategy = None
        if o.get("scheduling_strategy") is not None or ctx.scheduling is not None:
            strategy, placement, (life,) = scheduling_for(o, placement, ctx.scheduling, (life,))
        max_conc = o.get("max_concurrency") or (1000 if self._is_async else 1)
        namespace = o.get("namespace") if o.get("namespace") is not None else rt.namespace
        aspec = ActorSpec(
            actor_id=aid, cls=fd, resources=life,
            max_restarts=o.get("max_restarts") or 0,
            max_task_retries=o.get("max_task_retries") or 0,
            max_concurrency=max_conc, is_async=self._is_async,
            name=o.get("name"), namespace=namespace,
            detached=o.get("lifetime") == "detached",
            replay=bool(o.get("replay")), checkpoint_interval=o.get("checkpoint_interval") or 0,
            methods=self._methods, scheduling=strategy,
        )
        spec = TaskSpec(
            task_id=tid, job_id=ctx.job_id, parent_task_id=ctx.task_id, function=fd,
            args=payload, dependencies=deps, num_returns=0, resources=placement,
            max_retries=0, actor_creation=aspec, name=f"{self._cls.__name__}.__init__", scheduling=strategy,
            env_vars=merge_env(ctx.env_vars, o.get("runtime_env")),
        )
        try:
            rt.create_actor(spec, timeout=60.0)
        except ValueError:
            if o.get("get_if_exists") and o.get("name"):
                return get_actor(o["name"], o.get("namespace"))
            raise
        del keep
        return ActorHandle(aid, self._cls.__name__, self._methods, self._is_async, fd, bool(o.get("replay")))

    def __repr__(self) -> str:
        return f"<penumbra actor class {self._name}>"

    def __reduce__(self):
        return (_rebuild_class, (self._cls, self._options, self._exported.current_descriptor()))


def _rebuild_class(cls, options, descriptor):
    return ActorClass(cls, options, _Exported(descriptor))


class ActorHandle:
    """A reference to an actor; pass it to tasks and other actors freely."""

    def __init__(self, actor_id: ActorId, class_name: str, methods: tuple[tuple[str, int], ...],
                 is_async: bool = False, cls: FunctionDescriptor | None = None, replay: bool = False) -> None:
        self._actor_id = ActorId(actor_id)
        self._class_name = class_name
        self._methods = dict(methods)
        self._is_async = is_async
        self._cls = cls or FunctionDescriptor(b"", class_name)
        # a replay=True actor's calls take the routed path from the first
        # (transports: no direct call; see Runtime.submit_actor_call)
        self._replay = replay

    def __getattr__(self, name: str) -> "ActorMethod":
        methods = self.__dict__.get("_methods")
        if methods is None or name.startswith("__"):
            raise AttributeError(name)
        if name not in methods:
            raise AttributeError(
                f"actor {self._class_name} has no method {name!r}; its methods are: {', '.join(sorted(methods))}"
            )
        return ActorMethod(self, name, methods[name])

    @property
    def actor_id(self) -> ActorId:
        return self._actor_id

    @property
    def __ray_terminate__(self) -> "ActorMethod":
        """Ray's graceful end of an actor, queued like a call: once the
        calls made before it ran, the actor runs its ``__ray_shutdown__``
        (if it has one) and exits for good (``penumbra.kill`` ends it at
        once, without cleanup)."""
        return ActorMethod(self, "__ray_terminate__", 1)

    def __reduce__(self):
        args = (bytes(self._actor_id), self._class_name, tuple(self._methods.items()), self._is_async, self._cls)
        # (the flag only when set: a handle pickles to the bytes it always did)
        return (ActorHandle, args + (True,) if self._replay else args)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id.hex()})"


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
    return ActorHandle(s.actor_id, s.cls.name.rsplit(".", 1)[-1], s.methods, s.is_async, s.cls, s.replay)


class ActorMethod:
    def __init__(self, handle: ActorHandle, name: str, num_returns: int, options: dict | None = None) -> None:
        self._handle = handle
        self._name = name
        self._num_returns = num_returns
        self._options = options or {}

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"Actor methods cannot be called directly. Instead of 'actor.{self._name}()', "
            f"try 'actor.{self._name}.remote()'."
        )

    def options(self, **options) -> "ActorMethod":
        opts = validate({**self._options, **options}, METHOD_OPTIONS, f"actor method {self._name}")
        n = opts.get("num_returns")
        return ActorMethod(self._handle, self._name, self._num_returns if n is None else returns_mode(n, False), opts)

    def bind(self, *args, **kwargs) -> ClassMethodNode:
        """A lazy call on this live actor (Ray's DAG API), made on every ``execute``."""
        return ClassMethodNode(self._handle, self._name, args, kwargs)

    def remote(self, *args, **kwargs):
        h = self._handle
        rt = current_runtime()
        ctx = task_context()
        payload, deps, keep = pack_args(args, kwargs, _put)
        n = self._num_returns
        key = (rt.key, h._actor_id)
        with _seq_lock:
            counter = _seqs.get(key)
            if counter is None:
                counter = _seqs[key] = itertools.count()
            tid = child_task_id(ctx.task_id, next(ctx.submitted))
            spec = TaskSpec(
                task_id=tid, job_id=ctx.job_id, parent_task_id=ctx.task_id,
                function=FunctionDescriptor(h._cls.function_id, f"{h._class_name}.{self._name}"),
                args=payload, dependencies=deps, num_returns=1 if n < 0 else n, resources=EMPTY, max_retries=0,
                actor_id=h._actor_id, caller_id=rt.client_id, sequence_no=next(counter), method=self._name,
                name=self._options.get("name") or "",
            )
            # submitted under the lock: calls reach the node in sequence order
            rt.submit_actor_call(spec, not h._replay and (rt.direct_async_calls or not h._is_async))
        if deps:
            rt.hold_args(spec, keep + [a for a in (*args, *kwargs.values()) if type(a) is ObjectRef])
        del keep
        refs = refs_for(spec, n)
        if type(refs) is ObjectRef:
            _call_refs.add(refs)
        elif type(refs) is list:
            _call_refs.update(refs)
        return refs


def reset_sequences() -> None:
    with _seq_lock:
        _seqs.clear()
