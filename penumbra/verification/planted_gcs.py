"""Planted bugs in the GCS: chain replication, dedup, pub/sub, the tables and the GCS client.

Each function plants one bug (a small diff to one function of ``penumbra/core``) and
returns its undo; ``bugs.py`` lists them with their names, descriptions and seeds.
"""

from __future__ import annotations

from msgspec.structs import replace as replace_struct  # (ops are Structs)

from ..core import gcs as G
from ..core import gcs_client as GC
from ..core import records as R
from ..core import tables as T
from ..core.messages import GcsReply, Send
from ..core.tables_state import index_add
from .planting import patch, handler


def late_subscriber_not_told():
    orig = T._APPLY[T.Subscribe]

    def _subscribe(t, op):
        orig(t, op)
        return None, []  # BUG: the current value is not handed to a late subscriber

    def undo_direct(self, seq, client, req_id, op, low_water):
        e = orig_apply(self, seq, client, req_id, op, low_water)
        e.direct = None
        return e

    orig_apply = G.GcsReplica._apply
    u1 = patch(T, "_APPLY", {**T._APPLY, T.Subscribe: _subscribe})
    u2 = patch(G.GcsReplica, "_apply", undo_direct)

    def undo():
        u2()
        u1()

    return undo


def head_acks_before_tail():
    orig = G.GcsReplica._after_apply

    def _after_apply(self, entry, sid, now):
        cmds = orig(self, entry, sid, now)
        if self.is_head and not self.is_tail:
            # BUG: the head acknowledges as soon as it applied the write
            cmds.append(Send(to=entry.client, msg=GcsReply(req_id=entry.req_id, result=entry.result, shard=self.shard)))
        return cmds

    return patch(G.GcsReplica, "_after_apply", _after_apply)


def gcs_no_dedup():
    from ..core.messages import GcsWrite

    orig = G._HANDLERS[GcsWrite]

    def _on_write(self, ev, now):
        self.dedup.forget(ev.client, ev.req_id)  # BUG: a retried write is applied again
        self.floors.pop(ev.client, None)
        return orig(self, ev, now)

    return handler(G, GcsWrite, _on_write)


def successor_resync_ignored():
    def _on_sync(self, ev, now):
        return []  # BUG: a new successor's GcsSync is ignored: it never catches up

    return handler(G, G.GcsSync, _on_sync)


def finish_can_be_undone():
    orig = T._APPLY[T.AddTask]

    def _add_task(t, op):
        old = t.data["tasks"].get(op.spec.task_id)
        if old is not None and old.state is not T.TaskState.PENDING:
            # BUG: a late re-submission reopens a finished task
            t.data["tasks"].pop(op.spec.task_id)
            t._index_task(op.spec.task_id, old, T.TaskEntry(old.spec, T.TaskState.FAILED))
        return orig(t, op)

    return patch(T, "_APPLY", {**T._APPLY, T.AddTask: _add_task})


# --- draws-faults: bugs that only the draws added on branch draws-faults reach
# (a second GCS crash inside a rejoin's catch-up window, a worker dying while
# blocked in get, a fractional GPU total, spillback, a heartbeat storm after a
# pause of the head); the swarm before them passes its 300 seeds with each.


def sync_ignores_trimmed_log():
    def _on_sync(self, ev, now):
        if not self.active or ev.shard != self.shard or self._successor() != ev.replica:
            return []
        self.succ_seq = ev.seq
        # BUG: the check that the successor lacks entries we no longer keep
        # (acknowledged, trimmed: it must copy state again, GcsRejoin) is
        # gone; we re-send what we have and it waits for the gap forever
        cmds = [Send(to=ev.replica, msg=self._forward_msg(self.log[s], ev.stimulus_id))
                for s in sorted(self.log) if s > ev.seq]
        if self._can_read():
            cmds.append(Send(to=ev.replica, msg=G.GcsCaughtUp(shard=self.shard, epoch=self.config.epoch, seq=self.seq)))
        self.retain_from = None
        for s in [s for s in self.log if s <= self.committed and s <= ev.seq]:
            del self.log[s]
        return cmds

    return handler(G, G.GcsSync, _on_sync)


def joiner_counted_caught_up():
    orig = G.ChainMaster._on_ready

    def _on_ready(self, ev, now):
        cmds = orig(self, ev, now)
        self.caught_up.pop(ev.replica, None)  # BUG: a replica appended to its chain counts as caught up at once
        return cmds

    return patch(G.ChainMaster, "_on_ready", _on_ready)


def low_water_own_request():
    def _send(self, r):
        config = self.configs[r.shard]
        if not config.replicas:
            return []
        if isinstance(r.request, GC.Query):
            return [Send(to=config.replicas[-1], msg=GC.GcsRead(client=self.address, req_id=r.req_id, query=r.request, shard=r.shard, stimulus_id=r.sid))]
        # BUG: low_water should be the oldest outstanding request's id
        # (next(iter(self.outstanding))), not this one's: the replicas then
        # forget, and refuse, the older requests still waiting for a reply
        return [Send(to=config.replicas[0], msg=GC.GcsWrite(client=self.address, req_id=r.req_id, op=r.request, shard=r.shard,
                                                            low_water=r.req_id, stimulus_id=r.sid))]

    return patch(GC.GcsClient, "_send", _send)


