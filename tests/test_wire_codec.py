"""The msgpack wire codec (``penumbra.transports.wire_codec``).

Every wire class round-trips (built from its own type hints, each field
given a representative value of its type; fields that hold anything get a
tuple holding a record, which must come back as exactly that), the
fallback is confined to the fields it lists, and bytes that are not a valid
frame raise a clear ``WireDecodeError`` (never something else, never an
unpickle in a typed frame).
"""

from __future__ import annotations

import enum
import os
import pickle
import types
import typing
from typing import Any, Hashable, Union

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from penumbra.core import messages as M
from penumbra.core.ids import ActorId, ObjectId, TaskId, child_task_id, driver_task_id, return_object_id
from penumbra.core.records import ErrorInfo, ErrorKind
from penumbra.core.specs import FunctionDescriptor, Payload, ResourceSet, TaskSpec
from penumbra.transports import protocol as P
from penumbra.transports.wire import Ping
from penumbra.transports.wire_codec import (
    EXT_PICKLE,
    MIXED,
    TYPED,
    WireDecodeError,
    codec,
    fallback_fields,
    wire_classes,
)

TID = child_task_id(driver_task_id(1), 3)
OID = return_object_id(TID, 1)
AID = ActorId(bytes(range(16)))
FN = FunctionDescriptor(b"f" * 16, "mod.f")
ERR = ErrorInfo(ErrorKind.TASK_ERROR, "boom", Payload(3, b"abc"), task_name="f")
#: What a field that holds anything gets: a tuple, a record, an id, a set
#: (each would come back as something else if msgpack carried it as is).
ANYTHING = ("key", (1, 2.5), ERR, OID, frozenset({"a"}))


def _value(tp: Any, depth: int = 0) -> Any:
    """A representative value of annotation ``tp``."""
    if tp in (Any, object, Hashable):
        return ANYTHING
    if tp is type(None):
        return None
    if tp is tuple:
        return ("x", ERR, (1,))
    if isinstance(tp, type):
        simple = {str: "s-é", int: 2, float: 1.5, bool: True, bytes: b"\x00\xff",
                  TaskId: TID, ObjectId: OID, ActorId: AID, ResourceSet: ResourceSet.of(CPU=0.5, GPU=1)}
        if tp in simple:
            return simple[tp]
        if issubclass(tp, enum.Enum):
            return list(tp)[-1]
        if issubclass(tp, msgspec.Struct):
            return _build(tp, depth + 1)
        raise AssertionError(f"no representative value for {tp!r}")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        alts = [a for a in args if a is not type(None)]
        # a polymorphic field (a union of a class and its subclasses): a subclass
        concrete = [a for a in alts if isinstance(a, type) and issubclass(a, msgspec.Struct) and a.__struct_fields__]
        return _value(concrete[-1] if len(concrete) > 1 else alts[0], depth)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return (_value(args[0], depth), _value(args[0], depth))
        return tuple(_value(a, depth) for a in args)
    if origin in (frozenset, set, list):
        return origin([_value(args[0], depth)])
    if origin is dict:
        return {_value(args[0], depth): _value(args[1], depth)}
    raise AssertionError(f"no representative value for {tp!r}")


def _build(cls: type, depth: int = 0) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name in cls.__struct_fields__:
        if depth > 3 and _has_default(cls, name):
            continue
        kwargs[name] = _value(hints[name], depth)
    return cls(**kwargs)


def _has_default(cls: type, name: str) -> bool:
    i = cls.__struct_fields__.index(name)
    return i >= len(cls.__struct_fields__) - len(cls.__struct_defaults__)


def _shape(v: Any) -> Any:
    """``v`` with every type spelled out, to compare exactly (``OID == bytes(OID)``
    and ``(1,) != [1]`` are not enough on their own)."""
    if isinstance(v, msgspec.Struct):
        return (type(v), tuple(_shape(getattr(v, f)) for f in v.__struct_fields__))
    if isinstance(v, (tuple, list, frozenset, set)):
        return (type(v), tuple(_shape(x) for x in v))
    if isinstance(v, dict):
        return (dict, tuple((_shape(k), _shape(x)) for k, x in v.items()))
    if isinstance(v, ResourceSet):
        return (ResourceSet, tuple(sorted(v.to_dict().items())))
    return (type(v), v)


def _round_trip(msgs: list) -> list:
    return codec().decode(memoryview(codec().encode(msgs))[4:])


def _messages() -> list:
    out = []
    for cls in wire_classes():
        if cls in (M.Event, M.Command, M.Message) or not cls.__struct_fields__ and cls.__subclasses__():
            continue
        out.append(_build(cls))
    return out


