"""Fast pickling for the frozen, slotted dataclasses of the protocol.

The default pickling of a slotted dataclass calls ``dataclasses.fields()``
for every object, on both sides; messages cross process boundaries by the
hundred thousand per second, so that cost shows.  ``fast_reduce`` pickles an
object as its class and a tuple of its field values (names cached per
class), and rebuilds it without running ``__init__`` (values were validated
when the object was first made).
"""

from __future__ import annotations

import dataclasses

__all__ = ["fast_reduce"]

_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    n = _NAMES.get(cls)
    if n is None:
        n = _NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return n


def _rebuild(cls: type, values: tuple):
    obj = object.__new__(cls)
    setter = object.__setattr__
    for name, value in zip(_names(cls), values):
        setter(obj, name, value)
    return obj


def fast_reduce(self):
    return (_rebuild, (type(self), tuple([getattr(self, n) for n in _names(type(self))])))
