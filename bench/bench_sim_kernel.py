"""How many messages per wall-clock second can the simulator kernel deliver?

Ping-pong among N hosts (default 1,000): every host starts with one message;
on each message a host sends one to a pseudo-random peer, so N messages are
always in flight.  Hosts sit in racks of 40 (intra- and inter-rack latency).
The machines precompute their ``Send`` commands, so what is measured is the
kernel, not message construction (see ``fresh`` for the realistic case).
Kernel variants are measured in steady state, after ``WARMUP`` messages
(every host has talked to each of its 64 peers once); ``kernel-cold-links``
measures the start, where each message opens a new link.  Times are CPU
time of this process (``time.process_time``), so other load on the machine
inflates them less than wall time would.

Variants:

* ``simpy-process``: one SimPy process per message (``yield timeout``); the
  naive driver, for reference.
* ``simpy-timeout-cb``: one ``simpy.Timeout`` per message with a callback.
* ``kernel``: ``SimKernel.run`` (bare heap entries, own loop), ZERO CPU costs.
* ``kernel-env.run``: the same heap entries processed by ``env.run``.
* ``kernel+trace``: with a ``Trace`` computing the hash.
* ``kernel+PAPER``: PAPER costs (per-event CPU with queueing, bandwidth).
* ``kernel+fresh``: machines build a new ``Ping`` and ``Send`` per message.
* ``kernel+faults``: a rule on every link: 1% drop, 1% duplicate, 20 us
  jitter (per-message random draws: the slow path).
* ``kernel-cold-links``: the first 60K messages of a fresh kernel.

Run: ``python bench/bench_sim_kernel.py [--hosts 1000] [--messages 300000]``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import simpy

from penumbra.core.messages import Message, Send
from penumbra.sim.costs import PAPER, ZERO
from penumbra.sim.kernel import SimKernel
from penumbra.sim.network import Network
from penumbra.sim.trace import Trace

RACK = 40
WARMUP = 100_000  # messages before measuring: 64 peers x 1,000 hosts = 64K links
LAT = (5e-6, 30e-6, 100e-6)


class Ping(Message):
    hop: int = 0


def _peers(n: int, i: int, k: int = 64) -> list[int]:
    r = random.Random(i)
    return [r.randrange(n) for _ in range(k)]


class Bouncer:
    """Sends to a cycle of precomputed peers (cheap machine)."""

    __slots__ = ("sends", "i", "count")

    def __init__(self, sends: list):
        self.sends = sends
        self.i = 0
        self.count = 0

    def handle(self, ev, now):
        i = self.i
        self.i = (i + 1) % len(self.sends)
        self.count += 1
        return [self.sends[i]]


class FreshBouncer(Bouncer):
    """Builds a new message and command each time (realistic machine)."""

    __slots__ = ("peers",)

    def __init__(self, peers: list[str]):
        super().__init__([None])
        self.peers = peers

    def handle(self, ev, now):
        i = self.i
        self.i = (i + 1) % len(self.peers)
        self.count += 1
        return [Send(to=self.peers[i], msg=Ping(hop=ev.hop + 1))]


def _latency(a: int, b: int) -> float:
    if a == b:
        return LAT[0]
    return LAT[1] if a // RACK == b // RACK else LAT[2]


def bench_simpy_process(n: int, messages: int) -> tuple[int, float]:
    env = simpy.Environment()
    peers = [_peers(n, i) for i in range(n)]
    idx = [0] * n
    count = [0]

    def deliver(env, dst, delay):
        yield env.timeout(delay)
        count[0] += 1
        j = idx[dst]
        idx[dst] = (j + 1) % 64
        nxt = peers[dst][j]
        env.process(deliver(env, nxt, _latency(dst, nxt)))

    for i in range(n):
        env.process(deliver(env, i, 0.0))
    t0 = time.process_time()
    while count[0] < messages:
        env.step()
    return count[0], time.process_time() - t0


def bench_simpy_timeout(n: int, messages: int) -> tuple[int, float]:
    env = simpy.Environment()
    peers = [_peers(n, i) for i in range(n)]
    idx = [0] * n
    count = [0]

    def make_cb(dst):
        def cb(_ev):
            count[0] += 1
            j = idx[dst]
            idx[dst] = (j + 1) % 64
            nxt = peers[dst][j]
            t = env.timeout(_latency(dst, nxt))
            t.callbacks.append(cbs[nxt])
        return cb

    cbs = [make_cb(i) for i in range(n)]
    for i in range(n):
        env.timeout(0.0).callbacks.append(cbs[i])
    t0 = time.process_time()
    while count[0] < messages:
        env.step()
    return count[0], time.process_time() - t0


def _build(n: int, *, costs=ZERO, trace=None, fresh=False, faults=False) -> SimKernel:
    net = Network.from_costs(costs) if costs is not ZERO else Network(latency=LAT)
    k = SimKernel(seed=1, network=net, costs=costs, trace=trace)
    for i in range(n):
        peers = [f"h:{p}" for p in _peers(n, i)]
        m = FreshBouncer(peers) if fresh else Bouncer([Send(to=p, msg=Ping()) for p in peers])
        k.add_host(f"h:{i}", m, rack=i // RACK, kind="node")
    if faults:
        # duplicates balance drops, so the number in flight stays ~constant
        k.network.add_fault(drop=0.01, duplicate=0.01, delay=20e-6)
    for i in range(n):
        k.inject(f"h:{i}", Ping())
    return k


def _drive(k: SimKernel, messages: int, *, env_run: bool = False,
           warmup: int = WARMUP) -> tuple[int, float]:
    """Handle ``warmup`` messages (every link gets created), then measure
    ``messages`` more, advancing in slices of simulated time."""
    hosts = list(k.hosts.values())
    slice_ = 0.002

    def advance():
        if env_run:
            k.env.run(until=k.env.now + slice_)
        else:
            k.run(until=k.env.now + slice_)

    while sum(h.handled for h in hosts) < warmup:
        if not k._queue:
            raise RuntimeError("no messages left in flight")
        advance()
    base = sum(h.handled for h in hosts)
    t0 = time.process_time()
    while True:
        done = sum(h.handled for h in hosts) - base
        if done >= messages:
            break
        if not k._queue:
            raise RuntimeError("no messages left in flight")
        advance()
    return done, time.process_time() - t0


def bench_link_creation(n: int, messages: int) -> tuple[int, float]:
    """Cold start: every message opens a new link (the first contact of a
    pair of hosts costs more than later messages)."""
    k = _build(n)
    return _drive(k, min(messages, 60_000), warmup=0)


VARIANTS = {
    "simpy-process": lambda n, m: bench_simpy_process(n, m),
    "simpy-timeout-cb": lambda n, m: bench_simpy_timeout(n, m),
    "kernel": lambda n, m: _drive(_build(n), m),
    "kernel-env.run": lambda n, m: _drive(_build(n), m, env_run=True),
    "kernel+trace": lambda n, m: _drive(_build(n, trace=Trace()), m),
    "kernel+PAPER": lambda n, m: _drive(_build(n, costs=PAPER), m),
    "kernel+fresh": lambda n, m: _drive(_build(n, fresh=True), m),
    "kernel+faults": lambda n, m: _drive(_build(n, faults=True), m),
    "kernel-cold-links": bench_link_creation,
}


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=300_000)
    ap.add_argument("--repeat", type=int, default=3, help="best of N")
    ap.add_argument("--only", nargs="*", default=None, help="variant names")
    args = ap.parse_args(argv)
    results: dict[str, float] = {}
    print(f"ping-pong, {args.hosts} hosts, >= {args.messages} delivered messages, "
          f"best of {args.repeat} (variants interleaved), CPU time")
    names = [n for n in VARIANTS if not args.only or n in args.only]
    for _ in range(args.repeat):  # round-robin: every variant sees similar load
        for name in names:
            done, cpu = VARIANTS[name](args.hosts, args.messages)
            results[name] = max(results.get(name, 0.0), done / cpu)
    for name in names:
        best = results[name]
        print(f"  {name:18s} {best:12,.0f} msgs/s   {1e6 / best:6.2f} us/msg")
    return results


if __name__ == "__main__":
    main()
