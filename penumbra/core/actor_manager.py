"""The actor manager: an actor's lifecycle, owned by the head.

Theory of operation
-------------------
``ActorManager`` (in the head) owns the lifecycle::

    PENDING --created--> ALIVE --worker or node died--> RESTARTING --> ALIVE
       |                   |                                |
       \\--constructor raised / killed / restarts used up --> DEAD

Each restart bumps ``incarnation``.  Writes are compare-and-set on the
incarnation, so a late report about an old incarnation changes nothing.  A
restart of a paper-style actor reads its checkpoint and the calls logged
since, and hands them to the new host (``StartActor``).  An actor created by
a worker dies with it (``OwnerDied``); the driver's die with its job.

The manager knows the head only as ``HeadServices`` (core/head_services.py):
it never imports core/head.py, which imports it.  How the manager, the
router (core/actor_router.py) and the host (core/actor_host.py) cooperate is
in core/actors.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from msgspec.structs import replace  # (records are Structs)

from .actor_rules import _rank, checkpoint_key
from .ids import ActorId, TaskId
from .messages import (
    ActorReported,
    KillActorRequest,
    Command,
    OwnerDied,
    Send,
    StartActor,
    StopActor,
)
from .records import ActorEntry, ActorState, ErrorInfo, ErrorKind
from .specs import TaskSpec
from .tables import (
    ActorLogRange,
    Get,
    PutActor,
    UnregisterName,
)

if TYPE_CHECKING:
    from .head_services import HeadServices

__all__ = ["ActorManager"]


@dataclass(frozen=True, slots=True)
class _SystemKill:
    """A kill by the system (its owner died, its job ended), waiting for
    the actor's row."""

    actor_id: ActorId
    why: str
    graceful: bool = False


def _owner_died(owner: str, reason: str) -> str:
    return (f"its owner, the worker {owner} that created it, died ({reason or 'no reason given'}); an actor dies "
            f"with its owner unless it is detached: create it with lifetime=\"detached\" to let it outlive its "
            f"creator")


@dataclass(slots=True)
class _Restart:
    entry: ActorEntry
    checkpoint: Any = None
    replay: tuple[TaskSpec, ...] = ()
    reads: int = 0
    seqs: tuple[tuple[str, int], ...] = ()


