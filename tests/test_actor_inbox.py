"""The actor worker's side of direct calls (core/actor_inbox.py), alone and
with callers through an in-memory network that drops, cuts, delays and
reorders messages and kills and restarts the worker
(penumbra/verification/direct_net.py); and a self-check that planted bugs
make the property test fail."""

from __future__ import annotations

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from penumbra.core import actor_calls
from penumbra.core.actor_inbox import (
    FLUSH_TIMER,
    REPORT_BATCH,
    TERMINATE_METHOD,
    ActorInbox,
    CheckRan,
    EndActor,
    InterruptCall,
    ReportRan,
    Reply,
    RunCall,
)
from penumbra.core.ids import actor_id_of, child_task_id, driver_task_id
from penumbra.core.msg_base import SetTimer
from penumbra.core.msg_direct import DirectCall, DirectCancel, DirectFloor, DirectOutput
from penumbra.core.records import ErrorKind
from penumbra.core.specs import FunctionDescriptor, TaskSpec
from penumbra.verification.direct_net import DirectNet

ROOT = driver_task_id(1)
AID = actor_id_of(child_task_id(ROOT, 1 << 40))


def call(seq: int, caller: str = "c:a", method: str = "m", n: int = 0) -> TaskSpec:
    return TaskSpec(task_id=child_task_id(ROOT, 1000 * (ord(caller[-1]) - 96) + seq + n), job_id=1,
                    parent_task_id=ROOT, function=FunctionDescriptor(b"C.m", "C." + method), max_retries=0,
                    actor_id=AID, caller_id=caller, sequence_no=seq, method=method)


def msg(spec: TaskSpec, floor: int = 0, incarnation: int = 0, attempt: int = 0) -> DirectCall:
    return DirectCall(spec=spec, incarnation=incarnation, floor=floor, attempt=attempt)


def runs(cmds) -> list[int]:
    return [c.spec.sequence_no for c in cmds if type(c) is RunCall]


def out(spec: TaskSpec, data: bytes = b"v") -> tuple[DirectOutput, ...]:
    return tuple(DirectOutput(object_id=o, size=len(data), data=data) for o in spec.return_ids)


# ---------------------------------------------------------------------------
# unit


def test_a_call_sent_again_to_a_new_incarnation_runs_only_if_not_recorded() -> None:
    """attempt > 0: an earlier incarnation may have run it and its node
    recorded it (the reply lost with the worker).  The inbox asks first
    (CheckRan); recorded, it answers from the record and never runs it
    (one value per object); not recorded, it runs.  Calls behind it wait."""
    ib = ActorInbox(AID, 1)
    s0, s1, s2 = call(0), call(1), call(2)
    cmds = ib.call(msg(s0, incarnation=1, attempt=1), 0)
    assert [type(c) for c in cmds] == [CheckRan] and cmds[0].spec == s0
    assert runs(ib.call(msg(s1, incarnation=1), 0)) == []  # (behind the one being checked)
    rec = tuple(DirectOutput(object_id=o, size=8, node="node:3") for o in s0.return_ids)
    cmds = ib.checked(s0.task_id, 0, True, rec)
    (reply,) = [c.reply for c in cmds if type(c) is Reply]
    assert reply.outputs == rec and reply.incarnation == 1 and runs(cmds) == [1]
    assert ib.call(msg(s0, incarnation=1, attempt=1), 0)[0].reply == reply  # (a repeat: the same answer)
    ib.validate()
    ib.call(msg(s2, incarnation=1, attempt=1), 0)
    ib.finished(s1.task_id, 0, out(s1))
    assert runs(ib.checked(s2.task_id, 0, False)) == [2]  # (not recorded: it runs)
    ib.validate()


