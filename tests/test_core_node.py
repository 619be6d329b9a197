"""NodeMachine driven directly: the object manager and the local scheduler.

``NodeBox`` wires one node to a one-replica GCS chain synchronously (GCS
traffic is delivered at once, both ways) and hands every other command back
to the test, which plays the workers, the store and the head.
"""

from __future__ import annotations

from collections import deque

import pytest

from penumbra.core.gcs import GcsReplica
from penumbra.core.messages import (
    CancelTask,
    CancelWatch,
    ClientDisconnected,
    Evict,
    Execute,
    Fetch,
    FetchCompleted,
    FetchFailed,
    ForwardTask,
    GcsWrite,
    InterruptTask,
    KillWorker,
    NodeWelcome,
    ObjectsReady,
    ObjectUnrecoverable,
    PutDone,
    PutFailed,
    PutObject,
    ReconstructObject,
    ReleaseObjects,
    Send,
    SetTimer,
    StartWorker,
    StoreError,
    SubmitTask,
    TaskFinished,
    TaskRaised,
    TimerFired,
    WatchObjects,
    WorkerBlocked,
    WorkerCrashed,
    WorkerStarted,
    WorkerUnblocked,
)
from penumbra.core.node import NodeConfig, NodeMachine
from penumbra.core.records import ChainConfig, ErrorInfo, ErrorKind, NodeEntry, TaskState
from penumbra.core.scheduler import SchedulerConfig
from penumbra.core.specs import ResourceSet
from penumbra.core.tables import AddLocation, FinishTask, NodeDown, PutNode, RemoveLocation

CFG = ChainConfig(shard=0, epoch=1, replicas=("g",))


class NodeBox:
    def __init__(self, resources=None, store=10_000, auto_workers=True, **sched) -> None:
        sched.setdefault("prestart_workers", 0)
        self.resources = resources or ResourceSet.of(CPU=2)
        self.gcs = GcsReplica("g", 0, config=CFG)
        self.node = NodeMachine("node:0", NodeConfig(
            resources=self.resources, object_store_memory=store, scheduler=SchedulerConfig(**sched)))
        self.auto_workers = auto_workers
        self.now = 0.0
        self.out: list = []
        self.writes = 0
        self._run([("cmds", self.node.start(0.0))])
        self.feed(NodeWelcome(configs=(CFG,)))

    # -- driving
    def feed(self, ev):
        return self._run([("node", ev)])

    def _run(self, first):
        queue = deque(first)
        out = []
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
                if isinstance(c, Send) and c.to == "g":
                    queue.append(("g", c.msg))
                elif isinstance(c, Send) and c.to == "node:0":
                    queue.append(("node", c.msg))
                elif isinstance(c, Send) and c.to.startswith("c:"):
                    out.append(c)
                elif isinstance(c, Send) and c.to == "head" and type(c.msg).__name__ == "ReplicaHeartbeat":
                    pass
                elif isinstance(c, SetTimer) and c.key[0] in ("gcs", "gcs-client", "node"):
                    pass
                elif isinstance(c, StartWorker) and self.auto_workers:
                    out.append(c)
                    queue.append(("node", WorkerStarted(worker_id=c.worker_id)))
                else:
                    out.append(c)
        self.out += out
        return out

    def gcs_write(self, op):
        self.writes += 1
        self._run([("g", GcsWrite(client="test", req_id=self.writes, op=op))])

    def submit(self, spec):
        return self.feed(SubmitTask(client="c:driver", spec=spec))

    # -- reading
    @property
    def sched(self):
        return self.node.scheduler

    def task_row(self, spec):
        return self.gcs.tables.data["tasks"].get(spec.task_id)

    def obj_row(self, oid):
        return self.gcs.tables.data["objects"].get(oid)

    def finish(self, ex: Execute, size=8):
        outputs = tuple((o, size) for o in ex.spec.return_ids)
        return self.feed(TaskFinished(worker_id=ex.worker_id, task_id=ex.spec.task_id, outputs=outputs))


def of(cmds, kind):
    return [c for c in cmds if isinstance(c, kind)]