def dedup_trim_off_by_one():
    def _apply(self, seq, client, req_id, op, low_water):
        result, changes = self.tables.apply(op)
        # BUG: the low-water request itself is forgotten, though it is still
        # outstanding (DedupTable.remember keeps every id >= low_water)
        self.dedup.remember(client, req_id, seq, result, low_water + 1 if low_water else 0)
        floors = self.floors
        if low_water > floors.get(client, 0):
            floors[client] = low_water
        entry = G._Entry(seq, client, req_id, op, low_water, result, changes)
        if isinstance(op, T.Subscribe):
            if op.key is not None:
                if result is not None:
                    entry.direct = (op.subscriber, [(op.table, op.key, result)])
            else:
                rows = self.tables.data[op.table]
                if rows:
                    entry.direct = (op.subscriber, [(op.table, k, v) for k, v in rows.items()])
        return entry

    return patch(G.GcsReplica, "_apply", _apply)


def task_index_never_shrinks():
    def _index_task(self, tid, old, new):
        # BUG: only adds; a task that finishes (or moves) stays listed under
        # its old node, so TasksOnNode of a dead node returns finished tasks
        if new.state is T.TaskState.PENDING and new.node:
            index_add(self._tasks_by_node, new.node, tid)

    return patch(T.Tables, "_index_task", _index_task)


def new_tail_commits_silently():
    def _on_config(self, ev, now):
        new = ev.config
        if new.shard != self.shard:
            return []
        if self.config is not None and new.epoch <= self.config.epoch:
            return []
        old = self.config
        old_pred = old.predecessor(self.replica_id) if old and self.replica_id in old.replicas else None
        old_succ = old.successor(self.replica_id) if old and self.replica_id in old.replicas else None
        self.config = new
        if self.replica_id not in new.replicas:
            self.active = False
            return []
        if self.joining:
            return []
        self.active = True
        cmds = []
        pred = new.predecessor(self.replica_id)
        succ = new.successor(self.replica_id)
        if succ != old_succ:
            self.succ_seq = 0
        if pred is not None and pred != old_pred:
            self._awaiting_catchup = True
            cmds.append(Send(to=pred, msg=G.GcsSync(shard=self.shard, epoch=new.epoch, seq=self.seq, replica=self.replica_id, stimulus_id=ev.stimulus_id)))
        if pred is None:
            self._awaiting_catchup = False
        if succ is None and old_succ is not None:
            # BUG: the loop committing the log (``self._commit(e, sid)`` for
            # each entry: the replies and notifications of the writes the
            # old tail had not committed) is missing; only the counter moves
            self.committed = self.seq
            if self.retain_from is None:
                self.log.clear()
            if pred is not None:
                cmds.append(Send(to=pred, msg=G.GcsAck(shard=self.shard, epoch=new.epoch, seq=self.seq)))
            cmds += self._serve_pending_reads()
        return cmds

    return patch(G.GcsReplica, "_on_config", _on_config)


def key_queue_never_cleared():
    def _on_reply(self, ev, now):
        r = self.outstanding.pop(ev.req_id, None)
        if r is None:
            return []
        cmds = []
        if r.key is not None:
            q = self.key_queues.get(r.key)
            if q:
                cmds += self._start(q.popleft(), now)
            # BUG: the else branch (self.key_queues.pop(r.key, None)) is
            # missing: the key looks busy for good, and its next write waits
            # for a reply that never comes
        if r.group is None:
            return cmds + self.on_reply(r.token, ev.result, now, ev.stimulus_id or r.sid)
        g = r.group
        g.results[r.shard] = ev.result
        if len(g.results) < g.expected:
            return []
        results = tuple(g.results[s] for s in sorted(g.results))
        return self.on_reply(g.token, results, now, ev.stimulus_id or r.sid)

    return patch(GC.GcsClient, "_on_reply", _on_reply)


def predecessor_wraps_around():
    def predecessor(self, replica):
        i = self.replicas.index(replica)
        return self.replicas[i - 1] if i >= 0 else None  # BUG: should be i > 0 (replicas[-1] is the tail)

    return patch(R.ChainConfig, "predecessor", predecessor)


def recovery_adopts_first_config():
    orig = G.ChainMaster.from_reports.__func__

    def from_reports(cls, reports, shards=None, timing=G.GcsTiming(), address="head"):
        first = {}
        for r in reports:
            if r.config is not None:
                first.setdefault(r.config.shard, r)
        # BUG: the first report of each shard wins, whatever its epoch
        return orig(cls, [r for r in reports if r.config is None or first[r.config.shard] is r], shards, timing,
                    address)

    return patch(G.ChainMaster, "from_reports", classmethod(from_reports))


def actor_call_outputs_outlive_job():
    orig = T._APPLY[T.FinishTask]

    def _finish_task(t, op):
        out = orig(t, op)
        for oid, _ in op.outputs:  # (before the fix: a call's outputs were not tied to their job)
            t.data["actor_outputs"].pop(oid, None)
        return out

    return patch(T, "_APPLY", {**T._APPLY, T.FinishTask: _finish_task})


def late_put_row_outlives_job():
    orig = T._APPLY[T.AddLocation]

    def _add_location(t, op):
        return orig(t, replace_struct(op, job_id=None))  # (before the fix: a put's job was not checked)

    return patch(T, "_APPLY", {**T._APPLY, T.AddLocation: _add_location})
