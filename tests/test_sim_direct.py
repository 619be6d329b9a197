"""Direct actor calls on the simulator (``penumbra.sim.direct``): the same
pure machines as the real transport (``ActorCaller``, ``ActorInbox``,
``DirectHost``), driven over the simulated network, so faults apply."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import penumbra as ray
from penumbra import exceptions as exc
from penumbra.core.msg_direct import DirectCall
from penumbra.sim import runtime as simrt
from penumbra.sim.cluster import SimActor, SimCluster
from penumbra.sim.runtime import SimConfig
from penumbra.sim.trace import Trace
from penumbra.sim.workloads import TaskModel
from penumbra.verification.plans import plan_seed
from penumbra.verification.runner import run_plan

pytestmark = pytest.mark.timeout(120)

TWO = [{"CPU": 2}, {"CPU": 2, "spot": 1}]  # the driver on node:0, the actor on node:1


@pytest.fixture
def start():
    def go(config=None, **kw):
        ray.init(simulated=config if config is not None else True, **kw)
        return simrt.current_simulation()

    yield go
    ray.shutdown()
    assert not [t for t in threading.enumerate() if t.name.startswith("penumbra-sim")], "task threads left over"


@ray.remote(resources={"spot": 1})
class Counter:
    def __init__(self, n=0):
        self.n = n

    def inc(self, k=1):
        self.n += k
        return self.n

    def big(self, n):
        return np.arange(n, dtype=np.int64)


@ray.remote
def total(*xs):
    return int(sum(int(np.sum(x)) for x in xs))


def _calls_sent(sim) -> int:
    """DirectCall messages the driver's caller machine sent."""
    p = sim.cluster.direct.ports.get(sim.client_id)
    return 0 if p is None else len(p.caller.books)


@pytest.mark.parametrize("direct", [True, False])
def test_actor_calls_take_the_switched_path(start, direct):
    sim = start(SimConfig(nodes=TWO, direct_calls=direct))
    c = Counter.remote(10)
    assert ray.get([c.inc.remote() for _ in range(20)]) == list(range(11, 31))
    assert ray.get(total.remote(*[c.inc.remote() for _ in range(3)])) == 31 + 32 + 33
    served = sim.cluster.direct.served
    if direct:
        assert len(served) == 1 and _calls_sent(sim) == 1  # (one actor, called directly)
        (s,) = served.values()
        assert s.node.address == "node:1"
    else:
        assert not served and _calls_sent(sim) == 0


def test_the_switch_follows_the_real_runtimes_environment_variable(monkeypatch):
    monkeypatch.setenv("PENUMBRA_DIRECT_CALLS", "0")
    assert not SimCluster(nodes=1, start=False).direct.enabled
    monkeypatch.setenv("PENUMBRA_DIRECT_CALLS", "1")
    assert SimCluster(nodes=1, start=False).direct.enabled
    assert not SimCluster(nodes=1, start=False, direct_calls=False).direct.enabled


def test_a_partition_between_caller_and_actor_breaks_connections_not_calls(start):
    """Calls in flight when the caller's and the actor's machines are cut
    apart are lost with their connection; the caller resends them, and
    each runs once, in order."""
    sim = start(SimConfig(nodes=TWO, direct_calls=True))
    c = Counter.remote()
    assert ray.get(c.inc.remote()) == 1
    sim.cluster.partition(["node:0"], ["node:1"], duration=0.05)
    assert ray.get([c.inc.remote() for _ in range(30)]) == list(range(2, 32))
    assert sim.cluster.direct.breaks > 0  # (the partition did cut the calls' connection)
    assert ray.get(c.inc.remote(0)) == 31  # (nothing ran twice)