def msgs(cmds, kind, to=None):
    return [c.msg for c in cmds if isinstance(c, Send) and isinstance(c.msg, kind) and (to is None or c.to == to)]


def other_node(box: NodeBox, name="node:1") -> None:
    box.gcs_write(PutNode(NodeEntry(name, ResourceSet.of(CPU=2))))
    assert box.node.nodes[name] is True


# ============================================================================ local scheduler


def test_dispatch_finish_and_gcs_records(core) -> None:
    box = NodeBox()
    s = core.spec()
    cmds = box.submit(s)
    (ex,) = of(cmds, Execute)
    assert ex.spec == s and ex.attempt == 0
    assert box.task_row(s).state is TaskState.PENDING and box.task_row(s).node == "node:0"
    assert box.sched.available == ResourceSet.of(CPU=1)
    box.finish(ex, size=40)
    assert box.task_row(s).state is TaskState.FINISHED
    assert box.obj_row(s.return_ids[0]).locations == {"node:0"}
    assert box.node.objects.store.used == 40
    assert box.sched.available == box.resources and box.sched.state_of(s.task_id) == "finished"
    assert [w for _, _, w in box.node.story(s.task_id)][-1] == "finished"


def test_fractional_cpus_are_exact(core) -> None:
    box = NodeBox(resources=ResourceSet.of(CPU=1), max_workers=20)
    specs = [core.spec(cpus=0.1) for _ in range(11)]
    execs = []
    for s in specs:
        execs += of(box.submit(s), Execute)
    assert len(execs) == 10  # exactly ten tenths fit in one CPU
    assert box.sched.available == ResourceSet()
    assert box.sched.state_of(specs[10].task_id) == "ready"
    more = box.finish(execs[0])
    (ex11,) = of(more, Execute)
    assert ex11.spec == specs[10]
    for ex in execs[1:] + [ex11]:
        box.finish(ex)
    assert box.sched.available == ResourceSet.of(CPU=1)


def test_custom_resources_limit_concurrency(core) -> None:
    box = NodeBox(resources=ResourceSet.of(CPU=4, accel=1))
    a = core.spec(resources=ResourceSet.of(CPU=1, accel=0.5))
    b = core.spec(resources=ResourceSet.of(CPU=1, accel=0.5))
    c = core.spec(resources=ResourceSet.of(CPU=1, accel=0.5))
    d = core.spec(cpus=1)  # needs no accel: overtakes c
    ea, eb = of(box.submit(a), Execute)[0], of(box.submit(b), Execute)[0]
    assert of(box.submit(c), Execute) == []
    (ed,) = of(box.submit(d), Execute)
    assert ed.spec == d
    assert box.sched.available == ResourceSet.of(CPU=1)
    (ec,) = of(box.finish(ea), Execute)
    assert ec.spec == c
    for ex in (eb, ec, ed):
        box.finish(ex)
    assert box.sched.available == box.resources


def test_forward_infeasible(core) -> None:
    box = NodeBox()
    s = core.spec(resources=ResourceSet.of(CPU=1, GPU=1))
    cmds = box.submit(s)
    (fwd,) = msgs(cmds, ForwardTask, to="head")
    assert fwd.reason == "infeasible" and fwd.spec == s and fwd.from_node == "node:0"
    assert box.sched.state_of(s.task_id) == "forwarded"
    assert box.task_row(s) is not None  # lineage recorded before forwarding
    # even a placed task that cannot fit is forwarded again
    s2 = core.spec(cpus=3)
    from penumbra.core.messages import PlaceTask
    assert msgs(box.feed(PlaceTask(spec=s2)), ForwardTask)[0].reason == "infeasible"


def test_forward_overloaded_only_with_another_node(core) -> None:
    box = NodeBox(resources=ResourceSet.of(CPU=1), forward_queue_threshold=2)
    specs = [core.spec() for _ in range(6)]
    for s in specs[:4]:
        assert not msgs(box.submit(s), ForwardTask)  # alone: keeps everything
    other_node(box)
    (fwd,) = msgs(box.submit(specs[4]), ForwardTask)
    assert fwd.reason == "overloaded"
    # a task the global scheduler placed here is never forwarded for load
    from penumbra.core.messages import PlaceTask
    assert not msgs(box.feed(PlaceTask(spec=specs[5])), ForwardTask)
    assert box.sched.state_of(specs[5].task_id) == "ready"


