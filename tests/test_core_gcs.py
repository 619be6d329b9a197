"""gcs.py and gcs_client.py: chain replication, pub/sub, the chain master,
and the client's routing, grouping, retries and notification filter."""

from __future__ import annotations

import pytest

from penumbra.core.gcs import ChainMaster, GcsCaughtUp, GcsReplica, GcsSync, GcsTiming
from penumbra.core.gcs_client import GcsClient
from penumbra.core.messages import (
    ChainConfigMsg,
    GcsAck,
    GcsForward,
    GcsNotify,
    GcsRead,
    GcsReply,
    GcsWrite,
    ReplicaHeartbeat,
    ReplicaJoin,
    ReplicaReady,
    Send,
    SetTimer,
    StateSnapshot,
    StateTransferRequest,
    TimerFired,
)
from penumbra.core.records import ChainConfig
from penumbra.core.tables import AddLocation, Get, KvPut, NodeDown, Subscribe, TasksOnNode
from penumbra.verification.memnet import MemNet

R = ("gcs:0:0", "gcs:0:1", "gcs:0:2")
CFG = ChainConfig(shard=0, epoch=1, replicas=R)


def sends(cmds, kind=None, to=None):
    return [c for c in cmds if isinstance(c, Send) and (kind is None or isinstance(c.msg, kind))
            and (to is None or c.to == to)]


def one(cmds, kind, to=None):
    found = sends(cmds, kind, to)
    assert len(found) == 1, (kind, to, cmds)
    return found[0].msg


def chain3():
    return [GcsReplica(r, 0, config=CFG) for r in R]


def write(client, req_id, op, low_water=0):
    return GcsWrite(client=client, req_id=req_id, op=op, low_water=low_water)


# ----------------------------------------------------------------------------- one write, by hand


def test_write_flows_head_to_tail_then_acks_back() -> None:
    head, mid, tail = chain3()
    cmds = head.handle(write("c", 1, KvPut("k", 1)), 0.0)
    fwd = one(cmds, GcsForward, to=R[1])
    assert (fwd.seq, fwd.epoch, fwd.req_id) == (1, 1, 1)
    assert not sends(cmds, GcsReply)  # the head never answers a write
    assert head.log.keys() == {1} and head.committed == 0
    fwd2 = one(mid.handle(fwd, 0.0), GcsForward, to=R[2])
    cmds = tail.handle(fwd2, 0.0)
    reply = one(cmds, GcsReply, to="c")
    assert (reply.req_id, reply.result) == (1, True)
    ack = one(cmds, GcsAck, to=R[1])
    assert tail.committed == 1 and not tail.log
    ack2 = one(mid.handle(ack, 0.0), GcsAck, to=R[0])
    assert not mid.log and mid.committed == 1
    assert head.handle(ack2, 0.0) == [] and not head.log and head.committed == 1
    for r in (head, mid, tail):
        r.validate()
        assert r.tables.data["kv"] == {"k": 1}


def test_reads_only_at_tail_and_writes_only_at_head() -> None:
    head, mid, tail = chain3()
    read = GcsRead(client="c", req_id=7, query=Get("kv", "k"))
    # a misdirected request is not served; the client is sent the config
    # (it may have missed a ChainConfigMsg)
    for r in (head, mid):
        (redirect,) = r.handle(read, 0.0)
        assert redirect.to == "c" and redirect.msg == ChainConfigMsg(config=CFG)
    assert one(tail.handle(read, 0.0), GcsReply, to="c").result is None
    for r in (mid, tail):
        (redirect,) = r.handle(write("c", 1, KvPut("k", 1)), 0.0)  # not the head
        assert isinstance(redirect.msg, ChainConfigMsg)
    assert tail.seq == mid.seq == 0


def test_notifications_come_from_the_tail_after_commit() -> None:
    head, mid, tail = chain3()
    oid = b"o" * 20

    def through(ev):
        out = []
        f1 = one(head.handle(ev, 0.0), GcsForward)
        f2 = one(mid.handle(f1, 0.0), GcsForward)
        out += tail.handle(f2, 0.0)
        return out

    through(write("sub", 1, Subscribe("sub", "objects", oid)))
    through(write("all", 1, Subscribe("all", "objects", None)))
    cmds = through(write("w", 1, AddLocation(oid, "node:0", 5)))
    notes = {c.to: c.msg for c in sends(cmds, GcsNotify)}
    assert set(notes) == {"sub", "all"}
    assert notes["sub"].value.locations == {"node:0"} and notes["sub"].version == 3
    # a late subscriber is sent the current row at once
    cmds = through(write("late", 1, Subscribe("late", "objects", oid)))
    note = one(cmds, GcsNotify, to="late")
    assert note.key == oid and note.value.locations == {"node:0"} and note.version == 4


