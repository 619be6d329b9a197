"""The simulated network: topology, latency, bandwidth (FIFO links), message
sizes, drops/duplicates/delays, partitions, bulk transfers, fault schedules.

Times and sizes are chosen so that the expected values are exact.
"""

from __future__ import annotations

import pytest

from penumbra.core.ids import driver_task_id
from penumbra.core.messages import Message, Send, SubmitTask
from penumbra.core.specs import FunctionDescriptor, Payload, TaskSpec
from penumbra.sim.costs import PAPER
from penumbra.sim.faults import (
    Crash,
    FaultSchedule,
    Heal,
    Isolate,
    LinkFault,
    Partition,
    SlowHost,
)
from penumbra.sim.kernel import SimKernel
from penumbra.sim.network import INTER_RACK, INTRA_RACK, LOOPBACK, Network, SizeModel
from penumbra.sim.trace import Trace


class Ping(Message):
    n: int = 0


class Blob(Message):
    n: int = 0
    size: int = 0


class Recorder:
    def __init__(self, script=None):
        self.seen = []
        self.script = script or (lambda ev, now: [])

    def handle(self, event, now):
        self.seen.append((now, event))
        return self.script(event, now)

    def ns(self):
        return [e.n for _, e in self.seen]

    def times(self):
        return [t for t, _ in self.seen]


def cluster(lat=(0.0, 0.25, 1.0), bw=(0.0, 0.0, 0.0), hosts=("a", "b", "c"), racks=None,
            base=0, seed=0, trace=None):
    net = Network(latency=lat, bandwidth=bw, size_of=SizeModel(base))
    k = SimKernel(seed=seed, network=net, trace=trace)
    for i, h in enumerate(hosts):
        k.add_host(h, Recorder(), rack=(racks[i] if racks else 0))
    return k


def sender(k, src, sends, at=0.0):
    """Make ``src`` emit ``sends`` (list of Send) in one step at ``at``."""
    host = k.hosts[src]
    host.machine.script = lambda ev, now: sends if isinstance(ev, Ping) and ev.n == -1 else []
    k.inject(src, Ping(n=-1), at=at)


# ---------------------------------------------------------------------------
# topology and latency


def test_levels_and_latencies():
    k = cluster(hosts=("a", "b", "c"), racks=[0, 0, 1])
    k.add_client("drv", colocated_with="c")
    n = k.network
    assert n.level("a", "a") == LOOPBACK
    assert n.level("a", "b") == INTRA_RACK
    assert n.level("a", "c") == INTER_RACK
    assert n.level("drv", "c") == LOOPBACK and n.level("drv", "a") == INTER_RACK
    assert n.rack_of("drv") == 1 and n.machine_of("drv") == "c"
    assert (n.latency("a", "b"), n.latency("a", "c"), n.latency("c", "drv")) == (0.25, 1.0, 0.0)


def test_delivery_times_by_level():
    k = cluster(hosts=("a", "b", "c"), racks=[0, 0, 1])
    sender(k, "a", [Send(to="b", msg=Ping(n=1)), Send(to="c", msg=Ping(n=2)),
                    Send(to="a", msg=Ping(n=3))])
    k.run(until=5)
    assert k.hosts["b"].machine.times() == [0.25]
    assert k.hosts["c"].machine.times() == [1.0]
    assert [(t, e.n) for t, e in k.hosts["a"].machine.seen] == [(0.0, -1), (0.0, 3)]


def test_set_link_override():
    k = cluster()
    k.network.set_link("a", "b", latency=2.0)
    sender(k, "a", [Send(to="b", msg=Ping(n=1))])
    sender(k, "c", [Send(to="b", msg=Ping(n=2))])
    k.run(until=5)
    assert [(t, e.n) for t, e in k.hosts["b"].machine.seen] == [(0.25, 2), (2.0, 1)]
    assert k.network.latency("b", "a") == 0.25
    k.network.set_link("a", "b", latency=0.5, both_ways=True)
    assert k.network.link("a", "b").latency == 0.5 and k.network.latency("b", "a") == 0.5


# ---------------------------------------------------------------------------
# bandwidth and FIFO links


