"""Actors through memnet: ordered calls, concurrency, restarts, death, names,
kill, and paper-style replay with and without checkpoints."""

from __future__ import annotations

import pytest
from msgspec.structs import replace

from penumbra.core.ids import actor_id_of, child_task_id
from penumbra.core.messages import (
    ActorCall,
    ActorRegistered,
    KillActor,
    ObjectsReady,
    SubmitTask,
    WatchObjects,
    WorkerCrashed,
)
from penumbra.core.records import ActorState, ErrorKind
from penumbra.core.specs import ActorSpec, FunctionDescriptor, ResourceSet, TaskSpec
from penumbra.verification.memnet import crashes, ok


class Actors:
    """Builds actor creation specs and ordered method calls; records runs."""

    def __init__(self, core, duration=0.01) -> None:
        self.core = core
        self.duration = duration
        self.seq: dict = {}
        self.log: list[tuple] = []  # (time, actor, caller, seq, method, attempt)
        self.net = None

    def behaviour(self, spec, attempt):
        if spec.actor_id is not None:
            self.log.append((self.net.now, spec.actor_id, spec.caller_id, spec.sequence_no, spec.method, attempt))
            if spec.method == "die" and attempt == 0:
                return crashes(self.duration)
            if spec.method == "slow":
                return ok(1.0)
        return ok(self.duration)

    def cluster(self, **kw):
        self.net = self.core.cluster(behaviour=self.behaviour, **kw)
        self.inbox = self.net.add_client("c:d")
        return self.net

    def create(self, node="node:0", client="c:d", **kw) -> ActorId:
        s = self.core.spec()
        a = ActorSpec(actor_id=actor_id_of(s.task_id), cls=FunctionDescriptor(b"C", "C"), **kw)
        self.net.send(client, node, SubmitTask(client=client, spec=replace(s, actor_creation=a)))
        return a.actor_id

    def call(self, aid, method="m", caller="c:d", node="node:0", send=True) -> TaskSpec:
        n = self.seq.get((aid, caller), 0)
        self.seq[(aid, caller)] = n + 1
        tid = child_task_id(self.core.root, self.core.count)
        self.core.count += 1
        spec = TaskSpec(task_id=tid, job_id=1, parent_task_id=self.core.root,
                        function=FunctionDescriptor(b"C." + method.encode(), "C." + method),
                        actor_id=aid, caller_id=caller, sequence_no=n, method=method)
        if send:
            self.net.send(caller if caller.startswith("c:") else "c:d", node, SubmitTask(client=caller, spec=spec))
        return spec

    def watch(self, specs, req_id=1, node="node:0"):
        oids = tuple(s.return_ids[0] for s in specs)
        self.net.send("c:d", node, WatchObjects(client="c:d", req_id=req_id, object_ids=oids))

    def results(self):
        out = {}
        for m in self.inbox:
            if isinstance(m, ObjectsReady):
                out.update(dict(m.objects))
        return out

    def runs(self, aid=None, method=None):
        return [(c, s, a) for _, ac, c, s, m, a in self.log
                if (aid is None or ac == aid) and (method is None or m == method)]

    def entry(self, aid):
        return self.net.machines["head"].actors.actors[aid]

    def host_of(self, aid):
        node = self.entry(aid).node
        return node, self.net.machines[node].host.actors[aid]


def test_calls_run_in_order_per_caller_despite_reordering(core) -> None:
    A = Actors(core)
    net = A.cluster(nodes=2)
    aid = A.create()
    net.run_for(0.2)
    held = []

    def hold(src, to, msg):  # hold back the first calls of caller c:d
        if isinstance(msg, ActorCall) and msg.spec.caller_id == "c:d" and msg.spec.sequence_no < 5 and msg.attempt == 0:
            held.append((src, to, msg))
            return True
        return False

    net.drop_fn = hold
    calls = [A.call(aid) for _ in range(10)]
    other = [A.call(aid, caller="c:e") for _ in range(5)]
    A.watch(calls + other)
    net.run_for(0.5)
    assert len(held) == 5
    assert [s for c, s, _ in A.runs(aid) if c == "c:d"] == []  # nothing ran out of order
    assert [s for c, s, _ in A.runs(aid) if c == "c:e"] == [0, 1, 2, 3, 4]  # not blocked by c:d
    net.drop_fn = None
    for src, to, msg in reversed(held):
        net.send(src, to, msg)
    net.run_for(1.0)
    assert [s for c, s, _ in A.runs(aid) if c == "c:d"] == list(range(10))
    assert all(info.error is None for info in A.results().values()) and len(A.results()) == 15


