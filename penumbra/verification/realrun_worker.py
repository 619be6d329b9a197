"""What runs in the real workers when ``realrun`` runs a swarm workload.

The swarm's task and actor models (``VerifyExecutor``, ``VActor``) as real
remote functions and an actor class: every value is the same function of
the workload (``digest``), carried as ``(digest, padding)`` so a corrupted
or truncated transfer shows as a wrong value.  Each execution leaves a
marker file (its key, pid and node) in the run's scratch directory, and
the task the run's fault targets holds at a file barrier until the fault
is in (``Control``), so the fault always lands mid-task.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from ..api import functions as ray  # the Ray API, as ``import penumbra as ray`` has it (the root re-exports it)
from .workload import VCall, VChild, VTask, digest

__all__ = ["DesignedFailure", "CorruptValue", "Control", "HOLD_LIMIT"]


# how long a held task waits for the fault before going on by itself
HOLD_LIMIT = 60.0


# ===========================================================================
# what runs in the workers


class DesignedFailure(Exception):
    """What a task the plan marks ``raises`` raises: its message is the one
    ``VerifyExecutor`` records (``"<key> raised (by design)"``)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key} raised (by design)")
        self.key = key

    def __reduce__(self):
        return (DesignedFailure, (self.key,))


class CorruptValue(Exception):
    """An input arrived with padding that does not match its digest."""


@dataclass(frozen=True)
class Control:
    """What every task is told about the run's fault (a small argument).

    ``dir``: the run's scratch directory (markers, barriers);
    ``victim``: the task whose first attempt the fault targets;
    ``victim_child``: the worker fault's: the victim's child that holds
    while its parent is blocked in ``get`` on it ("" when the victim holds
    itself);
    ``doomed_node``: the node fault's: the node where the victim holds, and
    every task once ``armed`` exists, until the node is killed."""

    dir: str
    victim: str = ""
    victim_child: str = ""
    doomed_node: str = ""


def _pattern(value: int, size: int) -> bytes:
    return (value.to_bytes(8, "big") * (size // 8 + 1))[:size]


def _blob(value: int, size: int) -> tuple[int, bytes]:
    """An object of ``size`` bytes carrying ``value``."""
    return (value, _pattern(value, size))


def _value(blob: Any) -> int:
    """The digest an input carries; its padding must match it."""
    if not (isinstance(blob, tuple) and len(blob) == 2 and isinstance(blob[0], int) and isinstance(blob[1], bytes)):
        raise CorruptValue(f"an input is not a (digest, padding) pair: {type(blob).__name__}")
    if blob[1] != _pattern(blob[0], len(blob[1])):
        raise CorruptValue(f"an input's padding ({len(blob[1])} bytes) does not match its digest {blob[0]:#x}")
    return blob[0]


def _touch(path: str, text: str = "") -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _wait_for_go(ctl: Control) -> None:
    deadline = time.monotonic() + HOLD_LIMIT
    go = os.path.join(ctl.dir, "go")
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.005)


def _enter(ctl: Control, key: str) -> None:
    """Record this execution (its key, pid and node) and hold where the
    run's fault wants this task mid-flight."""
    pid = os.getpid()
    node = ray.get_runtime_context().get_node_id()
    _touch(os.path.join(ctl.dir, "x", f"{key}.{pid}.{time.monotonic_ns()}"), node)
    if os.path.exists(os.path.join(ctl.dir, "go")):
        return  # the fault is in: retries run on
    if ctl.doomed_node:
        # the node fault: the victim there, or (without one) once armed every task there
        hold = node == ctl.doomed_node and (key == ctl.victim if ctl.victim else
                                            os.path.exists(os.path.join(ctl.dir, "armed")))
    elif ctl.victim_child:
        hold = key == ctl.victim_child  # its parent is (about to be) blocked in get on it
    else:
        hold = key == ctl.victim
    if hold:
        _touch(os.path.join(ctl.dir, "hold", f"{key}.{pid}"), str(pid))
        _wait_for_go(ctl)


def _compute(ctl: Control, model: VTask | VChild, inputs: tuple) -> tuple[int, bytes]:
    """``VerifyExecutor``'s task model, as a real task runs it."""
    _enter(ctl, model.key)
    values = tuple(_value(x) for x in inputs)
    time.sleep(model.duration)
    if model.raises:
        raise DesignedFailure(model.key)
    if not model.children:
        return _blob(digest(model.key, values), model.size)
    refs = [_child.remote(ctl, ch) for ch in model.children]
    if model.key == ctl.victim and ctl.victim_child and not os.path.exists(os.path.join(ctl.dir, "go")):
        _touch(os.path.join(ctl.dir, "hold", f"{model.key}.{os.getpid()}"), str(os.getpid()))
    # in order: the first child's error is the parent's, as in the simulator
    kids = tuple(_value(ray.get(r)) for r in refs)
    return _blob(digest(model.key, values, kids), model.size)


@ray.remote
def _task(ctl: Control, model: VTask, *inputs):
    return _compute(ctl, model, inputs)


# (VerifyExecutor's children: half a CPU, retried without limit)
@ray.remote(num_cpus=0.5, max_retries=-1)
def _child(ctl: Control, model: VChild):
    return _compute(ctl, model, ())


class _Actor:
    """``VActor``: one chain per caller, from the initial state."""

    def __init__(self, ctl: Control, key: str) -> None:
        _touch(os.path.join(ctl.dir, "i", f"{key}.{os.getpid()}.{time.monotonic_ns()}"),
               ray.get_runtime_context().get_node_id())
        self.state = {"": digest("init", key, ())}

    def m(self, ctl: Control, call: VCall, caller: int, *inputs):
        _enter(ctl, call.key)
        values = tuple(_value(x) for x in inputs)
        time.sleep(call.duration)
        state = self.state
        link = digest(state.get(caller, state[""]), call.key, values)
        self.state = {**state, caller: link}
        return _blob(link, call.size)


_RealActor = ray.remote(_Actor)