def test_forward_remote_inputs(core) -> None:
    box = NodeBox(forward_remote_bytes=1000)
    other_node(box)
    big, small = core.spec(), core.spec()
    box.gcs_write(FinishTask(big.task_id, "node:1", ((big.return_ids[0], 5000),)))
    box.gcs_write(FinishTask(small.task_id, "node:1", ((small.return_ids[0], 10),)))
    t_big = core.spec(deps=big.return_ids)
    (fwd,) = msgs(box.submit(t_big), ForwardTask)
    assert fwd.reason == "remote_inputs"
    assert box.sched.state_of(t_big.task_id) == "forwarded"
    t_small = core.spec(deps=small.return_ids)
    cmds = box.submit(t_small)
    assert not msgs(cmds, ForwardTask)
    (f,) = of(cmds, Fetch)
    assert f.from_node == "node:1" and f.size == 10
    assert not box.node.objects.wants.get(big.return_ids[0])  # the big input is not wanted any more


def test_worker_crash_retries_then_fails(core) -> None:
    box = NodeBox()
    s = core.spec(max_retries=2)
    (ex,) = of(box.submit(s), Execute)
    for attempt in (1, 2):
        cmds = box.feed(WorkerCrashed(worker_id=ex.worker_id, reason="segfault"))
        (ex,) = of(cmds, Execute)
        assert ex.attempt == attempt
        assert box.task_row(s).attempt == attempt
    box.feed(WorkerCrashed(worker_id=ex.worker_id, reason="segfault"))
    row = box.obj_row(s.return_ids[0])
    assert row.error.kind is ErrorKind.WORKER_CRASHED and "segfault" in row.error.message
    assert box.task_row(s).state is TaskState.FAILED
    assert box.sched.state_of(s.task_id) == "failed:worker_crashed"
    assert box.sched.available == box.resources
    assert box.node.objects.error_of(s.return_ids[0]) is not None


def test_retry_exceptions(core) -> None:
    box = NodeBox()
    err = ErrorInfo(ErrorKind.TASK_ERROR, "ValueError")
    s = core.spec(max_retries=1, retry_exceptions=True)
    (ex,) = of(box.submit(s), Execute)
    (ex2,) = of(box.feed(TaskRaised(worker_id=ex.worker_id, task_id=s.task_id, error=err, retryable=True)), Execute)
    assert ex2.attempt == 1
    box.feed(TaskRaised(worker_id=ex2.worker_id, task_id=s.task_id, error=err, retryable=True))
    assert box.obj_row(s.return_ids[0]).error == err  # budget spent: the user's error
    # not retryable: fails at once
    s2 = core.spec(max_retries=5)
    (ex,) = of(box.submit(s2), Execute)
    cmds = box.feed(TaskRaised(worker_id=ex.worker_id, task_id=s2.task_id, error=err, retryable=False))
    assert not of(cmds, Execute) and box.obj_row(s2.return_ids[0]).error == err
    assert box.sched.available == box.resources


def test_blocked_worker_lends_cpu_and_repays_debt(core) -> None:
    box = NodeBox(resources=ResourceSet.of(CPU=1, mem=2))
    a = core.spec(resources=ResourceSet.of(CPU=1, mem=1))
    b = core.spec(resources=ResourceSet.of(CPU=1, mem=1))
    (ea,) = of(box.submit(a), Execute)
    assert of(box.submit(b), Execute) == []
    # a waits in get(): lends its CPU (not its memory); b runs
    (eb,) = of(box.feed(WorkerBlocked(worker_id=ea.worker_id)), Execute)
    assert eb.spec == b and box.sched.available == ResourceSet()
    # a resumes while b still holds the CPU: runs on debt
    box.feed(WorkerUnblocked(worker_id=ea.worker_id))
    assert box.sched.debt == ResourceSet.of(CPU=1)
    box.finish(eb)  # b's release repays the debt first
    assert box.sched.debt == ResourceSet() and box.sched.available == ResourceSet.of(mem=1)
    box.finish(ea)
    assert box.sched.available == box.resources
    # block/unblock with the CPU free again: taken back at once, no debt
    c = core.spec(resources=ResourceSet.of(CPU=1))
    (ec,) = of(box.submit(c), Execute)
    box.feed(WorkerBlocked(worker_id=ec.worker_id))
    assert box.sched.available == box.resources
    box.feed(WorkerUnblocked(worker_id=ec.worker_id))
    assert box.sched.debt == ResourceSet() and box.sched.available == ResourceSet.of(mem=2)
    box.finish(ec)
    assert box.sched.available == box.resources


