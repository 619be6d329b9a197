"""Serialization of task arguments, return values and ``put`` objects.

Theory of operation
-------------------
A value is pickled with cloudpickle and pickle protocol 5.  Every buffer that
offers itself out-of-band (a ``pickle.PickleBuffer``: contiguous numpy arrays,
pyarrow buffers, ``bytearray``) is *not* copied into the pickle stream: the
stream only says "buffer number i goes here", and the buffer itself is kept
by reference in :class:`SerializedObject`.  pyarrow Tables and RecordBatches
are written as one Arrow IPC stream, directly into the destination, so that
they read back zero-copy.

A :class:`SerializedObject` is written into one contiguous region (a segment
of the shared-memory store, or a ``bytes`` for a small value sent inline in a
message) with this layout::

    bare form, when there are no buffers and no refs:
        the pickle stream itself (it starts with 0x80, the PROTO opcode)

    framed form, otherwise (all integers little-endian):
        0   4s  magic  b"PNB1"
        4   u32 flags  (bit 0: the stream holds object references)
        8   u32 nbuf   number of out-of-band buffers
        12  u32 reserved
        16  u64 length of the pickle stream
        24  nbuf x (u64 offset, u64 length) of each buffer from the start
        ..  the pickle stream
        ..  each buffer, at an offset that is a multiple of 64

Reading it back (:func:`deserialize`) slices the region: the buffers handed to
the unpickler are slices of the caller's memoryview, so a numpy array read from
shared memory *aliases* it (no copy) and is read-only, exactly like Ray's
``ray.get``: writing to it raises ``ValueError: assignment destination is
read-only``.  The array keeps the region alive through its ``.base`` chain.

The contiguous form itself (:class:`SerializedObject`, :func:`copy_into`)
lives in :mod:`penumbra.transports.serial_format`; this module holds the
picklers, :func:`serialize` / :func:`deserialize` and the error messages
that name what could not be pickled.

Rules
-----
* Small values take a fast path: builtin scalars and small containers of them
  are pickled by the C pickler directly (about 1 us), anything else by
  cloudpickle (about 4 us for a small tuple).  A value whose
  :attr:`SerializedObject.total_size` is below :data:`INLINE_THRESHOLD` should
  travel inline in a message (:meth:`SerializedObject.to_bytes`, no copy when
  the value has no buffers); larger ones go into the object store.
* A :class:`SerializedObject` holds *references* to the value's buffers until
  it is written: mutate the array before :meth:`~SerializedObject.write_to`
  and the mutation is what gets stored.  Write it promptly.
* Object references nested in a value are found with ``ref_type`` / ``on_ref``
  and rebuilt with ``ref_factory`` (see :func:`serialize`).
* An exception keeps its traceback as text: :func:`remote_traceback` returns
  it after a round trip.
* Whatever cannot be pickled raises :class:`SerializationError` (a
  ``TypeError``) naming the offending nested object and where it sits.
"""

from __future__ import annotations

import io
import pickle
import struct
import sys
import traceback
import types
from collections.abc import Callable, Iterable
from typing import Any

from .._codepickle import Pickler as _CodePickler
from .serial_format import (
    _FLAG_REFS,
    _HEADER,
    _HEADER_SIZE,
    _MAGIC,
    ALIGNMENT,
    INLINE_THRESHOLD,
    SerializedObject,
    _ArrowPayload,
    _pa,
    copy_into,
    set_copy_threads,
)

# ALIGNMENT, INLINE_THRESHOLD, SerializedObject, copy_into and
# set_copy_threads live in serial_format (the contiguous form, which the
# shared-memory store needs without the picklers); they are re-exported here
# so that ``serialization`` stays the one place to import from.

__all__ = [
    "ALIGNMENT",
    "INLINE_THRESHOLD",
    "DeserializationError",
    "SerializationError",
    "SerializedObject",
    "copy_into",
    "deserialize",
    "dumps",
    "find_unserializable",
    "loads",
    "remote_traceback",
    "serialize",
    "set_copy_threads",
]

PROTOCOL = 5

_REMOTE_TB_ATTR = "_penumbra_traceback"


# --------------------------------------------------------------------- errors

try:  # one class for the user to catch: penumbra.SerializationError
    from ..exceptions import SerializationError as _ErrorBase
except ImportError:  # pragma: no cover - the API layer is optional here
    _ErrorBase = TypeError  # type: ignore[misc,assignment]


