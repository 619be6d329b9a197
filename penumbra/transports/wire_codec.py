"""The wire codec: the protocol's messages as msgpack, user values as pickles.

Why
---
Every message between penumbra processes used to be pickled: about 4 us
to pickle a small message and as much to unpickle it, and unpickling runs
whatever code the bytes name.  The protocol's messages are frozen
``msgspec.Struct``s, so msgspec encodes and decodes them in C, typed: a
frame decodes into exactly the classes it was made of, checked against
their field types, and decoding bytes builds only those classes (see
"Security" for the few values that still travel as pickles).

What is on the wire
-------------------
A frame body (see :mod:`~penumbra.transports.wire_channel`) is one format
byte and a msgpack array of messages:

* :data:`TYPED` (``0x01``): every item is a *wire class* encoded by msgspec
  as a tagged array, ``[class name, field values in declaration order]``;
* :data:`MIXED` (``0x02``): the same, and some items are a msgpack ext of
  type :data:`EXT_PICKLE` holding a pickled message (a message whose class
  is not a wire class: test values, a user's Struct subclass ...).

Any other first byte is refused.  The wire classes are the tagged,
``array_like`` ``msgspec.Struct``s of the core and of the transport: the
core's events, commands and messages (``msg_base.ProtocolStruct``), its
records and specs (``specs.Record``), the transport's own messages
(``protocol._Wire``) and ``wire.Ping``/``Pong``.  The codec imports every
``msg_*`` module of the core first, so a message module added to the core
is included without an edit here, and every process has the same list;
messages a machine defines beside itself (``gcs.GcsSync``) are wire classes
in the processes that load that machine (the daemons, which import the
whole core, and the only processes that send or receive them).  A Struct
that is not a wire class (defined in a test, or a subclass made later)
travels pickled, in a ``MIXED`` frame, even inside a message that is one.
Both peers must agree on the classes of the schema (the ``msg_*`` modules,
specs, records, ops, the transport's) and on each one's fields:
:func:`schema_fingerprint` goes into the hello, and a peer whose
fingerprint differs is refused there, with a message that says so.

Field types
-----------
Ids (``TaskId``, ``ObjectId``, ``ActorId``) travel as msgpack bin and are
checked for their length when decoded; a ``ResourceSet`` as a map of
resource name to fixed-point units; enums by value.  A field annotated with
a wire class that has subclasses (``Deliver.msg: Message``,
``GcsWrite.op: Op``, ``ClientGcsRequest.request: Op | Query``) decodes as
the tagged union of that class and its subclasses (the codec rewrites such
an annotation once, when it is built, to that union).

The fallback
------------
Some fields cannot be typed exactly: they are annotated ``Any``, ``object``,
``Hashable`` or a bare ``tuple`` because they hold anything (a GCS reply's
result, a table key, a ``Payload``'s data, a scheduling strategy, an
attachment's value).  In those places a value whose type msgpack carries
exactly (``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``) is
encoded as itself, and anything else (a tuple would come back a list, a
record would come back an array) is pickled into an ext of type
:data:`EXT_PICKLE`; the elements of a bare ``tuple`` follow the same rule
one by one.  :func:`fallback_fields` lists these fields.

Security
--------
Decoding builds only wire classes, checked against their field types (and
running their ``__post_init__`` checks), from msgpack scalars; every error
(bad msgpack, an unknown class name, a wrong field type, a truncated body,
an id of the wrong length, nesting too deep) raises
:class:`WireDecodeError`, which the channel turns into a
:class:`ProtocolError` that closes that connection.  No code chosen by the
sender runs, except where a pickle is allowed, and only from a peer that
passed the handshake (it proved it knows the cluster token; such a peer can
submit tasks, which run its code anyway): the :data:`EXT_PICKLE` values of
the fallback fields above (in any frame), and the pickled messages of a
``MIXED`` frame.  A frame of control messages whose fields hold scalars,
ids and records (every message on a task's path) unpickles nothing.  User
values (task arguments, results, objects) were never part of the protocol:
they are serialized by :mod:`~penumbra.transports.serialization`
(cloudpickle, pickle protocol 5 with out-of-band buffers) into ``bytes``,
which the codec carries as bin, and unpickled by the API where they are used.
"""

