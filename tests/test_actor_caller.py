"""The caller's side of direct actor calls (core/actor_caller.py): the
routed path's rules (core/actor_calls.py, shared with ActorRouter) applied to
endpoints, plus what is new: endpoints, lost connections, replay actors
rerouted.  (With an actor's worker and faults: tests/test_actor_inbox.py.)"""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from penumbra.core import actor_calls
from penumbra.core.actor_caller import (
    REPORT_KEEP,
    RESEND_AFTER,
    RESEND_TIMER,
    ActorCaller,
    Failed,
    Republish,
    Reroute,
    Resolved,
    Watch,
)
from penumbra.core.actor_inbox import REPORT_BATCH
from penumbra.core.actor_router import ActorRouter
from penumbra.core.ids import actor_id_of, child_task_id, driver_task_id
from penumbra.core.msg_base import Send, SetTimer
from penumbra.core.msg_direct import ActorWatched, DirectCall, DirectCancel, DirectFloor, DirectOutput, DirectReply, EndpointRow
from penumbra.core.records import ActorEntry, ActorState, ErrorInfo, ErrorKind
from penumbra.core.specs import ActorSpec, FunctionDescriptor, TaskSpec

ROOT = driver_task_id(1)
CREATION = TaskSpec(task_id=child_task_id(ROOT, 1 << 40), job_id=1, parent_task_id=ROOT,
                    function=FunctionDescriptor(b"C", "C.__init__"))
AID = actor_id_of(CREATION.task_id)


def entry(state=ActorState.ALIVE, inc=0, retries=0, replay=False, cause=None) -> ActorEntry:
    spec = ActorSpec(actor_id=AID, cls=FunctionDescriptor(b"C", "C"), max_restarts=3, max_task_retries=retries,
                     replay=replay)
    return ActorEntry(spec, CREATION, state=state, incarnation=inc, node="node:0", death_cause=cause)


def ep(inc=0) -> EndpointRow:
    return EndpointRow(actor_id=AID, incarnation=inc, endpoint=f"unix:/w{inc}", node="node:0")


def call(seq: int, caller="c:a") -> TaskSpec:
    return TaskSpec(task_id=child_task_id(ROOT, seq), job_id=1, parent_task_id=ROOT,
                    function=FunctionDescriptor(b"C.m", "C.m"), max_retries=0, actor_id=AID,
                    caller_id=caller, sequence_no=seq, method="m")


def sent(cmds, kind=DirectCall) -> list:
    return [(c.to, c.msg) for c in cmds if type(c) is Send and type(c.msg) is kind]


def reply(spec: TaskSpec, inc=0, **kw) -> DirectReply:
    outs = tuple(DirectOutput(object_id=o, size=1, data=b"v") for o in spec.return_ids)
    return DirectReply(actor_id=AID, caller_id=spec.caller_id, sequence_no=spec.sequence_no, incarnation=inc,
                       task_id=spec.task_id, outputs=kw.pop("outputs", outs), **kw)


def live(retries=0) -> ActorCaller:
    c = ActorCaller("c:a")
    c.submit(call(0), 0)  # (opens the book)
    c.watched(ActorWatched(actor_id=AID, entry=entry(retries=retries), endpoint=ep()), 0)
    return c


def test_calls_wait_for_the_row_and_the_endpoint_then_leave_in_order() -> None:
    c = ActorCaller("c:a")
    cmds = c.submit(call(1), 0)
    assert cmds == [Watch(actor_id=AID)]  # (the first call asks the node to follow the actor)
    assert c.submit(call(0), 0) == []
    assert c.row(AID, entry(), 0) == []  # ALIVE, but where?
    cmds = c.endpoint(AID, ep(), 0)
    assert [(to, m.spec.sequence_no, m.floor, m.incarnation) for to, m in sent(cmds)] == [
        ("unix:/w0", 0, 0, 0), ("unix:/w0", 1, 0, 0)]
    c.validate()


def test_calls_submitted_out_of_order_leave_in_order() -> None:
    c = live()
    assert sent(c.submit(call(2), 0)) == []  # (1 is still to come)
    cmds = c.submit(call(1), 0)
    assert [m.spec.sequence_no for _, m in sent(cmds)] == [1, 2]


def test_a_reply_resolves_once_and_moves_the_floor() -> None:
    c = live()
    s0 = call(0)
    cmds = c.reply(reply(s0), 0)
    assert [type(x) for x in cmds] == [Resolved] and cmds[0].spec == s0
    assert c.reply(reply(s0), 0) == []  # a duplicate
    (_, m), = sent(c.submit(call(1), 0))
    assert m.floor == 1
    assert c.pending() == 1 and c.owns(call(1).task_id)