def test_calls_run_in_order_per_caller_despite_reordering() -> None:
    ib = ActorInbox(AID, 0)
    s = [call(i) for i in range(3)]
    assert runs(ib.call(msg(s[2]), 0)) == []
    assert runs(ib.call(msg(s[1]), 0)) == []
    assert runs(ib.call(msg(s[0]), 0)) == [0]
    assert runs(ib.finished(s[0].task_id, 0, outputs=out(s[0]))) == [1]
    assert runs(ib.finished(s[1].task_id, 0, outputs=out(s[1]))) == [2]
    ib.validate()


def test_first_call_of_a_caller_starts_at_its_floor() -> None:
    ib = ActorInbox(AID, 1)
    s5 = call(5)
    # calls 0..4 were resolved elsewhere (an earlier incarnation): do not wait
    assert runs(ib.call(msg(s5, floor=5, incarnation=1), 0)) == [5]


def test_a_repeat_gets_the_kept_result_and_never_runs_twice() -> None:
    ib = ActorInbox(AID, 0)
    s0 = call(0)
    ib.call(msg(s0), 0)
    cmds = ib.finished(s0.task_id, 0, outputs=out(s0, b"x"))
    first = [c.reply for c in cmds if type(c) is Reply]
    again = ib.call(msg(s0), 0)  # (sent again after a lost connection)
    assert runs(again) == [] and [c.reply for c in again if type(c) is Reply] == first
    # the caller's floor passes it: the kept result goes
    s1 = call(1)
    ib.call(msg(s1, floor=1), 0)
    assert not ib.kept.get("c:a")
    assert ib.call(msg(s0, floor=0), 0) == []  # (below the floor it said: nothing)


def test_a_repeat_while_running_is_ignored() -> None:
    ib = ActorInbox(AID, 0)
    s0 = call(0)
    assert runs(ib.call(msg(s0), 0)) == [0]
    assert ib.call(msg(s0), 0) == []


def test_max_concurrency_and_callers_served_in_turn() -> None:
    ib = ActorInbox(AID, 0, max_concurrency=2)
    a = [call(i, "c:a") for i in range(3)]
    b = [call(i, "c:b") for i in range(3)]
    started = []
    for s in a + b:
        started += [(c.spec.caller_id, c.spec.sequence_no) for c in ib.call(msg(s), 0) if type(c) is RunCall]
    assert started == [("c:a", 0), ("c:a", 1)]
    cmds = ib.finished(a[0].task_id, 0, outputs=out(a[0]))
    assert [(c.spec.caller_id, c.spec.sequence_no) for c in cmds if type(c) is RunCall] == [("c:b", 0)]
    assert ib.running_count() == 2
    ib.validate()


def test_a_floor_skips_calls_the_caller_gave_up_on() -> None:
    ib = ActorInbox(AID, 0)
    s = [call(i) for i in range(3)]
    ib.call(msg(s[0]), 0)
    assert runs(ib.call(msg(s[2], floor=0), 0)) == []
    ib.finished(s[0].task_id, 0, outputs=out(s[0]))  # (1 never comes: its caller failed it)
    assert runs(ib.floor(DirectFloor(actor_id=AID, caller_id="c:a", floor=2, incarnation=0), 0)) == [2]


def test_wrong_incarnation_is_answered_stale_and_not_run() -> None:
    ib = ActorInbox(AID, 2)
    cmds = ib.call(msg(call(0), incarnation=1), 0)
    assert runs(cmds) == []
    (r,) = cmds
    assert type(r) is Reply and r.reply.stale and r.reply.incarnation == 2


def test_cancel_queued_fails_at_once_and_keeps_order() -> None:
    ib = ActorInbox(AID, 0)
    s = [call(i) for i in range(3)]
    for x in s:
        ib.call(msg(x), 0)
    cmds = ib.cancel(DirectCancel(actor_id=AID, caller_id="c:a", sequence_no=1, task_id=s[1].task_id, incarnation=0), 0)
    (reply,) = [c.reply for c in cmds if type(c) is Reply]
    assert reply.error.kind is ErrorKind.TASK_CANCELLED
    # 1 keeps its place but never runs: 2 follows 0
    assert runs(ib.finished(s[0].task_id, 0, outputs=out(s[0]))) == [2]


