"""Worker leases: the submitter's machine (core/task_leases.py), the leased
worker (core/lease_worker.py) and the node's LeaseHost (core/lease_host.py),
alone and together in an in-memory world with real nodes, head and GCS that
drops, cuts and kills (penumbra/verification/lease_net.py); and a self-check
that planted bugs make the property test fail."""

from __future__ import annotations

import pytest
from hypothesis import Phase, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from penumbra.core.ids import child_task_id, driver_task_id
from penumbra.core.lease_host import LeaseHost
from penumbra.core.lease_worker import LeaseWorker, RunTask
from penumbra.core.msg_base import Send, SetTimer
from penumbra.core.msg_direct import DirectOutput
from penumbra.core.msg_leases import (
    LeaseGranted,
    LeaseLost,
    LeaseReturned,
    LeaseSpillback,
    LeaseTasksRecorded,
    PushReply,
    PushTask,
    RecordTasks,
    RequestLease,
    ReturnLease,
    TasksRan,
)
from penumbra.core.node import NodeConfig, NodeMachine
from penumbra.core.records import ErrorKind
from penumbra.core.scheduler_records import LEASED
from penumbra.core.specs import ActorSpec, FunctionDescriptor, ResourceSet, TaskSpec
from penumbra.core.task_leases import HOLD_TIMER, RESEND_TIMER, EscapeReady, LeaseConfig, LeaseSubmitter, TaskFailed, TaskResolved
from penumbra.core import messages as M
from penumbra.verification.lease_net import Broken, LeaseNet

ROOT = driver_task_id(1)
CPU1 = ResourceSet.of(CPU=1)


def task(i: int, res: ResourceSet = CPU1, retries: int = 1, fn: bytes = b"f") -> TaskSpec:
    return TaskSpec(task_id=child_task_id(ROOT, i), job_id=1, parent_task_id=ROOT,
                    function=FunctionDescriptor(fn, "f"), resources=res, max_retries=retries)


def sent(cmds, kind):
    return [c.msg for c in cmds if type(c) is Send and type(c.msg) is kind]


def out(spec: TaskSpec, data: bytes = b"v") -> tuple[DirectOutput, ...]:
    return tuple(DirectOutput(object_id=o, size=len(data), data=data) for o in spec.return_ids)


# ---------------------------------------------------------------------------
# the submitter alone


def granted(sub: LeaseSubmitter, req_id: int, now: float = 0.0, worker: str = "node:0/w0", node: str = "node:0"):
    return sub.handle(LeaseGranted(req_id=req_id, worker_id=worker, endpoint=worker, node=node), now)


def test_asks_once_per_key_then_pipelines_on_the_lease() -> None:
    sub = LeaseSubmitter("node:0/s", "node:0", LeaseConfig(pipeline=2))
    cmds = []
    for i in range(1, 4):
        cmds += sub.submit(task(i), 0.0)
    (req,) = sent(cmds, RequestLease)  # (one request in flight per key)
    assert req.home == "node:0" and not req.placed
    cmds = granted(sub, req.req_id)
    pushes = sent(cmds, PushTask)
    assert [p.spec.task_id for p in pushes] == [task(1).task_id, task(2).task_id]
    # a third is queued beyond the pipeline: another lease is asked for
    assert len(sent(cmds, RequestLease)) == 1
    r = sub.handle(PushReply(req_id=req.req_id, task_id=task(1).task_id, attempt=0, outputs=out(task(1))), 0.01)
    assert [type(c) for c in r if type(c) is TaskResolved] == [TaskResolved]
    assert [p.spec.task_id for p in sent(r, PushTask)] == [task(3).task_id]
    sub.validate()


