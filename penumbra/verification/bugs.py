"""Realistic bugs, each a small change to ``core/``, to prove the swarm has teeth.

Each entry patches one function of the core (as a bad commit would) inside a
context manager; ``test_swarm_finds_planted_bug`` runs the swarm with each
bug planted and requires a violation within the default seed budget.  The
list doubles as documentation of what the checkers catch: ``Bug.seed`` is
the seed recorded as finding it (``teeth.find`` tries it first), and
``penumbra verify --bugs`` prints the table (``penumbra verify --plant NAME
--seed S`` replays one).

The patches replace whole methods with a copy that differs by a line or two
from the real one: keeping them short is the point (a bug is a small diff).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Callable

from ..core import actors as A
from ..core import gcs as G
from ..core import head as H
from ..core import lineage as L
from ..core import objects as O
from ..core import placement as P
from ..core import scheduler as S
from ..core import tables as T
from ..core.messages import GcsReply, Send, SetTimer

__all__ = ["Bug", "BUGS", "REGRESSIONS", "MASKED", "planted", "bug_named"]


@dataclass(frozen=True)
class Bug:
    name: str
    description: str
    install: Callable[[], Callable[[], None]]  # plants the bug; returns an undo
    # the seed recorded as finding it (a hint: workload or schedule changes
    # can move it; ``python -m penumbra.verification.teeth`` finds it again)
    seed: int | None = None


def _patch(obj, attr, new) -> Callable[[], None]:
    old = getattr(obj, attr)
    setattr(obj, attr, new)
    return lambda: setattr(obj, attr, old)


# ---------------------------------------------------------------------------


def _no_release_on_crash():
    orig = S.LocalScheduler.on_worker_crashed

    def on_worker_crashed(self, wid, reason, now, sid):
        w = self.workers.get(wid)
        if w is not None:
            w.held = w.lent = S.EMPTY  # BUG: the crashed worker's resources are forgotten, not released
        return orig(self, wid, reason, now, sid)

    return _patch(S.LocalScheduler, "on_worker_crashed", on_worker_crashed)


def _retry_budget_off_by_one():
    orig = S.LocalScheduler._retry_or_fail

    def _retry_or_fail(self, t, error, now, sid, why):
        limit = t.spec.max_retries
        if limit >= 0 and t.attempt + 1 >= limit:  # BUG: should be t.attempt >= limit
            return self._fail(t, error, now, sid, why)
        return orig(self, t, error, now, sid, why)

    return _patch(S.LocalScheduler, "_retry_or_fail", _retry_or_fail)


def _late_subscriber_not_told():
    orig = T._APPLY[T.Subscribe]

    def _subscribe(t, op):
        orig(t, op)
        return None, []  # BUG: the current value is not handed to a late subscriber

    def undo_direct(self, seq, client, req_id, op, low_water):
        e = orig_apply(self, seq, client, req_id, op, low_water)
        e.direct = None
        return e

    orig_apply = G.GcsReplica._apply
    u1 = _patch(T, "_APPLY", {**T._APPLY, T.Subscribe: _subscribe})
    u2 = _patch(G.GcsReplica, "_apply", undo_direct)

    def undo():
        u2()
        u1()

    return undo


def _head_acks_before_tail():
    orig = G.GcsReplica._after_apply

    def _after_apply(self, entry, sid, now):
        cmds = orig(self, entry, sid, now)
        if self.is_head and not self.is_tail:
            # BUG: the head acknowledges as soon as it applied the write
            cmds.append(Send(to=entry.client, msg=GcsReply(req_id=entry.req_id, result=entry.result, shard=self.shard)))
        return cmds

    return _patch(G.GcsReplica, "_after_apply", _after_apply)


def _lineage_only_own_task():
    def plan_reconstruction(wanted, specs, lost):
        # BUG: re-run the lost object's own task only, not its lost ancestors
        return sorted({o.task_id for o in wanted if o in lost})

    return _patch(L, "plan_reconstruction", plan_reconstruction)


def _actor_ignores_floor_after_restart():
    orig = A.ActorHost.on_call

    def on_call(self, ev, now, sid):
        # BUG: a caller's order in a restarted actor starts at whichever of
        # its calls arrives first, not at the floor its node sent
        if ev.incarnation > 0:
            ev = replace(ev, floor=ev.spec.sequence_no)
        return orig(self, ev, now, sid)

    return _patch(A.ActorHost, "on_call", on_call)


# (The obvious ordering bug, dispatching a caller's calls in arrival order
# rather than sequence order, is caught by ``ActorHost.validate()`` at once:
# it leaves a queued call below the caller's next sequence number.  The two
# below keep the host's bookkeeping consistent, so only the execution log
# and ``check_actor_order`` show them.)


def _replay_newest_first():
    orig = A.ActorHost.created

    def created(self, spec, start, wid, now, sid):
        # BUG: as if ``h.replay.appendleft`` stood for ``h.replay.append``:
        # the logged calls are replayed newest first
        return orig(self, spec, replace(start, replay=start.replay[::-1]), wid, now, sid)

    return _patch(A.ActorHost, "created", created)


def _replayed_call_runs_again():
    orig = A.ActorHost.created

    def created(self, spec, start, wid, now, sid):
        cmds = orig(self, spec, start, wid, now, sid)
        h = self.actors.get(start.entry.spec.actor_id)
        if h is not None:
            # BUG: replayed calls do not advance their caller's next_seq, so
            # a caller that re-sends one (it never saw the result) runs it again
            h.next_seq = dict(start.seqs)
        return cmds

    return _patch(A.ActorHost, "created", created)


def _handler(module, msg_type, fn) -> Callable[[], None]:
    """Replace a machine's handler for ``msg_type`` (machines dispatch through
    a module-level table, so patching the method alone would not do)."""
    table = module._HANDLERS
    old = table[msg_type]
    table[msg_type] = fn
    return lambda: table.__setitem__(msg_type, old)


def _gcs_no_dedup():
    from ..core.messages import GcsWrite

    orig = G._HANDLERS[GcsWrite]

    def _on_write(self, ev, now):
        seen = self.dedup.get(ev.client)
        if seen is not None:
            seen.pop(ev.req_id, None)  # BUG: a retried write is applied again
        self.floors.pop(ev.client, None)
        return orig(self, ev, now)

    return _handler(G, GcsWrite, _on_write)


def _dead_node_tasks_not_resubmitted():
    def on_tasks_on_node(self, node, per_shard, now, sid):
        return []  # BUG: the dead node's pending tasks are forgotten

    return _patch(L.Recovery, "on_tasks_on_node", on_tasks_on_node)


def _blocked_worker_keeps_cpu():
    def on_blocked(self, wid, now, sid):
        return []  # BUG: a worker blocked in get keeps its CPU (nested tasks deadlock)

    return _patch(S.LocalScheduler, "on_blocked", on_blocked)


def _fetch_failure_not_retried():
    def on_fetch_failed(self, oid, from_node, now, sid):
        w = self.wants.get(oid)
        if w is not None:
            w.fetching_from = None  # BUG: no other location is tried
        return []

    return _patch(O.ObjectManager, "on_fetch_failed", on_fetch_failed)


def _actor_restarts_not_counted():
    orig = A.ActorManager._restart_or_die

    def _restart_or_die(self, e, cause, now, sid):
        return orig(self, replace(e, restarts=0), cause, now, sid)  # BUG: restarts never add up

    return _patch(A.ActorManager, "_restart_or_die", _restart_or_die)


def _successor_resync_ignored():
    def _on_sync(self, ev, now):
        return []  # BUG: a new successor's GcsSync is ignored: it never catches up

    return _handler(G, G.GcsSync, _on_sync)


def _task_inputs_not_pinned():
    def pin(self, oid, holder):
        if isinstance(holder, tuple) and holder and holder[0] == "task":
            return  # BUG: inputs of queued and running tasks are not pinned
        return orig(self, oid, holder)

    orig = O.StoreAccounting.pin
    return _patch(O.StoreAccounting, "pin", pin)


def _finish_can_be_undone():
    orig = T._APPLY[T.AddTask]

    def _add_task(t, op):
        old = t.data["tasks"].get(op.spec.task_id)
        if old is not None and old.state is not T.TaskState.PENDING:
            # BUG: a late re-submission reopens a finished task
            t.data["tasks"].pop(op.spec.task_id)
            t._index_task(op.spec.task_id, old, T.TaskEntry(old.spec, T.TaskState.FAILED))
        return orig(t, op)

    return _patch(T, "_APPLY", {**T._APPLY, T.AddTask: _add_task})


def _gpu_fraction_overcommit():
    from ..core import gpus as GP

    orig = GP.GpuInstances.pick

    def pick(self, units):
        if 0 < units < GP.UNIT:
            return ((0, units),)  # BUG: a fraction goes on GPU 0 whether or not it has room left
        return orig(self, units)

    return _patch(GP.GpuInstances, "pick", pick)


def _gpus_kept_by_crashed_worker():
    orig = S.LocalScheduler.on_worker_crashed

    def on_worker_crashed(self, wid, reason, now, sid):
        held = self.gpus.held.get(wid)
        cmds = orig(self, wid, reason, now, sid)
        if held:
            self.gpus.take(wid, held)  # BUG: as if ``give_back(wid)`` were missing: the dead worker keeps them
        return cmds

    return _patch(S.LocalScheduler, "on_worker_crashed", on_worker_crashed)


def _watch_ignores_need():
    from ..core import node as N
    from ..core.messages import WatchObjects

    orig = N.NodeMachine._on_watch

    def _on_watch(self, ev, now):
        # BUG: reports held until every object is ready, whatever need says
        return orig(self, replace(ev, need=len(ev.object_ids)), now)

    return _handler(N, WatchObjects, _on_watch)


def _fetching_waiters_told_located():
    orig = O.ObjectManager._react

    def _react(self, w, now, sid):
        e = w.entry
        cmds = []
        if e is not None and e.created and e.error is None:
            # BUG: should be `if not fetch`: a waiter that needs the bytes is
            # told the object is ready as soon as its location is known
            untold = [t for t in w.waiters if t not in w.located_told]
            if untold:
                w.located_told.update(untold)
                cmds += self.on_located(w.oid, e, untold, now, sid)
        return cmds + orig(self, w, now, sid)

    return _patch(O.ObjectManager, "_react", _react)


def _pause_kills_cluster():
    def _monitor(self, now):
        # BUG: liveness judged by the head's own clock (the rule before the
        # fix): after the head stood still, its late check finds every node
        # "silent for node_timeout" before it reads their queued heartbeats
        seen = self.__dict__.setdefault("_seen", {})
        for node in self.misses:
            if node in self.heard or node not in seen:
                seen[node] = now
        self.heard.clear()
        cmds = [SetTimer(at=now + self.config.check_interval, key=("head", "monitor"))]
        for node in sorted(n for n in self.misses if seen[n] < now - self.config.node_timeout):
            cmds += self.node_dead(node, now, f"heartbeat-timeout:{node}")
        return cmds

    return _patch(H.HeadMachine, "_monitor", _monitor)


def _bundle_index_ignored():
    def bundle_request(req, pg, index):
        # BUG: should be P._name(k, pg, index): a task bound to one bundle
        # asks for the group's any-bundle names, so it runs wherever the
        # group has a bundle
        amounts = {P._name(k, pg, -1): v for k, v in req.to_dict().items()}
        amounts[P._name(P.MARKER, pg, -1)] = P._MARKER_ASK
        return P.ResourceSet.from_dict(amounts)

    return _patch(P, "bundle_request", bundle_request)


# ---------------------------------------------------------------------------
# branch quiet (issue 14): bugs that only the quiet-cluster checkers see
# (``checkers.check_quiet_cluster``): each leaves the values every get
# returns as they were, so the old swarm passes every default seed.


def _finished_call_keeps_inputs_pinned():
    def on_finished(self, wid, tid, outputs, now, sid):
        aid = self.by_worker.get(wid)
        h = self.actors.get(aid) if aid is not None else None
        if h is None:
            return []
        if h.stopping is not None or (h.terminated and tid not in h.before_end):
            return self._ended_while_stopping(h, tid, now, sid)
        h.before_end.discard(tid)
        call = h.running.pop(tid, None)
        if call is None:
            return []
        # BUG: the self._pin(call, False) that every other ending of a call
        # has is missing: a finished call's inputs stay pinned for good
        if call.spec.method == A.TERMINATE_METHOD and not call.replay:
            return self._terminate(h, call, now, sid)
        result = ("error", A._cancelled(call.spec)) if call.cancelled else ("ok", outputs)
        if h.entry.spec.replay and not call.replay:
            return self._log_then_release(h, call, result, now, sid) + self._dispatch(h, now, sid)
        cmds = self._release(h, call, result, now, sid)
        self._executed(h)
        return cmds + self._dispatch(h, now, sid)

    return _patch(A.ActorHost, "on_finished", on_finished)


def _retry_budget_one_too_many():
    def _retry_or_fail(self, t, error, now, sid, why):
        limit = t.spec.max_retries
        if limit < 0 or t.attempt <= limit:  # BUG: should be t.attempt < limit (one retry too many)
            tid = t.spec.task_id
            t.attempt += 1
            t.state = S.WAITING
            t.worker = None
            t.errors = None
            self._story(tid, now, sid, f"retry {t.attempt} after: {why}")
            cmds = self.node.gcs_write(S.RetryTask(tid, self.node.node_id, attempt=t.attempt), None, now, sid)
            return cmds + self._resolve_inputs(t, now, sid)
        return self._fail(t, error, now, sid, why)

    return _patch(S.LocalScheduler, "_retry_or_fail", _retry_or_fail)


def _actor_worker_record_kept():
    def release_actor_worker(self, wid):
        self.gpus.give_back(wid)
        w = self.workers.get(wid)  # BUG: should be pop: the dead actor's worker stays in the pool's records
        if w is not None and w.state == S.BUSY:
            self.busy -= 1

    return _patch(S.LocalScheduler, "release_actor_worker", release_actor_worker)


def _fetched_copy_not_recorded():
    orig = O.ObjectManager.add_local

    def on_fetch_completed(self, oid, size, now, sid):
        w = self.wants.get(oid)
        if w is not None:
            w.fetching_from = None
        self.bytes_fetched += size
        if self.is_local(oid):
            return None, []
        # BUG: "a fetched copy is not a new object": its location is never
        # added to the object table (record=False)
        adm, cmds = orig(self, oid, size, now, sid, record=False)
        if not adm.ok:
            cmds.append(O.Evict(object_id=oid, stimulus_id=sid))
            if w is not None:
                self.wants.pop(oid, None)
                if w.subscribed:
                    cmds += self.gcs_write(O.Unsubscribe(self.address, "objects", oid), None, now, sid)
                cmds += self.on_ready(oid, O.ObjectInfo(size=size, error=adm.error), list(w.waiters), now, sid)
        return adm, cmds

    return _patch(O.ObjectManager, "on_fetch_completed", on_fetch_completed)


BUGS: tuple[Bug, ...] = (
    Bug("no-release-on-crash", "a crashed worker's resources are not released", _no_release_on_crash, seed=5),
    Bug("retry-budget-off-by-one", "one retry fewer than max_retries", _retry_budget_off_by_one, seed=114),
    Bug("late-subscriber", "a subscriber that joins after a change is not sent the current value", _late_subscriber_not_told, seed=0),
    Bug("head-acks-early", "the chain head acknowledges a write before the tail has it", _head_acks_before_tail, seed=4),
    Bug("actor-order-after-restart", "a restarted actor orders a caller's calls from whichever arrives first", _actor_ignores_floor_after_restart, seed=1),
    Bug("gcs-no-dedup", "the GCS applies a retried write again", _gcs_no_dedup, seed=0),
    Bug("dead-node-tasks-lost", "tasks pending on a dead node are not re-submitted", _dead_node_tasks_not_resubmitted, seed=4),
    Bug("blocked-worker-keeps-cpu", "a worker blocked in get does not lend its CPU", _blocked_worker_keeps_cpu, seed=0),
    Bug("actor-restarts-uncounted", "actor restarts are not counted against max_restarts", _actor_restarts_not_counted, seed=29),
    Bug("successor-never-resyncs", "a replica ignores its new successor's sync request", _successor_resync_ignored, seed=4),
    Bug("inputs-not-pinned", "task inputs are not pinned while the task waits or runs", _task_inputs_not_pinned, seed=64),
    Bug("finish-undone", "a late AddTask reopens a finished task", _finish_can_be_undone, seed=2),
    Bug("gpu-fraction-overcommit", "a fractional GPU request is put on GPU 0 even when it is full", _gpu_fraction_overcommit, seed=6),
    Bug("gpus-kept-by-crashed-worker", "a crashed worker's GPU instances are not given back", _gpus_kept_by_crashed_worker, seed=87),
    Bug("replay-newest-first", "a restarted replay actor replays its logged calls newest first", _replay_newest_first, seed=1),
    Bug("replayed-call-runs-again", "a call replayed on restart runs again when its caller re-sends it", _replayed_call_runs_again, seed=1),
    Bug("watch-ignores-need", "a node holds a watch's reports until every object is ready, even when the "
        "wait needs fewer (it times out told of nothing)", _watch_ignores_need, seed=0),
    Bug("pause-kills-cluster", "the head judges liveness by its own clock: after a pause of the head, it declares "
        "every node dead before reading their queued heartbeats", _pause_kills_cluster, seed=20),
    Bug("fetching-waiter-told-early", "a wait that fetches is told an object is ready when its location is known, before the bytes arrive", _fetching_waiters_told_located, seed=64),
    Bug("bundle-index-ignored", "a task bound to one bundle of a placement group asks for any bundle of it, so it "
        "may run on another bundle's node", _bundle_index_ignored, seed=7),
    # branch quiet (issue 14)
    Bug("finished-call-keeps-inputs-pinned", "an actor call that finished leaves its inputs pinned in the store "
        "for good", _finished_call_keeps_inputs_pinned, seed=0),
    Bug("retry-budget-one-too-many", "a task whose worker died retries max_retries + 1 times",
        _retry_budget_one_too_many, seed=110),
    Bug("actor-worker-record-kept", "a dead actor's worker stays in its node's worker records",
        _actor_worker_record_kept, seed=0),
    Bug("fetched-copy-not-recorded", "a copy fetched to another node is never added to the object table",
        _fetched_copy_not_recorded, seed=0),
)

# Changes that look like bugs but that the rest of the design makes harmless,
# kept so nobody "discovers" them again.  The swarm finds nothing with them
# planted, and that is the right answer:
#
# * lineage-own-task-only: when the re-run task's own inputs are missing too,
#   its node asks for them like any other task's inputs, and that request
#   starts their recovery.  Recursion happens through dependency resolution,
#   so the planner walking ancestors eagerly is an optimisation (fewer round
#   trips), not a correctness property.
# * fetch-no-failover: a fetch that fails leaves the object wanted; the node's
#   refresh timer re-reads its locations and picks another copy.  Without the
#   immediate failover the fetch is slower, never lost.
MASKED: tuple[Bug, ...] = (
    Bug("lineage-own-task-only", "reconstruction re-runs the lost object's task, not its lost ancestors", _lineage_only_own_task),
    Bug("fetch-no-failover", "a failed fetch does not try another copy", _fetch_failure_not_retried),
)


def _release_past_a_gap():
    orig = A.ActorHost.on_logged

    def on_logged(self, aid, incarnation, tid, accepted, now, sid):
        cmds = orig(self, aid, incarnation, tid, accepted, now, sid)
        h = self._instance(aid, incarnation)
        if h is not None:
            # BUG: a logged call's result is released at once, even while an
            # earlier call's log append is still being retried
            for i in sorted(h.logged):
                c, r = h.logged.pop(i)
                cmds += self._release(h, c, r, now, sid)
        return cmds

    return _patch(A.ActorHost, "on_logged", on_logged)


def _unschedulable_kill_bad_keyword():
    def _unschedulable(self, p, why, now, sid):
        spec = p.spec
        err = P.unschedulable(spec, why)
        cmds = [S.Log(level="warning", text=err.message, job_id=spec.job_id, stimulus_id=sid)]
        if spec.is_actor_creation:
            # BUG: ActorManager.kill takes why=, not reason= (a TypeError in
            # the head when a group with a waiting actor creation is removed)
            return cmds + self.head.actors.kill(spec.actor_creation.actor_id, True, now, sid,
                                                reason=f"it cannot be scheduled: {why}")
        outputs = tuple((o, 0) for o in spec.return_ids)
        return cmds + self.head.gcs.write(S.FinishTask(spec.task_id, "", outputs, err, p.attempt, job_id=spec.job_id),
                                          None, now, sid)

    return _patch(S.GlobalScheduler, "_unschedulable", _unschedulable)


def _input_error_call_keeps_pins():
    def _dispatch(self, h, now, sid):
        cmds: list[Command] = []
        limit = A._in_flight_limit(h.entry.spec)
        if h.checkpointing or h.stopping is not None or h.terminated or h.terminate_sent:
            return cmds
        # replayed calls first, one at a time, in log order
        if h.replay:
            # (a replayed call needs its inputs local like any call: found by
            # the swarm, a replay that ran without them lost the call)
            if not h.running and not h.replay[0].missing:
                call = h.replay.popleft()
                h.running[call.spec.task_id] = call
                self.node.story_add(call.spec.task_id, now, sid, "replaying on restarted actor")
                cmds.append(A.Execute(worker_id=h.worker, spec=call.spec, attempt=call.attempt,
                                    gpu_ids=self.node.scheduler.gpus.ids_of(h.worker), stimulus_id=sid))
            return cmds
        arrival = h.arrival
        scanned = 0
        n = len(arrival)
        while len(h.running) < limit and scanned < n:
            caller, seq = arrival[0]
            arrival.rotate(-1)
            scanned += 1
            q = h.queue.get(caller)
            call = q.get(seq) if q else None
            if call is None:
                arrival.pop()  # stale arrival record (rotated to the end)
                continue
            if seq != h.next_seq.get(caller) or call.missing:
                continue
            if call.spec.method == A.TERMINATE_METHOD and h.running:
                continue  # (it runs once every call before it ended, and alone)
            arrival.pop()
            del q[seq]
            h.next_seq[caller] = seq + 1
            if call.cancelled:
                scanned = 0  # (failed when cancelled: it only held its caller's place)
                n = len(arrival)
                continue
            h.running[call.spec.task_id] = call
            # the caller's next call may have been passed over earlier in
            # this pass: scan everything again (found by the swarm: a call
            # that failed on its input left the one after it waiting forever)
            scanned = 0
            n = len(arrival)
            error = self._input_error(call)
            if error is not None:
                del h.running[call.spec.task_id]
                # BUG: the self._pin(call, False) is missing: what it held
                # while queued (an input that holds a value here) stays pinned
                cmds += self._release(h, call, ("error", error), now, sid)
                continue
            self._pin(call, True)
            self.node.story_add(call.spec.task_id, now, sid, f"running on actor worker {h.worker}")
            cmds.append(A.Execute(worker_id=h.worker, spec=call.spec, attempt=call.attempt,
                                gpu_ids=self.node.scheduler.gpus.ids_of(h.worker), stimulus_id=sid))
            if call.spec.method == A.TERMINATE_METHOD:
                h.terminate_sent = True  # nothing is sent after it
                break
        return cmds

    return _patch(A.ActorHost, "_dispatch", _dispatch)


def _superseded_instance_left_running():
    def created(self, spec, start, wid, now, sid):
        entry = start.entry
        held = self.node.scheduler.acquire_or_borrow(entry.spec.resources)
        h = A._Hosted(entry=replace(entry, state=A.ActorState.ALIVE, node=self.node.address), worker=wid, held=held)
        h.executed = entry.checkpoint_index
        for caller, nxt in start.seqs:
            h.next_seq[caller] = nxt
        for s in start.replay:
            h.replay.append(A._Call(s, "", 0, replay=True))
            # a replayed call counts as executed: if its caller sends it
            # again (it never saw the result), it must not run twice
            if s.sequence_no + 1 > h.next_seq.get(s.caller_id, 0):
                h.next_seq[s.caller_id] = s.sequence_no + 1
        # BUG: an older instance of the actor still hosted here (its
        # alive-CAS on its way) is replaced without being stopped
        self.actors[entry.spec.actor_id] = h
        self.by_worker[wid] = entry.spec.actor_id
        # follow the actor's row (to stop if superseded; see on_entry)
        _, cmds = self.node.router._route(entry.spec.actor_id, now, sid)
        cmds += self.node.gcs_write(
            A.PutActor(h.entry, expect_incarnation=entry.incarnation),
            ("actor-alive", entry.spec.actor_id, entry.incarnation), now, sid,
        )
        objects = self.node.objects
        for call in h.replay:
            missing = {d for d in call.spec.dependencies if not objects.is_local(d)}
            self._hold(call, [d for d in call.spec.dependencies if d not in missing])
            if missing:
                call.missing = missing
                token = ("actor-call", entry.spec.actor_id, call.spec.task_id)
                for d in sorted(missing):
                    cmds += objects.want(d, token, True, now, sid)
        return cmds + self._dispatch(h, now, sid)

    return _patch(A.ActorHost, "created", created)


# Bugs the swarm found in penumbra's own core/, planted back as they were
# before the fix: each must still fail at the seed that found it (outside the
# default budget: these are what the long runs are for).
REGRESSIONS: tuple[Bug, ...] = (
    Bug("release-past-a-gap", "a replay actor releases a logged call's result while an earlier call's log "
        "append is still being retried: a restart replays the log only up to that gap", _release_past_a_gap,
        seed=2387),
    Bug("unschedulable-actor-kill-typo", "a placement group removed while an actor creation waits for it: the head "
        "kills the actor with a keyword ActorManager.kill does not take, and raises", _unschedulable_kill_bad_keyword,
        seed=659),
    # branch quiet: found by the quiet-cluster pin check
    Bug("input-error-call-keeps-pins", "an actor call failed because an input holds an error keeps the inputs it "
        "pinned while queued pinned for good", _input_error_call_keeps_pins, seed=572),
    # branch quiet: found by the quiet-cluster killed-actor check
    Bug("superseded-instance-left-running", "an actor restarted onto the node where its older instance's "
        "creation just ended replaces that instance without stopping it: its worker runs on for good",
        _superseded_instance_left_running, seed=1719),
)


def bug_named(name: str) -> Bug:
    """The bug called ``name`` (in ``BUGS``, ``REGRESSIONS`` or ``MASKED``);
    a ``KeyError`` that lists the known names otherwise."""
    for b in BUGS + REGRESSIONS + MASKED:
        if b.name == name:
            return b
    raise KeyError(f"no planted bug is called {name!r}; known bugs: {', '.join(b.name for b in BUGS)}; "
                   f"regressions: {', '.join(b.name for b in REGRESSIONS)} "
                   f"(and, found by nothing by design: {', '.join(b.name for b in MASKED)})")


@contextlib.contextmanager
def planted(bug: Bug):
    undo = bug.install()
    try:
        yield bug
    finally:
        undo()
