"""A node's part in direct actor calls (core/actor_direct.py), driven through
memnet: endpoints published and watched (``ActorEndpoint``, ``WatchActor`` ->
``ActorWatched``), and the calls a worker ran recorded as the routed
completion records them (``DirectCallsRan``)."""

from __future__ import annotations

from msgspec.structs import replace

from penumbra.core.ids import actor_id_of, child_task_id
from penumbra.core.messages import (
    ClientDisconnected,
    KillActor,
    KillActorRequest,
    ObjectsReady,
    ReleaseObjects,
    SubmitTask,
    WatchObjects,
    WorkerCrashed,
)
from penumbra.core.msg_direct import (
    ActorEndpoint,
    ActorWatched,
    DirectCallsRan,
    DirectOutput,
    DirectRan,
    EndpointRow,
    WatchActor,
    endpoint_key,
)
from penumbra.core.records import ActorState, ErrorInfo, ErrorKind
from penumbra.core.specs import ActorSpec, FunctionDescriptor, ResourceSet, TaskSpec


class World:
    def __init__(self, core, **actor) -> None:
        self.core = core
        self.net = core.cluster(nodes=1, resources=[ResourceSet.of(CPU=4)])
        self.inbox = self.net.add_client("c:d")
        s = core.spec()
        a = ActorSpec(actor_id=actor_id_of(s.task_id), cls=FunctionDescriptor(b"C", "C"), **actor)
        self.aid = a.actor_id
        self.net.send("c:d", "node:0", SubmitTask(client="c:d", spec=replace(s, actor_creation=a)))
        self.net.run_for(0.2)
        self.seq = 0

    @property
    def node(self):
        return self.net.machines["node:0"]

    @property
    def hosted(self):
        return self.node.host.actors[self.aid]

    @property
    def kv(self):
        return self.net.machines["gcs:0:0"].tables.data["kv"]

    def gcs(self, table, key):
        return self.net.machines["gcs:0:0"].tables.data[table].get(key)

    def call(self) -> TaskSpec:
        tid = child_task_id(self.core.root, 5000 + self.seq)
        spec = TaskSpec(task_id=tid, job_id=1, parent_task_id=self.core.root,
                        function=FunctionDescriptor(b"C.m", "C.m"), max_retries=0,
                        actor_id=self.aid, caller_id="c:d", sequence_no=self.seq, method="m")
        self.seq += 1
        return spec

    def watched(self) -> list[ActorWatched]:
        return [m for m in self.inbox if type(m) is ActorWatched]

    def ready(self) -> dict:
        out = {}
        for m in self.inbox:
            if type(m) is ObjectsReady:
                out.update(dict(m.objects))
        return out

    def endpoint(self, ep="unix:/w", inc=None, worker=None) -> None:
        h = self.hosted
        self.net.send(worker or h.worker, "node:0", ActorEndpoint(
            worker_id=worker or h.worker, actor_id=self.aid, incarnation=h.entry.incarnation if inc is None else inc,
            endpoint=ep))

    def ran(self, *entries, inc=None, worker=None) -> None:
        h = self.hosted
        self.net.send(worker or h.worker, "node:0", DirectCallsRan(
            worker_id=worker or h.worker, actor_id=self.aid,
            incarnation=h.entry.incarnation if inc is None else inc, entries=tuple(entries)))


def ok(spec: TaskSpec, data=b"12345678") -> DirectRan:
    return DirectRan(spec=spec, outputs=tuple(DirectOutput(object_id=o, size=len(data), data=data)
                                              for o in spec.return_ids), duration=0.001)


def test_a_watch_gets_the_row_then_the_published_endpoint(core) -> None:
    w = World(core)
    w.net.send("c:d", "node:0", WatchActor(client="c:d", actor_id=w.aid))
    w.net.run_for(0.1)
    first = w.watched()
    assert first and first[-1].entry.state is ActorState.ALIVE and first[-1].endpoint is None
    w.endpoint("unix:/w0")
    w.net.run_for(0.1)
    last = w.watched()[-1]
    assert last.endpoint == EndpointRow(actor_id=w.aid, incarnation=0, endpoint="unix:/w0", node="node:0")
    assert w.kv[endpoint_key(w.aid)] == last.endpoint  # published in the GCS
    # asked again (after a lost connection): answered again
    n = len(w.watched())
    w.net.send("c:d", "node:0", WatchActor(client="c:d", actor_id=w.aid))
    w.net.run_for(0.1)
    assert len(w.watched()) > n and w.watched()[-1].endpoint == last.endpoint


def test_an_endpoint_from_a_worker_that_is_not_the_instance_is_ignored(core) -> None:
    w = World(core)
    w.endpoint("unix:/old", inc=7)
    w.endpoint("unix:/other", worker="node:0/w99")
    w.net.run_for(0.1)
    assert endpoint_key(w.aid) not in w.kv


