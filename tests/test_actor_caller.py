"""The caller's side of direct actor calls (core/actor_caller.py): the
routed path's rules (core/actor_calls.py, shared with ActorRouter) applied to
endpoints, plus what is new: endpoints, lost connections, replay actors
rerouted.  (With an actor's worker and faults: tests/test_actor_inbox.py.)"""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from penumbra.core import actor_calls
from penumbra.core.actor_caller import (
    ENDPOINT_TIMER,
    ENDPOINT_WAIT,
    REPORT_KEEP,
    RESEND_AFTER,
    RESEND_TIMER,
    ActorCaller,
    Failed,
    Republish,
    Reroute,
    Resolved,
    Skipped,
    StoreFailure,
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


def failures(cmds) -> list[Failed]:
    """The ``Failed`` among ``cmds``, each checked to have its error stored
    for other processes (``StoreFailure``, right after it)."""
    out = []
    for i, c in enumerate(cmds):
        if type(c) is Failed:
            s = cmds[i + 1] if i + 1 < len(cmds) else None
            assert type(s) is StoreFailure and (s.spec, s.error) == (c.spec, c.error), f"{c!r} not stored"
            out.append(c)
    assert sum(type(c) is StoreFailure for c in cmds) == len(out)
    return out


def endpoint_timer(at=ENDPOINT_WAIT) -> SetTimer:
    return SetTimer(at=at, key=(ENDPOINT_TIMER, AID))


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
    assert c.row(AID, entry(), 0) == [endpoint_timer()]  # ALIVE, but where? (not told in time: routed)
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
    (f,) = failures(cmds)
    assert type(f) is Failed and f.error.kind is ErrorKind.ACTOR_DIED and "max_task_retries=0" in f.error.message


def test_restart_resends_in_flight_calls_with_retries_to_the_new_endpoint() -> None:
    c = live(retries=1)
    assert c.row(AID, entry(ActorState.RESTARTING, inc=1, retries=1), 0) == []
    assert c.row(AID, entry(inc=1, retries=1), 0) == [endpoint_timer()]  # (the new endpoint is not known yet)
    cmds = c.endpoint(AID, ep(1), 0)
    ((to, m),) = sent(cmds)
    assert (to, m.incarnation, m.attempt) == ("unix:/w1", 1, 1)
    # attempts used up: the next restart fails it
    (f,) = failures(c.row(AID, entry(ActorState.RESTARTING, inc=2, retries=1), 0))
    assert type(f) is Failed and f.error.kind is ErrorKind.ACTOR_DIED


def test_dead_fails_everything_with_the_cause() -> None:
    c = live()
    c.submit(call(1), 0)
    cause = ErrorInfo(ErrorKind.ACTOR_DIED, "killed by penumbra.kill()")
    cmds = failures(c.row(AID, entry(ActorState.DEAD, inc=0, cause=cause), 0))
    assert [type(x) for x in cmds] == [Failed, Failed]
    assert all("killed by penumbra.kill()" in x.error.message for x in cmds)
    (f,) = failures(c.submit(call(2), 0))
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
    assert found and failures(cmds)[0].error.kind is ErrorKind.TASK_CANCELLED
    c = live()
    found, cmds = c.cancel(call(0).task_id, 0, force=True)
    ((to, m),) = sent(cmds, DirectCancel)
    assert found and to == "unix:/w0" and m.force and m.sequence_no == 0
    assert c.cancel(call(0).task_id, 0) == (True, [])  # (asked already)
    assert c.cancel(call(9).task_id, 0) == (False, [])
    # the worker died meanwhile: a cancelled call is never retried
    (f,) = failures(c.row(AID, entry(ActorState.ALIVE, inc=1, retries=5), 0))
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
    (f,) = failures(c.row(AID, entry(inc=1), 0))
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
    (f,) = failures(c.submit(call(1), 0))
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


# ---------------------------------------------------------------------------
# Giving the direct path up (an unreachable worker, no endpoint), and the
# router's order across the switch


def kinds(cmds) -> list:
    """``cmds`` as (kind, seq or (after, before)) pairs, in order."""
    out = []
    for c in cmds:
        if type(c) is Reroute:
            out.append(("reroute", c.spec.sequence_no))
        elif type(c) is Skipped:
            out.append(("skip", (c.after, c.before)))
        elif type(c) is Failed:
            out.append(("failed", c.spec.sequence_no))
    return out


def logs(cmds) -> list[str]:
    return [c.text for c in cmds if type(c).__name__ == "Log"]


def test_an_unreachable_worker_hands_every_call_on_in_order_once_tries_and_time_are_spent() -> None:
    c = live()
    c.submit(call(1), 0)  # (0 and 1 sent; the connection never opens)
    t = 0.0
    cmds = c.unreachable("unix:/w0", t)
    assert cmds == [Watch(actor_id=AID), SetTimer(at=t + RESEND_AFTER, key=(RESEND_TIMER, AID))]
    tries = 1
    while True:  # the resend timer sends them again; every connect fails
        t += RESEND_AFTER
        assert [m.spec.sequence_no for _, m in sent(c.timer((RESEND_TIMER, AID), t))] == [0, 1]
        cmds = c.unreachable("unix:/w0", t)
        tries += 1
        if any(type(x) is Reroute for x in cmds):
            break
        assert tries < 20, "never gave up"
    assert tries >= 3 and t >= 1.0  # (not before UNREACHABLE_TRIES connects over UNREACHABLE_SPAN)
    # nothing ever left this process: every call is handed on, none failed
    assert kinds(cmds) == [("reroute", 0), ("reroute", 1)]
    (text,) = logs(cmds)
    assert "through the nodes" in text and "unix:/w0" in text
    # later calls go the routed way at once; the actor is forgotten here
    assert c.submit(call(2), t) == [Reroute(spec=call(2))]
    assert c.pending() == 0 and AID not in c.books
    assert c.unreachable("unix:/w0", t + 1) == [] and c.lost("unix:/w0", t + 1) == []
    c.validate()


def test_a_reply_or_an_open_connection_starts_the_count_again() -> None:
    c = live()
    for t in (0.0, 0.5):
        c.unreachable("unix:/w0", t)
        c.timer((RESEND_TIMER, AID), t + RESEND_AFTER)
    c.reply(reply(call(0)), 0.9)  # it answered after all
    c.submit(call(1), 0.9)
    assert not any(type(x) is Reroute for x in c.unreachable("unix:/w0", 1.5))  # (one failure, not three)
    c.timer((RESEND_TIMER, AID), 1.7)
    c.unreachable("unix:/w0", 2.0)
    c.timer((RESEND_TIMER, AID), 2.2)
    c.lost("unix:/w0", 2.3)  # (connected, then lost: reachable)
    c.timer((RESEND_TIMER, AID), 2.5)
    assert not any(type(x) is Reroute for x in c.unreachable("unix:/w0", 2.6))


def test_no_switch_while_the_row_says_the_actor_is_not_alive_there() -> None:
    c = live(retries=1)
    c.row(AID, entry(ActorState.RESTARTING, inc=1, retries=1), 0)
    for t in range(6):
        assert kinds(c.unreachable("unix:/w0", float(t))) == []
    assert AID in c.books


def test_calls_that_may_have_run_wait_for_the_row_then_fail_unavailable_and_never_go_twice() -> None:
    """0 and 1 went out on a connection that opened and was lost: they may
    have run, so they are never handed to the routed path (it would run
    them again).  2 never left.  The switch waits ``UNSURE_FOR`` for the
    row to settle 0 and 1; it does not: they fail ``ACTOR_UNAVAILABLE``,
    the router is told not to wait for them, and 2 is handed on."""
    from penumbra.core.actor_caller import UNSURE_FOR

    c = live()
    c.submit(call(1), 0)
    c.lost("unix:/w0", 0.0)
    c.submit(call(2), 0.1)  # (held: the connection is down)
    t = RESEND_AFTER
    seen = []
    while t < UNSURE_FOR + 5:
        c.timer((RESEND_TIMER, AID), t)  # (sends 0, 1, 2 again; the connects fail)
        cmds = c.unreachable("unix:/w0", t)
        if any(type(x) in (Reroute, Failed) for x in cmds):
            break
        seen.append(t)
        t += RESEND_AFTER
    assert t >= UNSURE_FOR
    assert kinds(cmds) == [("failed", 0), ("failed", 1), ("skip", (-1, 2)), ("reroute", 2)]
    for f in failures(cmds):
        assert f.error.kind is ErrorKind.ACTOR_UNAVAILABLE and "may or may not have run" in f.error.message
    assert "2 call(s) that may have reached the worker" in logs(cmds)[0]
    c.validate()


def test_calls_that_may_have_run_are_settled_by_the_row_when_the_worker_died() -> None:
    c = live(retries=1)
    c.lost("unix:/w0", 0.0)
    for t in (0.2, 0.4, 0.6, 0.8, 1.0, 1.2):
        c.timer((RESEND_TIMER, AID), t)
        assert kinds(c.unreachable("unix:/w0", t)) == []
    c.row(AID, entry(ActorState.RESTARTING, inc=1, retries=1), 1.3)
    c.row(AID, entry(inc=1, retries=1), 1.4)
    c.endpoint(AID, ep(1), 1.4)
    ((to, m),) = sent(c.timer((RESEND_TIMER, AID), 1.4))  # (the last resend timer: the connection was down)
    assert (to, m.attempt) == ("unix:/w1", 1)  # retried by the row's rule, on the direct path
    assert AID in c.books and not c.failures


def test_an_endpoint_never_published_switches_the_actor_to_the_routed_path() -> None:
    """A worker that takes no direct calls (PENUMBRA_DIRECT_CALLS=0 where it
    runs) publishes no endpoint: the calls must not wait for one forever."""
    c = ActorCaller("c:a")
    c.submit(call(0), 0)
    cmds = c.watched(ActorWatched(actor_id=AID, entry=entry()), 0.0)
    assert cmds == [endpoint_timer(ENDPOINT_WAIT)]
    c.submit(call(1), 1.0)
    cmds = c.timer((ENDPOINT_TIMER, AID), ENDPOINT_WAIT)
    assert kinds(cmds) == [("reroute", 0), ("reroute", 1)] and "no endpoint" in logs(cmds)[0]
    # published in time: nothing happens
    c = live()
    assert c.timer((ENDPOINT_TIMER, AID), ENDPOINT_WAIT) == [] and AID in c.books


def test_the_switch_declares_every_call_resolved_here_below_the_ones_handed_on() -> None:
    """Calls answered directly (0, 1), cancelled before they were sent (3)
    or answered after the last one handed on (5) never reach the router:
    each gap is declared, so its order does not stop there."""
    c = ActorCaller("c:a")
    for s in range(4):
        c.submit(call(s), 0)
    c.cancel(call(3).task_id, 0)  # (held: fails at once)
    c.watched(ActorWatched(actor_id=AID, entry=entry(), endpoint=ep()), 0)  # 0, 1, 2 sent
    c.reply(reply(call(0)), 0)
    c.reply(reply(call(1)), 0)
    c.submit(call(4), 0)
    c.submit(call(5), 0)
    c.reply(reply(call(5)), 0)
    cmds = c._switch(c.books[AID], 0.0, "", "test")
    assert kinds(cmds) == [("skip", (-1, 2)), ("reroute", 2), ("skip", (2, 4)), ("reroute", 4), ("skip", (4, 6))]


@pytest.mark.parametrize("order", ["skip-first", "calls-first", "2-first", "4-first"])
def test_a_skip_lets_the_router_pass_a_gap_whichever_comes_first(order) -> None:
    """The rule (actor_calls.skip): the router gets 0, 2 and 4 (1 and 3
    resolved at the caller: skipped (0, 2) and (2, 4)), in any order; each
    leaves once everything below it came or was skipped, in order."""
    book = actor_calls.CallBook(AID)
    left: list[int] = []

    def arrive(s: int) -> None:
        p = actor_calls.PendingCall(call(s))
        book.add(p)
        left.extend(q.spec.sequence_no for q in actor_calls.arrive(book, p))

    def skip(after: int, before: int) -> None:
        left.extend(q.spec.sequence_no for q in actor_calls.skip(book, "c:a", after, before))

    steps = {
        "skip-first": [lambda: skip(0, 2), lambda: skip(2, 4), lambda: arrive(0), lambda: arrive(2), lambda: arrive(4)],
        "calls-first": [lambda: arrive(0), lambda: arrive(2), lambda: arrive(4), lambda: skip(2, 4), lambda: skip(0, 2)],
        "2-first": [lambda: arrive(2), lambda: skip(2, 4), lambda: arrive(4), lambda: skip(0, 2), lambda: arrive(0)],
        "4-first": [lambda: arrive(4), lambda: skip(0, 2), lambda: arrive(2), lambda: arrive(0), lambda: skip(2, 4)],
    }[order]
    for step in steps:
        step()
    assert left == [0, 2, 4]
    assert book.received["c:a"] == 5 and not book.skips and not book.ahead.get("c:a")
    # a gap from the first call, declared before anything came
    book = actor_calls.CallBook(AID)
    assert actor_calls.skip(book, "c:a", -1, 3) == []
    p = actor_calls.PendingCall(call(3))
    book.add(p)
    assert actor_calls.arrive(book, p) == [p]


def test_calls_sent_to_an_address_the_worker_left_are_never_handed_on() -> None:
    """The live incarnation's endpoint moved: what was sent to the old
    address may have arrived there, so if the new one is unreachable those
    calls fail unavailable rather than run again through the nodes."""
    from penumbra.core.actor_caller import UNSURE_FOR

    c = live()
    cmds = c.endpoint(AID, replace(ep(0), endpoint="unix:/moved"), 0.0)
    assert [to for to, _ in sent(cmds)] == ["unix:/moved"]
    t = 0.0
    while True:
        cmds = c.unreachable("unix:/moved", t)
        if any(type(x) in (Failed, Reroute) for x in cmds):
            break
        c.timer((RESEND_TIMER, AID), t + RESEND_AFTER)
        t += RESEND_AFTER
        assert t < UNSURE_FOR + 2
    assert t >= UNSURE_FOR and kinds(cmds) == [("failed", 0), ("skip", (-1, 1))]


def test_the_endpoint_wait_of_an_earlier_incarnation_does_not_cut_a_later_ones_short() -> None:
    c = live(retries=1)  # (incarnation 0 published in time)
    c.watched(ActorWatched(actor_id=AID, entry=entry(ActorState.RESTARTING, inc=1, retries=1)), 1.0)
    assert c.watched(ActorWatched(actor_id=AID, entry=entry(inc=1, retries=1)), 4.0) == [endpoint_timer(4.0 + ENDPOINT_WAIT)]
    assert c.timer((ENDPOINT_TIMER, AID), ENDPOINT_WAIT) == []  # (the first one's timer: too early for 1's)
    assert kinds(c.timer((ENDPOINT_TIMER, AID), 4.0 + ENDPOINT_WAIT)) == [("reroute", 0)]


# ---------------------------------------------------------------------------
# The switch under random faults: a property test


class SwitchWorld:
    """One caller, one live actor worker at one endpoint, and a connection
    that opens, fails to open, or is cut, at random; the calls that reach
    the worker run there and may be answered.  Commands to the node
    (``Reroute``, ``Skipped``) go to a router's ``CallBook`` (the shared
    rules), in a random order, as messages may be reordered."""

    def __init__(self, rng, switch=None) -> None:
        self.rng = rng
        self.c = ActorCaller("c:a")
        if switch is not None:  # (a planted bug)
            self.c._switch = switch.__get__(self.c)
        self.now = 0.0
        self.seq = 0
        self.link = "none"  # none | connecting | open
        self.queued: list = []  # DirectCalls waiting for the connection
        self.arrived: set[int] = set()  # calls that reached the worker (they may run)
        self.ran: set[int] = set()
        self.timers: list = []
        self.ended: dict[int, str] = {}
        self.to_router: list = []
        self.cmds(self.c.submit(self._spec(), 0.0))
        self.cmds(self.c.watched(ActorWatched(actor_id=AID, entry=entry(), endpoint=ep()), 0.0))

    def _spec(self) -> TaskSpec:
        s = call(self.seq)
        self.seq += 1
        return s

    def cmds(self, cmds) -> None:
        for x in cmds:
            t = type(x)
            if t is Send and type(x.msg) is DirectCall:
                s = x.msg.spec.sequence_no
                if self.link == "open":
                    self.arrived.add(s)
                else:
                    self.link = "connecting"
                    self.queued.append(s)
            elif t in (Resolved, Failed, Reroute):
                s = x.spec.sequence_no
                assert s not in self.ended, f"call {s} ended twice: {self.ended[s]}, then {t.__name__}"
                self.ended[s] = t.__name__
                if t is Reroute:
                    assert s not in self.arrived, f"call {s} may have run at the worker, yet was handed on"
                    self.to_router.append(x)
            elif t is Skipped:
                self.to_router.append(x)
            elif t is SetTimer:
                self.timers.append((x.at, x.key))

    def step(self) -> None:
        rng, c = self.rng, self.c
        k = rng.randrange(7)
        if k == 0:
            self.cmds(c.submit(self._spec(), self.now))
        elif k == 1 and self.link == "connecting":
            if rng.random() < 0.4:
                self.link = "open"
                self.arrived.update(self.queued)
            else:
                self.link = "none"
                self.cmds(c.unreachable("unix:/w0", self.now))
            self.queued = []
        elif k == 2 and self.link == "open":
            self.link = "none"
            self.cmds(c.lost("unix:/w0", self.now))
        elif k == 3:
            live = sorted(s for s in self.arrived if s not in self.ended)
            if live and self.link == "open":  # (a reply needs the connection)
                s = rng.choice(live)
                self.ran.add(s)
                self.cmds(c.reply(reply(call(s)), self.now))
        elif k == 4 and self.timers:
            self.timers.sort(key=lambda t: t[0])
            at, key = self.timers.pop(0)
            self.now = max(self.now, at)
            self.cmds(c.timer(key, self.now))
        elif k == 5:
            self.now += rng.choice((0.05, 0.3, 2.0))
        elif k == 6 and self.ended and rng.random() < 0.1:
            s = rng.choice(sorted(set(range(self.seq)) - set(self.ended)) or [0])
            found, cmds = c.cancel(call(s).task_id, self.now)
            self.cmds(cmds)
        c.validate()

    def finish(self) -> None:
        """The worker stays unreachable: every call must end."""
        for _ in range(400):
            if len(self.ended) == self.seq:
                break
            if self.link == "open":
                self.link = "none"
                self.cmds(self.c.lost("unix:/w0", self.now))
            if self.link == "connecting":
                self.link = "none"
                self.queued = []
                self.cmds(self.c.unreachable("unix:/w0", self.now))
            self.now += 0.5
            for at, key in sorted(self.timers, key=lambda t: t[0]):
                self.cmds(self.c.timer(key, max(self.now, at)))
            self.timers = []
            if self.c.books and not self.c.down:  # (nothing sent: poke the connection)
                self.cmds(self.c.unreachable("unix:/w0", self.now))
        assert len(self.ended) == self.seq, f"calls never ended: {set(range(self.seq)) - set(self.ended)}"
        # the router gets the calls handed on, and the gaps, in any order:
        # each call leaves it, in order (none waits for one that never comes)
        book = actor_calls.CallBook(AID)
        book.entry = entry()
        msgs = list(self.to_router)
        self.rng.shuffle(msgs)
        left = []
        for m in msgs:
            if type(m) is Reroute:
                p = actor_calls.PendingCall(m.spec)
                book.add(p)
                left += [q.spec.sequence_no for q in actor_calls.arrive(book, p)]
            else:
                left += [q.spec.sequence_no for q in actor_calls.skip(book, m.caller_id, m.after, m.before)]
        handed = sorted(s for s, how in self.ended.items() if how == "Reroute")
        assert left == handed, f"the router let {left} go of {handed}"


@pytest.mark.parametrize("seed", range(60))
def test_the_switch_never_loses_a_call_runs_one_twice_or_strands_the_router(seed) -> None:
    import random

    w = SwitchWorld(random.Random(seed))
    for _ in range(120):
        w.step()
    w.finish()


def test_the_property_test_catches_a_switch_that_hands_on_calls_that_may_have_run() -> None:
    """Planted bug: the switch forgets which calls may have reached the
    worker, and hands them all on (they would run twice)."""
    import random

    def careless(self, book, now, sid, why=""):
        self.unsure.pop(book.actor_id, None)
        return ActorCaller._switch(self, book, now, sid, why)

    caught = 0
    for seed in range(60):
        w = SwitchWorld(random.Random(seed), switch=careless)
        try:
            for _ in range(120):
                w.step()
            w.finish()
        except AssertionError as e:
            caught += "may have run" in str(e)
    assert caught, "the planted bug went unnoticed"


def test_the_property_test_catches_a_switch_that_declares_no_gaps() -> None:
    """Planted bug: no ``Skipped``: the router waits for calls resolved at
    the caller."""
    import random

    def silent(self, book, now, sid, why=""):
        return [x for x in ActorCaller._switch(self, book, now, sid, why) if type(x) is not Skipped]

    caught = 0
    for seed in range(60):
        w = SwitchWorld(random.Random(seed), switch=silent)
        try:
            for _ in range(120):
                w.step()
            w.finish()
        except AssertionError as e:
            caught += "the router let" in str(e)
    assert caught, "the planted bug went unnoticed"
