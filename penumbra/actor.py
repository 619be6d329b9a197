"""``penumbra.actor``: Ray's ``ray.actor`` module.

``ActorHandle`` and ``ActorClass`` (for annotations and ``isinstance``),
``method``, and ``exit_actor()`` to end the actor a method runs in.
"""

from __future__ import annotations

from .api.actor import ActorClass, ActorHandle, method
from .api.context import current_runtime, task_context
from .api.execution import end_actor, run_shutdown

__all__ = ["ActorClass", "ActorHandle", "exit_actor", "method"]


def exit_actor() -> None:
    """End the actor this method runs in, for good, from inside it.

    The actor is not restarted (whatever its ``max_restarts``); the call
    that made it exit and every call queued behind it fail with
    ``ActorDiedError``; its name is freed.  Outside an actor use
    ``penumbra.kill(handle)``.

    A graceful end, as in Ray: the actor's ``__ray_shutdown__`` runs first,
    if it has one.

    Raises:
        TypeError: called outside an actor method (a driver or a task).
    """
    ctx = task_context()
    if ctx.actor_id is None:
        raise TypeError("exit_actor() can only be called inside an actor method; "
                        "to end an actor from outside it, call penumbra.kill(handle)")
    rt = current_runtime()
    run_shutdown(getattr(rt, "actor_instance", None))
    end_actor(rt, ctx.actor_id, exiting=ctx.task_id)