def test_a_lease_goes_back_when_the_queue_empties() -> None:
    sub = LeaseSubmitter("node:0/s", "node:0")
    (req,) = sent(sub.submit(task(1), 0.0), RequestLease)
    granted(sub, req.req_id)
    cmds = sub.handle(PushReply(req_id=req.req_id, task_id=task(1).task_id, attempt=0, outputs=out(task(1))), 0.1)
    (ret,) = sent(cmds, ReturnLease)
    assert ret.req_id == req.req_id and not ret.kill
    assert not sub.leases and (req.req_id, "node:0") in sub.returning
    sub.handle(LeaseReturned(req_id=req.req_id, node="node:0"), 0.2)
    assert sub.idle()


def test_hold_time_stops_new_pushes_and_the_lease_is_asked_for_again() -> None:
    sub = LeaseSubmitter("node:0/s", "node:0", LeaseConfig(pipeline=1, hold=0.5, max_leases=1))
    for i in range(1, 5):
        sub.submit(task(i), 0.0)
    rid = next(iter(sub.requests))
    granted(sub, rid, now=0.0)
    # hold over: nothing new on this lease; another is asked for at once
    # (behind the others in the node's FIFO)
    (again,) = sent(sub.timer((HOLD_TIMER, rid), 0.5), RequestLease)
    assert again.req_id != rid
    cmds = sub.handle(PushReply(req_id=rid, task_id=task(1).task_id, attempt=0, outputs=out(task(1))), 0.6)
    assert not sent(cmds, PushTask), "pushed on a lease past its hold time"
    (ret,) = sent(cmds, ReturnLease)
    assert ret.req_id == rid
    sub.validate()


def test_worker_death_retries_within_max_retries_then_fails_with_the_cause() -> None:
    sub = LeaseSubmitter("node:0/s", "node:0", LeaseConfig(pipeline=4))
    a, b = task(1, retries=1), task(2, retries=0)
    sub.submit(a, 0.0)
    sub.submit(b, 0.0)
    rid = next(iter(sub.requests))
    granted(sub, rid)
    assert sub.handle(LeaseLost(req_id=rid, node="node:9", reason="not ours"), 0.1) == []  # (another node's)
    cmds = sub.handle(LeaseLost(req_id=rid, node="node:0", reason="its worker died: OOM"), 0.1)
    (failed,) = [c for c in cmds if type(c) is TaskFailed]
    assert failed.spec == b and failed.error.kind is ErrorKind.WORKER_CRASHED and "OOM" in failed.error.message
    assert sub.tasks[a.task_id].attempt == 1  # queued again as its next attempt
    assert sent(cmds, RequestLease)
    sub.validate()


def test_a_broken_connection_returns_the_lease_with_kill() -> None:
    sub = LeaseSubmitter("node:0/s", "node:0")
    sub.submit(task(1), 0.0)
    rid = next(iter(sub.requests))
    granted(sub, rid, worker="node:0/w3")
    cmds = sub.lost("node:0/w3", 0.1)
    (ret,) = sent(cmds, ReturnLease)
    assert ret.kill and ret.req_id == rid
    assert sub.tasks[task(1).task_id].attempt == 1


def test_spillback_asks_the_node_the_head_chose_and_unwanted_grants_go_back() -> None:
    sub = LeaseSubmitter("node:0/s", "node:0")
    sub.submit(task(1), 0.0)
    rid = next(iter(sub.requests))
    (again,) = sent(sub.handle(LeaseSpillback(req_id=rid, node="node:1", reason="infeasible"), 0.1), RequestLease)
    assert again.placed and again.req_id == rid
    # the first node grants late (a repeat it kept): nobody waits for it there
    (ret,) = sent(granted(sub, rid, node="node:0"), ReturnLease)
    assert ret.req_id == rid
    assert sent(granted(sub, rid, worker="node:1/w0", node="node:1"), PushTask)