def test_max_concurrency(core) -> None:
    A = Actors(core)
    net = A.cluster(nodes=1, resources=[ResourceSet.of(CPU=4)])
    aid = A.create(max_concurrency=3)
    net.run_for(0.2)
    calls = [A.call(aid, "slow") for _ in range(7)]
    A.watch(calls)
    net.run_for(5.0)
    starts = sorted(t for t, *_ in A.log)
    t0 = starts[0]
    waves = [round(t - t0) for t in starts]
    assert waves == [0, 0, 0, 1, 1, 1, 2]
    assert len(A.results()) == 7


def test_restart_fails_in_flight_calls_at_most_once(core) -> None:
    A = Actors(core)
    net = A.cluster(nodes=2)
    aid = A.create(max_restarts=1, max_task_retries=0)
    net.run_for(0.2)
    before = [A.call(aid) for _ in range(2)]
    die = A.call(aid, "die")
    A.watch(before + [die])
    net.run_for(1.0)
    res = A.results()
    assert all(res[s.return_ids[0]].error is None for s in before)
    err = res[die.return_ids[0]].error
    assert err.kind is ErrorKind.ACTOR_DIED and "max_task_retries=0" in err.message
    assert A.runs(aid, "die") == [("c:d", 2, 0)]  # ran once, not retried
    e = A.entry(aid)
    assert e.state is ActorState.ALIVE and e.incarnation == 1 and e.restarts == 1
    # the restarted actor serves new calls
    after = [A.call(aid) for _ in range(3)]
    A.watch(after, req_id=2)
    net.run_for(1.0)
    assert all(A.results()[s.return_ids[0]].error is None for s in after)


def test_restart_retries_in_flight_calls_when_allowed(core) -> None:
    A = Actors(core)
    net = A.cluster(nodes=2)
    aid = A.create(max_restarts=1, max_task_retries=2)
    net.run_for(0.2)
    calls = [A.call(aid), A.call(aid, "die"), A.call(aid), A.call(aid)]
    A.watch(calls)
    net.run_for(2.0)
    res = A.results()
    assert len(res) == 4 and all(info.error is None for info in res.values())
    assert A.runs(aid, "die") == [("c:d", 1, 0), ("c:d", 1, 1)]
    assert [s for c, s, _ in A.runs(aid, "m")][-2:] == [2, 3]


def test_dead_after_max_restarts(core) -> None:
    A = Actors(core)
    net = A.cluster(nodes=2)
    aid = A.create(max_restarts=1)
    net.run_for(0.2)
    first = A.call(aid, "die")
    A.watch([first])
    net.run_for(1.0)
    second = A.call(aid, "die")
    A.watch([second], req_id=2)
    net.run_for(1.0)
    e = A.entry(aid)
    assert e.state is ActorState.DEAD and e.restarts == 1
    assert "max_restarts=1" in e.death_cause.message
    late = A.call(aid)
    A.watch([late], req_id=3)
    net.run_for(0.5)
    err = A.results()[late.return_ids[0]].error
    assert err.kind is ErrorKind.ACTOR_DIED and "max_restarts=1" in err.message
    for node in ("node:0", "node:1"):
        sched = net.machines[node].scheduler
        assert sched.available == sched.total  # nothing held by the dead actor


def test_actor_resources_held_for_lifetime(core) -> None:
    A = Actors(core)
    net = A.cluster(nodes=1, resources=[ResourceSet.of(CPU=2)])
    A.create(resources=ResourceSet.of(CPU=1.5))
    net.run_for(0.2)
    sched = net.machines["node:0"].scheduler
    assert sched.available == ResourceSet.of(CPU=0.5)


def test_named_actor_conflict(core) -> None:
    A = Actors(core)
    net = A.cluster(nodes=2)
    first = A.create(name="svc", namespace="ns")
    net.run_for(0.2)
    second = A.create(name="svc", namespace="ns", node="node:1")
    third = A.create(name="svc", namespace="other", node="node:1")
    net.run_for(0.2)
    regs = {m.actor_id: m for m in A.inbox if isinstance(m, ActorRegistered)}
    assert regs[first].error == "" and regs[third].error == ""
    assert regs[second].holder == first and "already exists" in regs[second].error
    assert "get_actor('svc')" in regs[second].error
    assert second not in net.machines["head"].actors.actors  # never created


