"""Planted bugs in actors: ordered calls, restarts, replay, the actor manager.

Each function plants one bug (a small diff to one function of ``penumbra/core``) and
returns its undo; ``bugs.py`` lists them with their names, descriptions and seeds.
"""

from __future__ import annotations

from dataclasses import replace

from msgspec.structs import replace as replace_struct  # (events, commands and records are Structs)

from ..core import actor_host as AH
from ..core import actor_manager as AM
from ..core import actor_calls as AC
from ..core import actor_rules as ARU
from ..core import messages as M
from ..core import records as R
from ..core import specs as SP
from ..core import tables as T
from ..core.messages import Command
from .planting import patch


def actor_ignores_floor_after_restart():
    orig = AH.ActorHost.on_call

    def on_call(self, ev, now, sid):
        # BUG: a caller's order in a restarted actor starts at whichever of
        # its calls arrives first, not at the floor its node sent
        if ev.incarnation > 0:
            ev = replace_struct(ev, floor=ev.spec.sequence_no)
        return orig(self, ev, now, sid)

    return patch(AH.ActorHost, "on_call", on_call)


# (The obvious ordering bug, dispatching a caller's calls in arrival order
# rather than sequence order, is caught by ``ActorHost.validate()`` at once:
# it leaves a queued call below the caller's next sequence number.  The two
# below keep the host's bookkeeping consistent, so only the execution log
# and ``check_actor_order`` show them.)


def replay_newest_first():
    orig = AH.ActorHost.created

    def created(self, spec, start, wid, now, sid):
        # BUG: as if ``h.replay.appendleft`` stood for ``h.replay.append``:
        # the logged calls are replayed newest first
        return orig(self, spec, replace(start, replay=start.replay[::-1]), wid, now, sid)

    return patch(AH.ActorHost, "created", created)


def replayed_call_runs_again():
    orig = AH.ActorHost.created

    def created(self, spec, start, wid, now, sid):
        cmds = orig(self, spec, start, wid, now, sid)
        h = self.actors.get(start.entry.spec.actor_id)
        if h is not None:
            # BUG: replayed calls do not advance their caller's next_seq, so
            # a caller that re-sends one (it never saw the result) runs it again
            h.next_seq = dict(start.seqs)
        return cmds

    return patch(AH.ActorHost, "created", created)


def actor_restarts_not_counted():
    orig = AM.ActorManager._restart_or_die

    def _restart_or_die(self, e, cause, now, sid):
        return orig(self, replace_struct(e, restarts=0), cause, now, sid)  # BUG: restarts never add up

    return patch(AM.ActorManager, "_restart_or_die", _restart_or_die)


def job_end_kills_alive_actors_only():
    def on_job_finished(self, job_id, now, sid):
        cmds = []
        for aid, e in sorted(self.actors.items()):
            # BUG: ``is ALIVE`` for ``is not DEAD``: an actor of the job still
            # being created (or restarting) outlives its job
            if e.creation.job_id == job_id and e.state is R.ActorState.ALIVE and not e.spec.detached:
                cmds += self.kill(aid, True, now, sid, why=f"its job {job_id} ended (its driver exited)", graceful=True)
        return cmds

    return patch(AM.ActorManager, "on_job_finished", on_job_finished)


def restart_drops_name():
    orig = AM.ActorManager._restart_or_die

    def _restart_or_die(self, e, cause, now, sid):
        cmds = orig(self, e, cause, now, sid)
        new = self.actors.get(e.spec.actor_id)
        if e.spec.name and new is not None and new.state is R.ActorState.RESTARTING:
            # BUG: the name is released on a restart as on a death: the
            # restarted actor can no longer be found by name
            cmds += self.head.gcs.write(T.UnregisterName(e.spec.namespace, e.spec.name, e.spec.actor_id), None, now, sid)
        return cmds

    return patch(AM.ActorManager, "_restart_or_die", _restart_or_die)