def test_bandwidth_serialises_transfers_on_a_link():
    # 100 B/s intra-rack; a 100-byte blob occupies a->b for 1 s
    k = cluster(bw=(0.0, 100.0, 100.0))
    sender(k, "a", [Send(to="b", msg=Blob(n=1, size=100))], at=0.0)
    sender_msgs = [Send(to="b", msg=Blob(n=2, size=25)), Send(to="c", msg=Blob(n=3, size=25))]
    k.hosts["a"].machine.script = (
        lambda ev, now: [Send(to="b", msg=Blob(n=1, size=100))] if ev.n == -1 else sender_msgs)
    k.inject("a", Ping(n=0), at=0.5)
    k.run(until=10)
    b = k.hosts["b"].machine
    c = k.hosts["c"].machine
    # blob 1: 0 -> 1.0 on the wire, +0.25 latency
    # blob 2: waits for the link until 1.0, 0.25 s on the wire, +0.25 -> 1.5
    # blob 3: other link, leaves at 0.5: 0.25 + 0.25 -> 1.0
    assert [(t, e.n) for t, e in b.seen] == [(1.25, 1), (1.5, 2)]
    assert [(t, e.n) for t, e in c.seen] == [(1.0, 3)]
    assert k.network.link("a", "b").free_at == 1.25


def test_a_batch_travels_together():
    k = cluster(bw=(0.0, 100.0, 100.0))
    sender(k, "a", [Send(to="b", msg=Blob(n=i, size=25)) for i in range(4)])
    k.run(until=10)
    # 100 bytes in one batch: 1 s on the wire, all arrive at 1.25
    assert k.hosts["b"].machine.seen == [(1.25, Blob(n=i, size=25)) for i in range(4)]


def test_size_model():
    sm = SizeModel(256)
    assert sm(Ping(n=1)) == 256
    assert sm(Blob(size=1000)) == 1256
    spec = TaskSpec(task_id=driver_task_id(1), job_id=1, parent_task_id=driver_task_id(1),
                    function=FunctionDescriptor(b"f", "f"), args=Payload(4096))
    assert sm(SubmitTask(client="d", spec=spec)) == 256 + 4096
    assert sm.batch([Ping(), Blob(size=10)]) == 522
    custom = SizeModel(10, overrides={Ping: 1, Blob: lambda m: 2 * m.size})
    assert custom.batch([Ping(), Blob(size=7)]) == 15


def test_network_from_costs():
    n = Network.from_costs(PAPER)
    assert n.latency_levels == (5e-6, 30e-6, 100e-6)
    assert n.bandwidth_levels[1] == pytest.approx(3.125e9)
    assert n.size_of(Ping()) == 256


def test_bulk_transfer_channel_is_fifo_and_separate():
    k = cluster(bw=(0.0, 100.0, 100.0))
    n = k.network
    assert n.transfer("a", "b", 100, start=0.0) == 1.25
    assert n.transfer("a", "b", 50, start=0.5) == 1.75     # waits behind the first
    assert n.transfer("a", "b", 50, start=0.0, channel="other") == 0.75
    assert n.transfer("b", "a", 100, start=0.0) == 1.25    # the other direction is free
    assert n.transfer_time("a", "c", 100) == 1.25
    # control messages are not held up by bulk transfers
    sender(k, "a", [Send(to="b", msg=Ping(n=1))])
    k.run(until=5)
    assert k.hosts["b"].machine.times() == [0.25]
    n.partition({"a"}, {"b"})
    assert n.transfer("a", "b", 10, start=5.0) is None


# ---------------------------------------------------------------------------
# per-message faults


def _blast(seed, count=400, **fault):
    k = cluster(seed=seed)
    k.network.add_fault(**fault)
    sender(k, "a", [Send(to="b", msg=Ping(n=i)) for i in range(count)])
    k.run(until=100)
    return k


def test_drops_are_seeded_and_roughly_at_rate():
    k1 = _blast(1, drop=0.25)
    k2 = _blast(1, drop=0.25)
    k3 = _blast(2, drop=0.25)
    got1 = k1.hosts["b"].machine.ns()
    assert got1 == k2.hosts["b"].machine.ns()
    assert got1 != k3.hosts["b"].machine.ns()
    assert 240 < len(got1) < 360
    assert got1 == sorted(got1)  # drops alone never reorder
    assert k1.network.stats["dropped"] == 400 - len(got1)


def test_duplicates():
    k = _blast(3, duplicate=0.5)
    got = k.hosts["b"].machine.ns()
    assert sorted(set(got)) == list(range(400))
    assert len(got) == 400 + k.network.stats["duplicated"]
    assert 150 < k.network.stats["duplicated"] < 250


def test_random_delay_reorders():
    k = _blast(4, delay=0.5)
    got = k.hosts["b"].machine.ns()
    assert sorted(got) == list(range(400)) and got != list(range(400))
    assert all(0.25 <= t < 0.75 for t in k.hosts["b"].machine.times()[1:])


