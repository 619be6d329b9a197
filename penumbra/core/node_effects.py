"""The effects a node's roles emit on the node's behalf, below the roles.

The local scheduler (core/scheduler.py), the actor host and router
(core/actor_host.py, core/actor_router.py) and the placement group bundle
holder are parts of one ``NodeMachine``.  What they share -- writing and
reading the GCS through the node's client, recording task outputs (and
failing them with an error), adding a line to a task's story, reporting an
actor's creation -- lives here, in ``NodeEffects``, a base class of
``NodeMachine``: the roles call these methods on the node they are handed,
and name the node's type as ``NodeEffects``, so no role imports
``core/node.py`` (which imports them all) and the imports run one way.

``NodeEffects`` holds no state of its own: it declares the node's attributes
these methods use, which ``NodeMachine.__init__`` sets.  The sibling roles
(``scheduler``, ``host``, ``router``, ``bundles``) are typed loosely here,
as ``Any``: their modules sit above this one.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable

from .gcs_client import GcsClient
from .ids import ObjectId, TaskId
from .messages import ActorReported, Command, Evict
from .objects import ObjectManager
from .records import ActorEntry, ErrorInfo
from .specs import TaskSpec
from .tables import FinishTask, Unsubscribe

__all__ = ["NodeEffects"]

_STORY_TEXTS = 256  # distinct story lines a node shares (``story_add``)


class NodeEffects:
    """What a node does on its roles' behalf (a base of ``NodeMachine``)."""

    # set by ``NodeMachine.__init__``
    node_id: str
    address: str
    head: str
    config: Any  # a NodeConfig (core/node.py): story_limit is read here
    gcs: GcsClient
    objects: ObjectManager
    stories: OrderedDict[TaskId, list]  # flat: see ``story_add``
    story_texts: dict[str, str]  # one copy of each common story line (``story_add``)
    ended_jobs: set[int]
    # the sibling roles (their modules import this one: typed loosely)
    scheduler: Any  # LocalScheduler, core/scheduler.py
    host: Any  # ActorHost, core/actor_host.py
    router: Any  # ActorRouter, core/actor_router.py
    bundles: Any  # BundleHolder, core/placement.py

    def gcs_write(self, op, token: Hashable, now: float, sid: str) -> list[Command]:
        if type(op) is Unsubscribe:
            # the last version seen of a key we stop following: kept, it
            # would grow with every object this node ever waited for
            self.gcs.forget(op.table, op.key)
        return self.gcs.write(op, token, now, sid)

    def gcs_read(self, query, token: Hashable, now: float, sid: str) -> list[Command]:
        return self.gcs.read(query, token, now, sid)

    def story_add(self, tid: TaskId, now: float, sid: str, what: str) -> None:
        # most lines repeat ("submitted attempt=0", "running on w-3
        # attempt=0"): keep one copy of each, not one per task (a story
        # stays for up to ``story_limit`` tasks on every node); the first
        # ``_STORY_TEXTS`` distinct lines are shared, the rest kept as made
        texts = self.story_texts
        shared = texts.get(what)
        if shared is not None:
            what = shared
        elif len(texts) < _STORY_TEXTS:
            texts[what] = what
        s = self.stories.get(tid)
        if s is None:
            # one flat list a task, ``[now, sid, what, now, sid, what, ...]``
            # (``story`` pairs them up): a tuple a line was 64 more bytes
            self.stories[tid] = [now, sid, what]
            if len(self.stories) > self.config.story_limit:
                self.stories.popitem(last=False)
        else:
            s += (now, sid, what)

    def story(self, tid: TaskId) -> list[tuple[float, str, str]]:
        """What happened to ``tid`` on this node, oldest first: ``(time,
        stimulus id, what)`` a line."""
        s = self.stories.get(tid, ())
        return list(zip(s[0::3], s[1::3], s[2::3]))

    def store_outputs(self, spec: TaskSpec, outputs, attempt: int, now: float, sid: str,
                      token: Hashable = None) -> list[Command]:
        """Record a task's outputs here and in the GCS (``token``: reply
        to the owner once the GCS has the record)."""
        if self.ended_jobs and spec.job_id in self.ended_jobs and not spec.is_actor_creation:
            # its job ended while it ran: nobody can read its outputs, and
            # the GCS has forgotten (or refuses) the job's rows, so a copy
            # kept here would be listed nowhere and never freed
            self.story_add(spec.task_id, now, sid, f"outputs dropped: job {spec.job_id} ended")
            return []
        rids = spec.return_ids
        # (the usual case, outputs exactly the return ids in order, as
        # tuples, is kept as it is; anything else is filtered to them)
        if (type(outputs) is not tuple or len(outputs) != len(rids)
                or any(type(o) is not tuple or o[0] != r for o, r in zip(outputs, rids))):
            expected = set(rids)
            outputs = tuple((o, s) for o, s in outputs if o in expected)
        cmds: list[Command] = []
        admitted: list[ObjectId] = []
        # (nobody is told of any output before all of them are admitted: a
        # waiter told the first of two is ready would find it gone when the
        # second does not fit and the task fails; and the first is held
        # while the next is admitted, which must not evict it.  Found by
        # the swarm's num_returns > 1 draws)
        hold = ("outputs", spec.task_id) if len(outputs) > 1 else None
        # Copies of these outputs still here from an earlier run (a rebuild)
        # are held too: admitting an earlier output must not evict one, or
        # its Evict would delete the bytes the worker has just written for
        # it (found by the swarm's quiet-cluster tables check).
        present = [o for o, _ in outputs if o in self.objects.store.objects] if hold is not None else ()
        for oid in present:
            self.objects.store.pin(oid, hold)
        for oid, size in outputs:
            # (an actor method's output has no lineage: the store keeps it longest, see objects_store.py)
            adm, c = self.objects.add_local(oid, size, now, sid, pin=hold, record=False, resolve=False,
                                            final=spec.actor_id is not None)
            if not adm.ok:
                for a in admitted:
                    self.objects.store.remove(a)
                    cmds.append(Evict(object_id=a, stimulus_id=sid))
                for a in present:
                    self.objects.store.unpin(a, hold)
                cmds.append(Evict(object_id=oid, stimulus_id=sid))
                return cmds + self.fail_outputs(spec, adm.error, attempt, now, sid, token)
            admitted.append(oid)
            cmds += c
        for oid in present:
            self.objects.store.unpin(oid, hold)
        for oid in admitted:
            if hold is not None:
                self.objects.store.unpin(oid, hold)
            cmds += self.objects.resolve(oid, now, sid)
        cmds += self.gcs.write(FinishTask(spec.task_id, self.node_id, outputs, None, attempt, spec.actor_id, spec.job_id), token, now, sid)
        return cmds

    def fail_outputs(self, spec: TaskSpec, error: ErrorInfo, attempt: int, now: float, sid: str,
                     token: Hashable = None) -> list[Command]:
        cmds: list[Command] = []
        for oid in spec.return_ids:
            cmds += self.objects.add_error(oid, error, now, sid)
        outputs = tuple((o, 0) for o in spec.return_ids)
        cmds += self.gcs.write(FinishTask(spec.task_id, self.node_id, outputs, error, attempt, spec.actor_id, spec.job_id), token, now, sid)
        return cmds

    # (``start``: the ``ActorStart`` the task carries, core/actor_host.py)
    def actor_created(self, spec: TaskSpec, start: Any, wid: str, now: float, sid: str) -> list[Command]:
        return self.host.created(spec, start, wid, now, sid)

    def actor_creation_failed(self, spec: TaskSpec, start: Any, error: ErrorInfo, now: float, sid: str) -> list[Command]:
        entry = start.entry if start is not None else ActorEntry(spec.actor_creation, spec)
        return self.host.report(ActorReported(
            actor_id=spec.actor_creation.actor_id, incarnation=entry.incarnation, node_id=self.address,
            error=error, creation_failed=True, entry=entry, stimulus_id=sid,
        ))
