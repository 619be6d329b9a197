"""SimKernel: delivery, CPU queueing, batching, timers, handlers, crashes,
clients, validation, determinism (trace hashes) and fault schedules on hosts.

Times are dyadic (0.25, 0.125, ...) so that the expected values are exact.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from penumbra.core.messages import (
    Command,
    Event,
    Log,
    Message,
    Send,
    SetTimer,
    TimerFired,
)
from penumbra.sim.costs import PAPER, ZERO, CostModel
from penumbra.sim.faults import Crash, FaultSchedule, Restart, SlowHost
from penumbra.sim.kernel import SimKernel, UnhandledCommand, UnknownAddress
from penumbra.sim.network import Network
from penumbra.sim.trace import Trace

ROOT = Path(__file__).resolve().parents[1]


class Ping(Message):
    n: int = 0
    src: str = ""


class Work(Command):
    """A machine-specific command: do ``duration`` seconds of work."""

    job: int
    duration: float


class WorkDone(Event):
    job: int


class Start(Event):
    pass


class Recorder:
    """Records (now, event); ``script(event, now) -> commands``."""

    def __init__(self, script=None):
        self.seen: list[tuple[float, Event]] = []
        self.script = script or (lambda ev, now: [])
        self.validations = 0

    def handle(self, event, now):
        self.seen.append((now, event))
        return self.script(event, now)

    def validate(self):
        self.validations += 1

    def times(self, cls=None):
        return [t for t, e in self.seen if cls is None or isinstance(e, cls)]

    def ns(self):
        return [e.n for _, e in self.seen if isinstance(e, Ping)]


def net(lat=(0.0, 0.25, 1.0), bw=(0.0, 0.0, 0.0), **kw) -> Network:
    return Network(latency=lat, bandwidth=bw, **kw)


def pingpong(peer: str, limit: int):
    def script(ev, now):
        if isinstance(ev, Ping) and ev.n < limit:
            return [Send(to=peer, msg=Ping(n=ev.n + 1))]
        return []
    return script


# ---------------------------------------------------------------------------
# delivery and time


def test_ping_pong_latency_exact():
    k = SimKernel(seed=1, network=net())
    a = k.add_host("a", Recorder(pingpong("b", 5)))
    b = k.add_host("b", Recorder(pingpong("a", 5)))
    k.inject("a", Ping(n=0))
    k.run(until=10)
    assert a.machine.ns() == [0, 2, 4] and b.machine.ns() == [1, 3, 5]
    assert a.machine.times() == [0.0, 0.5, 1.0]
    assert b.machine.times() == [0.25, 0.75, 1.25]
    assert k.now == 10
    assert k.stats()["events_handled"] == 6


def test_inter_rack_latency_and_loopback():
    k = SimKernel(network=net())
    a = k.add_host("a", Recorder(), rack=0)
    c = k.add_host("c", Recorder(), rack=1)
    drv = k.add_client("drv", colocated_with="a")
    k.send("a", "c", Ping(n=1))
    drv.send("a", Ping(n=2))  # loopback: latency 0
    k.run(until=5)
    assert c.machine.times() == [1.0]
    assert a.machine.times() == [0.0]


def test_fifo_order_on_a_link():
    k = SimKernel(network=net())
    many = [Send(to="b", msg=Ping(n=i)) for i in range(20)]
    k.add_host("a", Recorder(lambda ev, now: many if isinstance(ev, Start) else []))
    b = k.add_host("b", Recorder())
    k.inject("a", Start())
    k.run(until=1)
    assert b.machine.ns() == list(range(20))


def test_cpu_cost_queues_events_fifo():
    # every event costs 0.5 s; three arrive at once, one more at t=0.25
    k = SimKernel(network=net(lat=(0.0, 0.25, 0.25)))
    h = k.add_host("h", Recorder(), cost=0.5)
    k.add_client("c1")
    k.add_client("c2")
    for i in range(3):
        k.inject("h", Ping(n=i))
    k.send("c1", "h", Ping(n=9))  # arrives at 0.25, waits until 1.5
    k.run(until=10)
    assert h.machine.times() == [0.0, 0.5, 1.0, 1.5]
    assert h.machine.ns() == [0, 1, 2, 9]
    assert h.busy_time == 2.0


def test_commands_take_effect_after_the_cpu_cost():
    k = SimKernel(network=net())
    k.add_host("a", Recorder(pingpong("b", 1)), cost=0.125)
    b = k.add_host("b", Recorder())
    k.inject("a", Ping(n=0))
    k.run(until=5)
    # handled at 0, finished at 0.125, +0.25 latency
    assert b.machine.times() == [0.375]


def test_cost_model_kinds_and_per_command():
    costs = ZERO.with_(handle={"node": 0.25, "head": 0.5}, per_command=0.125,
                       task_scheduling=1.0, task_event_types=("Ping",))
    k = SimKernel(network=net(), costs=costs)
    node = k.add_host("node:0", Recorder(pingpong("head", 0)))
    head = k.add_host("head", Recorder(lambda ev, now: [Send(to="node:0", msg=Ping(n=5)),
                                                        Send(to="node:0", msg=Ping(n=6))]))
    k.inject("head", Start())
    k.run(until=10)
    # head: 0.5 + 2 x 0.125 = 0.75, +0.25 latency -> both arrive at 1.0 (one batch)
    # node: each Ping costs 0.25 + 1.0 (task scheduling) -> 1.0, 2.25
    assert node.machine.times() == [1.0, 2.25]
    assert head.busy_time == 0.75
    assert node.busy_time == 2.5
    assert k.network.batches == 1


def _busy_and_other(setup=None, look_ahead=100.0):
    """``busy`` (1 s an event) with four Pings queued at 0, ``other`` with
    two due at 1.5 and 2.0; returns each host's (now, n) and the global log."""
    k = SimKernel(network=net(lat=(0.0, 0.25, 0.25)))
    k.look_ahead = look_ahead  # (seconds of events here; 1 ms by default)
    log: list[tuple[float, str, int]] = []

    def rec(name):
        def script(ev, now):
            log.append((now, name, getattr(ev, "n", getattr(ev, "job", -1))))
            return []
        return script

    k.add_host("busy", Recorder(rec("busy")), cost=1.0)
    k.add_host("other", Recorder(rec("other")))
    for i in range(4):
        k.inject("busy", Ping(n=i))
    k.inject("other", Ping(n=100), at=1.5)  # due between busy's 2nd and 3rd
    k.inject("other", Ping(n=101), at=2.0)  # at busy's 3rd start
    if setup is not None:
        setup(k)
    k.run(until=10)
    per = {a: [(t, n) for t, who, n in log if who == a] for a in ("busy", "other")}
    return per, log


