"""Which GPUs, by index, the tasks and actors of a node hold.

Theory of operation
-------------------
The scheduler counts GPUs like any resource, as fixed-point units
(``ResourceSet``).  A program also needs to know *which* GPUs are its own
(``get_gpu_ids()``, ``CUDA_VISIBLE_DEVICES``), so the node also hands out
GPU *instances*, as Ray does:

* a node with ``num_gpus=N`` has instances ``0 .. ceil(N)-1``, each of one
  GPU (the last one of the fraction left, if ``N`` is not whole);
* a request of a whole number of GPUs takes that many instances that are
  entirely free, lowest indices first;
* a fractional request (below one GPU) takes room on the first instance
  with enough left, so fractional tasks pack onto one GPU before spreading;
* a request above one GPU that is not whole takes whole instances plus room
  for the fraction on another one.

An instance assignment can fail even when the unit count says the GPUs are
there (two half-used GPUs do not make one free GPU): the scheduler then
leaves the task queued, exactly as if the units were short.

What a worker holds is keyed by the worker: a task's instances go back when
it ends; an actor creation's stay with the worker, which is now the actor,
until the actor's worker is gone.
"""

from __future__ import annotations

from .specs import UNIT

__all__ = ["GpuInstances"]

Picks = tuple[tuple[int, int], ...]  # (instance index, units taken)


class GpuInstances:
    def __init__(self, total_units: int) -> None:
        whole, rest = divmod(total_units, UNIT)
        self.capacity: list[int] = [UNIT] * whole + ([rest] if rest else [])
        self.free: list[int] = list(self.capacity)
        self.held: dict[str, Picks] = {}

    def pick(self, units: int) -> Picks | None:
        """Instances for a request of ``units`` (None: none fit right now)."""
        if units <= 0:
            return ()
        whole, rest = divmod(units, UNIT)
        free = self.free
        picks: list[tuple[int, int]] = []
        if whole:
            for i, f in enumerate(free):
                if f == UNIT:
                    picks.append((i, UNIT))
                    if len(picks) == whole:
                        break
            if len(picks) < whole:
                return None
        if rest:
            taken = {i for i, _ in picks}
            for i, f in enumerate(free):
                if i not in taken and f >= rest:
                    picks.append((i, rest))
                    break
            else:
                return None
        return tuple(picks)

    def take(self, owner: str, picks: Picks) -> None:
        if not picks:
            return
        for i, u in picks:
            self.free[i] -= u
        self.held[owner] = picks

    def give_back(self, owner: str) -> None:
        for i, u in self.held.pop(owner, ()):
            self.free[i] += u

    def ids_of(self, owner: str) -> tuple[int, ...]:
        return tuple(i for i, _ in self.held.get(owner, ()))

    def validate(self) -> None:
        used = [0] * len(self.capacity)
        for picks in self.held.values():
            for i, u in picks:
                used[i] += u
        for i, cap in enumerate(self.capacity):
            assert 0 <= self.free[i] <= cap, f"GPU {i}: {self.free[i]} units free of {cap}"
            assert self.free[i] + used[i] == cap, f"GPU {i}: free {self.free[i]} + held {used[i]} != {cap}"
