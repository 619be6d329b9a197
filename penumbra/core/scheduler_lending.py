"""Lending the local scheduler's resources to actors and placement groups.

Theory of operation
-------------------
A node's free resources (``available``) are the local scheduler's; two
other roles of the node take from them for longer than a task runs:

* an **actor** holds its resources for its lifetime (``acquire_or_borrow``:
  what is not free at that moment becomes ``debt``, repaid first by the
  next releases), and gives them back with ``release`` when it ends;
* a **placement group bundle** is set apart when prepared (``set_apart``,
  counted in ``bundled``), returned if the attempt fails (``give_back``),
  and, committed, appears under the group's names (``grant``); a removed
  group's names leave the pool and its tasks are killed or failed
  (``revoke_group``), and what its workers held is dropped when they come
  back (``gone``).

These methods form ``ResourceLending``, a base class of ``LocalScheduler``
(core/scheduler.py), which sets the state they use and checks the
invariant, ``available + sum(held - lent) - debt == total``, in
``validate()``.
"""

from __future__ import annotations

from typing import Any

from .messages import Command, KillWorker
from .placement import group_of_request, is_group_name, unschedulable
from .scheduler_records import BUSY, RUNNING
from .specs import ResourceSet

__all__ = ["ResourceLending"]


class ResourceLending:
    """What the node's actors and bundles take from the local scheduler's
    pool, and give back (a base of ``LocalScheduler``)."""

    # set by ``LocalScheduler.__init__``
    total: ResourceSet
    available: ResourceSet
    debt: ResourceSet
    bundled: ResourceSet
    gone: set[str]
    busy: int
    gpus: Any  # GpuInstances (core/gpus.py)
    workers: dict[str, Any]  # worker id -> _Worker (core/scheduler_records.py)
    tasks: dict[Any, Any]  # task id -> _Task

    # ------------------------------------------------------------------ actors
    def release_actor_worker(self, wid: str) -> None:
        """An actor's worker is gone for good (killed or crashed)."""
        self.gpus.give_back(wid)
        w = self.workers.pop(wid, None)
        if w is not None and w.state == BUSY:
            self.busy -= 1

    def acquire(self, req: ResourceSet) -> bool:
        if not req.is_subset_of(self.available):
            return False
        self.available = self.available - req
        return True

    def acquire_or_borrow(self, req: ResourceSet) -> ResourceSet:
        """Take ``req`` for an actor's lifetime; what is not free now becomes
        debt (the creation task just released at least as much, unless debt
        from blocked workers absorbed it)."""
        take = req.min_with(self.available)
        self.available = self.available - take
        self.debt = self.debt + (req - take)
        return req

    def release(self, req: ResourceSet) -> None:
        give = self._drop_gone(req) if self.gone else req
        if not self.debt.is_empty():
            pay = give.min_with(self.debt)
            self.debt = self.debt - pay
            give = give - pay
        self.available = self.available + give

    # ------------------------------------------------------------------ placement groups
    def _drop_gone(self, r: ResourceSet) -> ResourceSet:
        gone = self.gone
        return r.only([n for n in r.names() if n not in gone])

    def set_apart(self, res: ResourceSet) -> bool:
        """Prepare a bundle: take ``res`` out of the free pool if it fits."""
        if not res.is_subset_of(self.available):
            return False
        self.available = self.available - res
        self.bundled = self.bundled + res
        return True

    def give_back(self, res: ResourceSet, now: float, sid: str) -> list[Command]:
        """A prepared or released bundle's resources return to the pool."""
        self.bundled = self.bundled - res
        self.release(res)
        return self.dispatch(now, sid)

    def grant(self, granted: ResourceSet, now: float, sid: str) -> list[Command]:
        """Commit a bundle: its resources appear under the group's names."""
        self.total = self.total + granted
        self.available = self.available + granted
        return self.dispatch(now, sid)

    def revoke_group(self, pg: str, now: float, sid: str) -> list[Command]:
        """Group ``pg`` is removed: its names leave the total and the free
        pool, its running tasks are killed (cancelled) and its queued ones
        fail; what its workers hold is dropped when they come back."""
        names = [n for n in self.total.names() if is_group_name(n, pg)]
        if not names:
            return []
        self.total = self.total - self.total.only(names)
        self.available = self.available - self.available.only(names)
        self.debt = self.debt - self.debt.only(names)
        self.gone.update(names)
        cmds: list[Command] = []
        for tid, t in list(self.tasks.items()):
            if group_of_request(t.spec.resources) != pg:
                continue
            if t.state == RUNNING:
                if not t.cancelled:
                    t.cancelled = True
                    self._story(tid, now, sid, f"killed: placement group {pg} was removed")
                    cmds.append(KillWorker(worker_id=t.worker, reason=f"placement group {pg} was removed", stimulus_id=sid))
            else:
                cmds += self._fail(t, unschedulable(t.spec, f"its placement group {pg} was removed"), now, sid,
                                   f"placement group {pg} removed")
        return cmds