def replay_skips_first_logged_call():
    def on_checkpoint_read(self, aid, incarnation, value, now, sid):
        r = self.restarts.get(aid)
        if r is None or r.entry.incarnation != incarnation:
            return []
        start = 0
        if value is not None:
            start, payload = value[0], value[1]
            r.checkpoint = payload
            r.seqs = tuple(value[2]) if len(value) > 2 else ()
        r.entry = replace_struct(r.entry, checkpoint_index=start)
        # BUG: start + 1: the checkpoint index is the first call *not* in the
        # checkpoint, not the last one in it
        return self.head.gcs.read(T.ActorLogRange(aid, start + 1, start + 1_000_000), ("actor-log", aid, incarnation), now, sid)

    return patch(AM.ActorManager, "on_checkpoint_read", on_checkpoint_read)


def call_retried_once_too_often():
    def _may_retry(entry, p):  # (core/actor_calls.py ``may_retry``)
        n = entry.spec.max_task_retries
        return n < 0 or p.attempt <= n  # BUG: should be <: max_task_retries=0 still retries once

    return patch(AC, "may_retry", _may_retry)  # (the rule the router and the direct caller share)


def dead_actor_keeps_resources():
    orig = AH.ActorHost.on_worker_died

    def on_worker_died(self, wid, reason, now, sid):
        h = self.actors.get(self.by_worker.get(wid))
        if h is not None:
            h.held = SP.EMPTY  # BUG: stands for the forgotten self.node.scheduler.release(h.held)
        return orig(self, wid, reason, now, sid)

    return patch(AH.ActorHost, "on_worker_died", on_worker_died)


# ---------------------------------------------------------------------------
# branch quiet (issue 14): bugs that only the quiet-cluster checkers see
# (``checkers.check_quiet_cluster``): each leaves the values every get
# returns as they were, so the old swarm passes every default seed.


def finished_call_keeps_inputs_pinned():
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
        if call.spec.method == AH.TERMINATE_METHOD and not call.replay:
            return self._terminate(h, call, now, sid)
        result = ("error", ARU._cancelled(call.spec)) if call.cancelled else ("ok", outputs)
        if h.entry.spec.replay and not call.replay:
            return self._log_then_release(h, call, result, now, sid) + self._dispatch(h, now, sid)
        cmds = self._release(h, call, result, now, sid)
        self._executed(h)
        return cmds + self._dispatch(h, now, sid)

    return patch(AH.ActorHost, "on_finished", on_finished)


def fence_spends_a_restart():
    orig = AM.ActorManager._fence_and_place

    def _fence_and_place(self, e, now, sid):
        # BUG: the recovered head's fence counts as a restart
        return orig(self, replace_struct(e, restarts=e.restarts + 1), now, sid)

    return patch(AM.ActorManager, "_fence_and_place", _fence_and_place)


def release_past_a_gap():
    orig = AH.ActorHost.on_logged

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

    return patch(AH.ActorHost, "on_logged", on_logged)


# -- swarm-plans: a regression the long run found (seeds 1870, 2039) ---------


def older_instance_overwritten():
    orig = AH.ActorHost.created

    def created(self, spec, start, wid, now, sid):
        # BUG: an older instance of the actor still hosted here (its stop and
        # this start crossed) is overwritten, not stopped: its resources
        # leak, and its worker's death is taken for the new instance's
        self.actors.pop(start.entry.spec.actor_id, None)
        return orig(self, spec, start, wid, now, sid)

    return patch(AH.ActorHost, "created", created)


def input_error_call_keeps_pins():
    def _dispatch(self, h, now, sid):
        cmds: list[Command] = []
        limit = AH._in_flight_limit(h.entry.spec)
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
                cmds.append(M.Execute(worker_id=h.worker, spec=call.spec, attempt=call.attempt,
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
            if call.spec.method == AH.TERMINATE_METHOD and h.running:
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
            cmds.append(M.Execute(worker_id=h.worker, spec=call.spec, attempt=call.attempt,
                                gpu_ids=self.node.scheduler.gpus.ids_of(h.worker), stimulus_id=sid))
            if call.spec.method == AH.TERMINATE_METHOD:
                h.terminate_sent = True  # nothing is sent after it
                break
        return cmds

    return patch(AH.ActorHost, "_dispatch", _dispatch)