@pytest.mark.parametrize("retries", [0, -1])
def test_a_worker_killed_mid_stream(start, retries):
    """With max_task_retries the calls in flight go to the restarted actor;
    without, they fail with ActorDiedError, and later ones reach the new
    incarnation."""
    sim = start(SimConfig(nodes=TWO, direct_calls=True, task_time=0.01))
    c = Counter.options(max_restarts=1, max_task_retries=retries).remote()
    assert ray.get(c.inc.remote()) == 1
    refs = [c.inc.remote() for _ in range(10)]
    simrt.sleep(0.03)
    (s,) = sim.cluster.direct.served.values()
    sim.cluster.kill_worker(s.node.address, s.worker.worker_id, "killed by the test")
    out = []
    for r in refs:
        try:
            out.append(ray.get(r))
        except exc.ActorDiedError:
            out.append("died")
    if retries:
        assert "died" not in out
    else:
        assert "died" in out and out[0] != "died"
    assert ray.get(c.inc.remote()) >= 1  # (the new incarnation takes calls)
    new = [x for x in sim.cluster.direct.served.values() if x is not s]
    assert len(new) == 1 and new[0].inbox.incarnation == 1


def test_a_large_result_goes_through_the_actors_nodes_store(start):
    sim = start(SimConfig(nodes=TWO, direct_calls=True))
    c = Counter.remote()
    ref = c.big.remote(100_000)  # 800 KB: over the inline limit
    assert int(ray.get(ref).sum()) == sum(range(100_000))
    assert ray.get(total.remote(ref)) == sum(range(100_000))
    assert ref.id in sim.cluster.nodes["node:1"].store


def test_a_call_that_fails_at_its_caller_is_found_by_another_process(start):
    """A call to an actor killed for good fails at its caller, without a
    reply; its error is recorded on the caller's node, so a task handed its
    ref fails with it too (and does not wait for good)."""
    start(SimConfig(nodes=TWO, direct_calls=True))
    c = Counter.remote()
    assert ray.get(c.inc.remote()) == 1
    ray.kill(c)
    ref = c.inc.remote()
    with pytest.raises(exc.ActorDiedError):
        ray.get(ref)
    with pytest.raises(exc.ActorDiedError):
        ray.get(total.remote(ref))


def test_results_a_worker_died_before_reporting_reach_another_driver():
    """The worker answers a call, then dies before its batched report
    reaches its node: the caller hands the result to its own node when
    the row says the incarnation is gone, so another driver's get of the
    ref ends.  (Found by the swarm, seed 65.)"""
    c = SimCluster(nodes=2, seed=3, direct_calls=True, validate=True)
    c.wait_ready(timeout=10)
    caller, other = c.driver("node:0"), c.driver("node:0")
    a = caller.create_actor(TaskModel(init=0), cls="Counter", max_restarts=1)
    warm = a.call(TaskModel(duration=0.001), method="inc")
    caller.watch(list(warm.return_ids))
    c.run_until(lambda: caller.all_ready([warm]), timeout=10)
    spec = a.call(TaskModel(duration=0.001), method="inc")
    oid = spec.return_ids[0]
    c.run_until(lambda: caller.machine.local.get(oid) is not None, timeout=10)  # the reply came
    (s,) = c.direct.served.values()
    assert s.inbox.unreported, "the report should still be pending (REPORT_DELAY)"
    c.kill_worker(s.node.address, s.worker.worker_id, "killed before its report")
    got = {}
    other.watch([oid], lambda o, info, now: got.setdefault(o, info))
    c.run_until(lambda: oid in got, timeout=10)
    assert oid in got and got[oid].error is None


def test_a_lost_message_breaks_the_connection_and_the_call_is_resent():
    c = SimCluster(nodes=2, seed=1, direct_calls=True, validate=True)
    c.wait_ready(timeout=10)
    first = c.driver("node:0")
    a = first.create_actor(TaskModel(init=0), cls="Counter")
    warm = a.call(TaskModel(duration=0.001), method="inc")
    first.watch(list(warm.return_ids))
    c.run_until(lambda: first.all_ready([warm]), timeout=10)
    (s,) = c.direct.served.values()
    # a driver on the other node: the network is between it and the actor
    d = c.driver("node:1" if s.node.address == "node:0" else "node:0")
    a = SimActor(d, a.spec, a.creation)
    rid = c.link_fault([d.address], [s.endpoint], drop=1.0, duration=0.02)
    assert rid
    specs = [a.call(TaskModel(duration=0.001), method="inc") for _ in range(5)]
    for sp in specs:
        d.watch(list(sp.return_ids))
    c.run_until(lambda: d.all_ready(specs), timeout=10)
    assert d.all_ready(specs) and c.direct.breaks >= 1 and not d.errors()


