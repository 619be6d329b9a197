"""The protocol's events, commands and messages, and the specs, records and
ops they carry, are frozen ``msgspec.Struct``s (``core/msg_base.py``,
``core/specs.py``): what each promises the code that builds, copies,
compares, pickles and walks them."""

from __future__ import annotations

import dataclasses
import gc
import inspect
import pickle

import msgspec
import pytest
from msgspec.structs import replace

import penumbra.core.client  # noqa: F401 (defines client events)
import penumbra.core.gcs  # noqa: F401 (defines chain messages)
import penumbra.transports.protocol as P
from penumbra.core.ids import child_task_id, driver_task_id, return_object_id
from penumbra.core.messages import ActorCall, Log, Send, SetTimer, SubmitTask, TimerFired
from penumbra.core.msg_base import ProtocolStruct, field_names
from penumbra.core.records import ObjectEntry, TaskEntry
from penumbra.core.specs import FunctionDescriptor, Payload, Record, ResourceSet, TaskSpec
from penumbra.core.tables_ops import AddLocation


def _all(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all(sub))
    return out


def _spec(i: int = 1, **kw) -> TaskSpec:
    root = driver_task_id(1)
    return TaskSpec(task_id=child_task_id(root, i), job_id=1, parent_task_id=root,
                    function=FunctionDescriptor(b"f" * 16, "mod.f"), args=Payload(3, b"abc"),
                    resources=ResourceSet.of(CPU=1), **kw)


def test_every_protocol_class_is_a_frozen_untracked_struct():
    protocol = [c for c in _all(ProtocolStruct) if c.__module__.startswith("penumbra.")]
    records = [c for c in _all(Record) if c.__module__.startswith("penumbra.")]
    assert len(protocol) > 100 and len(records) > 40
    for cls in protocol + records:
        assert issubclass(cls, msgspec.Struct) and not dataclasses.is_dataclass(cls), cls
        cfg = cls.__struct_config__
        assert cfg.frozen and not cfg.gc, cls
    for cls in protocol:  # keyword-only, like the dataclasses were
        kinds = {p.kind for p in inspect.signature(cls).parameters.values()}
        assert kinds <= {inspect.Parameter.KEYWORD_ONLY}, cls
    for cls in (P.Deliver, P.Run, P.Ran):
        assert issubclass(cls, msgspec.Struct) and cls.__struct_config__.frozen


def test_structs_keep_the_dataclass_rules():
    s = Send(to="node:1", msg=SubmitTask(client="driver:1", spec=_spec()))
    with pytest.raises(TypeError):
        Send("node:1", s.msg)  # keyword-only
    with pytest.raises(AttributeError):
        s.to = "node:2"  # frozen
    assert Log(level="info", text="x").job_id is None  # defaults kept
    assert SetTimer(at=1.0, key=("a", 1)) == SetTimer(at=1.0, key=("a", 1))
    assert SetTimer(at=1.0, key=1) != TimerFired(key=1)
    assert hash(SetTimer(at=1.0, key=1)) == hash(SetTimer(at=1.0, key=1))
    assert field_names(ActorCall) == ("stimulus_id", "spec", "from_node", "incarnation", "floor", "attempt")
    assert not gc.is_tracked(s) and not gc.is_tracked(s.msg.spec)


def test_task_spec_derives_its_return_ids_and_checks_num_returns():
    spec = _spec(num_returns=2)
    ids = (return_object_id(spec.task_id, 1), return_object_id(spec.task_id, 2))
    assert spec.return_ids == ids
    assert _spec(num_returns=2, return_ids=()).return_ids == ids  # a value passed in is replaced
    assert replace(spec, num_returns=1).return_ids == ids[:1]  # replace runs __post_init__
    with pytest.raises(ValueError, match="num_returns must be >= 0"):
        _spec(num_returns=-1)


def test_structs_pickle_as_the_dataclasses_did():
    spec = _spec(num_returns=2)
    for obj in (SubmitTask(client="driver:1", spec=spec, stimulus_id="s1"), spec,
                TaskEntry(spec, node="node:0"), ObjectEntry(spec.return_ids[0], 5, frozenset({"node:0"})),
                AddLocation(object_id=spec.return_ids[0], node="node:0", size=5),
                P.Deliver("node:0", SubmitTask(client="d", spec=spec))):
        data = pickle.dumps(obj, 5)
        back = pickle.loads(data)
        assert back == obj and type(back) is type(obj)
    # (rebuild function, field values in declaration order): the same bytes
    # as the generated dataclass pickling made, so trace hashes do not move
    fn, values = SubmitTask(client="driver:1", spec=spec, stimulus_id="s1").__reduce__()
    assert fn.__qualname__ == "SubmitTask._pickle_rebuild" and values == ("s1", "driver:1", spec)


def test_field_names_walks_structs_and_dataclasses_alike():
    @dataclasses.dataclass
    class D:
        a: int
        b: int = 0

    assert field_names(D) == ("a", "b")
    assert field_names(TaskEntry) == ("spec", "state", "node", "attempt", "reconstructions", "placed")
    assert field_names(int) is None
