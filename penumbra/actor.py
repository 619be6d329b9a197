"""``penumbra.actor``: Ray's ``ray.actor`` module.

``ActorHandle`` and ``ActorClass`` (for annotations and ``isinstance``),
``method``, and ``exit_actor()`` to end the actor a method runs in.
"""

from __future__ import annotations

from .api.actor import ActorClass, ActorHandle, method
from .api.context import current_runtime, task_context
from .api.execution import run_shutdown
from .core.ids import ObjectId
from .exceptions import GetTimeoutError, PenumbraError

__all__ = ["ActorClass", "ActorHandle", "exit_actor", "method"]

# How long exit_actor waits for its node to stop the worker before it gives
# up and says so (the node acts on the kill within milliseconds).
_EXIT_WAIT = 60.0
# An object no task ever makes: waiting on it is a wait that only the
# worker's own end (or the timeout) can finish, on either driver.
_NEVER = ObjectId(b"\x00" * 19 + b"\x00")


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
    rt.kill_actor(ctx.actor_id, True, exiting=ctx.task_id)
    # The node now stops this worker; block until it does, so nothing after
    # this call runs and the call's result is the actor's death, as in Ray.
    try:
        rt.get_objects([_NEVER], _EXIT_WAIT)
    except GetTimeoutError:
        pass
    raise PenumbraError(f"exit_actor(): the actor was not stopped within {_EXIT_WAIT:g} s of asking its node; "
                        "is the node overloaded or its connection lost?")