class SerializationError(_ErrorBase):  # type: ignore[valid-type,misc]
    """A value could not be serialized.

    A subclass of ``penumbra.SerializationError`` and of ``TypeError``.

    The message names the type of the value, the nested object that could not
    be pickled (found by pickling the value's parts one by one, like Ray's
    ``inspect_serializability``), where it sits in the value, and the original
    error, e.g.::

        argument 2 (a dict) could not be serialized: value['lock'] is a
        _thread.lock, which cannot be serialized (TypeError: cannot pickle
        '_thread.lock' object)

    Attributes:
        subject: what was being serialized ("value", "argument 2", ...).
        value_type: the type of the whole value.
        culprit: the innermost object found that cannot be pickled on its own
            (the value itself when no part of it could be blamed).
        culprit_type: ``type(culprit)``.
        path: where the culprit sits, e.g. ``value['a'][3].lock``.
        original: the exception raised by the pickler (also ``__cause__``).
    """

    def __init__(
        self,
        message: str,
        *,
        subject: str = "value",
        value_type: type | None = None,
        culprit: Any = None,
        path: str = "value",
        original: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.subject = subject
        self.value_type = value_type
        self.culprit = culprit
        self.culprit_type = type(culprit)
        self.path = path
        self.original = original


class DeserializationError(_ErrorBase):  # type: ignore[valid-type,misc]
    """Serialized data could not be turned back into a value.

    A subclass of ``penumbra.SerializationError`` (and so of ``TypeError``).

    Typical causes: the data is corrupt or truncated, or the value refers to a
    module that cannot be imported in this process (the message says which).
    The original error is ``__cause__``.
    """


def _type_name(t: type) -> str:
    mod = getattr(t, "__module__", None)
    if mod in (None, "builtins"):
        return t.__qualname__
    return f"{mod}.{t.__qualname__}"



def _rebuild_arrow_table(buf: Any) -> Any:
    pa = _pa()
    return pa.ipc.open_stream(pa.py_buffer(buf)).read_all()


def _rebuild_arrow_batch(buf: Any) -> Any:
    pa = _pa()
    return pa.ipc.open_stream(pa.py_buffer(buf)).read_next_batch()


# ------------------------------------------------------------- exceptions


def _rebuild_exception(factory: Callable[..., Any], args: tuple, tb_text: str | None) -> Any:
    try:
        exc = factory(*args)
    except Exception:
        # An exception class whose __init__ does not accept its own .args
        # (a common bug in user code): build it without calling __init__.
        if isinstance(factory, type) and issubclass(factory, BaseException):
            exc = factory.__new__(factory)
            exc.args = args
        else:
            raise
    if tb_text is not None:
        try:
            setattr(exc, _REMOTE_TB_ATTR, tb_text)
        except Exception:  # pragma: no cover - exotic exception types
            pass
    return exc


def _reduce_exception(exc: BaseException) -> Any:
    rv = exc.__reduce_ex__(PROTOCOL)
    if not isinstance(rv, tuple) or len(rv) < 2:
        return NotImplemented
    if exc.__traceback__ is not None:
        tb_text: str | None = "".join(traceback.format_exception(exc))
    else:
        tb_text = getattr(exc, _REMOTE_TB_ATTR, None)
    return (_rebuild_exception, (rv[0], tuple(rv[1]), tb_text)) + tuple(rv[2:])


def remote_traceback(exc: BaseException) -> str | None:
    """The traceback of ``exc`` as text, as it was when it was serialized.

    Returns None for an exception that was never serialized with a traceback.
    For a live exception use :func:`traceback.format_exception` instead.
    """
    return getattr(exc, _REMOTE_TB_ATTR, None)


# ---------------------------------------------------------------- picklers


def _rebuild_ndarray(buf: Any, dtype: Any, shape: tuple, fortran: bool) -> Any:
    import numpy as np

    flat = np.frombuffer(buf, dtype=np.uint8).view(dtype)
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def _reduce_ndarray(np: Any, arr: Any) -> Any:
    """An ndarray as one raw out-of-band buffer plus (dtype, shape, order):
    cheaper than numpy's own reduce (no pickled globals but ours) and it
    covers datetime64/timedelta64, which numpy pickles in-band."""
    dtype = arr.dtype
    if dtype.hasobject or arr.size == 0:
        return NotImplemented
    if arr.flags.c_contiguous:
        flat, fortran = arr.reshape(-1), False
    elif arr.flags.f_contiguous:
        flat, fortran = arr.T.reshape(-1), True
    else:
        return NotImplemented  # numpy copies it in-band
    d = dtype.str if dtype.fields is None and dtype.metadata is None and dtype.subdtype is None else dtype
    return _rebuild_ndarray, (pickle.PickleBuffer(flat.view(np.uint8)), d, arr.shape, fortran)



class _Pickler(_CodePickler):
    """cloudpickle (keeping functions' file names), plus Arrow IPC for tables
    and text tracebacks for exceptions."""

    def __init__(self, file: Any, buffer_callback: Callable[[Any], Any] | None, lazy: dict) -> None:
        super().__init__(file, protocol=PROTOCOL, buffer_callback=buffer_callback)
        self.lazy = lazy

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t is types.FunctionType and obj.__module__ == __name__:
            return NotImplemented  # our own rebuild helpers: by reference, fast
        np = sys.modules.get("numpy")
        if np is not None and t is np.ndarray:
            return _reduce_ndarray(np, obj)
        if isinstance(obj, BaseException):
            return _reduce_exception(obj)
        pa = sys.modules.get("pyarrow")
        if pa is not None:
            if t is pa.Table or t is pa.RecordBatch:
                payload = _ArrowPayload(obj)
                # The placeholder's identity tells the buffer callback to put
                # the Arrow payload in this buffer slot.
                placeholder = pickle.PickleBuffer(b"")
                self.lazy[id(placeholder)] = (placeholder, payload)
                rebuild = _rebuild_arrow_table if t is pa.Table else _rebuild_arrow_batch
                return rebuild, (placeholder,)
        return super().reducer_override(obj)


class _HookError(Exception):
    """Carries an exception raised by the caller's ``on_ref`` through pickle."""


class _RefPickler(_Pickler):
    def __init__(
        self,
        file: Any,
        buffer_callback: Callable[[Any], Any] | None,
        lazy: dict,
        ref_type: type | tuple[type, ...],
        on_ref: Callable[[Any], Any] | None,
        refs: list,
    ) -> None:
        super().__init__(file, buffer_callback, lazy)
        self._ref_type = ref_type
        self._on_ref = on_ref
        self._refs = refs

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, self._ref_type) and not isinstance(obj, type):
            self._refs.append(obj)
            if self._on_ref is None:
                return obj
            try:
                token = self._on_ref(obj)
            except BaseException as e:
                raise _HookError(e) from e
            return obj if token is None else token
        return None


