"""The client side of the protocol: what a driver (or a worker) waits for.

Theory of operation
-------------------
A client (the user's driver program, or a worker running a task) talks to
the daemon of its node over one connection.  ``get``, ``wait``, ``await
ref``, ``put``, GCS reads and named-actor registration are all *requests*:
the client sends a message and something (a *waiter*: a future, a callback,
a parked fiber; opaque to this machine) waits for the answer.  This machine
keeps the client's half of that protocol, and nothing else:

* ``requests``: request id -> the waiter of a one-reply request (a GCS
  request, a put, a status query), or a watch (``get``/``wait``: object ids,
  how many must be reported, the reports so far);
* ``actor_waits``: actor id -> request id of a named actor's registration
  (the node answers ``ActorRegistered`` by actor id, not request id);
* ``linger``: the node watch a ``wait()`` left open to serve the next ones
  (``ready, rest = wait(rest)`` in a loop would otherwise send the node all
  of ``rest`` every round: O(n) work per result);
* ``local``: the results of direct actor calls (``core/actor_caller.py``):
  the actor's worker answers the caller itself, so these never need the
  node.  ``expect_local`` marks a call's return ids when it is sent,
  ``resolve_local`` records the answer.  A watch on a mix asks the node
  only for the others (rule 5);
* ``state``: ``CONNECTED``, ``LOST`` (the connection ended without this side
  closing it) or ``SHUT_DOWN`` (this side closed it).

The driver feeds it what happened: a request made (``request``, ``watch``,
``register_actor``), a message from the node (``handle``: ``ObjectsReady``,
``ClientGcsReply``, ``PutDone``, ``PutFailed``, ``ClusterStatus``,
``ActorRegistered``), a timeout (``TimerFired`` of a ``SetTimer`` this
machine asked for, or ``give_up`` when the caller's own clock ran out or it
was interrupted), the connection ending (``ConnectionLost``, ``ShutDown``).
It answers with commands: ``Send`` a message to the node, ``SetTimer``, and
the outcome of a waiter: ``Resolve`` (its answer), ``Report`` (a streaming
watch's new reports), ``TimedOut`` (with what was reported so far) or
``Fail`` (the connection is gone).

Rules (``validate`` checks the ones about state):

1. **Every waiter ends exactly once.**  A waiter gets one of ``Resolve``,
   ``TimedOut`` or ``Fail``, once; after that its request is forgotten, and
   a reply, a timer or a give-up for it is ignored (duplicate and late
   replies, a timer that fires after the answer came).
2. **Nothing waits on a connection that is gone.**  On ``ConnectionLost``
   every pending waiter fails (``Fail(reason=LOST)``); a request made after
   it fails at once, without being registered.  So no order of events (the
   loss recorded before, during or after a request is made) leaves a waiter
   hanging: the hang after a lost daemon lived in the gap between the two.
3. **A report counts once.**  An object reported twice to one watch (a
   duplicate message, a re-sent report) is counted and reported once.
4. **A watch satisfied with some of its objects is cancelled** on the node
   (``CancelWatch``), unless it is the open ``linger`` watch, which keeps
   reporting for the next ``wait``.

5. **Local results stay local.**  A watch's ids that are direct results
   (``local``) are answered here, when the reply comes (or at once if it
   came); only the rest go to the node, in one ``WatchObjects``, which is
   cancelled when the watch is satisfied before the node reported them
   all.  A watch of only local results sends nothing.

Time comes in as ``now``; the machine keeps no clock.  Request ids are
allocated here (``next_id``), so a driver never reuses one.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable

from .ids import ActorId, ObjectId
from .msg_base import install_protocol
from .messages import (
    ActorRegistered,
    CancelWatch,
    ClientGcsReply,
    ClusterStatus,
    Command,
    Event,
    Message,
    ObjectsReady,
    PutDone,
    PutFailed,
    Send,
    SetTimer,
    TimerFired,
    WatchObjects,
)

__all__ = [
    "CONNECTED", "LOST", "SHUT_DOWN", "ClientMachine", "ConnectionLost", "ShutDown", "Resolve", "Report",
    "TimedOut", "Fail", "INLINE_KEEP_BYTES", "LINGER_INLINE_BYTES", "LOCAL_KEEP", "LOCAL_KEEP_BYTES",
]

CONNECTED = "connected"
LOST = "lost"
SHUT_DOWN = "shut down"

# What the open wait() watch keeps of inline values it was sent (so that a
# later get of them needs no second trip): each at most INLINE_KEEP_BYTES,
# LINGER_INLINE_BYTES in all; past that, only the fact that they are ready.
INLINE_KEEP_BYTES = 64 << 10
LINGER_INLINE_BYTES = 64 << 20

# The answered direct results kept (``local``): at most this many, and this
# many inline bytes; past that the oldest go (a get of one asks the node,
# which the actor's worker told).  Refs of call results are not counted
# (only puts are), so without a bound a long loop of calls would keep
# every result.
LOCAL_KEEP = 100_000
LOCAL_KEEP_BYTES = 64 << 20

# ===========================================================================
# Events (driver -> machine) and commands (machine -> driver)


class ConnectionLost(Event):
    """The connection to the node ended without this side closing it (the
    daemon was killed or exited, the link was cut, the node crashed)."""

    detail: str = ""


class ShutDown(Event):
    """This side closed the connection (``shutdown()``, a worker exiting)."""


class Resolve(Command):
    """``waiter``'s answer: a reply message, or a watch's reports
    (``{object_id: (ObjectInfo, attachment)}``)."""

    waiter: Any
    value: Any


class Report(Command):
    """New reports for a streaming watch: ``((object_id, info, attachment), ...)``
    (each object once)."""

    waiter: Any
    objects: tuple


class TimedOut(Command):
    """``waiter``'s time ran out first; ``partial``: a watch's reports so far
    (``None`` for a one-reply request)."""

    waiter: Any
    partial: Any = None


class Fail(Command):
    """The connection is gone: ``reason`` is ``LOST`` (``detail`` says how)
    or ``SHUT_DOWN``."""

    waiter: Any
    reason: str
    detail: str = ""


install_protocol(__name__)  # their generated pickling


# ===========================================================================
# What is pending


class _Request:
    """A one-reply request (GCS, put, status, named actor registration)."""

    __slots__ = ("rid", "waiter", "actor_id")

    def __init__(self, rid: int, waiter: Any, actor_id: ActorId | None = None) -> None:
        self.rid = rid
        self.waiter = waiter
        self.actor_id = actor_id


class _Watch:
    """A ``get``/``wait``/``await``: done when ``need`` of ``ids`` are reported."""

    __slots__ = ("rid", "waiter", "ids", "need", "results", "stream", "linger", "node_ids", "fetch")

    def __init__(self, rid: int, waiter: Any, ids: frozenset, need: int, stream: bool) -> None:
        self.rid = rid
        self.waiter = waiter
        self.ids = ids
        self.need = need
        self.results: dict[ObjectId, tuple] = {}
        self.stream = stream
        self.linger: _Linger | None = None  # the open watch that serves it (no node watch of its own)
        # the ids the node watches for it (a watch on local results too
        # asks the node only for the others); None: all of ``ids``
        self.node_ids: frozenset | None = None
        self.fetch = True  # (kept for a watch on local results: see ``local_to_node``)

    def node_open(self) -> bool:
        """Whether the node still watches some of its ids for it."""
        ids = self.ids if self.node_ids is None else self.node_ids
        return bool(ids) and not ids <= self.results.keys()


class _Linger:
    """The node watch a ``wait()`` left open, serving the next ones.

    The driver's threads may read ``ready`` (a dict of reports) while the
    machine's thread writes it: single dict reads are atomic."""

    __slots__ = ("rid", "fetch", "unreported", "ready", "inline_bytes", "waiters", "held_until")

    def __init__(self, rid: int, ids, fetch: bool, need: int) -> None:
        self.rid = rid
        self.fetch = fetch
        self.unreported = set(ids)  # the node will still report these
        self.ready: dict[ObjectId, tuple] = {}  # reported: oid -> (info, attachment)
        self.inline_bytes = 0
        self.waiters: list[_Watch] = []
        # the node holds its reports until this many are ready (the need of
        # the wait that opened the watch): until then, a report another
        # wait needs may sit on the node
        self.held_until = need

    def covers(self, ids, fetch: bool) -> bool:
        if fetch and not self.fetch:
            return False
        ready = self.ready
        if len(ready) < self.held_until and self.unreported:
            return False
        unreported = self.unreported
        return all(o in unreported or o in ready for o in ids)