def test_look_ahead_keeps_each_hosts_order():
    """A busy host handles every event already in its inbox in one go,
    ahead of env.now, though others are due meanwhile: what arrives later
    queues behind them anyway, so each host sees exactly the events, in
    the order and at the times, of the one-wake-up-per-event schedule;
    only the interleaving of different hosts' steps differs."""
    per, log = _busy_and_other()
    assert per == {"busy": [(0.0, 0), (1.0, 1), (2.0, 2), (3.0, 3)],
                   "other": [(1.5, 100), (2.0, 101)]}
    # (one wake-up per event interleaved them: busy 0, 1, other 100, 101, busy 2, 3)
    assert log == [(0.0, "busy", 0), (1.0, "busy", 1), (2.0, "busy", 2), (3.0, "busy", 3),
                   (1.5, "other", 100), (2.0, "other", 101)]
    # no further than ``look_ahead`` past the entry that woke it (0): busy
    # stops before its third (2.0 > 1.5) and goes on from a wake-up at 2.0
    per, log = _busy_and_other(look_ahead=1.5)
    assert per["busy"] == [(0.0, 0), (1.0, 1), (2.0, 2), (3.0, 3)]
    assert log == [(0.0, "busy", 0), (1.0, "busy", 1), (1.5, "other", 100),
                   (2.0, "other", 101), (2.0, "busy", 2), (3.0, "busy", 3)]


def test_look_ahead_stops_at_a_barrier_and_at_urgent_events():
    """What could change a host's next step out of turn stops its
    look-ahead: a kernel callback (here: it slows the host at 1.5) and an
    urgent event of its own (here: delivered by its callback at 1.5)."""
    per, _ = _busy_and_other(lambda k: k.call_at(1.5, k.slow, "busy", 2.0))
    assert per["busy"] == [(0.0, 0), (1.0, 1), (2.0, 2), (4.0, 3)]

    def urgent(k):
        h = k.host("busy")
        h.call_at(1.5, lambda: h.deliver_now(WorkDone(job=9), urgent=True))
    per, _ = _busy_and_other(urgent)
    assert per["busy"] == [(0.0, 0), (1.0, 1), (2.0, 9), (3.0, 2), (4.0, 3)]

    # stopped for its own callback, the host queues no wake-up: the
    # callback's entry resumes it (4 + 2 injections, the callback, the
    # run's horizon: 8 entries, none more)
    k = SimKernel(network=net())
    k.look_ahead = 100.0
    h = k.add_host("busy", Recorder(), cost=1.0)
    for i in range(4):
        k.inject("busy", Ping(n=i))
    h.call_at(1.5, lambda: h.deliver_now(WorkDone(job=9), urgent=True))
    k.add_host("other", Recorder())
    k.inject("other", Ping(n=100), at=1.5)
    k.inject("other", Ping(n=101), at=2.0)
    k.run(until=10)
    assert [(t, getattr(e, "n", -1)) for t, e in h.machine.seen] == [
        (0.0, 0), (1.0, 1), (2.0, -1), (3.0, 2), (4.0, 3)]
    assert next(k._eid) == 8

    def program(k):  # a program's own callback is no barrier
        k.program_call_at(1.5, k.host("busy").send, "other", Ping(n=7))
    per, log = _busy_and_other(program)
    assert per["busy"] == [(0.0, 0), (1.0, 1), (2.0, 2), (3.0, 3)]
    assert log[:4] == [(0.0, "busy", 0), (1.0, "busy", 1), (2.0, "busy", 2), (3.0, "busy", 3)]


def test_run_until_does_not_handle_events_at_the_horizon():
    k = SimKernel(network=net())
    h = k.add_host("h", Recorder())
    k.inject("h", Ping(n=1), at=1.0)
    k.inject("h", Ping(n=2), at=2.0)
    k.run(until=2.0)
    assert h.machine.ns() == [1]
    k.run(until=3.0)
    assert h.machine.ns() == [1, 2]


