"""Planted bugs in the head's recovery paths, lineage reconstruction and the client machine.

Each function plants one bug (a small diff to one function of ``penumbra/core``) and
returns its undo; ``bugs.py`` lists them with their names, descriptions and seeds.
"""

from __future__ import annotations

from ..core import client as CL
from ..core import gcs as G
from ..core import head as H
from ..core import lineage as L
from ..core import specs as SP
from ..core import tables as T
from ..core.messages import SetTimer
from .planting import patch, handler


def lineage_only_own_task():
    def plan_reconstruction(wanted, specs, lost):
        # BUG: re-run the lost object's own task only, not its lost ancestors
        return sorted({o.task_id for o in wanted if o in lost})

    return patch(L, "plan_reconstruction", plan_reconstruction)


def dead_node_tasks_not_resubmitted():
    def on_tasks_on_node(self, node, per_shard, now, sid):
        return []  # BUG: the dead node's pending tasks are forgotten

    return patch(L.Recovery, "on_tasks_on_node", on_tasks_on_node)


def pause_kills_cluster():
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

    return patch(H.HeadMachine, "_monitor", _monitor)


def head_pause_no_fresh_grace():
    def _monitor(self, now):
        cfg = self.config
        late = now - self.check_due
        self.check_due = now + cfg.check_interval
        cmds = [SetTimer(at=self.check_due, key=("head", "monitor"))]
        if late > cfg.pause_threshold:
            # the head itself stood still: nobody is to blame for the gap
            self.pauses_noticed += 1
            # BUG: the misses counted before the pause are kept (no fresh
            # grace period): the gap before it and the one after add up
            self.heard.clear()
            return cmds
        heard = self.heard
        limit = cfg.miss_limit
        dead = []
        for node, n in self.misses.items():
            if node in heard:
                self.misses[node] = 0
            else:
                self.misses[node] = n = n + 1
                if n >= limit and node != cfg.own_node:
                    dead.append(node)
        heard.clear()
        for node in sorted(dead):
            cmds += self.node_dead(node, now, f"heartbeat-timeout:{node}")
        return cmds

    return patch(H.HeadMachine, "_monitor", _monitor)


# --- client-machine ------------------------------------------------------


def watch_after_loss_waits():
    orig = CL.ClientMachine.watch

    def watch(self, waiter, ids, need, **kw):
        # BUG: watch() does not look at the connection (request() does): a
        # get or wait made after the connection was lost is registered and
        # sent into a connection nobody answers, and waits forever
        state, self.state = self.state, CL.CONNECTED
        try:
            return orig(self, waiter, ids, need, **kw)
        finally:
            self.state = state

    return patch(CL.ClientMachine, "watch", watch)


# ---------------------------------------------------------------------------
# newcomer-bugs: one small mistake per core module, each written the way
# someone new to the core would write it (a wrong comparison, a forgotten
# line on one path, an off-by-one), without looking at the bugs above.


def subset_checks_only_node_names():
    def is_subset_of(self, other):
        # BUG: walks the node's resources instead of the request's: a
        # resource the node does not have at all (GPU, a custom one) is
        # never compared, so the request "fits"
        s = self._units
        for k, v in other._units.items():
            if s.get(k, 0) > v:
                return False
        return True

    return patch(SP.ResourceSet, "is_subset_of", is_subset_of)


def node_tasks(attempt_run, budget_spent):
    """A copy of ``Recovery.on_tasks_on_node`` with two knobs: the attempt a
    re-submitted task runs as, and when its budget counts as spent."""
    def on_tasks_on_node(self, node, per_shard, now, sid):
        cmds = []
        entries = sorted((e for rows in per_shard for e in rows), key=lambda e: e.spec.task_id)
        for e in entries:
            spec = e.spec
            if spec.actor_id is not None:
                continue
            if self.head.job_over(spec):
                continue
            if spec.is_actor_creation:
                cmds += self.head.actors.on_creation_lost(spec, now, sid)
                continue
            limit = spec.max_retries
            if limit >= 0 and budget_spent(e.attempt, limit):
                err = L.ErrorInfo(L.ErrorKind.NODE_DIED, f"the node {node} running task {spec.display_name()} died, and the task "
                                  f"has no retries left (max_retries={limit})", task_name=spec.display_name())
                outputs = tuple((o, 0) for o in spec.return_ids)
                cmds += self.head.gcs.write(L.FinishTask(spec.task_id, "", outputs, err, e.attempt, job_id=spec.job_id), None, now, sid)
                continue
            self.resubmitted += 1
            cmds += self.head.gcs.write(L.RetryTask(spec.task_id, "", attempt=e.attempt + 1), None, now, sid)
            cmds += self.head.scheduler.submit(spec, attempt_run(e.attempt), now, sid)
        return cmds

    return patch(L.Recovery, "on_tasks_on_node", on_tasks_on_node)