def test_retried_write_is_applied_once() -> None:
    head, mid, tail = chain3()
    op = KvPut("k", "v", overwrite=False)
    f1 = one(head.handle(write("c", 1, op), 0.0), GcsForward)
    # a retry while in flight: nothing applied, no reply (the tail will
    # answer); the entry is asked down the chain again in case acks were lost
    again = head.handle(write("c", 1, op), 0.0)
    assert head.seq == 1 and not sends(again, GcsReply)
    assert [c.msg.seq for c in sends(again, GcsForward, to=R[1])] == [1]
    f2 = one(mid.handle(f1, 0.0), GcsForward)
    # the same forward twice is not applied twice (the mid passes the question on)
    assert [c.msg.seq for c in sends(mid.handle(f1, 0.0), GcsForward, to=R[2])] == [1] and mid.seq == 1
    cmds = tail.handle(f2, 0.0)
    assert one(cmds, GcsReply).result is True
    assert one(tail.handle(f2, 0.0), GcsAck).seq == 1 and tail.seq == 1
    for c in sends(cmds, GcsAck):
        for c2 in sends(mid.handle(c.msg, 0.0), GcsAck):
            head.handle(c2.msg, 0.0)
    # after commit, a retry is answered by the head with the first result
    reply = one(head.handle(write("c", 1, op), 0.0), GcsReply, to="c")
    assert reply.result is True and head.seq == 1
    # a different request id is a new write (KvPut with overwrite=False now fails)
    f = one(head.handle(write("c", 2, op), 0.0), GcsForward)
    assert f.seq == 2


def test_dedup_entries_below_low_water_are_forgotten() -> None:
    (solo,) = [GcsReplica("g", 0, config=ChainConfig(0, 1, ("g",)))]
    for i in range(1, 21):
        solo.handle(write("c", i, KvPut(f"k{i}", i), low_water=i), 0.0)
    assert set(solo.dedup.as_dicts()["c"]) == {20}
    assert solo.dedup.lookup("c", 20) is not None and solo.dedup.lookup("c", 19) is None


def test_forward_gap_is_dropped_until_resent() -> None:
    head, mid, tail = chain3()
    f1 = one(head.handle(write("c", 1, KvPut("a", 1)), 0.0), GcsForward)
    f2 = one(head.handle(write("c", 2, KvPut("b", 2)), 0.0), GcsForward)
    assert mid.handle(f2, 0.0) == [] and mid.seq == 0  # a gap: wait for seq 1
    # the head re-sends unacked entries on its tick once resend_after has passed
    cmds = head.handle(TimerFired(key=("gcs", "tick")), 1.0)
    resent = [c.msg.seq for c in sends(cmds, GcsForward, to=R[1])]
    assert resent == [1, 2]
    assert one(cmds, ReplicaHeartbeat, to="head").seq == 2
    assert any(isinstance(c, SetTimer) for c in cmds)
    mid.handle(f1, 1.0)
    mid.handle(f2, 1.0)
    assert mid.seq == 2


# ----------------------------------------------------------------------------- reconfiguration, by hand


def test_new_tail_commits_its_log() -> None:
    head, mid, tail = chain3()
    f1 = one(head.handle(write("c", 1, KvPut("a", 1)), 0.0), GcsForward)
    mid.handle(f1, 0.0)  # the tail dies before seeing it
    new = ChainConfig(0, 2, R[:2])
    cmds = mid.handle(ChainConfigMsg(config=new), 0.1)
    assert one(cmds, GcsReply, to="c").result is True
    assert one(cmds, GcsAck, to=R[0]).seq == 1
    assert mid.is_tail and mid.committed == 1 and not mid.log
    # old configs are ignored
    assert mid.handle(ChainConfigMsg(config=CFG), 0.2) == [] and mid.config.epoch == 2
    head.handle(ChainConfigMsg(config=new), 0.1)
    assert head.is_head and not head.is_tail


def test_middle_replica_dies_and_predecessor_resyncs() -> None:
    head, mid, tail = chain3()
    f1 = one(head.handle(write("c", 1, KvPut("a", 1)), 0.0), GcsForward)
    one(mid.handle(f1, 0.0), GcsForward)  # lost with the mid
    new = ChainConfig(0, 2, (R[0], R[2]))
    head.handle(ChainConfigMsg(config=new), 0.1)
    cmds = tail.handle(ChainConfigMsg(config=new), 0.1)
    sync = one(cmds, GcsSync, to=R[0])
    assert sync.seq == 0 and tail._awaiting_catchup
    # reads wait for the catch-up
    assert tail.handle(GcsRead(client="r", req_id=1, query=Get("kv", "a")), 0.1) == []
    cmds = head.handle(sync, 0.1)
    resent = sends(cmds, GcsForward, to=R[2])
    caught = one(cmds, GcsCaughtUp, to=R[2])
    assert [c.msg.seq for c in resent] == [1] and caught.seq == 1
    out = tail.handle(resent[0].msg, 0.1)
    assert one(out, GcsReply, to="c").result is True
    out = tail.handle(caught, 0.1)
    assert one(out, GcsReply, to="r").result == 1  # the pending read, after catch-up


