"""What the head's roles ask of the head, below the roles.

The actor manager (core/actor_manager.py), lineage recovery
(core/lineage.py) and the placement group manager (core/placement.py) are
parts of one ``HeadMachine`` (core/head.py), which imports them all.  They
call back into the head for a few shared things: its GCS client, its global
scheduler, its actor manager, the nodes it declared dead, the jobs that
ended, the stories, and two small services (``watch_task``, ``job_over``).
Those services live here, in ``HeadServices``, a base class of
``HeadMachine``; the roles name the head's type as ``HeadServices``, so none
of them imports core/head.py and the imports run one way.

``HeadServices`` holds no state of its own: it declares the head's
attributes the roles use, which ``HeadMachine.__init__`` sets.  The roles
themselves (``scheduler``, ``actors``) are typed loosely here, as ``Any``:
their modules sit above this one.
"""

from __future__ import annotations

from typing import Any, Hashable

from .gcs_client import GcsClient
from .ids import TaskId
from .messages import Command
from .tables import Subscribe

__all__ = ["HeadServices"]


class HeadServices:
    """What the head does on its roles' behalf (a base of ``HeadMachine``)."""

    # set by ``HeadMachine.__init__``
    address: str
    gcs: GcsClient
    dead_nodes: Any  # DeadNodes (core/dead_nodes.py): ``in``, ``add``, iteration
    watched_tasks: set[TaskId]
    stories: dict[Hashable, list]
    ended_jobs: set[int]
    # the roles (their modules import this one: typed loosely)
    scheduler: Any  # GlobalScheduler, core/global_scheduler.py
    actors: Any  # ActorManager, core/actor_manager.py

    def watch_task(self, tid: TaskId, now: float, sid: str) -> list[Command]:
        """Follow a re-executed task until it ends (to end its rebuild)."""
        if tid in self.watched_tasks:
            return []
        self.watched_tasks.add(tid)
        return self.gcs.write(Subscribe(self.address, "tasks", tid), None, now, sid)

    def job_over(self, spec) -> bool:
        """``spec`` is a task of a job that ended (a detached actor's
        creation excepted): it must not run, be retried or be rebuilt."""
        if spec.job_id not in self.ended_jobs:
            return False
        a = spec.actor_creation
        return a is None or not a.detached