def test_the_wire_classes_are_every_protocol_class():
    classes = set(wire_classes())
    subs = set()
    stack = [M.Event, M.Command]
    while stack:
        c = stack.pop()
        subs.add(c)
        stack.extend(c.__subclasses__())
    core = {c for c in subs if c.__module__.startswith("penumbra.core.msg_")}
    assert core <= classes
    assert {P.Deliver, P.Run, P.Ran, P.FetchReply, Ping, TaskSpec, ErrorInfo} <= classes
    assert len(classes) > 150


@pytest.mark.parametrize("msg", _messages(), ids=lambda m: type(m).__name__)
def test_every_wire_class_round_trips_exactly(msg):
    (got,) = _round_trip([msg])
    assert got == msg
    assert _shape(got) == _shape(msg)


def test_a_batch_of_every_message_is_one_typed_frame():
    msgs = _messages()
    frame = codec().encode(msgs)
    assert frame[4] == TYPED
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    got = _round_trip(msgs)
    assert [_shape(g) for g in got] == [_shape(m) for m in msgs]


def test_a_task_submission_carries_no_pickle():
    """The hot path is typed end to end: a submission inside a Deliver,
    with its attachments, encodes without a single pickle."""
    spec = TaskSpec(task_id=TID, job_id=1, parent_task_id=driver_task_id(1), function=FN,
                    args=Payload(5, b"args!"), dependencies=(OID,), resources=ResourceSet.of(CPU=1))
    msg = P.Deliver(to="node:1", msg=M.SubmitTask(spec=spec, client="c"),
                    attachments={OID: ("i", b"value"), return_object_id(TID, 2): ("s", 123)}, src="driver")
    frame = bytes(codec().encode([msg]))
    assert b"\x80\x05" not in frame  # no pickle stream in it
    (got,) = _round_trip([msg])
    assert _shape(got) == _shape(msg)


def test_untyped_fields_are_the_listed_ones_and_pickle_only_what_msgpack_cannot_carry():
    listed = fallback_fields()
    assert "GcsReply.result: Any" in listed and "Payload.data: Any" in listed
    # a scalar in an untyped field travels as itself
    frame = bytes(codec().encode([M.GcsReply(req_id=1, result=b"bytes")]))
    assert b"\x80\x05" not in frame
    # anything else is pickled, and comes back exactly
    reply = M.GcsReply(req_id=1, result=(ERR, [OID]))
    (got,) = _round_trip([reply])
    assert _shape(got) == _shape(reply)


class Local(msgspec.Struct):
    """Not a wire class (defined outside penumbra)."""

    x: tuple


def test_a_message_that_is_not_a_wire_class_travels_pickled():
    msgs = [Ping(1), {"a": (1, 2)}, Local((3,)), 5]
    frame = codec().encode(msgs)
    assert frame[4] == MIXED
    assert _round_trip(msgs) == msgs


def test_a_value_of_the_wrong_type_in_a_typed_field_is_refused_when_sent():
    with pytest.raises(TypeError, match="cannot be encoded"):
        codec().encode([M.GcsReply(req_id=object(), result=None)])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.text(), st.integers(-2**63, 2**64 - 1), st.binary(), st.floats(allow_nan=False)),
                max_size=5))
def test_random_field_values_round_trip(rows):
    msgs = [M.Log(level=t, text=t, job_id=i, stimulus_id=t) for t, i, _, _ in rows]
    msgs += [P.Ran(task_id=TID, outputs=((OID, abs(i), b or None),), duration=f) for _, i, b, f in rows]
    msgs += [M.GcsNotify(table=t, key=(t, i), value=[b, f], version=i) for t, i, b, f in rows]
    got = _round_trip(msgs)
    assert [_shape(g) for g in got] == [_shape(m) for m in msgs]


# ----------------------------------------------------------------- hostile bytes


def _typed(*items: Any) -> bytes:
    return bytes([TYPED]) + msgspec.msgpack.encode(list(items))