def test_restart_fails_in_flight_calls_without_retries() -> None:
    c = live(retries=0)
    cmds = c.row(AID, entry(ActorState.RESTARTING, inc=1), 0)
    (f,) = cmds
    assert type(f) is Failed and f.error.kind is ErrorKind.ACTOR_DIED and "max_task_retries=0" in f.error.message


def test_restart_resends_in_flight_calls_with_retries_to_the_new_endpoint() -> None:
    c = live(retries=1)
    assert c.row(AID, entry(ActorState.RESTARTING, inc=1, retries=1), 0) == []
    assert c.row(AID, entry(inc=1, retries=1), 0) == []  # (the new endpoint is not known yet)
    cmds = c.endpoint(AID, ep(1), 0)
    ((to, m),) = sent(cmds)
    assert (to, m.incarnation, m.attempt) == ("unix:/w1", 1, 1)
    # attempts used up: the next restart fails it
    (f,) = c.row(AID, entry(ActorState.RESTARTING, inc=2, retries=1), 0)
    assert type(f) is Failed and f.error.kind is ErrorKind.ACTOR_DIED


def test_dead_fails_everything_with_the_cause() -> None:
    c = live()
    c.submit(call(1), 0)
    cause = ErrorInfo(ErrorKind.ACTOR_DIED, "killed by penumbra.kill()")
    cmds = c.row(AID, entry(ActorState.DEAD, inc=0, cause=cause), 0)
    assert [type(x) for x in cmds] == [Failed, Failed]
    assert all("killed by penumbra.kill()" in x.error.message for x in cmds)
    (f,) = c.submit(call(2), 0)
    assert type(f) is Failed
    c.validate()


def test_stale_rows_and_endpoints_are_ignored() -> None:
    c = live()
    c.row(AID, entry(inc=2), 0)
    c.endpoint(AID, ep(2), 0)
    assert c.row(AID, entry(ActorState.RESTARTING, inc=1), 0) == []
    assert c.endpoint(AID, ep(1), 0) == []
    assert c.endpoints[AID].incarnation == 2


def test_cancel_unsent_fails_at_once_sent_goes_to_the_worker() -> None:
    c = ActorCaller("c:a")
    c.submit(call(0), 0)
    found, cmds = c.cancel(call(0).task_id, 0)
    assert found and type(cmds[0]) is Failed and cmds[0].error.kind is ErrorKind.TASK_CANCELLED
    c = live()
    found, cmds = c.cancel(call(0).task_id, 0, force=True)
    ((to, m),) = sent(cmds, DirectCancel)
    assert found and to == "unix:/w0" and m.force and m.sequence_no == 0
    assert c.cancel(call(0).task_id, 0) == (True, [])  # (asked already)
    assert c.cancel(call(9).task_id, 0) == (False, [])
    # the worker died meanwhile: a cancelled call is never retried
    (f,) = c.row(AID, entry(ActorState.ALIVE, inc=1, retries=5), 0)
    assert f.error.kind is ErrorKind.TASK_CANCELLED


def test_a_lost_connection_resends_to_the_same_incarnation_later() -> None:
    c = live()
    c.cancel(call(0).task_id, 0)
    cmds = c.lost("unix:/w0", 1.0)
    assert cmds == [Watch(actor_id=AID), SetTimer(at=1.0 + RESEND_AFTER, key=(RESEND_TIMER, AID))]
    assert sent(c.submit(call(1), 1.0)) == []  # (held while the connection is down)
    cmds = c.timer((RESEND_TIMER, AID), 1.2)
    assert [(type(m).__name__, m.sequence_no if hasattr(m, "sequence_no") else m.spec.sequence_no, getattr(m, "attempt", 0))
            for _, m in [(x.to, x.msg) for x in cmds if type(x) is Send]] == [
        ("DirectCall", 0, 0), ("DirectCancel", 0, 0), ("DirectCall", 1, 0)]
    assert c.lost("unix:/elsewhere", 2.0) == []


def test_a_reply_from_an_older_incarnation_tells_the_live_one_the_floor() -> None:
    c = live(retries=1)
    c.submit(call(1), 0)
    c.row(AID, entry(inc=1, retries=1), 0)
    c.endpoint(AID, ep(1), 0)  # 0 and 1 re-sent to incarnation 1
    cmds = c.reply(reply(call(0), inc=0), 0)  # ... but the old one answered 0 after all
    ((to, m),) = sent(cmds, DirectFloor)
    assert (to, m.floor, m.incarnation) == ("unix:/w1", 1, 1)