def test_blocked_worker_crash_keeps_accounting(core) -> None:
    box = NodeBox(resources=ResourceSet.of(CPU=1))
    a, b = core.spec(max_retries=0), core.spec()
    (ea,) = of(box.submit(a), Execute)
    box.submit(b)
    (eb,) = of(box.feed(WorkerBlocked(worker_id=ea.worker_id)), Execute)
    box.feed(WorkerUnblocked(worker_id=ea.worker_id))
    box.feed(WorkerCrashed(worker_id=ea.worker_id, reason="oom"))
    assert box.obj_row(a.return_ids[0]).error.kind is ErrorKind.WORKER_CRASHED
    box.finish(eb)
    assert box.sched.available == box.resources and box.sched.debt == ResourceSet()


def test_cancel(core) -> None:
    box = NodeBox(resources=ResourceSet.of(CPU=1))
    run, queued = core.spec(), core.spec()
    (ex,) = of(box.submit(run), Execute)
    box.submit(queued)
    box.feed(CancelTask(client="c:driver", task_id=queued.task_id))
    assert box.obj_row(queued.return_ids[0]).error.kind is ErrorKind.TASK_CANCELLED
    # non-force: interrupt the running task; it raises TASK_CANCELLED, not retried
    (intr,) = of(box.feed(CancelTask(client="c:driver", task_id=run.task_id)), InterruptTask)
    assert intr.task_id == run.task_id
    err = ErrorInfo(ErrorKind.TASK_CANCELLED, "cancelled")
    box.feed(TaskRaised(worker_id=ex.worker_id, task_id=run.task_id, error=err, retryable=True))
    assert box.obj_row(run.return_ids[0]).error.kind is ErrorKind.TASK_CANCELLED
    # force: the worker is killed and the crash is not retried
    forced = core.spec(max_retries=3)
    (ex,) = of(box.submit(forced), Execute)
    (kill,) = of(box.feed(CancelTask(client="c:driver", task_id=forced.task_id, force=True)), KillWorker)
    cmds = box.feed(WorkerCrashed(worker_id=kill.worker_id, reason=kill.reason))
    assert not of(cmds, Execute)
    assert box.obj_row(forced.return_ids[0]).error.kind is ErrorKind.TASK_CANCELLED
    assert box.sched.available == box.resources
    # cancelling an unknown task is a no-op
    assert box.feed(CancelTask(client="c:driver", task_id=core.spec().task_id)) == []


def test_worker_pool_grows_to_max_and_prestarts(core) -> None:
    box = NodeBox(resources=ResourceSet.of(CPU=8), max_workers=3, auto_workers=False)
    for _ in range(5):
        box.submit(core.spec(cpus=1))
    starts = of(box.out, StartWorker)
    assert len(starts) == 3  # never more than max_workers
    for st in starts:
        box.feed(WorkerStarted(worker_id=st.worker_id))
    assert len(of(box.out, Execute)) == 3
    box2 = NodeBox(resources=ResourceSet.of(CPU=3), prestart_workers=-1, auto_workers=False)
    assert len(of(box2.out, StartWorker)) == 3  # one per CPU


# ============================================================================ object manager