# ----------------------------------------------------------------------------- through memnet


class ClientMachine:
    """A GCS client as a memnet machine; records replies and notifications."""

    def __init__(self, address: str, configs, retry_after: float = 0.05) -> None:
        self.address = address
        self.configs = list(configs)
        self.gcs = GcsClient(address, self._on_reply, retry_after=retry_after)
        self.replies: dict = {}
        self.notes: list[GcsNotify] = []

    def _on_reply(self, token, result, now, sid):
        self.replies[token] = result
        return []

    def start(self, now):
        return self.gcs.set_configs(self.configs, now)

    def handle(self, ev, now):
        if isinstance(ev, GcsNotify):
            if self.gcs.fresh(ev):
                self.notes.append(ev)
            return []
        if self.gcs.owns(ev):
            return self.gcs.handle(ev, now)
        return []

    def validate(self):
        self.gcs.validate()


def make_chain(n=3, shard=0, clients=("c",), latency=0.001):
    cfg = ChainConfig(shard, 1, tuple(f"gcs:{shard}:{i}" for i in range(n)))
    net = MemNet(latency=latency)
    master = ChainMaster([cfg])
    for c in clients:
        master.add_listener(c)
    net.add("head", master)
    for r in cfg.replicas:
        net.add(r, GcsReplica(r, shard, config=cfg))
    cms = {}
    for c in clients:
        cms[c] = ClientMachine(c, [cfg])
        net.add(c, cms[c])
    return net, master, cms


def do_write(net, client, op, token):
    net._execute(client.address, client.gcs.write(op, token, net.now))


def do_read(net, client, q, token):
    net._execute(client.address, client.gcs.read(q, token, net.now))


def replicas(net):
    return [m for m in net.machines.values() if isinstance(m, GcsReplica) and m.active]


def test_replica_death_is_cut_and_writes_survive() -> None:
    net, master, cms = make_chain()
    c = cms["c"]
    for i in range(5):
        do_write(net, c, KvPut(f"k{i}", i), i)
    net.run_for(0.01)
    assert len(c.replies) == 5
    net.crash("gcs:0:1")
    for i in range(5, 10):
        do_write(net, c, KvPut(f"k{i}", i), i)
    net.run_for(0.2)
    assert master.shards[0].config == ChainConfig(0, 2, ("gcs:0:0", "gcs:0:2"))
    assert len(c.replies) == 10
    net.crash("gcs:0:2")  # the tail
    for i in range(10, 15):
        do_write(net, c, KvPut(f"k{i}", i), i)
    net.run_for(0.2)
    assert master.shards[0].config.replicas == ("gcs:0:0",)
    assert len(c.replies) == 15
    do_read(net, c, Get("kv", "k14"), "read")
    net.run_for(0.05)
    assert c.replies["read"] == 14
    assert net.machines["gcs:0:0"].tables.data["kv"] == {f"k{i}": i for i in range(15)}


def test_head_death_client_retries_at_new_head() -> None:
    net, master, cms = make_chain()
    c = cms["c"]
    do_write(net, c, KvPut("a", 1), "a")
    net.run_for(0.01)
    net.crash("gcs:0:0")
    do_write(net, c, KvPut("b", 2), "b")  # sent to the dead head; retried after the new config
    net.run_for(0.3)
    assert c.replies == {"a": True, "b": True}
    assert master.shards[0].config.head == "gcs:0:1"
    assert c.gcs.configs[0].epoch == 2


def test_replica_joins_by_state_transfer() -> None:
    net, master, cms = make_chain(n=2)
    c = cms["c"]
    for i in range(10):
        do_write(net, c, KvPut(f"k{i}", i), i)
    do_write(net, c, Subscribe("c", "kv", "k1"), "sub")
    net.run_for(0.01)
    joiner = GcsReplica("gcs:0:9", 0, joining=True)
    net.add("gcs:0:9", joiner)
    # writes keep coming while it copies
    for i in range(10, 30):
        do_write(net, c, KvPut(f"k{i}", i), i)
        net.run_for(0.002)
    net.run_for(0.2)
    assert master.shards[0].config.replicas == ("gcs:0:0", "gcs:0:1", "gcs:0:9")
    assert joiner.is_tail and joiner.seq == net.machines["gcs:0:0"].seq
    prints = {r.tables.fingerprint() for r in replicas(net)}
    assert len(prints) == 1
    assert joiner.tables.subs == net.machines["gcs:0:0"].tables.subs
    # the joiner, now the tail, answers reads and sends notifications
    do_write(net, c, KvPut("k1", "new"), "k1-new")
    do_read(net, c, Get("kv", "k29"), "read")
    net.run_for(0.05)
    assert c.replies["read"] == 29
    assert c.notes[-1].value == "new"
    seen = [n.version for n in c.notes]
    assert seen == sorted(set(seen))  # no repeats got through the filter