def test_calls_that_ran_are_recorded_as_routed_results_are(core) -> None:
    w = World(core)
    good, bad = w.call(), w.call()
    error = ErrorInfo(ErrorKind.TASK_ERROR, "boom", task_name="C.m")
    w.ran(ok(good), DirectRan(spec=bad, error=error, duration=0.002))
    assert w.hosted.releasing.keys() == set()  # (not yet delivered)
    w.net.run_for(0.1)
    node = w.node
    oid = good.return_ids[0]
    assert oid in node.objects.store.objects
    row = w.gcs("objects", oid)
    assert row.created and "node:0" in row.locations and row.actor_id == w.aid
    assert w.gcs("objects", bad.return_ids[0]).error == error
    # (a method call has no task row, routed or direct: its outputs' job is kept for ForgetJob)
    assert w.gcs("tasks", good.task_id) is None and w.gcs("actor_outputs", oid) == 1
    assert any("ran directly on actor worker" in line for _, _, line in node.story(good.task_id))
    bars = [r for r in node.timeline.snapshot() if r.task_id in (good.task_id, bad.task_id)]
    assert sorted(r.status for r in bars) == ["ok", "task_error"]
    assert not w.hosted.releasing  # (records acknowledged)
    # another client's get finds them through the node
    w.net.send("c:d", "node:0", WatchObjects(client="c:d", req_id=1, object_ids=(oid, bad.return_ids[0])))
    w.net.run_for(0.1)
    got = w.ready()
    assert got[oid].error is None and got[oid].size == 8 and got[bad.return_ids[0]].error == error


def test_a_superseded_instances_report_is_dropped(core) -> None:
    w = World(core)
    s = w.call()
    w.ran(ok(s), inc=3)
    w.net.run_for(0.1)
    assert s.return_ids[0] not in w.node.objects.store.objects
    assert w.gcs("objects", s.return_ids[0]) is None


def test_a_result_freed_before_its_report_is_freed_once_recorded(core) -> None:
    w = World(core)
    s = w.call()
    oid = s.return_ids[0]
    w.net.send("c:d", "node:0", ReleaseObjects(client="c:d", object_ids=(oid,), free=True))
    w.net.run_for(0.05)
    w.ran(ok(s))
    w.net.run_for(0.1)
    assert oid not in w.node.objects.store.objects  # freed as soon as it was recorded
    assert "node:0" not in w.gcs("objects", oid).locations
    # one freed after its report is freed the ordinary way
    t = w.call()
    w.ran(ok(t))
    w.net.run_for(0.1)
    assert t.return_ids[0] in w.node.objects.store.objects
    w.net.send("c:d", "node:0", ReleaseObjects(client="c:d", object_ids=t.return_ids, free=True))
    w.net.run_for(0.1)
    assert t.return_ids[0] not in w.node.objects.store.objects


def test_restart_and_death_reach_the_watchers(core) -> None:
    w = World(core, max_restarts=1)
    w.net.send("c:d", "node:0", WatchActor(client="c:d", actor_id=w.aid))
    w.endpoint("unix:/w0")
    w.net.run_for(0.1)
    w.net.inject("node:0", WorkerCrashed(worker_id=w.hosted.worker, reason="killed"))
    w.net.run_for(0.5)
    states = [(m.entry.state, m.entry.incarnation) for m in w.watched()]
    assert (ActorState.RESTARTING, 1) in states and states[-1] == (ActorState.ALIVE, 1)
    assert w.watched()[-1].endpoint.incarnation == 0  # (the new one is not up yet)
    w.endpoint("unix:/w1")
    w.net.run_for(0.1)
    assert w.watched()[-1].endpoint.endpoint == "unix:/w1"
    w.net.inject("node:0", WorkerCrashed(worker_id=w.hosted.worker, reason="killed again"))
    w.net.run_for(0.5)
    assert w.watched()[-1].entry.state is ActorState.DEAD
    assert w.aid not in w.node.direct.watchers  # (final: the watch ends)
    assert endpoint_key(w.aid) not in w.kv  # (and nobody needs the endpoint row any more)
    assert ("kv", endpoint_key(w.aid)) not in w.net.machines["gcs:0:0"].tables.subs


def test_put_endpoint_never_goes_back_to_an_older_incarnation(core) -> None:
    from penumbra.core.tables import PutEndpoint, Tables

    t = Tables()
    key = endpoint_key(actor_id_of(core.spec().task_id))
    new = EndpointRow(actor_id=actor_id_of(core.spec().task_id), incarnation=2, endpoint="b")
    old = replace(new, incarnation=1, endpoint="a")
    assert t.apply(PutEndpoint(key, new))[0] == new
    assert t.apply(PutEndpoint(key, old))[0] == new  # refused: returns what is stored
    assert t.data["kv"][key] == new


def test_a_disconnected_client_stops_watching(core) -> None:
    w = World(core)
    w.net.send("c:d", "node:0", WatchActor(client="c:d", actor_id=w.aid))
    w.net.run_for(0.1)
    assert w.node.direct.watchers == {w.aid: {"c:d"}}
    w.net.send("c:d", "node:0", ClientDisconnected(client="c:d"))
    w.net.run_for(0.1)
    assert not w.node.direct.watchers