def test_a_stale_reply_from_a_newer_worker_leaves_the_call_in_flight_to_its_incarnation() -> None:
    """A newer incarnation listens where the call went (the address was
    reused): this copy did not run, but an earlier one may have, so the call
    counts as in flight when its worker died: retried or failed by the row."""
    c = live(retries=0)
    assert c.reply(reply(call(0), inc=1, outputs=(), stale=True), 0) == [Watch(actor_id=AID)]
    (f,) = c.row(AID, entry(inc=1), 0)
    assert type(f) is Failed and f.error.kind is ErrorKind.ACTOR_DIED
    c = live(retries=1)
    c.reply(reply(call(0), inc=1, outputs=(), stale=True), 0)
    c.row(AID, entry(inc=1, retries=1), 0)
    ((to, m),) = sent(c.endpoint(AID, ep(1), 0))
    assert (m.incarnation, m.attempt) == (1, 1)


def test_a_stale_reply_from_an_older_worker_sends_the_call_again_later() -> None:
    c = live(retries=1)
    c.row(AID, entry(inc=1, retries=1), 0)
    c.endpoint(AID, replace(ep(1), endpoint="unix:/w0"), 0)  # (the same address; 0 re-sent there, attempt 1)
    cmds = c.reply(reply(call(0), inc=0, outputs=(), stale=True), 1.0)  # the old worker is still there
    assert cmds == [Watch(actor_id=AID), SetTimer(at=1.0 + RESEND_AFTER, key=(RESEND_TIMER, AID))]
    ((to, m),) = sent(c.timer((RESEND_TIMER, AID), 1.2))
    assert (m.incarnation, m.attempt) == (1, 1)  # (the same attempt: it did not run)
    # a stale answer to an older copy of a call now in flight where it should be: ignored
    assert c.reply(reply(call(0), inc=1, outputs=(), stale=True), 1.3) == []


def test_replay_actors_keep_the_routed_path() -> None:
    c = ActorCaller("c:a")
    c.submit(call(1), 0)
    c.submit(call(0), 0)
    cmds = c.row(AID, entry(replay=True), 0)
    assert [(type(x), x.spec.sequence_no) for x in cmds] == [(Reroute, 0), (Reroute, 1)]
    assert c.submit(call(2), 0) == [Reroute(spec=call(2))]
    assert c.pending() == 0
    c.validate()


def test_killed_fails_later_calls_at_once() -> None:
    c = live()
    c.killed(AID, 0)
    (f,) = c.submit(call(1), 0)
    assert type(f) is Failed and "penumbra.kill()" in f.error.message


def test_submit_of_a_task_is_refused() -> None:
    task = replace(call(0), actor_id=None)
    with pytest.raises(ValueError, match="not an actor method call"):
        ActorCaller("c:a").submit(task, 0)


def test_router_and_caller_follow_one_rule_set(monkeypatch) -> None:
    """The retry rule lives once (core/actor_calls.py): changing it there
    changes both the routed path's router and the direct caller."""
    monkeypatch.setattr(actor_calls, "may_retry", lambda e, p: True)
    c = live(retries=0)
    assert c.row(AID, entry(ActorState.RESTARTING, inc=1), 0) == []  # (kept for a resend)
    assert ActorRouter.on_entry.__code__.co_names.count("settle") == 1


# --------------------------------------------------------------- results the node may not have (Republish)


def test_an_incarnations_last_inline_results_go_to_the_node_when_it_dies() -> None:
    """The worker reports in batches after replying: what an incarnation
    answered may die with it.  When the row says it is gone, the caller
    hands its last inline results to its node (Republish); released ones
    are left out, and a live incarnation's are kept back."""
    c = live()
    s0, s1, s2 = call(0), call(1), call(2)
    c.submit(s1, 0)
    c.submit(s2, 0)
    for s in (s0, s1, s2):
        assert [type(x) for x in c.reply(reply(s), 0)] == [Resolved]
    c.released(s1.return_ids)
    assert [type(x) for x in c.row(AID, entry(ActorState.ALIVE, inc=0), 1)] == []  # (the same incarnation)
    cmds = c.row(AID, entry(ActorState.RESTARTING, inc=1), 1)
    (rep,) = [x for x in cmds if type(x) is Republish]
    assert [e.spec.task_id for e in rep.entries] == [s0.task_id, s2.task_id]
    assert all(e.outputs and e.outputs[0].data == b"v" and e.error is None for e in rep.entries)
    assert c.row(AID, entry(ActorState.DEAD, inc=1), 2) == []  # (handed over once)
    c.validate()


def test_the_caller_keeps_as_many_results_as_a_report_batch_holds() -> None:
    assert REPORT_KEEP == REPORT_BATCH  # (a worker's unreported results are at most one batch)
    c = live()
    specs = [call(i) for i in range(REPORT_KEEP + 10)]
    for s in specs[1:]:
        c.submit(s, 0)
    for s in specs:
        c.reply(reply(s), 0)
    (rep,) = [x for x in c.row(AID, entry(ActorState.DEAD, inc=0), 1) if type(x) is Republish]
    assert [e.spec.task_id for e in rep.entries] == [s.task_id for s in specs[-REPORT_KEEP:]]
