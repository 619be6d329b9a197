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

* ``Run``: the call goes to the worker's executor for this actor (the main
  thread, the thread pool of ``max_concurrency > 1``, or the asyncio loop
  of an async actor), as a ``Run`` the worker executes as it would one of
  its node's; its arguments' refs are fetched through the node there;
* ``Reply``: written to the caller's connection from the thread that ran
  the call (``DirectSender``: no hop to the trio thread for a lone reply);
* ``Interrupt``: ``penumbra.cancel`` of a running call, as the node's
  ``Interrupt`` does;
* ``Report``: what ran, to the node (``DirectCallsRan``), after the reply
  and batched: a lone report is written from the running thread, a burst
  goes out as one message from the trio thread.  Outputs in the
  shared-memory store are reported *before* the reply that names them, so
  the caller's node can find them.

The inbox is used under one lock, from the trio thread (calls, cancels)
and from the threads running calls (their ends).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from ..core.actor_inbox import ActorInbox, Interrupt, Reply, Report, Run
from ..core.msg_direct import ActorEndpoint, DirectCall, DirectCallsRan, DirectCancel, DirectFloor, DirectOutput, DirectRan
from . import protocol as P
from .direct_links import endpoint_of
from .direct_send import DirectSender
from .wire import ConnectionClosed, serve_tcp, serve_unix

__all__ = ["ActorServer", "direct_calls_enabled"]

logger = logging.getLogger("penumbra")


def direct_calls_enabled() -> bool:
    """The switch: ``PENUMBRA_DIRECT_CALLS=0`` turns direct actor calls off
    (every call takes the routed path through the nodes, as before)."""
    return os.environ.get("PENUMBRA_DIRECT_CALLS", "1").strip() not in ("0", "false", "no", "off")


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
        self.running: dict = {}  # task id -> (spec, attempt, started)
        self.endpoint = ""
        self._reports: list[DirectRan] = []
        self._report_lock = threading.Lock()
        self.calls = 0  # calls received (for tests and benchmarks)

    # ---------------------------------------------------------------- starting
    def start(self, unix_dir: str, host: str) -> str:
        """Listen (from the worker's main thread) and tell the node; the
        endpoint."""
        bridge = self.rt.bridge
        unix_path = os.path.join(unix_dir, f"actor-{os.getpid()}.sock")
        token = self.rt.token

        async def listen() -> tuple[str, int]:
            n = bridge.nursery
            await n.start(serve_unix, unix_path, self._serve, token)
            return await n.start(serve_tcp, host, 0, self._serve, token)

        bound = bridge.call(listen, timeout=30.0)
        self.endpoint = endpoint_of(host, bound[1], unix_path)
        self.rt._deliver(ActorEndpoint(worker_id=self.rt.client_id, actor_id=self.actor_id,
                                       incarnation=self.incarnation, endpoint=self.endpoint))
        return self.endpoint

    # ---------------------------------------------------------------- receiving (trio thread)
    async def _serve(self, ch) -> None:
        sender = DirectSender(ch, self.rt.bridge)
        mine: set[str] = set()
        try:
            async for item in ch:
                t = type(item)
                if t is DirectCall:
                    self.calls += 1
                    caller = item.spec.caller_id
                    if caller not in mine:
                        mine.add(caller)
                        self.callers[caller] = sender
                    with self.lock:
                        self._carry(self.inbox.call(item))
                elif t is DirectCancel or t is DirectFloor:
                    self.callers.setdefault(item.caller_id, sender)
                    with self.lock:
                        self._carry(self.inbox.cancel(item) if t is DirectCancel else self.inbox.floor(item))
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
            if t is Run:
                self._start(c.spec, c.attempt)
            elif t is Reply:
                s = self.callers.get(c.caller)
                if s is not None:
                    try:
                        s.send(c.reply)
                    except RuntimeError:  # the loop stopped: this worker is exiting
                        pass
            elif t is Interrupt:
                self.worker.interrupt(c.task_id)
            elif t is Report:
                self._report(c.entries)

    def _start(self, spec, attempt: int) -> None:
        self.running[spec.task_id] = (spec, attempt, time.perf_counter())
        self.worker.run_direct(P.Run(spec, attempt, None, None, self.gpu_ids))

    # ---------------------------------------------------------------- finishing (the running thread)
    def finish(self, item: "P.Ran | P.Raised") -> bool:
        """The worker finished task ``item.task_id``: if it was a direct
        call, tell the inbox (which replies and reports) and return True."""
        got = self.running.pop(item.task_id, None)
        if got is None:
            return False
        spec, attempt, _ = got
        span = (item.ended - item.duration, item.ended) if item.ended else None
        if type(item) is P.Ran:
            node = self.rt.node_id
            outs = tuple(DirectOutput(oid, size, data, "" if data is not None else node)
                         for oid, size, data in item.outputs)
            ran = DirectRan(spec, attempt, outs, None, item.duration, span)
        else:
            ran = DirectRan(spec, attempt, (), item.error, item.duration, span)
        with self.lock:
            self._carry(self.inbox.finished(ran))
        return True

    def _report(self, entries) -> None:
        """Send ``entries`` to the node: now, from this thread, if any output
        is in the store (the reply naming it must not overtake it) or the
        report is a lone one; else batched on the trio thread."""
        urgent = any(o.data is None for e in entries for o in e.outputs)
        with self._report_lock:
            first = not self._reports
            self._reports.extend(entries)
        if not first and not urgent:
            return
        rt = self.rt
        if urgent or rt.sender.lone(DirectCallsRan):
            self._flush_reports(rt._send)
        else:
            try:
                rt.bridge.submit(self._flush_reports)
            except RuntimeError:
                pass

    def _flush_reports(self, send=None) -> None:
        rt = self.rt
        send = send or rt._send_now
        with self._report_lock:
            entries, self._reports = self._reports, []
        if entries:
            msg = DirectCallsRan(worker_id=rt.client_id, actor_id=self.actor_id, incarnation=self.incarnation,
                                 entries=tuple(entries))
            send(P.Deliver(rt.node_id, msg, None, rt.client_id))