from __future__ import annotations

import enum
import gc
import logging
import pickle
import re
import struct
import sys
import types
import typing
from hashlib import blake2b
from typing import Any, Callable, Hashable, Union

import msgspec
from msgspec.msgpack import Ext
from msgspec.structs import force_setattr

from ..core import messages as _messages  # noqa: F401  (every core message class, before the registry)
from ..core.ids import ActorId, ObjectId, TaskId
from ..core.specs import ResourceSet
from . import protocol as _protocol  # noqa: F401  (the transport's messages)

__all__ = ["TYPED", "MIXED", "EXT_PICKLE", "WireCodec", "WireDecodeError", "codec", "fallback_fields",
           "schema_fingerprint", "wire_classes"]

logger = logging.getLogger("penumbra.transports.wire")

#: Format byte of a frame whose items are all wire classes.
TYPED = 0x01
#: Format byte of a frame with pickled items among them.
MIXED = 0x02
#: msgpack ext type of a pickled value (protocol 5, in-band).
EXT_PICKLE = 1

_PICKLE_PROTOCOL = 5
_TYPED_HEAD = bytes([0, 0, 0, 0, TYPED])
_MIXED_HEAD = bytes([0, 0, 0, 0, MIXED])
_pack_length = struct.Struct(">I").pack_into
#: Where wire classes are defined: the core's ``msg_*`` modules (found on
#: disk, so a new one is included) and these, imported by the codec in
#: every process: together, the *schema* both peers must agree on.
_CORE_PREFIX = "penumbra.core."
_MSG_PREFIX = "penumbra.core.msg_"
_SCHEMA_MODULES = ("penumbra.core.specs", "penumbra.core.records", "penumbra.core.tables_ops",
                   "penumbra.transports.protocol", "penumbra.transports.wire")
_ID_SIZES = {TaskId: 16, ActorId: 16, ObjectId: 20}
#: Types msgpack carries exactly in an untyped place (``type(v) in``: an
#: int subclass such as an IntEnum is not one of them, and is pickled).
_EXACT = frozenset({type(None), bool, int, float, str, bytes})
#: Carried as msgpack bin and read back as ``bytes`` (equal, not the same type).
_AS_BYTES = frozenset({bytearray, memoryview})
_EMPTY: tuple = ()


class WireDecodeError(ValueError):
    """A frame body that is not a valid encoding of the protocol's messages."""


class _Untyped(Exception):
    """A message holds a Struct that is not a wire class where a union of
    wire classes is expected (a test's subclass of ``Message`` inside a
    ``Deliver``): the whole message travels pickled instead."""


# ===========================================================================
# The wire classes


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_subclasses(sub))
    return out


def _is_wire_class(cls: type) -> bool:
    cfg = cls.__struct_config__
    module = cls.__module__
    return (cfg.tag is not None and cfg.array_like and "<locals>" not in cls.__qualname__
            and (module in _SCHEMA_MODULES or module.startswith(_CORE_PREFIX)))


def _in_schema(cls: type) -> bool:
    module = cls.__module__
    return module in _SCHEMA_MODULES or module.startswith(_MSG_PREFIX)


def _import_wire_modules() -> None:
    """Import every module of the schema, so that every process has it
    whatever else it imported.  (Not the whole core: a driver would import
    ~25 modules only daemons use, 28 ms at ``init``.  The few messages a
    machine defines beside itself, such as ``gcs.GcsSync``, are wire classes
    where that machine's module is loaded: in the daemons, which import the
    whole core and are the only ones to send or receive them.)"""
    import importlib
    import pkgutil

    core = importlib.import_module("penumbra.core")
    for info in pkgutil.iter_modules(core.__path__):
        if info.name.startswith("msg_"):
            importlib.import_module(f"penumbra.core.{info.name}")
    for name in _SCHEMA_MODULES:
        importlib.import_module(name)  # (``wire`` imports the channel, which uses this module: not at import)