def test_exit_waits_for_the_records_of_calls_that_ran_directly(core) -> None:
    w = World(core)
    s = w.call()
    wid = w.hosted.worker
    sent = []
    real = w.net._route

    def spy(src, cmd):
        if type(cmd.msg) is KillActorRequest:
            row = w.gcs("objects", s.return_ids[0])
            sent.append(row is not None and row.created)
        return real(src, cmd)

    w.net._route = spy
    # the worker reports, then ends the actor (EndActor -> KillActor(exiting))
    w.ran(ok(s))
    w.net.send(wid, "node:0", KillActor(client=wid, actor_id=w.aid, exiting=w.call().task_id))
    w.net.run_for(0.5)
    assert sent == [True]  # the head is asked to end it only once the record is in
    assert w.gcs("objects", s.return_ids[0]).created


def test_a_lost_row_notice_does_not_strand_a_watcher_on_another_node(core) -> None:
    from penumbra.core.messages import GcsNotify

    net = core.cluster(nodes=2)
    box = net.add_client("c:d")
    s = core.spec()
    a = ActorSpec(actor_id=actor_id_of(s.task_id), cls=FunctionDescriptor(b"C", "C"), max_restarts=1)
    net.send("c:d", "node:0", SubmitTask(client="c:d", spec=replace(s, actor_creation=a)))
    net.run_for(0.3)
    host = net.machines["head"].actors.actors[a.actor_id].node
    other = "node:1" if host == "node:0" else "node:0"
    net.send("c:d", other, WatchActor(client="c:d", actor_id=a.actor_id))
    net.run_for(0.1)
    # every notice of the actor's row to the watching node is lost from now on
    net.drop_fn = lambda src, to, msg: to == other and type(msg) is GcsNotify and msg.table == "actors"
    h = net.machines[host].host.actors[a.actor_id]
    net.inject(host, WorkerCrashed(worker_id=h.worker, reason="killed"))
    net.run_for(3.0)
    seen = [(m.entry.state, m.entry.incarnation) for m in box if type(m) is ActorWatched]
    assert seen[-1] == (ActorState.ALIVE, 1)  # (re-read by the node's refresh)


def _carry(w: World, cmds, skip_skips: bool = False) -> None:
    """Carry out a client's ``ActorCaller`` commands as the transport does
    (transports/direct_caller.py), over memnet."""
    from penumbra.core.actor_caller import Failed, Reroute, Skipped, StoreFailure, Watch
    from penumbra.core.msg_direct import CallsSkipped, DirectCallFailed

    for c in cmds:
        t = type(c)
        if t is Reroute:
            w.net.send("c:d", "node:0", SubmitTask(client="c:d", spec=c.spec))
        elif t is Skipped and not skip_skips:
            w.net.send("c:d", "node:0", CallsSkipped(client="c:d", actor_id=c.actor_id, caller_id=c.caller_id,
                                                    after=c.after, before=c.before))
        elif t is StoreFailure:
            w.net.send("c:d", "node:0", DirectCallFailed(client="c:d", spec=c.spec, error=c.error, attempt=c.attempt))
        else:
            assert t in (Failed, Watch, Skipped), c


def test_calls_handed_to_the_routed_path_do_not_wait_for_those_failed_at_the_caller(core) -> None:
    """A client's direct caller fails call 1 itself (cancelled before it was
    sent), then learns the actor is ``replay=True`` and hands 0 and 2 to the
    routed path.  The node's router never gets 1: without being told
    (``CallsSkipped``), it holds 2 behind the gap forever (real swarm seed 4,
    avoided since only by the handle's replay flag); told, it runs 2.  And
    1's error is stored on the node (``DirectCallFailed``), where another
    process's get finds it."""
    from penumbra.core.actor_caller import ActorCaller

    w = World(core, replay=True)
    caller = ActorCaller("c:d")
    calls = [w.call() for _ in range(3)]
    for s in calls:
        caller.submit(s, 0.0)
    found, failed = caller.cancel(calls[1].task_id, 0.0)
    assert found
    _carry(w, failed)
    cmds = caller.row(w.aid, w.gcs("actors", w.aid), 0.0)
    _carry(w, cmds, skip_skips=True)
    w.net.run_for(0.5)
    store = w.node.objects.store.objects
    assert calls[0].return_ids[0] in store
    assert calls[2].return_ids[0] not in store  # (the bug: held behind 1, which never comes)
    _carry(w, [c for c in cmds if type(c).__name__ == "Skipped"])
    w.net.run_for(0.5)
    assert calls[2].return_ids[0] in store
    assert w.gcs("objects", calls[1].return_ids[0]).error.kind is ErrorKind.TASK_CANCELLED
    w.net.send("c:d", "node:0", WatchObjects(client="c:d", req_id=7, object_ids=calls[1].return_ids))
    w.net.run_for(0.1)
    assert w.ready()[calls[1].return_ids[0]].error.kind is ErrorKind.TASK_CANCELLED