class _RefUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, buffers: Iterable[Any], ref_factory: Callable[[Any], Any] | None) -> None:
        super().__init__(file, buffers=buffers)
        self._ref_factory = ref_factory

    def persistent_load(self, pid: Any) -> Any:
        if self._ref_factory is None:
            return pid
        return self._ref_factory(pid)


# ----------------------------------------------------------------- serialize

_ATOMIC = frozenset({int, float, str, bytes, bool, type(None), complex})
_FAST_BUDGET = 64


def _is_plain(value: Any, budget: list[int]) -> bool:
    """True if ``value`` is made only of builtin scalars, tuples, lists and
    dicts, with at most ``_FAST_BUDGET`` items in all (the C pickler alone is
    then enough)."""
    t = type(value)
    if t in _ATOMIC:
        return True
    if t is tuple or t is list:
        budget[0] -= len(value)
        if budget[0] < 0:
            return False
        for v in value:
            if type(v) not in _ATOMIC and not _is_plain(v, budget):
                return False
        return True
    if t is dict:
        budget[0] -= 2 * len(value)
        if budget[0] < 0:
            return False
        for k, v in value.items():
            if type(k) not in _ATOMIC and not _is_plain(k, budget):
                return False
            if type(v) not in _ATOMIC and not _is_plain(v, budget):
                return False
        return True
    return False


def serialize(
    value: Any,
    *,
    ref_type: type | tuple[type, ...] | None = None,
    on_ref: Callable[[Any], Any] | None = None,
    subject: str = "value",
) -> SerializedObject:
    """Serialize ``value``.

    Args:
        value: anything cloudpickle can pickle.
        ref_type: the class (or tuple of classes) of object references, e.g.
            the API's ``ObjectRef``.  Every instance met while pickling, at any
            depth, is recorded in :attr:`SerializedObject.refs` (once per
            occurrence) and stored in the stream as a *token*.
        on_ref: ``on_ref(ref) -> token`` is called for each reference met; the
            token (any picklable object but None) is what the stream holds and
            what ``ref_factory`` receives on deserialization.  Use it to
            record borrowers, or to strip a ref down to its id and owner.
            Without it (or when it returns None) the token is the ref itself,
            pickled by its own ``__reduce__``.  An exception raised by
            ``on_ref`` propagates unchanged.
        subject: how to name the value in an error message ("argument 2",
            "return value of f", ...).

    Returns:
        A :class:`SerializedObject`.

    Raises:
        SerializationError: if the value, or something in it, cannot be
            pickled.  The message names the offending object and its path.
    """
    if ref_type is None and _is_plain(value, [_FAST_BUDGET]):
        return SerializedObject(pickle.dumps(value, PROTOCOL))

    chunks: list = []
    refs: list = []
    lazy: dict[int, tuple[pickle.PickleBuffer, _ArrowPayload]] = {}

    def buffer_callback(pb: pickle.PickleBuffer) -> bool:
        entry = lazy.get(id(pb)) if lazy else None
        if entry is not None and entry[0] is pb:
            chunks.append(entry[1])  # an Arrow payload, written lazily
        else:
            chunks.append(pb.raw())
        return False  # out-of-band

    f = io.BytesIO()
    if ref_type is None:
        pickler: _Pickler = _Pickler(f, buffer_callback, lazy)
    else:
        pickler = _RefPickler(f, buffer_callback, lazy, ref_type, on_ref, refs)
    try:
        pickler.dump(value)
    except _HookError as e:
        raise e.args[0] from None
    except Exception as e:
        raise _serialization_error(value, e, subject, ref_type) from e
    return SerializedObject(f.getvalue(), chunks, refs)