def test_a_stalled_link_delivers_everything_in_one_burst_in_order():
    """``hold_until``: what is sent on a stalled link arrives all at once
    when the stall ends, in the order sent (a heartbeat storm at the head);
    other links, and messages sent after, are not held; with a delay rule
    too, a message may come later than the burst, never earlier."""
    k = cluster(lat=(0.0, 0.25, 1.0))
    k.network.add_fault(src={"a"}, dst={"b"}, hold_until=3.0)
    # "a" sends one message to "b" and one to "c" each time it is poked (every 0.5 s)
    k.hosts["a"].machine.script = lambda ev, now: (
        [Send(to="b", msg=Ping(n=-ev.n - 1)), Send(to="c", msg=Ping(n=99 - ev.n))] if ev.n < 0 else [])
    for i in range(5):
        k.inject("a", Ping(n=-i - 1), at=0.5 * i)
    k.run(until=2.9)
    assert k.hosts["b"].machine.ns() == [] and len(k.hosts["c"].machine.ns()) == 5
    k.run(until=3.5)
    assert k.hosts["b"].machine.ns() == [0, 1, 2, 3, 4]
    assert set(k.hosts["b"].machine.times()) == {3.0}
    assert k.network.stats["held"] == 5

    k = cluster()
    k.network.add_fault(hold_until=1.0, delay=2.0)
    sender(k, "a", [Send(to="b", msg=Ping(n=i)) for i in range(50)])
    k.run(until=10)
    assert sorted(k.hosts["b"].machine.ns()) == list(range(50))
    assert all(t >= 1.0 for t in k.hosts["b"].machine.times())


def test_sim_cluster_stall_ends_by_itself():
    from penumbra.core.layout import ClusterLayout, NodeShape
    from penumbra.sim.cluster import SimCluster

    c = SimCluster(ClusterLayout(nodes=(NodeShape(),) * 2, heartbeat_interval=0.05, node_timeout=0.4))
    c.wait_ready(timeout=5.0)
    c.stall(list(c.nodes), ["head"], 0.3)
    c.run_for(1.0)
    assert c.kernel.network.stats["held"] >= 2 * 5  # both nodes' heartbeats, for 0.3 s
    assert not c.kernel.network._rules  # the stall is over
    assert sorted(c.alive_nodes()) == sorted(c.nodes) and not c.head.dead_nodes  # under the timeout
    with pytest.raises(ValueError, match="duration"):
        c.stall(None, ["head"], 0)


def test_fault_rules_match_sources_and_destinations_and_can_be_removed():
    k = cluster()
    rid = k.network.add_fault(src={"a"}, dst={"b"}, drop=1.0)
    sender(k, "a", [Send(to="b", msg=Ping(n=1)), Send(to="c", msg=Ping(n=2))], at=0.0)
    sender(k, "c", [Send(to="b", msg=Ping(n=3))], at=0.0)
    k.run(until=1)
    assert k.hosts["b"].machine.ns() == [3] and k.hosts["c"].machine.ns()[-1] == 2
    k.network.remove_fault(rid)
    sender(k, "a", [Send(to="b", msg=Ping(n=4))], at=1.0)
    k.run(until=2)
    assert k.hosts["b"].machine.ns() == [3, 4]
    with pytest.raises(ValueError, match="probability"):
        k.network.add_fault(drop=1.5)


def test_network_faults_appear_in_the_trace():
    tr = Trace(keep=True)
    k = cluster(trace=tr)
    k.network.add_fault(drop=1.0)
    sender(k, "a", [Send(to="b", msg=Ping(n=1))])
    k.run(until=1)
    assert "(0.0, 'a', 'x', 'drop', 'b', ('Ping', '', 1))" in tr.lines


# ---------------------------------------------------------------------------
# partitions


def test_partition_cuts_both_ways_and_heals():
    k = cluster(hosts=("a", "b", "c", "d"))
    pid = k.network.partition({"a", "b"}, {"c"})
    assert k.network.is_cut("a", "c") and k.network.is_cut("c", "b")
    assert not k.network.is_cut("a", "b") and not k.network.is_cut("a", "d")
    sender(k, "a", [Send(to="c", msg=Ping(n=1)), Send(to="b", msg=Ping(n=2)),
                    Send(to="d", msg=Ping(n=3))])
    sender(k, "c", [Send(to="a", msg=Ping(n=4))])
    k.run(until=1)
    assert k.hosts["c"].machine.ns() == [-1]
    assert k.hosts["b"].machine.ns() == [2] and k.hosts["d"].machine.ns() == [3]
    assert k.network.stats["cut"] == 2
    k.network.heal(pid)
    sender(k, "a", [Send(to="c", msg=Ping(n=5))], at=1.0)
    k.run(until=2)
    assert k.hosts["c"].machine.ns() == [-1, 5]


