"""Messages of worker leases: submitter <-> node/head, submitter <-> leased worker, worker -> node.

Theory of operation
-------------------
On the lease path (core/task_leases.py, docs/LEASES.md) a submitter (a
driver, or a worker submitting nested tasks) does not hand each task to its
node: it asks the node for a *lease* on a worker for a scheduling key
(resource shape, function, environment, strategy: ``scheduling_key``), and
pushes the key's tasks straight to the leased worker, several in flight.

* submitter -> node: ``RequestLease`` (``placed``: the global scheduler
  chose this node, do not spill it again unless it can never fit),
  ``ReturnLease`` (done with it; ``kill``: the connection to the worker
  broke, the node kills the worker so nothing it still runs can overlap the
  next holder), ``RecordTasks`` (write these tasks' specs to the GCS now: a
  result is about to leave the submitter);
* node -> submitter: ``LeaseGranted`` (the worker and where it listens),
  ``LeaseReturned`` (the return is done; also the answer to a return of a
  lease the node does not know), ``LeaseLost`` (the leased worker died, or
  the node took the lease back), ``LeaseTasksRecorded`` (these tasks' specs
  are in the GCS task table);
* node -> head: ``LeaseForward`` (the bottom-up rule says not here:
  infeasible, overloaded, or a strategy); the head's global scheduler picks
  a node and tells the submitter ``LeaseSpillback`` (ask that node);
* submitter <-> worker: ``PushTask`` / ``PushReply``;
* worker -> its node: ``TasksRan`` in batches (what ran: the node records
  the specs, the outputs and the stories as if it had dispatched them).

None of these is in the simulator's trace yet: the simulator keeps the
routed path this stop.  The messages module does not re-export these
names: import them from here.
"""

from __future__ import annotations

from .ids import TaskId
from .msg_base import Message, install_protocol
from .msg_direct import DirectOutput, DirectRan
from .records import ErrorInfo
from .specs import TaskSpec

__all__ = [
    "scheduling_key",
    "RequestLease",
    "LeaseGranted",
    "LeaseSpillback",
    "LeaseForward",
    "ReturnLease",
    "LeaseReturned",
    "LeaseLost",
    "PushTask",
    "PushReply",
    "TasksRan",
    "RecordTasks",
    "LeaseTasksRecorded",
    "SubmitterGone",
]


def scheduling_key(spec: TaskSpec) -> tuple:
    """The tasks one lease may run: Ray's scheduling key (the scheduling
    class -- resource shape, function, strategy -- and the runtime
    environment).  A worker leased for one key never runs another key's
    task, so a lease never holds the wrong resources or environment."""
    return (spec.resources, spec.function, spec.env_vars, spec.scheduling)


# ===========================================================================
# Submitter <-> node (and head)


class RequestLease(Message):
    """Submitter to a node: lease me a worker for tasks like ``spec`` (its
    resources, strategy and key; ``spec`` itself is one of the queued
    tasks, as in Ray's lease requests).  ``req_id`` names the request and,
    granted, the lease (unique per submitter); ``home`` is the submitter's
    own node (a node holding its leases reclaims them when that node dies).
    Sent again (a lost answer) it is answered again: never granted twice."""

    submitter: str
    req_id: int
    spec: TaskSpec
    home: str
    placed: bool = False


class LeaseGranted(Message):
    """Node to submitter: lease ``req_id`` is worker ``worker_id`` of node
    ``node``, taking pushed tasks at ``endpoint`` (opaque to the core: the
    transport's address of the worker); ``gpu_ids``: the GPU instances the
    lease holds (the worker runs its tasks with them visible, as
    ``Execute.gpu_ids``)."""

    req_id: int
    worker_id: str
    endpoint: str
    node: str
    gpu_ids: tuple[int, ...] = ()


class LeaseSpillback(Message):
    """Head (its global scheduler) to submitter: ask ``node`` for lease
    ``req_id`` (``reason``: why the first node did not keep it)."""

    req_id: int
    node: str
    reason: str = ""


class LeaseForward(Message):
    """Node to head: the bottom-up rule sends this lease request to the
    global scheduler (``reason``: infeasible, overloaded, spread, affinity)."""

    request: RequestLease
    from_node: str
    reason: str


class ReturnLease(Message):
    """Submitter to node: done with lease ``req_id`` (a request not granted
    yet is dropped).  ``kill``: the connection to the worker broke; the node
    kills the worker rather than lend it again while it may still run."""

    submitter: str
    req_id: int
    kill: bool = False


class LeaseReturned(Message):
    """Node ``node`` to submitter: lease ``req_id`` is back (or was never
    held there)."""

    req_id: int
    node: str


class LeaseLost(Message):
    """Node ``node`` to submitter: lease ``req_id`` is gone (``reason``: its
    worker died, or the node took it back); tasks pushed on it did not
    report."""

    req_id: int
    node: str
    reason: str


class SubmitterGone(Message):
    """To a node (from the transport's failure detection, the way a driver's
    exit is ``ClientDisconnected``): ``submitter`` is dead; reclaim its
    leases and drop its requests."""

    submitter: str


# ===========================================================================
# Submitter <-> leased worker


class PushTask(Message):
    """Submitter to its leased worker: run ``spec`` (attempt ``attempt``)
    under lease ``req_id``, after the tasks pushed before it."""

    submitter: str
    req_id: int
    spec: TaskSpec
    attempt: int = 0


class PushReply(Message):
    """Worker to submitter: ``task_id`` (attempt ``attempt``) ran: its
    ``outputs`` (inline, or in the worker's node's store, reported there
    before this reply) or its ``error`` (``retryable``: it raised and the
    task's ``retry_exceptions`` allow another attempt)."""

    req_id: int
    task_id: TaskId
    attempt: int
    outputs: tuple[DirectOutput, ...] = ()
    error: ErrorInfo | None = None
    retryable: bool = False


# ===========================================================================
# Lineage: worker -> node, submitter -> node, node -> submitter


class TasksRan(Message):
    """A leased worker to its node, batched, off the critical path: these
    tasks of ``submitter`` ran.  The node writes each spec to the GCS task
    table (lineage), records the outputs, and, once the spec is there, tells
    the submitter (``LeaseTasksRecorded``)."""

    worker_id: str
    submitter: str
    entries: tuple[DirectRan, ...]


class RecordTasks(Message):
    """Submitter to its own node: write these tasks' specs to the GCS task
    table now (idempotent with a worker's report), then answer
    ``LeaseTasksRecorded``.  Sent when a result ref is about to leave the
    submitter before the worker's report was acknowledged, and for a task
    that failed without a result (``errors``: one per spec, None for a spec
    only: the node stores the error as the task's outputs, so whoever
    holds a ref to them reads the error)."""

    submitter: str
    specs: tuple[TaskSpec, ...]
    errors: tuple[ErrorInfo | None, ...] = ()

    def __post_init__(self) -> None:
        if self.errors and len(self.errors) != len(self.specs):
            raise ValueError(f"RecordTasks: {len(self.errors)} errors for {len(self.specs)} specs; "
                             f"give one error (or None) per spec, or none at all")


class LeaseTasksRecorded(Message):
    """Node to submitter: these tasks' specs are in the GCS task table."""

    task_ids: tuple[TaskId, ...]


install_protocol(__name__)
