"""Planted bugs in the schedulers and the node: resources, retries, blocked workers, GPUs, placement groups.

Each function plants one bug (a small diff to one function of ``penumbra/core``) and
returns its undo; ``bugs.py`` lists them with their names, descriptions and seeds.
"""

from __future__ import annotations

from msgspec.structs import replace as replace_struct  # (events, commands and records are Structs)

from ..core import actor_host as AH
from ..core import gpus as GP
from ..core import node as N
from ..core import placement as P
from ..core import records as R
from ..core import scheduler as S
from ..core import specs as SP
from ..core import tables as T
from .planting import patch, handler


# ---------------------------------------------------------------------------


def no_release_on_crash():
    orig = S.LocalScheduler.on_worker_crashed

    def on_worker_crashed(self, wid, reason, now, sid):
        w = self.workers.get(wid)
        if w is not None:
            w.held = w.lent = S.EMPTY  # BUG: the crashed worker's resources are forgotten, not released
        return orig(self, wid, reason, now, sid)

    return patch(S.LocalScheduler, "on_worker_crashed", on_worker_crashed)


def retry_budget_off_by_one():
    orig = S.LocalScheduler._retry_or_fail

    def _retry_or_fail(self, t, error, now, sid, why):
        limit = t.spec.max_retries
        if limit >= 0 and t.attempt + 1 >= limit:  # BUG: should be t.attempt >= limit
            return self._fail(t, error, now, sid, why)
        return orig(self, t, error, now, sid, why)

    return patch(S.LocalScheduler, "_retry_or_fail", _retry_or_fail)


def blocked_worker_keeps_cpu():
    def on_blocked(self, wid, now, sid):
        return []  # BUG: a worker blocked in get keeps its CPU (nested tasks deadlock)

    return patch(S.LocalScheduler, "on_blocked", on_blocked)


def gpu_fraction_overcommit():
    from ..core import gpus as GP

    orig = GP.GpuInstances.pick

    def pick(self, units):
        if 0 < units < GP.UNIT:
            return ((0, units),)  # BUG: a fraction goes on GPU 0 whether or not it has room left
        return orig(self, units)

    return patch(GP.GpuInstances, "pick", pick)


def gpus_kept_by_crashed_worker():
    orig = S.LocalScheduler.on_worker_crashed

    def on_worker_crashed(self, wid, reason, now, sid):
        held = self.gpus.held.get(wid)
        cmds = orig(self, wid, reason, now, sid)
        if held:
            self.gpus.take(wid, held)  # BUG: as if ``give_back(wid)`` were missing: the dead worker keeps them
        return cmds

    return patch(S.LocalScheduler, "on_worker_crashed", on_worker_crashed)


def watch_ignores_need():
    from ..core import node as N
    from ..core.messages import WatchObjects

    orig = N.NodeMachine._on_watch

    def _on_watch(self, ev, now):
        # BUG: reports held until every object is ready, whatever need says
        return orig(self, replace_struct(ev, need=len(ev.object_ids)), now)

    return handler(N, WatchObjects, _on_watch)


def bundle_index_ignored():
    def bundle_request(req, pg, index):
        # BUG: should be P._name(k, pg, index): a task bound to one bundle
        # asks for the group's any-bundle names, so it runs wherever the
        # group has a bundle
        amounts = {P._name(k, pg, -1): v for k, v in req.to_dict().items()}
        amounts[P._name(P.MARKER, pg, -1)] = P._MARKER_ASK
        return P.ResourceSet.from_dict(amounts)

    return patch(P, "bundle_request", bundle_request)


def dead_blocked_worker_returns_lent_cpu():
    def _release(self, w, keep_gpus=False):
        if self.gpus.held and not keep_gpus:
            self.gpus.give_back(w.worker_id)
        give = w.held  # BUG: should be w.held - w.lent (what a worker blocked in get lent is back already)
        if self.gone:
            give = self._drop_gone(give)
        if not self.debt.is_empty():
            pay = give.min_with(self.debt)
            self.debt = self.debt - pay
            give = give - pay
        self.available = self.available + give
        w.held = S.EMPTY
        w.lent = S.EMPTY
        w.blocked = False

    return patch(S.LocalScheduler, "_release", _release)