def test_a_request_whose_id_is_used_up_at_a_node_is_asked_anew() -> None:
    sub = LeaseSubmitter("node:0/s", "node:0")
    sub.submit(task(1), 0.0)
    rid = next(iter(sub.requests))
    # node:1 grants a repeat late, after the request went home again: given back
    sub.handle(LeaseSpillback(req_id=rid, node="node:1", reason="overloaded"), 0.0)
    sub.node_died("node:1", 0.1)  # (or any reason the request left node:1)
    assert sub.requests[rid].node == "node:0"
    sub.handle(LeaseSpillback(req_id=rid, node="node:1", reason="overloaded"), 0.2)
    # node:1 says it is over there (returned): a new request, a new id
    cmds = sub.handle(LeaseReturned(req_id=rid, node="node:1"), 0.3)
    (again,) = sent(cmds, RequestLease)
    assert again.req_id != rid and rid not in sub.requests
    sub.validate()


def test_a_dead_node_loses_its_leases_and_sends_requests_home() -> None:
    sub = LeaseSubmitter("node:0/s", "node:0")
    a, b = task(1), task(2, res=ResourceSet.of(CPU=2))
    sub.submit(a, 0.0)
    sub.submit(b, 0.0)
    ra, rb = sorted(sub.requests)
    for r in (ra, rb):
        sub.handle(LeaseSpillback(req_id=r, node="node:1", reason="overloaded"), 0.0)
    assert sent(granted(sub, ra, worker="node:1/w0", node="node:1"), PushTask)
    cmds = sub.node_died("node:1", 0.5)
    assert sub.tasks[a.task_id].attempt == 1  # (retried: max_retries=1)
    asks = sent(cmds, RequestLease)
    assert rb in {m.req_id for m in asks} and not any(m.placed for m in asks)
    assert all(c.to == "node:0" for c in cmds if type(c) is Send)
    assert not sub.returning  # (nothing to give back to a dead node)
    sub.validate()


def test_lost_requests_are_sent_again() -> None:
    sub = LeaseSubmitter("node:0/s", "node:0", LeaseConfig(resend_after=0.1))
    cmds = sub.submit(task(1), 0.0)
    (timer,) = [c for c in cmds if type(c) is SetTimer]
    again = sub.timer(timer.key, 0.1)
    assert len(sent(again, RequestLease)) == 1


def test_escape_waits_for_the_spec_in_the_gcs() -> None:
    sub = LeaseSubmitter("node:0/s", "node:0")
    a = task(1)
    sub.submit(a, 0.0)
    rid = next(iter(sub.requests))
    granted(sub, rid)
    sub.handle(PushReply(req_id=rid, task_id=a.task_id, attempt=0, outputs=out(a)), 0.1)
    cmds = sub.escape("tok", a.return_ids, 0.1)
    assert not [c for c in cmds if type(c) is EscapeReady]
    (rec,) = sent(cmds, RecordTasks)
    assert rec.specs == (a,)
    assert [c.token for c in sub.handle(LeaseTasksRecorded(task_ids=(a.task_id,)), 0.2)] == ["tok"]
    # once recorded, an escape is ready at once
    assert [type(c) for c in sub.escape("tok2", a.return_ids, 0.3)] == [EscapeReady]


def test_bad_input_is_refused_with_what_to_do() -> None:
    sub = LeaseSubmitter("node:0/s", "node:0")
    sub.submit(task(1), 0.0)
    with pytest.raises(ValueError, match="submitted twice"):
        sub.submit(task(1), 0.0)
    actor_call = TaskSpec(task_id=child_task_id(ROOT, 9), job_id=1, parent_task_id=ROOT,
                          function=FunctionDescriptor(b"m", "m"), actor_id=b"\x01" * 16, method="m")
    with pytest.raises(ValueError, match="ActorCaller"):
        sub.submit(actor_call, 0.0)
    with pytest.raises(ValueError, match="pipeline"):
        LeaseConfig(pipeline=0)
    with pytest.raises(TypeError, match="ObjectId"):
        sub.escape("t", [b"not an id"], 0.0)


# ---------------------------------------------------------------------------
# the worker alone


