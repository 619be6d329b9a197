"""The client machine (``penumbra.core.client``): what a driver waits for.

Unit tests drive it by hand; a Hypothesis state machine drives it with any
interleaving of requests, node reports (duplicate, late, for ids it never
asked about), timers, give-ups and the connection ending, and checks the
rules of its module doc: every waiter ends exactly once, nothing waits on a
connection that is gone, a report counts once.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from penumbra.core.client import (
    LOST,
    SHUT_DOWN,
    ClientMachine,
    ConnectionLost,
    Fail,
    Report,
    Resolve,
    ShutDown,
    TimedOut,
)
from penumbra.core.ids import ActorId, ObjectId
from penumbra.core.messages import (
    ActorRegistered,
    CancelWatch,
    ClientGcsReply,
    ClientGcsRequest,
    ClusterStatusRequest,
    NodeDied,
    ObjectsReady,
    PutDone,
    Send,
    SetTimer,
    SubmitTask,
    TimerFired,
    WatchObjects,
)
from penumbra.core.records import ObjectInfo
from penumbra.core.tables import Get

OIDS = [ObjectId(bytes([i]) * 20) for i in range(1, 7)]
INFO = ObjectInfo(size=1)


def _oids(n: int) -> list[ObjectId]:
    return OIDS[:n]


def _gcs(m: ClientMachine):
    return lambda rid: ClientGcsRequest(client=m.client_id, req_id=rid, request=Get("kv", "k"))


def _ends(cmds) -> list:
    return [c for c in cmds if type(c) in (Resolve, TimedOut, Fail)]


def _sent(cmds) -> list:
    return [c.msg for c in cmds if type(c) is Send]


@pytest.fixture
def m() -> ClientMachine:
    return ClientMachine("driver:1", "node:0")


# ---------------------------------------------------------------- requests


def test_a_request_is_sent_and_its_reply_resolves_it_once(m):
    rid, cmds = m.request("w", _gcs(m))
    (msg,) = _sent(cmds)
    assert type(msg) is ClientGcsRequest and msg.req_id == rid and cmds[0].to == "node:0"
    reply = ClientGcsReply(req_id=rid, result=42)
    assert m.handle(reply) == [Resolve(waiter="w", value=reply)]
    assert m.handle(reply) == [] and m.late == 1  # a duplicate reply is ignored
    assert m.give_up(rid) == []  # and so is a give-up after the answer
    m.validate()


def test_a_deadline_times_a_request_out_once_and_the_late_reply_is_ignored(m):
    rid, cmds = m.request("w", _gcs(m), deadline=5.0)
    (timer,) = [c for c in cmds if type(c) is SetTimer]
    assert timer.at == 5.0
    assert _ends(m.handle(TimerFired(key=timer.key), now=5.0)) == [TimedOut(waiter="w")]
    assert m.handle(ClientGcsReply(req_id=rid, result=1)) == []
    assert m.handle(TimerFired(key=timer.key), now=6.0) == []
    assert m.pending() == 0
    m.validate()


def test_a_named_actor_registration_is_answered_by_actor_id(m):
    aid = ActorId(b"a" * 16)
    rid, cmds = m.register_actor("w", aid, ClusterStatusRequest(client="driver:1", req_id=0))
    assert len(_sent(cmds)) == 1 and m.actor_waits == {aid: rid}
    reply = ActorRegistered(actor_id=aid)
    assert m.handle(reply) == [Resolve(waiter="w", value=reply)]
    assert m.handle(reply) == [] and not m.actor_waits
    m.validate()


# ---------------------------------------------------------------- watches


def test_a_get_resolves_when_every_object_is_reported_each_counted_once(m):
    a, b = _oids(2)
    rid, cmds = m.watch("w", [a, b, a], 2, report_need=2)
    (msg,) = _sent(cmds)
    assert type(msg) is WatchObjects and msg.object_ids == (a, b) and msg.need == 2
    assert m.on_objects(rid, ((a, INFO),), None) == []
    assert m.on_objects(rid, ((a, INFO),), None) == [] and m.duplicates == 1  # counts once
    cmds = m.on_objects(rid, ((b, INFO),), {b: ("i", b"x")})
    assert cmds == [Resolve(waiter="w", value={a: (INFO, None), b: (INFO, ("i", b"x"))})]  # (no cancel: all came)
    assert m.on_objects(rid, ((b, INFO),), None) == [] and m.late == 1
    m.validate()


def test_a_wait_satisfied_with_some_cancels_its_node_watch(m):
    a, b, c = _oids(3)
    rid, _ = m.watch("w", [a, b, c], 1)
    cmds = m.on_objects(rid, ((b, INFO),), None)
    assert [type(x) for x in _sent(cmds)] == [CancelWatch] and _sent(cmds)[0].req_id == rid
    assert _ends(cmds) == [Resolve(waiter="w", value={b: (INFO, None)})]


def test_a_watch_times_out_with_what_was_reported_and_cancels_its_node_watch(m):
    a, b = _oids(2)
    rid, cmds = m.watch("w", [a, b], 2, deadline=1.0)
    key = next(c.key for c in cmds if type(c) is SetTimer)
    m.on_objects(rid, ((a, INFO),), None)
    cmds = m.handle(TimerFired(key=key), now=1.0)
    assert _ends(cmds) == [TimedOut(waiter="w", partial={a: (INFO, None)})]
    assert [type(x) for x in _sent(cmds)] == [CancelWatch]
    assert m.on_objects(rid, ((b, INFO),), None) == []  # late: ignored
    m.validate()


def test_a_streaming_watch_reports_each_object_once_then_resolves(m):
    a, b = _oids(2)
    rid, _ = m.watch("w", [a, b], 2, stream=True)
    assert m.on_objects(rid, ((a, INFO), (a, INFO)), None) == [Report(waiter="w", objects=((a, INFO, None),))]
    cmds = m.on_objects(rid, ((a, INFO), (b, INFO)), None)
    assert cmds == [Report(waiter="w", objects=((b, INFO, None),)), Resolve(waiter="w", value={a: (INFO, None), b: (INFO, None)})]


def test_bad_needs_are_refused_where_they_are_made(m):
    with pytest.raises(ValueError, match="between 1 and 2"):
        m.watch("w", _oids(2), 3)
    with pytest.raises(ValueError, match="between 1 and 1"):
        m.watch("w", _oids(1), 0)
    with pytest.raises(TypeError, match="does not handle NodeDied"):
        m.handle(NodeDied(node_id="node:1"))


# ---------------------------------------------------------------- the open wait() watch


def test_the_watch_a_wait_leaves_open_serves_the_next_wait(m):
    a, b, c = _oids(3)
    rid, cmds = m.watch("w1", [a, b, c], 1, linger=True)
    assert m.linger is not None and m.linger.rid == rid
    cmds = m.on_objects(rid, ((a, INFO), (b, INFO)), None)
    assert _ends(cmds) == [Resolve(waiter="w1", value={a: (INFO, None), b: (INFO, None)})]
    assert not _sent(cmds)  # the open watch is not cancelled: it goes on reporting
    # the next wait over the rest is answered from its reports, with no message
    rid2, cmds = m.watch("w2", [b, c], 1, linger=True)
    assert cmds == [Resolve(waiter="w2", value={b: (INFO, None)})]
    rid3, cmds = m.watch("w3", [c], 1, linger=True)
    assert cmds == [] and m.pending() == 1
    assert m.on_objects(rid, ((c, INFO),), None) == [Resolve(waiter="w3", value={c: (INFO, None)})]
    assert [type(x) for x in _sent(m.close_linger())] == []  # (all reported: nothing to cancel)
    assert m.linger is None
    m.validate()


def test_a_wait_over_other_objects_replaces_the_open_watch(m):
    a, b, c = _oids(3)
    rid, _ = m.watch("w1", [a, b], 1, linger=True)
    m.on_objects(rid, ((a, INFO),), None)
    rid2, cmds = m.watch("w2", [c], 1, linger=True)
    sent = _sent(cmds)
    assert [type(x) for x in sent] == [CancelWatch, WatchObjects] and sent[0].req_id == rid
    assert m.linger.rid == rid2
    assert m.on_objects(rid, ((b, INFO),), None) == []  # the old watch's late report
    m.validate()


def test_giving_up_a_wait_served_by_the_open_watch_keeps_the_watch(m):
    a, b = _oids(2)
    rid, _ = m.watch("w1", [a, b], 2, linger=True)
    cmds = m.give_up(rid)
    assert cmds == [TimedOut(waiter="w1", partial={})] and m.linger is not None
    assert m.on_objects(rid, ((a, INFO),), None) == [] and m.linger.ready
    m.validate()


# ---------------------------------------------------------------- the connection


def test_a_lost_connection_fails_every_waiter_once_and_every_later_request(m):
    a, b = _oids(2)
    aid = ActorId(b"a" * 16)
    r1, _ = m.request("gcs", _gcs(m))
    r2, _ = m.watch("get", [a], 1)
    r3, _ = m.watch("wait", [a, b], 1, linger=True)
    m.register_actor("actor", aid, ClusterStatusRequest(client="driver:1", req_id=0))
    cmds = m.handle(ConnectionLost(detail="the daemon was killed"))
    assert sorted(c.waiter for c in cmds) == ["actor", "gcs", "get", "wait"]
    assert all(type(c) is Fail and c.reason == LOST and c.detail == "the daemon was killed" for c in cmds)
    m.validate()
    # nothing more for them, whatever comes late
    assert m.handle(ConnectionLost(detail="again")) == [] and m.handle(ShutDown()) == []
    assert m.on_objects(r2, ((a, INFO),), None) == [] and m.on_reply(r1, PutDone(req_id=r1, object_id=a)) == []
    assert m.give_up(r3) == [] and m.close_linger() == []
    # and a request made after the loss fails at once, unregistered
    for cmds in (m.request("late", _gcs(m))[1], m.watch("late", [a], 1)[1],
                 m.register_actor("late", aid, SubmitTask(client="driver:1", spec=None))[1]):
        assert cmds == [Fail(waiter="late", reason=LOST, detail="the daemon was killed")]
    assert m.pending() == 0
    m.validate()


def test_a_shutdown_fails_waiters_as_shut_down(m):
    m.watch("w", _oids(1), 1)
    assert m.handle(ShutDown()) == [Fail(waiter="w", reason=SHUT_DOWN)]
    assert m.request("x", _gcs(m))[1] == [Fail(waiter="x", reason=SHUT_DOWN)]


def test_validate_catches_a_waiter_left_on_a_lost_connection(m):
    m.watch("w", _oids(1), 1)
    m.state = LOST  # (what a machine that forgot to fail its waiters would look like)
    with pytest.raises(AssertionError, match="pending on a connection that is lost"):
        m.validate()


# ---------------------------------------------------------------- any interleaving


class ClientRules(RuleBasedStateMachine):
    """Any sequence of requests, reports, timers, give-ups and endings."""

    def __init__(self) -> None:
        super().__init__()
        self.m = ClientMachine("driver:1", "node:0")
        self.now = 0.0
        self.n = 0
        self.rids: list[int] = []
        self.timers: list[tuple] = []
        self.watched: dict[str, tuple[frozenset, int, bool]] = {}  # waiter -> (ids, need, stream)
        self.ends: dict[str, list] = {}  # waiter -> the commands that ended it
        self.dropped: set[str] = set()  # cancelled: no outcome expected
        self.issued: list[str] = []

    def _waiter(self) -> str:
        self.n += 1
        w = f"w{self.n}"
        self.issued.append(w)
        return w

    def _apply(self, cmds) -> None:
        for c in cmds:
            t = type(c)
            if t is SetTimer:
                assert c.at >= self.now
                self.timers.append(c.key)
            elif t is Send:
                assert c.to == "node:0"
            elif t in (Resolve, TimedOut, Fail):
                self.ends.setdefault(c.waiter, []).append(c)
                if t is Resolve and c.waiter in self.watched:
                    ids, need, _ = self.watched[c.waiter]
                    assert len(c.value) >= need and c.value.keys() <= ids
            elif t is Report:
                ids, _, stream = self.watched[c.waiter]
                assert stream and {o for o, _, _ in c.objects} <= ids
                assert c.waiter not in self.ends, "a report after the waiter's end"

    @rule(deadline=st.none() | st.floats(0, 5))
    def request(self, deadline):
        w = self._waiter()
        rid, cmds = self.m.request(w, _gcs(self.m), deadline=None if deadline is None else self.now + deadline)
        self.rids.append(rid)
        self._apply(cmds)

    @rule(ids=st.lists(st.sampled_from(OIDS), min_size=1, max_size=4), data=st.data(),
          linger=st.booleans(), stream=st.booleans(), deadline=st.none() | st.floats(0, 5))
    def watch(self, ids, data, linger, stream, deadline):
        uniq = frozenset(ids)
        need = data.draw(st.integers(1, len(uniq)))
        w = self._waiter()
        self.watched[w] = (uniq, need, stream)
        rid, cmds = self.m.watch(w, ids, need, linger=linger, stream=stream,
                                 deadline=None if deadline is None else self.now + deadline)
        self.rids.append(rid)
        self._apply(cmds)

    @precondition(lambda self: self.rids)
    @rule(data=st.data(), objs=st.lists(st.sampled_from(OIDS), min_size=1, max_size=4))
    def report(self, data, objs):
        rid = data.draw(st.sampled_from(self.rids))
        self._apply(self.m.handle(ObjectsReady(req_id=rid, objects=tuple((o, INFO) for o in objs))))

    @precondition(lambda self: self.rids)
    @rule(data=st.data())
    def reply(self, data):
        rid = data.draw(st.sampled_from(self.rids))
        self._apply(self.m.handle(ClientGcsReply(req_id=rid, result=rid)))

    @precondition(lambda self: self.timers)
    @rule(data=st.data(), dt=st.floats(0, 3))
    def timer(self, data, dt):
        self.now += dt
        self._apply(self.m.handle(TimerFired(key=data.draw(st.sampled_from(self.timers))), self.now))

    @precondition(lambda self: self.rids)
    @rule(data=st.data(), tell=st.booleans())
    def give_up(self, data, tell):
        rid = data.draw(st.sampled_from(self.rids))
        if tell:
            self._apply(self.m.give_up(rid))
        else:
            r = self.m.requests.get(rid)
            if r is not None:
                self.dropped.add(r.waiter)
            self._apply(self.m.cancel(rid))

    @rule()
    def close_linger(self):
        self._apply(self.m.close_linger())

    @rule()
    def lost(self):
        self._apply(self.m.handle(ConnectionLost(detail="cut")))

    @rule()
    def shut_down(self):
        self._apply(self.m.handle(ShutDown()))

    @invariant()
    def every_waiter_ends_once_and_none_waits_on_a_dead_connection(self):
        self.m.validate()
        pending = {r.waiter for r in self.m.requests.values()}
        for w in self.issued:
            ends = self.ends.get(w, [])
            assert len(ends) <= 1, f"{w} ended {len(ends)} times: {ends}"
            if w in self.dropped:
                continue
            assert (w in pending) != bool(ends), f"{w}: pending={w in pending}, ends={ends}"
        if self.m.state != "connected":
            assert not pending
            for w in self.issued:
                assert w in self.dropped or self.ends.get(w), f"{w} never ended after the connection ended"


TestClientRules = ClientRules.TestCase
TestClientRules.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- both simulated drivers run it


def test_a_simulated_driver_whose_node_crashes_ends_every_get_and_wait_once():
    """SimDriver (the swarm's driver): gets and waits outstanding when its
    node crashes fail once, as lost; one made after fails at once; one with
    a timeout that ended first is not told again."""
    from penumbra.core.layout import ClusterLayout, NodeShape
    from penumbra.core.specs import ResourceSet
    from penumbra.sim.cluster import SimCluster, SimWaiter
    from penumbra.sim.costs import ZERO
    from penumbra.sim.workloads import TaskModel

    shape = NodeShape(ResourceSet.of(CPU=1))
    cluster = SimCluster(ClusterLayout(nodes=(shape, shape)), costs=ZERO, seed=1)
    cluster.wait_ready()
    main = cluster.driver("node:0")
    slow = main.remote(TaskModel(duration=5.0), name="slow")
    lost = cluster.driver("node:1")
    ends: dict[str, list] = {}

    def waiter(name: str) -> SimWaiter:
        def end(how):
            return lambda *a: ends.setdefault(name, []).append((how, cluster.now))
        return SimWaiter(done=end("value"), timeout=end("timeout"), fail=end("fail"))

    oid = slow.return_ids[0]
    lost.get([oid], waiter("get"))
    lost.wait([oid], 1, waiter("wait"), fetch=False)
    lost.get([oid], waiter("timed"), timeout=0.1)
    cluster.run_for(0.5)
    assert [h for h, _ in ends["timed"]] == ["timeout"]
    cluster.crash_node("node:1")
    assert [h for h, _ in ends["get"]] == ["fail"] and [h for h, _ in ends["wait"]] == ["fail"]
    lost.wait([oid], 1, waiter("after"), timeout=1.0)
    assert [h for h, _ in ends["after"]] == ["fail"]
    cluster.run_for(6.0)
    assert all(len(v) == 1 for v in ends.values()), ends
    assert lost.machine.pending() == 0 and lost.machine.state == LOST
    lost.machine.validate()
    # the driver on the live node got its value
    got = []
    main.get([oid], SimWaiter(done=got.append))
    cluster.run_for(1.0)
    assert list(got[0]) == [oid]
