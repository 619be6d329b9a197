"""What the local scheduler keeps of each task and worker, and their states.

The local scheduler (core/scheduler.py) moves a task through the states
below (its theory of operation is there) and keeps one record per task it
holds (``_Task``) and per worker of its pool (``_Worker``).  They live here,
below the scheduler and the resource lending it inherits
(core/scheduler_lending.py), so both can name them.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Set as AbstractSet
from typing import Any

from .ids import ObjectId, TaskId
from .specs import EMPTY, ResourceSet, TaskSpec


NO_INPUTS: frozenset = frozenset()  # (shared; an empty frozenset is not a singleton)

# task states
WAITING = "waiting"
LOCATING = "locating"
READY = "ready"
RUNNING = "running"


@dataclass(slots=True, eq=False)
class _Task:
    spec: TaskSpec
    state: str
    attempt: int = 0
    placed: bool = False
    # inputs not here yet: the shared empty frozenset when none (a task's
    # own empty set was 216 bytes, one per task held); a set of its own
    # while some are missing (``discard``-ed as they arrive)
    missing: AbstractSet[ObjectId] = NO_INPUTS
    worker: str | None = None
    started_at: float = 0.0
    cancelled: bool = False
    reconstruction: bool = False
    actor: Any = None  # for actor creation: (ActorEntry, replay specs)
    errors: dict | None = None  # inputs that arrived holding errors


# worker states
STARTING = "starting"
IDLE = "idle"
BUSY = "busy"
ACTOR = "actor"
LEASED = "leased"  # lent to a submitter (core/lease_host.py): holds its lease's resources


@dataclass(slots=True, eq=False)
class _Worker:
    worker_id: str
    state: str
    task: TaskId | None = None
    held: ResourceSet = EMPTY
    lent: ResourceSet = EMPTY
    blocked: bool = False
