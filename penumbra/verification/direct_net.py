"""An in-memory world for direct actor calls: callers, one actor's workers, faults.

In the spirit of ``memnet`` (and etcd-raft's test network): no threads, no
real time, every step a method call, so a run is a pure function of the
steps taken.  It wires ``ActorCaller`` machines (core/actor_caller.py) to
the ``ActorInbox`` of the actor's live worker (core/actor_inbox.py) and
plays the rest of the world:

* **connections**: one FIFO link per (caller, endpoint) direction;
  ``deliver(link, i)`` may take any queued message, not just the first
  (reordering); ``cut`` drops what is on a caller's links and tells the
  caller (``lost``), as a broken connection does; a send to an endpoint
  whose worker is gone fails the same way;
* **the node and the GCS**: the actor's row and endpoint, sent to each
  caller as ``ActorWatched`` on a FIFO of its own (rows may lag), and
  answered again on ``Watch``;
* **the worker**: runs what the inbox says (``RunCall``), finishes calls when
  told (``finish``), dies (``kill``: a new incarnation is RESTARTING, or the
  actor is DEAD once ``max_restarts`` are used) and comes back
  (``restart``: a new inbox, a new endpoint).

It records what ran where and how each call ended, and ``check`` holds the
properties of direct calls: calls of one caller run in sequence order in an
incarnation; at most once per incarnation; at most once in all unless
``max_task_retries`` allows more (and never more than it allows); every
call ends exactly once (``Resolved`` or ``Failed``, and a ``Failed`` has
its error stored for other processes: ``StoreFailure``); a resolved call's value
is the one its run produced; a call cancelled before it was sent never
runs.  ``settle`` heals every fault and runs the world until every call has
ended (each must).

Out of the model: the switch to the routed path (core/actor_caller.py).
Connections here either work or are lost (never ``unreachable``), and the
node publishes every endpoint in time (the caller's ``ENDPOINT_TIMER`` is
not kept): a call rerouted is a bug here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.actor_caller import ENDPOINT_TIMER, ActorCaller, Failed, Republish, Reroute, Resolved, StoreFailure, Watch
from ..core.actor_inbox import ActorInbox, CheckRan, EndActor, InterruptCall, ReportRan, Reply, RunCall
from ..core.ids import ActorId, actor_id_of, child_task_id, driver_task_id
from ..core.msg_base import Send, SetTimer
from ..core.msg_direct import (
    ActorWatched,
    DirectCall,
    DirectCancel,
    DirectFloor,
    DirectOutput,
    DirectReply,
    EndpointRow,
)
from ..core.records import ActorEntry, ActorState, ErrorInfo, ErrorKind
from ..core.specs import ActorSpec, FunctionDescriptor, TaskSpec

__all__ = ["DirectNet", "Broken"]


class Broken(AssertionError):
    """A property of direct calls does not hold."""


@dataclass
class _Work:
    spec: TaskSpec
    attempt: int
    incarnation: int
    interrupted: bool = False


@dataclass
class _Outcome:
    kind: str  # "resolved" | "failed"
    error: ErrorKind | None = None
    incarnation: int | None = None  # the replying incarnation (resolved)


@dataclass
class DirectNet:
    max_task_retries: int = 0
    max_restarts: int = 3
    max_concurrency: int = 1
    callers: tuple[str, ...] = ("c:a", "c:b")
    # every incarnation listens at the same address (a restart on the same
    # host reusing its socket path): a call meant for an older incarnation
    # reaches the new one, which answers it ``stale``
    reuse_endpoint: bool = False
    now: float = 0.0
    # -- the world
    machines: dict = field(default_factory=dict)  # caller id -> ActorCaller
    inbox: ActorInbox | None = None
    incarnation: int = 0
    restarts: int = 0
    state: ActorState = ActorState.PENDING
    published: EndpointRow | None = None  # the endpoint row in the "GCS"
    links: dict = field(default_factory=dict)  # (src, dst) -> [messages]
    rows: dict = field(default_factory=dict)  # caller -> [ActorWatched] (the node's channel)
    lost_events: list = field(default_factory=list)  # (caller, endpoint)
    timers: list = field(default_factory=list)  # (owner, key, at)
    work: dict = field(default_factory=dict)  # task id -> _Work (running on the worker)
    # -- records
    seqs: dict = field(default_factory=dict)  # caller -> next seq
    submitted: dict = field(default_factory=dict)  # task id -> spec
    outcomes: dict = field(default_factory=dict)  # task id -> _Outcome
    runs: list = field(default_factory=list)  # (incarnation, caller, seq, attempt, task id)
    values: dict = field(default_factory=dict)  # (task id, incarnation) -> value
    cancelled_unsent: set = field(default_factory=set)  # failed at once by a cancel
    stored: set = field(default_factory=set)  # task ids whose failure was stored (StoreFailure)
    reported: list = field(default_factory=list)  # (incarnation, DirectRan)
    answered_from: dict = field(default_factory=dict)  # task id -> the incarnation whose record answered it
    count: int = 0

    def __post_init__(self) -> None:
        self.root = driver_task_id(1)
        creation = TaskSpec(task_id=child_task_id(self.root, 1 << 40), job_id=1, parent_task_id=self.root,
                            function=FunctionDescriptor(b"C", "C.__init__"))
        self.actor_id: ActorId = actor_id_of(creation.task_id)
        self.spec = ActorSpec(actor_id=self.actor_id, cls=FunctionDescriptor(b"C", "C"),
                              max_restarts=self.max_restarts, max_task_retries=self.max_task_retries,
                              max_concurrency=self.max_concurrency)
        self.creation = creation
        for c in self.callers:
            self.machines[c] = ActorCaller(c)
            self.rows[c] = []

    # ------------------------------------------------------------------ the actor
    def entry(self) -> ActorEntry:
        cause = ErrorInfo(ErrorKind.ACTOR_DIED, "its worker died and max_restarts are used up") \
            if self.state is ActorState.DEAD else None
        return ActorEntry(self.spec, self.creation, state=self.state, node="node:0" if self.state is ActorState.ALIVE else "",
                          incarnation=self.incarnation, restarts=self.restarts, death_cause=cause)

    def endpoint(self) -> str:
        return "ep" if self.reuse_endpoint else f"ep:{self.incarnation}"

    def _tell_all(self, with_endpoint: bool = True) -> None:
        for c in self.callers:
            self.rows[c].append(ActorWatched(actor_id=self.actor_id, entry=self.entry(),
                                             endpoint=self.published if with_endpoint else None))

    def start(self, split: bool = False) -> None:
        """The actor (its incarnation ``incarnation``) is up: its row goes
        ALIVE, its endpoint is published (``split``: the row reaches callers
        before the endpoint does)."""
        if self.state not in (ActorState.PENDING, ActorState.RESTARTING):
            return
        self.state = ActorState.ALIVE
        self.inbox = ActorInbox(self.actor_id, self.incarnation, self.max_concurrency)
        if split:
            self._tell_all(with_endpoint=False)
        self.published = EndpointRow(actor_id=self.actor_id, incarnation=self.incarnation, endpoint=self.endpoint(),
                                     node="node:0")
        self._tell_all()

    def kill(self) -> None:
        """The worker dies: what was on its links is lost, its callers'
        connections close, and the actor restarts (or is DEAD)."""
        if self.state is not ActorState.ALIVE:
            return
        ep = self.endpoint()
        for key in [k for k in self.links if ep in k]:
            del self.links[key]
        self.work.clear()
        self.inbox = None
        self.timers = [t for t in self.timers if t[0] != "inbox"]
        for c in self.callers:
            self.lost_events.append((c, ep))
        if self.restarts < self.max_restarts:
            self.restarts += 1
            self.incarnation += 1
            self.state = ActorState.RESTARTING
        else:
            self.state = ActorState.DEAD
        self._tell_all()

    # ------------------------------------------------------------------ callers
    def submit(self, caller: str) -> TaskSpec:
        seq = self.seqs.get(caller, 0)
        self.seqs[caller] = seq + 1
        self.count += 1
        spec = TaskSpec(task_id=child_task_id(self.root, self.count), job_id=1, parent_task_id=self.root,
                        function=FunctionDescriptor(b"C.m", "C.m"), max_retries=0, actor_id=self.actor_id,
                        caller_id=caller, sequence_no=seq, method="m")
        self.submitted[spec.task_id] = spec
        self._from_caller(caller, self.machines[caller].submit(spec, self.now))
        return spec

    def cancel(self, caller: str, k: int) -> None:
        mine = [t for t, s in self.submitted.items() if s.caller_id == caller and t not in self.outcomes]
        if not mine:
            return
        tid = mine[k % len(mine)]
        found, cmds = self.machines[caller].cancel(tid, self.now)
        before = set(self.outcomes)
        self._from_caller(caller, cmds)
        if tid in self.outcomes and tid not in before and self.outcomes[tid].error is ErrorKind.TASK_CANCELLED:
            if not any(r[4] == tid for r in self.runs):
                self.cancelled_unsent.add(tid)

    # ------------------------------------------------------------------ the network
    def deliver(self, k: int, i: int = 0) -> bool:
        """Deliver message ``i`` (not necessarily the first: reordering) of
        the ``k``-th non-empty link."""
        live = sorted(key for key, q in self.links.items() if q)
        if not live:
            return False
        src, dst = live[k % len(live)]
        q = self.links[(src, dst)]
        msg = q.pop(i % len(q))
        if dst in self.machines:
            self._from_caller(dst, self.machines[dst].reply(msg, self.now))
        else:
            self._to_worker(msg)
        return True

    def deliver_row(self, caller: str) -> bool:
        q = self.rows[caller]
        if not q:
            return False
        self._from_caller(caller, self.machines[caller].watched(q.pop(0), self.now))
        return True

    def deliver_lost(self) -> bool:
        if not self.lost_events:
            return False
        caller, ep = self.lost_events.pop(0)
        self._from_caller(caller, self.machines[caller].lost(ep, self.now))
        return True

    def cut(self, caller: str) -> None:
        """The connection between ``caller`` and the live worker breaks."""
        ep = self.endpoint()
        dropped = False
        for key in ((caller, ep), (ep, caller)):
            if self.links.get(key):
                dropped = True
            self.links.pop(key, None)
        if dropped or self.state is ActorState.ALIVE:
            self.lost_events.append((caller, ep))

    def fire_timer(self, k: int) -> bool:
        if not self.timers:
            return False
        owner, key, at = self.timers.pop(k % len(self.timers))
        self.now = max(self.now, at)
        if owner == "inbox":
            if self.inbox is not None:
                self._from_worker(self.inbox.timer(key, self.now))
        else:
            self._from_caller(owner, self.machines[owner].timer(key, self.now))
        return True

    # ------------------------------------------------------------------ the worker
    def finish(self, k: int, raises: bool = False) -> bool:
        if not self.work or self.inbox is None:
            return False
        tid = sorted(self.work)[k % len(self.work)]
        w = self.work.pop(tid)
        if raises:
            cmds = self.inbox.finished(tid, self.now, error=ErrorInfo(ErrorKind.TASK_ERROR, "boom"))
        else:
            value = f"{w.incarnation}:{tid.hex()}".encode()
            self.values[(tid, w.incarnation)] = value
            outputs = tuple(DirectOutput(object_id=o, size=len(value), data=value) for o in w.spec.return_ids)
            cmds = self.inbox.finished(tid, self.now, outputs=outputs, duration=0.001)
        self._from_worker(cmds)
        return True

    # ------------------------------------------------------------------ plumbing
    def _from_caller(self, caller: str, cmds) -> None:
        for c in cmds:
            t = type(c)
            if t is Send:
                if self.state is ActorState.ALIVE and c.to == self.endpoint():
                    self.links.setdefault((caller, c.to), []).append(c.msg)
                else:
                    self.lost_events.append((caller, c.to))  # (nobody listens there)
            elif t is Watch:
                self.rows[caller].append(ActorWatched(actor_id=self.actor_id, entry=self.entry(),
                                                      endpoint=self.published))
            elif t is Resolved or t is Failed:
                tid = c.spec.task_id
                if tid in self.outcomes:
                    raise Broken(f"call {c.spec!r} ended twice: {self.outcomes[tid]} then {c!r}")
                if t is Resolved:
                    self._check_value(c.reply)
                    err = c.reply.error.kind if c.reply.error is not None else None
                    self.outcomes[tid] = _Outcome("resolved", err, c.reply.incarnation)
                else:
                    self.outcomes[tid] = _Outcome("failed", c.error.kind)
            elif t is StoreFailure:
                tid = c.spec.task_id
                out = self.outcomes.get(tid)
                if out is None or out.kind != "failed" or out.error is not c.error.kind or tid in self.stored:
                    raise Broken(f"a failure stored without its Failed, or twice: {c!r}")
                self.stored.add(tid)
            elif t is SetTimer:
                if c.key[0] != ENDPOINT_TIMER:  # (see the module docstring)
                    self.timers.append((caller, c.key, c.at))
            elif t is Reroute:
                raise Broken(f"a call to an actor without replay was rerouted: {c.spec!r}")
            elif t is Republish:
                # results handed to the node: each resolved here, by an
                # incarnation the row says is gone
                for e in c.entries:
                    o = self.outcomes.get(e.spec.task_id)
                    if o is None or o.kind != "resolved":
                        raise Broken(f"republished {e.spec!r}, which was not resolved by a reply ({o})")
                    if self.state is not ActorState.DEAD and o.incarnation >= self.incarnation:
                        raise Broken(f"republished {e.spec!r}, answered by incarnation {o.incarnation}, "
                                     f"which is live")
            else:
                raise TypeError(f"direct_net: no handler for caller command {c!r}")

    def _to_worker(self, msg) -> None:
        inbox = self.inbox
        if inbox is None:
            return
        t = type(msg)
        if t is DirectCall:
            cmds = inbox.call(msg, self.now)
        elif t is DirectCancel:
            cmds = inbox.cancel(msg, self.now)
        elif t is DirectFloor:
            cmds = inbox.floor(msg, self.now)
        else:
            raise TypeError(f"direct_net: a worker got {msg!r}")
        self._from_worker(cmds)

    def _from_worker(self, cmds) -> None:
        ep = self.endpoint()
        for c in cmds:
            t = type(c)
            if t is RunCall:
                s = c.spec
                self.runs.append((self.incarnation, s.caller_id, s.sequence_no, c.attempt, s.task_id))
                self.work[s.task_id] = _Work(s, c.attempt, self.incarnation)
                self._check_run(s, c.attempt)
            elif t is Reply:
                self.links.setdefault((ep, c.caller), []).append(c.reply)
            elif t is InterruptCall:
                w = self.work.get(c.task_id)
                if w is not None:
                    w.interrupted = True
            elif t is ReportRan:
                self.reported += [(self.incarnation, e) for e in c.entries]
            elif t is CheckRan:
                # the node's record: what an earlier incarnation reported of it
                rec = [(inc, e) for inc, e in self.reported if e.spec.task_id == c.spec.task_id]
                if rec:
                    inc, e = rec[-1]
                    self.answered_from[c.spec.task_id] = inc
                    self._from_worker(self.inbox.checked(c.spec.task_id, self.now, True, e.outputs, e.error))
                else:
                    self._from_worker(self.inbox.checked(c.spec.task_id, self.now, False))
            elif t is SetTimer:
                self.timers.append(("inbox", c.key, c.at))
            elif t is EndActor:
                raise Broken(f"EndActor without exit or __ray_terminate__: {c!r}")
            else:
                raise TypeError(f"direct_net: no handler for worker command {c!r}")

    # ------------------------------------------------------------------ properties
    def _check_run(self, spec: TaskSpec, attempt: int) -> None:
        inc = self.incarnation
        mine = [r for r in self.runs[:-1] if r[4] == spec.task_id]
        if any(r[0] == inc for r in mine):
            raise Broken(f"call {spec!r} ran twice in incarnation {inc}")
        earlier = [r[2] for r in self.runs[:-1] if r[0] == inc and r[1] == spec.caller_id]
        if earlier and max(earlier) > spec.sequence_no:
            raise Broken(f"call {spec!r} ran after {spec.caller_id}#{max(earlier)} in incarnation {inc}")
        n = self.max_task_retries
        if n >= 0 and (attempt > n or len(mine) + 1 > n + 1):
            raise Broken(f"call {spec!r} ran {len(mine) + 1} times (attempt {attempt}), "
                         f"max_task_retries={n}")
        if spec.task_id in self.cancelled_unsent:
            raise Broken(f"call {spec!r} ran after it was cancelled before being sent")

    def _check_value(self, reply: DirectReply) -> None:
        if reply.error is not None:
            return
        tid = reply.task_id
        value = self.values.get((tid, self.answered_from.get(tid, reply.incarnation)))
        if value is None or any(o.data != value for o in reply.outputs):
            raise Broken(f"call {tid} resolved with {reply.outputs}, not what it returned in incarnation "
                         f"{reply.incarnation} ({value!r})")

    def check(self) -> None:
        for m in self.machines.values():
            m.validate()
        if self.inbox is not None:
            self.inbox.validate()
        ended = {t for t, o in self.outcomes.items()}
        for t, o in self.outcomes.items():
            if o.kind == "failed" and t not in self.stored:
                raise Broken(f"call {t} failed at its caller without its error stored for other processes")
        for caller, m in self.machines.items():
            for tid in m.calls:
                if tid in ended:
                    raise Broken(f"call {tid} ended but its caller still waits for it")

    def pump(self) -> None:
        """Deliver what is queued now: rows, then every link's messages in order."""
        for c in self.callers:
            while self.deliver_row(c):
                pass
        for key in sorted(k for k, q in self.links.items() if q):
            for _ in range(len(self.links.get(key, ()))):
                q = self.links.get(key)
                if not q:
                    break
                live = sorted(k for k, v in self.links.items() if v)
                self.deliver(live.index(key), 0)

    def settle(self, rounds: int = 200) -> None:
        """Heal every fault and run until every call has ended; then check
        that each did, once."""
        for _ in range(rounds):
            if all(not m.calls for m in self.machines.values()):
                break
            if self.state in (ActorState.PENDING, ActorState.RESTARTING):
                self.start()
            progress = True
            while progress:
                progress = False
                for c in self.callers:
                    while self.deliver_row(c):
                        progress = True
                while self.deliver(0):
                    progress = True
                while self.deliver_lost():
                    progress = True
                while self.finish(0):
                    progress = True
            while self.fire_timer(0):
                pass
            self.now += 1.0
            self.check()
        missing = [self.submitted[t] for t in self.submitted if t not in self.outcomes]
        if missing:
            raise Broken(f"calls never ended: {missing}")
        self.check()
