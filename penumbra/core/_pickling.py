"""Fast pickling for the protocol's frozen Structs and the core's frozen dataclasses.

The default pickling of a slotted dataclass calls ``dataclasses.fields()``
for every object, on both sides, and a keyword-only ``msgspec.Struct``
pickles as a dict of its fields; messages cross process boundaries by the
hundred thousand per second, so that cost shows.  ``fast_reduce`` pickles an
object as a rebuild function and the tuple of its field values.  A
dataclass's rebuild makes the object without running ``__init__`` (values
were validated when the object was first made); a Struct's calls the class
with keywords (its ``__init__`` is C, and a Struct cannot be made without
it).  Both pickle to the same bytes for the same class name and values, so
a Struct pickles as the dataclass it replaced did.

``install(cls, ...)`` generates both halves for each class when its module
is imported (straight-line code, no loops over field names): the class's own
``__reduce__`` and a ``_pickle_rebuild`` static method, which pickle finds
by qualified name.  That halves the cost of a task's messages against a
generic loop.  It must happen at import, in every process: a receiver
looks the rebuild up by name before it has pickled anything itself.
``fast_reduce`` is the generic fallback for classes nobody installed
(subclasses made later, in tests).
"""

from __future__ import annotations

import dataclasses

__all__ = ["fast_reduce", "install"]

_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    n = _NAMES.get(cls)
    if n is None:
        n = getattr(cls, "__struct_fields__", None)
        if n is None:
            n = tuple(f.name for f in dataclasses.fields(cls))
        _NAMES[cls] = n
    return n


def _rebuild(cls: type, values: tuple):
    """The generic rebuild (kept so that pickles made by older code load)."""
    names = _names(cls)
    if hasattr(cls, "__struct_fields__"):
        return cls(**dict(zip(names, values)))
    obj = object.__new__(cls)
    setter = object.__setattr__
    for name, value in zip(names, values):
        setter(obj, name, value)
    return obj


def install(*classes: type) -> None:
    """Give each class its generated ``__reduce__`` and rebuild."""
    for cls in classes:
        names = _names(cls)
        args = ", ".join(f"v{i}" for i in range(len(names)))
        values = "".join(f"self.{n}, " for n in names)
        if hasattr(cls, "__struct_fields__"):
            kwargs = ", ".join(f"{n}=v{i}" for i, n in enumerate(names))
            make = f"    return _cls({kwargs})\n"
        else:
            body = "".join(f"    _set(o, {n!r}, v{i})\n" for i, n in enumerate(names))
            make = f"    o = _new(_cls)\n{body}    return o\n"
        src = (
            f"def _pickle_rebuild({args}):\n"
            f"{make}"
            f"def __reduce__(self):\n"
            f"    if type(self) is not _cls:\n"
            f"        return _fast_reduce(self)  # a subclass: its own fields\n"
            f"    return (_rb, ({values}))\n"
        )
        ns: dict = {"_new": object.__new__, "_set": object.__setattr__, "_cls": cls, "_fast_reduce": fast_reduce}
        exec(src, ns)  # noqa: S102 - generated from the class's own field names
        rb = ns["_pickle_rebuild"]
        rb.__module__ = cls.__module__
        rb.__qualname__ = f"{cls.__qualname__}._pickle_rebuild"
        ns["_rb"] = rb
        cls._pickle_rebuild = staticmethod(rb)  # type: ignore[attr-defined]
        cls.__reduce__ = ns["__reduce__"]  # type: ignore[method-assign]


def fast_reduce(self):
    """Generic: (class, field values), rebuilt without ``__init__``."""
    cls = type(self)
    return (_rebuild, (cls, tuple([getattr(self, n) for n in _names(cls)])))
