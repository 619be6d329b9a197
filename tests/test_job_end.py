"""A job ends cleanly when its driver exits, and the GCS forgets it.

Ray's rule: when a driver exits or disconnects, its job ends: its queued and
running tasks are cancelled (nested ones too), its non-detached actors die,
its objects are released and its resources come back.  On top of that the
GCS drops the job's task and object rows, so a long-lived cluster does not
grow with every task it ever ran.  Checked at three levels: the machines
(a node alone, tables alone, a whole memnet cluster), the simulator, and
real processes (a driver subprocess that exits with queued sleeping tasks).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from penumbra.core.ids import ObjectId, child_task_id, driver_task_id, put_object_id
from penumbra.core.messages import (
    ClientDisconnected,
    Execute,
    JobCleared,
    JobEnded,
    KillWorker,
    ObjectsReady,
    PutObject,
    RegisterClient,
    Send,
    SubmitTask,
    WatchObjects,
)
from penumbra.core.records import NodeEntry
from penumbra.core.scheduler import SchedulerConfig
from penumbra.core.specs import ActorSpec, FunctionDescriptor, ResourceSet, TaskSpec
from penumbra.core.tables import (
    AddLocation,
    AddTask,
    FinishTask,
    ForgetJob,
    ForgetObject,
    Get,
    PutNode,
    Tables,
    TableSizes,
    TasksOnNode,
)
from penumbra.verification.memnet import Outcome, ok

from test_core_node import NodeBox

FN = FunctionDescriptor(b"fn-f", "f")


class Job:
    """Task specs of one job (children of its driver, or of another task)."""

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.root = driver_task_id(job_id)
        self.count = 0

    def spec(self, parent=None, deps=(), cpus=1, **kw) -> TaskSpec:
        parent = parent or self.root
        tid = child_task_id(parent, self.count)
        self.count += 1
        return TaskSpec(task_id=tid, job_id=self.job_id, parent_task_id=parent, function=FN,
                        dependencies=tuple(deps), resources=ResourceSet.of(CPU=cpus), **kw)

    def put_id(self, i: int) -> ObjectId:
        return put_object_id(self.root, i)


def rows(net, table):
    """Every row of ``table`` over every shard's tail."""
    head = net.machines["head"]
    out = {}
    for shard in head.chain.shards.values():
        out.update(net.machines[shard.config.tail].tables.data[table])
    return out


def gcs_row(net, table, key):
    return rows(net, table).get(key)


def hang_job(job_id):
    """Tasks of ``job_id`` never end by themselves; the others take 0.05 s."""
    return lambda spec, attempt: Outcome("hang") if spec.job_id == job_id else ok(0.05)


# ============================================================================ one node


def test_node_on_job_end_drops_queued_kills_running_and_frees_resources() -> None:
    box = NodeBox(resources=ResourceSet.of(CPU=2))
    j1, j2 = Job(1), Job(2)
    specs = [j1.spec() for _ in range(10)]
    for s in specs:
        box.submit(s)
    running = {c.spec.task_id: c.worker_id for c in box.out if isinstance(c, Execute)}
    assert len(running) == 2 and box.sched.available == ResourceSet.of(CPU=0)
    other = j2.spec()
    box.submit(other)  # queued behind job 1's tasks
    assert box.sched.state_of(other.task_id) == "ready"

    cmds = box.feed(JobEnded(job_id=1))
    killed = {c.worker_id for c in cmds if isinstance(c, KillWorker)}
    assert killed == set(running.values())
    assert [c.msg for c in cmds if isinstance(c, Send) and c.to == "head"] == [JobCleared(job_id=1, node_id="node:0")]
    assert not [t for t in box.sched.tasks.values() if t.spec.job_id == 1]
    # the other job's task runs at once, on the resources job 1 gave back
    (ex,) = [c for c in cmds if isinstance(c, Execute)]
    assert ex.spec == other
    assert box.sched.available == ResourceSet.of(CPU=1)
    # nothing of job 1 was failed into the GCS (its rows are to be forgotten)
    assert all(box.task_row(s).state.name == "PENDING" for s in specs)
    # a nested task a dying worker submits now is refused
    nested = j1.spec(parent=specs[0].task_id)
    assert box.feed(SubmitTask(client="c:w", spec=nested)) == []
    assert nested.task_id not in box.sched.tasks
    box.node.validate()


# ============================================================================ tables


def test_tables_forget_a_job_but_not_another_nor_a_detached_actor() -> None:
    t = Tables()
    j1, j2 = Job(1), Job(2)
    a = j1.spec()
    b = j1.spec(deps=a.return_ids)
    creation = j1.spec(actor_creation=ActorSpec(actor_id=b"\x01" * 16, cls=FN, detached=True))
    keep = j2.spec()
    t.apply(PutNode(NodeEntry("n", ResourceSet.of(CPU=1), True, "n")))
    for s in (a, b, creation, keep):
        t.apply(AddTask(s, "n"))
    t.apply(FinishTask(a.task_id, "n", ((a.return_ids[0], 8),)))
    t.apply(FinishTask(keep.task_id, "n", ((keep.return_ids[0], 8),)))
    t.apply(AddLocation(j1.put_id(1), "n", 10))
    t.apply(AddLocation(j2.put_id(1), "n", 10))

    released, _ = t.apply(ForgetJob(1))
    assert released == tuple(sorted([(a.return_ids[0], frozenset({"n"})), (j1.put_id(1), frozenset({"n"}))]))
    tasks, objects = t.data["tasks"], t.data["objects"]
    assert set(tasks) == {creation.task_id, keep.task_id}
    assert set(objects) == {keep.return_ids[0], j2.put_id(1)}
    # the pending-by-node index lost b too
    assert [e.spec for e in t.read(TasksOnNode("n"))] == [creation]
    # a late write of the ended job does not bring a row back
    t.apply(AddTask(b, "n"))
    t.apply(FinishTask(b.task_id, "n", ((b.return_ids[0], 8),), job_id=1))
    assert b.task_id not in tasks and b.return_ids[0] not in objects
    assert not t.data["finished_early"]
    # a freed put's row goes
    assert t.apply(ForgetObject(j2.put_id(1)))[0] is True
    assert t.read(Get("objects", j2.put_id(1))) is None
    assert dict(t.read(TableSizes()))["objects"] == 1


