"""A daemon's worker pool: starting, running, killing worker processes.

Part of ``Daemon`` (see daemon.py).  Workers are forked by the zygote
(zygote.py; ``start_zygote`` starts it before the daemon opens a socket or
a thread): ``start_worker`` asks it for one, and the worker connects back
over the node's Unix socket (``serve_worker``), or is reported failed after
60 s.  ``Execute`` sends it a task with its inputs' store attachments; the
worker's results, errors, output and actor checkpoints come back on its
channel and go to the node machine as events.  A worker whose connection
closes is reported crashed, with how its process ended.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from ..core.messages import (
    ActorCheckpointed,
    Execute,
    TaskFinished,
    TaskRaised,
    WorkerCrashed,
    WorkerStarted,
    WorkerStartFailed,
)
from ..core.records import ErrorInfo, ErrorKind
from ..core.specs import Payload
from . import protocol as P
from .daemon_config import DaemonConfig
from .daemon_process import _exit_status
from .wire import Channel, ConnectionClosed
from .zygote import ZygoteHandle, fork_zygote

logger = logging.getLogger("penumbra.daemon")  # (one logger for the whole daemon: its log reads as one)


@dataclass
class _Worker:
    worker_id: str
    channel: Channel | None = None
    pid: int = 0
    started_at: float = 0.0
    dead: bool = False
    job_id: int = 0
    running: set = field(default_factory=set)


class DaemonWorkers:
    """(``Daemon``'s) worker pool; see the module docstring."""

    def _worker_send(self, wid: str, item: Any) -> None:
        w = self.workers.get(wid)
        if w is not None and w.channel is not None:
            self._send(w.channel, item)

    def start_worker(self, wid: str) -> None:
        self.workers[wid] = _Worker(wid, started_at=time.monotonic())
        try:
            self._zygote_request({"worker_id": wid})
        except OSError as e:
            self.workers.pop(wid, None)
            self.host.deliver(self.node_id, WorkerStartFailed(worker_id=wid, reason=f"zygote unavailable: {e}"))
            return
        self.nursery.start_soon(self._worker_start_deadline, wid)

    async def _worker_start_deadline(self, wid: str) -> None:
        await trio.sleep(60.0)
        w = self.workers.get(wid)
        if w is not None and w.channel is None and not w.dead:
            w.dead = True
            self.workers.pop(wid, None)
            self.host.deliver(self.node_id, WorkerStartFailed(worker_id=wid, reason="did not connect within 60 s"))

    def _zygote_request(self, req: dict) -> None:
        z = self.zygote
        if z is None or z.poll() is not None:
            raise OSError("the zygote process is not running")
        z.stdin.write((json.dumps(req) + "\n").encode())
        z.stdin.flush()

    def execute(self, c: Execute) -> None:
        w = self.workers.get(c.worker_id)
        if w is None or w.channel is None or w.dead:
            self.host.deliver(self.node_id, WorkerCrashed(worker_id=c.worker_id, reason="worker not connected"))
            return
        args = []
        for dep in c.spec.dependencies:
            a = self.objects.attachment(dep)
            if a is None:
                a = ("e", ErrorInfo(ErrorKind.OBJECT_LOST, f"input {dep.short()} vanished from the store"))
            args.append(a)
        w.running.add(c.spec.task_id)
        w.job_id = c.spec.job_id
        self._send(w.channel, P.Run(c.spec, c.attempt, tuple(args), c.checkpoint, c.gpu_ids, self._incarnation_of(c.spec)))

    def _incarnation_of(self, spec) -> int:
        """The incarnation of the actor ``spec`` creates, as this node hosts
        it (0 for other tasks): its worker names it in direct calls."""
        a = spec.actor_creation
        if a is None:
            return 0
        node = self.host.machines.get(self.node_id)
        t = node.scheduler.tasks.get(spec.task_id) if node is not None else None
        start = getattr(t, "actor", None)
        return start.entry.incarnation if start is not None else 0

    def kill_worker(self, wid: str, reason: str) -> None:
        w = self.workers.get(wid)
        if w is None:
            return
        if w.pid:
            try:
                os.kill(w.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if w.channel is None and not w.dead:
            # never connected: report it gone now
            w.dead = True
            self.workers.pop(wid, None)
            self.host.deliver(self.node_id, WorkerCrashed(worker_id=wid, reason=reason))

    async def serve_worker(self, ch: Channel, hello: P.ClientHello) -> None:
        wid = hello.worker_id
        w = self.workers.get(wid)
        if w is None or w.dead:
            await ch.aclose()
            return
        w.channel = ch
        w.pid = hello.pid
        self.clients[wid] = ch
        self._send(ch, P.ClientWelcome(self.node_id, self.cfg.session, self.cfg.shm_root, 0, wid, self.address))
        self.host.deliver(self.node_id, WorkerStarted(worker_id=wid))
        node = self.node_id
        reason = "the worker process exited"
        try:
            async for item in ch:
                t = type(item)
                if t is P.Ran:
                    w.running.discard(item.task_id)
                    outs = []
                    for oid, size, data in item.outputs:
                        if data is not None:
                            self.objects.put_inline(oid, data)
                        outs.append((oid, size))
                    self.host.post(node, TaskFinished(worker_id=wid, task_id=item.task_id, outputs=tuple(outs),
                                                      duration=item.duration, span=_span(item)))
                elif t is P.Raised:
                    w.running.discard(item.task_id)
                    self.host.post(node, TaskRaised(worker_id=wid, task_id=item.task_id, error=item.error,
                                                    retryable=item.retryable, duration=item.duration, span=_span(item)))
                elif t is P.Deliver:
                    self._from_client(wid, item)
                elif t is P.Output:
                    self.forward_output(item, item.job_id)
                elif t is P.Checkpointed:
                    self.host.post(node, ActorCheckpointed(worker_id=wid, actor_id=item.actor_id, index=item.index, payload=Payload(len(item.state), item.state)))
                if not ch.buffered:
                    self.host.pump()
        except ConnectionClosed as e:
            reason = f"the worker's connection closed ({e.reason})"
        finally:
            self.clients.pop(wid, None)
            if not w.dead:
                w.dead = True
                self.workers.pop(wid, None)
                code = _exit_status(w.pid)
                if code:
                    reason = f"the worker process (pid {w.pid}) died: {code}"
                if not self.stopping:
                    self.host.deliver(node, WorkerCrashed(worker_id=wid, reason=reason))


def start_zygote(cfg: DaemonConfig, node_id: str, close_fds: tuple[int, ...] = ()) -> ZygoteHandle:
    """Fork the worker-forking zygote (see ``zygote``).  ``main`` does this
    before it starts a thread or opens a socket."""
    zcfg = {
        "unix_path": cfg.unix_path, "session": cfg.session, "shm_root": cfg.shm_root,
        "node_id": node_id, "daemon_pid": os.getpid(),
    }
    return fork_zygote(zcfg, cfg.token, close_fds)


def _span(item: "P.Ran | P.Raised") -> tuple[float, float] | None:
    """A worker's run on the node's (trio) clock: the worker read
    ``time.perf_counter`` when it ended, which trio's clock runs on too
    (plus an offset of its own), on the same host."""
    if not item.ended:
        return None
    end = item.ended + (trio.current_time() - time.perf_counter())
    return (end - item.duration, end)