class ActorManager:
    def __init__(self, head: "HeadServices") -> None:
        self.head = head
        self.actors: dict[ActorId, ActorEntry] = {}
        self.restarts: dict[ActorId, _Restart] = {}
        # restarts placed (StartActor sent) whose actor is not up yet: a
        # restart sent to a node that dies is placed again
        self.starting: dict[ActorId, tuple[str, _Restart]] = {}
        self.replayed = 0  # methods replayed in all restarts (Figure 11b)
        # per actor: the incarnation last restarted with replay, and the
        # calls it replays (their lost outputs come back; see ``replays``)
        self.replaying: dict[ActorId, tuple[int, frozenset[TaskId]]] = {}
        # a recovered head (core/head_recovery.py, "Recovery"): the actors PENDING
        # when it read the table, whose creation the old head may have
        # placed already (see ``on_creation_lost``)
        self.adopted_pending: set[ActorId] = set()

    # ------------------------------------------------------------------ adoption
    def adopt(self, rows, now: float, sid: str) -> None:
        """A recovering head read the actor table: track every row.  ALIVE
        on a live node needs nothing more; ALIVE on a dead node is
        restarted by ``on_node_dead``; RESTARTING by ``adopt_restarts``;
        PENDING ones are created by their creation task, wherever the task
        table says it is (lost with a node: ``on_creation_lost``)."""
        for e in rows:
            self.on_entry(e.spec.actor_id, e)
        self.adopted_pending = {aid for aid, e in self.actors.items() if e.state is ActorState.PENDING}

    def adopt_restarts(self, now: float, sid: str) -> list[Command]:
        """Restarts the old head had begun (rows RESTARTING): it may have
        sent StartActor already, or not; we cannot know.  Restart again
        under a new incarnation, which fences a start still on its way
        (its ALIVE write expects the old incarnation; a host that created
        it sees the row move past it and stops).  The restart was counted
        once, by the old head: the budget is not spent again."""
        cmds: list[Command] = []
        for aid, e in sorted(self.actors.items()):
            if e.state is ActorState.RESTARTING and aid not in self.restarts and aid not in self.starting:
                cmds += self._fence_and_place(e, now, sid)
        return cmds

    def _fence_and_place(self, e: ActorEntry, now: float, sid: str) -> list[Command]:
        aid = e.spec.actor_id
        new = replace(e, node="", incarnation=e.incarnation + 1)
        self.actors[aid] = new
        self.restarts[aid] = _Restart(new)
        return self.head.gcs.write(PutActor(new, expect_incarnation=e.incarnation),
                                   ("actor-fenced", aid, new.incarnation), now, sid)

    def on_fenced_written(self, aid: ActorId, incarnation: int, stored: ActorEntry | None, now: float,
                          sid: str) -> list[Command]:
        """The fencing write came back with the stored row: placed as a
        restart if it took; else the row moved on (killed, say) and wins."""
        if stored is None or stored.incarnation != incarnation:
            r = self.restarts.get(aid)
            if r is not None and r.entry.incarnation == incarnation:
                del self.restarts[aid]
            if stored is not None:
                self.actors[aid] = stored  # (the table's row, whatever we thought)
            return []
        return self.on_restarting_written(aid, incarnation, now, sid)

    def replays(self, aid: ActorId, incarnation: int, tid: TaskId) -> bool:
        """Does incarnation ``incarnation`` of ``aid`` replay call ``tid``?"""
        inc, calls = self.replaying.get(aid, (-1, frozenset()))
        return inc == incarnation and tid in calls

    def on_entry(self, aid: ActorId, entry: ActorEntry | None) -> None:
        if entry is None:
            return
        old = self.actors.get(aid)
        if old is None or (entry.incarnation, _rank(entry.state)) >= (old.incarnation, _rank(old.state)):
            self.actors[aid] = entry
            if entry.state is ActorState.ALIVE or entry.state is ActorState.DEAD:
                self.starting.pop(aid, None)

    def on_node_dead(self, node: str, now: float, sid: str) -> list[Command]:
        cmds: list[Command] = []
        # the workers of the dead node died with it: the actors they own die
        # too (first: an owned actor hosted there is not restarted)
        prefix = node + "/w"  # (worker ids are "<node>/w<n>"; drivers own nothing here)
        for aid, e in sorted(self.actors.items()):
            if e.owner.startswith(prefix) and not e.spec.detached and e.state is not ActorState.DEAD:
                cmds += self.kill(aid, True, now, sid, why=_owner_died(e.owner, f"its node {node} died"))
        for aid, e in sorted(self.actors.items()):
            if e.node == node and e.state is ActorState.ALIVE:
                cmds += self._restart_or_die(e, ErrorInfo(ErrorKind.ACTOR_DIED, f"the node {node} hosting the actor died", task_name=e.spec.cls.name), now, sid)
        # restarts sent to the dead node that had not come up: place them again
        for aid, (to, r) in sorted(self.starting.items()):
            e = self.actors.get(aid)
            if to == node and e is not None and e.state in (ActorState.PENDING, ActorState.RESTARTING) and e.incarnation == r.entry.incarnation:
                del self.starting[aid]
                self.restarts[aid] = r
                cmds += self._place(r, now, sid)
        return cmds

    def on_creation_lost(self, spec: TaskSpec, now: float, sid: str) -> list[Command]:
        """The first creation task was queued on a node that died: place it
        again.  (Only while the actor was never created: the task row of a
        creation stays pending on its node, so when the node of a live actor
        dies this is called too, and ``on_node_dead`` restarts that actor;
        placing it here as well would start a second copy.)"""
        e = self.actors.get(spec.actor_creation.actor_id)
        if e is None or e.state is not ActorState.PENDING:
            return []
        if e.spec.actor_id in self.adopted_pending:
            # found by a recovered head: the old one may have placed it
            # already (StartActor on its way): fence that start
            self.adopted_pending.discard(e.spec.actor_id)
            if e.spec.actor_id in self.restarts:
                return []
            return self._fence_and_place(e, now, sid)
        return self._place(_Restart(e), now, sid)

    def on_reported(self, ev: ActorReported, now: float, reread: bool = False) -> list[Command]:
        e = self.actors.get(ev.actor_id)
        if e is None and ev.entry is not None:
            e = self.actors[ev.actor_id] = ev.entry  # the table's notice is late
        if (e is None or e.incarnation < ev.incarnation) and not reread:
            # the table's notice of this actor (or of this incarnation) has
            # not reached us yet: read the row, then decide (ignoring the
            # report would leave a dead actor ALIVE in the table for good)
            return self.head.gcs.read(Get("actors", ev.actor_id), ("actor-reread", ev), now, ev.stimulus_id)
        if e is None or e.incarnation != ev.incarnation or e.state is ActorState.DEAD:
            return []
        if ev.creation_failed:
            return self._die(e, ev.error, now, ev.stimulus_id)
        return self._restart_or_die(e, ev.error, now, ev.stimulus_id)

    def on_reread(self, ev: Any, row: ActorEntry | None, now: float, sid: str) -> list[Command]:
        """The row ``on_reported`` or ``kill`` asked for; decide again, once."""
        self.on_entry(ev.actor_id, row)
        if type(ev) is ActorReported:
            return self.on_reported(ev, now, reread=True)
        if type(ev) is _SystemKill:
            return self.kill(ev.actor_id, True, now, sid, reread=True, why=ev.why, graceful=ev.graceful)
        return self.kill(ev.actor_id, ev.no_restart, now, sid, reread=True)

    def on_owner_died(self, ev: OwnerDied, now: float) -> list[Command]:
        """The worker ``ev.owner`` died: the non-detached actors it created
        die with it, whatever their ``max_restarts`` (Ray's fate sharing:
        an actor's owner is the worker that created it)."""
        why = _owner_died(ev.owner, ev.reason)
        cmds: list[Command] = []
        for aid in ev.actor_ids:
            cmds += self.kill(aid, True, now, ev.stimulus_id, why=why)
        return cmds

    def kill(self, aid: ActorId, no_restart: bool, now: float, sid: str, reread: bool = False,
             why: str | None = None, graceful: bool = False) -> list[Command]:
        """Stop the actor: ``penumbra.kill`` (``why`` None), or its owner
        died or its job ended (``why`` says so; the actor is never restarted
        then).  ``graceful``: its ``__ray_shutdown__`` runs first."""
        e = self.actors.get(aid)
        if e is None and not reread:
            # an actor created a moment ago: its row's notice is on its way
            ev = _SystemKill(aid, why, graceful) if why else KillActorRequest(actor_id=aid, no_restart=no_restart, stimulus_id=sid)
            return self.head.gcs.read(Get("actors", aid), ("actor-reread", ev), now, sid)
        if e is None or e.state is ActorState.DEAD:
            return []
        cmds: list[Command] = []
        if e.node:
            cmds.append(Send(to=e.node, msg=StopActor(actor_id=aid, incarnation=e.incarnation,
                                                      reason=why or "killed by penumbra.kill()", graceful=graceful,
                                                      stimulus_id=sid)))
        if no_restart:
            return cmds + self._die(e, ErrorInfo(ErrorKind.ACTOR_DIED, why or "it was killed by penumbra.kill()",
                                                 task_name=e.spec.cls.name), now, sid, graceful=graceful)
        return cmds + self._restart_or_die(e, ErrorInfo(ErrorKind.ACTOR_DIED, "it was killed by penumbra.kill(no_restart=False)", task_name=e.spec.cls.name), now, sid)

    def on_job_finished(self, job_id: int, now: float, sid: str) -> list[Command]:
        cmds: list[Command] = []
        for aid, e in sorted(self.actors.items()):
            if e.creation.job_id == job_id and e.state is not ActorState.DEAD and not e.spec.detached:
                # a graceful end, as in Ray: the actor's __ray_shutdown__ runs
                cmds += self.kill(aid, True, now, sid, why=f"its job {job_id} ended (its driver exited)", graceful=True)
        return cmds

    def _die(self, e: ActorEntry, cause: ErrorInfo, now: float, sid: str, graceful: bool = False) -> list[Command]:
        dead = replace(e, state=ActorState.DEAD, death_cause=cause, graceful=graceful)
        self.actors[e.spec.actor_id] = dead
        self.restarts.pop(e.spec.actor_id, None)
        gcs = self.head.gcs
        cmds = gcs.write(PutActor(dead), None, now, sid)
        if e.spec.name:
            cmds += gcs.write(UnregisterName(e.spec.namespace, e.spec.name, e.spec.actor_id), None, now, sid)
        return cmds

    def _restart_or_die(self, e: ActorEntry, cause: ErrorInfo, now: float, sid: str) -> list[Command]:
        limit = e.spec.max_restarts
        if not (limit < 0 or e.restarts < limit):
            if limit:
                cause = replace(cause, message=f"{cause.message}; it was restarted {e.restarts} times (max_restarts={limit})")
            return self._die(e, cause, now, sid)
        new = replace(e, state=ActorState.RESTARTING, node="", incarnation=e.incarnation + 1, restarts=e.restarts + 1)
        self.actors[e.spec.actor_id] = new
        self.restarts[e.spec.actor_id] = _Restart(new)
        # Nothing more until the GCS has the new row: from then on the old
        # instance can neither log a call (its appends name the old
        # incarnation) nor come alive, so the log read below is final.  Read
        # earlier, a call the old instance logged (and released) after the
        # read would be missing from the replay (swarm seed 193).
        return self.head.gcs.write(PutActor(new), ("actor-restarting", e.spec.actor_id, new.incarnation), now, sid)

    def on_restarting_written(self, aid: ActorId, incarnation: int, now: float, sid: str) -> list[Command]:
        r = self.restarts.get(aid)
        if r is None or r.entry.incarnation != incarnation:
            return []
        if not r.entry.spec.replay:
            return self._place(r, now, sid)
        # read the checkpoint, then the calls logged since it
        r.reads = 1
        return self.head.gcs.read(Get("kv", checkpoint_key(aid)), ("actor-ckpt", aid, incarnation), now, sid)

    def on_checkpoint_read(self, aid: ActorId, incarnation: int, value: Any, now: float, sid: str) -> list[Command]:
        r = self.restarts.get(aid)
        if r is None or r.entry.incarnation != incarnation:
            return []
        start = 0
        if value is not None:
            start, payload = value[0], value[1]
            r.checkpoint = payload
            r.seqs = tuple(value[2]) if len(value) > 2 else ()
        r.entry = replace(r.entry, checkpoint_index=start)
        return self.head.gcs.read(ActorLogRange(aid, start, start + 1_000_000), ("actor-log", aid, incarnation), now, sid)

    def on_log_read(self, aid: ActorId, incarnation: int, entries: tuple, now: float, sid: str) -> list[Command]:
        r = self.restarts.get(aid)
        if r is None or r.entry.incarnation != incarnation:
            return []
        r.replay = tuple(e.spec for e in entries if e is not None)
        self.replayed += len(r.replay)
        self.replaying[aid] = (incarnation, frozenset(s.task_id for s in r.replay))
        return self._place(r, now, sid)

    def _place(self, r: _Restart, now: float, sid: str) -> list[Command]:
        aid = r.entry.spec.actor_id

        def placed(node: str, now: float, sid: str) -> list[Command]:
            self.restarts.pop(aid, None)
            cur = self.actors.get(aid)
            if cur is None or cur.incarnation != r.entry.incarnation or cur.state is ActorState.DEAD:
                return []
            if cur.state is not ActorState.ALIVE:
                self.starting[aid] = (node, r)
            return [Send(to=node, msg=StartActor(entry=r.entry, replay=r.replay, checkpoint=r.checkpoint, seqs=r.seqs, stimulus_id=sid))]

        return self.head.scheduler.submit(r.entry.creation, 0, now, sid, on_placed=placed)

    def validate(self) -> None:
        for aid, e in self.actors.items():
            assert e.spec.actor_id == aid
            assert e.restarts <= e.spec.max_restarts or e.spec.max_restarts < 0
