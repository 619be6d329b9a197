"""Faster ``__init__`` for the frozen, slotted dataclasses of the protocol.

A frozen dataclass's generated ``__init__`` sets each field with
``object.__setattr__(self, name, value)``: a builtins lookup and a generic
attribute lookup per field.  The events, commands and records of the core
are made by the million in a simulation and several times per task in a
daemon, and that cost shows (about 1.5 us for six fields on this machine).
``install_init`` gives such a class an ``__init__`` that calls each slot's
member descriptor directly: the same object, the same defaults, factories,
keyword-only fields and ``__post_init__``, in less than half the time.

Only frozen classes whose every field is a slot get one; anything unusual
(an ``InitVar``, a field without a slot) keeps the dataclass's own
``__init__``, and so does a mutable dataclass (its plain ``self.x = x``
is faster than a descriptor call).
Like ``_pickling.install``, it runs at import.
"""

from __future__ import annotations

import dataclasses

__all__ = ["install_init"]

_MISSING = dataclasses.MISSING


class _Probe:
    __slots__ = ("x",)


_MEMBER = type(_Probe.x)  # member_descriptor


def _is_slot(cls: type, name: str) -> bool:
    return type(getattr(cls, name, None)) is _MEMBER


def install_init(*classes: type) -> None:
    """Replace each class's ``__init__`` with the faster equivalent."""
    for cls in classes:
        _install(cls)


def _install(cls: type) -> None:
    if not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__:
        return
    if not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        return  # a mutable dataclass's ``self.x = x`` is faster still
    fs = dataclasses.fields(cls)
    if any(not _is_slot(cls, f.name) for f in fs):
        return
    if len(cls.__dataclass_fields__) != len(fs):
        return  # an InitVar or ClassVar pseudo-field: keep the dataclass's own
    ns: dict = {"_MISSING": _MISSING}
    positional: list[str] = []
    keyword: list[str] = []
    body: list[str] = []
    for f in fs:
        setter = f"_set_{f.name}"
        ns[setter] = getattr(cls, f.name).__set__
        if not f.init:
            if f.default is not _MISSING:
                ns[f"_d_{f.name}"] = f.default
                body.append(f"    {setter}(self, _d_{f.name})")
            elif f.default_factory is not _MISSING:
                ns[f"_f_{f.name}"] = f.default_factory
                body.append(f"    {setter}(self, _f_{f.name}())")
            continue
        if f.default is not _MISSING:
            ns[f"_d_{f.name}"] = f.default
            param = f"{f.name}=_d_{f.name}"
            value = f.name
        elif f.default_factory is not _MISSING:
            ns[f"_f_{f.name}"] = f.default_factory
            param = f"{f.name}=_MISSING"
            value = f"_f_{f.name}() if {f.name} is _MISSING else {f.name}"
        else:
            param = f.name
            value = f.name
        (keyword if f.kw_only else positional).append(param)
        body.append(f"    {setter}(self, {value})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    params = ["self", *positional]
    if keyword:
        params += ["*", *keyword]
    src = f"def __init__({', '.join(params)}):\n" + ("\n".join(body) if body else "    pass") + "\n"
    exec(src, ns)  # noqa: S102 - generated from the class's own fields
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    cls.__init__ = init  # type: ignore[misc]