def _find_wire_classes() -> list[type]:
    _import_wire_modules()
    seen: dict[type, None] = {}
    for cls in _subclasses(msgspec.Struct):
        if _is_wire_class(cls):
            seen[cls] = None
    by_tag: dict[Any, list[type]] = {}
    for cls in seen:
        by_tag.setdefault(cls.__struct_config__.tag, []).append(cls)
    out = []
    for tag, classes in by_tag.items():
        if len(classes) > 1:
            # One name, several classes: the schema's own class keeps the
            # tag (the schema, and so the hello's fingerprint, must not
            # depend on which other core modules a process happened to
            # import: a daemon and a driver import different ones); the
            # others travel pickled.  Two schema classes with one name
            # cannot be told apart: both travel pickled.  (Logged.)
            schema = [c for c in classes if _in_schema(c)]
            keep = schema[0] if len(schema) == 1 else None
            logger.warning("wire classes %s share the tag %r; %s",
                           ", ".join(f"{c.__module__}.{c.__qualname__}" for c in classes), tag,
                           f"{keep.__module__}.{keep.__qualname__} keeps it, the others are sent pickled"
                           if keep is not None else "they are sent pickled")
            if keep is not None:
                out.append(keep)
            continue
        out.append(classes[0])
    out.sort(key=lambda c: (c.__module__, c.__qualname__))
    return out


# ===========================================================================
# Types: resolving annotations, and what each one needs before encoding

_ANY_LIKE = (Any, object, Hashable)


_HINTS: dict[type, dict[str, Any]] = {}
_EVALUATED: dict[tuple[str, str], Any] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The field types of Struct ``cls``, evaluated (cached: ``typing.
    get_type_hints`` compiles every annotation string afresh, and the ~180
    wire classes share most of theirs)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = {}
        for owner in reversed(cls.__mro__):
            anns = owner.__dict__.get("__annotations__")
            if not anns:
                continue
            module = sys.modules[owner.__module__]
            for name, ann in anns.items():
                if isinstance(ann, str):
                    key = (owner.__module__, ann)
                    if key not in _EVALUATED:
                        _EVALUATED[key] = eval(ann, vars(module), dict(vars(owner)))  # noqa: S307 - our own annotations
                    ann = _EVALUATED[key]
                hints[name] = ann
        hints = {name: hints[name] for name in cls.__struct_fields__}
        _HINTS[cls] = hints
    return hints