def gpu_fraction_dropped():
    from ..core import gpus as GP

    def __init__(self, total_units):
        whole, rest = divmod(total_units, GP.UNIT)
        self.capacity = [GP.UNIT] * whole  # BUG: the last, fractional GPU gets no instance (a node of 0.5 GPU has none)
        self.free = list(self.capacity)
        self.held = {}

    return patch(GP.GpuInstances, "__init__", __init__)


def spilled_task_kept():
    def _decide_locality(self, t, now, sid):
        tid = t.spec.task_id
        sizes = self._locating.get(tid, {})
        if any(d not in sizes for d in t.missing):
            return []
        self._locating.pop(tid, None)
        remote = sum(sizes[d].size for d in t.missing)
        objects = self.node.objects
        token = ("task", tid)
        if remote >= self.config.forward_remote_bytes:
            cmds = []
            for d in t.missing:
                cmds += objects.unwant(d, token, now, sid)
            self._unpin_inputs(t)
            # BUG: the task forwarded for its remote inputs stays in
            # self.tasks: placed back here, it is taken for a duplicate
            return cmds + self._forward(t.spec, "remote_inputs", t.attempt, now, sid, t.reconstruction)
        t.state = S.WAITING
        cmds = []
        for d in sorted(t.missing):
            cmds += objects.want(d, token, True, now, sid)
        return cmds

    return patch(S.LocalScheduler, "_decide_locality", _decide_locality)


# -- draws-surface (issue 14): bugs in surface the swarm did not use before ---------------
# (num_returns > 1, retry_exceptions, cancel of plain tasks, freed puts, jobs
# that end; each is first caught by its draw in ``workload``)


def error_in_first_return_only():
    from ..core import node as N

    def fail_outputs(self, spec, error, attempt, now, sid, token=None):
        # BUG: the task's error is materialised in its first return only; a
        # waiter here on another of its num_returns waits for good
        cmds = self.objects.add_error(spec.return_ids[0], error, now, sid) if spec.return_ids else []
        outputs = tuple((o, 0) for o in spec.return_ids)
        return cmds + self.gcs.write(T.FinishTask(spec.task_id, self.node_id, outputs, error, attempt, spec.actor_id,
                                                  spec.job_id), token, now, sid)

    return patch(N.NodeMachine, "fail_outputs", fail_outputs)


def exception_retries_one_too_many():
    orig = S.LocalScheduler._retry_or_fail

    def _retry_or_fail(self, t, error, now, sid, why):
        limit = t.spec.max_retries
        if limit >= 0 and t.attempt == limit and why.endswith("(retry_exceptions)"):
            # BUG: a raised exception is retried while ``attempt <= max_retries``
            # (one retry more than the budget); crashes count right
            t.attempt += 1
            t.state, t.worker, t.errors = S.WAITING, None, None
            cmds = self.node.gcs_write(S.RetryTask(t.spec.task_id, self.node.node_id, attempt=t.attempt), None, now, sid)
            return cmds + self._resolve_inputs(t, now, sid)
        return orig(self, t, error, now, sid, why)

    return patch(S.LocalScheduler, "_retry_or_fail", _retry_or_fail)


def cancel_drops_queued_task():
    orig = S.LocalScheduler.cancel

    def cancel(self, tid, force, now, sid):
        t = self.tasks.get(tid)
        if t is None or t.state == S.RUNNING:
            return orig(self, tid, force, now, sid)
        # BUG: a queued task is taken out of the queue without failing its
        # outputs with TaskCancelledError: a get of it hangs
        cmds = []
        for d in sorted(t.missing):
            cmds += self.node.objects.unwant(d, ("task", tid), now, sid)
        self._unpin_inputs(t)
        del self.tasks[tid]
        self._locating.pop(tid, None)
        self._remember(tid, "cancelled")
        return True, cmds

    return patch(S.LocalScheduler, "cancel", cancel)


def free_before_unpin():
    from ..core import node as N
    from ..core.messages import ReleaseObjects

    def _on_release(self, ev, now):
        cmds = []
        if ev.free:
            # BUG: freed before the client's pin is dropped, so ``free``
            # finds the object pinned and keeps it: a freed put stays for good
            for oid in ev.object_ids:
                cmds += self.objects.free(oid, now, ev.stimulus_id)
        for oid in ev.object_ids:
            self.objects.store.unpin(oid, ("client", ev.client))
        return cmds

    return handler(N, ReleaseObjects, _on_release)


