"""A Hypothesis state machine around one NodeMachine.

The test plays everything around the node: its worker processes (start,
finish, raise, crash, block in ``get``), the byte transfers it asks for, the
global scheduler placing tasks on it, and a one-replica GCS (delivered
synchronously).  After every step the node's own ``validate()`` runs, and:

* resources are never negative nor above capacity;
* every submitted task is in exactly one state: queued, waiting for inputs,
  ready, running, finished, failed with a reason (its outputs hold the
  error in the GCS), or forwarded;
* when everything quiesces (all workers started, all tasks ended, all
  fetches answered, no worker blocked), available == total.
"""

from __future__ import annotations

from collections import deque

import pytest

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from penumbra.core.gcs import GcsReplica
from penumbra.core.ids import child_task_id, driver_task_id
from penumbra.core.messages import (
    CancelTask,
    Execute,
    Fetch,
    FetchCompleted,
    FetchFailed,
    ForwardTask,
    GcsWrite,
    InterruptTask,
    KillWorker,
    NodeWelcome,
    PlaceTask,
    Send,
    SetTimer,
    StartWorker,
    SubmitTask,
    TaskFinished,
    TaskRaised,
    TimerFired,
    WorkerBlocked,
    WorkerCrashed,
    WorkerStarted,
    WorkerUnblocked,
)
from penumbra.core.node import NodeConfig, NodeMachine
from penumbra.core.records import ChainConfig, ErrorInfo, ErrorKind, NodeEntry
from penumbra.core.scheduler import SchedulerConfig
from penumbra.core.specs import FunctionDescriptor, ResourceSet, TaskSpec
from penumbra.core.tables import FinishTask, PutNode

CFG = ChainConfig(0, 1, ("g",))
TOTAL = ResourceSet.of(CPU=2, GPU=1, mem=4)
REQUESTS = [
    ResourceSet.of(CPU=1), ResourceSet.of(CPU=0.1), ResourceSet.of(CPU=0.25), ResourceSet.of(CPU=0.5, mem=1),
    ResourceSet.of(CPU=2), ResourceSet.of(GPU=0.5), ResourceSet.of(CPU=1, GPU=1), ResourceSet(),
    ResourceSet.of(mem=3), ResourceSet.of(CPU=3),  # the last is infeasible here
]
ERR = ErrorInfo(ErrorKind.TASK_ERROR, "ValueError: boom")
FN = FunctionDescriptor(b"f", "f")


