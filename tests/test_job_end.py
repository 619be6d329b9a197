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
from penumbra.core.records import ActorEntry, ActorState, NodeEntry
from penumbra.core.scheduler import SchedulerConfig
from penumbra.core.specs import ActorSpec, FunctionDescriptor, ResourceSet, TaskSpec
from penumbra.core.tables import (
    AddLocation,
    AddTask,
    AppendActorLog,
    FinishTask,
    ForgetJob,
    ForgetObject,
    Get,
    PutActor,
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

    # replay logs: of a dead actor of job 1 (goes) and of job 1's detached actor (stays)
    dead_actor = ActorSpec(actor_id=b"\x02" * 16, cls=FN, replay=True)
    dead_creation = j1.spec(actor_creation=dead_actor)
    t.apply(PutActor(ActorEntry(dead_actor, dead_creation, ActorState.DEAD)))
    t.apply(PutActor(ActorEntry(creation.actor_creation, creation, ActorState.ALIVE)))
    t.apply(AppendActorLog(dead_actor.actor_id, 0, b.task_id, b))
    t.apply(AppendActorLog(creation.actor_creation.actor_id, 0, b.task_id, b))

    released, _ = t.apply(ForgetJob(1))
    assert set(t.data["actor_log"]) == {(creation.actor_creation.actor_id, 0)}
    assert set(t.data["actors"]) == {dead_actor.actor_id, creation.actor_creation.actor_id}
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


def test_tables_forget_a_job_s_actor_call_outputs_and_refuse_its_late_put() -> None:
    """Found by the swarm's jobs that end (draws-surface): an actor method
    call has no task row, so ForgetJob missed its outputs' rows (kept for
    good); and a put admitted just before its driver exited had its row
    brought back by an AddLocation landing after ForgetJob."""
    t = Tables()
    j1, j2 = Job(1), Job(2)
    actor = ActorSpec(actor_id=b"\x03" * 16, cls=FN)
    creation = j1.spec(actor_creation=actor)
    t.apply(PutActor(ActorEntry(actor, creation, ActorState.ALIVE)))
    mine = j1.spec(actor_id=actor.actor_id)  # a call of job 1's driver
    theirs = j2.spec(actor_id=actor.actor_id)  # a call of another job's driver, on the same actor
    for call in (mine, theirs):
        t.apply(FinishTask(call.task_id, "n", ((call.return_ids[0], 8),), actor_id=actor.actor_id, job_id=call.job_id))
    released, _ = t.apply(ForgetJob(1))
    assert (mine.return_ids[0], frozenset({"n"})) in released
    assert t.read(Get("objects", mine.return_ids[0])) is None
    assert t.read(Get("objects", theirs.return_ids[0])) is not None  # job 2 lives on: its call's output stays
    assert set(t.data["actor_outputs"]) == {theirs.return_ids[0]}
    # a late put of job 1 is refused; job 2's, and a copy of an existing row, are not
    assert t.apply(AddLocation(j1.put_id(1), "n", 10, job_id=1))[0] is False
    assert t.read(Get("objects", j1.put_id(1))) is None
    assert t.apply(AddLocation(j2.put_id(1), "n", 10, job_id=2))[0] is True


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
    ran_on = {n: [s.task_id for s in done[1] if net.machines[n].scheduler.state_of(s.task_id) == "finished"]
              for n in ("node:0", "node:1")}

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
        # and forgot the history of job 1's tasks that ran there
        assert ran_on[n] and not [t for t in ran_on[n] if net.machines[n].story(t) or net.machines[n].scheduler.state_of(t)], n
    assert all(any(s.return_ids[0] in net.machines[n].objects.store for n in ("node:0", "node:1")) for s in done[2])

    net.send("c:d2", "node:0", ClientDisconnected(client="c:d2"))
    net.run_for(0.5)
    assert {t: len(r) for t, r in (("tasks", rows(net, "tasks")), ("objects", rows(net, "objects")))} == baseline


# ============================================================================ simulator


def _sim_sizes(c) -> dict[str, int]:
    """Rows per table over every shard's tail."""
    out: dict[str, int] = {}
    for shard in c.head.chain.shards.values():
        for name, r in c.replica(shard.config.tail).tables.data.items():
            out[name] = out.get(name, 0) + len(r)
    return out


def test_sim_driver_exit_frees_the_cluster_for_the_next_job_and_the_gcs_forgets():
    from penumbra.sim.cluster import SimCluster
    from penumbra.sim.workloads import TaskModel

    c = SimCluster(nodes=2, cpus=2, validate=True)
    c.wait_ready()
    baseline = _sim_sizes(c)
    d1 = c.driver("node:0")
    specs = [d1.remote(TaskModel(duration=1.0)) for _ in range(200)]
    d1.put(100)
    assert c.run_until(lambda: sum(n.machine.scheduler.busy for n in c.nodes.values()) == 4, 10.0)
    d1.close()
    c.run(c.now + 0.1)
    d2 = c.driver("node:0")
    t0 = c.now
    later = d2.remote(TaskModel(duration=0.01))
    d2.watch(later.return_ids)
    assert c.run_until(lambda: d2.all_ready([later]), 5.0)
    # at once: not after 200 one-second tasks on 4 CPUs (50 s)
    assert c.now - t0 < 2.0
    assert not d2.errors()
    finished = {s.task_id for n in c.nodes.values() for s in specs
                if any(w == "finished" for _, _, w in n.machine.story(s.task_id))}
    assert len(finished) < 10  # the rest never ran
    d2.close()
    c.run(c.now + 1.0)
    assert c.head.ended_jobs == {d1.job_id, d2.job_id} and not c.head.ending
    sizes = _sim_sizes(c)
    for table in ("tasks", "objects", "finished_early", "actor_log"):
        assert sizes[table] == baseline[table], (table, sizes, baseline)
    for n in c.nodes.values():
        s = n.machine.scheduler
        assert not s.tasks and s.available == s.total


# ============================================================================ real processes

SLEEPY_DRIVER = textwrap.dedent("""
    import os, sys, time
    import penumbra as ray

    address, token, pids = sys.argv[1:4]
    ray.init(address=address, _token=token)

    def started(kind):
        open(os.path.join(pids, f"{kind}-{os.getpid()}"), "w").close()

    @ray.remote
    def sleeper():
        started("sleeper")
        time.sleep(60)

    @ray.remote
    def parent():
        started("parent")
        ray.get(sleeper.remote())  # a nested task: it carries the job's id

    def wait_for(n):
        deadline = time.time() + 60
        while len(os.listdir(pids)) < n and time.time() < deadline:
            time.sleep(0.05)

    p = parent.remote()
    wait_for(2)  # the parent runs, blocked on its child, which runs too
    refs = [sleeper.remote() for _ in range(48)]
    wait_for(3)  # the parent lent its CPU: one more sleeper runs
    print("running", len(os.listdir(pids)), flush=True)
    # and exit with 47 tasks queued and 3 running
""")



def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(180)
def test_real_driver_exit_cancels_its_tasks_and_the_next_job_runs_at_once(tmp_path):
    import penumbra as ray
    from penumbra.transports.launch import Cluster

    cluster = Cluster(head_node_args={"num_cpus": 2})
    try:
        script = tmp_path / "driver.py"
        script.write_text(SLEEPY_DRIVER)
        pids = tmp_path / "pids"
        pids.mkdir()
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
        p = subprocess.run([sys.executable, str(script), cluster.address, cluster.token, str(pids)],
                           capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 0 and p.stdout.startswith("running 3"), (p.stdout, p.stderr)
        started = set(os.listdir(pids))
        assert sorted(f.split("-")[0] for f in started) == ["parent", "sleeper", "sleeper"]
        first = {int(f.split("-")[1]) for f in started}

        ray.init(address=cluster.address, _token=cluster.token)

        @ray.remote
        def quick():
            return os.getpid()

        t0 = time.monotonic()
        pid = ray.get(quick.remote(), timeout=30)
        # at once, not after the first job's 50 one-minute tasks
        assert time.monotonic() - t0 < 10
        assert pid not in first
        # the workers that ran the first job's tasks were killed, and none
        # of its queued tasks ever started
        deadline = time.monotonic() + 20
        while any(_alive(q) for q in first) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [q for q in first if _alive(q)], "a worker of the ended job still runs its task"
        assert set(os.listdir(pids)) == started
        # and both CPUs are free again
        deadline = time.monotonic() + 20
        while ray.available_resources().get("CPU") != 2.0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ray.available_resources().get("CPU") == 2.0
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_sim_job_end_while_a_node_dies_still_forgets_the_job():
    """A node that dies before answering JobEnded no longer holds the
    job's rows back; the survivors drop the job's work and rows go."""
    from penumbra.core.layout import ClusterLayout, NodeShape
    from penumbra.sim.cluster import SimCluster
    from penumbra.sim.workloads import TaskModel

    layout = ClusterLayout(nodes=(NodeShape(ResourceSet.of(CPU=2)),) * 3,
                           scheduler=SchedulerConfig(forward_queue_threshold=2))
    c = SimCluster(layout, validate=True)
    c.wait_ready()
    baseline = _sim_sizes(c)
    d1 = c.driver("node:0")
    first = [d1.remote(TaskModel(duration=0.05, outputs=(1000,))) for _ in range(20)]
    second = [d1.remote(TaskModel(duration=5.0), deps=s.return_ids) for s in first]
    assert c.run_until(lambda: all(n.machine.scheduler.busy for n in c.nodes.values()), 10.0)
    d1.close()
    c.crash_node("node:2")
    c.run(c.now + 5.0)
    assert c.head.ended_jobs == {d1.job_id} and not c.head.ending
    sizes = _sim_sizes(c)
    assert sizes["tasks"] == baseline["tasks"] and sizes["objects"] == baseline["objects"], (sizes, baseline)
    for a in ("node:0", "node:1"):
        s = c.nodes[a].machine.scheduler
        assert not s.tasks and s.available == s.total
        assert not [o for s2 in first for o in s2.return_ids if o in c.nodes[a].machine.objects.store]
    # nothing of the ended job ran again after its end (no retry, no rebuild)
    assert not [s for s in second if any(w == "finished" for n in c.nodes.values() if n.alive
                                         for _, _, w in n.machine.story(s.task_id))]


def test_a_node_forgets_the_versions_of_object_rows_it_no_longer_follows(core) -> None:
    """Bounded memory: the GCS client's last-seen version of an object row
    goes when the node unsubscribes (else it grows with every object the
    node ever waited for)."""
    net = core.cluster(nodes=2, behaviour=lambda s, a: ok(0.05))
    inbox = net.add_client("c:d")
    j1 = Job(1)
    s = j1.spec()
    net.send("c:d", "node:1", SubmitTask(client="c:d", spec=s))
    net.send("c:d", "node:0", WatchObjects(client="c:d", req_id=1, object_ids=s.return_ids, fetch=True))
    net.run_for(0.5)
    assert any(isinstance(m, ObjectsReady) for m in inbox)
    n0 = net.machines["node:0"]
    assert s.return_ids[0] in n0.objects.store  # fetched, after following its row
    assert not [k for k in n0.gcs.versions if k[0] == "objects"]


def test_sim_a_lost_job_ended_message_is_sent_again():
    """The head re-sends JobEnded to a node that has not answered (a lost
    message), so the node's work of the job still goes, and then its rows."""
    from penumbra.core.layout import ClusterLayout, NodeShape
    from penumbra.sim.cluster import SimCluster
    from penumbra.sim.faults import FaultSchedule, LinkFault
    from penumbra.sim.workloads import TaskModel

    layout = ClusterLayout(nodes=(NodeShape(ResourceSet.of(CPU=2)),) * 2,
                           scheduler=SchedulerConfig(forward_queue_threshold=2))
    c = SimCluster(layout, validate=True)
    c.wait_ready()
    baseline = _sim_sizes(c)
    d1 = c.driver("node:0")
    for _ in range(20):
        d1.remote(TaskModel(duration=30.0))
    assert c.run_until(lambda: all(n.machine.scheduler.busy == 2 for n in c.nodes.values()), 10.0)
    c.install(FaultSchedule([(0.0, LinkFault(("head",), ("node:1",), drop=1.0, duration=1.5))]), offset=c.now)
    d1.close()
    c.run(c.now + 1.0)
    assert c.head.ending == {d1.job_id: {"node:1"}}  # its JobEnded was lost
    assert c.nodes["node:1"].machine.scheduler.busy == 2
    c.run(c.now + 2.0)
    assert not c.head.ending
    s = c.nodes["node:1"].machine.scheduler
    assert not s.tasks and s.available == s.total
    sizes = _sim_sizes(c)
    assert sizes["tasks"] == baseline["tasks"] and sizes["objects"] == baseline["objects"]
