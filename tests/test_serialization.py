"""penumbra.transports.serialization: round trips, zero-copy, refs, errors."""

from __future__ import annotations

import dataclasses
import fractions
import pickle
import threading

import numpy as np
import pyarrow as pa
import pytest

from penumbra.transports.serialization import (
    ALIGNMENT,
    INLINE_THRESHOLD,
    DeserializationError,
    SerializationError,
    SerializedObject,
    deserialize,
    dumps,
    find_unserializable,
    loads,
    remote_traceback,
    serialize,
)

# ------------------------------------------------------------------ helpers


def aligned_region(size: int) -> tuple[np.ndarray, memoryview]:
    """A writable 64-byte aligned buffer of ``size`` bytes (like a store region)."""
    raw = np.zeros(size + ALIGNMENT, dtype=np.uint8)
    start = (-raw.ctypes.data) % ALIGNMENT
    region = raw[start : start + size]
    assert region.ctypes.data % ALIGNMENT == 0
    return region, memoryview(region)


def via_region(value, **kw):
    """Serialize into an aligned region, read back from a read-only view."""
    s = serialize(value, **kw)
    region, mv = aligned_region(s.total_size)
    assert s.write_to(mv) == s.total_size
    return s, region, deserialize(mv.toreadonly())


def round_trips(value):
    """The value read back through each of the three forms."""
    s = serialize(value)
    _, _, from_region = via_region(value)
    return [deserialize(s), deserialize(s.to_bytes()), from_region]


@dataclasses.dataclass
class Point:
    x: int
    y: float


class Plain:
    def __init__(self, a):
        self.a = a

    def __eq__(self, other):
        return type(other) is Plain and other.a == self.a


class DummyRef:
    """Stands for the API's ObjectRef."""

    def __init__(self, oid: bytes):
        self.oid = oid

    def __eq__(self, other):
        return isinstance(other, DummyRef) and other.oid == self.oid

    def __hash__(self):
        return hash(self.oid)

    def __repr__(self):
        return f"DummyRef({self.oid!r})"


class HoldsRef:
    def __init__(self, ref):
        self.ref = ref


class NeedsKwargError(Exception):
    def __init__(self, *, code):
        super().__init__(f"code {code}")
        self.code = code


class WithState(ValueError):
    pass


# ------------------------------------------------------------- plain values

PLAIN_VALUES = [
    0,
    -1,
    2**100,
    3.5,
    float("inf"),
    complex(1, 2),
    True,
    None,
    "",
    "héllo wörld ☃",
    b"",
    b"\x00\xff" * 10,
    (),
    (1, "a", 2.0),
    [1, [2, [3, [4]]]],
    {"a": 1, 2: "b", (3, 4): [5]},
    {1, 2, 3},
    frozenset({"x"}),
    bytearray(b"abc"),
    fractions.Fraction(1, 3),
    Point(1, 2.5),
    Plain([1, {"k": Plain(None)}]),
    {"big": list(range(1000)), "s": "x" * 10000},
]


@pytest.mark.parametrize("value", PLAIN_VALUES, ids=lambda v: type(v).__name__)
def test_round_trip_plain(value):
    for back in round_trips(value):
        assert back == value
        assert type(back) is type(value)


def test_shared_references_are_preserved():
    inner = [1, 2]
    value = {"a": inner, "b": inner}
    for back in round_trips(value):
        assert back["a"] is back["b"]


def test_functions_and_closures_round_trip():
    k = 10

    def add(x):
        return x + k

    for back in round_trips(add):
        assert back(1) == 11
    for back in round_trips(lambda y: y * 2):
        assert back(4) == 8


def test_small_value_is_bare_pickle_and_inline():
    s = serialize(42)
    b = s.to_bytes()
    assert isinstance(b, bytes)
    assert b is s.inband  # no copy
    assert b[0] == 0x80  # a bare pickle stream
    assert pickle.loads(b) == 42
    assert s.total_size == len(b) < 64
    assert s.is_inline() and s.refs == [] and s.buffers == []
    assert dumps((1, "a")) == serialize((1, "a")).to_bytes()
    assert loads(dumps((1, "a"))) == (1, "a")