BAD = {
    "empty": b"",
    "unknown format byte": b"\x80\x05N.",  # a pickle, as protocol 1 sent
    "not msgpack": b"\x01\xc1",
    "truncated": bytes(codec().encode([Ping(1, b"x" * 100)])[4:-10]),
    "not a list": _typed()[:1] + msgspec.msgpack.encode({"a": 1}),
    "unknown tag": _typed(["NoSuchMessage", 1]),
    "missing fields": _typed(["Ping"]),
    "wrong field type": _typed(["Ping", "one", b""]),
    "short id": _typed(["Interrupt", b"\x00" * 3]),
    "bad resources": _typed(["NodeJoin", "", "n", {"CPU": "lots"}, "a", 0]),
    "bad enum": _typed(["ErrorInfo", 99, "m", None, ""]),
    "bare ext in a typed frame": _typed(msgspec.msgpack.Ext(EXT_PICKLE, pickle.dumps(1))),
    "unknown ext": bytes([TYPED]) + msgspec.msgpack.encode([["GcsReply", "", 1, True, msgspec.msgpack.Ext(9, b"")]]),
    "deep nesting": _typed()[:1] + b"\x91" * 100_000,
    "bad post_init": _typed(["TaskSpec", bytes(16), 1, bytes(16), ["FunctionDescriptor", b"", "f"], ["Payload", 0, None],
                             [], -1]),
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_frame_raises_a_clear_decode_error(name):
    with pytest.raises(WireDecodeError) as info:
        codec().decode(BAD[name])
    assert str(info.value)


def test_a_typed_frame_never_unpickles(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    evil = msgspec.msgpack.Ext(EXT_PICKLE, pickle.dumps(Evil()))
    with pytest.raises(WireDecodeError):
        codec().decode(_typed(evil))
    assert not marker.exists()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_ever_raise_decode_error(body):
    try:
        codec().decode(b"\x01" + body)
    except WireDecodeError:
        pass


def test_a_new_core_message_module_is_on_the_wire_with_no_edit(tmp_path):
    """A message class in a new ``penumbra.core.msg_*`` module (as another
    engineer adds ``msg_direct.py``) is a wire class, typed inside a Deliver
    too, and changes the schema fingerprint.  In a fresh process: a class
    added here would stay in this one's registry."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import sys, types
        from penumbra.core.msg_base import Message, install_protocol
        from penumbra.core.ids import TaskId
        from penumbra.transports.wire_codec import WireCodec

        before = sys.argv[1]  # this build's fingerprint, without the new module
        mod = types.ModuleType("penumbra.core.msg_zz_new")
        sys.modules[mod.__name__] = mod
        exec(
            "from penumbra.core.msg_base import Message\\n"
            "from penumbra.core.ids import TaskId\\n"
            "class BrandNewCall(Message):\\n"
            "    task_id: TaskId\\n"
            "    seq: tuple[int, ...] = ()\\n",
            mod.__dict__,
        )
        install_protocol(mod.__name__)
        from penumbra.transports.protocol import Deliver
        codec = WireCodec()
        assert mod.BrandNewCall in codec.classes
        msg = Deliver(to="w", msg=mod.BrandNewCall(task_id=TaskId(bytes(16)), seq=(1, 2)))
        frame = codec.encode([msg])
        assert frame[4] == 1, "typed, not pickled"
        (got,) = codec.decode(memoryview(frame)[4:])
        assert got == msg and type(got.msg) is mod.BrandNewCall and type(got.msg.task_id) is TaskId
        assert codec.fingerprint != before
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", script, codec().fingerprint], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.stdout.strip() == "ok", r.stderr


class LocalMessage(M.Message):
    """A message class outside penumbra (not a wire class)."""

    x: tuple = ()


def test_a_message_that_is_not_a_wire_class_inside_a_deliver_travels_pickled():
    msg = P.Deliver(to="node:1", msg=LocalMessage(x=(1, "a")))
    frame = codec().encode([Ping(1), msg])
    assert frame[4] == MIXED
    assert _round_trip([Ping(1), msg]) == [Ping(1), msg]


def test_messages_defined_beside_their_machine_are_wire_classes_where_it_is_loaded():
    """``GcsSync`` and friends live in ``core/gcs.py``, not a ``msg_*``
    module: a codec built where that module is loaded (a daemon) carries
    them typed; they are not part of the schema the hello compares."""
    from penumbra.core import gcs
    from penumbra.transports.wire_codec import WireCodec

    fresh = WireCodec()
    assert {gcs.GcsSync, gcs.GcsCaughtUp, gcs.GcsRejoin} <= set(fresh.classes)
    assert fresh.fingerprint == codec().fingerprint
    sync = _build(gcs.GcsSync)
    frame = fresh.encode([sync])
    assert frame[4] == TYPED
    assert fresh.decode(memoryview(frame)[4:]) == [sync]


def test_the_schema_fingerprint_does_not_depend_on_what_else_a_process_imported(tmp_path):
    """A driver and a daemon import different parts of penumbra; their
    hellos must still agree.  (A core command named like a protocol message,
    ``actor_inbox.Run`` beside ``protocol.Run``, once dropped the protocol's
    class from the schema only in the processes that had imported it, and
    the daemon refused every driver of a test run that had.)"""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import importlib, pkgutil, sys
        import penumbra
        from penumbra.transports.wire_codec import WireCodec
        fresh = WireCodec()
        for info in pkgutil.walk_packages(penumbra.__path__, "penumbra."):
            if ".tests" in info.name or info.name.endswith("__main__"):
                continue
            importlib.import_module(info.name)
        everything = WireCodec()
        assert everything.fingerprint == fresh.fingerprint, sorted(
            f"{c.__module__}.{c.__qualname__}" for c in set(fresh.classes) ^ set(everything.classes))
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.stdout.strip() == "ok", r.stderr[-3000:]