def test_env_run_also_drives_kernel_entries():
    k = SimKernel(network=net())
    a = k.add_host("a", Recorder(pingpong("b", 3)))
    b = k.add_host("b", Recorder(pingpong("a", 3)))
    k.inject("a", Ping(n=0))
    k.env.run(until=10)
    assert a.machine.ns() == [0, 2] and b.machine.ns() == [1, 3]


def test_run_until_predicate_and_timeout():
    k = SimKernel(network=net())
    a = k.add_host("a", Recorder(pingpong("b", 100)))
    k.add_host("b", Recorder(pingpong("a", 100)))
    k.inject("a", Ping(n=0))
    assert k.run_until(lambda: len(a.machine.seen) >= 3, timeout=100)
    assert k.now == 1.0
    assert not k.run_until(lambda: False, timeout=2.0)
    assert k.now == 3.0
    assert k.run_until(lambda: len(a.machine.seen) >= 10, timeout=50, check_every=1.0)


# ---------------------------------------------------------------------------
# batching


def test_same_instant_sends_to_one_destination_are_one_batch():
    k = SimKernel(network=net())
    k.add_host("a", Recorder(lambda ev, now: [Send(to="b", msg=Ping(n=i)) for i in range(5)]
                             + [Send(to="c", msg=Ping(n=9))]))
    b = k.add_host("b", Recorder())
    c = k.add_host("c", Recorder())
    k.inject("a", Start())
    k.run(until=1)
    assert b.machine.ns() == [0, 1, 2, 3, 4] and c.machine.ns() == [9]
    assert k.network.batches == 2  # one per destination
    assert b.handled == 5


def test_same_instant_sends_from_separate_steps_share_a_batch():
    # two separate arrivals at the same instant, each step sends to "c"
    k = SimKernel(network=net())
    k.add_host("b", Recorder(lambda ev, now: [Send(to="c", msg=Ping(n=ev.n))]))
    c = k.add_host("c", Recorder())
    k.inject("b", Ping(n=1), at=1.0)
    k.inject("b", Ping(n=2), at=1.0)
    k.run(until=5)
    assert c.machine.ns() == [1, 2] and c.machine.times() == [1.25, 1.25]
    assert k.network.batches == 1


def test_client_sends_in_one_instant_are_one_batch():
    k = SimKernel(network=net())
    b = k.add_host("b", Recorder())
    cl = k.add_client("cl")
    for i in range(10):
        cl.send("b", Ping(n=i))
    k.run(until=1)
    assert b.machine.ns() == list(range(10))
    assert k.network.batches == 1


# ---------------------------------------------------------------------------
# timers, logs, handlers


def test_timers_fire_and_past_timers_fire_after_handling():
    def script(ev, now):
        if isinstance(ev, Start):
            return [SetTimer(at=2.0, key="later", stimulus_id="s1"),
                    SetTimer(at=-1.0, key="past")]
        return []
    k = SimKernel(network=net())
    h = k.add_host("h", Recorder(script), cost=0.25)
    k.inject("h", Start())
    k.run(until=5)
    fired = [(t, e.key, e.stimulus_id) for t, e in h.machine.seen if isinstance(e, TimerFired)]
    assert fired == [(0.25, "past", ""), (2.0, "later", "s1")]


def test_log_commands_are_recorded(capsys):
    k = SimKernel(network=net(), print_logs=True)
    k.add_host("h", Recorder(lambda ev, now: [Log(level="warning", text="hello", job_id=3)]))
    k.inject("h", Start())
    k.run(until=1)
    assert list(k.logs) == [(0.0, "h", "warning", "hello", 3)]
    assert "h warning: hello" in capsys.readouterr().out


def test_handler_schedules_completion_events():
    def on_work(host, cmd):
        host.deliver_after(cmd.duration, WorkDone(job=cmd.job))

    def script(ev, now):
        if isinstance(ev, Start):
            return [Work(job=1, duration=2.0), Work(job=2, duration=0.5)]
        return []
    k = SimKernel(network=net())
    h = k.add_host("h", Recorder(script), {Work: on_work})
    k.inject("h", Start())
    k.run(until=5)
    assert [(t, e.job) for t, e in h.machine.seen if isinstance(e, WorkDone)] == [
        (0.5, 2), (2.0, 1)]


def test_kernel_level_and_base_class_handlers():
    class SubWork(Work):
        pass

    got = []
    k = SimKernel(network=net())
    k.handlers[Work] = lambda host, cmd: got.append((host.address, type(cmd).__name__))
    k.add_host("h", Recorder(lambda ev, now: [SubWork(job=1, duration=0)]))
    k.inject("h", Start())
    k.run(until=1)
    assert got == [("h", "SubWork")]


def test_unhandled_command_is_a_clear_error():
    k = SimKernel(network=net())
    k.add_host("h", Recorder(lambda ev, now: [Work(job=1, duration=1)]))
    k.inject("h", Start())
    with pytest.raises(UnhandledCommand, match=r"'h'.*Work.*handlers=\{Work: fn\}"):
        k.run(until=1)


def test_handler_can_send_and_call_later():
    def on_work(host, cmd):
        host.call_after(cmd.duration, lambda: host.send("b", Ping(n=cmd.job)))
    k = SimKernel(network=net())
    k.add_host("a", Recorder(lambda ev, now: [Work(job=7, duration=1.0)]), {Work: on_work})
    b = k.add_host("b", Recorder())
    k.inject("a", Start())
    k.run(until=5)
    assert [(t, e.n) for t, e in b.machine.seen] == [(1.25, 7)]


