"""The submitter's side of worker leases: one ``LeaseSubmitter`` per client process.

Theory of operation
-------------------
A client (a driver, or a worker submitting nested tasks) runs its plain
tasks on workers it *leases* from the local scheduler instead of handing
each task to its node (Ray's worker leases; the paper's bottom-up rule
still decides where: the node grants, or the global scheduler picks another
node).  ``LeaseSubmitter`` is the pure half: events in, commands out, ``now``
passed in, no I/O.

Per scheduling key (``msg_leases.scheduling_key``: resources, function,
environment, strategy) it keeps a FIFO of tasks not yet pushed, at most one
lease request in flight, and the leases it holds:

* **asking.**  While a key's queue holds more tasks than its leases can take
  (``pipeline`` in flight each), and fewer than ``max_leases`` are held, it
  sends ``RequestLease`` to its own node.  The node grants (``LeaseGranted``)
  or forwards the request to the global scheduler, which answers
  ``LeaseSpillback`` (ask node X, ``placed``): bottom-up, as a task.
* **pushing.**  Each lease takes up to ``pipeline`` tasks in flight
  (``PushTask`` to the worker's endpoint); the worker runs them in order of
  arrival and answers each (``PushReply``).
* **returning.**  A lease takes no new task ``hold`` seconds after its grant
  (a timer marks it *expired*), so a submitter with a long queue cannot keep
  a worker from others: it returns the lease once what is in flight is
  done, and asks again, behind the others in the node's FIFO.  A lease with
  nothing in flight and nothing queued for its key goes back at once.
  ``ReturnLease`` is re-sent until ``LeaseReturned``.
* **failures.**  The leased worker died (``LeaseLost`` from the node) or the
  connection to it broke (``lost(endpoint)``: the lease is returned with
  ``kill``, so the node never lends a worker that may still run our task):
  every task in flight on it is queued again as its next attempt if
  ``max_retries`` allows (-1: always), else fails with WORKER_CRASHED and
  the cause.  A lost request or answer is re-sent after ``resend_after``
  (the node answers a repeat without granting twice); a grant nobody waits
  for is returned.
* **lineage.**  A worker reports what ran to its node (``TasksRan``), which
  writes the specs to the GCS task table and then tells us
  (``LeaseTasksRecorded``).  A result ref may leave this process (passed to
  a task, handed to another process) only once its task's spec is there:
  the client asks ``escape(token, object_ids)`` and proceeds on
  ``EscapeReady(token)``; a spec not known to be recorded is written at
  once through our own node (``RecordTasks``), so an escape never waits on
  a worker that died before reporting.

Events (methods): ``submit(spec)``, ``handle(message)`` (``LeaseGranted``,
``LeaseSpillback``, ``LeaseReturned``, ``LeaseLost``, ``PushReply``,
``LeaseTasksRecorded``), ``lost(endpoint)``, ``node_died(node)``,
``timer(key)``, ``escape(token, object_ids)``.  Commands: ``Send``, ``SetTimer``,
``TaskResolved(spec, reply)``, ``TaskFailed(spec, error)`` (each submitted
task gets exactly one of the two), ``EscapeReady(token)``.  Every step is a
line of the task's or the lease's ``story``.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Hashable

from .ids import ObjectId, TaskId
from .msg_base import Command, Message, Send, SetTimer
from .msg_leases import (
    LeaseGranted,
    LeaseLost,
    LeaseReturned,
    LeaseSpillback,
    LeaseTasksRecorded,
    PushReply,
    PushTask,
    RecordTasks,
    RequestLease,
    ReturnLease,
    scheduling_key,
)
from .records import ErrorInfo, ErrorKind
from .specs import TaskSpec

__all__ = ["LeaseConfig", "LeaseSubmitter", "TaskResolved", "TaskFailed", "EscapeReady", "HOLD_TIMER",
           "RESEND_TIMER"]

HOLD_TIMER = "lease-hold"  # timer keys: (HOLD_TIMER, req_id)
RESEND_TIMER = "lease-resend"  # timer key: (RESEND_TIMER,)
STORY_LIMIT = 10_000  # tasks and leases whose story is kept


# ===========================================================================
# Commands (machine -> driver)


class TaskResolved(Command):
    """Task ``spec`` ran: ``reply`` holds its outputs or the error it raised."""

    spec: TaskSpec
    reply: PushReply


class TaskFailed(Command):
    """Task ``spec`` failed without a result (its worker died and
    ``max_retries`` are used up): its returns hold ``error``."""

    spec: TaskSpec
    error: ErrorInfo


class EscapeReady(Command):
    """The refs of ``escape(token, ...)`` may leave this process: every
    task of ours that makes them has its spec in the GCS task table."""

    token: Hashable


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    pipeline: int = 4  # tasks in flight on one leased worker
    hold: float = 1.0  # seconds after its grant a lease takes no new task
    max_leases: int = 16  # leases held at once per scheduling key
    resend_after: float = 0.2  # an unanswered request, return or record goes again

    def __post_init__(self) -> None:
        if self.pipeline < 1 or self.max_leases < 1:
            raise ValueError(f"LeaseConfig: pipeline ({self.pipeline}) and max_leases ({self.max_leases}) "
                             f"must be at least 1")
        if self.hold <= 0 or self.resend_after <= 0:
            raise ValueError(f"LeaseConfig: hold ({self.hold}) and resend_after ({self.resend_after}) must be "
                             f"positive seconds")


@dataclass(slots=True, eq=False)
class _Task:
    spec: TaskSpec
    key: tuple
    attempt: int = 0
    lease: int | None = None  # the lease it is in flight on (None: queued)


@dataclass(slots=True, eq=False)
class _Request:
    key: tuple
    spec: TaskSpec
    node: str
    placed: bool
    sent_at: float


@dataclass(slots=True, eq=False)
class _Lease:
    req_id: int
    key: tuple
    node: str
    worker: str
    endpoint: str
    granted_at: float
    in_flight: dict = field(default_factory=dict)  # task id -> attempt
    expired: bool = False


class LeaseSubmitter:
    """One client's leases and the tasks it pushes on them (see the module
    docstring)."""

    def __init__(self, submitter: str, home: str, config: LeaseConfig = LeaseConfig()) -> None:
        self.submitter = submitter
        self.home = home
        self.config = config
        self.tasks: dict[TaskId, _Task] = {}  # unresolved
        self.queues: dict[tuple, deque[TaskId]] = {}  # per key: not pushed yet, FIFO
        self.requests: dict[int, _Request] = {}  # not granted yet
        self.leases: dict[int, _Lease] = {}
        # (req id, node) -> kill, until LeaseReturned (one request may be
        # granted by two nodes: its own, on a repeat, and the one it was
        # spilled to; both grants go back)
        self.returning: dict[tuple[int, str], bool] = {}
        self.next_req = 1
        # resolved tasks whose spec is not known to be in the GCS yet
        self.results: dict[TaskId, TaskSpec] = {}
        # RecordTasks sent, not acknowledged: the spec, and the error of a
        # task that failed here (its node stores it as the outputs)
        self.recording: dict[TaskId, tuple[TaskSpec, ErrorInfo | None]] = {}
        self.recorded_early: set[TaskId] = set()  # recorded while unresolved
        self.escapes: dict[Hashable, set[TaskId]] = {}
        self.resend_armed = False
        self.stories: OrderedDict[Hashable, list] = OrderedDict()

    # ------------------------------------------------------------------ events
    def submit(self, spec: TaskSpec, now: float, sid: str = "") -> list[Command]:
        if spec.actor_id is not None or spec.actor_creation is not None:
            raise ValueError(f"task {spec.display_name()} is an actor task: leases run plain tasks only; "
                             f"send actor calls through ActorCaller and creations with SubmitTask")
        tid = spec.task_id
        if tid in self.tasks:
            raise ValueError(f"task {tid} was submitted twice to lease submitter {self.submitter}; "
                             f"a task id names one task")
        key = scheduling_key(spec)
        self.tasks[tid] = _Task(spec, key)
        self.queues.setdefault(key, deque()).append(tid)
        self._story(tid, now, sid, "submitted")
        return self._pump(key, now, sid)

    def handle(self, msg: Message, now: float) -> list[Command]:
        h = _HANDLERS.get(type(msg))
        if h is None:
            raise TypeError(f"lease submitter {self.submitter}: no handler for {type(msg).__name__}")
        return h(self, msg, now)

    def lost(self, endpoint: str, now: float, sid: str = "") -> list[Command]:
        """The connection to ``endpoint`` closed or could not be made."""
        cmds: list[Command] = []
        for l in [l for l in self.leases.values() if l.endpoint == endpoint]:
            cmds += self._lease_died(l, f"the connection to its worker {l.worker} broke", now, sid, give_back=True)
        return cmds

    def node_died(self, node: str, now: float, sid: str = "") -> list[Command]:
        """Node ``node`` is dead (the client's node tells it, from the GCS
        nodes table): its leases are lost, requests sent there start over
        at our own node, returns to it are moot."""
        cmds: list[Command] = []
        for k in [k for k in self.returning if k[1] == node]:
            del self.returning[k]
        for l in [l for l in self.leases.values() if l.node == node]:
            cmds += self._lease_died(l, f"its node {node} died", now, sid, give_back=False)
        for req_id, r in self.requests.items():
            if r.node == node and node != self.home:
                self._story(("lease", req_id), now, sid, f"{node} died: asking {self.home} again")
                r.node, r.placed, r.sent_at = self.home, False, now
                cmds.append(Send(to=r.node, msg=self._request_msg(req_id, r, sid)))
        return cmds

    def timer(self, key: Hashable, now: float, sid: str = "") -> list[Command]:
        if key[0] == HOLD_TIMER:
            l = self.leases.get(key[1])
            return self._pump(l.key, now, sid) if l is not None else []
        if key[0] == RESEND_TIMER:
            self.resend_armed = False
            return self._resend(now, sid)
        raise ValueError(f"lease submitter {self.submitter}: unknown timer {key!r}")

    def escape(self, token: Hashable, object_ids, now: float, sid: str = "") -> list[Command]:
        """Refs ``object_ids`` are about to leave this process (``token``
        names the action waiting for it: answered ``EscapeReady``)."""
        need: set[TaskId] = set()
        record: list[TaskSpec] = []
        for oid in object_ids:
            if type(oid) is not ObjectId:
                raise TypeError(f"escape: {oid!r} is not an ObjectId; pass the refs' object ids")
            if oid.is_put:
                continue
            tid = oid.task_id
            if tid in self.recording:
                need.add(tid)
                continue
            t = self.tasks.get(tid)
            spec = t.spec if t is not None and tid not in self.recorded_early else self.results.get(tid)
            if spec is None:
                continue  # not ours, or known recorded
            need.add(tid)
            self.recording[tid] = (spec, None)
            record.append(spec)
            self._story(tid, now, sid, "recording its spec: a result ref escapes")
        if not need:
            return [EscapeReady(token=token, stimulus_id=sid)]
        self.escapes[token] = need
        cmds: list[Command] = []
        if record:
            cmds.append(Send(to=self.home, msg=RecordTasks(submitter=self.submitter, specs=tuple(record),
                                                           stimulus_id=sid)))
        return cmds + self._arm(now)

    # ------------------------------------------------------------------ messages
    def _on_granted(self, m: LeaseGranted, now: float) -> list[Command]:
        sid = m.stimulus_id
        r = self.requests.get(m.req_id)
        if r is None or r.node != m.node:
            held = self.leases.get(m.req_id)
            if held is not None and held.node == m.node and held.worker == m.worker_id:
                return []  # a repeat of the grant we hold
            if (m.req_id, m.node) in self.returning:
                return []
            # nobody waits for it (answered elsewhere, or returned): give it back
            self._story(("lease", m.req_id), now, sid, f"unwanted grant from {m.node}: returned")
            return self._give_back(m.req_id, m.node, False, sid) + self._arm(now)
        del self.requests[m.req_id]
        l = _Lease(m.req_id, r.key, m.node, m.worker_id, m.endpoint, now)
        self.leases[m.req_id] = l
        self._story(("lease", m.req_id), now, sid, f"granted: worker {m.worker_id} of {m.node}")
        cmds: list[Command] = [SetTimer(at=now + self.config.hold, key=(HOLD_TIMER, m.req_id), stimulus_id=sid)]
        return cmds + self._pump(r.key, now, sid)

    def _on_spillback(self, m: LeaseSpillback, now: float) -> list[Command]:
        r = self.requests.get(m.req_id)
        if r is None:
            return []
        sid = m.stimulus_id
        r.node, r.placed, r.sent_at = m.node, True, now
        self._story(("lease", m.req_id), now, sid, f"spilled back ({m.reason}): asking {m.node}")
        return [Send(to=m.node, msg=self._request_msg(m.req_id, r, sid))]

    def _on_returned(self, m: LeaseReturned, now: float) -> list[Command]:
        self.returning.pop((m.req_id, m.node), None)
        r = self.requests.get(m.req_id)
        if r is None or r.node != m.node:
            return []
        # we are asking a node where this request's id is used up (we gave
        # back an unwanted grant of it there): ask anew, under a new id
        del self.requests[m.req_id]
        self._story(("lease", m.req_id), now, m.stimulus_id, f"used up at {m.node}: asking anew")
        return self._pump(r.key, now, m.stimulus_id)

    def _on_lost(self, m: LeaseLost, now: float) -> list[Command]:
        l = self.leases.get(m.req_id)
        if l is None or l.node != m.node:
            r = self.requests.get(m.req_id)
            if r is None or r.node != m.node:
                return []
            del self.requests[m.req_id]
            # granted and lost before the grant reached us: ask anew
            self._story(("lease", m.req_id), now, m.stimulus_id, f"lost before its grant arrived: {m.reason}")
            return self._pump(r.key, now, m.stimulus_id)
        return self._lease_died(l, m.reason, now, m.stimulus_id, give_back=False)

    def _on_reply(self, m: PushReply, now: float) -> list[Command]:
        sid = m.stimulus_id
        l = self.leases.get(m.req_id)
        tid = m.task_id
        if l is None or l.in_flight.get(tid, -1) != m.attempt:
            return []  # (a lease we gave up on, or a repeat)
        del l.in_flight[tid]
        t = self.tasks[tid]
        t.lease = None
        if m.error is not None and m.retryable and self._may_retry(t):
            t.attempt += 1
            self.queues.setdefault(t.key, deque()).appendleft(tid)
            self._story(tid, now, sid, f"raised; retry as attempt {t.attempt} (retry_exceptions)")
            return self._pump(t.key, now, sid)
        del self.tasks[tid]
        if tid in self.recorded_early:
            self.recorded_early.discard(tid)
        else:
            self.results[tid] = t.spec
        self._story(tid, now, sid, f"resolved by {l.worker} attempt={m.attempt}" + (" (error)" if m.error else ""))
        return [TaskResolved(spec=t.spec, reply=m, stimulus_id=sid)] + self._pump(t.key, now, sid)

    def _on_recorded(self, m: LeaseTasksRecorded, now: float) -> list[Command]:
        sid = m.stimulus_id
        done = set(m.task_ids)
        for tid in done:
            self.recording.pop(tid, None)
            if self.results.pop(tid, None) is None and tid in self.tasks:
                self.recorded_early.add(tid)
        cmds: list[Command] = []
        for token in [k for k, need in self.escapes.items() if not (need - done)]:
            del self.escapes[token]
            cmds.append(EscapeReady(token=token, stimulus_id=sid))
        for need in self.escapes.values():
            need -= done
        return cmds

    # ------------------------------------------------------------------ the rules
    def _pump(self, key: tuple, now: float, sid: str) -> list[Command]:
        """Push, return and ask for ``key`` as the rules say (module docstring)."""
        cfg = self.config
        cmds: list[Command] = []
        q = self.queues.get(key)
        mine = sorted((l for l in self.leases.values() if l.key == key), key=lambda l: l.req_id)
        for l in mine:
            if not l.expired and now >= l.granted_at + cfg.hold:
                l.expired = True
                self._story(("lease", l.req_id), now, sid, "hold time over: takes no new task")
            while q and not l.expired and len(l.in_flight) < cfg.pipeline:
                tid = q.popleft()
                t = self.tasks[tid]
                t.lease = l.req_id
                l.in_flight[tid] = t.attempt
                self._story(tid, now, sid, f"pushed to {l.worker} on lease {l.req_id} attempt={t.attempt}")
                cmds.append(Send(to=l.endpoint, msg=PushTask(submitter=self.submitter, req_id=l.req_id, spec=t.spec,
                                                             attempt=t.attempt, stimulus_id=sid)))
        for l in mine:
            if not l.in_flight and (l.expired or not q):
                del self.leases[l.req_id]
                self._story(("lease", l.req_id), now, sid, "returned")
                cmds += self._give_back(l.req_id, l.node, False, sid)
        if q:
            live = [l for l in mine if l.req_id in self.leases and not l.expired]
            room = sum(cfg.pipeline - len(l.in_flight) for l in live)
            asking = any(r.key == key for r in self.requests.values())
            if not asking and len(live) < cfg.max_leases and len(q) > room:
                req_id = self.next_req
                self.next_req += 1
                r = self.requests[req_id] = _Request(key, self.tasks[q[0]].spec, self.home, False, now)
                self._story(("lease", req_id), now, sid, f"requested from {self.home} ({len(q)} queued)")
                cmds.append(Send(to=self.home, msg=self._request_msg(req_id, r, sid)))
        else:
            self.queues.pop(key, None)
        return cmds + self._arm(now)

    def _lease_died(self, l: _Lease, reason: str, now: float, sid: str, give_back: bool) -> list[Command]:
        del self.leases[l.req_id]
        self._story(("lease", l.req_id), now, sid, f"lost: {reason}")
        cmds: list[Command] = self._give_back(l.req_id, l.node, True, sid) if give_back else []
        retry: list[TaskId] = []
        failed: list[tuple[TaskSpec, ErrorInfo]] = []
        for tid in l.in_flight:
            t = self.tasks[tid]
            t.lease = None
            name = t.spec.display_name()
            if self._may_retry(t):
                t.attempt += 1
                retry.append(tid)
                self._story(tid, now, sid, f"retry as attempt {t.attempt}: {reason}")
            else:
                del self.tasks[tid]
                self.recorded_early.discard(tid)
                self._story(tid, now, sid, f"failed: {reason}")
                err = ErrorInfo(ErrorKind.WORKER_CRASHED, f"the worker running {name} died: {reason} "
                                f"(max_retries={t.spec.max_retries} used up; raise max_retries to retry it)",
                                task_name=name)
                cmds.append(TaskFailed(spec=t.spec, error=err, stimulus_id=sid))
                failed.append((t.spec, err))
        if retry:
            q = self.queues.setdefault(l.key, deque())
            q.extendleft(reversed(retry))  # (ahead of the rest, in their order)
        if failed:
            # no worker reports these: our node records the spec and the
            # error (anyone holding a ref reads the error there)
            for spec, err in failed:
                self.recording[spec.task_id] = (spec, err)
            cmds.append(Send(to=self.home, msg=RecordTasks(submitter=self.submitter, specs=tuple(s for s, _ in failed),
                                                           errors=tuple(e for _, e in failed), stimulus_id=sid)))
        return cmds + self._pump(l.key, now, sid)

    @staticmethod
    def _may_retry(t: _Task) -> bool:
        n = t.spec.max_retries
        return n < 0 or t.attempt < n

    def _give_back(self, req_id: int, node: str, kill: bool, sid: str) -> list[Command]:
        self.returning[(req_id, node)] = kill
        return [Send(to=node, msg=ReturnLease(submitter=self.submitter, req_id=req_id, kill=kill, stimulus_id=sid))]

    def _request_msg(self, req_id: int, r: _Request, sid: str) -> RequestLease:
        return RequestLease(submitter=self.submitter, req_id=req_id, spec=r.spec, home=self.home, placed=r.placed,
                            stimulus_id=sid)

    def _arm(self, now: float) -> list[Command]:
        if self.resend_armed or not (self.requests or self.returning or self.recording):
            return []
        self.resend_armed = True
        return [SetTimer(at=now + self.config.resend_after, key=(RESEND_TIMER,))]

    def _resend(self, now: float, sid: str) -> list[Command]:
        """Say again what is unanswered (the node answers a repeat at most once)."""
        after = self.config.resend_after
        cmds: list[Command] = []
        for req_id, r in self.requests.items():
            if now - r.sent_at >= after:
                r.sent_at = now
                cmds.append(Send(to=r.node, msg=self._request_msg(req_id, r, sid)))
        for (req_id, node), kill in self.returning.items():
            cmds.append(Send(to=node, msg=ReturnLease(submitter=self.submitter, req_id=req_id, kill=kill,
                                                      stimulus_id=sid)))
        if self.recording:
            rec = list(self.recording.values())
            cmds.append(Send(to=self.home, msg=RecordTasks(submitter=self.submitter, specs=tuple(s for s, _ in rec),
                                                           errors=tuple(e for _, e in rec), stimulus_id=sid)))
        return cmds + self._arm(now)

    # ------------------------------------------------------------------ queries and checks
    def _story(self, key: Hashable, now: float, sid: str, what: str) -> None:
        s = self.stories.get(key)
        if s is None:
            self.stories[key] = s = []
            if len(self.stories) > STORY_LIMIT:
                self.stories.popitem(last=False)
        s.append((now, sid, what))

    def story(self, key: Hashable) -> list[tuple[float, str, str]]:
        """What happened to a task (its id) or a lease (``("lease", req_id)``)."""
        return list(self.stories.get(key, ()))

    def idle(self) -> bool:
        """Nothing queued, in flight, asked, held or being returned."""
        return not (self.tasks or self.requests or self.leases or self.returning)

    def validate(self) -> None:
        cfg = self.config
        queued = {tid: key for key, q in self.queues.items() for tid in q}
        assert all(self.queues.values()), "an empty queue is kept"
        for l in self.leases.values():
            assert len(l.in_flight) <= cfg.pipeline, f"lease {l.req_id} has {len(l.in_flight)} in flight"
            assert l.in_flight, f"lease {l.req_id} is idle but not returned"
            assert (l.req_id, l.node) not in self.returning, f"lease {l.req_id} both held and being returned"
            assert l.req_id not in self.requests, f"lease {l.req_id} both held and asked for"
            for tid, attempt in l.in_flight.items():
                t = self.tasks.get(tid)
                assert t is not None and t.lease == l.req_id and t.attempt == attempt, f"{tid} in flight is off"
        for tid, t in self.tasks.items():
            assert (t.lease is None) == (tid in queued), f"task {tid} neither queued nor in flight (or both)"
            assert t.lease is None or t.lease in self.leases, f"task {tid} on a lease we do not hold"
        keys = [r.key for r in self.requests.values()]
        assert len(keys) == len(set(keys)), "two lease requests in flight for one key"
        assert not (self.requests or self.returning or self.recording) or self.resend_armed, "nothing re-sends"
        for token, need in self.escapes.items():
            assert need and need <= set(self.recording), f"escape {token!r} waits for tasks not being recorded"


_HANDLERS = {
    LeaseGranted: LeaseSubmitter._on_granted,
    LeaseSpillback: LeaseSubmitter._on_spillback,
    LeaseReturned: LeaseSubmitter._on_returned,
    LeaseLost: LeaseSubmitter._on_lost,
    PushReply: LeaseSubmitter._on_reply,
    LeaseTasksRecorded: LeaseSubmitter._on_recorded,
}