def test_partition_against_everyone_else_and_isolation_with_clients():
    k = cluster(hosts=("a", "b", "c"))
    drv = k.add_client("drv", colocated_with="a")
    k.network.partition({"a"})
    assert k.network.is_cut("a", "b") and k.network.is_cut("drv", "c")
    assert not k.network.is_cut("b", "c") and not k.network.is_cut("drv", "a")
    k.network.heal()
    iso = k.network.isolate("b")
    assert k.network.is_cut("b", "a") and k.network.is_cut("c", "b")
    assert not k.network.is_cut("a", "c") and not k.network.is_cut("b", "b")
    k.network.heal(iso)
    assert not k.network.is_cut("b", "a")
    drv.send("a", Ping(n=1))
    k.run(until=1)
    assert k.hosts["a"].machine.ns() == [1]


def test_messages_in_flight_when_a_partition_starts_still_arrive():
    k = cluster()
    sender(k, "a", [Send(to="b", msg=Ping(n=1))])
    k.call_at(0.125, k.network.partition, {"a"}, {"b"})
    k.run(until=1)
    assert k.hosts["b"].machine.ns() == [1]


# ---------------------------------------------------------------------------
# fault schedules on the network


def test_random_schedule_is_deterministic_and_respects_protect():
    hosts = [f"node:{i}" for i in range(8)] + ["head"]
    kw = dict(hosts=hosts, horizon=20.0, protect=["head"], crash_rate=1.0,
              restart_after=(0.5, 1.0), partition_rate=0.5, isolate_rate=0.2,
              link_fault_rate=0.5, slow_rate=0.5)
    s1 = FaultSchedule.random(11, **kw)
    s2 = FaultSchedule.random(11, hosts=list(reversed(hosts)), **{
        k: v for k, v in kw.items() if k != "hosts"})
    assert s1 == s2 and len(s1) > 10
    assert s1 != FaultSchedule.random(12, **kw)
    assert all("head" not in f.targets() for _, f in s1)
    times = [t for t, _ in s1]
    assert times == sorted(times) and all(0 <= t < 20 for t in times)
    assert {type(f) for _, f in s1} >= {Crash, Partition, LinkFault, SlowHost, Isolate}
    assert "Crash(node:" in str(s1)
    assert len(s1.without(0)) == len(s1) - 1 and len(s1.truncated(3)) == 3


def test_max_down_caps_concurrent_crashes():
    s = FaultSchedule.random(5, hosts=[f"n{i}" for i in range(10)], horizon=10.0,
                             crash_rate=5.0, restart_after=2.0, max_down=1)
    crashes = [(t, t + f.restart_after) for t, f in s if isinstance(f, Crash)]
    for (a0, a1), (b0, _) in zip(crashes, crashes[1:]):
        assert b0 >= a1


def test_schedule_partition_and_link_fault_windows():
    k = cluster(hosts=("a", "b", "c"))
    sched = FaultSchedule([
        (1.0, Partition(("a",), ("b",), duration=1.0)),
        (3.0, LinkFault(("a",), ("c",), drop=1.0, duration=1.0, both_ways=True)),
        (5.0, Isolate("c")),
        (6.0, Heal()),
    ])
    inst = sched.install(k)
    for t in (0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5):
        k.call_at(t, k.send, "a", "b", Ping(n=int(t * 10)))
        k.call_at(t, k.send, "c", "a", Ping(n=int(t * 10) + 1))
    k.run(until=10)
    assert k.hosts["b"].machine.ns() == [5, 25, 35, 45, 55, 65]   # cut in [1, 2)
    assert k.hosts["a"].machine.ns() == [6, 16, 26, 46, 66]       # cut in [3, 4), [5, 6)
    assert len(inst.applied) == 4


def test_faults_normalise_address_sets():
    p = Partition({"b", "a"}, {"d", "c"}, duration=1.0)
    assert p.side_a == ("a", "b") and p.side_b == ("c", "d")
    assert p == Partition(["a", "b"], ("c", "d"), duration=1.0) and hash(p) == hash(
        Partition(("a", "b"), ("c", "d"), duration=1.0))
    assert LinkFault(src="a", dst={"c", "b"}).dst == ("b", "c")
    assert str(p) == "Partition({a,b} | {c,d} for 1s)"