def test_restarted_replica_still_listed_is_cut_then_rejoins() -> None:
    net, master, cms = make_chain(n=2)
    c = cms["c"]
    do_write(net, c, KvPut("a", 1), "a")
    net.run_for(0.01)
    net.crash("gcs:0:1")
    net.add("gcs:0:1", GcsReplica("gcs:0:1", 0, joining=True))  # back at once, empty
    do_write(net, c, KvPut("b", 2), "b")
    net.run_for(0.3)
    assert c.replies == {"a": True, "b": True}
    assert master.shards[0].config.replicas == ("gcs:0:0", "gcs:0:1")
    assert len({r.tables.fingerprint() for r in replicas(net)}) == 1
    assert net.machines["gcs:0:1"].tables.data["kv"] == {"a": 1, "b": 2}


def test_chain_master_keeps_config_when_every_replica_is_gone() -> None:
    cm = ChainMaster([CFG], GcsTiming())
    cm.start(0.0)
    cmds = cm.handle(TimerFired(key=("chain", "check")), 1.0)
    assert [c for c in cmds if isinstance(c, Send)] == []
    assert cm.shards[0].config == CFG
    cm.handle(ReplicaHeartbeat(replica=R[0], shard=0), 1.0)
    cmds = cm.handle(TimerFired(key=("chain", "check")), 1.01)
    cfg = cmds[0].msg.config
    assert cfg.replicas == (R[0],) and cfg.epoch == 2 and cm.dead == {R[1], R[2]}
    # a dead replica's late heartbeat does not revive it; a join does
    cm.handle(ReplicaHeartbeat(replica=R[1], shard=0), 1.02)
    assert R[1] in cm.dead
    cmds = cm.handle(ReplicaJoin(replica=R[1], shard=0), 1.03)
    assert sends(cmds, ChainConfigMsg, to=R[1]) and R[1] not in cm.dead
    cmds = cm.handle(ReplicaReady(replica=R[1], shard=0, seq=0), 1.04)
    assert cm.shards[0].config.replicas == (R[0], R[1])
    assert cm.handle(ReplicaReady(replica="stranger", shard=0, seq=0), 1.05) == []
    cm.validate()


def test_joiner_copies_from_tail() -> None:
    tail = GcsReplica("t", 0, config=ChainConfig(0, 1, ("t",)))
    tail.handle(write("c", 1, KvPut("a", 1)), 0.0)
    joiner = GcsReplica("j", 0, joining=True)
    cmds = joiner.handle(ChainConfigMsg(config=tail.config), 0.0)
    req = one(cmds, StateTransferRequest, to="t")
    snap = one(tail.handle(req, 0.0), StateSnapshot, to="j")
    assert snap.seq == 1 and tail.retain_from == 1
    ready = one(joiner.handle(snap, 0.0), ReplicaReady, to="head")
    assert ready.seq == 1 and joiner.tables.data["kv"] == {"a": 1}
    # a write committed after the snapshot is retained for the joiner
    tail.handle(write("c", 2, KvPut("b", 2)), 0.0)
    assert 2 in tail.log


# ----------------------------------------------------------------------------- GcsClient


TWO = (ChainConfig(0, 1, ("g0a", "g0b")), ChainConfig(1, 1, ("g1a", "g1b")))


class Recorder:
    def __init__(self):
        self.got = []

    def __call__(self, token, result, now, sid):
        self.got.append((token, result))
        return []


def key_on(shard: int) -> bytes:
    return bytes([0, 0, 0, shard]) + bytes(16)


def test_client_waits_for_config_then_routes() -> None:
    rec = Recorder()
    c = GcsClient("me", rec, retry_after=0.05)
    assert c.write(AddLocation(key_on(1), "n", 1), "w", 0.0) == [] and not c.ready
    cmds = c.set_configs(TWO, 0.0)
    (w,) = sends(cmds)
    assert w.to == "g1a" and isinstance(w.msg, GcsWrite) and w.msg.shard == 1
    cmds = c.read(Get("objects", key_on(0)), "r", 0.0)
    r = one(cmds, GcsRead)
    assert sends(cmds)[0].to == "g0b"  # reads go to the tail
    assert c.write(KvPut("x", 1), "kv", 0.0)[0].to == "g0a"  # kv lives on shard 0
    c.handle(GcsReply(req_id=r.req_id, result="row", shard=0), 0.0)
    assert rec.got == [("r", "row")]
    # a repeated reply is dropped
    c.handle(GcsReply(req_id=r.req_id, result="row", shard=0), 0.0)
    assert rec.got == [("r", "row")]


