"""What ran on a node's workers, and when: the source of ``penumbra.timeline()``.

Theory of operation
-------------------
Each ``NodeMachine`` keeps a ``Timeline``: one ``TaskRun`` per execution that
ended on one of its workers (a task, an actor creation, an actor call), kept
when the node handles the ending event -- ``TaskFinished``, ``TaskRaised`` or
``WorkerCrashed``.  Both drivers feed the node these same events, so a
simulated run and a real one yield the same records: only the clock differs
(virtual seconds in the simulator, the daemon's ``trio`` clock on the real
runtime; the reader converts, see ``penumbra.api.timeline``).

A run's bar is the ``span`` its driver measured (``TaskFinished.span``: when
the worker began and ended it, on the node's clock), else ``(now -
duration, now)``.  A crashed run has no such measure: its bar starts when
the node handed it to the worker (a task) or is empty at the crash (an actor
call, which may have waited behind others on the worker).

Rules:

* bounded memory: the last ``limit`` runs (``NodeConfig.timeline_limit``);
  older ones are dropped first; ``limit=0`` keeps none;
* recording decides nothing: no command depends on it, so it cannot change
  what a machine does (nor a simulation's trace).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

from .ids import TaskId
from .specs import TaskSpec

__all__ = ["TaskRun", "Timeline", "NodeRuns"]


class TaskRun(NamedTuple):
    """One execution on a worker.  Times are on the node's clock (seconds).

    ``kind`` is ``"task"``, ``"actor_creation"`` or ``"actor_call"``;
    ``status`` is ``"ok"``, an ``ErrorKind`` value (``"task_error"``,
    ``"task_cancelled"`` ...) or ``"worker_crashed"``."""

    start: float
    end: float
    worker_id: str
    task_id: TaskId
    name: str
    job_id: int
    attempt: int
    kind: str
    status: str


class Timeline:
    """The last ``limit`` ``TaskRun``s of a node, oldest first."""

    __slots__ = ("runs", "limit", "recorded")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"timeline_limit must be >= 0 (0 keeps no runs), got {limit!r}")
        self.limit = limit
        self.runs: deque[TaskRun] = deque(maxlen=limit)
        self.recorded = 0  # runs ever recorded (those dropped included)

    def record(self, spec: TaskSpec, attempt: int, worker_id: str, start: float, end: float, status: str) -> None:
        if not self.limit:
            return
        if spec.actor_id is not None:
            kind, name = "actor_call", spec.display_name()  # Class.method
        elif spec.actor_creation is not None:
            kind, name = "actor_creation", spec.display_name()  # Class.__init__
        else:
            # the function's own name (as its output's prefix), not its module's
            kind, name = "task", spec.name or spec.function.name.rsplit(".", 1)[-1]
        if end < start:
            end = start
        self.runs.append(TaskRun(start, end, worker_id, spec.task_id, name, spec.job_id, attempt, kind, status))
        self.recorded += 1

    def __len__(self) -> int:
        return len(self.runs)

    def snapshot(self) -> list[TaskRun]:
        return list(self.runs)


@dataclass
class NodeRuns:
    """One node's runs, as a driver collected them, and how to put them on
    one axis: ``start + offset`` (seconds; the wall clock on the real
    runtime, virtual seconds in the simulator, where ``offset`` is 0).
    ``recorded`` counts every run the node ever kept, ``limit`` how many
    it keeps (the rest were dropped, oldest first)."""

    node_id: str
    runs: list
    offset: float = 0.0
    recorded: int = 0
    limit: int = 0