class _Planner:
    """Resolves the field types of the wire classes and builds, per class,
    the *fixer* that makes a message encodable exactly (or None when the
    message encodes as it is, the common case)."""

    def __init__(self, classes: list[type]) -> None:
        self.classes = classes
        self.registered = set(classes)
        self.subs: dict[type, tuple[type, ...]] = {}
        for cls in classes:
            family = tuple(c for c in [cls, *_subclasses(cls)] if c in self.registered)
            self.subs[cls] = family
        self.fixers: dict[type, Callable[[Any], Any] | None] = {}
        self.fallbacks: list[str] = []  # "Class.field: annotation"
        self._busy: set[type] = set()
        self._where = ""
        self.planned: set[type] = set()

    # -- annotations --------------------------------------------------------

    def widen(self, tp: Any) -> Any:
        """``tp`` with each wire class that has subclasses replaced by the
        union of it and them (``Message`` -> every message class)."""
        if tp is object:
            return Any  # (the same to msgspec, but with no dec_hook call per value)
        if isinstance(tp, type) and tp in self.subs and len(self.subs[tp]) > 1:
            return Union[self.subs[tp]]  # type: ignore[valid-type]
        args = typing.get_args(tp)
        if not args:
            return tp
        new = tuple(self.widen(a) for a in args)
        if new == args:
            return tp
        origin = typing.get_origin(tp)
        if origin is Union or origin is types.UnionType:
            return Union[new]  # type: ignore[valid-type]
        return origin[new]

    def rewrite_annotations(self) -> None:
        """Put each field's evaluated type in its class's annotations, with
        the polymorphic ones widened (on the class that declares each).

        Evaluated, so that msgspec does not compile every annotation string
        again when it builds the decoder (half of the codec's build time);
        the same types, so nothing else sees a difference but the widening.
        """
        for cls in self.classes:
            hints = _hints(cls)
            for name in cls.__struct_fields__:
                wide = self.widen(hints[name])
                hints[name] = wide
                for owner in cls.__mro__:
                    anns = owner.__dict__.get("__annotations__", {})
                    if name in anns:
                        if anns[name] is not wide:
                            anns[name] = wide
                        break

    # -- fixers -------------------------------------------------------------

    def plan(self, tp: Any) -> Callable[[Any], Any] | None:
        """The fixer for a value annotated ``tp`` (None: encodes as it is)."""
        if tp in _ANY_LIKE:
            self.fallbacks.append(f"{self._where}: {_show(tp)}")
            return _fix_any
        if tp is tuple or tp is list:
            self.fallbacks.append(f"{self._where}: {_show(tp)} (its items)")
            return _fix_any_items
        if isinstance(tp, type):
            if issubclass(tp, msgspec.Struct):
                return self.struct_fixer(tp)
            return None  # scalars, ids, ResourceSet, enums: exact
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin is Union or origin is types.UnionType:
            plans = {a: self.plan(a) for a in args}
            if all(p is None for p in plans.values()):
                return None
            by_type = {a: p for a, p in plans.items() if isinstance(a, type)}
            others = [p for a, p in plans.items() if not isinstance(a, type) and p is not None]
            if len(others) > 1:
                raise TypeError(f"cannot plan {tp!r}: two typed containers in one union")
            return _dispatch(by_type, others[0] if others else None)
        if origin in (tuple, list, set, frozenset):
            if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
                p = self.plan(args[0])
                return None if p is None else _each(p, origin)
            if origin is tuple:
                plans = [self.plan(a) for a in args]
                return None if all(p is None for p in plans) else _positions(plans)
            p = self.plan(args[0]) if args else _fix_any
            return None if p is None else _each(p, origin)
        if origin is dict:
            pk = self.plan(args[0]) if args else _fix_any
            pv = self.plan(args[1]) if args else _fix_any
            return None if pk is None and pv is None else _mapping(pk, pv)
        return None

    def no_op_types(self, tp: Any) -> frozenset[type]:
        """Classes of a value annotated ``tp`` that its fixer leaves as they are
        (checked before calling it: most values are one of them)."""
        if tp in _ANY_LIKE:
            return _EXACT | _AS_BYTES
        origin = typing.get_origin(tp)
        if origin is Union or origin is types.UnionType:
            out: set[type] = set()
            for a in typing.get_args(tp):
                if a in _ANY_LIKE:
                    out |= _EXACT | _AS_BYTES
                elif isinstance(a, type) and a is not tuple and self.plan(a) is None:
                    out.add(a)
            return frozenset(out)
        return frozenset()

    def struct_fixer(self, cls: type) -> Callable[[Any], Any] | None:
        if cls in self.fixers:
            return self.fixers[cls]
        self.planned.add(cls)
        if cls in self._busy:  # a class that contains itself: decide lazily
            return lambda v: (self.fixers.get(type(v)) or _same)(v)
        self._busy.add(cls)
        hints = _hints(cls)
        fields = []
        for name in cls.__struct_fields__:
            tp = hints[name]
            self._where = f"{cls.__name__}.{name}"
            p = self.plan(tp)
            if p is not None:
                fields.append((name, p, self.no_op_types(tp)))
        self._busy.discard(cls)
        fixer = _struct(tuple(fields)) if fields else None
        self.fixers[cls] = fixer
        return fixer