def test_kill_fails_pending_calls_and_frees_name(core) -> None:
    A = Actors(core)
    net = A.cluster(nodes=2)
    aid = A.create(name="svc", max_restarts=5)
    net.run_for(0.2)
    slow = [A.call(aid, "slow") for _ in range(3)]
    A.watch(slow)
    net.run_for(0.1)
    net.send("c:d", "node:0", KillActor(client="c:d", actor_id=aid))
    net.run_for(1.0)
    e = A.entry(aid)
    assert e.state is ActorState.DEAD and "killed" in e.death_cause.message
    res = A.results()
    assert all(res[s.return_ids[0]].error.kind is ErrorKind.ACTOR_DIED for s in slow)
    # the name is free again
    again = A.create(name="svc")
    net.run_for(0.2)
    regs = [m for m in A.inbox if isinstance(m, ActorRegistered) and m.actor_id == again]
    assert regs and regs[0].error == ""


def _crash_actor_worker(A, aid):
    node, hosted = A.host_of(aid)
    A.net.workers[hosted.worker] = (node, False)
    A.net.inject(node, WorkerCrashed(worker_id=hosted.worker, reason="killed by test"))


@pytest.mark.parametrize("interval, replayed", [(0, 5), (2, 1), (5, 0)])
def test_replay_after_restart(core, interval, replayed) -> None:
    A = Actors(core)
    net = A.cluster(nodes=2)
    aid = A.create(max_restarts=1, replay=True, checkpoint_interval=interval)
    net.run_for(0.2)
    calls = [A.call(aid) for _ in range(5)]
    A.watch(calls)
    net.run_for(0.5)
    assert len(A.results()) == 5
    _crash_actor_worker(A, aid)
    net.run_for(1.0)
    head = net.machines["head"]
    assert head.actors.replayed == replayed
    e = A.entry(aid)
    assert e.state is ActorState.ALIVE and e.incarnation == 1
    # the replayed calls ran again, in log order, after the restart
    seqs = [s for c, s, _ in A.runs(aid)]
    assert seqs == list(range(5)) + list(range(5 - replayed, 5))
    # and new calls continue the log
    more = A.call(aid)
    A.watch([more], req_id=2)
    net.run_for(0.5)
    assert A.results()[more.return_ids[0]].error is None
    assert A.host_of(aid)[1].executed == 6


def test_dead_actor_drops_its_calls_input_subscriptions(core) -> None:
    A = Actors(core)
    net = A.cluster(nodes=1)
    aid = A.create(max_restarts=0)
    net.run_for(0.2)
    never = core.spec().return_ids[0]  # an input that never appears
    spec = A.call(aid, send=False)
    spec = replace(spec, dependencies=(never,))
    net.send("c:d", "node:0", SubmitTask(client="c:d", spec=spec))
    net.run_for(0.1)
    node = net.machines["node:0"]
    assert never in node.objects.wants
    _crash_actor_worker(A, aid)
    net.run_for(0.01)  # well before any GCS client retry
    assert never not in node.objects.wants
    tail = net.machines["gcs:0:0"]
    assert ("objects", never) not in tail.tables.subs


@pytest.mark.parametrize("interval, replayed", [(0, 5), (2, 1)])
def test_replay_after_restart_with_several_gcs_shards(core, interval, replayed) -> None:
    # the log of an actor lives on the actor's shard, its calls' task rows on
    # theirs: the replay must not depend on the two being the same shard
    A = Actors(core)
    net = A.cluster(nodes=2, shards=4)
    aid = A.create(max_restarts=1, replay=True, checkpoint_interval=interval)
    net.run_for(0.2)
    calls = [A.call(aid) for _ in range(5)]
    A.watch(calls)
    net.run_for(0.5)
    assert len(A.results()) == 5
    _crash_actor_worker(A, aid)
    net.run_for(1.0)
    assert net.machines["head"].actors.replayed == replayed
    seqs = [s for c, s, _ in A.runs(aid)]
    assert seqs == list(range(5)) + list(range(5 - replayed, 5))