def test_fetch_from_live_location_then_run(core) -> None:
    box = NodeBox()
    other_node(box)
    p = core.spec()
    box.gcs_write(FinishTask(p.task_id, "node:1", ((p.return_ids[0], 30),)))
    t = core.spec(deps=p.return_ids)
    cmds = box.submit(t)
    (f,) = of(cmds, Fetch)
    assert (f.object_id, f.from_node, f.size) == (p.return_ids[0], "node:1", 30)
    assert box.sched.state_of(t.task_id) == "waiting"
    cmds = box.feed(FetchCompleted(object_id=f.object_id, size=30))
    (ex,) = of(cmds, Execute)
    assert ex.spec == t
    assert box.obj_row(p.return_ids[0]).locations == {"node:0", "node:1"}
    assert box.node.objects.store.is_pinned(p.return_ids[0])  # input of a running task
    box.finish(ex)
    assert not box.node.objects.store.is_pinned(p.return_ids[0])


def test_fetch_failure_tries_next_location(core) -> None:
    box = NodeBox()
    p = core.spec()
    oid = p.return_ids[0]
    for n in ("node:1", "node:2"):
        box.gcs_write(AddLocation(oid, n, 30))
    box.feed(WatchObjects(client="c:driver", req_id=1, object_ids=(oid,)))
    (f1,) = of(box.out, Fetch)
    (f2,) = of(box.feed(FetchFailed(object_id=oid, from_node=f1.from_node, reason="gone")), Fetch)
    assert {f1.from_node, f2.from_node} == {"node:1", "node:2"}
    # both failed: wait a little and try them again
    cmds = box.feed(FetchFailed(object_id=oid, from_node=f2.from_node))
    assert not of(cmds, Fetch)
    (timer,) = [c for c in cmds if isinstance(c, SetTimer)]
    box.now = timer.at
    (f3,) = of(box.feed(TimerFired(key=timer.key)), Fetch)
    cmds = box.feed(FetchCompleted(object_id=oid, size=30))
    (ready,) = msgs(cmds, ObjectsReady, to="c:driver")
    assert ready.req_id == 1 and ready.objects[0][0] == oid and ready.objects[0][1].size == 30


def test_lost_object_asks_head_to_reconstruct(core) -> None:
    box = NodeBox()
    other_node(box)
    p = core.spec()
    oid = p.return_ids[0]
    box.gcs_write(FinishTask(p.task_id, "node:1", ((oid, 30),)))
    box.feed(WatchObjects(client="c:driver", req_id=1, object_ids=(oid,)))
    (f,) = of(box.out, Fetch)
    box.gcs_write(NodeDown("node:1"))  # its only copy is gone
    cmds = box.feed(FetchFailed(object_id=oid, from_node="node:1"))
    (rec,) = msgs(cmds, ReconstructObject, to="head")
    assert rec.object_id == oid and rec.node_id == "node:0"
    # unrecoverable: the watcher gets the error
    err = ErrorInfo(ErrorKind.OBJECT_LOST, "put object lost")
    cmds = box.feed(ObjectUnrecoverable(object_id=oid, error=err))
    (ready,) = msgs(cmds, ObjectsReady, to="c:driver")
    assert ready.objects[0][1].error == err
    assert of(cmds, StoreError)


def test_object_lost_by_eviction_race(core) -> None:
    box = NodeBox()
    p = core.spec()
    oid = p.return_ids[0]
    box.gcs_write(AddLocation(oid, "node:5", 30))
    box.feed(WatchObjects(client="c:driver", req_id=1, object_ids=(oid,)))
    box.gcs_write(RemoveLocation(oid, "node:5"))
    box.feed(FetchFailed(object_id=oid, from_node="node:5"))
    assert msgs(box.out, ReconstructObject, to="head")


def test_input_holding_error_fails_task(core) -> None:
    box = NodeBox()
    p = core.spec()
    err = ErrorInfo(ErrorKind.TASK_ERROR, "upstream failed")
    box.gcs_write(FinishTask(p.task_id, "node:1", ((p.return_ids[0], 0),), error=err))
    t = core.spec(deps=p.return_ids)
    cmds = box.submit(t)
    assert not of(cmds, Execute)
    assert box.obj_row(t.return_ids[0]).error == err
    assert box.sched.state_of(t.task_id) == "failed:task_error"
    # a second task with the (now local) error input fails at once too
    t2 = core.spec(deps=p.return_ids)
    box.submit(t2)
    assert box.obj_row(t2.return_ids[0]).error == err