def _show(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else repr(tp).replace("typing.", "")


def _same(v: Any) -> Any:
    return v


def _pickled(v: Any) -> Ext:
    return Ext(EXT_PICKLE, pickle.dumps(v, _PICKLE_PROTOCOL))


def _fix_any(v: Any) -> Any:
    t = type(v)
    if t in _EXACT or t in _AS_BYTES:
        return v
    return _pickled(v)


def _fix_any_items(v: Any) -> Any:
    """A bare ``tuple`` field: the tuple stays, its items follow the Any rule."""
    if type(v) is not tuple:
        return v  # (a wrong type for the field: msgspec says so when decoding)
    out = None
    for i, x in enumerate(v):
        t = type(x)
        if t in _EXACT or t in _AS_BYTES:
            continue
        if out is None:
            out = list(v)
        out[i] = _pickled(x)
    return v if out is None else tuple(out)


def _dispatch(by_type: dict[type, Callable[[Any], Any] | None],
              other: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    """A union: the plan of the value's own class if it is one of the
    alternatives, else the plan of the (one) typed container among them."""
    def fix(v: Any) -> Any:
        t = type(v)
        if t in by_type:
            p = by_type[t]
        elif other is None and isinstance(v, msgspec.Struct):
            raise _Untyped(t)  # a Struct the receiver's union does not hold
        else:
            p = other
        return v if p is None else p(v)
    return fix


def _each(p: Callable[[Any], Any], origin: type) -> Callable[[Any], Any]:
    def fix(v: Any) -> Any:
        out = None
        for i, x in enumerate(v):
            y = p(x)
            if y is not x:
                if out is None:
                    out = list(v)
                out[i] = y
        if out is None:
            return v
        return out if origin is list else origin(out)
    return fix


def _positions(plans: list[Callable[[Any], Any] | None]) -> Callable[[Any], Any]:
    todo = tuple((i, p) for i, p in enumerate(plans) if p is not None)
    size = len(plans)

    def fix(v: Any) -> Any:
        if len(v) != size:
            return v
        out = None
        for i, p in todo:
            x = v[i]
            y = p(x)
            if y is not x:
                if out is None:
                    out = list(v)
                out[i] = y
        return v if out is None else tuple(out)
    return fix


def _mapping(pk: Callable[[Any], Any] | None, pv: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    def fix(v: Any) -> Any:
        if v is None:
            return v
        out = {}
        changed = False
        for k, x in v.items():
            k2 = k if pk is None else pk(k)
            x2 = x if pv is None else pv(x)
            changed = changed or k2 is not k or x2 is not x
            out[k2] = x2
        return out if changed else v
    return fix


def _struct(fields: tuple[tuple[str, Callable[[Any], Any], frozenset[type]], ...]) -> Callable[[Any], Any]:
    def fix(obj: Any) -> Any:
        copy = None
        for name, p, no_op in fields:
            v = getattr(obj, name)
            if type(v) in no_op or v is _EMPTY:  # (the empty tuple is one object)
                continue
            nv = p(v)
            if nv is not v:
                if copy is None:
                    copy = obj.__copy__()  # no __init__, no __post_init__
                force_setattr(copy, name, nv)
        return obj if copy is None else copy
    return fix


# ===========================================================================
# Hooks: the types msgpack does not have


def _enc_hook(obj: Any) -> Any:
    t = type(obj)
    if t in _ID_SIZES:
        return bytes(obj)
    if t is ResourceSet:
        return obj._units
    if isinstance(obj, enum.Enum):
        return obj.value
    raise TypeError(f"a {t.__module__}.{t.__qualname__} cannot be encoded in a typed message field")


def _dec_id(cls: type, v: Any) -> Any:
    if type(v) is not bytes or len(v) != _ID_SIZES[cls]:
        raise ValueError(f"expected a {cls.__name__} ({_ID_SIZES[cls]} bytes), got {_describe(v)}")
    return cls(v)


def _dec_resources(v: Any) -> ResourceSet:
    if type(v) is not dict:
        raise ValueError(f"expected a ResourceSet (a map of resource names to integer units), got {_describe(v)}")
    zeros = False
    for k, u in v.items():
        if type(k) is not str or type(u) is not int:
            raise ValueError("expected a ResourceSet (a map of resource names to integer units), got a "
                             f"{_describe(k)} -> {_describe(u)} entry")
        zeros = zeros or not u
    return ResourceSet(v) if zeros else _wrap_resources(v)


_wrap_resources = ResourceSet._wrap


def _describe(v: Any) -> str:
    if isinstance(v, (bytes, str)):
        return f"{type(v).__name__} of length {len(v)}"
    return type(v).__name__


def _dec_hook(tp: Any, v: Any) -> Any:
    if tp in _ID_SIZES:
        return _dec_id(tp, v)
    if tp is ResourceSet:
        return _dec_resources(v)
    if tp is object or tp is Hashable:
        return v
    raise ValueError(f"no decoder for {_show(tp)}")


def _ext_hook(code: int, data: memoryview) -> Any:
    if code == EXT_PICKLE:
        return pickle.loads(data)
    raise ValueError(f"unknown msgpack ext type {code}")


# ===========================================================================
# The codec


class WireCodec:
    """Encodes lists of messages into frame bodies and back (one per process)."""

    def __init__(self) -> None:
        classes = _find_wire_classes()
        planner = _Planner(classes)
        planner.rewrite_annotations()
        classes = self._decodable(planner, classes)
        self.classes = tuple(classes)
        self.fixers: dict[type, Callable[[Any], Any] | None] = {c: planner.struct_fixer(c) for c in classes}
        self.fallbacks = tuple(sorted(set(planner.fallbacks)))
        self._encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
        self._typed = msgspec.msgpack.Decoder(
            list[Union[tuple(classes)]], dec_hook=_dec_hook, ext_hook=_ext_hook  # type: ignore[misc]
        )
        # (a separate decoder: a TYPED frame cannot smuggle in a bare ext)
        self._mixed = msgspec.msgpack.Decoder(
            list[Union[(*classes, Ext)]], dec_hook=_dec_hook, ext_hook=_ext_hook  # type: ignore[misc]
        )
        self.fingerprint = _fingerprint({c for c in (*classes, *planner.planned) if _in_schema(c)})
        self._by_tag = {c.__struct_config__.tag: c for c in classes}

    @staticmethod
    def _decodable(planner: _Planner, classes: list[type]) -> list[type]:
        """The classes msgspec can decode (a field type it does not support
        leaves its class to the pickle path, logged).  Checked one by one
        only when the union of them all does not build (never, today)."""
        try:
            msgspec.msgpack.Decoder(list[Union[tuple(classes)]], dec_hook=_dec_hook)  # type: ignore[misc]
            return classes
        except Exception:
            pass
        good = []
        for cls in classes:
            try:
                msgspec.msgpack.Decoder(cls, dec_hook=_dec_hook)
            except Exception as exc:  # an annotation msgspec cannot decode
                logger.warning("%s.%s travels pickled: %s", cls.__module__, cls.__qualname__, exc)
                planner.registered.discard(cls)
                continue
            good.append(cls)
        return good

    def encode(self, batch: list[Any]) -> bytearray:
        """One whole frame for ``batch`` (a list of messages): the 4-byte
        length, then the body (encoded in place, after the length: no copy).

        Raises what the encoder or pickle raises for a message that cannot
        be sent (``TypeError`` for a value of the wrong type in a typed
        field, ``pickle.PicklingError`` ...)."""
        fixers = self.fixers
        out = batch
        fmt = TYPED
        for i, m in enumerate(batch):
            f = fixers.get(type(m), _pickled)
            if f is None:
                continue
            if out is batch:
                out = list(batch)
            try:
                out[i] = f(m)
            except _Untyped:
                f = _pickled
                out[i] = f(m)
            if f is _pickled:
                fmt = MIXED
        frame = bytearray(_TYPED_HEAD if fmt == TYPED else _MIXED_HEAD)
        self._encoder.encode_into(out, frame, 5)
        _pack_length(frame, 0, len(frame) - 4)
        return frame

    def decode(self, body: Any) -> list[Any]:
        """The messages in a frame body (a bytes-like object).

        Raises:
            WireDecodeError: the body is not a valid frame (what is wrong,
                and where, in words).
        """
        if not body:
            raise WireDecodeError("empty frame body")
        fmt = body[0]
        if fmt != TYPED and fmt != MIXED:
            raise WireDecodeError(f"unknown frame format byte 0x{fmt:02x} (expected 0x01 or 0x02)")
        try:
            msgs = (self._typed if fmt == TYPED else self._mixed).decode(body[1:])
            if fmt == MIXED:
                msgs = [_unwrap(m) if type(m) is Ext else m for m in msgs]
        except WireDecodeError:
            raise
        except msgspec.ValidationError as exc:
            where = self._where(body, str(exc))
            raise WireDecodeError(f"a message does not match the protocol: {exc}{where}") from exc
        except msgspec.DecodeError as exc:
            raise WireDecodeError(f"not a msgpack frame: {exc}") from exc
        except RecursionError as exc:
            raise WireDecodeError("the frame nests too deeply") from exc
        except Exception as exc:  # a pickled value that failed to load, a check in __post_init__ ...
            raise WireDecodeError(f"could not decode a message: {exc!r}") from exc
        return msgs


    def _where(self, body: Any, error: str) -> str:
        """The fields a validation error's path (`` - at `$[0][2][1]` ``) names,
        as `` (in Deliver.msg, ActorCall.spec, TaskSpec.task_id)``, or ""."""
        m = re.search(r"at `\$((?:\[\d+\])+)`", error)
        if m is None:
            return ""
        try:  # untyped, ext values left as they are: nothing is unpickled
            node = msgspec.msgpack.decode(body[1:])
        except Exception:
            return ""
        tags = self._by_tag
        names = []
        for index in map(int, re.findall(r"\d+", m.group(1))):
            if type(node) is list and node and type(node[0]) is str and node[0] in tags and index > 0:
                fields = tags[node[0]].__struct_fields__
                if index <= len(fields):
                    names.append(f"{node[0]}.{fields[index - 1]}")
            try:
                node = node[index]
            except (IndexError, KeyError, TypeError):
                break
        return f" (in {', '.join(names)})" if names else ""


def _unwrap(m: Ext) -> Any:
    if m.code != EXT_PICKLE:
        raise WireDecodeError(f"a message is a msgpack ext of unknown type {m.code}")
    return pickle.loads(m.data)


def _fingerprint(classes: set[type]) -> str:
    h = blake2b(digest_size=8)
    for cls in sorted(classes, key=lambda c: (c.__module__, c.__qualname__)):
        h.update(repr((cls.__struct_config__.tag, cls.__struct_fields__)).encode())
    return h.hexdigest()


_codec: WireCodec | None = None


def codec() -> WireCodec:
    """This process's codec, built at first use (after every wire class is
    defined: ``wire`` defines Ping/Pong)."""
    global _codec
    if _codec is None:
        # (no collection in the middle: building makes thousands of small
        # objects, which would start a full one, ~20 ms in a driver)
        enabled = gc.isenabled()
        gc.disable()
        try:
            _codec = WireCodec()
        finally:
            if enabled:
                gc.enable()
    return _codec


def wire_classes() -> tuple[type, ...]:
    """The classes that travel typed (not pickled)."""
    return codec().classes


def fallback_fields() -> tuple[str, ...]:
    """``"Class.field: annotation"`` for each field whose values that msgpack
    cannot carry exactly are pickled (see "The fallback")."""
    return codec().fallbacks


def schema_fingerprint() -> str:
    """A short hash of every wire class's name and fields, for the hello."""
    return codec().fingerprint

