"""The SimPy driver's kernel: hosts running pure machines on a simulated network.

Theory of operation
-------------------
``SimKernel`` owns a ``simpy.Environment``, a ``Network``, a ``CostModel``, an
optional ``Trace`` and the one ``random.Random(seed)`` every random choice
comes from.  It carries events and commands between machines and never
decides anything itself.

**Hosts.**  ``add_host(address, machine, handlers)`` runs one machine.  A host
is single-threaded: events delivered to it wait in its inbox and are handled
one at a time, each charged CPU time by the cost model::

    start  = max(arrival, busy_until)
    cmds   = machine.handle(event, start)           # now == start
    finish = start + (handling_cost(kind, type(event))
                      + len(cmds) * per_command) * cpu_factor
    busy_until = finish                             # commands take effect here

Events a handler delivers with ``urgent=True`` (``deliver_at``,
``deliver_now``) wait in a second queue that is served before the inbox.
Then each command is carried out at ``finish``: ``Send`` goes through the
network; ``SetTimer(at, key)`` delivers ``TimerFired(key)`` to the same host
at ``max(at, finish)``; ``Log`` is recorded (printed with
``print_logs=True``); any other type goes to ``handlers[type](host, cmd)``,
which may schedule events back into the host (``host.deliver_at(t, ev)``,
``host.deliver_after(dt, ev)``), run code later (``host.call_at``), or send
messages (``host.send``).  A command with no handler raises
``UnhandledCommand``.  ``machine.validate()`` runs after every event when
the host was added with ``validate_every_step=True``.

**Efficiency.**  There is no SimPy process per host or per message.  Work is
a plain tuple in the environment's own queue (the entry layouts are in
``penumbra.sim.eventqueue``): a batch of messages from one host to one
destination at one instant is *one* entry, handed to the machine one
message at a time.

**Look-ahead.**  A busy host handles every event already in its inbox in
one go, each with ``now`` = its proper start time (the previous one's
finish), ahead of ``env.now``: what reaches the host later (a message, a
timer, a local event) queues behind them anyway, so the host sees exactly
the events, in the order and at the times, of a schedule with one wake-up
per event.  It stops, and schedules one wake-up at its ``busy_until``,
only when something that could change its next step out of turn is due by
then: an entry of its own that jumps the inbox (an urgent event, a
``host.call_at`` callback, a pause's resume: ``host._specials``; that
entry resumes it, so it queues nothing: ``host._stalled``), a *barrier*
(a ``kernel.call_at`` callback or a SimPy event, which may crash, pause,
slow or inject into any host: ``_Calendar.barriers``), a run's horizon, or
when it is ``kernel.look_ahead`` (1 ms) past the entry that woke it (so a
long backlog is not all sent, and queued, at once).  A simulated program's own callbacks that touch no host but
through messages use ``kernel.program_call_at``, no barrier.  What changes
against the one-wake-up schedule is the interleaving of different hosts'
steps, and so the order of equal-time entries pushed by different hosts
(eids are handed out in a different order): decided in docs/DESIGN.md
(the look-ahead drain), it changed every trace hash once.  A partitioned
run's hash is per address and the same for any number of partitions.
The SimPy clock (``env.now``) may lag a host's clock (``host.now``): inside
handlers, always use ``host.now``; a ``run_until`` predicate, or another
host reading a machine directly, may see a machine ahead of ``env.now``.
``kernel.run`` drives the queue with its own loop (SimPy events and
processes go through ``env.step``); ``env.run`` works as well.

**Crashes.**  ``crash(address)`` drops the machine, its inbox, its pending
timers and handler events, and every message in flight to it; messages to
a dead host vanish.  ``restart(address, machine)`` gives it a new machine.
Messages a host emitted for a time after its crash (possible when it ran
ahead, see above) are dropped too.  ``on_crash``/``on_restart`` hooks let a
cluster layer tell others (e.g. a ``NodeDied`` to the head).

**Pauses.**  ``pause(address, duration, timers_first=True)`` stops a host
(or client) the way SIGSTOP stops a process: it handles nothing for
``duration`` seconds, while what is sent to it waits in its inbox (its
socket buffers) and its timers come due there too; on resume it handles all
of it, late, with ``now`` = the resume time and later.  In what order is
the real question: a driver loop that fires due timers before reading its
sockets (the trio host did) runs the overdue timers *first*
(``timers_first=True``); one that reads what is queued first runs the
messages first (``timers_first=False``).  Both are modelled, so the swarm
checks that the machines survive either.  The host's worker processes and
transfers are separate processes: they carry on (their completions queue
like messages).  A paused client (a driver program) holds what it receives
and the actions ``defer`` gives it until it resumes, then runs them in
order.

**Clients.**  ``add_client(address, on_message=None, colocated_with=...)``
makes an endpoint without a machine, for simulated programs written as
SimPy processes: ``client.send(to, msg)``; incoming messages go to
``on_message(msg)`` or to a mailbox served by ``yield client.recv()``,
``yield client.wait_for(predicate)`` and ``yield client.request(to, msg,
match)``.  Clients cost no CPU.  ``kernel.inject(address, event)`` delivers
an event to a host without the network (the omniscient simulator speaking).

**Determinism.**  Heap ties break by insertion order, the network draws from
the kernel's RNG in a fixed order, and nothing iterates over a ``set`` of
strings, so the same seed and configuration give the same trace hash on
every run (``summary()``).  Machines must keep that rule too (sort before
iterating sets; take randomness from ``kernel.derive_rng(name)``).

Where things live
-----------------
This module holds ``SimKernel`` (building, injecting, faults on hosts,
running, reporting); the endpoints it builds (``Host``, ``Client``) are in
``penumbra.sim.endpoints``, the event queue (``_Calendar`` and the SimPy
environment on it) in ``penumbra.sim.eventqueue``, the collector's policy
during a run (``gc_paused``) in ``penumbra.sim.gcpause``.  ``Host``,
``Client`` and ``gc_paused`` stay importable from here.  Imports run one
way: kernel -> endpoints -> network, eventqueue; kernel -> gcpause.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Callable, Mapping
from heapq import heappop, heappush
from typing import Any

import simpy

from penumbra.core.messages import Event, Log, Message

from .costs import ZERO, CostModel
from .endpoints import Client, Host, Remote, _Endpoint
from .eventqueue import _NORMAL, _URGENT, _Calendar, _Environment, _simpy_process
from .gcpause import _gc_state, gc_paused  # noqa: F401 - (re-exported: callers use them from here)
from .network import Network
from .trace import Trace

__all__ = [
    "SimKernel",
    "gc_paused",
    "Host",
    "Client",
    "UnhandledCommand",
    "UnknownAddress",
]


class UnhandledCommand(RuntimeError):
    """A machine emitted a command type its host has no handler for."""


class UnknownAddress(KeyError):
    """A message was sent to an address that was never added."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