def test_client_groups_broadcasts() -> None:
    rec = Recorder()
    c = GcsClient("me", rec)
    c.set_configs(TWO, 0.0)
    cmds = c.write(NodeDown("node:1"), "down", 0.0)
    targets = {s.to: s.msg.req_id for s in sends(cmds, GcsWrite)}
    assert set(targets) == {"g0a", "g1a"}
    c.handle(GcsReply(req_id=targets["g1a"], result=("b",), shard=1), 0.0)
    assert rec.got == []
    c.handle(GcsReply(req_id=targets["g0a"], result=("a",), shard=0), 0.0)
    assert rec.got == [("down", (("a",), ("b",)))]  # in shard order
    cmds = c.read(TasksOnNode("node:1"), "tasks", 0.0)
    assert {s.to for s in sends(cmds, GcsRead)} == {"g0b", "g1b"}


def test_client_groups_broadcasts_even_with_one_shard() -> None:
    rec = Recorder()
    c = GcsClient("me", rec)
    c.set_configs(TWO[:1], 0.0)
    r = one(c.read(TasksOnNode("node:1"), "tasks", 0.0), GcsRead)
    c.handle(GcsReply(req_id=r.req_id, result=("row",)), 0.0)
    assert rec.got == [("tasks", (("row",),))]  # a tuple of per-shard results


def test_client_retries_on_timeout_and_on_new_config() -> None:
    rec = Recorder()
    c = GcsClient("me", rec, retry_after=0.05)
    c.set_configs(TWO, 0.0)
    cmds = c.write(KvPut("x", 1), "w", 0.0)
    (timer,) = [x for x in cmds if isinstance(x, SetTimer)]
    first = one(cmds, GcsWrite)
    assert c.handle(TimerFired(key=timer.key), 0.01)[-1].at == pytest.approx(0.06)  # too early
    cmds = c.handle(TimerFired(key=timer.key), 0.06)
    again = one(cmds, GcsWrite, to="g0a")
    assert again.req_id == first.req_id  # same id: the replica dedups
    # a newer config moves the request to the new head at once
    cmds = c.handle(ChainConfigMsg(config=ChainConfig(0, 2, ("g0b",))), 0.07)
    assert one(cmds, GcsWrite, to="g0b").req_id == first.req_id
    assert c.handle(ChainConfigMsg(config=ChainConfig(0, 1, ("g0a",))), 0.08) == []  # stale
    c.handle(GcsReply(req_id=first.req_id, result=True), 0.09)
    assert rec.got == [("w", True)]
    cmds = c.handle(TimerFired(key=timer.key), 0.2)
    assert cmds == [] and not c._timer_armed  # nothing outstanding: timer disarmed
    with pytest.raises(TypeError):
        c.handle(TimerFired(key="other"), 0.3)
    assert not c.owns(TimerFired(key="other"))


def test_client_low_water_is_lowest_outstanding() -> None:
    c = GcsClient("me", Recorder())
    c.set_configs(TWO[:1], 0.0)
    a = one(c.write(KvPut("a", 1), "a", 0.0), GcsWrite)
    b = one(c.write(KvPut("b", 1), "b", 0.0), GcsWrite)
    assert (a.low_water, b.low_water) == (a.req_id, a.req_id)
    c.handle(GcsReply(req_id=a.req_id, result=True), 0.0)
    d = one(c.write(KvPut("d", 1), "d", 0.0), GcsWrite)
    assert d.low_water == b.req_id


def test_client_settled_counts_writes_queued_behind_their_key(core) -> None:
    """``settled(mark)``: every request asked for up to ``mark`` answered,
    including a write queued behind an earlier one to its key, which has no
    request id until it is sent (the head's scan of a dead node's tasks
    once went out while the task's placement there was still queued, and
    missed it: strategy-drawn plan 64806)."""
    from penumbra.core.tables import AddTask, RetryTask

    c = GcsClient("me", Recorder())
    c.set_configs(TWO[:1], 0.0)
    spec = core.spec()
    first = one(c.write(RetryTask(spec.task_id, "", attempt=1), "retry", 0.0), GcsWrite)
    assert sends(c.write(AddTask(spec, "node:2", placed=True), "place", 0.0), GcsWrite) == []  # queued
    mark = c.made
    assert not c.settled(mark)
    cmds = c.handle(GcsReply(req_id=first.req_id, result=True), 0.0)
    queued = one(cmds, GcsWrite)  # sent now, with an id newer than any before the mark
    assert not c.settled(mark)
    later = one(c.write(KvPut("x", 1), "x", 0.0), GcsWrite)
    c.handle(GcsReply(req_id=queued.req_id, result=True), 0.0)
    assert c.settled(mark)  # (the write made after the mark does not count)
    assert not c.settled(c.made) and later.req_id in c.outstanding