def test_worker_runs_in_arrival_order_and_reports_before_a_reply_naming_its_store() -> None:
    w = LeaseWorker("node:0/w0", "node:0")
    a, b = task(1), task(2)
    cmds = w.push(PushTask(submitter="s", req_id=1, spec=a), 0.0) + w.push(PushTask(submitter="s", req_id=1, spec=b), 0.0)
    assert [c.spec for c in cmds if type(c) is RunTask] == [a]
    cmds = w.finished(a.task_id, 0.1, outputs=out(a))
    assert [type(c.msg) for c in cmds if type(c) is Send] == [PushReply]  # report batched
    assert [c.spec for c in cmds if type(c) is RunTask] == [b]
    big = tuple(DirectOutput(object_id=o, size=10 << 20, node="node:0") for o in b.return_ids)
    cmds = w.finished(b.task_id, 0.2, outputs=big)
    kinds = [type(c.msg) for c in cmds if type(c) is Send]
    assert kinds == [TasksRan, PushReply]  # (in the store: the node hears first)
    (ran,) = [c.msg for c in cmds if type(c) is Send and type(c.msg) is TasksRan]
    assert [e.spec for e in ran.entries] == [a, b]
    with pytest.raises(ValueError, match="runs nothing"):
        w.finished(a.task_id, 0.3)


# ---------------------------------------------------------------------------
# the node's LeaseHost, in a NodeMachine


def node(cpus: int = 2, gpus: int = 0) -> NodeMachine:
    res = ResourceSet.of(CPU=cpus, GPU=gpus) if gpus else ResourceSet.of(CPU=cpus)
    n = NodeMachine("node:0", NodeConfig(resources=res))
    for c in n.start(0.0):
        if type(c) is M.StartWorker:
            n.handle(M.WorkerStarted(worker_id=c.worker_id), 0.0)
    return n


def request(i: int, res: ResourceSet = CPU1, sub: str = "node:0/s", placed: bool = False) -> RequestLease:
    return RequestLease(submitter=sub, req_id=i, spec=task(i, res), home="node:0", placed=placed)


def test_host_grants_from_the_scheduler_pool_and_never_over_commits() -> None:
    n = node(cpus=2)
    g1 = sent(n.handle(request(1), 0.0), LeaseGranted)
    g2 = sent(n.handle(request(2), 0.0), LeaseGranted)
    assert len(g1) == len(g2) == 1
    assert n.scheduler.available == ResourceSet.of(CPU=0)
    assert n.scheduler.workers[g1[0].worker_id].state == LEASED
    # no CPU left: the third waits (a worker may start, no grant)
    assert not sent(n.handle(request(3), 0.0), LeaseGranted)
    n.validate()
    # a repeat of a granted request is answered with the same grant
    assert sent(n.handle(request(1), 0.1), LeaseGranted) == [g1[0]]
    # a return frees the worker: the waiting request gets it
    cmds = n.handle(ReturnLease(submitter="node:0/s", req_id=1), 0.2)
    assert sent(cmds, LeaseReturned) and [g.req_id for g in sent(cmds, LeaseGranted)] == [3]
    n.validate()
    # a late repeat of a returned request is not granted again
    assert not sent(n.handle(request(1), 0.3), LeaseGranted)


def test_host_leases_whole_gpu_instances() -> None:
    n = node(cpus=2, gpus=2)
    gpu = ResourceSet.of(CPU=1, GPU=1)
    (a,) = sent(n.handle(request(1, gpu), 0.0), LeaseGranted)
    (b,) = sent(n.handle(request(2, gpu), 0.0), LeaseGranted)
    assert sorted(a.gpu_ids + b.gpu_ids) == [0, 1]
    n.validate()
    n.handle(ReturnLease(submitter="node:0/s", req_id=1), 0.1)
    assert not n.scheduler.gpus.held.get(a.worker_id)
    n.validate()


def test_host_spills_infeasible_requests_to_the_head() -> None:
    n = node(cpus=2)
    cmds = n.handle(request(1, ResourceSet.of(CPU=1, GPU=1)), 0.0)
    (fwd,) = [c.msg for c in cmds if type(c) is Send and c.to == "head"]
    assert fwd.reason == "infeasible" and fwd.request.req_id == 1
    assert not n.leases.leases