def whole_gpu_any_room():
    def pick(self, units):
        if units <= 0:
            return ()
        whole, rest = divmod(units, SP.UNIT)
        free = self.free
        picks = []
        if whole:
            for i, f in enumerate(free):
                if f > 0:  # BUG: should be f == UNIT: a GPU with any room left is taken as a whole one
                    picks.append((i, SP.UNIT))
                    if len(picks) == whole:
                        break
            if len(picks) < whole:
                return None
        if rest:
            taken = {i for i, _ in picks}
            for i, f in enumerate(free):
                if i not in taken and f >= rest:
                    picks.append((i, rest))
                    break
            else:
                return None
        return tuple(picks)

    return patch(GP.GpuInstances, "pick", pick)


def raised_task_keeps_pins():
    def on_task_raised(self, wid, tid, error, retryable, now, sid):
        w = self.workers.get(wid)
        t = self.tasks.get(tid)
        if w is None or t is None or w.task != tid:
            return []
        self._release(w)
        w.task = None
        if w.state == S.BUSY:
            self.busy -= 1
        w.state = S.IDLE
        self.idle.append(wid)
        # BUG: self._unpin_inputs(t) is missing (``_fail`` unpins, so only a
        # task retried on its exception, retry_exceptions, keeps one pin of
        # each input for good)
        if t.spec.is_actor_creation:
            cmds = self.node.actor_creation_failed(t.spec, t.actor, error, now, sid)
            del self.tasks[tid]
            self.failed_count += 1
            self._remember(tid, f"failed:{error.kind.value}")
            cmds += self._creation_over(tid, now, sid)
            return cmds + self.dispatch(now, sid)
        if retryable and not t.cancelled and error.kind is S.ErrorKind.TASK_ERROR:
            # (a retry pins its inputs again: the count never comes back to zero)
            cmds = self._retry_or_fail(t, error, now, sid, "the task raised (retry_exceptions)")
        else:
            cmds = self._fail(t, error, now, sid, f"raised {error.kind.value}")
        return cmds + self.dispatch(now, sid)

    return patch(S.LocalScheduler, "on_task_raised", on_task_raised)


def unblock_ignores_debt():
    def on_unblocked(self, wid, now, sid):
        w = self.workers.get(wid)
        if w is None or not w.blocked:
            return []
        w.blocked = False
        lent = self._drop_gone(w.lent) if self.gone else w.lent
        # BUG: takes the lent CPU back whether or not it is free; the part
        # another task took meanwhile should become debt
        self.available = self.available - lent
        w.lent = S.EMPTY
        return []

    return patch(S.LocalScheduler, "on_unblocked", on_unblocked)


def placed_task_attempt_dropped():
    def _on_place(self, ev, now):
        spec = ev.spec
        if self.ended_jobs and self._job_over(spec, now, ev.stimulus_id):
            return []
        actor = AH.ActorStart(R.ActorEntry(spec.actor_creation, spec)) if spec.actor_creation is not None else None
        # BUG: attempt=ev.attempt is not passed on: a task placed by the head
        # runs as attempt 0 whatever retry or rebuild it is
        return self.scheduler.submit(spec, now, ev.stimulus_id, placed=True, record=False,
                                     reconstruction=ev.reconstruction, actor=actor)

    return handler(N, N.PlaceTask, _on_place)


def spread_forgets_used_node():
    def plan(bundles, strategy, free, holding):
        left = dict(free)
        out = {}

        def order(cands):
            return sorted(cands, key=lambda n: (-P._cpu(left[n]), n))

        idx = sorted(bundles, key=lambda i: (-P._cpu(bundles[i]), i))
        if strategy == "STRICT_PACK" or strategy == "PACK":
            return orig(bundles, strategy, free, holding)
        used = {n for n, s in holding.items() if s}
        for i in idx:
            fresh = [n for n in order(left) if n not in used and bundles[i].is_subset_of(left[n])]
            if fresh:
                n = fresh[0]
            elif strategy == "SPREAD":
                n = next((m for m in order(left) if bundles[i].is_subset_of(left[m])), None)
                if n is None:
                    return None
            else:
                return None
            out[i] = n
            # BUG: used.add(n) is missing: the next bundle may go to the same node
            left[n] = left[n] - bundles[i]
        return out

    orig = P.plan
    return patch(P, "plan", plan)


