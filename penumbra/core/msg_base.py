"""The base of every event and command, the generic ones, and their fast paths.

``Event``, ``Command`` and ``Message`` (an event that travels between
machines) are what every other protocol class derives from (the rules they
follow are in ``messages.py``); ``Send``, ``SetTimer``/``TimerFired`` and
``Log`` are the commands and events every machine uses.

Events and commands are made by the million in a simulation and several
times per task in a daemon, so they are frozen ``msgspec.Struct``s, not
dataclasses: a Struct is built in C (about a third of the cost of a frozen
slotted dataclass here), compares and hashes in C, and is what the wire
codec encodes.  ``_ProtocolMeta`` makes every subclass keyword-only (so a
subclass may declare a required field after the base's ``stimulus_id``
default, as the dataclasses did) and frozen; a class is declared plainly::

    class Send(Command):
        to: str
        msg: Message

Field checks go in ``__post_init__`` as before; a changed copy is
``msgspec.structs.replace(obj, field=value)``.  Each ``msg_*`` module ends
with ``install_protocol(__name__)``: its classes get generated pickling
(``_pickling``: a class's pickle is its rebuild function and its field
values, the same bytes as the dataclasses pickled to) at import, in every
process, before any is pickled.
"""

from __future__ import annotations

import dataclasses
from typing import Hashable

import msgspec

__all__ = ["Event", "Command", "Message", "Send", "SetTimer", "TimerFired", "Log", "install_protocol",
           "ProtocolStruct", "field_names"]


class _ProtocolMeta(msgspec.StructMeta):
    """Every protocol class is keyword-only (``kw_only`` applies to the
    fields a class declares itself, so each subclass needs it) and frozen
    (inherited from the base)."""

    def __new__(mcls, name, bases, namespace, **kwargs):
        kwargs.setdefault("kw_only", True)
        return super().__new__(mcls, name, bases, namespace, **kwargs)


class ProtocolStruct(msgspec.Struct, metaclass=_ProtocolMeta, frozen=True, gc=False, tag=True, array_like=True):
    """The root of the protocol's Structs (events and commands): frozen,
    keyword-only, compared and hashed by value.

    ``tag=True, array_like=True``: on the wire (``transports.wire_codec``)
    a message is a msgpack array, its class name then its field values in
    declaration order, decoded into the class the name says (each subclass
    is tagged with its own name).  Nothing else depends on these two.

    ``gc=False``: the garbage collector does not track them (16 bytes less
    each, and a collection has fewer objects to walk: the GCS machine
    applies about a quarter more writes per second in ``bench_core``).  The
    rule that makes it safe: a message holds values, never a reference back
    to itself or to anything that holds it, so it is never part of a
    reference cycle (one that were would leak, not crash)."""


# ===========================================================================
# Base classes


class Event(ProtocolStruct):
    stimulus_id: str = ""


class Command(ProtocolStruct):
    stimulus_id: str = ""


class Message(Event):
    """An event that travels from one machine to another via ``Send``."""


# ===========================================================================
# Generic commands and events


class Send(Command):
    to: str
    msg: Message


class SetTimer(Command):
    at: float
    key: Hashable


class TimerFired(Event):
    key: Hashable


class Log(Command):
    """Something a person should see (``level``: 'warning', 'info', ...).

    ``job_id`` routes it to that job's driver when set.
    """

    level: str
    text: str
    job_id: int | None = None


# Messages cross processes by the hundred thousand per second: pickle them
# as (rebuild, field values) instead of msgspec's keyword dict.
from ._pickling import fast_reduce as _fast_reduce  # noqa: E402
from ._pickling import install as _install_pickling  # noqa: E402

Event.__reduce__ = _fast_reduce  # type: ignore[method-assign]
Command.__reduce__ = _fast_reduce  # type: ignore[method-assign]


def field_names(cls: type) -> tuple[str, ...] | None:
    """The fields of a Struct or dataclass class, in declaration order (base
    fields first); ``None`` for any other class.  For code that walks
    records generically (the trace, reports) whichever kind they are."""
    names = getattr(cls, "__struct_fields__", None)
    if names is not None:
        return names
    if dataclasses.is_dataclass(cls):
        return tuple(f.name for f in dataclasses.fields(cls))
    return None


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def install_protocol(module: str) -> None:
    """Give every event and command class defined in ``module`` (a module
    name) its generated pickling.  Called once at the end of each ``msg_*``
    module; classes defined elsewhere (tests) keep the generic
    ``fast_reduce``."""
    classes = {c for c in _all_subclasses(ProtocolStruct) if c.__module__ == module}
    _install_pickling(*classes)


install_protocol(__name__)