def test_host_reclaims_a_dead_submitters_leases_and_reports_dead_workers() -> None:
    n = node(cpus=2)
    (g,) = sent(n.handle(request(1, sub="node:0/a"), 0.0), LeaseGranted)
    (g2,) = sent(n.handle(request(2, sub="node:0/b"), 0.0), LeaseGranted)
    cmds = n.handle(M.ClientDisconnected(client="node:0/a"), 0.1)
    assert [c.worker_id for c in cmds if type(c) is M.KillWorker] == [g.worker_id]
    assert n.scheduler.available == CPU1 and ("node:0/a", 1) not in n.leases.leases
    n.validate()
    cmds = n.handle(M.WorkerCrashed(worker_id=g2.worker_id, reason="segfault"), 0.2)
    (lost,) = sent(cmds, LeaseLost)
    assert lost.req_id == 2 and "segfault" in lost.reason
    assert n.scheduler.available == ResourceSet.of(CPU=2)
    n.validate()


def test_host_reclaims_leases_of_submitters_whose_home_node_died() -> None:
    n = node(cpus=2)
    remote = RequestLease(submitter="node:1/s", req_id=1, spec=task(1), home="node:1")
    (g,) = sent(n.handle(remote, 0.0), LeaseGranted)
    local = sent(n.handle(request(2), 0.0), LeaseGranted)
    cmds = n.leases.home_died("node:1", 0.1, "node-dead")
    assert [c.worker_id for c in cmds if type(c) is M.KillWorker] == [g.worker_id]
    assert set(n.leases.leases) == {("node:0/s", 2)} and local
    # a request of that submitter still on its way is refused
    assert n.handle(RequestLease(submitter="node:1/s", req_id=3, spec=task(3), home="node:1"), 0.2) == []
    n.validate()


def test_a_repeat_of_a_lost_lease_request_says_it_was_lost() -> None:
    n = node(cpus=2)
    (g,) = sent(n.handle(request(1), 0.0), LeaseGranted)
    n.handle(M.WorkerCrashed(worker_id=g.worker_id, reason="oom"), 0.1)
    (lost,) = sent(n.handle(request(1), 0.2), LeaseLost)  # (its grant never reached the submitter)
    assert "oom" in lost.reason
    n.validate()


def test_host_records_what_ran_in_the_gcs_then_acknowledges() -> None:
    n = node(cpus=2)
    a = task(1)
    from penumbra.core.msg_direct import DirectRan
    n.handle(TasksRan(worker_id="node:0/w0", submitter="node:0/s", entries=(DirectRan(spec=a, outputs=out(a)),)), 0.0)
    assert a.return_ids[0] in n.objects.store.objects  # (recorded as if the node had run it)
    assert any("leased worker" in w for _, _, w in n.story(a.task_id))


# ---------------------------------------------------------------------------
# the world


def test_world_tasks_spill_pipeline_retry_and_every_lease_comes_back() -> None:
    net = LeaseNet()
    for i in range(8):
        net.submit("node:0/s1", i % 4)
    net.submit("node:1/s2", 0, crash=1)  # its worker dies once: retried
    net.submit("node:0/s3", 2, crash=2)  # twice: max_retries=1 used up
    net.run_for(0.01)
    net.escape("node:0/s1", 0)
    net.settle()
    kinds = {t: type(o) for t, o in net.outcomes.items()}
    assert sum(k is TaskFailed for k in kinds.values()) == 1
    assert sum(k is TaskResolved for k in kinds.values()) == 9
    assert net.machines["node:0"].leases.forwarded_count >= 2  # the GPU ones and SPREAD
    assert net.machines["node:1"].leases.granted_count >= 1


