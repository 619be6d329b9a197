"""A node's part in direct actor calls: endpoints, watches, and recording what ran.

Theory of operation
-------------------
On the direct path (core/msg_direct.py) a node dispatches no call: callers
send them straight to the actor's worker.  The node still does what only it
can do, in ``DirectHost``:

* **Endpoints.**  The actor's worker, once constructed, says where it takes
  calls (``ActorEndpoint``).  If the worker is the instance this node hosts
  (same incarnation, same worker), the node publishes it in the GCS
  (``PutEndpoint`` of an ``EndpointRow`` under ``endpoint_key``: a row never
  goes back to an older incarnation).
* **Watches.**  A client of this node asks to follow an actor
  (``WatchActor``); the node subscribes to the actor's row (through its
  router's book, which keeps rows monotone) and to its endpoint row, and
  sends the client ``ActorWatched`` (row and endpoint) now and at every
  change, until the row is DEAD or the client disconnects.  Asked again,
  it re-reads both.
* **What ran.**  The worker reports the calls it ran in batches
  (``DirectCallsRan``), off the critical path.  For the instance it hosts,
  the node records them as the routed completion does (``ActorHost._release``):
  outputs in its store and the GCS (``store_outputs`` / ``fail_outputs``,
  tracked in the host's ``releasing`` so a graceful end waits for their
  records), a story line and a timeline bar each.  Reports from an instance
  the node no longer hosts are dropped (a superseded instance's results are
  never recorded, as on the routed path; the callers that got its replies
  hold the values).  A caller may drop the result (``ReleaseObjects`` with
  ``free``) before the report lands: ``note_freed`` remembers such ids for a
  while, and the output is freed as soon as it is recorded.
* **What failed at the caller.**  A call its client failed itself (the
  actor died or was killed, the call was cancelled before it was sent, the
  worker could not be reached: ``ActorCaller`` decides) is never reported
  by a worker: the client says so (``DirectCallFailed``) and the node
  stores the error as its outputs, as the router does for a call it fails,
  so a process handed one of its refs finds it.
* **What a dead incarnation answered.**  A caller also sends its node the
  results an incarnation that died since answered (``DirectCallsRecorded``):
  its batched report may have died with it.  The node records them as a
  routed call's (``on_recorded``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from .actor_host import _Call
from .ids import ActorId, ObjectId
from .msg_base import Command, Send
from .msg_direct import (ActorEndpoint, ActorWatched, DirectCallFailed, DirectCallsRan, DirectCallsRecorded,
                         EndpointRow, WatchActor, endpoint_key)
from .records import ActorEntry, ActorState
from .tables import Get, KvDelete, PutEndpoint, Subscribe, Unsubscribe

if TYPE_CHECKING:
    from .node_effects import NodeEffects

__all__ = ["DirectHost", "FREED_EARLY"]

# freed-before-recorded output ids kept (see ``note_freed``)
FREED_EARLY = 4096


class DirectHost:
    """A node's direct-call role (see the module docstring)."""

    def __init__(self, node: "NodeEffects") -> None:
        self.node = node
        self.watchers: dict[ActorId, set[str]] = {}  # actor -> clients following it
        self.endpoints: dict[ActorId, EndpointRow] = {}  # the latest endpoint row seen
        self.keys: dict[str, ActorId] = {}  # endpoint keys subscribed -> actor
        self.freed: OrderedDict[ObjectId, None] = OrderedDict()
        # actors whose endpoint this node published: their row is deleted
        # from the GCS when they are DEAD (final: nobody calls them again)
        self.published: set[ActorId] = set()

    # ------------------------------------------------------------------ the actor's worker
    def on_endpoint(self, ev: ActorEndpoint, now: float) -> list[Command]:
        sid = ev.stimulus_id
        h = self.node.host._instance(ev.actor_id, ev.incarnation)
        if h is None or h.worker != ev.worker_id:
            return []  # (an instance superseded or stopped since)
        row = EndpointRow(actor_id=ev.actor_id, incarnation=ev.incarnation, endpoint=ev.endpoint, node=self.node.address)
        self.node.story_add(h.entry.creation.task_id, now, sid, f"takes direct calls at {ev.endpoint}")
        self.published.add(ev.actor_id)
        cmds = self.node.gcs_write(PutEndpoint(endpoint_key(ev.actor_id), row), None, now, sid)
        return cmds + self.on_endpoint_row(ev.actor_id, row, now, sid)

    def on_ran(self, ev: DirectCallsRan, now: float) -> list[Command]:
        sid = ev.stimulus_id
        node = self.node
        h = node.host._instance(ev.actor_id, ev.incarnation)
        if h is None or h.worker != ev.worker_id:
            for e in ev.entries:
                node.story_add(e.spec.task_id, now, sid, "result of a superseded actor instance dropped")
            return node.host.drop_bytes(tuple(o.object_id for e in ev.entries for o in e.outputs), sid)
        cmds: list[Command] = []
        aid, inc = ev.actor_id, ev.incarnation
        for e in ev.entries:
            spec = e.spec
            tid = spec.task_id
            start, end = e.span if e.span is not None else (now - e.duration, now)
            node.timeline.record(spec, e.attempt, ev.worker_id, start, end, "ok" if e.error is None else e.error.kind.value)
            node.story_add(tid, now, sid, f"ran directly on actor worker {ev.worker_id} (caller {spec.caller_id})")
            h.releasing[tid] = _Call(spec, "", e.attempt)
            token = ("actor-released", aid, inc, tid)
            if e.error is None:
                cmds += node.store_outputs(spec, tuple((o.object_id, o.size) for o in e.outputs), e.attempt, now, sid, token)
                for o in e.outputs:
                    if o.object_id in self.freed:  # (its caller dropped it already)
                        del self.freed[o.object_id]
                        cmds += node.objects.free(o.object_id, now, sid)
            else:
                cmds += node.fail_outputs(spec, e.error, e.attempt, now, sid, token)
        return cmds

    def on_recorded(self, ev: DirectCallsRecorded, now: float) -> list[Command]:
        """A caller's results to record here (see ``DirectCallsRecorded``):
        as a routed call's outputs (``store_outputs``; the driver put inline
        data in the store) or its error (``fail_outputs``).  A result the
        actor's node recorded too is then in two stores, as after a fetch."""
        sid = ev.stimulus_id
        node = self.node
        cmds: list[Command] = []
        for e in ev.entries:
            spec = e.spec
            if e.error is None:
                node.story_add(spec.task_id, now, sid, f"result recorded by its caller {ev.client}")
                cmds += node.store_outputs(spec, tuple((o.object_id, o.size) for o in e.outputs), e.attempt, now, sid)
            else:
                node.story_add(spec.task_id, now, sid, f"error recorded by its caller {ev.client}: {e.error.kind.value}")
                cmds += node.fail_outputs(spec, e.error, e.attempt, now, sid)
        return cmds

    def on_failed(self, ev: DirectCallFailed, now: float) -> list[Command]:
        """A call failed at its client (see the module docstring)."""
        sid = ev.stimulus_id
        self.node.story_add(ev.spec.task_id, now, sid, f"direct call failed at its caller: {ev.error.message}")
        return self.node.fail_outputs(ev.spec, ev.error, ev.attempt, now, sid)

    def note_freed(self, oid: ObjectId) -> None:
        """A client freed ``oid`` and this node did not have it: it may be
        the output of a direct call whose report is still on its way."""
        self.freed[oid] = None
        if len(self.freed) > FREED_EARLY:
            self.freed.popitem(last=False)

    # ------------------------------------------------------------------ watches
    def on_watch(self, ev: WatchActor, now: float) -> list[Command]:
        sid = ev.stimulus_id
        aid = ev.actor_id
        node = self.node
        clients = self.watchers.get(aid)
        first = clients is None
        if first:
            clients = self.watchers[aid] = set()
        clients.add(ev.client)
        book, cmds = node.router._route(aid, now, sid)
        key = endpoint_key(aid)
        if key not in self.keys:
            self.keys[key] = aid
            cmds += node.gcs_write(Subscribe(node.address, "kv", key), ("direct-endpoint", aid), now, sid)
        else:
            # asked again: read both again (the client lost its worker)
            cmds += node.gcs_read(Get("actors", aid), ("actor-sub", aid), now, sid)
            cmds += node.gcs_read(Get("kv", key), ("direct-endpoint", aid), now, sid)
        if book.entry is not None:
            cmds.append(Send(to=ev.client, msg=ActorWatched(
                actor_id=aid, entry=book.entry, endpoint=self.endpoints.get(aid), stimulus_id=sid)))
        return cmds

    def on_row(self, aid: ActorId, now: float, sid: str) -> list[Command]:
        """The node took a row of ``aid`` (its router's book has it now)."""
        book = self.node.router.routes.get(aid)
        entry = book.entry if book is not None else None
        cmds: list[Command] = []
        if aid in self.published and entry is not None and entry.state is ActorState.DEAD:
            self.published.discard(aid)
            cmds += self.node.gcs_write(KvDelete(endpoint_key(aid)), None, now, sid)
        if aid not in self.watchers:
            return cmds
        return cmds + self._tell(aid, entry, now, sid)

    def active(self) -> bool:
        """Has this node anything to do with actor rows (``on_row``)?"""
        return bool(self.watchers or self.published)

    def on_endpoint_row(self, aid: ActorId, row: EndpointRow | None, now: float, sid: str) -> list[Command]:
        """An endpoint row of ``aid`` (a GCS reply or notice, or our own)."""
        if row is None or type(row) is not EndpointRow:
            return []
        old = self.endpoints.get(aid)
        if old is not None and old.incarnation > row.incarnation:
            return []
        self.endpoints[aid] = row
        if aid not in self.watchers or old == row:
            return []
        book = self.node.router.routes.get(aid)
        return self._tell(aid, book.entry if book is not None else None, now, sid)

    def on_notify_key(self, key: str, value, now: float, sid: str) -> list[Command]:
        aid = self.keys.get(key)
        if aid is None:
            return []
        return self.on_endpoint_row(aid, value, now, sid)

    def client_gone(self, client: str, now: float, sid: str) -> list[Command]:
        cmds: list[Command] = []
        for aid in [a for a, c in self.watchers.items() if client in c]:
            clients = self.watchers[aid]
            clients.discard(client)
            if not clients:
                cmds += self._unwatch(aid, now, sid)
        return cmds

    def on_refresh(self, now: float, sid: str) -> list[Command]:
        """Re-read what watched actors' callers may wait for (a lost notice
        must not strand them): the row of one not yet ALIVE (or DEAD), the
        endpoint of one ALIVE with no endpoint of its incarnation known.
        Called by the node's refresh timer."""
        cmds: list[Command] = []
        for aid in self.watchers:
            book = self.node.router.routes.get(aid)
            e = book.entry if book is not None else None
            row = self.endpoints.get(aid)
            if book is not None and (e is None or e.state in (ActorState.PENDING, ActorState.RESTARTING)):
                if now - book.changed_at >= 1.0:
                    book.changed_at = now
                    cmds += self.node.gcs_read(Get("actors", aid), ("actor-sub", aid), now, sid)
            elif e is not None and e.state is ActorState.ALIVE and (row is None or row.incarnation < e.incarnation):
                cmds += self.node.gcs_read(Get("kv", endpoint_key(aid)), ("direct-endpoint", aid), now, sid)
        return cmds

    # ------------------------------------------------------------------ helpers
    def _tell(self, aid: ActorId, entry: ActorEntry | None, now: float, sid: str) -> list[Command]:
        row = self.endpoints.get(aid)
        msg = ActorWatched(actor_id=aid, entry=entry, endpoint=row, stimulus_id=sid)
        cmds: list[Command] = [Send(to=c, msg=msg) for c in sorted(self.watchers[aid])]
        if entry is not None and entry.state is ActorState.DEAD:
            cmds += self._unwatch(aid, now, sid)  # (final: nothing more to tell)
        return cmds

    def _unwatch(self, aid: ActorId, now: float, sid: str) -> list[Command]:
        self.watchers.pop(aid, None)
        self.endpoints.pop(aid, None)
        key = endpoint_key(aid)
        if self.keys.pop(key, None) is None:
            return []
        return self.node.gcs_write(Unsubscribe(self.node.address, "kv", key), None, now, sid)

    def validate(self) -> None:
        for aid, clients in self.watchers.items():
            assert clients, f"actor {aid} watched by nobody"
            assert self.keys.get(endpoint_key(aid)) == aid, f"watched actor {aid}'s endpoint not followed"