def test_client_settled_waits_for_a_same_key_write_made_before_the_mark() -> None:
    """``settled(mark)``: every request made before the mark was answered,
    including a write queued (not yet sent, no req_id) behind an earlier
    write of its key: the head's scan of a dead node's tasks waits for it
    (found by the swarm: a task re-placed onto a node about to be declared
    dead had its AddTask queued behind its RetryTask, and was orphaned)."""
    c = GcsClient("me", Recorder())
    c.set_configs(TWO[:1], 0.0)
    first = one(c.write(KvPut("a", 1), "a1", 0.0), GcsWrite)
    assert not sends(c.write(KvPut("a", 2), "a2", 0.0), GcsWrite)  # queued behind the first write of "a"
    mark = c.made
    later = one(c.write(KvPut("b", 1), "b", 0.0), GcsWrite)
    assert not c.settled(mark)
    c.handle(GcsReply(req_id=first.req_id, result=True), 0.0)  # the queued write of "a" goes out now
    assert not c.settled(mark)
    for rid in sorted(c.outstanding):
        if rid != later.req_id:
            c.handle(GcsReply(req_id=rid, result=True), 0.0)
    assert c.settled(mark) and not c.settled(c.made)  # "b", made after the mark, is still out
    c.handle(GcsReply(req_id=later.req_id, result=True), 0.0)
    assert c.settled(c.made)


def test_client_notification_filter() -> None:
    c = GcsClient("me", Recorder())
    n = lambda v: GcsNotify(table="objects", key=b"k", value=v, version=v)
    assert c.fresh(n(3)) and not c.fresh(n(3)) and not c.fresh(n(2)) and c.fresh(n(4))
    assert c.fresh(GcsNotify(table="tasks", key=b"k", value=1, version=1))  # keyed per table
    c.forget("objects", b"k")
    assert c.fresh(n(1))


def test_late_table_subscriber_gets_every_row() -> None:
    """A node subscribing to the ``nodes`` table after others joined must
    learn of them (otherwise it never forwards for load)."""
    from penumbra.core.records import NodeEntry
    from penumbra.core.specs import ResourceSet
    from penumbra.core.tables import PutNode

    solo = GcsReplica("g", 0, config=ChainConfig(0, 1, ("g",)))
    solo.handle(write("head", 1, PutNode(NodeEntry("node:0", ResourceSet.of(CPU=1)))), 0.0)
    solo.handle(write("head", 2, PutNode(NodeEntry("node:1", ResourceSet.of(CPU=1)))), 0.0)
    cmds = solo.handle(write("node:1", 1, Subscribe("node:1", "nodes", None)), 0.0)
    notes = sends(cmds, GcsNotify, to="node:1")
    assert sorted(n.msg.key for n in notes) == ["node:0", "node:1"]
    assert all(n.msg.version == 3 for n in notes)
    # an empty table sends nothing
    assert not sends(solo.handle(write("x", 1, Subscribe("x", "actors", None)), 0.0), GcsNotify)


def test_lost_config_messages_are_made_up_for() -> None:
    """A replica or client that misses a ChainConfigMsg must not stall the
    chain: replicas report their epoch in heartbeats and the master re-sends;
    a replica answers a misdirected request with its config."""
    net, master, cms = make_chain()
    c = cms["c"]
    dropped = []

    def drop_first_config(src, to, msg):
        if isinstance(msg, ChainConfigMsg) and to in ("gcs:0:0", "c") and to not in dropped:
            dropped.append(to)
            return True
        return False

    net.drop_fn = drop_first_config
    net.crash("gcs:0:1")
    do_write(net, c, KvPut("a", 1), "a")
    net.run_for(1.0)
    assert sorted(dropped) == ["c", "gcs:0:0"]
    assert c.replies == {"a": True}
    assert net.machines["gcs:0:0"].config.epoch == 2


def test_master_resends_config_to_stale_replicas_only() -> None:
    cm = ChainMaster([CFG])
    cm.start(0.0)
    assert cm.handle(ReplicaHeartbeat(replica=R[0], shard=0, epoch=1), 0.0) == []
    cm.handle(ReplicaHeartbeat(replica=R[0], shard=0, epoch=1), 0.03)
    cm.handle(ReplicaHeartbeat(replica=R[1], shard=0, epoch=1), 0.03)
    cm.handle(TimerFired(key=("chain", "check")), 0.03)  # R[2] is cut: epoch 2
    (resend,) = cm.handle(ReplicaHeartbeat(replica=R[0], shard=0, epoch=1), 0.031)
    assert resend.to == R[0] and resend.msg.config.epoch == 2
    assert cm.handle(ReplicaHeartbeat(replica=R[0], shard=0, epoch=2), 0.032) == []
    # a replica cut while alive (its heartbeats were lost) is told it is out
    (told,) = cm.handle(ReplicaHeartbeat(replica=R[2], shard=0, epoch=1), 0.033)
    assert told.to == R[2] and R[2] not in told.msg.config.replicas
    assert cm.handle(ReplicaHeartbeat(replica=R[2], shard=0, epoch=2), 0.034) == []
    assert R[2] in cm.dead