def prepare_not_idempotent():
    def on_prepare(self, ev, now):
        node, pg, sid = self.node, ev.pg_id, ev.stimulus_id
        idx = tuple(i for i, _ in ev.bundles)
        if pg in self.removed:
            return self._reply(P.BundlesPrepareFailed(pg_id=pg, node_id=node.node_id, indexes=idx, reason="the group was removed", stimulus_id=sid))
        need = SP.EMPTY
        for i, res in ev.bundles:
            need = need + res  # BUG: a bundle already prepared (a repeated Prepare) is set apart again
        if not node.scheduler.set_apart(need):
            return self._reply(P.BundlesPrepareFailed(
                pg_id=pg, node_id=node.node_id, indexes=idx, stimulus_id=sid,
                reason=f"needs {need.to_dict()}, free {node.scheduler.available.to_dict()}"))
        for i, res in ev.bundles:
            if (pg, i) not in self.committed:
                self.prepared[(pg, i)] = res
        return self._reply(P.BundlesPrepared(pg_id=pg, node_id=node.node_id, indexes=idx, stimulus_id=sid))

    return patch(P.BundleHolder, "on_prepare", on_prepare)


def forwarded_task_keeps_pins():
    def _decide_locality(self, t, now, sid):
        tid = t.spec.task_id
        sizes = self._locating.get(tid, {})
        if any(d not in sizes for d in t.missing):
            return []
        self._locating.pop(tid, None)
        remote = sum(sizes[d].size for d in t.missing)
        objects = self.node.objects
        token = ("task", tid)
        if remote >= self.config.forward_remote_bytes:
            cmds = []
            for d in t.missing:
                cmds += objects.unwant(d, token, now, sid)
            # BUG: self._unpin_inputs(t) is missing: the inputs that were
            # here stay pinned by a task that left
            del self.tasks[tid]
            return cmds + self._forward(t.spec, "remote_inputs", t.attempt, now, sid, t.reconstruction)
        t.state = S.WAITING
        cmds = []
        for d in sorted(t.missing):
            cmds += objects.want(d, token, True, now, sid)
        return cmds

    return patch(S.LocalScheduler, "_decide_locality", _decide_locality)


def retry_budget_one_too_many():
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

    return patch(S.LocalScheduler, "_retry_or_fail", _retry_or_fail)


def actor_worker_record_kept():
    def release_actor_worker(self, wid):
        self.gpus.give_back(wid)
        w = self.workers.get(wid)  # BUG: should be pop: the dead actor's worker stays in the pool's records
        if w is not None and w.state == S.BUSY:
            self.busy -= 1

    return patch(S.LocalScheduler, "release_actor_worker", release_actor_worker)


# -- swarm-placement (issue 15): the recovery path of a head that died, found
# by the placement and head-crash draws (the older swarm never crashes the head)


def exited_job_not_reported():
    def jobs_over(self):
        return tuple(sorted(self.ended_jobs))  # BUG: not | self.exited_jobs (their JobFinished went to a dead head)

    return patch(N.NodeMachine, "jobs_over", jobs_over)


def unschedulable_kill_bad_keyword():
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
        return cmds + self.head.gcs.write(T.FinishTask(spec.task_id, "", outputs, err, p.attempt, job_id=spec.job_id),
                                          None, now, sid)

    return patch(S.GlobalScheduler, "_unschedulable", _unschedulable)


# -- draws-surface (issue 14): what its new draws found in core/, as it was


def outputs_announced_one_by_one():
    from ..core import node as N

    def store_outputs(self, spec, outputs, attempt, now, sid, token=None):
        cmds, admitted = [], []
        for oid, size in outputs:
            # (before the fix: each output announced as it is admitted)
            adm, c = self.objects.add_local(oid, size, now, sid, record=False)
            if not adm.ok:
                for a in admitted:
                    self.objects.store.remove(a)
                    cmds.append(N.Evict(object_id=a, stimulus_id=sid))
                cmds.append(N.Evict(object_id=oid, stimulus_id=sid))
                return cmds + self.fail_outputs(spec, adm.error, attempt, now, sid, token)
            admitted.append(oid)
            cmds += c
        return cmds + self.gcs.write(T.FinishTask(spec.task_id, self.node_id, outputs, None, attempt, spec.actor_id,
                                                  spec.job_id), token, now, sid)

    return patch(N.NodeMachine, "store_outputs", store_outputs)