def resubmitted_with_old_attempt():
    # BUG: the RetryTask records attempt + 1, but the task is submitted as
    # the row's attempt: its finish is then older than its own row
    return node_tasks(lambda attempt: attempt, lambda attempt, limit: attempt >= limit)


def node_death_retry_off_by_one():
    # BUG: > instead of >=: a task on a dead node is re-run once more than max_retries allows
    return node_tasks(lambda attempt: attempt + 1, lambda attempt, limit: attempt > limit)


def dead_node_still_placed_on():
    def node_dead(self, node, now, sid):
        if node in self.dead_nodes:
            return []
        self.dead_nodes.add(node)
        self.misses.pop(node, None)
        self.heard.discard(node)
        self.last_seq.pop(node, None)
        # BUG: self.scheduler.remove_node(node) is missing: the global
        # scheduler goes on placing tasks on the dead node
        self.chain.remove_listener(node)
        cmds = self.placement.on_node_dead(node, now, sid)
        return cmds + self.gcs.write(T.NodeDown(node), ("node-down", node), now, sid)

    return patch(H.HeadMachine, "node_dead", node_dead)


def alive_cas_ignores_death():
    def _put_actor(t, op):
        rows = t.data["actors"]
        aid = op.entry.spec.actor_id
        old = rows.get(aid)
        if op.create_only and old is not None:
            return old, []
        if op.expect_incarnation is not None:
            have = 0 if old is None else old.incarnation
            if have != op.expect_incarnation:  # BUG: a row that is DEAD at that incarnation must refuse it too
                return old, []
        rows[aid] = op.entry
        return op.entry, [("actors", aid, op.entry)]

    table = T._APPLY
    old = table[T.PutActor]
    table[T.PutActor] = _put_actor
    return lambda: table.__setitem__(T.PutActor, old)


def recovered_head_reuses_request_ids():
    def _adopt(self, now, sid, shards):
        rec = self.recovering
        reports = [rec.reports[r] for r in sorted(rec.reports)]
        self.chain = G.ChainMaster.from_reports(reports, shards, self.config.gcs_timing, self.address)
        rec.phase = "rebuild"
        # BUG: the new head's GCS client numbers its requests from 1 again,
        # as its predecessor did
        cmds = self.chain.start(now)
        cmds += self.gcs.set_configs(self.chain.configs(), now)
        cmds += self.gcs.read(T.Scan("nodes"), ("recover", "nodes"), now, sid)
        cmds += self.gcs.read(T.Keys("ended_jobs"), ("recover", "ended"), now, sid)
        cmds += self.gcs.read(T.Scan("actors"), ("recover", "actors"), now, sid)
        cmds += self.gcs.read(T.UnplacedTasks(), ("recover", "unplaced"), now, sid)
        return cmds

    return patch(H.HeadMachine, "_adopt", _adopt)


def scan_ignores_queued_writes():
    def on_node_dead(self, node, now, sid):
        # BUG (the rule before the fix): the mark is the next request id, so
        # only the requests already sent are waited for; a write queued
        # behind an earlier write of its key gets a later id when it goes
        self.pending_scans.append((node, self.head.gcs.next_req, sid))
        return self.scan_if_settled(now)

    def scan_if_settled(self, now):
        if not self.pending_scans:
            return []
        outstanding = self.head.gcs.outstanding
        oldest = next(iter(outstanding)) if outstanding else None
        cmds, keep = [], []
        for node, mark, sid in self.pending_scans:
            if oldest is None or oldest >= mark:
                cmds += self.head.gcs.read(L.TasksOnNode(node), ("rec-node", node), now, sid)
            else:
                keep.append((node, mark, sid))
        self.pending_scans = keep
        return cmds

    u1 = patch(L.Recovery, "on_node_dead", on_node_dead)
    u2 = patch(L.Recovery, "scan_if_settled", scan_if_settled)
    return lambda: (u2(), u1())


def late_actor_outlives_job():
    from ..core.messages import GcsNotify

    orig = H._HANDLERS[GcsNotify]

    def _on_notify(self, ev, now):
        if ev.table == "actors":  # (before the fix: an actor whose job ended is only recorded)
            if self.gcs.fresh(ev):
                self.actors.on_entry(ev.key, ev.value)
            return []
        return orig(self, ev, now)

    return handler(H, GcsNotify, _on_notify)