@pytest.mark.parametrize("direct", ["1", "0"])
@pytest.mark.parametrize("seed", [39, 65, 297])
def test_swarm_seeds_with_actor_calls_pass_on_both_paths(monkeypatch, seed, direct):
    monkeypatch.setenv("PENUMBRA_DIRECT_CALLS", direct)
    plan = plan_seed(seed)
    assert plan.workload.actors
    for faults in (False, True):
        res = run_plan(plan, faults=faults)
        assert not res.violations, [str(v) for v in res.violations]
        assert bool(res.cluster.direct.served or res.cluster.direct.ports and any(
            p.caller.books for p in res.cluster.direct.ports.values())) == (direct == "1")


def test_direct_call_messages_are_in_the_trace():
    """The calls and replies travel on the simulated network (the trace
    hashes them like any message)."""
    c = SimCluster(nodes=2, seed=2, direct_calls=True, trace=Trace(keep=True))
    c.wait_ready(timeout=10)
    d = c.driver("node:0")
    a = d.create_actor(TaskModel(init=0), cls="Counter")
    specs = [a.call(TaskModel(duration=0.001), method="inc") for _ in range(3)]
    for sp in specs:
        d.watch(list(sp.return_ids))
    c.run_until(lambda: d.all_ready(specs), timeout=10)
    c.run_for(0.1)  # (the worker's batched report)
    text = "\n".join(c.kernel.trace.lines)
    assert DirectCall.__name__ in text and "DirectReply" in text and "DirectCallsRan" in text


def _firewall(c, s) -> None:
    """The worker behind ``s`` lives on, but nobody can connect to its
    endpoint any more (a firewall): its open connections close."""
    del c.direct.served[s.endpoint]
    for key in [k for k, conn in c.direct.open.items() if k[1] == s.endpoint and conn is None]:
        c.direct._break(key, 0.001)


def test_an_endpoint_nobody_can_reach_sends_the_actors_calls_through_the_nodes():
    """Connects to an alive actor's endpoint fail (``unreachable``, as the
    real link's failed connect): after a few over a second the caller gives
    the direct path up for that actor, says so once, and every call
    returns its value, in order, through the nodes (none lost, none run
    twice: the actor counts)."""
    c = SimCluster(nodes=2, seed=1, direct_calls=True, validate=True)
    c.wait_ready(timeout=10)
    d = c.driver("node:0")
    a = d.create_actor(TaskModel(init=0), cls="Counter")
    warm = a.call(TaskModel(duration=0.001), method="inc")
    d.watch(list(warm.return_ids))
    c.run_until(lambda: d.all_ready([warm]), timeout=10)
    (s,) = c.direct.served.values()
    _firewall(c, s)
    c.run_for(0.1)
    specs = [a.call(TaskModel(duration=0.001), method="inc") for _ in range(8)]
    for sp in specs:
        d.watch(list(sp.return_ids))
    c.run_until(lambda: d.all_ready(specs), timeout=30)
    assert d.all_ready(specs) and not d.errors()
    port = c.direct.ports[d.address]
    assert a.actor_id in port.caller.routed and port.caller.pending() == 0
    (log,) = [x for x in c.kernel.logs if "direct calls from this process given up" in x[3]]
    assert log[1] == d.address and "connections to its worker" in log[3]
    assert s.worker.worker_id in c.nodes[s.node.address].workers  # (the worker lived on)


def test_the_swarm_catches_a_caller_that_ignores_a_restarted_actors_endpoint():
    """The endpoint wait (``ENDPOINT_WAIT``) routes the calls of a caller
    that never uses a restarted incarnation's endpoint through the nodes,
    so its calls end: the swarm must still see that it had been sent that
    endpoint (``direct-endpoints``), and a correct caller never trips it."""
    from penumbra.verification.bugs import bug_named, planted

    plan = plan_seed(27)
    assert not [v for v in run_plan(plan, faults=True).violations if v.checker == "direct-endpoints"]
    with planted(bug_named("caller-ignores-newer-endpoint")):
        res = run_plan(plan, faults=True)
    assert [v for v in res.violations if v.checker == "direct-endpoints"], [str(v) for v in res.violations]