def test_cancel_running_interrupts_and_the_result_is_cancelled() -> None:
    ib = ActorInbox(AID, 0)
    s0 = call(0)
    ib.call(msg(s0), 0)
    cmds = ib.cancel(DirectCancel(actor_id=AID, caller_id="c:a", sequence_no=0, task_id=s0.task_id, incarnation=0,
                                  force=False), 0)
    assert cmds == [InterruptCall(task_id=s0.task_id, force=False)]
    cmds = ib.finished(s0.task_id, 0, outputs=out(s0))  # (it returned anyway)
    (reply,) = [c.reply for c in cmds if type(c) is Reply]
    assert reply.error.kind is ErrorKind.TASK_CANCELLED and reply.outputs == ()


def test_reports_batched_but_store_outputs_reported_before_the_reply() -> None:
    ib = ActorInbox(AID, 0)
    s0, s1 = call(0), call(1)
    ib.call(msg(s0), 0)
    ib.call(msg(s1), 0)
    cmds = ib.finished(s0.task_id, 1.0, outputs=out(s0))
    assert [type(c) for c in cmds] == [Reply, SetTimer, RunCall]  # inline: reply first, report later
    timer = cmds[1]
    assert timer.key == (FLUSH_TIMER, 0)
    big = tuple(DirectOutput(object_id=o, size=1 << 20, node="node:0") for o in s1.return_ids)
    cmds = ib.finished(s1.task_id, 1.001, outputs=big)
    assert [type(c) for c in cmds[:2]] == [ReportRan, Reply]
    assert [e.spec.sequence_no for e in cmds[0].entries] == [0, 1]
    assert ib.timer(timer.key, timer.at) == []  # (reported already)


def test_a_full_batch_is_reported_at_once() -> None:
    ib = ActorInbox(AID, 0)
    reports = []
    for i in range(REPORT_BATCH):
        s = call(i)
        ib.call(msg(s), 0)
        reports += [c for c in ib.finished(s.task_id, 0, outputs=out(s)) if type(c) is ReportRan]
    assert len(reports) == 1 and len(reports[0].entries) == REPORT_BATCH


def test_outputs_must_match_the_return_ids() -> None:
    ib = ActorInbox(AID, 0)
    s0 = call(0)
    ib.call(msg(s0), 0)
    with pytest.raises(ValueError, match="one per return id"):
        ib.finished(s0.task_id, 0, outputs=())


def test_terminate_runs_alone_last_and_ends_the_actor() -> None:
    ib = ActorInbox(AID, 0, max_concurrency=2)
    s0 = call(0)
    t = call(0, "c:b", method=TERMINATE_METHOD)
    after = call(1, "c:b")
    assert runs(ib.call(msg(s0), 0)) == [0]
    assert runs(ib.call(msg(t), 0)) == []  # (waits for s0)
    cmds = ib.finished(s0.task_id, 0, outputs=out(s0))
    assert [c.spec.method for c in cmds if type(c) is RunCall] == [TERMINATE_METHOD]
    assert ib.call(msg(after), 0) == []  # nothing after it
    cmds = ib.finished(t.task_id, 0, outputs=out(t))
    assert [type(c) for c in cmds] == [ReportRan, EndActor]  # s0's result reported before the end
    assert cmds[1].task_id == t.task_id


def test_exit_actor_ends_once_the_calls_running_with_it_ended() -> None:
    ib = ActorInbox(AID, 0, max_concurrency=2)
    a, b = call(0, "c:a"), call(0, "c:b")
    ib.call(msg(a), 0)
    ib.call(msg(b), 0)
    assert ib.exit(b.task_id, 0) == []  # a still runs
    cmds = ib.finished(a.task_id, 0, outputs=out(a))
    assert [type(c) for c in cmds] == [Reply, SetTimer, ReportRan, EndActor]


def test_max_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_concurrency must be >= 1"):
        ActorInbox(AID, 0, max_concurrency=0)


