"""A violation: what a checker found wrong with a run.

Every checker (``checkers``, ``quiet_checks``) returns a list of these;
``_fmt`` shows a recorded result (``("v", value)`` or ``("e", kind,
message)``) in their messages.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Violation"]


@dataclass(frozen=True, slots=True)
class Violation:
    checker: str
    what: str
    key: str = ""  # the workload item concerned, if any

    def __str__(self) -> str:
        return f"[{self.checker}] {self.what}"


def _fmt(r: tuple) -> str:
    if r[0] == "v":
        return f"value {r[1]:#x}" if isinstance(r[1], int) else f"value {r[1]!r}"
    return f"{r[1].value}: {r[2]}" if r[2] else r[1].value  # (the swarm records most errors' kinds only)