def test_watch_without_fetch_reports_location(core) -> None:
    box = NodeBox()
    p = core.spec()
    oid = p.return_ids[0]
    box.feed(WatchObjects(client="c:driver", req_id=3, object_ids=(oid,), fetch=False))
    assert not msgs(box.out, ObjectsReady)
    box.gcs_write(FinishTask(p.task_id, "node:1", ((oid, 30),)))
    (ready,) = msgs(box.out, ObjectsReady)
    assert ready.req_id == 3 and ready.objects[0][1].size == 30
    assert not of(box.out, Fetch)
    # told where it is, the watch is done with it: the node keeps no want
    # (and no GCS subscription, re-read every second) behind it (found by
    # the swarm's quiet-cluster check, seed 238)
    assert oid not in box.node.objects.wants and not box.node.watches


def test_a_watch_with_need_reports_once_that_many_are_ready(core) -> None:
    box = NodeBox(resources=ResourceSet.of(CPU=4))
    specs = [core.spec() for _ in range(4)]
    execs = [of(box.submit(s), Execute)[0] for s in specs]
    oids = tuple(s.return_ids[0] for s in specs)
    # need=3 of 4: nothing until the third is ready, then the three at once,
    # then the last on its own
    box.feed(WatchObjects(client="c:driver", req_id=1, object_ids=oids, need=3))
    counts = []
    for ex in execs:
        box.finish(ex)
        counts.append(len(msgs(box.out, ObjectsReady, to="c:driver")))
    assert counts == [0, 0, 1, 2]
    sent = msgs(box.out, ObjectsReady, to="c:driver")
    assert [[o for o, _ in m.objects] for m in sent] == [list(oids[:3]), [oids[3]]]
    assert not box.node.watches
    # the default (need=1) reports each one as it comes; objects already
    # here count at once (need=2, both local: one report with both)
    box.feed(WatchObjects(client="c:driver", req_id=2, object_ids=oids[:2], need=2))
    (m,) = [m for m in msgs(box.out, ObjectsReady, to="c:driver") if m.req_id == 2]
    assert [o for o, _ in m.objects] == list(oids[:2])
    # a cancelled watch drops what it held
    more = [core.spec() for _ in range(2)]
    ex2 = [of(box.submit(s), Execute)[0] for s in more]
    box.feed(WatchObjects(client="c:driver", req_id=3, object_ids=tuple(s.return_ids[0] for s in more), need=2))
    box.finish(ex2[0])
    assert box.node.watches[("c:driver", 3)].held
    box.feed(CancelWatch(client="c:driver", req_id=3))
    box.finish(ex2[1])
    assert not [m for m in msgs(box.out, ObjectsReady, to="c:driver") if m.req_id == 3]


def test_put_admission_pins_and_store_full(core) -> None:
    from penumbra.core.ids import put_object_id

    box = NodeBox(store=100)
    a, b = put_object_id(core.root, 1), put_object_id(core.root, 2)
    (done,) = msgs(box.feed(PutObject(client="c:driver", req_id=1, object_id=a, size=80)), PutDone)
    assert done.object_id == a and box.node.objects.store.is_pinned(a)
    assert box.obj_row(a).locations == {"node:0"}
    cmds = box.feed(PutObject(client="c:driver", req_id=2, object_id=b, size=50))
    (failed,) = msgs(cmds, PutFailed)
    assert failed.error.kind is ErrorKind.OBJECT_STORE_FULL and of(cmds, Evict)
    box.feed(ReleaseObjects(client="c:driver", object_ids=(a,)))
    cmds = box.feed(PutObject(client="c:driver", req_id=3, object_id=b, size=50))
    assert msgs(cmds, PutDone) and [e.object_id for e in of(cmds, Evict)] == [a]
    assert box.obj_row(a).locations == frozenset()
    box.feed(ClientDisconnected(client="c:driver"))
    assert not box.node.objects.store.is_pinned(b)


