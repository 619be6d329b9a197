"""Actors: placement and restart, ordered calls, replay.

Theory of operation
-------------------
Three parts cooperate through the GCS actor table (``ActorEntry`` rows):

``ActorManager`` (in the head) owns the lifecycle::

    PENDING --created--> ALIVE --worker or node died--> RESTARTING --> ALIVE
       |                   |                                |
       \\--constructor raised / killed / restarts used up --> DEAD

  Each restart bumps ``incarnation``.  Writes are compare-and-set on the
  incarnation, so a late report about an old incarnation changes nothing.

``ActorRouter`` (in every node) sends a client's method calls to the node
hosting the actor, as the actor's row says.  It remembers every call that is
not yet *resolved* (ran, or failed), so when the row changes it can act:

  * ALIVE (new incarnation): send buffered calls; calls that were in flight
    to the old incarnation are re-sent if ``max_task_retries`` allows, and
    otherwise fail with ``ActorDiedError`` (at most once, Ray's default);
  * RESTARTING: hold new calls; fail (or keep, to retry) in-flight ones;
  * DEAD: fail every pending call with the death cause.

``ActorHost`` (in the node that runs the actor) executes calls *in order per
caller*: a call runs only when its sequence number is the next one expected
from its caller.  A caller that appears for the first time in an incarnation
starts at the ``floor`` its node sends with each call (the caller's lowest
unresolved sequence number), so calls given up on by the caller do not leave
a gap that would stall the actor.  ``max_concurrency`` calls may run at once.

Paper-style recovery (``ActorSpec.replay``): the host logs each executed call
in the GCS (``AppendActorLog``), and checkpoints every
``checkpoint_interval`` calls.  On restart the manager reads the checkpoint
and the calls logged since, and the new host replays them before serving new
calls: the actor's state is rebuilt along its stateful edges.

Ray's lifecycle rules on top:

  * **Cancel** of a call (``CancelTask`` at the caller's node): not sent
    yet, the router fails it; sent, the router forwards the cancel to the
    host (``CancelActorCall``), which alone knows where the call is.  Queued
    there, it is failed at once (TASK_CANCELLED) and stays in the queue as a
    tombstone that only keeps its caller's order; running (or sent ahead to
    the worker), the worker gets ``InterruptTask`` -- an async call's
    asyncio task is cancelled, a sync or threaded one runs on and sees
    ``is_canceled()`` -- and whatever it returns, the result is
    TASK_CANCELLED.  A cancelled call is never retried across a restart.
  * **Ownership** (fate sharing): an actor created by a worker (a task's or
    an actor's) is owned by that worker process; when the worker dies (its
    node tells the head: ``OwnerDied``) or its node dies, the actor is
    killed for good, whatever its ``max_restarts``.  A detached actor has no
    owner; the driver's actors die with its job.
  * **Graceful end**: when its job ends, an actor's row goes DEAD with
    ``graceful`` set, and its host runs the actor's ``__ray_shutdown__`` as
    the worker's last call before killing it (``SHUTDOWN_GRACE`` at most);
    ``__ray_terminate__`` (a call) runs it after the calls made before it
    and ends the actor once their results are recorded.  ``penumbra.kill``,
    a crash or an owner's death end the actor at once, without it.

Where the parts live
--------------------
This module gathers them (the parts' names are importable from here):

* core/actor_router.py: ``ActorRouter``, the caller side;
* core/actor_host.py: ``ActorHost`` and ``ActorStart``, the host side, and
  its constants (``PIPELINE_DEPTH``, ``SHUTDOWN_*``, ``TERMINATE_METHOD``);
* core/actor_manager.py: ``ActorManager``, the head side;
* core/actor_rules.py: what the three share (``checkpoint_key``, ...);
* core/actor_calls.py: the caller's rules (order, floors, what a row change
  does to pending calls, retries, cancel), one set for both paths below.

Direct calls (core/msg_direct.py) take the nodes off a call's path: the
caller's process (``ActorCaller``, core/actor_caller.py, the same rules as
the router) sends each call straight to the actor's worker (``ActorInbox``,
core/actor_inbox.py, the host's per-caller order and floors, plus the
results kept until the caller's floor passes them, so a call re-sent after
a lost connection runs at most once).  The node only publishes the worker's
endpoint, tells its clients of row and endpoint changes, and records what
ran (``DirectHost``, core/actor_direct.py), and stores the error of a
call its caller failed itself (``DirectCallFailed``).  ``replay=True``
actors keep the routed path; so do, from one caller, actors whose worker
it cannot reach or that publish no endpoint: ``ActorCaller`` hands their
calls to the router (never one that may have run), declaring the calls
resolved on its side (``CallsSkipped``, ``actor_calls.skip``) so the
router's order does not wait for them.

The router and the host know their node as ``NodeEffects``
(core/node_effects.py), the manager its head as ``HeadServices``
(core/head_services.py): none imports core/node.py or core/head.py.
"""

from __future__ import annotations

from .actor_host import (
    PIPELINE_DEPTH,
    SHUTDOWN_GRACE,
    SHUTDOWN_METHOD,
    TERMINATE_METHOD,
    ActorHost,
    ActorStart,
)
from .actor_manager import ActorManager
from .actor_router import ActorRouter
from .actor_rules import checkpoint_key

__all__ = [
    "ActorRouter",
    "ActorHost",
    "ActorManager",
    "ActorStart",
    "checkpoint_key",
    "PIPELINE_DEPTH",
    "SHUTDOWN_GRACE",
    "SHUTDOWN_METHOD",
    "TERMINATE_METHOD",
]