def test_host_send_from_outside_a_step_leaves_now():
    k = SimKernel(network=net())
    a = k.add_host("a", Recorder())
    b = k.add_host("b", Recorder())
    k.call_at(2.0, a.send, "b", Ping(n=1))
    k.run(until=5)
    assert [(t, e.n) for t, e in b.machine.seen] == [(2.25, 1)]


def test_machine_exception_names_host_and_event():
    def boom(ev, now):
        raise RuntimeError("boom")
    k = SimKernel(network=net())
    k.add_host("h", Recorder(boom))
    k.inject("h", Ping(n=3))
    with pytest.raises(RuntimeError, match="boom") as ei:
        k.run(until=1)
    assert any("'h' handled Ping" in n for n in ei.value.__notes__)


def test_unknown_address_raises_or_drops():
    k = SimKernel(network=net())
    k.add_host("a", Recorder(lambda ev, now: [Send(to="nowhere", msg=Ping())]))
    k.inject("a", Start())
    with pytest.raises(UnknownAddress, match="'nowhere'.*never added"):
        k.run(until=1)
    k2 = SimKernel(network=net(), unknown_address="drop")
    k2.add_host("a", Recorder(lambda ev, now: [Send(to="nowhere", msg=Ping())]))
    k2.inject("a", Start())
    k2.run(until=1)
    assert k2.stats()["undeliverable"] == 1


def test_duplicate_address_and_bad_machine_rejected():
    k = SimKernel()
    k.add_host("a", Recorder())
    with pytest.raises(ValueError, match="already in use"):
        k.add_host("a", Recorder())
    with pytest.raises(TypeError, match="handle"):
        k.add_host("b", object())


# ---------------------------------------------------------------------------
# validate()


def test_validate_called_only_when_asked():
    k = SimKernel(network=net())
    v = k.add_host("v", Recorder(), validate_every_step=True)
    n = k.add_host("n", Recorder())
    for addr in ("v", "n"):
        for i in range(3):
            k.inject(addr, Ping(n=i))
    k.run(until=1)
    assert v.machine.validations == 3
    assert n.machine.validations == 0


def test_validate_failure_propagates():
    class Bad(Recorder):
        def validate(self):
            if len(self.seen) >= 2:
                raise AssertionError("invariant: at most one event")
    k = SimKernel(network=net())
    k.add_host("v", Bad(), validate_every_step=True)
    k.inject("v", Ping(n=0))
    k.inject("v", Ping(n=1), at=1.0)
    with pytest.raises(AssertionError, match="at most one") as ei:
        k.run(until=5)
    assert k.now == 1.0
    assert any("invariant broken after 'v'" in n for n in ei.value.__notes__)


def test_validate_requires_method():
    class NoValidate:
        def handle(self, ev, now):
            return []
    with pytest.raises(TypeError, match="validate"):
        SimKernel().add_host("x", NoValidate(), validate_every_step=True)


# ---------------------------------------------------------------------------
# crashes and restarts


def test_crash_drops_in_flight_messages_and_timers():
    k = SimKernel(network=net(lat=(0.0, 1.0, 1.0)))
    k.add_host("a", Recorder(lambda ev, now: [Send(to="b", msg=Ping(n=1))]))
    b = k.add_host("b", Recorder(lambda ev, now: [SetTimer(at=now + 3, key="t")]
                                 if isinstance(ev, Start) else []))
    k.inject("b", Start())
    k.inject("a", Start())
    k.run(until=0.5)
    old = b.machine
    assert k.crash("b") and not k.crash("b")
    assert k.machine("b") is None and not k.is_alive("b")
    k.run(until=2)  # the Ping would have arrived at 1.0
    assert k.restart("b", Recorder())
    assert not k.restart("b", Recorder())
    k.run(until=10)  # the timer would have fired at 3.0
    assert [type(e).__name__ for _, e in old.seen] == ["Start"]
    assert b.machine.seen == []
    assert k.stats()["lost_to_crashes"] == 1


def test_messages_to_a_dead_host_vanish_and_restart_gets_new_ones():
    k = SimKernel(network=net())
    k.add_host("a", Recorder())
    b = k.add_host("b", Recorder())
    k.crash("b")
    k.send("a", "b", Ping(n=1))
    k.run(until=1)
    k.restart("b", Recorder())
    k.send("a", "b", Ping(n=2))
    k.run(until=2)
    assert b.machine.ns() == [2]
    assert k.network.stats["to_dead"] == 1


def test_handler_events_of_a_crashed_host_are_discarded():
    k = SimKernel(network=net())
    h = k.add_host("h", Recorder(lambda ev, now: [Work(job=1, duration=1.0)]
                                 if isinstance(ev, Start) else []),
                   {Work: lambda host, cmd: host.deliver_after(cmd.duration, WorkDone(job=1))})
    k.inject("h", Start())
    k.run(until=0.5)
    k.crash("h")
    k.restart("h", Recorder())
    k.run(until=3)
    assert h.machine.seen == []


def test_run_ahead_output_after_a_crash_is_dropped():
    """A busy host that handled queued events ahead of the clock must not
    emit messages stamped after its crash."""
    k = SimKernel(network=net(lat=(0.0, 0.25, 0.25)))
    k.add_host("a", Recorder(lambda ev, now: [Send(to="b", msg=Ping(n=ev.n))]), cost=1.0)
    b = k.add_host("b", Recorder())
    for i in range(5):
        k.inject("a", Ping(n=i))
    k.call_at(2.5, k.crash, "a")  # a finished events 0,1 (at 1, 2); 2 was running
    k.run(until=20)
    assert b.machine.ns() == [0, 1]