def test_free_deletes_a_private_put_unless_something_still_uses_it(core) -> None:
    """``ReleaseObjects(free=True)``: the owner's last ref died and never left
    it, so the object goes now (Evict + its GCS row deleted), not when LRU
    eviction gets to it; one a task still pins is only released."""
    from penumbra.core.ids import put_object_id

    box = NodeBox(store=1_000, resources=ResourceSet.of(CPU=1))
    a, b = put_object_id(core.root, 1), put_object_id(core.root, 2)
    for i, oid in enumerate((a, b)):
        box.feed(PutObject(client="c:driver", req_id=i + 1, object_id=oid, size=100))
    blocker = core.spec()
    (eb,) = of(box.submit(blocker), Execute)  # takes the only CPU: the next task waits, pinning b
    user = core.spec(deps=(b,))
    box.submit(user)
    store = box.node.objects.store
    cmds = box.feed(ReleaseObjects(client="c:driver", object_ids=(a, b), free=True))
    assert [e.object_id for e in of(cmds, Evict)] == [a]
    assert a not in store and box.obj_row(a) is None and store.used == 100
    assert b in store and store.is_pinned(b) and box.obj_row(b).locations == {"node:0"}
    (eu,) = of(box.finish(eb), Execute)
    assert eu.spec == user
    box.finish(eu)
    assert b in store and not store.is_pinned(b)  # released, cached: LRU decides now
    assert box.node.objects.freed == 1
    box.node.validate()


def test_gpu_instances_pack_fractions_and_wait_for_a_whole_gpu(core) -> None:
    box = NodeBox(resources=ResourceSet.of(CPU=4, GPU=2))
    half = ResourceSet.of(CPU=1, GPU=0.5)
    a, b, c = (core.spec(resources=half) for _ in range(3))
    ea, eb, ec = (of(box.submit(s), Execute)[0] for s in (a, b, c))
    assert (ea.gpu_ids, eb.gpu_ids, ec.gpu_ids) == ((0,), (0,), (1,))  # fractions pack first-fit
    box.finish(ea)
    # 1 GPU's worth of units is free (half of each), but no whole GPU is
    d = core.spec(resources=ResourceSet.of(CPU=1, GPU=1))
    assert not of(box.submit(d), Execute)
    assert box.sched.available.get("GPU") == 1.0 and box.sched.state_of(d.task_id) == "ready"
    (ed,) = of(box.finish(eb), Execute)
    assert ed.spec == d and ed.gpu_ids == (0,)
    box.finish(ec)
    box.finish(ed)
    two = core.spec(resources=ResourceSet.of(CPU=1, GPU=2))
    (e2,) = of(box.submit(two), Execute)
    assert e2.gpu_ids == (0, 1)
    # the worker dies: the retry gets the GPUs back
    (again,) = of(box.feed(WorkerCrashed(worker_id=e2.worker_id, reason="test")), Execute)
    assert again.spec == two and again.gpu_ids == (0, 1)
    box.finish(again)
    assert box.sched.gpus.free == [10_000, 10_000] and not box.sched.gpus.held
    assert not of(box.submit(core.spec()), Execute)[0].gpu_ids
    box.node.validate()


def test_task_outputs_that_do_not_fit_fail_the_task(core) -> None:
    from penumbra.core.ids import put_object_id

    box = NodeBox(store=100)
    box.feed(PutObject(client="c:driver", req_id=1, object_id=put_object_id(core.root, 1), size=90))
    s = core.spec()
    (ex,) = of(box.submit(s), Execute)
    cmds = box.finish(ex, size=50)
    assert [e.object_id for e in of(cmds, Evict)] == [s.return_ids[0]]
    assert box.obj_row(s.return_ids[0]).error.kind is ErrorKind.OBJECT_STORE_FULL
    assert box.sched.available == box.resources