class NodeStateMachine(RuleBasedStateMachine):
    @initialize(remote_bytes=st.sampled_from([0, 500]), threshold=st.sampled_from([3, 100]),
                auto_start=st.booleans())
    def setup(self, remote_bytes, threshold, auto_start):
        self.now = 0.0
        self.auto_start = auto_start  # workers start at once (more tasks get to run)
        self.gcs = GcsReplica("g", 0, config=CFG)
        self.node = NodeMachine("node:0", NodeConfig(
            resources=TOTAL, object_store_memory=5000,
            scheduler=SchedulerConfig(prestart_workers=1, max_workers=6, forward_remote_bytes=remote_bytes,
                                      forward_queue_threshold=threshold)))
        self.root = driver_task_id(1)
        self.count = 0
        self.submitted: list[TaskSpec] = []
        self.outputs: list = []  # object ids a new task may depend on
        self.starting: list[str] = []  # StartWorker not yet answered
        self.running: dict[str, TaskSpec] = {}  # worker -> task it executes
        self.blocked: set[str] = set()
        self.fetches: list[Fetch] = []
        self.timers: list[SetTimer] = []
        self.forwarded: set = set()
        self.writes = 0
        self._run([("cmds", self.node.start(0.0))])
        self._run([("node", NodeWelcome(configs=(CFG,)))])
        self._gcs(PutNode(NodeEntry("node:1", TOTAL)))

    # ---------------------------------------------------------------- plumbing
    def _gcs(self, op):
        self.writes += 1
        self._run([("g", GcsWrite(client="test", req_id=self.writes, op=op))])

    def _run(self, first):
        queue = deque(first)
        while queue:
            target, item = queue.popleft()
            if target == "node":
                cmds = self.node.handle(item, self.now)
                self.node.validate()
            elif target == "g":
                cmds = self.gcs.handle(item, self.now)
            else:
                cmds = item
            for c in cmds:
                if isinstance(c, Send):
                    if c.to == "g":
                        queue.append(("g", c.msg))
                    elif c.to == "node:0":
                        queue.append(("node", c.msg))
                    elif isinstance(c.msg, ForwardTask):
                        self.forwarded.add(c.msg.spec.task_id)
                elif isinstance(c, StartWorker):
                    if self.auto_start:
                        queue.append(("node", WorkerStarted(worker_id=c.worker_id)))
                    else:
                        self.starting.append(c.worker_id)
                elif isinstance(c, Execute):
                    assert c.worker_id not in self.running, "two tasks on one worker"
                    self.running[c.worker_id] = c.spec
                elif isinstance(c, KillWorker):
                    self.running.pop(c.worker_id, None)
                    self.blocked.discard(c.worker_id)
                    queue.append(("node", WorkerCrashed(worker_id=c.worker_id, reason=c.reason)))
                elif isinstance(c, InterruptTask):
                    if self.running.get(c.worker_id) is not None and self.running[c.worker_id].task_id == c.task_id:
                        del self.running[c.worker_id]
                        self.blocked.discard(c.worker_id)
                        queue.append(("node", TaskRaised(worker_id=c.worker_id, task_id=c.task_id,
                                                         error=ErrorInfo(ErrorKind.TASK_CANCELLED, "cancelled"))))
                elif isinstance(c, Fetch):
                    self.fetches.append(c)
                elif isinstance(c, SetTimer) and c.key[0] in ("obj", "sched"):
                    self.timers.append(c)

    def feed(self, ev):
        self._run([("node", ev)])

    # ---------------------------------------------------------------- rules
    def _spec(self, req, deps, retries, retry_exc):
        tid = child_task_id(self.root, self.count)
        self.count += 1
        return TaskSpec(task_id=tid, job_id=1, parent_task_id=self.root, function=FN, dependencies=tuple(deps),
                        resources=req, max_retries=retries, retry_exceptions=retry_exc)

    @rule(req=st.sampled_from(REQUESTS), data=st.data(), retries=st.integers(0, 2), retry_exc=st.booleans(),
          placed=st.booleans())
    def submit(self, req, data, retries, retry_exc, placed):
        deps = []
        if self.outputs:
            deps = data.draw(st.lists(st.sampled_from(self.outputs), max_size=2, unique=True))
        spec = self._spec(req, deps, retries, retry_exc)
        self.submitted.append(spec)
        self.outputs.append(spec.return_ids[0])
        if placed:
            self.feed(PlaceTask(spec=spec))
        else:
            self.feed(SubmitTask(client="c:d", spec=spec))

    @rule(size=st.integers(1, 2000), where=st.sampled_from(["node:1", "node:2"]))
    def remote_object(self, size, where):
        """A task elsewhere produced an object (a possible input)."""
        spec = self._spec(ResourceSet(), (), 0, False)
        self._gcs(FinishTask(spec.task_id, where, ((spec.return_ids[0], size),)))
        self.outputs.append(spec.return_ids[0])

    @precondition(lambda self: self.starting)
    @rule(data=st.data(), fail=st.booleans())
    def worker_starts(self, data, fail):
        wid = data.draw(st.sampled_from(self.starting))
        self.starting.remove(wid)
        if fail:
            from penumbra.core.messages import WorkerStartFailed
            self.feed(WorkerStartFailed(worker_id=wid, reason="no memory"))
        else:
            self.feed(WorkerStarted(worker_id=wid))

    def _pick_running(self, data):
        return data.draw(st.sampled_from(sorted(self.running)))

    @precondition(lambda self: self.running)
    @rule(data=st.data(), size=st.integers(0, 300))
    def task_finishes(self, data, size):
        wid = self._pick_running(data)
        spec = self.running.pop(wid)
        self.blocked.discard(wid)
        self.feed(TaskFinished(worker_id=wid, task_id=spec.task_id, outputs=tuple((o, size) for o in spec.return_ids)))

    @precondition(lambda self: self.running)
    @rule(data=st.data(), retryable=st.booleans())
    def task_raises(self, data, retryable):
        wid = self._pick_running(data)
        spec = self.running.pop(wid)
        self.blocked.discard(wid)
        self.feed(TaskRaised(worker_id=wid, task_id=spec.task_id, error=ERR, retryable=retryable))

    @precondition(lambda self: self.running or self.node.scheduler.idle)
    @rule(data=st.data())
    def worker_crashes(self, data):
        choices = sorted(set(self.running) | set(self.node.scheduler.idle))
        wid = data.draw(st.sampled_from(choices))
        self.running.pop(wid, None)
        self.blocked.discard(wid)
        self.feed(WorkerCrashed(worker_id=wid, reason="segfault"))

    @precondition(lambda self: set(self.running) - self.blocked)
    @rule(data=st.data())
    def worker_blocks(self, data):
        wid = data.draw(st.sampled_from(sorted(set(self.running) - self.blocked)))
        self.blocked.add(wid)
        self.feed(WorkerBlocked(worker_id=wid))

    @precondition(lambda self: self.blocked)
    @rule(data=st.data())
    def worker_unblocks(self, data):
        wid = data.draw(st.sampled_from(sorted(self.blocked)))
        self.blocked.discard(wid)
        self.feed(WorkerUnblocked(worker_id=wid))

    @precondition(lambda self: self.fetches)
    @rule(data=st.data(), ok=st.booleans())
    def fetch_answered(self, data, ok):
        f = data.draw(st.sampled_from(self.fetches))
        self.fetches.remove(f)
        if ok:
            self.feed(FetchCompleted(object_id=f.object_id, size=f.size))
        else:
            self.feed(FetchFailed(object_id=f.object_id, from_node=f.from_node, reason="connection reset"))

    @precondition(lambda self: self.timers)
    @rule()
    def timers_fire(self):
        timers, self.timers = self.timers, []
        self.now = max([self.now] + [t.at for t in timers])
        for t in timers:
            self.feed(TimerFired(key=t.key))

    @precondition(lambda self: self.submitted)
    @rule(data=st.data(), force=st.booleans())
    def cancel(self, data, force):
        spec = data.draw(st.sampled_from(self.submitted))
        self.feed(CancelTask(client="c:d", task_id=spec.task_id, force=force))

    # ---------------------------------------------------------------- invariants
    @invariant()
    def resources_in_bounds(self):
        if not hasattr(self, "node"):
            return
        s = self.node.scheduler
        assert s.available.is_nonnegative() and s.available.is_subset_of(s.total)

    @invariant()
    def every_task_in_exactly_one_state(self):
        if not hasattr(self, "node"):
            return
        s = self.node.scheduler
        objects = self.gcs.tables.data["objects"]
        for spec in self.submitted:
            tid = spec.task_id
            live = s.tasks.get(tid)
            outcome = s.done.get(tid)
            assert (live is None) != (outcome is None), f"{tid}: live={live} outcome={outcome}"
            if live is not None:
                assert live.state in ("waiting", "locating", "ready", "running")
                assert (live.state == "running") == any(w.task == tid for w in s.workers.values() if w.state == "busy")
            elif outcome == "finished":
                row = objects[spec.return_ids[0]]  # (node:0's copy may since be evicted)
                assert row.created and row.error is None
            elif outcome == "forwarded":
                assert tid in self.forwarded
            else:
                assert outcome.startswith("failed:"), outcome
                err = objects[spec.return_ids[0]].error
                assert err is not None and outcome == f"failed:{err.kind.value}"

    def teardown(self):
        if not hasattr(self, "node"):
            return
        # quiesce: start workers, unblock, finish everything that runs
        for _ in range(200):
            if self.starting:
                self.feed(WorkerStarted(worker_id=self.starting.pop()))
            elif self.blocked:
                self.feed(WorkerUnblocked(worker_id=self.blocked.pop()))
            elif self.running:
                wid = sorted(self.running)[0]
                spec = self.running.pop(wid)
                self.feed(TaskFinished(worker_id=wid, task_id=spec.task_id, outputs=tuple((o, 1) for o in spec.return_ids)))
            elif self.fetches:
                f = self.fetches.pop()
                self.feed(FetchCompleted(object_id=f.object_id, size=f.size))
            elif self.timers:
                self.timers_fire()
            else:
                break
        s = self.node.scheduler
        assert not any(w.state == "busy" for w in s.workers.values())
        assert s.debt == ResourceSet()
        assert s.available == s.total, f"after quiescing: available {s.available} != total {s.total}"


TestNodeStateMachine = NodeStateMachine.TestCase
TestNodeStateMachine.settings = settings(max_examples=60, stateful_step_count=50, derandomize=True, database=None,
                                         deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.slow
@pytest.mark.timeout(3600)  # (the suite's default is 120 s)
class TestNodeStateMachineLong(NodeStateMachine.TestCase):
    settings = settings(max_examples=2000, stateful_step_count=80, derandomize=True, database=None,
                        deadline=None, suppress_health_check=list(HealthCheck))