def _timer_key(rid: int) -> tuple:
    return ("client-timeout", rid)


# ===========================================================================
# The machine


class ClientMachine:
    """One client's outstanding requests to its node (see the module doc).

    Args:
        client_id: this client's address (the ``client`` field of what it sends).
        node_id: the node it is connected to (where ``Send`` goes).
    """

    def __init__(self, client_id: str, node_id: str) -> None:
        self.client_id = client_id
        self.node_id = node_id
        self.state = CONNECTED
        self.detail = ""  # how the connection was lost
        self.requests: dict[int, _Request | _Watch] = {}
        self.actor_waits: dict[ActorId, int] = {}
        self.linger: _Linger | None = None
        self.duplicates = 0  # reports of an object a watch already had (ignored)
        self.late = 0  # replies for requests no longer pending (ignored)
        self._next = 1
        # direct actor call results: oid -> None while in flight, then
        # (ObjectInfo, attachment); and the watches waiting for them
        self.local: dict[ObjectId, tuple | None] = {}
        self.local_waiters: dict[ObjectId, list[_Watch]] = {}
        self._answered: dict[ObjectId, int] = {}  # answered local results, oldest first -> inline bytes
        self._answered_bytes = 0

    # ------------------------------------------------------------------ ids
    def next_id(self) -> int:
        rid = self._next
        self._next = rid + 1
        return rid

    def _refused(self, waiter: Any, sid: str) -> list[Command]:
        return [Fail(waiter=waiter, reason=self.state, detail=self.detail, stimulus_id=sid)]

    def _timer(self, rid: int, deadline: float | None, sid: str) -> list[Command]:
        return [] if deadline is None else [SetTimer(at=deadline, key=_timer_key(rid), stimulus_id=sid)]

    # ------------------------------------------------------------------ requests
    def request(self, waiter: Any, make: Callable[[int], Message], *, deadline: float | None = None,
                stimulus_id: str = "") -> tuple[int, list[Command]]:
        """A one-reply request: ``make(req_id)`` is the message to send.

        Returns its id (for ``give_up``) and the commands: ``Send`` (and a
        ``SetTimer`` for ``deadline``), or ``Fail`` at once when the
        connection is gone."""
        rid = self.next_id()
        if self.state is not CONNECTED:
            return rid, self._refused(waiter, stimulus_id)
        self.requests[rid] = _Request(rid, waiter)
        cmds: list[Command] = [Send(to=self.node_id, msg=make(rid), stimulus_id=stimulus_id)]
        if deadline is not None:
            cmds += self._timer(rid, deadline, stimulus_id)
        return rid, cmds

    def register_actor(self, waiter: Any, actor_id: ActorId, msg: Message, *, deadline: float | None = None,
                       stimulus_id: str = "") -> tuple[int, list[Command]]:
        """Send ``msg`` (the ``SubmitTask`` of a named actor's creation) and
        wait for its ``ActorRegistered``."""
        rid = self.next_id()
        if self.state is not CONNECTED:
            return rid, self._refused(waiter, stimulus_id)
        old = self.actor_waits.get(actor_id)
        if old is not None:
            raise ValueError(f"actor {actor_id} is already being registered by request {old}; "
                             f"create each named actor once")
        self.requests[rid] = _Request(rid, waiter, actor_id)
        self.actor_waits[actor_id] = rid
        return rid, [Send(to=self.node_id, msg=msg, stimulus_id=stimulus_id)] + self._timer(rid, deadline, stimulus_id)

    def watch(self, waiter: Any, ids, need: int, *, fetch: bool = True, report_need: int = 1,
              deadline: float | None = None, linger: bool = False, stream: bool = False,
              stimulus_id: str = "") -> tuple[int, list[Command]]:
        """Wait until ``need`` of ``ids`` are reported ready (``get``: all;
        ``wait``: ``num_returns``).

        Args:
            fetch: the node pulls them into its store (``get``).
            report_need: the node may hold its reports until that many are
                ready (``WatchObjects.need``).
            deadline: give up then (``TimedOut``, with the reports so far).
            linger: a ``wait``: served by the open watch if it covers ``ids``,
                else a new node watch that stays open for the next waits.
            stream: report each object as it comes (``Report``) as well.

        Raises:
            ValueError: ``need`` is not between 1 and the number of distinct ids.
        """
        uniq = tuple(dict.fromkeys(ids))
        if not 0 < need <= len(uniq):
            raise ValueError(f"a watch needs between 1 and {len(uniq)} of its {len(uniq)} distinct object(s), "
                             f"not {need}")
        rid = self.next_id()
        if self.state is not CONNECTED:
            return rid, self._refused(waiter, stimulus_id)
        local = self.local
        if local and any(o in local for o in uniq):
            return rid, self._watch_local(rid, waiter, uniq, need, fetch, deadline, stream, stimulus_id, report_need)
        w = _Watch(rid, waiter, frozenset(uniq), need, stream)
        lg = self.linger if linger else None
        cmds: list[Command] = []
        if lg is not None and not lg.waiters and not stream and lg.covers(uniq, fetch):
            pass  # served by the open watch
        else:
            if lg is not None and (lg.waiters or stream):
                lg = None  # it serves its waiters and no one else
            elif linger and not stream:
                if lg is not None and lg.unreported:
                    cmds.append(Send(to=self.node_id, msg=CancelWatch(client=self.client_id, req_id=lg.rid,
                                                                      stimulus_id=stimulus_id), stimulus_id=stimulus_id))
                lg = self.linger = _Linger(rid, uniq, fetch, report_need)  # stays open after
            cmds.append(Send(to=self.node_id, msg=WatchObjects(client=self.client_id, req_id=rid, object_ids=uniq,
                                                               fetch=fetch, need=report_need,
                                                               stimulus_id=stimulus_id), stimulus_id=stimulus_id))
        self.requests[rid] = w
        if lg is not None:
            w.linger = lg
            ready = lg.ready
            for oid in uniq:  # (reported while this call was on its way)
                r = ready.get(oid)
                if r is not None:
                    w.results[oid] = r
            if len(w.results) >= need:
                del self.requests[rid]
                cmds.append(Resolve(waiter=waiter, value=w.results, stimulus_id=stimulus_id))
                return rid, cmds
            lg.waiters.append(w)
        if deadline is not None:
            cmds += self._timer(rid, deadline, stimulus_id)
        return rid, cmds

    def _watch_local(self, rid: int, waiter: Any, uniq: tuple, need: int, fetch: bool, deadline: float | None,
                     stream: bool, sid: str, report_need: int) -> list[Command]:
        """A watch on some direct results (rule 5): those answered already
        count now, those in flight when their reply comes, and the node
        watches the rest (holding its reports no longer than ``report_need``
        allows: a wait with a timeout must hear of each as it comes; found
        by the swarm, a wait over tasks and direct calls timed out unaware
        of tasks the node had)."""
        local = self.local
        w = _Watch(rid, waiter, frozenset(uniq), need, stream)
        w.fetch = fetch
        rest = tuple(o for o in uniq if o not in local)
        w.node_ids = frozenset(rest)
        new = []
        for oid in uniq:
            if oid in local:
                r = local[oid]
                if r is None:
                    self.local_waiters.setdefault(oid, []).append(w)
                else:
                    w.results[oid] = r
                    new.append((oid, r[0], r[1]))
        cmds: list[Command] = []
        if stream and new:
            cmds.append(Report(waiter=waiter, objects=tuple(new), stimulus_id=sid))
        if len(w.results) >= need:
            cmds.append(Resolve(waiter=waiter, value=w.results, stimulus_id=sid))
            return cmds
        self.requests[rid] = w
        if rest:
            node_need = max(1, min(len(rest), report_need - (len(uniq) - len(rest))))
            cmds.append(Send(to=self.node_id, msg=WatchObjects(client=self.client_id, req_id=rid, object_ids=rest,
                                                               fetch=fetch, need=node_need, stimulus_id=sid),
                             stimulus_id=sid))
        return cmds + self._timer(rid, deadline, sid)

    # ------------------------------------------------------------------ local results
    def expect_local(self, object_ids) -> None:
        """A direct actor call is on its way: its return ids will be
        answered here (``resolve_local``), not by the node."""
        local = self.local
        for oid in object_ids:
            if oid not in local:
                local[oid] = None

    def resolve_local(self, results: dict, stimulus_id: str = "") -> list[Command]:
        """Direct results came (``{oid: (ObjectInfo, attachment)}``): keep
        them, and report them to the watches waiting for them.  An id not
        expected (released meanwhile) or answered before is ignored."""
        local = self.local
        cmds: list[Command] = []
        for oid, r in results.items():
            if oid not in local:
                continue
            if local[oid] is not None:
                self.duplicates += 1
                continue
            local[oid] = r
            att = r[1]
            n = len(att[1]) if att is not None and att[0] == "i" else 0
            self._answered[oid] = n
            self._answered_bytes += n
            for w in self.local_waiters.pop(oid, ()):
                if self.requests.get(w.rid) is not w or oid in w.results:
                    continue
                w.results[oid] = r
                if w.stream:
                    cmds.append(Report(waiter=w.waiter, objects=((oid, r[0], r[1]),), stimulus_id=stimulus_id))
                if len(w.results) >= w.need:
                    del self.requests[w.rid]
                    if w.node_open():
                        cmds.append(Send(to=self.node_id, msg=CancelWatch(client=self.client_id, req_id=w.rid,
                                                                          stimulus_id=stimulus_id),
                                         stimulus_id=stimulus_id))
                    cmds.append(Resolve(waiter=w.waiter, value=w.results, stimulus_id=stimulus_id))
        answered = self._answered
        if len(answered) > LOCAL_KEEP or self._answered_bytes > LOCAL_KEEP_BYTES:
            while answered and (len(answered) > LOCAL_KEEP or self._answered_bytes > LOCAL_KEEP_BYTES):
                oid = next(iter(answered))
                self._answered_bytes -= answered.pop(oid)
                local.pop(oid, None)
        return cmds

    def forget_local(self, object_ids) -> None:
        """These direct results are released (or to be asked of the node):
        forget them (a later watch of one asks the node)."""
        local = self.local
        answered = self._answered
        for oid in object_ids:
            local.pop(oid, None)
            n = answered.pop(oid, None)
            if n is not None:
                self._answered_bytes -= n

    def local_to_node(self, object_ids, stimulus_id: str = "") -> list[Command]:
        """These expected direct results will come from the node after all
        (their call took the routed path): forget them here, and have the
        node watch them for the watches already waiting on them -- else
        those would wait forever.  Such a watch's node part is asked again
        whole, under its id (``CancelWatch`` first: the node then reports
        only to the new one)."""
        local = self.local
        moved: dict[int, list] = {}
        for oid in object_ids:
            if local.get(oid, 0) is None:
                del local[oid]
            for w in self.local_waiters.pop(oid, ()):
                if self.requests.get(w.rid) is w and oid not in w.results:
                    moved.setdefault(w.rid, []).append(oid)
        cmds: list[Command] = []
        sid = stimulus_id
        for rid, oids in moved.items():
            w = self.requests[rid]
            if w.node_open():
                cmds.append(Send(to=self.node_id, msg=CancelWatch(client=self.client_id, req_id=rid, stimulus_id=sid),
                                 stimulus_id=sid))
            w.node_ids = (w.node_ids or frozenset()) | frozenset(oids)
            ids = tuple(sorted(o for o in w.node_ids if o not in w.results))
            need = max(1, min(len(ids), w.need - len(w.results)))
            cmds.append(Send(to=self.node_id, msg=WatchObjects(client=self.client_id, req_id=rid, object_ids=ids,
                                                               fetch=w.fetch, need=need, stimulus_id=sid),
                             stimulus_id=sid))
        return cmds

    # ------------------------------------------------------------------ giving up
    def give_up(self, rid: int, stimulus_id: str = "") -> list[Command]:
        """The waiter of ``rid`` stops waiting (its timeout, an interrupt):
        ``TimedOut`` (with a watch's reports so far) unless it has its
        outcome already, in which case nothing happens."""
        return self._expire(rid, True, stimulus_id)

    def cancel(self, rid: int, stimulus_id: str = "") -> list[Command]:
        """Forget ``rid`` without telling its waiter (it has what it wanted,
        e.g. a streaming watch whose caller is satisfied)."""
        return self._expire(rid, False, stimulus_id)

    def _expire(self, rid: int, tell: bool, sid: str) -> list[Command]:
        r = self.requests.pop(rid, None)
        if r is None:
            return []
        if type(r) is _Request:
            if r.actor_id is not None:
                self.actor_waits.pop(r.actor_id, None)
            return [TimedOut(waiter=r.waiter, stimulus_id=sid)] if tell else []
        cmds: list[Command] = []
        lg = r.linger
        if lg is not None:
            # served by the open watch (or the wait that opened it): the
            # watch stays open for the next wait, only this waiter goes
            if r in lg.waiters:
                lg.waiters.remove(r)
        elif r.node_ids is None or r.node_open():
            cmds.append(Send(to=self.node_id, msg=CancelWatch(client=self.client_id, req_id=rid, stimulus_id=sid),
                             stimulus_id=sid))
        if tell:
            cmds.append(TimedOut(waiter=r.waiter, partial=dict(r.results), stimulus_id=sid))
        return cmds

    def close_linger(self, stimulus_id: str = "") -> list[Command]:
        """Close the watch a ``wait()`` left open, unless a wait still uses
        it (a ``get`` that goes to the node is past any wait loop)."""
        lg = self.linger
        if lg is None or lg.waiters:
            return []
        self.linger = None
        if lg.unreported and self.state is CONNECTED:
            return [Send(to=self.node_id, msg=CancelWatch(client=self.client_id, req_id=lg.rid,
                                                          stimulus_id=stimulus_id), stimulus_id=stimulus_id)]
        return []

    # ------------------------------------------------------------------ events
    def handle(self, event: Event, now: float = 0.0) -> list[Command]:
        t = event.__class__
        if t is ObjectsReady:
            return self.on_objects(event.req_id, event.objects, None, event.stimulus_id)
        if t is ClientGcsReply or t is PutDone or t is PutFailed or t is ClusterStatus:
            return self.on_reply(event.req_id, event)
        if t is ActorRegistered:
            rid = self.actor_waits.get(event.actor_id)
            if rid is None:
                self.late += 1
                return []
            return self.on_reply(rid, event)
        if t is TimerFired:
            key = event.key
            if type(key) is tuple and len(key) == 2 and key[0] == "client-timeout":
                return self._expire(key[1], True, event.stimulus_id)
            return []
        if t is ConnectionLost:
            return self._end(LOST, event.detail, event.stimulus_id)
        if t is ShutDown:
            return self._end(SHUT_DOWN, "", event.stimulus_id)
        raise TypeError(f"a client machine does not handle {t.__name__} events; it handles replies from its node "
                        f"(ObjectsReady, ClientGcsReply, PutDone, PutFailed, ClusterStatus, ActorRegistered), "
                        f"TimerFired, ConnectionLost and ShutDown")

    def on_reply(self, rid: int, msg: Any) -> list[Command]:
        """A one-reply request's answer (a late or duplicate one is ignored)."""
        r = self.requests.get(rid)
        if r is None or type(r) is not _Request:
            self.late += 1
            return []
        del self.requests[rid]
        if r.actor_id is not None:
            self.actor_waits.pop(r.actor_id, None)
        return [Resolve(waiter=r.waiter, value=msg, stimulus_id=msg.stimulus_id)]

    def on_objects(self, rid: int, objects, attachments: dict | None, sid: str = "") -> list[Command]:
        """``ObjectsReady`` for watch ``rid``; ``attachments``: the values
        that came with it (``{oid: attachment}``), if any."""
        w = self.requests.get(rid)
        if w is None or type(w) is not _Watch or w.linger is not None:
            lg = self.linger
            if lg is not None and lg.rid == rid:
                return self._on_linger_report(lg, objects, attachments or {}, sid)
            self.late += 1
            return []
        atts = attachments or {}
        results = w.results
        new = [] if w.stream else None
        for oid, info in objects:
            if oid in results or oid not in w.ids:
                self.duplicates += 1
                continue
            r = results[oid] = (info, atts.get(oid))
            if new is not None:
                new.append((oid, r[0], r[1]))
        cmds: list[Command] = []
        if new:
            cmds.append(Report(waiter=w.waiter, objects=tuple(new), stimulus_id=sid))
        if len(results) >= w.need:
            del self.requests[rid]
            if w.node_open():  # satisfied with some (wait): the node's watch is still open
                cmds.append(Send(to=self.node_id, msg=CancelWatch(client=self.client_id, req_id=rid, stimulus_id=sid),
                                 stimulus_id=sid))
            cmds.append(Resolve(waiter=w.waiter, value=results, stimulus_id=sid))
        return cmds

    def _on_linger_report(self, lg: _Linger, objects, atts: dict, sid: str) -> list[Command]:
        ready = lg.ready
        fresh = []
        for oid, info in objects:
            if oid in ready:
                self.duplicates += 1
                continue
            lg.unreported.discard(oid)
            att = atts.get(oid)
            if att is not None and att[0] == "i":
                # (what the client's cache would keep, within its budget;
                # past it, only the fact that the object is ready)
                n = len(att[1])
                if n > INLINE_KEEP_BYTES or lg.inline_bytes + n > LINGER_INLINE_BYTES:
                    att = None
                else:
                    lg.inline_bytes += n
            ready[oid] = (info, att)
            fresh.append(oid)
        if not lg.waiters or not fresh:
            return []
        cmds: list[Command] = []
        still = []
        for w in lg.waiters:
            ids = w.ids
            for oid in fresh:
                if oid in ids:
                    w.results[oid] = ready[oid]
            if len(w.results) >= w.need:
                self.requests.pop(w.rid, None)
                cmds.append(Resolve(waiter=w.waiter, value=w.results, stimulus_id=sid))
            else:
                still.append(w)
        lg.waiters = still
        return cmds

    def _end(self, state: str, detail: str, sid: str) -> list[Command]:
        """The connection ended: fail every waiter, once."""
        if self.state is not CONNECTED:
            return []  # (already ended: a second report of it changes nothing)
        self.state = state
        self.detail = detail
        pending = list(self.requests.values())
        self.requests.clear()
        self.actor_waits.clear()
        lg, self.linger = self.linger, None
        if lg is not None:
            lg.waiters = []
        self.local_waiters.clear()
        return [Fail(waiter=r.waiter, reason=state, detail=detail, stimulus_id=sid) for r in pending]

    # ------------------------------------------------------------------ checks
    def pending(self) -> int:
        """How many waiters are still waiting."""
        return len(self.requests)

    def validate(self) -> None:
        """Check the machine's invariants (raise ``AssertionError``)."""
        reqs = self.requests
        if self.state is not CONNECTED:
            assert not reqs, f"{len(reqs)} waiter(s) pending on a connection that is {self.state}"
            assert not self.actor_waits and self.linger is None, "state left behind after the connection ended"
        for aid, rid in self.actor_waits.items():
            r = reqs.get(rid)
            assert type(r) is _Request and r.actor_id == aid, f"actor registration {aid} points at {rid}: {r!r}"
        for rid, r in reqs.items():
            assert r.rid == rid and 0 < rid < self._next, f"request {rid} filed under the wrong id ({r.rid})"
            if type(r) is _Watch:
                assert len(r.results) < r.need, f"watch {rid} has {len(r.results)} of {r.need} reports and still waits"
                assert r.results.keys() <= r.ids, f"watch {rid} holds reports of objects it does not watch"
                if r.linger is not None:
                    assert r.linger is self.linger and r in r.linger.waiters, \
                        f"watch {rid} is served by a watch that is no longer open"
            elif r.actor_id is not None:
                assert self.actor_waits.get(r.actor_id) == rid, f"request {rid} lost its actor registration"
        lg = self.linger
        if lg is not None:
            assert not (lg.unreported & lg.ready.keys()), "the open watch counts an object as both ready and not"
            for w in lg.waiters:
                assert reqs.get(w.rid) is w, f"the open watch serves watch {w.rid}, which no longer waits"
