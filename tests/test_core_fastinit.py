"""The faster ``__init__`` of the core's frozen dataclasses builds exactly
what the dataclass's own would, and refuses what it would refuse."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field

import pytest

from penumbra.core._fastinit import install_init


def _pair():
    def make():
        @dataclass(frozen=True, slots=True)
        class Base:
            a: int
            b: str = "x"

        @dataclass(frozen=True, slots=True, kw_only=True)
        class C(Base):
            c: tuple = field(default_factory=tuple)
            d: int
            e: list = field(init=False, default_factory=list, compare=False)
            f: int = field(init=False, default=7)

            def __post_init__(self) -> None:
                if self.d < 0:
                    raise ValueError("d < 0")
                object.__setattr__(self, "e", [self.a, self.d])

        return C

    plain, fast = make(), make()
    install_init(fast)
    return plain, fast


def test_same_objects_defaults_factories_and_post_init():
    plain, fast = _pair()
    assert fast.__init__ is not plain.__init__
    def shape(f):
        return [(p.name, p.kind, p.default is inspect.Parameter.empty) for p in inspect.signature(f).parameters.values()]

    assert shape(fast.__init__) == shape(plain.__init__)
    for args, kwargs in [((1,), {"d": 2}), ((1, "y"), {"d": 3, "c": (1,)}), ((), {"a": 5, "d": 0})]:
        p, f = plain(*args, **kwargs), fast(*args, **kwargs)
        assert [getattr(p, x.name) for x in dataclasses.fields(p)] == [getattr(f, x.name) for x in dataclasses.fields(f)]
    a, b = fast(1, d=1), fast(1, d=1)
    assert a.c is not None and a.e is not b.e  # a fresh factory value each time


@pytest.mark.parametrize("args, kwargs, error", [
    ((), {"d": 1}, TypeError),            # a required positional missing
    ((1,), {}, TypeError),                # a required keyword-only missing
    ((1, "y", ()), {"d": 1}, TypeError),  # keyword-only given positionally
    ((1,), {"d": 1, "zz": 2}, TypeError),  # unknown field
    ((1,), {"d": 1, "e": []}, TypeError),  # init=False field
    ((1,), {"d": -1}, ValueError),        # __post_init__ still runs
])
def test_same_refusals(args, kwargs, error):
    plain, fast = _pair()
    with pytest.raises(error):
        plain(*args, **kwargs)
    with pytest.raises(error):
        fast(*args, **kwargs)


def test_still_frozen_and_mutable_classes_untouched():
    _, fast = _pair()
    obj = fast(1, d=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        obj.a = 2

    @dataclass(slots=True)
    class Mutable:
        x: int

    before = Mutable.__init__
    install_init(Mutable)
    assert Mutable.__init__ is before


def test_core_messages_use_it():
    from penumbra.core.messages import GcsWrite
    from penumbra.core.records import TaskEntry
    from penumbra.core.specs import TaskSpec

    for cls in (GcsWrite, TaskEntry, TaskSpec):
        assert any(n.startswith("_set_") for n in cls.__init__.__code__.co_names), cls