def test_a_call_for_another_actor_is_refused() -> None:
    other = TaskSpec(task_id=child_task_id(ROOT, 7), job_id=1, parent_task_id=ROOT, function=FunctionDescriptor(b"x", "x"),
                     actor_id=actor_id_of(child_task_id(ROOT, 9)), caller_id="c:a", method="m")
    with pytest.raises(ValueError, match="serves its own actor only"):
        ActorInbox(AID, 0).call(msg(other), 0)


# ---------------------------------------------------------------------------
# the world: scenarios


def test_world_worker_killed_mid_stream_at_most_once() -> None:
    n = DirectNet(max_task_retries=0)
    n.start()
    specs = [n.submit("c:a") for _ in range(4)]
    n.deliver_row("c:a")
    n.deliver_row("c:a")
    while n.deliver(0):
        pass
    n.finish(0)  # call 0 ran; its reply is on the wire
    n.kill()
    n.settle()
    kinds = [n.outcomes[s.task_id].kind for s in specs]
    # the call whose reply was lost with the worker, and the one running, fail
    # (ActorDiedError); the calls held or sent after the restart run
    assert all(n.outcomes[s.task_id].error in (None, ErrorKind.ACTOR_DIED) for s in specs)
    assert "failed" in kinds
    assert len({r[4] for r in n.runs}) == len(n.runs)  # never twice


def test_world_retries_across_restarts_when_allowed() -> None:
    n = DirectNet(max_task_retries=2)
    n.start()
    specs = [n.submit("c:a") for _ in range(3)]
    n.settle(rounds=1)
    n.kill()
    n.settle()
    assert all(n.outcomes[s.task_id].kind == "resolved" for s in specs)


def test_world_cut_connection_resends_and_runs_once() -> None:
    n = DirectNet(max_task_retries=0)
    n.start()
    specs = [n.submit("c:a") for _ in range(3)]
    n.deliver_row("c:a")
    n.deliver_row("c:a")
    while n.deliver(0):
        pass
    n.finish(0)
    n.cut("c:a")  # the reply is lost with the connection
    n.settle()
    assert all(n.outcomes[s.task_id].kind == "resolved" for s in specs)
    assert sorted(r[2] for r in n.runs) == [0, 1, 2]


def test_world_dead_actor_fails_everything_with_the_cause() -> None:
    n = DirectNet(max_restarts=0)
    n.start()
    specs = [n.submit("c:b") for _ in range(2)]
    n.kill()
    n.settle()
    assert {n.outcomes[s.task_id].error for s in specs} == {ErrorKind.ACTOR_DIED}


# ---------------------------------------------------------------------------
# the world: properties, under every fault hypothesis draws


class DirectCalls(RuleBasedStateMachine):
    """Two callers and one actor through ``DirectNet``: its ``check`` after
    every step, its ``settle`` at the end (every call ends, exactly once)."""

    net: DirectNet

    @initialize(retries=st.sampled_from([0, 1, -1]), concurrency=st.sampled_from([1, 2]),
                restarts=st.sampled_from([1, 3]), reuse=st.booleans())
    def setup(self, retries, concurrency, restarts, reuse) -> None:
        self.net = DirectNet(max_task_retries=retries, max_concurrency=concurrency, max_restarts=restarts,
                             reuse_endpoint=reuse)

    @rule(caller=st.sampled_from(["c:a", "c:b"]), n=st.integers(1, 3))
    def submit(self, caller, n) -> None:
        for _ in range(n):
            self.net.submit(caller)

    @rule(split=st.booleans())
    def start(self, split) -> None:
        self.net.start(split=split)

    @rule(k=st.integers(0, 3), i=st.integers(0, 3))
    def deliver(self, k, i) -> None:
        self.net.deliver(k, i)

    @rule(k=st.integers(0, 3))
    def deliver_first(self, k) -> None:
        self.net.deliver(k, 0)

    @rule(caller=st.sampled_from(["c:a", "c:b"]))
    def deliver_row(self, caller) -> None:
        self.net.deliver_row(caller)

    @rule()
    def pump(self) -> None:
        self.net.pump()

    @rule()
    def deliver_lost(self) -> None:
        self.net.deliver_lost()

    @rule(caller=st.sampled_from(["c:a", "c:b"]))
    def cut(self, caller) -> None:
        self.net.cut(caller)

    @rule()
    def kill(self) -> None:
        self.net.kill()

    @rule(k=st.integers(0, 3), raises=st.booleans())
    def finish(self, k, raises) -> None:
        self.net.finish(k, raises)

    @rule(caller=st.sampled_from(["c:a", "c:b"]), k=st.integers(0, 5))
    def cancel(self, caller, k) -> None:
        self.net.cancel(caller, k)

    @rule(k=st.integers(0, 3))
    def fire_timer(self, k) -> None:
        self.net.fire_timer(k)

    @invariant()
    def holds(self) -> None:
        if hasattr(self, "net"):
            self.net.check()

    def teardown(self) -> None:
        if hasattr(self, "net"):
            self.net.settle()