def test_hooks_on_crash_and_restart():
    seen = []
    k = SimKernel()
    k.add_host("a", Recorder())
    k.on_crash.append(lambda kern, addr: seen.append(("crash", addr, kern.now)))
    k.on_restart.append(lambda kern, addr: seen.append(("restart", addr, kern.now)))
    k.call_at(1.0, k.crash, "a")
    k.call_at(2.0, lambda: k.restart("a", Recorder()))
    k.run(until=3)
    assert seen == [("crash", "a", 1.0), ("restart", "a", 2.0)]


def test_fault_schedule_crash_restart_and_slow_host():
    made = []

    def factory(address):
        m = Recorder()
        made.append(m)
        return m

    k = SimKernel(network=net(), trace=Trace(keep=True))
    h = k.add_host("h", Recorder(), cost=0.25)
    sched = FaultSchedule([(1.0, Crash("h", restart_after=0.5)),
                           (3.0, SlowHost("h", 4.0, duration=1.0))])
    inst = sched.install(k, restart=factory)
    k.run(until=2)
    assert len(made) == 1 and h.machine is made[0] and inst.restarts == [(1.5, "h")]
    k.inject("h", Ping(n=1), at=3.5)
    k.inject("h", Ping(n=2), at=5.0)
    k.run(until=10)
    assert h.busy_time == 1.0 + 0.25  # slowed x4, then back to normal
    assert [str(f) for _, f in inst.applied] == ["Crash(h restart_after=0.5)",
                                                 "SlowHost(h x4 for 1s)"]
    assert any("fault Crash(h" in ln for ln in k.trace.lines)


def test_fault_schedule_requires_factory_and_known_addresses():
    k = SimKernel()
    k.add_host("h", Recorder())
    with pytest.raises(ValueError, match="restart factory"):
        FaultSchedule([(1.0, Restart("h"))]).install(k)
    with pytest.raises(ValueError, match="'zz'"):
        FaultSchedule([(1.0, Crash("zz"))]).install(k)


# ---------------------------------------------------------------------------
# client endpoints


class EchoServer:
    """Replies to Ping(n, src) with Ping(n + 1) after 0.125 s of CPU."""

    def handle(self, ev, now):
        if isinstance(ev, Ping):
            return [Send(to=ev.src, msg=Ping(n=ev.n + 1, src="server"))]
        return []


def test_client_program_waits_for_replies():
    k = SimKernel(network=net())
    k.add_host("server", EchoServer(), cost=0.125)
    drv = k.add_client("driver")
    out = []

    def program(env):
        for i in range(3):
            reply = yield drv.request("server", Ping(n=10 * i, src="driver"),
                                      match=lambda m: isinstance(m, Ping))
            out.append((env.now, reply.n))
        yield env.timeout(1.0)
        out.append((env.now, "done"))

    k.env.process(program(k.env))
    k.run(until=10)
    # round trip: 0.25 + 0.125 + 0.25
    assert out == [(0.625, 1), (1.25, 11), (1.875, 21), (2.875, "done")]


def test_client_mailbox_predicate_and_callback():
    k = SimKernel(network=net())
    k.add_host("server", EchoServer())
    drv = k.add_client("driver")
    got = []
    cb = k.add_client("cb", on_message=got.append)
    for n in (1, 2, 3):
        drv.send("server", Ping(n=n, src="driver"))
    cb.send("server", Ping(n=7, src="cb"))
    k.run(until=1)
    assert [m.n for m in drv.mailbox] == [2, 3, 4] and [m.n for m in got] == [8]
    res = []

    def program(env):
        m = yield drv.wait_for(lambda m: m.n == 3)
        res.append(m.n)
        m = yield drv.recv()
        res.append(m.n)
        m = yield drv.recv()
        res.append(m.n)
        m = yield drv.recv()  # nothing left: waits for the next message
        res.append((env.now, m.n))

    k.env.process(program(k.env))
    k.call_at(2.0, drv.send, "server", Ping(n=50, src="driver"))
    k.run(until=5)
    assert res == [3, 2, 4, (2.5, 51)]


def test_client_into_a_simpy_store():
    import simpy
    k = SimKernel(network=net())
    k.add_host("server", EchoServer())
    store = simpy.Store(k.env)
    drv = k.add_client("driver", on_message=store.put)
    out = []

    def program(env):
        drv.send("server", Ping(n=1, src="driver"))
        m = yield store.get()
        out.append((env.now, m.n))

    k.env.process(program(k.env))
    k.run(until=2)
    assert out == [(0.5, 2)]


def test_run_is_not_reentrant():
    k = SimKernel()
    k.add_host("h", Recorder(lambda ev, now: k.run(until=5) or []))
    k.inject("h", Start())
    with pytest.raises(RuntimeError, match="inside the simulation"):
        k.run(until=1)