def test_several_joiners_at_once_never_serve_stale_reads() -> None:
    """Four replicas join a one-replica chain at once and a write is
    acknowledged by the old tail meanwhile.  No replica may be ready to serve
    reads without that write (found by the chain state machine: the last
    joiners were told 'caught up' by predecessors that lagged themselves),
    and joiners whose snapshot predates what their predecessor still logs
    copy state again (GcsRejoin)."""
    net, master, cms = make_chain(n=1)
    c = cms["c"]
    net.run_for(0.005)
    for i in range(1, 5):
        net.add(f"gcs:0:{i}", GcsReplica(f"gcs:0:{i}", 0, joining=True))
    net.run_for(0.005)
    do_write(net, c, KvPut("k0", 0), "k0")
    steps = 0
    while net.queue and net.now < 0.5:
        net.step()
        steps += 1
        if "k0" in c.replies:
            for r in replicas(net):
                if not r.joining and r._can_read():
                    assert r.tables.data["kv"].get("k0") == 0, f"{r} could serve a stale read"
    assert c.replies == {"k0": True}
    assert len(master.shards[0].config.replicas) == 5
    assert len({r.tables.fingerprint() for r in replicas(net)}) == 1
    do_read(net, c, Get("kv", "k0"), "read")
    net.run_for(0.05)
    assert c.replies["read"] == 0


def test_successor_whose_gap_cannot_be_filled_rejoins() -> None:
    from penumbra.core.gcs import GcsRejoin

    pred = GcsReplica("a", 0, config=ChainConfig(0, 1, ("a",)))
    for i in range(3):
        pred.handle(write("c", i + 1, KvPut(f"k{i}", i)), 0.0)  # committed as tail, not logged
    pred.handle(ChainConfigMsg(config=ChainConfig(0, 2, ("a", "b"))), 0.0)
    cmds = pred.handle(GcsSync(shard=0, epoch=2, seq=1, replica="b"), 0.0)
    (rejoin,) = sends(cmds, GcsRejoin, to="b")
    succ = GcsReplica("b", 0, config=ChainConfig(0, 2, ("a", "b")))
    succ._awaiting_catchup = True
    (join,) = succ.handle(rejoin.msg, 0.0)
    assert join.to == "head" and isinstance(join.msg, ReplicaJoin)
    assert succ.joining and not succ.active


def test_lost_forward_is_resent_under_steady_load() -> None:
    """One GcsForward is lost while a write arrives every 2 ms: the gap must
    be re-sent within a few resend intervals, not only once writes pause."""
    net, master, cms = make_chain()
    c = cms["c"]
    dropped = []

    def drop_seq3(src, to, msg):
        if isinstance(msg, GcsForward) and msg.seq == 3 and not dropped:
            dropped.append(msg)
            return True
        return False

    net.drop_fn = drop_seq3
    for i in range(100):
        do_write(net, c, KvPut(f"k{i}", i), i)
        net.run_for(0.002)
    assert dropped
    assert len(c.replies) >= 95, f"only {len(c.replies)} of 100 writes acknowledged under load"


def test_client_that_missed_config_while_head_is_dead_finds_the_chain() -> None:
    net, master, cms = make_chain()
    c = cms["c"]
    # the master's new config never reaches the client (redirects do)
    net.drop_fn = lambda src, to, msg: isinstance(msg, ChainConfigMsg) and to == "c" and src == "head"
    net.crash("gcs:0:0")  # the head
    net.run_for(0.1)
    assert master.shards[0].config.head == "gcs:0:1" and c.gcs.configs[0].epoch == 1
    do_write(net, c, KvPut("a", 1), "a")
    net.run_for(0.5)
    assert c.replies == {"a": True}  # a probe reached a live replica, which redirected
    assert c.gcs.configs[0].head == "gcs:0:1"


def test_client_probes_other_replicas_after_two_retries() -> None:
    c = GcsClient("me", Recorder(), retry_after=0.05)
    c.set_configs((ChainConfig(0, 1, ("a", "b", "c")),), 0.0)
    c.write(KvPut("x", 1), "w", 0.0)
    first = c.handle(TimerFired(key=("gcs-client", "retry")), 0.05)
    assert [s.to for s in sends(first, GcsWrite)] == ["a"]
    second = c.handle(TimerFired(key=("gcs-client", "retry")), 0.10)
    targets = [s.to for s in sends(second, GcsWrite)]
    assert targets == ["a", "b", "c"]