# ============================================================================ whole cluster


def test_cluster_job_end_cancels_everywhere_and_the_next_job_runs_at_once(core) -> None:
    net = core.cluster(nodes=2, behaviour=hang_job(1), scheduler=SchedulerConfig(forward_queue_threshold=2))
    net.add_client("c:d1")
    inbox2 = net.add_client("c:d2")
    net.send("c:d1", "node:0", RegisterClient(client="c:d1", job_id=1, is_driver=True))
    j1, j2 = Job(1), Job(2)
    specs = [j1.spec() for _ in range(20)]
    for s in specs:
        net.send("c:d1", "node:0", SubmitTask(client="c:d1", spec=s))
    net.run_for(0.5)
    nodes = [net.machines["node:0"], net.machines["node:1"]]
    assert all(n.scheduler.available.units("CPU") == 0 for n in nodes), "job 1 should fill both nodes"
    # a nested task of job 1, submitted by a worker on node:1
    nested = j1.spec(parent=specs[0].task_id)
    net.send("c:w", "node:1", SubmitTask(client="c:w", spec=nested))
    net.run_for(0.1)

    net.send("c:d1", "node:0", ClientDisconnected(client="c:d1"))
    net.run_for(0.5)
    head = net.machines["head"]
    assert head.ended_jobs == {1} and not head.ending
    for n in nodes:
        assert not [t for t in n.scheduler.tasks.values() if t.spec.job_id == 1], n.node_id
        assert n.scheduler.available == n.scheduler.total and n.scheduler.busy == 0
    # every worker that ran a job 1 task was killed
    ran = {w for n in nodes for s in specs + [nested] for _, _, w in n.story(s.task_id) if w.startswith("running on")}
    assert ran and all(not net.workers[w.split()[2]][1] for w in ran)
    # the GCS forgot job 1's tasks
    assert not [e for e in rows(net, "tasks").values() if e.spec.job_id == 1]

    net.send("c:d2", "node:0", RegisterClient(client="c:d2", job_id=2, is_driver=True))
    later = j2.spec()
    net.send("c:d2", "node:0", SubmitTask(client="c:d2", spec=later))
    net.send("c:d2", "node:0", WatchObjects(client="c:d2", req_id=1, object_ids=later.return_ids, fetch=True))
    net.run_for(0.2)
    assert any(isinstance(m, ObjectsReady) for m in inbox2)


def test_gcs_forgets_the_ended_job_keeps_the_live_one_and_nodes_drop_its_objects(core) -> None:
    net = core.cluster(nodes=2, shards=2, behaviour=lambda s, a: ok(0.01, sizes=(100,) * s.num_returns),
                       scheduler=SchedulerConfig(forward_queue_threshold=2))
    j1, j2 = Job(1), Job(2)
    for c, job in (("c:d1", 1), ("c:d2", 2)):
        net.add_client(c)
        net.send(c, "node:0", RegisterClient(client=c, job_id=job, is_driver=True))
    baseline = {t: len(r) for t, r in (("tasks", rows(net, "tasks")), ("objects", rows(net, "objects")))}
    done = {}
    for c, job in (("c:d1", j1), ("c:d2", j2)):
        first = [job.spec() for _ in range(8)]
        second = [job.spec(deps=s.return_ids) for s in first]  # lineage two deep
        net.stores["node:0"][job.put_id(1)] = 50
        net.send(c, "node:0", PutObject(client=c, req_id=1, object_id=job.put_id(1), size=50))
        for s in first + second:
            net.send(c, "node:0", SubmitTask(client=c, spec=s))
        done[job.job_id] = first + second
    net.run_for(1.0)
    all_objects = rows(net, "objects")
    for job in (j1, j2):
        assert all(s.return_ids[0] in all_objects for s in done[job.job_id])
    j1_oids = [s.return_ids[0] for s in done[1]] + [j1.put_id(1)]

    net.send("c:d1", "node:0", ClientDisconnected(client="c:d1"))
    net.run_for(0.5)
    tasks, objects = rows(net, "tasks"), rows(net, "objects")
    assert not [t for t, e in tasks.items() if e.spec.job_id == 1]
    assert not [o for o in j1_oids if o in objects]
    # job 2 is still running: every row of its lineage stays
    assert all(s.task_id in tasks and s.return_ids[0] in objects for s in done[2])
    assert j2.put_id(1) in objects
    assert len(tasks) == baseline["tasks"] + len(done[2])
    # the nodes deleted job 1's copies (not job 2's)
    for n in ("node:0", "node:1"):
        store = net.machines[n].objects.store
        assert not [o for o in j1_oids if o in store or o in net.stores[n]], n
    assert all(any(s.return_ids[0] in net.machines[n].objects.store for n in ("node:0", "node:1")) for s in done[2])

    net.send("c:d2", "node:0", ClientDisconnected(client="c:d2"))
    net.run_for(0.5)
    assert {t: len(r) for t, r in (("tasks", rows(net, "tasks")), ("objects", rows(net, "objects")))} == baseline