def dumps(value: Any, **kwargs: Any) -> bytes:
    """``serialize(value, **kwargs).to_bytes()``: the contiguous form as bytes."""
    return serialize(value, **kwargs).to_bytes()


# --------------------------------------------------------------- deserialize


def deserialize(data: Any, *, ref_factory: Callable[[Any], Any] | None = None) -> Any:
    """Rebuild a value from its serialized form.

    Args:
        data: a :class:`SerializedObject`, or the contiguous form as ``bytes``
            or any buffer (typically the read-only memoryview returned by
            ``ShmStore.get``).  Buffers are not copied: numpy arrays and Arrow
            tables in the result alias ``data`` (read-only when ``data`` is,
            and always read-only for a ``SerializedObject``) and keep it alive.
        ref_factory: ``ref_factory(token) -> ref`` rebuilds each object
            reference from the token stored by ``serialize`` (see ``on_ref``).
            Without it the token itself is returned in the ref's place.

    Raises:
        DeserializationError: if the data is corrupt or the value cannot be
            rebuilt in this process (e.g. a module it needs is missing).
    """
    try:
        if isinstance(data, SerializedObject):
            buffers = [memoryview(b).toreadonly() for b in data.buffers]
            if not buffers and not data.refs:
                return pickle.loads(data.inband)
            return _RefUnpickler(io.BytesIO(data.inband), buffers, ref_factory).load()
        if isinstance(data, bytes):
            if data[:1] == b"\x80":
                return pickle.loads(data)
            mv = memoryview(data)
        else:
            mv = memoryview(data)
            if mv.format != "B" or mv.ndim != 1:
                mv = mv.cast("B")
            if not mv.readonly:
                mv = mv.toreadonly()
            if len(mv) and mv[0] == 0x80:
                return pickle.loads(mv)
        if len(mv) < _HEADER_SIZE:
            raise DeserializationError(f"serialized data is truncated ({len(mv)} bytes)")
        magic, flags, nbuf, _, inlen = _HEADER.unpack_from(mv, 0)
        if magic != _MAGIC:
            raise DeserializationError(f"not penumbra serialized data (starts with {bytes(mv[:4])!r})")
        start = _HEADER_SIZE + 16 * nbuf
        if start + inlen > len(mv):
            raise DeserializationError("serialized data is truncated (pickle stream)")
        table = struct.unpack_from(f"<{2 * nbuf}Q", mv, _HEADER_SIZE) if nbuf else ()
        buffers = []
        for i in range(nbuf):
            off, n = table[2 * i], table[2 * i + 1]
            if off + n > len(mv):
                raise DeserializationError(f"serialized data is truncated (buffer {i})")
            buffers.append(mv[off : off + n])
        inband = mv[start : start + inlen]
        if flags & _FLAG_REFS:
            return _RefUnpickler(io.BytesIO(inband), buffers, ref_factory).load()
        return pickle.loads(inband, buffers=buffers)
    except DeserializationError:
        raise
    except Exception as e:
        raise DeserializationError(f"could not deserialize the value: {type(e).__name__}: {e}") from e


def loads(data: Any, **kwargs: Any) -> Any:
    """Alias of :func:`deserialize`."""
    return deserialize(data, **kwargs)


# ------------------------------------------------- finding what won't pickle

_MAX_CHILDREN = 1000


def _try_pickle(obj: Any, ref_type: Any) -> BaseException | None:
    f = io.BytesIO()
    try:
        if ref_type is None:
            _Pickler(f, lambda b: False, {}).dump(obj)
        else:
            _RefPickler(f, lambda b: False, {}, ref_type, None, []).dump(obj)
    except _HookError:  # pragma: no cover - no on_ref here
        return None
    except Exception as e:
        return e
    return None


