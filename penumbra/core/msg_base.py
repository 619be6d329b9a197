"""The base of every event and command, the generic ones, and their fast paths.

``Event``, ``Command`` and ``Message`` (an event that travels between
machines) are what every other protocol class derives from (the rules they
follow are in ``messages.py``); ``Send``, ``SetTimer``/``TimerFired`` and
``Log`` are the commands and events every machine uses.

Messages cross processes by the hundred thousand per second, and events and
commands are made by the million in a simulation, so each ``msg_*`` module
ends with ``install_protocol(__name__)``: its classes get generated
pickling (``_pickling``) and a faster ``__init__`` (``_fastinit``) when it is
imported, in every process, before any is pickled or made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

__all__ = ["Event", "Command", "Message", "Send", "SetTimer", "TimerFired", "Log", "install_protocol"]

_frozen = dataclass(frozen=True, slots=True, kw_only=True)


# ===========================================================================
# Base classes


@_frozen
class Event:
    stimulus_id: str = ""


@_frozen
class Command:
    stimulus_id: str = ""


@_frozen
class Message(Event):
    """An event that travels from one machine to another via ``Send``."""


# ===========================================================================
# Generic commands and events


@_frozen
class Send(Command):
    to: str
    msg: Message


@_frozen
class SetTimer(Command):
    at: float
    key: Hashable


@_frozen
class TimerFired(Event):
    key: Hashable


@_frozen
class Log(Command):
    """Something a person should see (``level``: 'warning', 'info', ...).

    ``job_id`` routes it to that job's driver when set.
    """

    level: str
    text: str
    job_id: int | None = None


# Messages cross processes by the hundred thousand per second: pickle them
# as (class, field values) instead of the slower dataclass default.
from ._pickling import fast_reduce as _fast_reduce  # noqa: E402
from ._fastinit import install_init as _install_init  # noqa: E402
from ._pickling import install as _install_pickling  # noqa: E402

Event.__reduce__ = _fast_reduce  # type: ignore[method-assign]
Command.__reduce__ = _fast_reduce  # type: ignore[method-assign]


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def install_protocol(module: str) -> None:
    """Give every event and command class defined in ``module`` (a module
    name) its generated pickling and ``__init__``.  Called once at the end of
    each ``msg_*`` module; classes defined elsewhere (tests, ``gcs.py``) keep
    the generic ``fast_reduce``."""
    classes = {c for base in (Event, Command) for c in _all_subclasses(base) if c.__module__ == module}
    _install_pickling(*classes)
    _install_init(*classes)


install_protocol(__name__)
