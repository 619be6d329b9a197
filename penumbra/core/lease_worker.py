"""The leased worker's side: run pushed tasks in order of arrival, report what ran in batches.

Theory of operation
-------------------
A worker leased to a submitter (core/task_leases.py) takes ``PushTask``
messages straight from it.  ``LeaseWorker`` is the pure half: it runs them
one at a time in the order they arrived (``RunTask``; the transport runs it
and says ``finished``), answers each to its submitter (``PushReply``), and
tells its node what ran (``TasksRan``), batched off the critical path:
``REPORT_BATCH`` entries or ``REPORT_DELAY`` after the first, whichever
comes first -- except that a task with an output in the node's store is
reported *before* its reply is sent, so anyone the submitter hands the ref
to finds the object through the node and the GCS.  The node writes each
reported spec to the GCS task table and acknowledges it to the submitter
(the lineage rule: docs/LEASES.md).

The worker does not check who pushes: the node lent it to one submitter at a
time and kills it rather than lend it again while a broken connection may
leave a task of the last holder running (``ReturnLease(kill=True)``).

Events (methods): ``push(PushTask)``, ``finished(task_id, outputs | error)``,
``timer(key)``, ``flush()`` (report now: the worker is about to exit).
Commands: ``RunTask(spec, attempt)``, ``Send`` (``PushReply`` to the
submitter, ``TasksRan`` to the node), ``SetTimer`` (key ``(FLUSH_TIMER,
worker_id)``).
"""

from __future__ import annotations

from collections import deque
from typing import Hashable

from .ids import TaskId
from .msg_base import Command, Send, SetTimer
from .msg_direct import DirectOutput, DirectRan
from .msg_leases import PushReply, PushTask, TasksRan
from .records import ErrorInfo
from .specs import TaskSpec

__all__ = ["LeaseWorker", "RunTask", "REPORT_BATCH", "REPORT_DELAY", "FLUSH_TIMER"]

REPORT_BATCH = 64
REPORT_DELAY = 0.005
FLUSH_TIMER = "lease-flush"


class RunTask(Command):
    """Run pushed task ``spec`` (attempt ``attempt``); it ends with
    ``LeaseWorker.finished``."""

    spec: TaskSpec
    attempt: int


class LeaseWorker:
    """One leased worker's queue of pushed tasks (see the module docstring)."""

    def __init__(self, worker_id: str, node: str, batch: int = REPORT_BATCH, delay: float = REPORT_DELAY) -> None:
        if batch < 1 or delay < 0:
            raise ValueError(f"LeaseWorker: batch ({batch}) must be >= 1 and delay ({delay}) >= 0")
        self.worker_id = worker_id
        self.node = node
        self.batch = batch
        self.delay = delay
        self.queue: deque[PushTask] = deque()
        self.running: PushTask | None = None
        self.pending: list[tuple[str, DirectRan]] = []  # (submitter, what ran), not reported yet
        self.armed = False
        self.ran = 0

    def push(self, m: PushTask, now: float) -> list[Command]:
        self.queue.append(m)
        return self._next(m.stimulus_id)

    def finished(self, task_id: TaskId, now: float, outputs: tuple[DirectOutput, ...] = (),
                 error: ErrorInfo | None = None, retryable: bool = False, duration: float = 0.0,
                 span: tuple[float, float] | None = None, sid: str = "") -> list[Command]:
        m = self.running
        if m is None or m.spec.task_id != task_id:
            raise ValueError(f"worker {self.worker_id}: finished({task_id}) but it runs "
                             f"{m.spec.task_id if m is not None else 'nothing'}")
        spec = m.spec
        if error is None and tuple(o.object_id for o in outputs) != spec.return_ids:
            raise ValueError(f"worker {self.worker_id}: task {spec.display_name()} has return ids "
                             f"{spec.return_ids}, got outputs for {tuple(o.object_id for o in outputs)}")
        self.running = None
        self.ran += 1
        self.pending.append((m.submitter, DirectRan(spec=spec, attempt=m.attempt, outputs=outputs if error is None else (),
                                                     error=error, duration=duration, span=span)))
        cmds: list[Command] = []
        if any(o.data is None for o in outputs) or len(self.pending) >= self.batch:
            cmds += self.flush(sid)
        elif not self.armed:
            self.armed = True
            cmds.append(SetTimer(at=now + self.delay, key=(FLUSH_TIMER, self.worker_id), stimulus_id=sid))
        cmds.append(Send(to=m.submitter, msg=PushReply(req_id=m.req_id, task_id=task_id, attempt=m.attempt,
                                                       outputs=outputs if error is None else (), error=error,
                                                       retryable=retryable and error is not None, stimulus_id=sid)))
        return cmds + self._next(sid)

    def timer(self, key: Hashable, now: float, sid: str = "") -> list[Command]:
        self.armed = False
        return self.flush(sid)

    def flush(self, sid: str = "") -> list[Command]:
        """Report everything not reported yet (one ``TasksRan`` per submitter)."""
        if not self.pending:
            return []
        by: dict[str, list[DirectRan]] = {}
        for submitter, entry in self.pending:
            by.setdefault(submitter, []).append(entry)
        self.pending = []
        return [Send(to=self.node, msg=TasksRan(worker_id=self.worker_id, submitter=s, entries=tuple(e),
                                                stimulus_id=sid)) for s, e in by.items()]

    def _next(self, sid: str) -> list[Command]:
        if self.running is not None or not self.queue:
            return []
        m = self.running = self.queue.popleft()
        return [RunTask(spec=m.spec, attempt=m.attempt, stimulus_id=sid)]

    def validate(self) -> None:
        assert self.running is not None or not self.queue, "tasks queued but none runs"
        assert len(self.pending) < self.batch, "a full batch was not reported"
        assert not self.pending or self.armed, "a report waits with no timer"