def _code_globals(code: types.CodeType, out: set[str]) -> None:
    out.update(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _code_globals(c, out)


def _children(obj: Any, path: str) -> Iterable[tuple[str, Any]]:
    """The parts of ``obj`` that pickling it would pickle, with their paths."""
    t = type(obj)
    if t is dict or isinstance(obj, dict):
        for i, (k, v) in enumerate(obj.items()):
            if i >= _MAX_CHILDREN:
                return
            yield f"{path}[{k!r}]", v
            yield f"{path} (key {k!r})", k
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj[:_MAX_CHILDREN]):
            yield f"{path}[{i}]", v
        return
    if isinstance(obj, (set, frozenset)):
        for i, v in enumerate(obj):
            if i >= _MAX_CHILDREN:
                return
            yield f"{path} (element {v!r})", v
        return
    if isinstance(obj, types.MethodType):
        yield f"{path}.__self__", obj.__self__
        yield f"{path}.__func__", obj.__func__
        return
    if isinstance(obj, types.FunctionType):
        code = obj.__code__
        for name, cell in zip(code.co_freevars, obj.__closure__ or ()):
            try:
                yield f"{path} (closure variable {name!r})", cell.cell_contents
            except ValueError:  # empty cell
                continue
        names: set[str] = set()
        _code_globals(code, names)
        g = obj.__globals__
        for name in sorted(names):
            if name in g:
                yield f"{path} (global {name!r})", g[name]
        for name, v in (obj.__defaults__ and enumerate(obj.__defaults__)) or ():
            yield f"{path} (default {name})", v
        return
    if isinstance(obj, type):
        for name, v in list(vars(obj).items())[:_MAX_CHILDREN]:
            if not (name.startswith("__") and name.endswith("__")):
                yield f"{path}.{name}", v
        return
    d = getattr(obj, "__dict__", None)
    if isinstance(d, dict):
        for i, (name, v) in enumerate(d.items()):
            if i >= _MAX_CHILDREN:
                break
            yield f"{path}.{name}", v
    for klass in t.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        if isinstance(slots, str):
            slots = (slots,)
        for name in slots:
            if name in ("__dict__", "__weakref__"):
                continue
            try:
                yield f"{path}.{name}", getattr(obj, name)
            except AttributeError:
                continue


def find_unserializable(
    value: Any,
    *,
    name: str = "value",
    depth: int = 5,
    ref_type: type | tuple[type, ...] | None = None,
) -> tuple[str, Any, BaseException] | None:
    """Find the innermost part of ``value`` that cannot be pickled.

    Walks containers, instance attributes, slots, and the closure variables
    and referenced globals of functions, pickling each part on its own, and
    descends into the first failing part (up to ``depth`` levels).  Like
    ``ray.util.inspect_serializability``, it is meant for error messages.

    Returns:
        ``(path, obj, error)`` for the culprit, ``value`` itself when no part
        can be blamed, or None when ``value`` pickles fine.
    """
    err = _try_pickle(value, ref_type)
    if err is None:
        return None
    path, obj = name, value
    seen = {id(value)}
    for _ in range(depth):
        found = None
        try:
            for child_path, child in _children(obj, path):
                if id(child) in seen:
                    continue
                child_err = _try_pickle(child, ref_type)
                if child_err is not None:
                    found = (child_path, child, child_err)
                    break
        except Exception:  # pragma: no cover - exotic containers
            found = None
        if found is None:
            break
        path, obj, err = found
        seen.add(id(obj))
    return path, obj, err


def _serialization_error(value: Any, error: BaseException, subject: str, ref_type: Any) -> SerializationError:
    try:
        found = find_unserializable(value, ref_type=ref_type)
    except RecursionError:
        found = None
    if found is None:
        path, culprit = "value", value
    else:
        path, culprit, _ = found
    vt = _type_name(type(value))
    cause = f"{type(error).__name__}: {error}"
    if culprit is value:
        msg = f"{subject} (a {vt}) could not be serialized: {cause}"
    else:
        msg = (
            f"{subject} (a {vt}) could not be serialized: {path} is a "
            f"{_type_name(type(culprit))}, which cannot be serialized ({cause})"
        )
    if isinstance(error, RecursionError):
        msg += "; the value is nested too deeply (or is self-referential through an object pickle cannot memoize)"
    return SerializationError(
        msg,
        subject=subject,
        value_type=type(value),
        culprit=culprit,
        path=path,
        original=error,
    )