def test_inline_threshold():
    assert serialize(b"x" * 1000).is_inline()
    big = serialize(np.zeros(INLINE_THRESHOLD, dtype=np.uint8))
    assert big.total_size > INLINE_THRESHOLD and not big.is_inline()


def test_write_to_rejects_small_destination():
    s = serialize(np.arange(100))
    with pytest.raises(ValueError, match="needs"):
        s.write_to(bytearray(s.total_size - 1))


def test_write_to_bytearray_and_read_back():
    s = serialize({"a": np.arange(10)})
    buf = bytearray(s.total_size)
    s.write_to(buf)
    back = deserialize(buf)
    np.testing.assert_array_equal(back["a"], np.arange(10))
    assert not back["a"].flags.writeable  # read-only even from a writable buffer


# ------------------------------------------------------------------- numpy

DTYPES = ["uint8", "int16", "int32", "int64", "float16", "float32", "float64", "complex128", "bool", "datetime64[ns]"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_zero_copy_read_only(dtype):
    rng = np.random.default_rng(0)
    arr = (rng.random((37, 53)) * 100).astype(dtype)
    s, region, back = via_region({"x": arr, "n": 1})
    assert s.buffer_sizes == [arr.nbytes]
    np.testing.assert_array_equal(back["x"], arr)
    assert back["x"].dtype == arr.dtype and back["x"].shape == arr.shape
    assert np.shares_memory(back["x"], region), "the array must alias the region (zero-copy)"
    assert back["x"].ctypes.data % ALIGNMENT == 0
    assert not back["x"].flags.writeable
    with pytest.raises(ValueError, match="assignment destination is read-only"):
        back["x"][0, 0] = back["x"][1, 1]


def test_numpy_fortran_order_and_structured():
    f = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    rec = np.zeros(5, dtype=[("a", "<i4"), ("b", "<f8")])
    rec["a"] = np.arange(5)
    _, region, back = via_region((f, rec))
    np.testing.assert_array_equal(back[0], f)
    assert back[0].flags.f_contiguous
    assert np.shares_memory(back[0], region)
    np.testing.assert_array_equal(back[1], rec)
    assert back[1].dtype == rec.dtype


def test_numpy_odd_arrays():
    noncontig = np.arange(100).reshape(10, 10)[:, ::3]
    objs = np.array([{"a": 1}, None, "s"], dtype=object)
    zero_d = np.array(3.5)
    empty = np.zeros((0, 4))
    for back in round_trips((noncontig, objs, zero_d, empty)):
        np.testing.assert_array_equal(back[0], noncontig)
        assert list(back[1]) == list(objs)
        assert back[2] == zero_d and back[2].shape == ()
        assert back[3].shape == (0, 4)


def test_same_array_twice_is_one_buffer():
    arr = np.arange(1000)
    s, _, back = via_region([arr, arr])
    assert len(s.buffer_sizes) == 1
    assert back[0] is back[1]


def test_buffers_are_64_byte_aligned():
    arrs = [np.arange(n, dtype=np.uint8) for n in (1, 7, 64, 65, 1000)]
    s, region, back = via_region(arrs)
    for a, b in zip(arrs, back):
        np.testing.assert_array_equal(a, b)
        assert (b.ctypes.data - region.ctypes.data) % ALIGNMENT == 0


def test_serialized_object_direct_is_read_only_alias():
    arr = np.arange(10.0)
    back = deserialize(serialize(arr))
    assert np.shares_memory(back, arr)  # no copy at all in-process
    assert not back.flags.writeable


def test_large_array_parallel_copy():
    arr = np.random.default_rng(3).random(2_000_000)  # 16 MB: threaded copy
    _, region, back = via_region(arr)
    np.testing.assert_array_equal(back, arr)
    assert np.shares_memory(back, region)


# ----------------------------------------------------------------- pyarrow


def _table():
    return pa.table(
        {
            "i": pa.array(np.arange(10_000, dtype=np.int64)),
            "f": pa.array(np.linspace(0, 1, 10_000)),
            "s": pa.array([f"row{i}" if i % 7 else None for i in range(10_000)]),
        }
    )


def _within(buf: pa.Buffer, region: np.ndarray) -> bool:
    lo = region.ctypes.data
    return lo <= buf.address and buf.address + buf.size <= lo + region.nbytes


def test_arrow_table_zero_copy():
    t = _table()
    s, region, back = via_region({"t": t})
    assert len(s.buffer_sizes) == 1  # one Arrow IPC stream
    assert back["t"].equals(t)
    col = back["t"].column("i").chunk(0)
    assert _within(col.buffers()[1], region), "the table must read zero-copy from the region"


def test_arrow_record_batch_and_forms():
    batch = pa.record_batch({"x": [1, 2, 3], "y": ["a", None, "c"]})
    t = _table()
    for back in round_trips((batch, t, t)):
        assert isinstance(back[0], pa.RecordBatch) and back[0].equals(batch)
        assert back[1].equals(t)
        assert back[1] is back[2]


def test_arrow_buffers_materialize():
    t = _table()
    s = serialize(t)
    (buf,) = s.buffers
    assert isinstance(buf, pa.Buffer) and buf.size == s.buffer_sizes[0]
    assert deserialize(s.to_bytes()).equals(t)


# -------------------------------------------------------------- exceptions


def _raise_nested():
    def inner():
        raise KeyError("missing")

    try:
        inner()
    except KeyError as e:
        raise WithState("outer failure") from e


def test_exception_round_trip_with_traceback_text():
    try:
        _raise_nested()
    except WithState as e:
        e.extra = {"attempt": 3}
        exc = e
    for back in round_trips(exc):
        assert type(back) is WithState
        assert back.args == ("outer failure",)
        assert back.extra == {"attempt": 3}
        tb = remote_traceback(back)
        assert tb is not None
        assert "_raise_nested" in tb and "inner" in tb
        assert "KeyError: 'missing'" in tb and "WithState: outer failure" in tb
    # The text survives a second trip (the traceback object does not).
    again = deserialize(serialize(round_trips(exc)[0]).to_bytes())
    assert remote_traceback(again) == remote_traceback(round_trips(exc)[0])


def test_exception_whose_init_rejects_its_args():
    exc = NeedsKwargError(code=7)
    with pytest.raises(TypeError):  # plain pickle cannot do it
        pickle.loads(pickle.dumps(exc))
    for back in round_trips(exc):
        assert type(back) is NeedsKwargError
        assert back.code == 7
        assert str(back) == "code 7"


def test_exception_without_traceback_and_nested_in_values():
    exc = OSError(2, "No such file", "/x")
    for back in round_trips({"err": exc, "n": 1}):
        assert isinstance(back["err"], FileNotFoundError)
        assert back["err"].filename == "/x"
        assert remote_traceback(back["err"]) is None


# -------------------------------------------------------------------- refs


def test_refs_collected_and_rebuilt_with_tokens():
    r1, r2 = DummyRef(b"a" * 20), DummyRef(b"b" * 20)
    value = {"list": [r1, 5], "obj": HoldsRef(r2), "again": r1}
    s = serialize(value, ref_type=DummyRef, on_ref=lambda r: ("oid", r.oid))
    assert s.refs == [r1, r2, r1] or sorted(r.oid for r in s.refs) == [b"a" * 20, b"a" * 20, b"b" * 20]
    seen = []

    def factory(token):
        seen.append(token)
        kind, oid = token
        assert kind == "oid"
        return DummyRef(oid)

    for data in (s, s.to_bytes()):
        seen.clear()
        back = deserialize(data, ref_factory=factory)
        assert back["list"][0] == r1 and back["obj"].ref == r2 and back["again"] == r1
        assert sorted(t[1] for t in seen) == sorted(r.oid for r in s.refs)


def test_refs_default_token_is_the_ref():
    r = DummyRef(b"c" * 20)
    s = serialize([r, (r,)], ref_type=DummyRef)
    assert len(s.refs) == 2
    _, _, back = via_region([r, (r,)], ref_type=DummyRef)
    assert back[0] == r and back[1][0] == r
    assert deserialize(s.to_bytes(), ref_factory=lambda tok: ("seen", tok)) == [("seen", r), (("seen", r),)]


def test_refs_with_buffers_and_no_refs():
    r = DummyRef(b"d" * 20)
    arr = np.arange(50)
    s, region, back = via_region({"r": r, "a": arr}, ref_type=DummyRef, on_ref=lambda ref: ref.oid)
    assert back["r"] == r.oid  # no factory: the token
    assert np.shares_memory(back["a"], region)
    s2 = serialize([1, Plain(2)], ref_type=DummyRef)
    assert s2.refs == []
    assert deserialize(s2.to_bytes()) == [1, Plain(2)]


def test_on_ref_errors_propagate_unchanged():
    class Boom(RuntimeError):
        pass

    def on_ref(ref):
        raise Boom("no borrowing now")

    with pytest.raises(Boom, match="no borrowing"):
        serialize([DummyRef(b"e" * 20)], ref_type=DummyRef, on_ref=on_ref)


# ------------------------------------------------------------------ errors


def test_lock_gives_clear_error():
    with pytest.raises(SerializationError) as info:
        serialize({"config": {"lock": threading.Lock()}}, subject="argument 2")
    e = info.value
    assert isinstance(e, TypeError)
    msg = str(e)
    assert msg.startswith("argument 2 (a dict) could not be serialized")
    assert "_thread.lock" in msg and "value['config']['lock']" in msg
    assert "cannot pickle" in msg  # the original error
    assert e.path == "value['config']['lock']"
    assert e.culprit_type.__name__ == "lock"
    assert isinstance(e.__cause__, TypeError) and e.original is e.__cause__


def test_generator_gives_clear_error():
    gen = (i for i in range(3))
    with pytest.raises(SerializationError, match="generator") as info:
        serialize((1, gen))
    assert info.value.path == "value[1]"
    with pytest.raises(SerializationError, match=r"value \(a generator\) could not be serialized"):
        serialize(gen)


def test_unserializable_in_closure_attribute_and_global():
    lock = threading.Lock()

    def uses_lock():
        return lock

    with pytest.raises(SerializationError, match="closure variable 'lock'") as info:
        serialize([uses_lock])
    assert "_thread.lock" in str(info.value)

    with pytest.raises(SerializationError, match=r"value\[0\]\.a\['l'\]"):
        serialize([Plain({"l": threading.RLock()})])

    found = find_unserializable({"ok": 1, "bad": Plain(threading.Event())})
    assert found is not None and found[0].startswith("value['bad'].a")
    assert find_unserializable({"ok": 1}) is None


def test_deserialization_errors():
    with pytest.raises(DeserializationError, match="not penumbra serialized data"):
        deserialize(b"garbage bytes here that are long enough")
    s = serialize(np.arange(100)).to_bytes()
    with pytest.raises(DeserializationError, match="truncated"):
        deserialize(s[:40])
    with pytest.raises(DeserializationError):
        deserialize(b"\x80\x05garbage")
    # A value that needs a module this process cannot import.
    bad = pickle.dumps(Plain(1), protocol=5).replace(b"test_serialization", b"no_such_module_xyz")
    with pytest.raises(DeserializationError, match="no_such_module_xyz"):
        deserialize(bad)


def test_repr():
    assert "total_size" in repr(serialize(np.arange(3)))
    assert isinstance(serialize(1), SerializedObject)


def test_errors_are_penumbra_serialization_errors():
    import penumbra.exceptions as pe

    with pytest.raises(pe.SerializationError):
        serialize(threading.Lock())
    with pytest.raises(pe.SerializationError):
        deserialize(b"not a pickle at all, not at all")