def test_removed_client_gets_nothing():
    k = SimKernel(network=net())
    k.add_host("server", EchoServer())
    drv = k.add_client("driver")
    drv.send("server", Ping(n=1, src="driver"))
    k.run(until=0.3)
    k.remove_client("driver")  # the reply (due at 0.5) is lost
    k.run(until=1)
    assert list(drv.mailbox) == []
    with pytest.raises(RuntimeError, match="disconnected"):
        drv.send("server", Ping())
    assert k.add_client("driver") is drv
    drv.send("server", Ping(n=5, src="driver"))
    k.run(until=2)
    assert [m.n for m in drv.mailbox] == [6]


def test_client_removed_before_its_flush_can_send_after_re_adding():
    k = SimKernel(network=net())
    k.add_host("server", EchoServer())
    drv = k.add_client("driver")
    drv.send("server", Ping(n=1, src="driver"))
    k.remove_client("driver")  # the scheduled flush is cancelled
    k.add_client("driver")
    drv.send("server", Ping(n=2, src="driver"))
    k.run(until=1)
    assert [m.n for m in drv.mailbox] == [3]


# ---------------------------------------------------------------------------
# determinism


def _random_run(seed: int, trace: Trace | None = None) -> Trace:
    """Hosts bounce messages to random peers over a lossy, jittery network."""
    trace = trace or Trace()
    k = SimKernel(seed=seed, network=net(lat=(1e-6, 1e-4, 5e-4)), costs=PAPER, trace=trace)
    n = 20

    class Bouncer:
        def __init__(self, rng):
            self.rng = rng

        def handle(self, ev, now):
            if isinstance(ev, Ping) and ev.n < 150:
                peer = f"h:{self.rng.randrange(n)}"
                return [Send(to=peer, msg=Ping(n=ev.n + 1)),
                        SetTimer(at=now + 0.001, key=("t", ev.n))]
            return []

    for i in range(n):
        k.add_host(f"h:{i}", Bouncer(k.derive_rng(f"h:{i}")), rack=i // 5, kind="node")
    k.network.add_fault(drop=0.05, delay=2e-4, duplicate=0.05)
    for i in range(n):
        k.inject(f"h:{i}", Ping(n=0))
    k.run(until=0.5)
    return trace


def test_same_seed_same_hash_different_seed_different_hash():
    h1 = _random_run(7).hexdigest()
    h2 = _random_run(7).hexdigest()
    h3 = _random_run(8).hexdigest()
    assert h1 == h2
    assert h1 != h3


def test_hash_is_stable_across_processes_and_hash_seeds():
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        from test_sim_kernel import _random_run
        print(_random_run(7).hexdigest())
    """)
    outs = set()
    for hs in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hs)
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        outs.add(r.stdout.strip())
    assert outs == {_random_run(7).hexdigest()}


def test_trace_story_and_modes():
    t = _random_run(3, Trace(per_address=5, keep=True))
    story = t.story("h:0")
    assert 0 < len(story) <= 5 and all(ln.startswith("(") and ", 'h:0', " in ln
                                       for ln in story)
    assert t.find("'x', 'drop'") and t.find("'x', 'dup'")
    cheap = _random_run(3, Trace(fields="type")).hexdigest()
    full = _random_run(3, Trace(fields="full")).hexdigest()
    assert len({cheap, full, t.hexdigest()}) == 3
    assert cheap == _random_run(3, Trace(fields="type")).hexdigest()


def test_hash_does_not_depend_on_lines_or_when_it_is_read():
    plain = _random_run(5).hexdigest()
    assert _random_run(5, Trace(per_address=3, keep=True)).hexdigest() == plain

    class Peek(Trace):
        def handled(self, *a):
            super().handled(*a)
            if self.count % 1000 < 2:
                self.hexdigest()  # reading mid-run must not change the result
    assert _random_run(5, Peek()).hexdigest() == plain
    assert _random_run(5).count > 4096  # more than one chunk


def test_unpicklable_values_fall_back_to_repr():
    tr = Trace()
    k = SimKernel(network=net(), trace=tr)
    k.add_host("h", Recorder(lambda ev, now: [SetTimer(at=1.0, key=lambda: 0)]
                             if isinstance(ev, Start) else []))
    k.inject("h", Start())
    k.run(until=2)
    assert len(tr.hexdigest()) == 32


def test_trace_scrubs_memory_addresses():
    class Opaque:
        pass
    tr = Trace(keep=True)
    k = SimKernel(network=net(), trace=tr)
    k.add_host("h", Recorder(lambda ev, now: [SetTimer(at=1.0, key=Opaque())]
                             if isinstance(ev, Start) else []))
    k.inject("h", Start())
    k.run(until=2)
    assert not any("0x" in ln for ln in tr.lines)


def test_derive_rng_is_stable_and_independent():
    a = SimKernel(seed=5).derive_rng("node:1").random()
    k = SimKernel(seed=5)
    k.rng.random()
    assert k.derive_rng("node:1").random() == a
    assert SimKernel(seed=5).derive_rng("node:2").random() != a
    assert SimKernel(seed=6).derive_rng("node:1").random() != a


def test_summary_prints_hash(capsys):
    tr = Trace()
    k = SimKernel(seed=2, trace=tr)
    k.add_host("h", Recorder())
    k.inject("h", Ping())
    k.run(until=1)
    line = k.summary()
    assert tr.hexdigest() in line and tr.hexdigest() in capsys.readouterr().out


# ---------------------------------------------------------------------------
# cost model


def test_paper_costs_match_the_paper():
    per_task = (4 * PAPER.handle["node"] + 4 * PAPER.per_command + PAPER.task_scheduling)
    assert 16_000 < 1 / per_task < 20_000   # Figure 8b: ~18K tasks/s per node
    assert PAPER.handling_cost("node", "SubmitTask") == pytest.approx(8e-6 + PAPER.task_scheduling)  # calibrated by fig8b
    assert PAPER.handling_cost("node", "TaskFinished") == pytest.approx(8e-6)
    assert PAPER.handling_cost("head", "ForwardTask") == pytest.approx(28e-6)
    assert PAPER.bandwidth_intra_rack == pytest.approx(3.125e9)
    assert PAPER.store_write_time(15e9) == pytest.approx(1 + 1 / 18_000)


def test_from_benchmark():
    m = CostModel.from_benchmark({"handle.node": 40e-6, "per_command": 10e-6,
                                  "node_tasks_per_s": 2000, "worker_start": 0.4})
    assert m.calibrated and m.worker_start == 0.4 and m.handle["node"] == 40e-6
    assert 4 * 40e-6 + 4 * 10e-6 + m.task_scheduling == pytest.approx(1 / 2000)
    with pytest.raises(ValueError, match="unknown benchmark key 'bogus'"):
        CostModel.from_benchmark({"bogus": 1})


# ---------------------------------------------------------------------------
# the event queue (time buckets) and the collector between run() chunks


@pytest.mark.parametrize("mode", ["buckets", "small", "grows"])
def test_calendar_pops_in_the_order_one_heap_would(mode):
    """The bucketed queue gives exactly (time, priority, eid) order, as the
    single heap it replaced did, with many entries at equal times, other
    priorities mixed in, and pushes interleaved with pops (never into the
    past, as in a simulation); so does a small one (a plain heap), and one
    that grows from one to the other midway."""
    import heapq
    import random

    from penumbra.sim.eventqueue import _Calendar

    rng = random.Random(7)
    cal, heap, eid, now = _Calendar(), [], 0, 0.0
    if mode == "buckets":
        cal.grow()
    got, want = [], []
    for step in range(20_000):
        if mode == "grows" and step == 7_000:
            assert cal.small and len(cal) > 100
            cal.grow()
        if heap and rng.random() < 0.45:
            a, b = cal.pop(), heapq.heappop(heap)
            got.append(a)
            want.append(b)
            now = a[0]
            continue
        t = now + rng.choice([0.0, 0.0, 0.125, 0.25, 0.5, rng.random()])
        prio = rng.choice([1, 1, 1, 1, 0, -1])
        eid += 1
        entry = (t, prio, eid, "fn", step)
        if prio != 1 or step % 2:
            cal.push(entry)
        else:
            (cal.push_small if cal.small else cal.push_normal)(entry)
        heapq.heappush(heap, entry)
        assert cal.first_time() == heap[0][0]
        assert len(cal) == len(heap)
    while heap:
        got.append(cal.pop())
        want.append(heapq.heappop(heap))
    assert got == want
    assert not cal and cal.first_time() == float("inf")
    with pytest.raises(IndexError):
        cal.pop()


def test_simpy_events_and_kernel_entries_share_the_calendar():
    """SimPy processes (URGENT initialisation, NORMAL timeouts) interleave
    with kernel entries at equal times in scheduling order."""
    k = SimKernel()
    seen = []

    def proc(env, name):
        seen.append((env.now, name, "start"))
        yield env.timeout(0.5)
        seen.append((env.now, name, "woke"))

    k.call_at(0.5, lambda: seen.append((k.now, "call", "before")))
    k.env.process(proc(k.env, "p"))
    k.call_at(0.5, lambda: seen.append((k.now, "call", "after")))
    k.run()
    assert seen == [(0.0, "p", "start"), (0.5, "call", "before"), (0.5, "call", "after"),
                    (0.5, "p", "woke")]
    assert k.env.peek() == float("inf")


def test_gc_paused_leaves_the_collector_on_and_frees_cycles_eventually():
    """Between chunks the collector is on and nothing is frozen (an explicit
    gc.collect() frees cycles made inside a block); the block itself ends
    with a full collection once enough has been made."""
    import gc
    import weakref

    from penumbra.sim import kernel as K

    class Node:
        pass

    def cycles(n):
        out = []
        for _ in range(n):
            a, b = Node(), Node()
            a.b, b.a = b, a  # a cycle, dropped at once
            out.append(weakref.ref(a))
        return out

    assert gc.isenabled()
    saved = dict(K._gc_state)
    try:
        K._gc_state.update(live=0, grown=0)
        with K.gc_paused():
            assert not gc.isenabled()
            refs = cycles(100)
        assert gc.isenabled() and gc.get_freeze_count() == 0
        assert any(r() is not None for r in refs)  # no pass ran: they wait in the oldest generation
        gc.collect()
        assert all(r() is None for r in refs)

        with K.gc_paused():
            refs = cycles(1000)
            junk = [[i] for i in range(1_100_000)]  # enough new objects to trigger
        del junk
        assert all(r() is None for r in refs)  # the block ended with a full collection
        assert K._gc_state["grown"] == 0 and K._gc_state["live"] > 0
    finally:
        K._gc_state.update(saved)


# ---------------------------------------------------------------------------
# the fast paths a run takes while nobody crashed (kernel._epoch_bumps == 0)


def _bouncing(seed: int, checked: bool, bandwidth: float = 0.0) -> tuple[str, dict, int]:
    """``_random_run``'s bouncers on a clean network (every batch takes the
    fast path), optionally forced onto the checked path (the one a run takes
    once anything crashed): both must deliver the same thing in the same order."""
    trace = Trace()
    k = SimKernel(seed=seed, network=net(lat=(1e-6, 1e-4, 5e-4), bw=(0.0, bandwidth, bandwidth)),
                  costs=PAPER, trace=trace)
    if checked:
        k._epoch_bumps = 1
    n = 12

    class Bouncer:
        def __init__(self, rng):
            self.rng = rng

        def handle(self, ev, now):
            if isinstance(ev, Ping) and ev.n < 60:
                return [Send(to=f"h:{self.rng.randrange(n)}", msg=Ping(n=ev.n + 1)),
                        Send(to=f"h:{self.rng.randrange(n)}", msg=Ping(n=ev.n + 1))]
            return []

    for i in range(n):
        k.add_host(f"h:{i}", Bouncer(k.derive_rng(f"h:{i}")), rack=i // 4, kind="node")
    c = k.add_client("c", colocated_with="h:0")
    for i in range(n):
        c.send(f"h:{i}", Ping(n=i % 3))
    k.run(until=0.2)
    return trace.hexdigest(), k.stats(), k.network.batches


@pytest.mark.parametrize("bandwidth", [0.0, 1e9])
def test_first_life_fast_path_delivers_as_the_checked_path(bandwidth):
    fast = _bouncing(3, checked=False, bandwidth=bandwidth)
    assert fast[1]["events_handled"] > 1000
    assert fast == _bouncing(3, checked=True, bandwidth=bandwidth)


def test_epoch_bumps_count_crashes_restarts_and_revivals():
    k = SimKernel(network=net())
    k.add_host("a", Recorder())
    b = k.add_host("b", Recorder())
    k.add_client("c")
    assert k._epoch_bumps == 0
    k.crash("b")
    k.restart("b", Recorder())
    k.remove_client("c")
    k.add_client("c")
    assert k._epoch_bumps == 4
    # and once anything crashed, a batch to a dead host is still dropped
    k.crash("b")
    k.send("a", "b", Ping(n=1))
    k.run(until=1)
    assert k.network.stats["to_dead"] == 1 and b.machine is None


def test_hosts_of_one_kind_share_costs_and_a_slowdown_is_its_own():
    costs = ZERO.with_(handle={"node": 0.25})
    k = SimKernel(network=net(), costs=costs)
    a = k.add_host("node:a", Recorder())
    b = k.add_host("node:b", Recorder())
    c = k.add_host("node:c", Recorder(), cost=0.125)  # an override keeps its own
    assert a._costs is b._costs and c._costs is not a._costs
    k.slow("node:a", 2.0)
    assert a._costs is not b._costs
    for h in ("node:a", "node:b", "node:c"):
        k.inject(h, Ping(n=1))
        k.inject(h, Ping(n=2))
    k.run(until=10)
    assert a.machine.times() == [0.0, 0.5]
    assert b.machine.times() == [0.0, 0.25]
    assert c.machine.times() == [0.0, 0.125]
    k.slow("node:a", 1.0)  # restored: back on the kind's table
    assert a._costs is b._costs


@pytest.mark.parametrize("limit", [0, 40])
def test_a_queue_that_grows_out_of_its_heap_runs_the_same(monkeypatch, limit):
    """A kernel's queue starts as a plain heap and turns into buckets once
    it holds more than ``SMALL_LIMIT`` entries, mid-run: the run (every
    host's events, the trace hash) is the same as one that never grows."""
    from penumbra.sim.eventqueue import _Calendar

    def run(limit):
        monkeypatch.setattr(_Calendar, "SMALL_LIMIT", limit)
        k = SimKernel(seed=3, network=net(lat=(0.0, 0.25, 0.5)), trace=Trace())
        hosts = [f"h:{i}" for i in range(30)]
        for i, a in enumerate(hosts):
            k.add_host(a, Recorder(pingpong(hosts[(i * 7 + 1) % 30], 40)), rack=i % 3,
                       cost=0.01 * (1 + i % 4))
        for i, a in enumerate(hosts):
            for j in range(3):
                k.inject(a, Ping(n=j), at=0.001 * i)
        k.run(until=100)
        return k.trace.hexdigest(), [h.machine.seen for h in k.hosts.values()], k._cal.small

    h_never, seen_never, small = run(10**9)
    assert small
    h_grown, seen_grown, small = run(limit)
    assert not small
    assert (h_grown, seen_grown) == (h_never, seen_never)


def test_a_host_stopped_for_a_callback_of_a_dead_incarnation_goes_on():
    """A host waits for its own callback at 2.5 (no wake-up queued), is
    crashed and restarted before it; the callback's stale entry still
    resumes the new machine, which handles everything injected."""
    k = SimKernel(network=net())
    k.look_ahead = 100.0
    h = k.add_host("h", Recorder(), cost=1.0)
    for i in range(4):
        k.inject("h", Ping(n=i))
    h.call_at(2.5, lambda: None)
    fresh = Recorder()

    def restart():
        k.restart("h", fresh)
        for i in range(3):
            k.inject("h", Ping(n=10 + i))
    k.call_at(2.2, k.crash, "h")
    k.call_at(2.3, restart)
    k.run(until=20)
    assert h.machine.ns() == [10, 11, 12]
    assert fresh.times() == [2.3, 3.3, 4.3]
