"""A node's part in worker leases: grant, spill back, reclaim, and record what ran.

Theory of operation
-------------------
A submitter (core/task_leases.py) asks its node for a worker lease
(``RequestLease``); ``LeaseHost``, one per ``NodeMachine``, answers from the
same books as the local scheduler (``node.scheduler``), so nothing is
counted twice and nothing is over-committed:

* **the rule.**  The request goes to the global scheduler (``LeaseForward``
  to the head, which answers the submitter ``LeaseSpillback``) for the
  local scheduler's reasons (core/scheduler.py): infeasible here, a
  strategy (SPREAD, affinity elsewhere), or overloaded (the tasks queued
  here plus the lease requests waiting reach ``forward_queue_threshold``
  while another node is alive).  A request the head placed here
  (``placed``) is only forwarded again if it can never fit here.
* **grants.**  Kept requests wait in one FIFO; the first is granted as
  soon as its resources are free and a worker is idle (workers are started
  for it as the scheduler starts them for tasks); a later request never
  passes it, so no submitter waits behind another for more than that one's
  hold time (the submitter's bound, ``LeaseConfig.hold``) plus what it has
  in flight.  A granted worker is ``LEASED``: it holds the request's
  resources (and GPU instances) in the scheduler's pool until returned.
  The local scheduler's ready tasks are dispatched first (the routed path
  is unchanged); requests take the workers left.
* **returns and reclaims.**  ``ReturnLease`` gives the worker back (idle;
  with ``kill`` it is killed: the submitter lost its connection and the
  worker may still run its task).  A leased worker that dies ends its lease
  (``LeaseLost`` to the submitter).  A dead submitter's leases are reclaimed
  (its workers killed, its requests dropped): its own node hears
  ``ClientDisconnected``, others ``SubmitterGone`` or its home node's death.
* **lineage.**  A leased worker reports what ran (``TasksRan``): each spec
  is written to the GCS task table (``AddTask``), the outputs are recorded
  (``store_outputs`` / ``fail_outputs``, as for a task the node ran), and
  once the spec is in the GCS the submitter is told
  (``LeaseTasksRecorded``).  ``RecordTasks`` from a submitter writes specs
  the same way (a ref escapes before the worker's report landed).

Requests and leases are named ``(submitter, req_id)``.  A repeat of a
request is answered again (the grant re-sent) and never granted twice; a
request for a lease already returned or lost is ignored.  Idle (no
request ever made) the host changes nothing the node did before.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .ids import TaskId
from .msg_base import Command, Send
from .msg_leases import (
    LeaseForward,
    LeaseGranted,
    LeaseLost,
    LeaseReturned,
    LeaseTasksRecorded,
    RecordTasks,
    RequestLease,
    ReturnLease,
    SubmitterGone,
    TasksRan,
)
from .messages import KillWorker
from .scheduler_records import IDLE, LEASED
from .specs import TaskSpec
from .tables import AddTask

if TYPE_CHECKING:
    from .node_effects import NodeEffects

__all__ = ["LeaseHost", "RECORDED_TOKEN"]

RECORDED_TOKEN = "lease-recorded"  # GCS reply tokens: (RECORDED_TOKEN, submitter, task id)
_ENDED_KEPT = 4096  # leases returned or lost remembered (a late repeat of their request is ignored)


@dataclass(slots=True, eq=False)
class _Held:
    submitter: str
    req_id: int
    spec: TaskSpec
    home: str
    worker: str | None = None  # None: waiting in the FIFO
    granted_at: float = 0.0
    gpu_ids: tuple[int, ...] = ()


class LeaseHost:
    """A node's worker leases (see the module docstring)."""

    def __init__(self, node: "NodeEffects") -> None:
        self.node = node
        self.leases: dict[tuple[str, int], _Held] = {}
        self.queue: deque[tuple[str, int]] = deque()  # requests waiting for a worker, FIFO
        self.by_worker: dict[str, tuple[str, int]] = {}
        # leases over: "returned", or why they were lost (a repeat of their
        # request is answered with it, never granted)
        self.ended: OrderedDict[tuple[str, int], str] = OrderedDict()
        # submitters known dead: a request of theirs still on its way (from
        # another host, where their death may be heard first) is refused
        self.gone: OrderedDict[str, None] = OrderedDict()
        self.granted_count = 0
        self.forwarded_count = 0

    # ------------------------------------------------------------------ requests
    def on_request(self, ev: RequestLease, now: float) -> list[Command]:
        sid = ev.stimulus_id
        key = (ev.submitter, ev.req_id)
        if ev.submitter in self.gone:
            return []
        over = self.ended.get(key)
        if over is not None:
            # a repeat of a request whose lease is over: say again how (the
            # answer may have been lost; a lost lease's submitter asks anew)
            if over == "returned":
                return [Send(to=ev.submitter, msg=LeaseReturned(req_id=ev.req_id, node=self.node.node_id,
                                                                stimulus_id=sid))]
            return [Send(to=ev.submitter, msg=LeaseLost(req_id=ev.req_id, node=self.node.node_id, reason=over,
                                                        stimulus_id=sid))]
        h = self.leases.get(key)
        if h is not None:
            return [self._grant_msg(h, sid)] if h.worker is not None else []
        node = self.node
        reason = self.spill_reason(ev.spec, ev.placed)
        if reason is not None:
            self.forwarded_count += 1
            node.story_add(ev.spec.task_id, now, sid, f"lease {ev.submitter}#{ev.req_id} forwarded ({reason})")
            return [Send(to=node.head, msg=LeaseForward(request=ev, from_node=node.node_id, reason=reason,
                                                         stimulus_id=sid))]
        self.leases[key] = _Held(ev.submitter, ev.req_id, ev.spec, ev.home)
        self.queue.append(key)
        return self.grant(now, sid)

    def spill_reason(self, spec: TaskSpec, placed: bool) -> str | None:
        """The local scheduler's forwarding rule (core/scheduler.py), for a
        lease: None keeps the request here."""
        s = self.node.scheduler
        if not spec.resources.is_subset_of(s.total):
            return "infeasible"
        if placed:
            return None
        if spec.scheduling is not None:
            reason = s._strategy_reason(spec)
            if reason is not None:
                return reason
        if s.other_nodes_alive and s.queue_length + len(self.queue) >= s.config.forward_queue_threshold:
            return "overloaded"
        return None

    def grant(self, now: float, sid: str) -> list[Command]:
        """Grant the waiting requests, first come first served, while
        resources and idle workers allow (called after every event while
        requests wait)."""
        s = self.node.scheduler
        cmds: list[Command] = []
        q = self.queue
        while q:
            h = self.leases[q[0]]
            req = h.spec.resources
            if not req.is_subset_of(s.available):
                break
            gpu = req.units("GPU")
            gpus = s.gpus.pick(gpu) if gpu else ()
            if gpus is None:
                break
            if not s.idle:
                room = s.max_workers - s._alive_pool()
                for _ in range(max(0, min(len(q) - s.pending_starts, room))):
                    cmds.append(s._start_worker(sid))
                break
            q.popleft()
            wid = s.idle.popleft()
            w = s.workers[wid]
            s.available = s.available - req
            w.state = LEASED
            w.held = req
            if gpus:
                s.gpus.take(wid, gpus)
                h.gpu_ids = tuple(i for i, _ in gpus)
            h.worker = wid
            h.granted_at = now
            self.by_worker[wid] = (h.submitter, h.req_id)
            self.granted_count += 1
            self.node.story_add(h.spec.task_id, now, sid, f"lease {h.submitter}#{h.req_id} granted: worker {wid}")
            cmds.append(self._grant_msg(h, sid))
        return cmds

    def _grant_msg(self, h: _Held, sid: str) -> Send:
        return Send(to=h.submitter, msg=LeaseGranted(req_id=h.req_id, worker_id=h.worker, endpoint=h.worker,
                                                      node=self.node.node_id, gpu_ids=h.gpu_ids, stimulus_id=sid))

    # ------------------------------------------------------------------ returns and reclaims
    def on_return(self, ev: ReturnLease, now: float) -> list[Command]:
        sid = ev.stimulus_id
        key = (ev.submitter, ev.req_id)
        cmds = self._end(key, ev.kill, "returned", now, sid)
        return cmds + [Send(to=ev.submitter, msg=LeaseReturned(req_id=ev.req_id, node=self.node.node_id,
                                                               stimulus_id=sid))]

    def _end(self, key: tuple[str, int], kill: bool, why: str, now: float, sid: str) -> list[Command]:
        h = self.leases.pop(key, None)
        self._over(key, "returned" if not why.startswith("reclaimed") else why)
        if h is None:
            return []
        if h.worker is None:
            self.queue.remove(key)
            return []
        s = self.node.scheduler
        wid = h.worker
        del self.by_worker[wid]
        w = s.workers[wid]
        s._release(w)
        self.node.story_add(h.spec.task_id, now, sid, f"lease {h.submitter}#{h.req_id} {why}"
                            + (": worker killed" if kill else ""))
        cmds: list[Command] = []
        if kill:
            del s.workers[wid]
            cmds.append(KillWorker(worker_id=wid, reason=f"lease {h.submitter}#{h.req_id} {why}", stimulus_id=sid))
            if s._alive_pool() + s.pending_starts < s.prestart:
                cmds.append(s._start_worker(sid))
        else:
            w.state = IDLE
            s.idle.append(wid)
        return cmds + s.dispatch(now, sid)

    def _over(self, key: tuple[str, int], how: str) -> None:
        if key not in self.ended:
            self.ended[key] = how
            if len(self.ended) > _ENDED_KEPT:
                self.ended.popitem(last=False)

    def on_worker_crashed(self, wid: str, reason: str, now: float, sid: str) -> list[Command]:
        """A leased worker died (the scheduler then frees what it held)."""
        key = self.by_worker.pop(wid)
        h = self.leases.pop(key)
        h.worker = None
        why = f"its worker {wid} died: {reason}"
        self._over(key, why)
        self.node.story_add(h.spec.task_id, now, sid, f"lease {h.submitter}#{h.req_id} lost: worker {wid} died")
        return [Send(to=h.submitter, msg=LeaseLost(req_id=h.req_id, node=self.node.node_id, reason=why,
                                                    stimulus_id=sid))]

    def submitter_gone(self, submitter: str, now: float, sid: str) -> list[Command]:
        if submitter not in self.gone:
            self.gone[submitter] = None
            if len(self.gone) > _ENDED_KEPT:
                self.gone.popitem(last=False)
        cmds: list[Command] = []
        for key in [k for k in self.leases if k[0] == submitter]:
            cmds += self._end(key, True, f"reclaimed: submitter {submitter} is gone", now, sid)
        return cmds

    def on_submitter_gone(self, ev: SubmitterGone, now: float) -> list[Command]:
        return self.submitter_gone(ev.submitter, now, ev.stimulus_id)

    def home_died(self, node_id: str, now: float, sid: str) -> list[Command]:
        """Node ``node_id`` is dead: so are the submitters it was home to."""
        cmds: list[Command] = []
        for sub in sorted({h.submitter for h in self.leases.values() if h.home == node_id}):
            cmds += self.submitter_gone(sub, now, sid)
        return cmds

    # ------------------------------------------------------------------ lineage
    def on_ran(self, ev: TasksRan, now: float) -> list[Command]:
        sid = ev.stimulus_id
        node = self.node
        cmds: list[Command] = []
        for e in ev.entries:
            spec = e.spec
            start, end = e.span if e.span is not None else (now - e.duration, now)
            node.timeline.record(spec, e.attempt, ev.worker_id, start, end, "ok" if e.error is None else e.error.kind.value)
            node.story_add(spec.task_id, now, sid, f"ran on leased worker {ev.worker_id} (submitter {ev.submitter})")
            cmds += self._record(spec, ev.submitter, now, sid)
            if e.error is None:
                cmds += node.store_outputs(spec, tuple((o.object_id, o.size) for o in e.outputs), e.attempt, now, sid)
            else:
                cmds += node.fail_outputs(spec, e.error, e.attempt, now, sid)
        return cmds

    def on_record(self, ev: RecordTasks, now: float) -> list[Command]:
        sid = ev.stimulus_id
        cmds: list[Command] = []
        errors = ev.errors or (None,) * len(ev.specs)
        for spec, error in zip(ev.specs, errors):
            cmds += self._record(spec, ev.submitter, now, sid)
            if error is not None:
                self.node.story_add(spec.task_id, now, sid, f"failed at its submitter {ev.submitter}: {error.kind.value}")
                cmds += self.node.fail_outputs(spec, error, 0, now, sid)
        return cmds

    def _record(self, spec: TaskSpec, submitter: str, now: float, sid: str) -> list[Command]:
        node = self.node
        return node.gcs_write(AddTask(spec, node.node_id), (RECORDED_TOKEN, submitter, spec.task_id), now, sid)

    def on_recorded(self, submitter: str, tid: TaskId, sid: str) -> list[Command]:
        """The GCS has ``tid``'s spec (the reply to ``_record``'s write)."""
        return [Send(to=submitter, msg=LeaseTasksRecorded(task_ids=(tid,), stimulus_id=sid))]

    # ------------------------------------------------------------------ checks
    def active(self) -> bool:
        """Has a lease ever been asked of this node?  (Idle, the node runs
        none of the lease code: its old paths are unchanged.)"""
        return bool(self.leases or self.ended)

    def validate(self) -> None:
        workers = self.node.scheduler.workers
        for key, h in self.leases.items():
            assert key not in self.ended, f"lease {key} both held and over"
            if h.worker is None:
                assert key in self.queue, f"lease request {key} neither granted nor waiting"
            else:
                assert self.by_worker.get(h.worker) == key, f"lease {key}'s worker {h.worker} is not booked to it"
                w = workers.get(h.worker)
                assert w is not None and w.state == LEASED, f"lease {key}'s worker {h.worker} is not leased"
                assert w.held == h.spec.resources, f"leased worker {h.worker} holds {w.held}, not {h.spec.resources}"
        assert len(self.queue) + len(self.by_worker) == len(self.leases), "lease books disagree"
        leased = sum(1 for w in workers.values() if w.state == LEASED)
        assert leased == len(self.by_worker), f"{leased} workers leased, {len(self.by_worker)} leases granted"