@pytest.mark.parametrize("replay", [False, True])
def test_actor_on_a_dead_node_restarts_once(core, replay) -> None:
    # the node hosting a live actor dies: the head restarts the actor (with
    # replay when asked), and the creation task's row, still pending on the
    # dead node, must not start a second copy of the same incarnation
    from penumbra.core.messages import NodeDied

    A = Actors(core)
    net = A.cluster(nodes=3)
    aid = A.create(node="node:1", max_restarts=1, replay=replay)
    net.run_for(0.2)
    calls = [A.call(aid) for _ in range(3)]
    A.watch(calls)
    net.run_for(0.5)
    assert A.entry(aid).node == "node:1" and len(A.results()) == 3
    net.crash("node:1")
    net.inject("head", NodeDied(node_id="node:1"))
    net.run_for(1.5)
    hosts = [a for a, m in net.machines.items() if a.startswith("node:") and aid in m.host.actors]
    assert len(hosts) == 1, hosts
    e = A.entry(aid)
    assert e.state is ActorState.ALIVE and e.incarnation == 1 and e.node == hosts[0]
    assert net.machines["head"].actors.replayed == (3 if replay else 0)


def test_restart_while_first_creation_still_queued_is_not_lost(core) -> None:
    """kill(no_restart=False) of an actor whose creation is still waiting for
    a CPU: the head's restart lands on the node that holds the queued
    creation, which must create the newer incarnation (a swarm find: the
    restart was once taken for a duplicate and the actor never came up)."""
    A = Actors(core)
    net = A.cluster(nodes=1, resources=[ResourceSet.of(CPU=1)])
    blocker = A.create(max_restarts=0, resources=ResourceSet.of(CPU=1))  # holds the CPU
    net.run_for(0.2)
    assert A.entry(blocker).state is ActorState.ALIVE
    aid = A.create(max_restarts=-1)
    net.run_for(0.2)
    assert A.entry(aid).state is ActorState.PENDING  # its creation waits for the CPU
    calls = [A.call(aid) for _ in range(3)]
    A.watch(calls)
    net.send("c:d", "node:0", KillActor(client="c:d", actor_id=aid, no_restart=False))
    net.run_for(0.5)
    assert A.entry(aid).incarnation == 1
    net.send("c:d", "node:0", KillActor(client="c:d", actor_id=blocker))  # frees the CPU
    net.run_for(2.0)
    e = A.entry(aid)
    assert e.state is ActorState.ALIVE and e.incarnation == 1
    res = A.results()
    assert [res[s.return_ids[0]].error for s in calls] == [None, None, None]
    assert [s for c, s, _ in A.runs(aid)] == [0, 1, 2]


def test_replay_call_whose_record_died_with_its_node_is_replayed_not_lost(core) -> None:
    """A replay actor's host logs two calls but dies before its records of
    their outputs reach the GCS.  Their caller must not be told they are
    done before the records land (it then waited forever: swarm seeds 395,
    959).  The checkpoint due after them waits for those records, so it was
    never taken: the restarted actor replays both calls from the log, which
    records their outputs again, and their gets return values (taken
    before the records landed, the checkpoint made them unrecoverable:
    ObjectLostError, strategy-drawn plan 465308); later calls go on
    exactly."""
    from penumbra.core.messages import GcsWrite, NodeDied
    from penumbra.core.tables import FinishTask

    A = Actors(core)
    net = A.cluster(nodes=3)
    aid = A.create(node="node:1", max_restarts=-1, max_task_retries=-1, replay=True, checkpoint_interval=2)
    net.run_for(0.2)
    assert A.entry(aid).node == "node:1"

    def lose_records(src, to, msg):
        return src == "node:1" and isinstance(msg, GcsWrite) and isinstance(msg.op, FinishTask)

    net.drop_fn = lose_records
    calls = [A.call(aid) for _ in range(2)]
    A.watch(calls)
    net.run_for(0.5)
    assert [s for c, s, _ in A.runs(aid)] == [0, 1] and A.results() == {}
    net.crash("node:1")
    net.inject("head", NodeDied(node_id="node:1"))
    net.drop_fn = None
    net.run_for(2.0)
    e = A.entry(aid)
    assert e.state is ActorState.ALIVE and e.incarnation == 1 and e.node != "node:1"
    assert e.checkpoint_index == 0  # (never taken: the records did not land)
    res = A.results()
    assert [res[s.return_ids[0]].error for s in calls] == [None, None]
    more = A.call(aid)
    A.watch([more], req_id=2)
    net.run_for(0.5)
    assert A.results()[more.return_ids[0]].error is None
    assert [s for c, s, _ in A.runs(aid)] == [0, 1, 0, 1, 2]  # replayed once each, then the next call


