"""The small rules the actor parts share: kept below all three.

The router (core/actor_router.py), the host (core/actor_host.py) and the
manager (core/actor_manager.py) agree on where an actor's checkpoint is kept
in the GCS key-value table (``checkpoint_key``), how the actor states rank
(a row never goes back to a lower rank: ``_rank``) and the error a cancelled
call fails with (``_cancelled``).  These live here so that none of the three
imports another (see core/actors.py for how they cooperate).
"""

from __future__ import annotations

from .ids import ActorId
from .records import ActorState, ErrorInfo, ErrorKind
from .specs import TaskSpec

__all__ = ["checkpoint_key"]


def checkpoint_key(actor_id: ActorId) -> str:
    return f"checkpoint:{actor_id.hex()}"


def _cancelled(spec: TaskSpec) -> ErrorInfo:
    name = spec.display_name()
    return ErrorInfo(ErrorKind.TASK_CANCELLED, f"task {name} was cancelled", task_name=name)


def _rank(state: ActorState) -> int:
    return {ActorState.PENDING: 0, ActorState.RESTARTING: 0, ActorState.ALIVE: 1, ActorState.DEAD: 2}[state]