def test_fault_times_are_checked():
    k = cluster()
    k.run(until=2)
    with pytest.raises(ValueError, match="before now"):
        FaultSchedule([(1.0, Heal())]).install(k)
    FaultSchedule([(1.0, Heal())]).install(k, offset=2.0)
    with pytest.raises(ValueError, match="finite number"):
        FaultSchedule([(-1.0, Heal())])
    with pytest.raises(TypeError, match="Fault"):
        FaultSchedule([(1.0, "crash")])


# ---------------------------------------------------------------------------
# partitioned runs: the window bound and the capture of batches between machines


def test_min_machine_latency_bounds_the_partition_window():
    k = cluster(hosts=("a", "b", "c"), racks=[0, 0, 1])
    k.add_client("drv", colocated_with="a")
    n = k.network
    assert n.min_machine_latency() == 0.25
    n.set_link("a", "drv", latency=0.01)  # loopback: not between machines
    assert n.min_machine_latency() == 0.25
    n.set_link("b", "c", latency=0.125)
    assert n.min_machine_latency() == 0.125


def test_capture_takes_batches_between_machines_and_keeps_loopback():
    """With ``capture`` set, what leaves for another machine is recorded
    (arrival, destination, messages, source, departure) instead of queued;
    what stays on the machine is delivered as usual."""
    k = cluster(hosts=("a", "b", "c"), racks=[0, 0, 1])
    k.network.capture = []
    sender(k, "a", [Send(to="b", msg=Ping(n=1)), Send(to="b", msg=Ping(n=2)), Send(to="c", msg=Ping(n=3)),
                    Send(to="a", msg=Ping(n=4))])
    k.run(until=5)
    got = [(r[0], r[3], [m.n for m in r[4]], r[6], r[8]) for r in k.network.capture]
    assert got == [(0.25, "b", [1, 2], "a", 0.0), (1.0, "c", [3], "a", 0.0)]
    assert k.hosts["b"].machine.seen == [] and k.hosts["a"].machine.ns() == [-1, 4]
    assert len(k.network.captured_links) == 2


def test_a_delivered_batch_is_not_held_by_its_link():
    # ``Link.last`` lets a batch sent at the same instant ride along; once
    # delivered nothing can ride it, and holding it kept one batch of
    # messages alive per link ever used (issue 17: 10,000 nodes)
    k = cluster()
    sender(k, "a", [Send(to="b", msg=Ping(n=1)), Send(to="b", msg=Ping(n=2))])
    k.run(until=0.1)
    link = k.network.link("a", "b")
    assert link.last is not None and link.last[4] == [Ping(n=1), Ping(n=2)]  # in flight
    k.run(until=5)
    assert link.last is None
    assert k.hosts["b"].machine.ns() == [1, 2]
    sender(k, "a", [Send(to="b", msg=Ping(n=3))], at=6.0)
    k.run(until=10)
    assert k.hosts["b"].machine.ns() == [1, 2, 3] and link.last is None


def _gossip(sweep_min, monkeypatch):
    """30 hosts in 3 racks pass blobs around, each to a few others chosen by
    the blob's number: many links, most of them idle most of the time."""
    import penumbra.sim.network as N

    monkeypatch.setattr(N, "_SWEEP_MIN", sweep_min)
    hosts = [f"h{i}" for i in range(30)]
    k = cluster(bw=(0.0, 400.0, 100.0), hosts=hosts, racks=[i % 3 for i in range(30)])

    def script_for(i):
        def script(ev, now):
            if ev.n >= 400:
                return []
            return [Send(to=hosts[(i * 7 + ev.n * (j + 3)) % 30], msg=Blob(n=ev.n + 1 + j, size=10 + ev.n % 40))
                    for j in range(2) if (i + ev.n + j) % 30 != i]
        return script

    for i, h in enumerate(hosts):
        k.hosts[h].machine.script = script_for(i)
    for i in range(0, 30, 5):
        k.inject(hosts[i], Blob(n=0), at=0.1 * i)
    k.run(until=4.0)
    return k, {h: [(t, e.n) for t, e in k.hosts[h].machine.seen] for h in hosts}


def test_idle_links_are_forgotten_and_nothing_changes(monkeypatch):
    """``Network._sweep_links`` drops control links with nothing on them (a
    new one acts the same); every arrival time stays as without sweeping."""
    k0, seen0 = _gossip(10**9, monkeypatch)
    k1, seen1 = _gossip(8, monkeypatch)
    assert seen1 == seen0 and sum(map(len, seen0.values())) > 1000
    made = k0.network.links_forgotten + sum(len(d) for d in k0.network._out.values())
    assert k0.network.links_forgotten == 0 and k1.network.links_forgotten > made // 2
    # the endpoints use the network's (swept) tables
    assert all(k1.endpoints[a].links is d for a, d in k1.network._out.items())