def test_replica_cut_while_alive_cannot_fork_the_chain() -> None:
    """The head's heartbeats are lost, so the master cuts it while it lives;
    it misses the new config and a client that also missed it keeps writing
    there.  The old head must not feed the new chain (found by the chain
    state machine: committed > seq), and it learns it is out."""
    net, master, cms = make_chain(clients=("c", "stale"))
    c, stale = cms["c"], cms["stale"]
    do_write(net, c, KvPut("a", 1), "a")
    net.run_for(0.01)

    def partition(src, to, msg):
        if src == "gcs:0:0" and to == "head":
            return True  # heartbeats lost: the master will cut it
        if isinstance(msg, ChainConfigMsg) and to in ("gcs:0:0", "stale"):
            return True  # neither learns of the new chain
        return False

    net.drop_fn = partition
    net.run_for(0.05)
    assert master.shards[0].config.replicas == ("gcs:0:1", "gcs:0:2")
    assert net.machines["gcs:0:0"].is_head  # it still believes so
    for i in range(5):
        do_write(net, stale, KvPut(f"s{i}", i), f"s{i}")  # to the old head (and later probes)
        do_write(net, c, KvPut(f"c{i}", i), f"c{i}")
        net.run_for(0.005)
    net.run_for(0.1)
    new_chain = [net.machines[r] for r in ("gcs:0:1", "gcs:0:2")]
    assert len({m.tables.fingerprint() for m in new_chain}) == 1  # (validate() ran at every step)
    assert {f"c{i}" for i in range(5)} <= set(c.replies)
    net.drop_fn = None
    net.run_for(0.5)
    assert not net.machines["gcs:0:0"].active  # told it is out
    assert len({m.tables.fingerprint() for m in new_chain}) == 1
    # the stale client's writes were retried at the real chain and applied once
    assert {f"s{i}" for i in range(5)} <= set(stale.replies)
    assert new_chain[-1].tables.data["kv"]["s4"] == 4


def test_lost_acks_and_reply_do_not_leave_a_write_unanswered() -> None:
    """The tail's reply and the acks of a write are all lost.  The client's
    retries reach the head, which only answers once it knows the write is
    committed: a middle replica that gets a re-sent entry it already has
    must say what it knows is committed (found by the chain state machine:
    the write stayed unanswered forever)."""
    net, master, cms = make_chain(n=4)
    c = cms["c"]
    net.drop_fn = lambda src, to, msg: isinstance(msg, (GcsAck, GcsReply)) and net.now < 0.01
    do_write(net, c, KvPut("a", 1), "a")
    net.run_for(0.5)
    assert c.replies == {"a": True}
    assert all(r.committed == 1 and not r.log for r in replicas(net))


# ---------------------------------------------------------------------------
# memory: one configs tuple shared by every client (issue 17)


def test_clients_share_the_welcome_configs_and_copy_only_on_a_change() -> None:
    from penumbra.core.messages import ChainConfigMsg, GcsWrite, Send

    cfgs = [ChainConfig(s, 1, (f"gcs:{s}:0", f"gcs:{s}:1")) for s in range(3)]
    master = ChainMaster(cfgs, GcsTiming(heartbeat_interval=0.1, heartbeat_timeout=0.3))
    welcome = master.configs()
    assert master.configs() is welcome  # one tuple until a config changes
    a, b = GcsClient("a", lambda *x: []), GcsClient("b", lambda *x: [])
    a.set_configs(welcome, 0.0)
    b.set_configs(welcome, 0.0)
    assert a.configs is welcome and b.configs is welcome and a.ready and a.num_shards == 3
    # a newer config of shard 1 reaches a alone: a copies, b and the tuple keep the old one
    a.handle(ChainConfigMsg(config=ChainConfig(1, 2, ("gcs:1:1",))), 0.1)
    assert [c.epoch for c in a.configs] == [1, 2, 1] and a.configs is not welcome
    assert welcome[1].epoch == 1 and b.configs is welcome
    (send,) = [c for c in a.write(KvPut("k", 1), "t", 0.2) if isinstance(c, Send)]
    assert send.to in ("gcs:0:0", "gcs:1:1", "gcs:2:0") and isinstance(send.msg, GcsWrite)
    assert send.to == a.configs[send.msg.shard].head
    # an older config is ignored, and the master's tuple follows its changes
    a.handle(ChainConfigMsg(config=ChainConfig(1, 1, ("gcs:1:0",))), 0.3)
    assert a.configs[1].epoch == 2
    master.start(0.0)
    master.handle(ReplicaHeartbeat(replica="gcs:0:0", shard=0, epoch=1, seq=0), 0.25)
    for s in (1, 2):
        for r in cfgs[s].replicas:
            master.handle(ReplicaHeartbeat(replica=r, shard=s, epoch=1, seq=0), 0.25)
    master.handle(TimerFired(key=("chain", "check")), 0.4)  # gcs:0:1 silent: cut
    after = master.configs()
    assert after is not welcome and after[0].replicas == ("gcs:0:0",) and after[0].epoch == 2
    assert after[1:] == welcome[1:] and master.configs() is after
    master.validate()