class _Program:
    """The owner of ``program_call_at`` entries (never crashes: epoch 0)."""

    __slots__ = ("_specials",)
    epoch = 0
    _stalled = False

    def __init__(self) -> None:
        self._specials: list[float] = []  # (kept like a host's; nobody reads it)

    def _call(self, now: float, fn: Callable, args: tuple) -> None:
        fn(*args)


class _StopLoop(Exception):
    """Raised by a run horizon's entry to end ``SimKernel._loop``."""


# ===========================================================================
# The kernel


class SimKernel:
    """Hosts, clients, the network and the clock of one simulation.

    Args:
        seed: seeds the one ``random.Random`` all simulator randomness uses.
        network: a ``Network`` (default: ``Network.from_costs(costs)``).
        costs: a ``CostModel`` (default ``ZERO``: everything free).
        trace: a ``Trace`` to record into (default: none, the fastest).
        print_logs: print every ``Log`` command as it happens.
        unknown_address: ``"raise"`` (default) or ``"drop"`` for a message to
            an address that was never added.  Messages to a removed client or
            a crashed host are always dropped silently.
        log_limit: how many ``Log`` records ``kernel.logs`` keeps.
    """

    def __init__(
        self,
        seed: int = 0,
        network: Network | None = None,
        costs: CostModel | None = None,
        trace: Trace | None = None,
        *,
        print_logs: bool = False,
        unknown_address: str = "raise",
        log_limit: int = 10_000,
    ):
        if unknown_address not in ("raise", "drop"):
            raise ValueError(f"unknown_address must be 'raise' or 'drop', got {unknown_address!r}")
        self.seed = seed
        self.rng = random.Random(seed)
        self.env: simpy.Environment = _Environment(initial_time=0.0)
        # The environment's heap and id counter (simpy 4 internals): the
        # kernel pushes its entries there directly.
        self._cal: _Calendar = self.env._cal
        self._queue = self._cal  # the name SimPy uses
        # for entries of priority NORMAL: a plain heap's push while the queue
        # is small, the buckets' once it grew (``_grow_queue``)
        self._push = self._cal.push_small
        self._eid = self.env._eid
        self.costs = costs if costs is not None else ZERO
        self.network = network if network is not None else Network.from_costs(self.costs)
        self.network.bind(self)
        self.trace = trace
        self.print_logs = print_logs
        self.unknown_address = unknown_address
        self.logs: deque = deque(maxlen=log_limit)
        self.hosts: dict[str, Host] = {}
        self.clients: dict[str, Client] = {}
        self.endpoints: dict[str, _Endpoint] = {}
        # How often any endpoint's epoch changed (crash, restart, revival).
        # While it is 0 every endpoint is alive in its first incarnation
        # (epoch 0), so the network and the hosts need not look at a batch's
        # sender or receiver to check its epoch: at 1,000 nodes those are
        # cache misses, one per batch (see ``Network.transmit``).
        self._epoch_bumps = 0
        # per-type CPU costs, shared by the hosts of one kind and slowdown
        # (``Host._costs``): one small dict stays in the cache, not one a host
        self._cost_tables: dict[tuple[str, float], dict[type, float]] = {}
        self.handlers: dict[type, Callable] = {}
        self.on_crash: list[Callable[[SimKernel, str], Any]] = []
        self.on_restart: list[Callable[[SimKernel, str], Any]] = []
        self.on_log: list[Callable[[float, str, Log], Any]] = []
        # told of every message the network loses (``what, t, src, dst,
        # msgs``; "cut", "drop", or "dup" for a copy): the direct-call
        # connections break on a loss (penumbra.sim.direct)
        self.net_watchers: list[Callable[[str, float, str, str, list], Any]] = []
        self._lost = 0
        self._undeliverable = 0
        self._running = False
        self._program = _Program()  # owns program_call_at entries
        # how far (simulated seconds) a host handles its queued events ahead
        # of the entry that woke it (see "Look-ahead"): unbounded, a host
        # with a long backlog (the head at boot) sent all of it at once, and
        # the queue held 437,000 batches at 1,000 nodes (+190 MB)
        self.look_ahead = 1e-3

    # ------------------------------------------------------------------
    # building the cluster

    @property
    def now(self) -> float:
        return self.env.now

    def add_host(
        self,
        address: str,
        machine: Any,
        handlers: Mapping[type, Callable[[Host, Any], Any]] | None = None,
        *,
        rack: Any = 0,
        kind: str | None = None,
        validate_every_step: bool = False,
        cost: float | Callable[[Any], float] | None = None,
    ) -> Host:
        """Run ``machine`` at ``address``.

        Args:
            handlers: ``{CommandType: fn(host, cmd)}`` for the machine's
                non-generic commands (falls back to ``kernel.handlers``, and
                to handlers of a command's base classes).
            rack: the rack (any hashable) for the network topology.
            kind: the cost model's host kind (default: the address up to the
                first ``:``, e.g. ``"node"`` for ``"node:3"``).
            validate_every_step: call ``machine.validate()`` after each event.
            cost: override the per-event CPU cost: seconds, or
                ``fn(event) -> seconds``.

        Raises:
            ValueError: the address is taken.
            TypeError: the machine has no ``handle`` (or no ``validate`` when
                asked to validate).
        """
        self._check_new(address)
        kind = kind if kind is not None else address.split(":", 1)[0]
        host = Host(self, address, machine, handlers or {}, kind, validate_every_step, cost)
        host.links = self.network.place(address, rack)
        self.hosts[address] = host
        self.endpoints[address] = host
        return host

    def add_client(
        self,
        address: str,
        on_message: Callable[[Message], Any] | None = None,
        *,
        colocated_with: str | None = None,
        rack: Any = 0,
        kind: str = "client",
    ) -> Client:
        """An endpoint without a machine (a driver or worker program).

        ``colocated_with``: the host whose machine it runs on (loopback
        latency to it, cut with it by partitions); otherwise it sits alone in
        ``rack``.  Re-adding a removed client's address revives it.
        """
        old = self.clients.get(address)
        if old is not None and not old.alive:
            old.alive = True
            old.epoch += 1
            self._epoch_bumps += 1
            old.on_message = on_message
            return old
        self._check_new(address)
        c = Client(self, address, kind, on_message)
        c.links = self.network.place(address, rack, colocated_with)
        self.clients[address] = c
        self.endpoints[address] = c
        return c

    def add_remote(self, address: str, *, rack: Any = 0, colocated_with: str | None = None,
                   kind: str | None = None) -> Remote:
        """An address whose machine another partition of a partitioned run
        runs (``endpoints.Remote``): placed on the network like a host (in
        ``rack``) or a client (``colocated_with``), never run here."""
        self._check_new(address)
        ep = Remote(address, kind if kind is not None else address.split(":", 1)[0])
        self.network.place(address, rack, colocated_with)
        self.endpoints[address] = ep
        return ep

    def remove_client(self, address: str) -> None:
        """Disconnect a client: messages to it are dropped from now on."""
        self.crash(address)

    def _check_new(self, address: str) -> None:
        if not isinstance(address, str) or not address:
            raise ValueError(f"addresses are non-empty strings, got {address!r}")
        if address in self.endpoints:
            raise ValueError(f"address {address!r} is already in use; crash/restart a host "
                             f"with kernel.crash()/kernel.restart() instead of re-adding it")

    def host(self, address: str) -> Host:
        try:
            return self.hosts[address]
        except KeyError:
            some = ", ".join(list(self.hosts)[:8])
            raise UnknownAddress(f"no host {address!r} (hosts: {some}...)") from None

    def machine(self, address: str) -> Any:
        """The machine at ``address`` (``None`` while the host is down)."""
        return self.host(address).machine

    def is_alive(self, address: str) -> bool:
        ep = self.endpoints.get(address)
        return ep is not None and ep.alive

    def derive_rng(self, name: str) -> random.Random:
        """A ``random.Random`` for ``name``, derived from the kernel's seed.

        Stable across runs and processes (not ``hash()``-based), and
        independent of how much the kernel's own RNG has been used: give one
        to each machine that needs randomness.
        """
        d = hashlib.blake2b(f"{self.seed}/{name}".encode(), digest_size=8).digest()
        return random.Random(int.from_bytes(d, "big"))

    # ------------------------------------------------------------------
    # injecting work

    def inject(self, address: str, event: Event, at: float | None = None) -> None:
        """Deliver ``event`` to ``address`` at ``at`` (default: now), locally
        (no network), e.g. a ``NodeDied`` from the omniscient simulator.
        Dropped if the target is down then."""
        ep = self.endpoints.get(address)
        if ep is None:
            raise UnknownAddress(f"cannot inject into {address!r}: no such address")
        t = float(self.env.now if at is None else at)
        if t < self.env.now:
            raise ValueError(f"inject at {t!r} is in the past (now is {self.env.now!r})")
        if ep.alive:
            ep._push_local(t, [event])

    def send(self, src: str, to: str, msg: Message) -> None:
        """Send ``msg`` from ``src`` (a host or a client) to ``to``, now."""
        ep = self.endpoints.get(src)
        if ep is None:
            raise UnknownAddress(f"cannot send from {src!r}: no such address")
        if isinstance(ep, Client):
            ep.send(to, msg)
        elif ep.alive:
            # Via the heap, so that a handler calling this mid-step cannot
            # disturb the host's batch of outgoing messages.
            heappush(ep._specials, self.env.now)
            self._push((self.env.now, _NORMAL, next(self._eid), self._on_call,
                        ep.send, (to, msg), ep, ep.epoch))

    def call_at(self, t: float, fn: Callable, *args: Any) -> None:
        """Run ``fn(*args)`` at simulated time ``t``.

        ``fn`` may do anything (crash, pause or slow a host, inject into
        one, read a machine), so no host handles an event ahead of it (it is
        a barrier to the look-ahead, see "Efficiency").  A simulated
        program's own work that touches no host but through messages uses
        ``program_call_at``."""
        if t < self.env.now:
            raise ValueError(f"call_at({t!r}) is in the past (now is {self.env.now!r})")
        t = float(t)
        heappush(self._cal.barriers, t)
        self._push((t, _NORMAL, next(self._eid), self._on_call, fn, args, None, 0))

    def program_call_at(self, t: float, fn: Callable, *args: Any) -> None:
        """``call_at`` for a simulated program's own work (a driver's CPU
        time, its client machine's timers): ``fn`` acts on the program and
        its client only -- it sends messages, it does not crash, pause,
        slow or inject into a host, nor read a machine -- so hosts may
        handle their queued events ahead of it (no barrier)."""
        if t < self.env.now:
            raise ValueError(f"program_call_at({t!r}) is in the past (now is {self.env.now!r})")
        p = self._program
        heappush(p._specials, float(t))
        self._push((float(t), _NORMAL, next(self._eid), self._on_call, fn, args, p, 0))

    def call_after(self, dt: float, fn: Callable, *args: Any) -> None:
        self.call_at(self.env.now + dt, fn, *args)

    # ------------------------------------------------------------------
    # faults on hosts

    def crash(self, address: str) -> bool:
        """Crash a host (or disconnect a client): its machine, queued events,
        timers and in-flight messages to it are gone.  Returns False if it
        was already down."""
        ep = self.endpoints.get(address)
        if ep is None:
            raise UnknownAddress(f"cannot crash {address!r}: no such address")
        if not ep.alive:
            return False
        now = self.env.now
        ep.alive = False
        ep.epoch += 1
        self._epoch_bumps += 1
        ep.crashed_at = now
        ep.pending = {}
        ep.paused_until = float("-inf")
        if isinstance(ep, (Client, Host)):
            ep._flush_scheduled = False
        if isinstance(ep, Client):
            ep._held = None
        if isinstance(ep, Host):
            ep.machine = None
            ep.inbox.clear()
            ep.urgent.clear()
            ep.wake = False
            ep._stalled = False
            ep.busy_until = now
            ep.state.clear()
        if self.trace is not None:
            self.trace.note(now, address, "crash")
        for hook in self.on_crash:
            hook(self, address)
        return True

    def restart(self, address: str, machine: Any = None) -> bool:
        """Bring a crashed host back with a new ``machine``.

        Returns False if it was alive.  The new machine gets no event until
        something is sent or injected (``on_restart`` hooks may do that).
        """
        ep = self.endpoints.get(address)
        if ep is None:
            raise UnknownAddress(f"cannot restart {address!r}: no such address")
        if ep.alive:
            return False
        now = self.env.now
        if isinstance(ep, Host):
            if machine is None:
                raise ValueError(f"restart({address!r}) needs a new machine object")
            ep._check_machine(machine)
            ep.machine = machine
            ep.busy_until = now
        ep.now = now
        ep.alive = True
        ep.epoch += 1  # anything addressed to the dead incarnation stays lost
        self._epoch_bumps += 1
        if self.trace is not None:
            self.trace.note(now, address, f"restart {type(machine).__name__}")
        for hook in self.on_restart:
            hook(self, address)
        return True

    def slow(self, address: str, factor: float) -> None:
        """Multiply a host's CPU costs by ``factor`` (1.0 restores it)."""
        if factor <= 0:
            raise ValueError(f"slowdown factor must be > 0, got {factor!r}")
        self.host(address)._set_cpu_factor(float(factor))

    def pause(self, address: str, duration: float, timers_first: bool = True) -> bool:
        """Stop ``address`` for ``duration`` seconds as SIGSTOP would (see
        "Pauses" in the module docstring); ``timers_first``: on resume, its
        overdue timers run before the messages that queued meanwhile (the
        order of a driver loop that fires timers first).  Returns False if
        it is down."""
        if not (isinstance(duration, (int, float)) and duration > 0):
            raise ValueError(f"pause({address!r}): duration must be > 0 seconds, got {duration!r}")
        ep = self.endpoints.get(address)
        if ep is None:
            raise UnknownAddress(f"cannot pause {address!r}: no such address")
        if not ep.alive:
            return False
        now = self.env.now
        resume = now + float(duration)
        ep.paused_until = max(ep.paused_until, resume)
        if isinstance(ep, Host):
            if ep.busy_until < resume:
                ep.busy_until = resume
        elif ep._held is None:
            ep._held = []
        if self.trace is not None:
            self.trace.note(now, address, f"pause {duration:g}s")
        # owned by the endpoint: a crash meanwhile cancels the resume
        heappush(ep._specials, resume)
        self._push((resume, _NORMAL, next(self._eid), self._on_call, ep._resume,
                               (bool(timers_first),), ep, ep.epoch))
        return True

    def note(self, address: str, text: str) -> None:
        """Record a line in the trace (faults use this)."""
        if self.trace is not None:
            self.trace.note(self.env.now, address, text)

    # ------------------------------------------------------------------
    # running

    def run(self, until: float | None = None) -> None:
        """Run until simulated time ``until`` (events due at exactly ``until``
        are left for later, as ``env.run`` does), or until nothing is left."""
        if until is None:
            self._loop(None, None)
            return
        if until <= self.env.now:
            raise ValueError(f"until ({until!r}) must be later than now ({self.env.now!r})")
        token = [True]
        self._cal.push((float(until), _URGENT, next(self._eid), self._on_stop, token))
        try:
            self._loop(None, None)
        finally:
            token[0] = False

    def run_until(self, predicate: Callable[[], bool], timeout: float,
                  check_every: float | None = None) -> bool:
        """Run until ``predicate()`` is true or ``timeout`` simulated seconds
        pass; returns whether it became true.

        ``predicate`` is checked after every heap entry (a batch, a timer, a
        SimPy event), or only every ``check_every`` simulated seconds.
        """
        if predicate():
            return True
        token = [True]
        end = self.env.now + timeout
        self._cal.push((float(end), _URGENT, next(self._eid), self._on_stop, token))
        try:
            return self._loop(predicate, check_every)
        finally:
            token[0] = False

    def _loop(self, predicate: Callable[[], bool] | None,
              check_every: float | None = None) -> bool:
        if self._running:
            raise RuntimeError("SimKernel.run/run_until called from inside the simulation "
                               "(a handler, callback or process); schedule work with "
                               "call_at/inject instead")
        self._running = True
        try:
            return self._loop_body(predicate, check_every)
        finally:
            self._running = False

    def _grow_queue(self) -> None:
        """The queue outgrew a plain heap: buckets from now on (see
        ``_Calendar``); everything that pushes is told."""
        cal = self._cal
        cal.grow()
        self._push = cal.push_normal
        self.network._qpush = cal.push_normal

    def _loop_small(self, predicate: Callable[[], bool] | None,
                    check_every: float | None) -> bool | None:
        """``_loop_body`` while the queue is a plain heap; returns None when
        it grew past ``SMALL_LIMIT`` (``_loop_body`` goes on with buckets)."""
        cal = self._cal
        heap, other = cal.heap, cal.other
        env = self.env
        limit = cal.SMALL_LIMIT
        next_check = env._now
        while True:
            if heap:
                item = heap[0]
                if other and other[0] < item:
                    item = heappop(other)
                else:
                    heappop(heap)
            elif other:
                item = heappop(other)
            else:
                return bool(predicate()) if predicate is not None else False
            if len(item) == 4:
                _simpy_process(env, item)
            else:
                env._now = item[0]
                item[3](item)
            if predicate is not None:
                if check_every is None:
                    if predicate():
                        return True
                elif env._now >= next_check:
                    if predicate():
                        return True
                    next_check = env._now + check_every
            if len(heap) > limit:
                self._grow_queue()
                return None

    def _loop_body(self, predicate: Callable[[], bool] | None,
                   check_every: float | None) -> bool:
        cal = self._cal
        times, buckets, other = cal.times, cal.buckets, cal.other
        env = self.env
        try:
            if cal.small:
                done = self._loop_small(predicate, check_every)
                if done is not None:
                    return done
            # (the pop is _Calendar.pop, inlined)
            if predicate is None:
                while True:
                    if times:
                        t = times[0]
                        b = buckets[t]
                        if other and other[0][0] <= t and other[0] < (b if b.__class__ is tuple else b[0]):
                            # (whole entries compared only when the other
                            # heap's first -- a run horizon, a SimPy URGENT
                            # event -- is due no later than this bucket)
                            item = heappop(other)
                        elif b.__class__ is tuple:
                            item = b
                            heappop(times)
                            del buckets[t]
                        else:
                            item = b.popleft()
                            if not b:
                                heappop(times)
                                del buckets[t]
                    elif other:
                        item = heappop(other)
                    else:
                        return False
                    if len(item) == 4:
                        _simpy_process(env, item)
                    else:
                        env._now = item[0]
                        item[3](item)
            next_check = env._now
            while True:
                if times:
                    t = times[0]
                    b = buckets[t]
                    if other and other[0][0] <= t and other[0] < (b if b.__class__ is tuple else b[0]):
                        # (whole entries compared only when the other
                        # heap's first -- a run horizon, a SimPy URGENT
                        # event -- is due no later than this bucket)
                        item = heappop(other)
                    elif b.__class__ is tuple:
                        item = b
                        heappop(times)
                        del buckets[t]
                    else:
                        item = b.popleft()
                        if not b:
                            heappop(times)
                            del buckets[t]
                elif other:
                    item = heappop(other)
                else:
                    break
                if len(item) == 4:
                    _simpy_process(env, item)
                else:
                    env._now = item[0]
                    item[3](item)
                if check_every is None:
                    if predicate():
                        return True
                elif env._now >= next_check:
                    if predicate():
                        return True
                    next_check = env._now + check_every
            return bool(predicate())
        except _StopLoop:
            return bool(predicate()) if predicate is not None else False

    def _on_stop(self, item: tuple) -> None:
        if item[4][0]:
            raise _StopLoop

    def _on_call(self, item: tuple) -> None:
        owner = item[6]
        if owner is None:
            heappop(self._cal.barriers)  # (its time: the first of them)
            item[4](*item[5])
        else:
            heappop(owner._specials)  # (stale or not: it was pushed)
            if owner.epoch == item[7]:
                owner._call(item[0], item[4], item[5])
            if owner._stalled:
                owner._unstall(item[0])

    # ------------------------------------------------------------------
    # internals used by the network

    def _endpoint_for_send(self, src: str, dst: str, msgs: list) -> _Endpoint | None:
        ep = self.endpoints.get(dst)
        if ep is None:
            self._undeliverable += len(msgs)
            if self.unknown_address == "raise":
                raise UnknownAddress(
                    f"{src!r} sent {type(msgs[0]).__name__} to {dst!r}, which was never added "
                    f"to the simulation; add it (add_host/add_client) or pass "
                    f"unknown_address='drop' to SimKernel")
            return None
        return ep

    def _net_event(self, what: str, t: float, link: Any, msgs: list) -> None:
        if self.trace is not None:
            self.trace.network(what, t, link.src, link.dst, msgs)
        for fn in self.net_watchers:
            fn(what, t, link.src, link.dst, msgs)

    def _find_handler(self, host: Host, ct: type) -> Callable:
        for base in ct.__mro__:
            h = host.handlers.get(base) or self.handlers.get(base)
            if h is not None:
                host.handlers[ct] = h
                return h
        known = ", ".join(sorted(t.__name__ for t in host.handlers)) or "none"
        raise UnhandledCommand(
            f"host {host.address!r} ({type(host.machine).__name__}) emitted a "
            f"{ct.__name__} command but no handler is registered for it (host handlers: "
            f"{known}). Pass handlers={{{ct.__name__}: fn}} to add_host, or set "
            f"kernel.handlers[{ct.__name__}] = fn, where fn(host, cmd) carries it out.")

    def _log(self, t: float, address: str, cmd: Log) -> None:
        self.logs.append((t, address, cmd.level, cmd.text, cmd.job_id))
        if self.print_logs:
            print(f"[{t:.6f}] {address} {cmd.level}: {cmd.text}")
        for hook in self.on_log:
            hook(t, address, cmd)

    # ------------------------------------------------------------------
    # reporting

    def stats(self) -> dict[str, Any]:
        """Counters: events handled, messages, drops, the busiest host."""
        handled = sum(h.handled for h in self.hosts.values())
        busiest = max(self.hosts.values(), key=lambda h: h.busy_time, default=None)
        out: dict[str, Any] = {
            "time": self.env.now,
            "hosts": len(self.hosts),
            "clients": len(self.clients),
            "events_handled": handled,
            "client_messages": sum(c.received for c in self.clients.values()),
            "lost_to_crashes": self._lost,
            "undeliverable": self._undeliverable,
        }
        out["net_batches"] = self.network.batches
        out.update({f"net_{k}": v for k, v in self.network.stats.items()})
        if busiest is not None and self.env.now > 0:
            out["busiest_host"] = busiest.address
            out["busiest_utilisation"] = busiest.busy_time / self.env.now
        return out

    def summary(self, print_it: bool = True) -> str:
        """One line of counters and the trace hash; printed by default."""
        s = self.stats()
        parts = [f"t={s['time']:.6f}s", f"events={s['events_handled']}",
                 f"batches={s['net_batches']}", f"dropped={s['net_dropped']}",
                 f"cut={s['net_cut']}", f"lost={s['lost_to_crashes']}"]
        if self.trace is not None:
            parts.append(f"trace={self.trace.hexdigest()}")
        line = f"sim seed={self.seed}: " + " ".join(parts)
        if print_it:
            print(line)
        return line