def test_world_a_dead_submitters_leases_are_reclaimed() -> None:
    net = LeaseNet()
    for i in range(4):
        net.submit("node:0/s1", 0, duration=0.5)
        net.submit("node:1/s2", 2, duration=0.5)
    net.run_for(0.05)
    assert any(n.leases.by_worker for n in net.nodes())
    net.kill_submitter("node:1/s2")
    net.settle()
    assert all(k[0] != "node:1/s2" for n in net.nodes() for k in n.leases.leases)


def test_world_lost_control_messages_and_cut_connections() -> None:
    net = LeaseNet()
    net.drop(3)
    for i in range(5):
        net.submit("node:0/s1", 0)
        net.submit("node:0/s3", 1)
    net.run_for(0.3)
    net.cut("node:0/s1")
    net.drop(2)
    net.run_for(0.1)
    net.settle()
    assert len(net.outcomes) == 10


def test_world_an_overloaded_node_spills_requests_to_the_global_scheduler() -> None:
    net = LeaseNet(threshold=1)
    net.submit("node:0/s1", 1, duration=1.0)  # (CPU=2: node:0 is full)
    net.run_for(0.02)
    net.submit("node:0/s3", 1, duration=0.1)  # waits at node:0
    net.run_for(0.02)
    spec = net.submit("node:0/s1", 0, duration=0.1)  # node:0 is overloaded now
    net.run_for(0.05)
    n0 = net.machines["node:0"]
    assert any("forwarded (overloaded)" in w for _, _, w in n0.story(spec.task_id))
    net.settle()
    assert type(net.outcomes[spec.task_id]) is TaskResolved
    # it ran on the node the head chose (the reply came from a node:1 worker)
    assert any("node:1/w" in w for _, _, w in net.hosts["node:0/s1"].machine.story(spec.task_id))


def test_world_a_dead_node_takes_its_submitters_and_their_leases_elsewhere_go() -> None:
    net = LeaseNet()
    for _ in range(4):
        net.submit("node:1/s2", 3, duration=3.0)  # SPREAD: some run on node:0
    net.run_for(0.1)
    n0 = net.machines["node:0"]
    held = [h.worker for k, h in n0.leases.leases.items() if k[0] == "node:1/s2" and h.worker]
    assert held, "no lease of node:1's submitter on node:0 to reclaim"
    net.kill_node()
    net.run_for(2.0)  # (the head declares node:1 dead after its timeout)
    assert not [k for k in n0.leases.leases if k[0] == "node:1/s2"]
    assert not any(net.workers[w][1] for w in held)  # (killed: they ran a dead submitter's tasks)
    assert all(n0.scheduler.workers.get(w) is None for w in held)
    net.settle()


# ---------------------------------------------------------------------------
# the world, under every fault hypothesis draws

SUBS = ["node:0/s1", "node:1/s2", "node:0/s3"]


class Leases(RuleBasedStateMachine):
    """Three submitters, two nodes, a head and a GCS through ``LeaseNet``:
    its checks at every step, its ``settle`` at the end."""

    net: LeaseNet

    @initialize(retries=st.sampled_from([0, 1, 2, -1]), pipeline=st.sampled_from([1, 2, 4]),
                hold=st.sampled_from([0.05, 0.3]), threshold=st.sampled_from([2, 4, 100]))
    def setup(self, retries, pipeline, hold, threshold) -> None:
        self.net = LeaseNet(LeaseConfig(pipeline=pipeline, hold=hold, max_leases=2, resend_after=0.1),
                            max_retries=retries, threshold=threshold)

    @rule(s=st.sampled_from(SUBS), shape=st.integers(0, 3), n=st.integers(1, 4), crash=st.sampled_from([0, 0, 0, 1, 3]),
          duration=st.sampled_from([0.005, 0.05, 0.2]), raises=st.sampled_from([0, 0, 1, 2]))
    def submit(self, s, shape, n, crash, duration, raises) -> None:
        for _ in range(n):
            self.net.submit(s, shape, crash=crash, duration=duration, raises=raises)

    @rule(node=st.sampled_from(["node:0", "node:1"]))
    def submit_routed(self, node) -> None:
        self.net.submit_routed(node)

    @rule(dt=st.sampled_from([0.002, 0.01, 0.05, 0.3]))
    def run(self, dt) -> None:
        self.net.run_for(dt)

    @rule(n=st.integers(1, 4))
    def drop(self, n) -> None:
        self.net.drop(n)

    @rule(s=st.sampled_from(SUBS), k=st.integers(0, 3))
    def cut(self, s, k) -> None:
        self.net.cut(s, k)

    @rule(k=st.integers(0, 7))
    def kill_worker(self, k) -> None:
        self.net.kill_worker(k)

    @rule(s=st.sampled_from(SUBS))
    def kill_submitter(self, s) -> None:
        self.net.kill_submitter(s)

    @rule()
    def kill_node(self) -> None:
        self.net.kill_node()

    @rule(s=st.sampled_from(SUBS), k=st.integers(0, 7))
    def escape(self, s, k) -> None:
        self.net.escape(s, k)

    @invariant()
    def holds(self) -> None:
        if hasattr(self, "net"):
            self.net.check()

    def teardown(self) -> None:
        if hasattr(self, "net"):
            self.net.settle()