SETTINGS = settings(max_examples=400, stateful_step_count=50, derandomize=True, database=None, deadline=None, report_multiple_bugs=False)
DirectCalls.TestCase.settings = SETTINGS
TestDirectCalls = pytest.mark.timeout(600)(DirectCalls.TestCase)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("bug", ["retry-without-attempts", "inbox-ignores-kept-results", "inbox-ignores-order",
                                 "inbox-ignores-floor"])
def test_planted_bugs_make_the_property_test_fail(bug, monkeypatch) -> None:
    """The property test has teeth: each planted bug is caught."""
    if bug == "retry-without-attempts":
        # the caller resends a call across a restart with no attempts left
        monkeypatch.setattr(actor_calls, "may_retry", lambda entry, p: True)
    elif bug == "inbox-ignores-kept-results":
        # a repeat of a call that ran is run again instead of answered
        orig = ActorInbox.call

        def call(self, m, now):
            c = m.spec.caller_id
            if m.spec.sequence_no < self.next_seq.get(c, 0) and m.spec.sequence_no in self.kept.get(c, {}):
                self.kept[c].pop(m.spec.sequence_no)
                self.next_seq[c] = m.spec.sequence_no
            return orig(self, m, now)
        monkeypatch.setattr(ActorInbox, "call", call)
    elif bug == "inbox-ignores-floor":
        # a caller new to this incarnation starts at 0, not at its floor
        orig_advance = ActorInbox._advance

        def _advance(self, caller, floor):
            if caller not in self.next_seq:
                self.next_seq[caller] = 0
            return orig_advance(self, caller, 0)
        monkeypatch.setattr(ActorInbox, "_advance", _advance)
    else:
        # the inbox runs calls as they come, not in each caller's order
        orig = ActorInbox.call

        def call(self, m, now):
            c = m.spec.caller_id
            if c in self.next_seq and m.spec.sequence_no > self.next_seq[c] and not self.ending:
                self.next_seq[c] = m.spec.sequence_no
            return orig(self, m, now)
        monkeypatch.setattr(ActorInbox, "call", call)
    with pytest.raises(AssertionError):  # (Broken, or a machine's validate)
        run_state_machine_as_test(DirectCalls, settings=settings(SETTINGS, max_examples=1000, report_multiple_bugs=False))


def test_an_ending_actor_still_answers_a_repeat_from_the_kept_result() -> None:
    ib = ActorInbox(AID, 0, max_concurrency=2)
    a, b = call(0, "c:a"), call(0, "c:b")
    ib.call(msg(a), 0)
    ib.call(msg(b), 0)
    first = [c.reply for c in ib.finished(a.task_id, 0, outputs=out(a)) if type(c) is Reply]
    ib.exit(b.task_id, 0)
    again = ib.call(msg(a), 0)  # (its reply was lost; the actor is ending)
    assert [c.reply for c in again if type(c) is Reply] == first
    assert ib.call(msg(call(1, "c:a")), 0) == []  # a new call: nothing runs any more
