"""A client's direct actor calls: the driver of its ``ActorCaller``.

A driver or a worker (``ClientRuntime``) sends its actor calls straight to
the actor's worker and hears back from it (issue 16; the semantics are the
pure machine core/actor_caller.py's).  ``DirectCalls`` carries that
machine's commands out and feeds it what happens:

* ``Send(endpoint, message)``: on the endpoint's kept connection
  (transports/direct_links.py), written by the user's thread itself when
  the connection is open and nothing is ahead of it;
* ``Watch(actor_id)``: ``WatchActor`` to the node, whose ``ActorWatched``
  answers come back through ``ClientRuntime._on_message``;
* ``Resolved`` / ``Failed``: the call's results, recorded in the client's
  ``ClientMachine`` as *local* results (``resolve_local``): a ``get`` of
  them never asks the node.  Small values come inline; a large one was
  written to the actor's node's shared-memory store, and is read here when
  that node is ours (else fetched through our node, as any remote object);
* ``StoreFailure``: ``DirectCallFailed`` to the node (which stores the
  error where other processes find it);
* ``Republish(entries)``: ``DirectCallsRecorded`` to the node (results an
  incarnation that died may not have reported);
* ``Reroute(spec)`` / ``Skipped``: the call takes the routed path
  (``SubmitTask``), after ``CallsSkipped`` for the calls resolved here;
* ``Log``: a warning in this process's log;
* ``SetTimer``: a trio sleep, then ``timer``.

Everything runs under the client's machine lock (``ClientRuntime._mlock``),
from the user's thread (a call, a cancel) or the trio thread (replies,
lost connections, the node's answers, timers).  ``now`` is
``time.monotonic()``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import trio

from ..core.actor_caller import ActorCaller, Failed, Republish, Reroute, Resolved, Skipped, StoreFailure, Watch
from ..core.messages import Log, Send, SetTimer, SubmitTask
from ..core.msg_direct import ActorWatched, CallsSkipped, DirectCallFailed, DirectCallsRecorded, DirectReply, WatchActor
from ..core.records import ActorState, ObjectInfo
from .direct_links import Links

__all__ = ["DirectCalls", "direct_calls_enabled"]

logger = logging.getLogger("penumbra")


def direct_calls_enabled() -> bool:
    """The switch: ``PENUMBRA_DIRECT_CALLS=0`` turns direct actor calls off
    (every call takes the routed path through the nodes, as before).  Read
    by callers and by actor workers (which then do not listen)."""
    return os.environ.get("PENUMBRA_DIRECT_CALLS", "1").strip().lower() not in ("0", "false", "no", "off")


class DirectCalls:
    """One client's direct calls (see the module docstring).

    Attributes:
        sent, replies: counts (for tests and benchmarks).
    """

    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self.caller = ActorCaller(rt.client_id)
        self.links = Links(rt.bridge, rt._mlock, rt.token or "", rt.client_id, self._on_link_message, self._on_lost,
                           rt.idle_flush, rt.node_id)
        self.sent = 0
        self.replies = 0
        self._held: dict = {}  # actor id -> news held back (see ``watched``)
        self._args: dict = {}  # task id -> argument refs of a call in flight (see ``hold``)

    # ---------------------------------------------------------------- events (any thread)
    def submit(self, spec) -> None:
        rt = self.rt
        with rt._mlock:
            rt.machine.expect_local(spec.return_ids)
            self._carry(self.caller.submit(spec, time.monotonic()))

    def hold(self, spec, refs: list) -> None:
        """Keep call ``spec``'s argument refs alive until it is resolved
        (the actor's worker fetches them through its node: no node pins
        them for a direct call as for a routed one)."""
        with self.rt._mlock:
            if self.caller.owns(spec.task_id):
                self._args[spec.task_id] = refs

    def cancel(self, task_id, force: bool) -> bool:
        """``penumbra.cancel`` of ``task_id``: False if it is not a direct
        call of ours (the node handles it)."""
        rt = self.rt
        with rt._mlock:
            if not self.caller.owns(task_id):
                return False
            found, cmds = self.caller.cancel(task_id, time.monotonic(), force)
            self._carry(cmds)
        return found

    def killed(self, actor_id) -> None:
        with self.rt._mlock:
            self._carry(self.caller.killed(actor_id, time.monotonic()))

    def watched(self, msg: ActorWatched) -> None:
        """(trio thread, holding the lock) The node's news of an actor.

        News that may fail calls (the actor restarting or dead) waits until
        what its worker sent before is read: it replied to the calls before
        its end before the node could hear of that end, but on another
        connection, which this loop may read second."""
        aid = msg.actor_id
        held = self._held.get(aid)
        if held is not None:
            held.append(msg)
            return
        if self._ends_something(msg) and self._unread(aid):
            self._held[aid] = [msg]
            self.rt.bridge.start_soon(self._watched_later, aid)
            return
        self._carry(self.caller.watched(msg, time.monotonic()))

    def _ends_something(self, msg: ActorWatched) -> bool:
        """Whether this news may end calls in flight: the actor is not
        alive, or alive in a later incarnation than the one we knew."""
        e = msg.entry
        if e is None:
            return False
        if e.state is not ActorState.ALIVE:
            return True
        book = self.caller.books.get(msg.actor_id)
        known = book.entry if book is not None else None
        return known is not None and e.incarnation > known.incarnation

    def _unread(self, aid) -> bool:
        row = self.caller.endpoints.get(aid)
        link = self.links.links.get(row.endpoint) if row is not None else None
        return link is not None and link.unread()

    async def _watched_later(self, aid) -> None:
        deadline = time.monotonic() + 1.0
        while self._unread(aid) and time.monotonic() < deadline:
            await trio.sleep(0.0005)
        with self.rt._mlock:
            for msg in self._held.pop(aid, ()):
                self._carry(self.caller.watched(msg, time.monotonic()))

    def _on_link_message(self, link, item) -> None:
        if type(item) is DirectReply:
            self.replies += 1
            with self.rt._mlock:
                self._carry(self.caller.reply(item, time.monotonic()))

    def _on_lost(self, endpoint: str, opened: bool) -> None:
        with self.rt._mlock:
            now = time.monotonic()
            self._carry(self.caller.lost(endpoint, now) if opened else self.caller.unreachable(endpoint, now))

    def close(self) -> None:
        self.links.close()

    # ---------------------------------------------------------------- commands (holding the lock)
    def _carry(self, cmds) -> None:
        rt = self.rt
        node = False  # (sent something to the node)
        for c in cmds:
            t = type(c)
            if t is Send:
                self.sent += 1
                self.links.send(c.to, c.msg)
            elif t is Resolved:
                done = rt.machine.resolve_local(self._results(c.spec, c.reply))
                if done:
                    rt._run(done)
                    node = node or any(type(x) is Send for x in done)  # (a CancelWatch)
                if self._args:
                    self._args.pop(c.spec.task_id, None)
            elif t is Failed:
                if self._args:
                    self._args.pop(c.spec.task_id, None)
                info = ObjectInfo(0, c.error)
                att = ("e", c.error)
                done = rt.machine.resolve_local({oid: (info, att) for oid in c.spec.return_ids})
                rt._run(done)
                node = node or any(type(x) is Send for x in done)
            elif t is StoreFailure:
                node = True
                self._to_node(DirectCallFailed(client=rt.client_id, spec=c.spec, error=c.error, attempt=c.attempt))
            elif t is Republish:
                node = True
                self._to_node(DirectCallsRecorded(client=rt.client_id, entries=c.entries))
            elif t is Watch:
                node = True
                self._to_node(WatchActor(client=rt.client_id, actor_id=c.actor_id))
            elif t is Reroute:
                node = True
                # the routed path answers through the node: not a local
                # result (a get already waiting for it asks the node now)
                rt._run(rt.machine.local_to_node(c.spec.return_ids))
                self._to_node(SubmitTask(client=rt.client_id, spec=c.spec))
                self._args.pop(c.spec.task_id, None)  # (the node pins them now: dropped after)
            elif t is Skipped:
                node = True
                self._to_node(CallsSkipped(client=rt.client_id, actor_id=c.actor_id, caller_id=c.caller_id,
                                           after=c.after, before=c.before))
            elif t is SetTimer:
                self._set_timer(c.at, c.key)
            elif t is Log:
                logger.warning("%s", c.text)
        if node and rt.bridge.in_trio_thread():
            # (from a task of the loop -- a link's, a timer's -- no idle
            # hook of its dispatcher runs after: what went to the node would
            # wait in its channel for the next job, and a get waiting on a
            # rerouted call with it)
            rt._flush()

    def _to_node(self, msg) -> None:
        rt = self.rt
        rt._run([Send(to=rt.node_id, msg=msg)])

    def _results(self, spec, reply: DirectReply) -> dict:
        """The reply's results as a watch's reports: ``{oid: (ObjectInfo,
        attachment)}``; a value in another node's store has no attachment
        (a get of it asks our node)."""
        if reply.error is not None:
            info = ObjectInfo(0, reply.error)
            att = ("e", reply.error)
            return {oid: (info, att) for oid in spec.return_ids}
        mine = self.rt.node_id
        out = {}
        for o in reply.outputs:
            if o.data is not None:
                out[o.object_id] = (ObjectInfo(o.size), ("i", o.data))
            else:
                out[o.object_id] = (ObjectInfo(o.size), ("s", o.size) if o.node == mine else None)
        return out

    def _set_timer(self, at: float, key) -> None:
        async def fire() -> None:
            await trio.sleep(max(0.0, at - time.monotonic()))
            with self.rt._mlock:
                self._carry(self.caller.timer(key, time.monotonic()))

        try:
            self.rt.bridge.start_soon(fire)
        except RuntimeError:  # the runtime is shutting down
            pass