SETTINGS = settings(max_examples=300, stateful_step_count=30, derandomize=True, database=None, deadline=None,
                    report_multiple_bugs=False)
Leases.TestCase.settings = SETTINGS
TestLeases = pytest.mark.timeout(300)(Leases.TestCase)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("bug, caught", [
    ("retry-without-limit", "ran [0-9]+ times"),
    ("grant-ignores-resources", "over-committed"),
    ("push-past-hold", "past its hold"),
    ("escape-before-recorded", "GCS task table"),
    ("no-reclaim", "returned or reclaimed"),
])
def test_planted_bugs_make_the_property_test_fail(bug, caught, monkeypatch) -> None:
    """The property test has teeth: each planted bug is caught, by the
    property it breaks."""
    if bug == "retry-without-limit":
        # a task whose worker died is retried with no attempts left
        monkeypatch.setattr(LeaseSubmitter, "_may_retry", staticmethod(lambda t: True))
    elif bug == "grant-ignores-resources":
        # the node grants a lease whatever is free (its books say fine:
        # it forgets to take the resources)
        orig = LeaseHost.grant

        def grant(self, now, sid):
            s = self.node.scheduler
            before = s.available
            cmds = orig(self, now, sid)
            for c in cmds:
                if type(c) is Send and type(c.msg) is LeaseGranted:
                    w = s.workers[c.msg.worker_id]
                    s.available = s.available + w.held
                    w.held = ResourceSet.of()
            return cmds
        monkeypatch.setattr(LeaseHost, "grant", grant)
        monkeypatch.setattr(LeaseHost, "validate", lambda self: None)
        monkeypatch.setattr(NodeMachine, "validate", lambda self: None)
    elif bug == "push-past-hold":
        # the submitter never marks a lease's hold time as over
        import penumbra.core.task_leases as TL
        orig_pump = TL.LeaseSubmitter._pump

        def _pump(self, key, now, sid):
            for l in self.leases.values():
                l.granted_at = now  # (as if every lease were fresh)
            return orig_pump(self, key, now, sid)
        monkeypatch.setattr(TL.LeaseSubmitter, "_pump", _pump)
    elif bug == "escape-before-recorded":
        # a ref escapes without waiting for its task's spec in the GCS
        monkeypatch.setattr(LeaseSubmitter, "escape", lambda self, token, oids, now, sid="": [EscapeReady(token=token)])
    else:
        # a node keeps the leases of a submitter that died
        monkeypatch.setattr(LeaseHost, "submitter_gone", lambda self, submitter, now, sid: [])
    with pytest.raises(Broken, match=caught):
        # (no shrinking: only that it fails matters here, and shrinking a
        # long failing run costs minutes)
        run_state_machine_as_test(Leases, settings=settings(SETTINGS, max_examples=1000, phases=[Phase.generate]))