def test_blocking_again_after_unblocking_on_debt(core) -> None:
    """A worker that unblocked on debt and blocks again must not lend a CPU
    it does not have (found by the node state machine: available went above
    total)."""
    box = NodeBox(resources=ResourceSet.of(CPU=2))
    a, b, c = core.spec(), core.spec(), core.spec(cpus=2)
    (ea,) = of(box.submit(a), Execute)
    (eb,) = of(box.submit(b), Execute)
    box.feed(WorkerBlocked(worker_id=ea.worker_id))
    assert of(box.submit(c), Execute) == []  # one CPU free, c needs two
    (ec,) = of(box.feed(WorkerBlocked(worker_id=eb.worker_id)), Execute)
    box.feed(WorkerUnblocked(worker_id=ea.worker_id))  # c holds both CPUs: debt
    assert box.sched.debt == ResourceSet.of(CPU=1)
    box.feed(WorkerBlocked(worker_id=ea.worker_id))  # lends what repays the debt
    assert box.sched.debt == ResourceSet() and box.sched.available == ResourceSet()
    box.feed(WorkerBlocked(worker_id=ec.worker_id))
    assert box.sched.available == ResourceSet.of(CPU=2)  # never above total
    for wid in (ea.worker_id, eb.worker_id, ec.worker_id):
        box.feed(WorkerUnblocked(worker_id=wid))
    for ex in (ea, eb, ec):
        box.finish(ex)
    assert box.sched.available == box.resources and box.sched.debt == ResourceSet()


def test_failing_a_waiting_task_drops_its_subscriptions_at_once(core) -> None:
    box = NodeBox()
    missing = core.spec().return_ids[0]  # never produced
    t = core.spec(deps=(missing,))
    box.submit(t)
    assert "node:0" in box.gcs.tables.subs.get(("objects", missing), ())
    box.feed(CancelTask(client="c:driver", task_id=t.task_id))
    assert box.obj_row(t.return_ids[0]).error.kind is ErrorKind.TASK_CANCELLED
    assert ("objects", missing) not in box.gcs.tables.subs  # Unsubscribe was sent, not just queued
    assert not box.node.objects.wants


def test_story_lines_that_repeat_are_kept_once(core) -> None:
    # a story stays for up to ``story_limit`` tasks on every node: its
    # common lines are one shared string, not one per task (issue 17)
    box = NodeBox()
    specs = [core.spec(), core.spec()]
    for s in specs:
        (ex,) = of(box.submit(s), Execute)
        box.finish(ex, size=8)
    lines = [[w for _, _, w in box.node.story(s.task_id)] for s in specs]
    assert lines[0] == lines[1] and lines[0][0].startswith("submitted") and lines[0][-1] == "finished"
    assert all(x is y for x, y in zip(*lines))
    # one flat list a task, no tuple a line
    flat = box.node.stories[specs[0].task_id]
    assert type(flat) is list and len(flat) == 3 * len(lines[0])
    assert box.node.story(specs[0].task_id) == list(zip(flat[0::3], flat[1::3], flat[2::3]))


def test_empty_sets_of_ready_tasks_and_wants_are_one_shared_frozenset(core) -> None:
    """A ready task's missing inputs and a want's failed sources start as
    one shared empty frozenset (a set each was 216 bytes, one per task held:
    issue 17); the first thing added makes a set of their own, never
    touching the shared one."""
    from penumbra.core import objects as O
    from penumbra.core.scheduler_records import NO_INPUTS

    box = NodeBox()
    s = core.spec()
    box.submit(s)
    assert box.sched.tasks[s.task_id].missing is NO_INPUTS and not NO_INPUTS
    p = core.spec()
    oid = p.return_ids[0]
    for n in ("node:1", "node:2"):
        box.gcs_write(AddLocation(oid, n, 30))
    box.feed(WatchObjects(client="c:driver", req_id=1, object_ids=(oid,)))
    w = box.node.objects.wants[oid]
    assert w.failed_from is O._NONE
    (f1,) = of(box.out, Fetch)
    box.feed(FetchFailed(object_id=oid, from_node=f1.from_node, reason="gone"))
    assert w.failed_from == {f1.from_node} and type(w.failed_from) is set and not O._NONE
