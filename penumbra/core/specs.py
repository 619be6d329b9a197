"""What a task or an actor asks for: resource sets, task specs, actor specs.

Resources are kept in fixed point (1/10,000 of a unit, as Ray does) so that
fractional requests such as ``num_cpus=0.1`` add and subtract exactly: ten
tasks of 0.1 CPU release exactly one CPU, never 0.9999999.  A ``ResourceSet``
is immutable; arithmetic returns a new set.

A ``TaskSpec`` is everything the system needs to run, retry and re-execute a
task.  Its arguments are an opaque payload (``args``: serialized by the API
layer, never looked into by the core) plus the list of top-level object
references the task depends on (``dependencies``): the scheduler must make
those local before the task may run.  References nested inside containers are
part of the payload and are *not* dependencies, exactly as in Ray.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping

import msgspec
from msgspec.structs import force_setattr as _force_setattr

from .ids import ActorId, ObjectId, TaskId, return_object_id

__all__ = [
    "UNIT",
    "ResourceSet",
    "FunctionDescriptor",
    "ActorSpec",
    "TaskSpec",
    "Payload",
    "Record",
]

UNIT = 10_000  # fixed-point units per resource unit


class ResourceSet:
    """An immutable multiset of named resources, in fixed point.

    ``ResourceSet.of(CPU=0.5, GPU=1)`` or ``ResourceSet.from_dict({...})``.
    Zero quantities are dropped, so equal sets compare equal.
    """

    __slots__ = ("_units", "_hash")

    def __init__(self, units: Mapping[str, int] | None = None):
        self._units: dict[str, int] = {k: v for k, v in (units or {}).items() if v}
        self._hash: int | None = None

    @classmethod
    def from_dict(cls, amounts: Mapping[str, float]) -> "ResourceSet":
        units: dict[str, int] = {}
        for name, amount in amounts.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"resource names must be non-empty strings, got {name!r}")
            try:
                value = float(amount)
            except (TypeError, ValueError):
                raise ValueError(
                    f"resource {name!r} must be a number, got {amount!r}"
                ) from None
            if value < 0 or value != value:
                raise ValueError(f"resource {name!r} must be >= 0, got {amount!r}")
            u = round(value * UNIT)
            if value > 0 and u == 0:
                raise ValueError(
                    f"resource {name!r}={amount!r} is below the smallest unit 1/{UNIT}"
                )
            units[name] = u
        return cls(units)

    @classmethod
    def of(cls, **amounts: float) -> "ResourceSet":
        return cls.from_dict(amounts)

    # -- reading ---------------------------------------------------------
    def units(self, name: str) -> int:
        return self._units.get(name, 0)

    def get(self, name: str) -> float:
        return self._units.get(name, 0) / UNIT

    def to_dict(self) -> dict[str, float]:
        return {k: v / UNIT for k, v in sorted(self._units.items())}

    def names(self) -> Iterator[str]:
        return iter(self._units)

    def is_empty(self) -> bool:
        return not self._units

    def is_subset_of(self, other: "ResourceSet") -> bool:
        """True if every quantity here fits within ``other``."""
        o = other._units
        for k, v in self._units.items():
            if o.get(k, 0) < v:
                return False
        return True

    def is_nonnegative(self) -> bool:
        return all(v >= 0 for v in self._units.values())

    # -- arithmetic --------------------------------------------------------
    # (on the scheduler's hot path: build the result directly, dropping the
    # zeros of the touched keys only, instead of re-filtering in __init__)
    @classmethod
    def _wrap(cls, d: dict[str, int]) -> "ResourceSet":
        r = object.__new__(cls)
        r._units = d
        r._hash = None
        return r

    def __add__(self, other: "ResourceSet") -> "ResourceSet":
        if not other._units:
            return self
        d = self._units.copy()
        for k, v in other._units.items():
            n = d.get(k, 0) + v
            if n:
                d[k] = n
            else:
                del d[k]
        return ResourceSet._wrap(d)

    def __sub__(self, other: "ResourceSet") -> "ResourceSet":
        if not other._units:
            return self
        d = self._units.copy()
        for k, v in other._units.items():
            n = d.get(k, 0) - v
            if n:
                d[k] = n
            elif k in d:
                del d[k]
        return ResourceSet._wrap(d)

    def scaled(self, factor: int) -> "ResourceSet":
        return ResourceSet({k: v * factor for k, v in self._units.items()})

    def only(self, names: Iterable[str]) -> "ResourceSet":
        keep = set(names)
        return ResourceSet({k: v for k, v in self._units.items() if k in keep})

    def min_with(self, other: "ResourceSet") -> "ResourceSet":
        o = other._units
        return ResourceSet({k: min(v, o.get(k, 0)) for k, v in self._units.items()})

    # -- identity ------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResourceSet) and self._units == other._units

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._units.items()))
        return self._hash

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v / UNIT:g}" for k, v in sorted(self._units.items()))
        return f"ResourceSet({inner})"

    def __reduce__(self):
        return (ResourceSet, (self._units,))


EMPTY = ResourceSet()


class Record(msgspec.Struct, frozen=True, gc=False, tag=True, array_like=True):
    """The base of the core's plain values (specs, GCS rows, ops): a frozen
    ``msgspec.Struct``, built, compared and hashed in C (a third of a frozen
    dataclass's cost to build here).  A changed copy is
    ``msgspec.structs.replace(record, field=value)``; positional arguments
    are allowed, in field order, as they were for the dataclasses.

    Not tracked by the garbage collector (``gc=False``, as the protocol's
    ``ProtocolStruct``, which says why and the rule that makes it safe): a
    record is a value and never part of a reference cycle.

    ``tag=True, array_like=True`` as ``ProtocolStruct`` says: the wire codec
    encodes a record as its class name and its field values."""


class FunctionDescriptor(Record):
    """Names a remote function or actor class.

    ``function_id`` is a content hash of the pickled function (computed by the
    API layer); ``name`` is for people (``module.qualname``).
    """

    function_id: bytes
    name: str

    def __repr__(self) -> str:
        return f"<{self.name}>"


class Payload(Record):
    """Opaque serialized bytes the core carries but never reads.

    ``size`` is what the transport and the cost model charge for it; ``data``
    is the serialized value (``None`` in modelled simulations, where only the
    size matters).
    """

    size: int
    data: object = None

    def __repr__(self) -> str:
        return f"Payload({self.size}B)"


class ActorSpec(Record):
    """How to create, place and restart an actor.

    ``resources`` are held for the actor's whole lifetime; ``placement``
    resources are what its creation task needs in order to be scheduled (Ray's
    rule: an actor without an explicit ``num_cpus`` needs 1 CPU to be placed
    and holds none while it lives).
    """

    actor_id: ActorId
    cls: FunctionDescriptor
    resources: ResourceSet = EMPTY
    max_restarts: int = 0
    max_task_retries: int = 0
    max_concurrency: int = 1
    is_async: bool = False
    name: str | None = None
    namespace: str = ""
    detached: bool = False  # outlives its driver (Ray's lifetime="detached")
    # Paper-style recovery: replay the methods executed since the last
    # checkpoint when the actor restarts (off by default, as in Ray).
    replay: bool = False
    checkpoint_interval: int = 0  # methods between checkpoints; 0 = never
    # (name, num_returns) of the class's methods, for building handles
    methods: tuple[tuple[str, int], ...] = ()
    # the creation's scheduling strategy (``placement.InGroup`` ...): the
    # actor's methods submit nested tasks into its placement group when the
    # strategy captures child tasks
    scheduling: object = None


class TaskSpec(Record):
    """Everything needed to run, retry and re-execute one task.

    ``args`` is opaque; ``dependencies`` are the top-level object refs among
    the arguments, in argument order.  For an actor method call, ``actor_id``
    is set and ``caller_id``/``sequence_no`` order it among the calls of one
    caller.  For an actor creation task, ``actor_creation`` is set.
    """

    task_id: TaskId
    job_id: int
    parent_task_id: TaskId
    function: FunctionDescriptor
    args: Payload = Payload(0)
    dependencies: tuple[ObjectId, ...] = ()
    num_returns: int = 1
    resources: ResourceSet = EMPTY
    max_retries: int = 3
    retry_exceptions: bool | tuple[str, ...] = False
    # actor method calls
    actor_id: ActorId | None = None
    caller_id: str = ""
    sequence_no: int = 0
    method: str = ""
    # actor creation
    actor_creation: ActorSpec | None = None
    name: str = ""
    # environment variables set while the task runs (for an actor creation:
    # for the actor's life), Ray's runtime_env={"env_vars": ...}; sorted pairs
    env_vars: tuple[tuple[str, str], ...] = ()
    # None (the default policy), "SPREAD", or a ``placement.InGroup`` /
    # ``placement.OnNode`` (see core/placement.py)
    scheduling: object = None
    # derived, never given: the ids of the task's returns, set by
    # ``__post_init__`` from ``task_id`` and ``num_returns`` (a value passed
    # in is replaced, so it always agrees with them)
    return_ids: tuple[ObjectId, ...] = ()

    def __post_init__(self) -> None:
        if self.num_returns < 0:
            raise ValueError(f"num_returns must be >= 0, got {self.num_returns}")
        _force_setattr(
            self,
            "return_ids",
            tuple([return_object_id(self.task_id, i) for i in range(1, self.num_returns + 1)]),
        )

    @property
    def is_actor_task(self) -> bool:
        return self.actor_id is not None

    @property
    def is_actor_creation(self) -> bool:
        return self.actor_creation is not None

    def display_name(self) -> str:
        return self.name or self.function.name

    def __repr__(self) -> str:
        extra = ""
        if self.actor_id is not None:
            extra = f" actor={self.actor_id.short()} {self.caller_id}#{self.sequence_no}"
        return f"TaskSpec({self.display_name()} {self.task_id.short()}{extra})"


from ._pickling import install as _install_pickling  # noqa: E402

_install_pickling(FunctionDescriptor, Payload, ActorSpec, TaskSpec)
