"""An actor worker's door for direct calls: ``ActorServer``.

Once an actor is constructed, its worker (transports/worker.py) listens
for direct calls (core/msg_direct.py) on a Unix socket next to its node
daemon's (for callers on this host) and on TCP at the node's address (for
callers on other hosts); both check the cluster token with the wire hello.
It tells its node where (``ActorEndpoint``), and the node publishes it for
callers.

Each caller's connection is read on the worker's trio thread; what comes
in is fed to the worker's ``ActorInbox`` (core/actor_inbox.py, pure),
whose commands this module carries out:

* ``RunCall``: the call goes to the worker's executor for this actor (the main
  thread, the thread pool of ``max_concurrency > 1``, or the asyncio loop
  of an async actor), as a ``protocol.Run`` the worker executes as it would one of
  its node's; its arguments' refs are fetched through the node there;
* ``Reply``: written to the caller's connection from the thread that ran
  the call (``DirectSender``: no hop to the trio thread for a lone reply);
* ``InterruptCall``: ``penumbra.cancel`` of a running call, as the node's
  ``protocol.Interrupt`` does;
* ``ReportRan``: what ran, to the node (``DirectCallsRan``; the inbox
  batches them, off the critical path, except that outputs in the
  shared-memory store are reported *before* the reply that names them, so
  the caller's node can find them);
* ``EndActor``: the actor ends itself (``exit_actor()``,
  ``__ray_terminate__``): ``KillActor(exiting=...)`` to the node;
* ``CheckRan``: a call sent again after its incarnation died: the GCS's
  rows of its outputs are read (a thread of its own: ``gcs_request``
  blocks) and handed back (``checked``);
* ``SetTimer``: the inbox's batching timer, on the trio thread.

The inbox is used under one lock, from the trio thread (calls, cancels)
and from the threads running calls (their ends).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import trio

from ..core.actor_inbox import ActorInbox, CheckRan, EndActor, InterruptCall, Reply, ReportRan, RunCall, from_record
from ..core.messages import KillActor, SetTimer
from ..core.tables import Get
from ..core.msg_direct import ActorEndpoint, DirectCall, DirectCallsRan, DirectCancel, DirectFloor, DirectOutput, DirectReply
from . import protocol as P
from .direct_links import endpoint_of
from .direct_send import DirectSender
from .wire import ConnectionClosed, serve_tcp, serve_unix

__all__ = ["ActorServer"]

logger = logging.getLogger("penumbra")

_UNIX_PATH_MAX = 104  # bytes in a Unix socket's path, with its end (the smallest of the usual limits)


class ActorServer:
    """The direct-call listener of one actor worker (see the module doc).

    Args:
        worker: the ``Worker`` hosting the actor.
        spec: the actor's ``ActorSpec``; ``incarnation``: which one this is.
        gpu_ids: the GPUs the actor holds (its calls run with them).
    """

    def __init__(self, worker: Any, spec: Any, incarnation: int, gpu_ids: tuple = ()) -> None:
        self.worker = worker
        self.rt = worker.rt
        self.actor_id = spec.actor_id
        self.incarnation = incarnation
        self.gpu_ids = gpu_ids
        self.inbox = ActorInbox(spec.actor_id, incarnation, max(1, spec.max_concurrency))
        self.lock = threading.Lock()
        self.callers: dict[str, DirectSender] = {}  # caller id -> its connection's send side
        self.running: dict = {}  # task id -> spec, of the direct calls running here
        self.endpoint = ""
        self.endpoint_sent = False  # (see ``announce``)
        self.calls = 0  # calls received (for tests and benchmarks)

    # ---------------------------------------------------------------- starting
    def start(self, unix_dir: str, host: str) -> str:
        """Listen (from the worker's main thread); the endpoint.  The node
        is told by ``announce``, after the actor's creation is reported.

        The endpoint names ``host`` for TCP, or ``$PENUMBRA_DIRECT_HOST`` if
        set (where callers on other hosts reach this one when that is not
        the node's address, e.g. behind NAT).  A caller that cannot reach
        it sends its calls through the nodes (core/actor_caller.py)."""
        bridge = self.rt.bridge
        unix_path = os.path.join(unix_dir, f"actor-{os.getpid()}.sock")
        token = self.rt.token

        if len(os.fsencode(unix_path)) >= _UNIX_PATH_MAX:
            unix_path = ""  # (too long for a Unix socket: callers on this host use TCP too)

        async def listen() -> tuple[str, int]:
            n = bridge.nursery
            if unix_path:
                await n.start(serve_unix, unix_path, self._serve, token)
            return await n.start(serve_tcp, host, 0, self._serve, token)

        bound = bridge.call(listen, timeout=30.0)
        advertised = os.environ.get("PENUMBRA_DIRECT_HOST", "").strip() or host
        self.endpoint = endpoint_of(advertised, bound[1], unix_path, self.rt.node_id)
        return self.endpoint

    def announce(self) -> None:
        """Tell the node where the actor takes direct calls (after the
        creation's result, on the same channel: the node hosts the actor by
        then, and publishes the endpoint)."""
        self.rt._deliver(ActorEndpoint(worker_id=self.rt.client_id, actor_id=self.actor_id,
                                       incarnation=self.incarnation, endpoint=self.endpoint))

    # ---------------------------------------------------------------- receiving (trio thread)
    async def _serve(self, ch) -> None:
        sender = DirectSender(ch, self.rt.bridge, self.rt.idle_flush)
        mine: set[str] = set()
        try:
            async for item in ch:
                t = type(item)
                if t is DirectCall:
                    self.calls += 1
                    caller = item.spec.caller_id
                    if caller not in mine:  # (its replies go on its latest connection)
                        mine.add(caller)
                        self.callers[caller] = sender
                    with self.lock:
                        self._carry(self.inbox.call(item, time.monotonic()))
                elif t is DirectCancel or t is DirectFloor:
                    if item.caller_id not in mine:
                        mine.add(item.caller_id)
                        self.callers[item.caller_id] = sender
                    with self.lock:
                        inbox = self.inbox
                        self._carry((inbox.cancel if t is DirectCancel else inbox.floor)(item, time.monotonic()))
        except ConnectionClosed:
            pass
        finally:
            sender.close()
            for c in mine:
                if self.callers.get(c) is sender:
                    del self.callers[c]

    # ---------------------------------------------------------------- commands
    def _carry(self, cmds) -> None:
        """Carry out the inbox's commands (holding ``lock``)."""
        for c in cmds:
            t = type(c)
            if t is RunCall:
                self._start(c.spec, c.attempt)
            elif t is Reply:
                s = self.callers.get(c.caller)
                if s is not None:
                    try:
                        s.send(c.reply, DirectReply)  # (a burst of replies: one frame, from the loop)
                    except RuntimeError:  # the loop stopped: this worker is exiting
                        pass
            elif t is ReportRan:
                self._report(c.entries)
            elif t is CheckRan:
                threading.Thread(target=self._check, args=(c.spec,), name="penumbra-direct-check", daemon=True).start()
            elif t is SetTimer:
                self._set_timer(c.at, c.key)
            elif t is InterruptCall:
                self.worker.interrupt(c.task_id)
            elif t is EndActor:
                try:
                    self.rt.bridge.submit(self._end_actor, c.task_id)
                except RuntimeError:  # the loop stopped: this worker is exiting anyway
                    pass

    def _check(self, spec) -> None:
        """(its own thread) Whether ``spec`` ran on an earlier incarnation:
        the GCS's rows of its outputs, handed to the inbox."""
        try:
            rows = [self.rt.gcs_request(Get("objects", oid), timeout=30.0) for oid in spec.return_ids]
        except Exception:  # noqa: BLE001 - no answer (the node is going): run it, as before the check
            rows = []
        recorded, outputs, error = from_record(spec, rows)
        with self.lock:
            self._carry(self.inbox.checked(spec.task_id, time.monotonic(), recorded, outputs, error))

    def _end_actor(self, task_id) -> None:
        """(trio thread, after every job before it) The replies of the calls
        before the ending one are written first: the node kills this worker
        as soon as it hears ``KillActor``, and a reply still queued then
        would be lost (its caller would see the actor's death instead)."""
        rt = self.rt
        rt.idle_flush.run()
        rt.sender.send_on_loop(P.Deliver(rt.node_id, KillActor(client=rt.client_id, actor_id=self.actor_id,
                                                               no_restart=True, exiting=task_id), None, rt.client_id))
        rt.sender.flush_on_loop()

    def _start(self, spec, attempt: int) -> None:
        self.running[spec.task_id] = spec
        self.worker.run_direct(P.Run(spec, attempt, None, None, self.gpu_ids))

    def _set_timer(self, at: float, key) -> None:
        async def fire() -> None:
            await trio.sleep(max(0.0, at - time.monotonic()))
            with self.lock:
                self._carry(self.inbox.timer(key, time.monotonic()))

        try:
            self.rt.bridge.start_soon(fire)
        except RuntimeError:  # the loop stopped: this worker is exiting
            pass

    def owns(self, task_id) -> bool:
        """Is ``task_id`` a direct call running here?"""
        return task_id in self.running

    def exiting(self, task_id) -> bool:
        """Direct call ``task_id`` called ``exit_actor()``: the inbox ends the
        actor once the calls running with it are over (``EndActor``).
        False: not a direct call (the routed path's rule applies)."""
        if task_id not in self.running:
            return False
        with self.lock:
            self._carry(self.inbox.exit(task_id, time.monotonic()))
        return True

    # ---------------------------------------------------------------- finishing (the running thread)
    def finish(self, item: "P.Ran | P.Raised") -> bool:
        """The worker finished task ``item.task_id``: if it was a direct
        call, tell the inbox (which replies and reports) and return True."""
        tid = item.task_id
        if self.running.pop(tid, None) is None:
            return False
        span = (item.ended - item.duration, item.ended) if item.ended else None
        now = time.monotonic()
        with self.lock:
            if type(item) is P.Ran:
                node = self.rt.node_id
                outs = tuple(DirectOutput(oid, size, data, "" if data is not None else node)
                             for oid, size, data in item.outputs)
                cmds = self.inbox.finished(tid, now, outs, None, item.duration, span)
            else:
                cmds = self.inbox.finished(tid, now, (), item.error, item.duration, span)
            self._carry(cmds)
        return True

    def flush(self) -> None:
        """Report every call that ran (the worker is about to exit)."""
        with self.lock:
            self._carry(self.inbox.flush(time.monotonic()))

    def _report(self, entries) -> None:
        """Send the node ``entries`` (from whichever thread: the node
        channel keeps the order)."""
        rt = self.rt
        msg = DirectCallsRan(worker_id=rt.client_id, actor_id=self.actor_id, incarnation=self.incarnation,
                             entries=tuple(entries))
        item = P.Deliver(rt.node_id, msg, None, rt.client_id)
        try:
            if rt.bridge.in_trio_thread():
                # (from a timer's task: no idle hook of the loop's
                # dispatcher would flush it, so now)
                rt.sender.send_on_loop(item)
                rt.sender.flush_on_loop()
            else:
                rt._send(item)
        except Exception:  # noqa: BLE001 - the connection to the node is gone: this worker exits
            pass
