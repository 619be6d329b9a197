"""The kernel's endpoints: a ``Host`` runs one machine, a ``Client`` none.

Why its own module: an endpoint is where the kernel's rules meet one
address -- a host's inbox, its CPU clock and its single-threaded event loop
(``Host._drain``), a client's mailbox and waiters, and how both stand still
when paused.  ``SimKernel`` (``penumbra.sim.kernel``) builds them and owns
the clock and the queue; the endpoints reach it only through the few
attributes ``KernelPort`` lists, so this module does not import the kernel
(the kernel imports it).

Theory of operation
-------------------
See "Hosts", "Efficiency", "Pauses" and "Clients" in the docstring of
``penumbra.sim.kernel``: a host handles one event at a time, charged CPU by
the cost model, and carries out the commands at the step's end (``Send``
through the network, ``SetTimer`` as a queue entry, ``Log`` recorded, the
rest to a handler); a client is a program's address, whose messages go to a
callback or a mailbox.  Both push plain tuples into the kernel's queue
(layouts in ``penumbra.sim.eventqueue``).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from heapq import heappop, heappush
from typing import TYPE_CHECKING, Any, Protocol

import simpy

from penumbra.core.messages import Event, Log, Message, Send, SetTimer, TimerFired

from .eventqueue import _NORMAL

if TYPE_CHECKING:  # pragma: no cover
    from .costs import CostModel
    from .eventqueue import _Calendar
    from .network import Network
    from .trace import Trace

__all__ = ["Host", "Client", "KernelPort"]


class KernelPort(Protocol):
    """What an endpoint uses of its kernel (``SimKernel`` is the one).

    Why a protocol: the kernel builds endpoints, so an import of the kernel
    here would be a circle; the endpoints need only its clock, queue, RNG,
    cost model, trace, network and these few internals.
    """

    env: simpy.Environment
    rng: random.Random
    costs: CostModel
    trace: Trace | None
    network: Network
    _cal: _Calendar
    _eid: Iterator[int]
    _push: Callable[[tuple], None]
    _lost: int
    _epoch_bumps: int
    _cost_tables: dict[tuple[str, float], dict[type, float]]
    look_ahead: float

    def _on_call(self, item: tuple) -> None: ...

    def _log(self, t: float, address: str, cmd: Log) -> None: ...

    def _find_handler(self, host: Host, ct: type) -> Callable: ...


class _Endpoint:
    """Something with an address on the network (a host or a client).

    Slotted (and so are ``Host`` and ``Client``): CPython 3.11 keeps an
    instance's attributes inline, beside the object, only up to 30 of them;
    a host has 30, and with a dict of its own every attribute read went
    through a separate 1.5 KB dict, which is a cache miss at 1,000 hosts
    (measured: 40 ns -> 200-1,200 ns a method reading two attributes).
    ``__dict__`` stays for attributes set from outside (a partition marks
    the endpoints it disowns)."""

    __slots__ = ("kernel", "address", "kind", "alive", "epoch", "crashed_at", "links", "pending",
                 "now", "paused_until", "_on_net", "_on_local", "_specials", "_stalled",
                 "__dict__")

    def __init__(self, kernel: KernelPort, address: str, kind: str):
        self.kernel = kernel
        self.address = address
        self.kind = kind
        self.alive = True
        self.epoch = 0          # bumped by crash and restart
        self.crashed_at = float("-inf")
        self.links: dict = {}   # dst -> Link, owned by the Network
        self.pending: dict[str, list] = {}  # dst -> messages leaving at self.now
        self.now = kernel.env.now
        self.paused_until = float("-inf")  # see SimKernel.pause
        # the times of this endpoint's queued entries that may change what
        # it does next out of turn (urgent events, its callbacks, a resume):
        # a heap, pushed with each such entry and popped when it is run
        # (stale or not); a host handles nothing ahead of the first
        self._specials: list[float] = []
        # a host stopped for one of its specials, with no wake-up queued:
        # the special's entry (stale or not) resumes it (``_unstall``)
        self._stalled = False
        # bound once: heap entries refer to these
        self._on_net = self._net_entry
        self._on_local = self._local_entry

    def _flush(self) -> None:
        pending = self.pending
        if pending:
            self.pending = {}
            transmit = self.kernel.network.transmit
            depart = self.now
            for dst, msgs in pending.items():
                transmit(self, dst, msgs, depart)

    def _push_local(self, t: float, events: list) -> None:
        k = self.kernel
        k._push((t, _NORMAL, next(k._eid), self._on_local, events, self.epoch))

    def _call(self, now: float, fn: Callable, args: tuple) -> None:
        fn(*args)

    def _net_entry(self, item: tuple) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _local_entry(self, item: tuple) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __repr__(self) -> str:
        state = "alive" if self.alive else "dead"
        return f"<{type(self).__name__} {self.address} {state}>"


def _delivered(item: tuple) -> None:
    """A batch arrives: its link stops pointing at it.  ``Link.last`` is
    kept only so that a batch sent on the link at the same instant can ride
    along, which a delivered batch never can again (its arrival is past);
    held on, it kept one batch of messages alive for every link ever used
    (millions at 10,000 nodes: every node meets hundreds of GCS shards).
    The entry carries its link (``None``: from another partition, or sent
    through a fault rule, which never rides along)."""
    link = item[9]
    if link is not None and link.last is item:
        link.last = None


class Host(_Endpoint):
    """A simulated host running one machine.

    For handlers: ``address``, ``kind``, ``machine``, ``kernel``, ``now``
    (the time the current commands take effect: use it, not ``env.now``),
    ``rng`` (the kernel's RNG), ``state`` (a dict for handler bookkeeping,
    such as a node's simulated worker processes; cleared on crash), and
    ``deliver_at``/``deliver_after``/``call_at``/``call_after``/``send``.
    """

    __slots__ = ("validate", "machine", "handlers", "inbox", "urgent", "busy_until", "wake",
                 "cpu_factor", "handled", "busy_time", "state", "rng", "_cost_override", "_costs",
                 "_cmd_cost", "_on_wake", "_on_urgent", "_flush_scheduled")

    def __init__(self, kernel: KernelPort, address: str, machine: Any,
                 handlers: Mapping[type, Callable], kind: str, validate: bool,
                 cost: float | Callable[[Any], float] | None):
        super().__init__(kernel, address, kind)
        self.validate = validate
        self._check_machine(machine)
        self.machine = machine
        self.handlers: dict[type, Callable] = dict(handlers)
        self.inbox: deque = deque()
        self.urgent: deque = deque()  # local events handled before the inbox
        self.busy_until = kernel.env.now
        self.wake = False
        self.cpu_factor = 1.0
        self.handled = 0
        self.busy_time = 0.0
        self.state: dict[str, Any] = {}
        self.rng = kernel.rng
        self._cost_override = cost
        self._costs: dict[type, float] = self._cost_table()
        self._cmd_cost = kernel.costs.per_command
        self._on_wake = self._wake_entry
        self._on_urgent = self._urgent_entry
        self._flush_scheduled = False

    def _check_machine(self, machine: Any) -> None:
        if not callable(getattr(machine, "handle", None)):
            raise TypeError(f"host {self.address!r}: machine {machine!r} has no "
                            f"handle(event, now) method")
        if self.validate and not callable(getattr(machine, "validate", None)):
            raise TypeError(f"host {self.address!r}: validate_every_step=True but "
                            f"{type(machine).__name__} has no validate() method")

    # -- API for handlers ---------------------------------------------------
    def deliver_at(self, t: float, event: Event, urgent: bool = False) -> None:
        """Deliver ``event`` to this host's machine at time ``t`` (>= now),
        locally (no network).  Dropped if the host crashes before then.

        ``urgent``: the event goes ahead of the messages waiting in the
        inbox (as a machine serving several connections fairly would not
        keep, say, its worker processes waiting behind a flood from one
        client)."""
        if t < self.now:
            raise ValueError(
                f"host {self.address!r}: deliver_at({t!r}) is in the past (host.now is "
                f"{self.now!r}); handlers must schedule at or after host.now")
        if self.alive:
            if urgent:
                k = self.kernel
                heappush(self._specials, float(t))
                k._push((float(t), _NORMAL, next(k._eid), self._on_urgent, [event], self.epoch))
            else:
                self._push_local(float(t), [event])

    def deliver_after(self, dt: float, event: Event) -> None:
        """Deliver ``event`` to this host's machine ``dt`` after ``host.now``."""
        self.deliver_at(self.now + dt, event)

    def call_at(self, t: float, fn: Callable, *args: Any) -> None:
        """Run ``fn(*args)`` at time ``t`` unless the host crashes first.

        During the call ``host.now == t`` and ``host.send`` departs at ``t``.
        """
        if t < self.now:
            raise ValueError(f"host {self.address!r}: call_at({t!r}) is before host.now "
                             f"({self.now!r})")
        k = self.kernel
        heappush(self._specials, float(t))
        k._push((float(t), _NORMAL, next(k._eid), k._on_call, fn, args, self, self.epoch))

    def call_after(self, dt: float, fn: Callable, *args: Any) -> None:
        self.call_at(self.now + dt, fn, *args)

    def send(self, to: str, msg: Message) -> None:
        """Send ``msg`` from this host, as if the machine had emitted ``Send``.

        In a handler or a ``host.call_at`` callback it leaves at ``host.now``
        with the step's other messages; called from anywhere else it leaves
        at ``env.now`` (prefer ``kernel.send`` there).
        """
        if not self.alive:
            return
        k = self.kernel
        lst = self.pending.get(to)
        if lst is None:
            self.pending[to] = [msg]
        else:
            lst.append(msg)
        if k.trace is not None:
            k.trace.sent(max(self.now, k.env._now), self.address, to, msg)
        if not self._flush_scheduled:
            # Inside a step the step flushes first and this finds nothing.
            self._flush_scheduled = True
            heappush(self._specials, k.env._now)
            k._push((k.env._now, _NORMAL, next(k._eid), k._on_call,
                     self._flush_now, (), self, self.epoch))

    def _flush_now(self) -> None:
        self._flush_scheduled = False

    def deliver_now(self, event: Event, urgent: bool = False) -> None:
        """From a ``call_at`` callback on this host: hand ``event`` to the
        machine at ``host.now`` at once (queued behind its inbox if it is
        busy, or ahead of it if ``urgent``), without a heap round trip.
        Equivalent to ``deliver_at(now)`` except that it goes ahead of other
        entries due at the same instant."""
        if not self.alive:
            return
        (self.urgent if urgent else self.inbox).append(event)
        if not self.wake:
            self._drain(self.now)

    def carry_out(self, cmds: list) -> None:
        """Carry out ``cmds`` at ``host.now`` as if the machine had emitted
        them (e.g. what its ``start(now)`` returned): ``Send`` through the
        network, ``SetTimer`` as a timer, ``Log`` recorded, anything else to
        its handler.  Call it from a ``call_at`` callback on this host."""
        if not self.alive or not cmds:
            return
        k = self.kernel
        trace = k.trace
        now = self.now
        epoch = self.epoch
        for cmd in cmds:
            ct = cmd.__class__
            if ct is Send:
                lst = self.pending.get(cmd.to)
                if lst is None:
                    self.pending[cmd.to] = [cmd.msg]
                else:
                    lst.append(cmd.msg)
                if trace is not None:
                    trace.sent(now, self.address, cmd.to, cmd.msg)
            elif ct is SetTimer:
                at = cmd.at if cmd.at > now else now
                k._push((at, _NORMAL, next(k._eid), self._on_local, [
                    TimerFired(key=cmd.key, stimulus_id=cmd.stimulus_id)], epoch))
            else:
                if trace is not None:
                    trace.note(now, self.address, f"> {ct.__name__}")
                self._other(cmd, now)
                if self.epoch != epoch:
                    return
        if self.pending:
            self._flush()

    def _call(self, now: float, fn: Callable, args: tuple) -> None:
        self.now = now
        fn(*args)
        if self.pending:
            self._flush()

    # -- pauses (SimKernel.pause) -------------------------------------------------
    @property
    def paused(self) -> bool:
        return self.kernel.env._now < self.paused_until

    def _resume(self, timers_first: bool) -> None:
        if self.kernel.env._now < self.paused_until:
            return  # paused again meanwhile: a later resume finishes it
        if self.kernel.trace is not None:
            self.kernel.trace.note(self.now, self.address, "resume")
        inbox = self.inbox
        if inbox:
            timers = [e for e in inbox if e.__class__ is TimerFired]
            rest = [e for e in inbox if e.__class__ is not TimerFired]
            inbox.clear()
            inbox.extend(timers + rest if timers_first else rest + timers)
        if (inbox or self.urgent) and not self.wake:
            self._drain(self.now)

    # -- the event loop of one host -------------------------------------------
    def _net_entry(self, item: tuple) -> None:
        link = item[9]  # (``_delivered``, inlined: this runs for every batch)
        if link is not None and link.last is item:
            link.last = None
        if item[5] != self.epoch:
            self.kernel._lost += len(item[4])
            return
        if self.kernel._epoch_bumps:  # (else the sender is in its first life)
            src = item[6]
            if src.epoch != item[7] and item[8] > src.crashed_at:
                self.kernel._lost += len(item[4])  # emitted after its sender crashed
                return
        self.inbox.extend(item[4])
        if not self.wake:
            self._drain(item[0])

    def _local_entry(self, item: tuple) -> None:
        if item[5] != self.epoch:
            return
        self.inbox.extend(item[4])
        if not self.wake:
            self._drain(item[0])

    def _urgent_entry(self, item: tuple) -> None:
        heappop(self._specials)  # (stale or not: it was pushed)
        if item[5] != self.epoch:
            if self._stalled:
                self._unstall(item[0])
            return
        self.urgent.extend(item[4])
        if not self.wake:
            self._drain(item[0])

    def _unstall(self, t: float) -> None:
        """One of the specials this host stopped for ran: go on."""
        self._stalled = False
        if (self.inbox or self.urgent) and not self.wake and self.alive:
            self._drain(t)

    def _wake_entry(self, item: tuple) -> None:
        if item[4] == self.epoch:
            self.wake = False
            self._drain(item[0])

    def _cost_table(self) -> dict[type, float]:
        """Where ``_cost_for`` caches: without a ``cost`` override the cost
        is the cost model's for (kind, type) times the slowdown, so the
        hosts of one kind and slowdown share one table (it stays in the
        cache; one a host was a cache miss an event at 1,000 nodes)."""
        if self._cost_override is not None:
            return {}
        key = (self.kind, self.cpu_factor)
        table = self.kernel._cost_tables.get(key)
        if table is None:
            table = self.kernel._cost_tables[key] = {}
        return table

    def _cost_for(self, ev: Any) -> float:
        """CPU seconds for ``ev`` (cached per type unless ``cost`` is a
        function); includes the slowdown factor."""
        o = self._cost_override
        if o is None:
            c = self.kernel.costs.handling_cost(self.kind, ev.__class__) * self.cpu_factor
        elif callable(o):
            return float(o(ev)) * self.cpu_factor
        else:
            c = float(o) * self.cpu_factor
        self._costs[ev.__class__] = c
        return c

    def _set_cpu_factor(self, factor: float) -> None:
        self.cpu_factor = factor
        self._costs = self._cost_table()
        self._cmd_cost = self.kernel.costs.per_command * factor

    def _drain(self, T: float) -> None:
        """Handle queued events, starting no earlier than ``T`` (= env.now)."""
        inbox = self.inbox
        urgent = self.urgent
        k = self.kernel
        cal = k._cal
        barriers = cal.barriers
        other = cal.other
        specials = self._specials
        push = k._push
        trace = k.trace
        costs = self._costs
        epoch = self.epoch
        self._stalled = False
        while inbox or urgent:
            start = self.busy_until
            if start > T:
                # Busy until ``start``.  Send what the previous event emitted,
                # then handle the next event now, ahead of env.now (see
                # "Look-ahead" in penumbra.sim.kernel), unless something
                # that could change what it handles next is due by then:
                # an entry of its own that jumps the inbox (urgent, a
                # callback, a resume), a barrier (a kernel callback, a SimPy
                # event) or a run's horizon; or it is ``look_ahead`` past T.
                if self.pending:
                    self._flush()
                if specials and specials[0] <= start:
                    # its own special comes first and resumes it: no
                    # wake-up entry (``_unstall``)
                    self._stalled = True
                    return
                if (start - T > k.look_ahead or (barriers and barriers[0] <= start)
                        or (other and other[0][0] <= start)):
                    self.wake = True
                    push((start, _NORMAL, next(k._eid), self._on_wake, epoch))
                    return
            else:
                start = T
            ev = urgent.popleft() if urgent else inbox.popleft()
            machine = self.machine
            try:
                cmds = machine.handle(ev, start)
            except Exception as e:
                e.add_note(f"while {self.address!r} handled {ev!r} at t={start!r}")
                raise
            cost = costs.get(ev.__class__)
            if cost is None:
                cost = self._cost_for(ev)
            if cmds:
                cost += len(cmds) * self._cmd_cost
            if cost:
                self.busy_time += cost
            finish = start + cost
            self.busy_until = finish
            self.now = finish
            self.handled += 1
            if self.validate:
                try:
                    machine.validate()
                except Exception as e:
                    e.add_note(f"invariant broken after {self.address!r} handled {ev!r} "
                               f"at t={start!r}")
                    e.sim_event = (self.address, start, ev, cmds)  # for the verification swarm's story
                    if trace is not None:
                        trace.handled(start, self.address, ev, finish, cmds)
                        trace.note(start, self.address, f"invariant broken: {e}")
                    raise
            if trace is not None:
                trace.handled(start, self.address, ev, finish, cmds)
            if cmds:
                pending = self.pending
                for cmd in cmds:
                    ct = cmd.__class__
                    if ct is Send:
                        to = cmd.to
                        lst = pending.get(to)
                        if lst is None:
                            pending[to] = [cmd.msg]
                        else:
                            lst.append(cmd.msg)
                    elif ct is SetTimer:
                        at = cmd.at
                        if at < finish:
                            at = finish
                        push((at, _NORMAL, next(k._eid), self._on_local, [
                            TimerFired(key=cmd.key, stimulus_id=cmd.stimulus_id)], epoch))
                    else:
                        self._other(cmd, finish)
                        if self.epoch != epoch:
                            return  # a handler crashed this host
                        pending = self.pending
        pending = self.pending
        if pending:
            self.pending = {}
            transmit = k.network.transmit
            depart = self.now
            for dst, msgs in pending.items():
                transmit(self, dst, msgs, depart)

    def _other(self, cmd: Any, finish: float) -> None:
        ct = cmd.__class__
        h = self.handlers.get(ct)
        if h is None:
            if ct is Log:
                self.kernel._log(finish, self.address, cmd)
                return
            h = self.kernel._find_handler(self, ct)
        h(self, cmd)


class Client(_Endpoint):
    """An endpoint without a machine, for simulated programs.

    Incoming messages go to ``on_message(msg)`` when given; otherwise to a
    mailbox from which SimPy processes take them::

        client = kernel.add_client("driver:0", colocated_with="node:0")

        def program(env):
            client.send("node:0", SubmitTask(client="driver:0", spec=spec))
            reply = yield client.wait_for(lambda m: isinstance(m, ObjectsReady))

        kernel.env.process(program(kernel.env))

    Sends made in one instant to one destination travel as one batch.  A
    client costs no CPU; a program models its own with ``env.timeout``.
    To feed a ``simpy.Store`` instead, pass ``on_message=store.put``.
    """

    __slots__ = ("on_message", "mailbox", "_waiters", "_flush_scheduled", "received", "_held")

    def __init__(self, kernel: KernelPort, address: str, kind: str,
                 on_message: Callable[[Message], Any] | None):
        super().__init__(kernel, address, kind)
        self.on_message = on_message
        self.mailbox: deque = deque()
        self._waiters: list[tuple[Callable[[Any], bool] | None, simpy.Event]] = []
        self._flush_scheduled = False
        self.received = 0
        self._held: list | None = None  # while paused: (items, now) or (fn, args)

    def defer(self, fn: Callable, args: tuple = ()) -> bool:
        """While this client is paused, hold ``fn(*args)`` (an action of its
        program) until it resumes and return True; otherwise return False
        (the caller goes on at once)."""
        if self._held is None:
            return False
        self._held.append((fn, args))
        return True

    def _resume(self, timers_first: bool) -> None:
        k = self.kernel
        if k.env._now < self.paused_until or self._held is None:
            return
        held, self._held = self._held, None
        if k.trace is not None:
            k.trace.note(k.env._now, self.address, "resume")
        for what, extra in held:
            if not self.alive:
                return
            if isinstance(what, list):
                self.receive(what, k.env._now)
            else:
                what(*extra)

    def send(self, to: str, msg: Message) -> None:
        """Send ``msg`` to ``to`` now (``env.now``)."""
        if not self.alive:
            raise RuntimeError(f"client {self.address!r} is disconnected and cannot send; "
                               f"re-add it with kernel.add_client({self.address!r})")
        if self._held is not None:
            self._held.append((self.send, (to, msg)))  # paused: it leaves on resume
            return
        k = self.kernel
        lst = self.pending.get(to)
        if lst is None:
            self.pending[to] = [msg]
        else:
            lst.append(msg)
        if k.trace is not None:
            k.trace.sent(k.env._now, self.address, to, msg)
        if not self._flush_scheduled:
            # Flush at the end of this instant's queue, so that everything
            # sent now to one destination travels as one batch.
            self._flush_scheduled = True
            heappush(self._specials, k.env._now)
            k._push((k.env._now, _NORMAL, next(k._eid), k._on_call,
                     self._flush_now, (), self, self.epoch))

    def _flush_now(self) -> None:
        self._flush_scheduled = False
        self.now = self.kernel.env._now
        self._flush()

    def recv(self) -> simpy.Event:
        """An event that fires with the next message (mailbox first)."""
        return self.wait_for(None)

    def wait_for(self, predicate: Callable[[Any], bool] | None) -> simpy.Event:
        """An event that fires with the first message matching ``predicate``.

        A matching message already in the mailbox is taken at once.  Messages
        are offered to waiters in the order the waiters were created; a
        message no waiter wants goes to the mailbox.
        """
        ev = simpy.Event(self.kernel.env)
        mb = self.mailbox
        for i, m in enumerate(mb):
            if predicate is None or predicate(m):
                del mb[i]
                ev.succeed(m)
                return ev
        self._waiters.append((predicate, ev))
        return ev

    def request(self, to: str, msg: Message,
                match: Callable[[Any], bool] | None = None) -> simpy.Event:
        """Send ``msg`` and return ``wait_for(match)`` (armed before sending)."""
        ev = self.wait_for(match)
        self.send(to, msg)
        return ev

    def _net_entry(self, item: tuple) -> None:
        _delivered(item)
        if item[5] != self.epoch:
            self.kernel._lost += len(item[4])
            return
        if self.kernel._epoch_bumps:
            src = item[6]
            if src.epoch != item[7] and item[8] > src.crashed_at:
                self.kernel._lost += len(item[4])
                return
        self.receive(item[4], item[0])

    def _local_entry(self, item: tuple) -> None:
        if item[5] == self.epoch:
            self.receive(item[4], item[0])

    def receive(self, items: list, now: float) -> None:
        if self._held is not None:
            self._held.append((list(items), None))  # paused: it waits in the socket
            return
        trace = self.kernel.trace
        for m in items:
            self.received += 1
            if trace is not None:
                trace.received(now, self.address, m)
            if self.on_message is not None:
                self.on_message(m)
                continue
            for i, (pred, ev) in enumerate(self._waiters):
                if pred is None or pred(m):
                    del self._waiters[i]
                    ev.succeed(m)
                    break
            else:
                self.mailbox.append(m)



class Remote:
    """An address whose machine another partition runs (``penumbra.sim.
    partition``): placed on the network, so sends to it find a link and
    leave through the window exchange, but never run here.

    Why not a disowned ``Host``: a machine built only to sit idle cost as
    much memory as a running one (a node with its scheduler, store and GCS
    client), so every partition held the whole cluster; stand-ins let
    memory per process fall with the number of partitions."""

    __slots__ = ("address", "kind", "links", "pending")
    alive = True
    epoch = 0
    crashed_at = float("-inf")

    def __init__(self, address: str, kind: str) -> None:
        self.address = address
        self.kind = kind
        self.links: dict = {}
        self.pending: dict = {}

    def _on_net(self, item: tuple) -> None:
        raise RuntimeError(f"a batch for {self.address!r} was queued in a partition that does not run it; "
                           f"between machines, a partitioned run's network must capture every batch "
                           f"(network.capture) for the window exchange")

    def __repr__(self) -> str:
        return f"<Remote {self.address}>"