@pytest.mark.parametrize("what", ["crash", "kill"])
def test_head_acts_on_an_actor_whose_table_notice_is_late(core, what) -> None:
    """The head learns actors from its subscription to the actor table; a
    report (worker died) or a kill that arrives before the notice must not
    be ignored: the head reads the row and acts (the real daemon once lost
    the head's first subscription, and a crashed actor stayed ALIVE)."""
    from penumbra.core.messages import GcsNotify

    A = Actors(core)
    net = A.cluster(nodes=1)
    net.drop_fn = lambda src, to, msg: to == "head" and isinstance(msg, GcsNotify) and msg.table == "actors"
    aid = A.create(max_restarts=1)
    net.run_for(0.3)
    head = net.machines["head"]
    assert aid not in head.actors.actors  # the head has not heard of it
    host = net.machines["node:0"].host
    if what == "crash":
        wid = host.actors[aid].worker
        A.net.workers[wid] = ("node:0", False)
        A.net.inject("node:0", WorkerCrashed(worker_id=wid, reason="killed by test"))
        net.run_for(1.0)
        e = head.actors.actors[aid]
        assert e.incarnation == 1 and e.restarts == 1
        assert host.actors[aid].entry.incarnation == 1  # running again
    else:
        net.send("c:d", "node:0", KillActor(client="c:d", actor_id=aid))
        net.run_for(1.0)
        assert head.actors.actors[aid].state is ActorState.DEAD
        assert aid not in net.machines["node:0"].host.actors


def test_a_restart_on_the_node_still_hosting_the_older_instance(core) -> None:
    """The head restarts a killed actor on the node that still hosts its
    older instance: the stop (and the row's notice) and the start crossed,
    as delayed messages may.  The newer instance takes over there and the
    older one goes, its resources released (they leaked, and the older
    worker's death was taken for the newer instance's: swarm seeds 1870,
    2039; validate() runs after every step).  A start older than the
    instance there is refused."""
    from penumbra.core.messages import GcsNotify, StartActor, StopActor

    A = Actors(core)
    net = A.cluster(nodes=1)
    aid = A.create(max_restarts=-1)
    net.run_for(0.3)
    host = net.machines["node:0"].host
    first = host.actors[aid]
    held = []

    def hold(src, to, msg):  # the stop and the row's notices come late
        if to == "node:0" and (isinstance(msg, StopActor) or (isinstance(msg, GcsNotify) and msg.table == "actors")):
            held.append((src, to, msg))
            return True
        return False

    net.drop_fn = hold
    net.send("c:d", "node:0", KillActor(client="c:d", actor_id=aid, no_restart=False))
    net.run_for(0.5)
    now = host.actors[aid]
    assert now.entry.incarnation == 1 and now.worker != first.worker
    assert first.worker not in host.by_worker and not net.workers[first.worker][1]  # killed
    net.inject("node:0", StartActor(entry=replace(first.entry, state=ActorState.RESTARTING)))  # incarnation 0, late
    net.drop_fn = None
    for src, to, msg in held:
        net.send(src, to, msg)
    net.run_for(0.3)
    assert host.actors[aid] is now and list(host.by_worker.values()) == [aid]
    call = A.call(aid)
    A.watch([call])
    net.run_for(0.3)
    assert A.results()[call.return_ids[0]].error is None


def test_sequential_actor_calls_are_sent_ahead_and_fail_together(core) -> None:
    """A max_concurrency=1 actor's host sends calls ahead to its worker (which
    runs them in arrival order), up to PIPELINE_DEPTH; a replay actor's host
    does not (its checkpoints must hold exactly the calls before them).  When
    the worker dies, every call it held fails (at-most-once by default)."""
    from penumbra.core.actors import PIPELINE_DEPTH

    A = Actors(core)
    net = A.cluster(nodes=1)
    seq = A.create(max_restarts=1)
    rep = A.create(max_restarts=1, replay=True)
    net.run_for(0.3)
    calls = [A.call(seq, "slow") for _ in range(PIPELINE_DEPTH + 4)]
    A.call(rep, "slow"), A.call(rep, "slow")
    A.watch(calls)
    net.run_for(0.1)
    host = net.machines["node:0"].host
    assert len(host.actors[seq].running) == PIPELINE_DEPTH
    assert len(host.actors[rep].running) == 1
    _crash_actor_worker(A, seq)
    net.run_for(2.0)
    res = A.results()
    # every call already sent to the dead instance fails, started or not
    # (Ray's at-most-once default: a call submitted to an actor that
    # became unreachable reports RayActorError)
    assert all(res[s.return_ids[0]].error.kind is ErrorKind.ACTOR_DIED for s in calls)
