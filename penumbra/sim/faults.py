"""Fault schedules: what goes wrong, when, as plain data.

Theory of operation
-------------------
A fault is a frozen dataclass (``Crash``, ``Restart``, ``Partition``,
``Heal``, ``Isolate``, ``LinkFault``, ``SlowHost``, ``Pause``: a
stop-the-world pause, as SIGSTOP then SIGCONT); a ``FaultSchedule`` is
a sorted tuple of ``(time, fault)``.  Being data, a schedule can be printed,
compared, stored next to a failing seed, replayed, and shrunk (Hypothesis
can generate and shrink the list of pairs; ``without(i)`` and
``truncated(n)`` help by hand).

Schedules are written out (``FaultSchedule([(0.5, Crash("node:3",
restart_after=1.0))])``) or drawn from a seed and rates
(``FaultSchedule.random(seed, hosts=..., horizon=..., crash_rate=...)``):
each kind of fault arrives as a Poisson process over the horizon, targets
are drawn from the sorted host list minus ``protect``, all from one
``random.Random(seed)``, so the same arguments give the same schedule.

``schedule.install(kernel, restart=factory)`` arms it on a ``SimKernel``:
each fault is applied at its time; faults with a ``duration`` (or
``restart_after``) undo themselves later.  Restarting needs a
``restart(address) -> machine`` factory, checked at install time.  Applied
faults are noted in the kernel's trace, so they are part of the run's hash,
and listed in ``Installed.applied``.

Times are absolute simulated seconds (``install(..., offset=t)`` shifts
them).  Applying a fault to a host that is already in that state is a
no-op (crashing a dead host, restarting a live one).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .kernel import SimKernel

__all__ = [
    "Fault",
    "Crash",
    "Restart",
    "Partition",
    "Heal",
    "Isolate",
    "LinkFault",
    "SlowHost",
    "Pause",
    "FaultSchedule",
    "Installed",
]

_frozen = dataclass(frozen=True, slots=True)


def _addresses(v: Iterable[str] | str) -> tuple[str, ...]:
    """A sorted tuple of addresses (sets iterate in a hash-seed order)."""
    if isinstance(v, str):
        return (v,)
    return tuple(sorted(v))


class Fault:
    """Base class of faults (each subclass is a frozen dataclass)."""

    __slots__ = ()

    def apply(self, ctx: Installed) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def needs_restart_factory(self) -> bool:
        return False

    def targets(self) -> tuple[str, ...]:
        """Addresses this fault names (for validation)."""
        return ()


@_frozen
class Crash(Fault):
    """Crash ``address``; with ``restart_after``, restart it that much later
    with a new machine from the ``restart`` factory."""

    address: str
    restart_after: float | None = None

    def apply(self, ctx: Installed) -> None:
        k = ctx.kernel
        if k.crash(self.address) and self.restart_after is not None:
            k.call_after(self.restart_after, ctx.restart_now, self.address)

    def needs_restart_factory(self) -> bool:
        return self.restart_after is not None

    def targets(self) -> tuple[str, ...]:
        return (self.address,)

    def __str__(self) -> str:
        after = f" restart_after={self.restart_after:g}" if self.restart_after is not None else ""
        return f"Crash({self.address}{after})"


@_frozen
class Restart(Fault):
    """Restart a crashed ``address`` with a machine from the factory."""

    address: str

    def apply(self, ctx: Installed) -> None:
        ctx.restart_now(self.address)

    def needs_restart_factory(self) -> bool:
        return True

    def targets(self) -> tuple[str, ...]:
        return (self.address,)

    def __str__(self) -> str:
        return f"Restart({self.address})"


@_frozen
class Partition(Fault):
    """Cut traffic between ``side_a`` and ``side_b`` (``None``: everyone
    else) for ``duration`` seconds (``None``: until a ``Heal``)."""

    side_a: tuple[str, ...]
    side_b: tuple[str, ...] | None = None
    duration: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "side_a", _addresses(self.side_a))
        if self.side_b is not None:
            object.__setattr__(self, "side_b", _addresses(self.side_b))

    def apply(self, ctx: Installed) -> None:
        net = ctx.kernel.network
        pid = net.partition(self.side_a, self.side_b)
        if self.duration is not None:
            ctx.kernel.call_after(self.duration, net.heal, pid)

    def targets(self) -> tuple[str, ...]:
        return self.side_a + (self.side_b or ())

    def __str__(self) -> str:
        b = "rest" if self.side_b is None else "{" + ",".join(self.side_b) + "}"
        d = f" for {self.duration:g}s" if self.duration is not None else ""
        return f"Partition({{{','.join(self.side_a)}}} | {b}{d})"


@_frozen
class Heal(Fault):
    """Remove every partition and isolation."""

    def apply(self, ctx: Installed) -> None:
        ctx.kernel.network.heal()

    def __str__(self) -> str:
        return "Heal()"


@_frozen
class Isolate(Fault):
    """Cut ``address`` (and clients on its machine) from everyone."""

    address: str
    duration: float | None = None

    def apply(self, ctx: Installed) -> None:
        net = ctx.kernel.network
        pid = net.isolate(self.address)
        if self.duration is not None:
            ctx.kernel.call_after(self.duration, net.heal, pid)

    def targets(self) -> tuple[str, ...]:
        return (self.address,)

    def __str__(self) -> str:
        d = f" for {self.duration:g}s" if self.duration is not None else ""
        return f"Isolate({self.address}{d})"


@_frozen
class LinkFault(Fault):
    """Drop / delay / duplicate messages from ``src`` to ``dst`` (``None``:
    any; ``both_ways`` adds the reverse) for ``duration`` seconds."""

    src: tuple[str, ...] | None = None
    dst: tuple[str, ...] | None = None
    drop: float = 0.0
    delay: float = 0.0
    duplicate: float = 0.0
    duration: float | None = None
    both_ways: bool = False

    def __post_init__(self) -> None:
        for name in ("src", "dst"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, _addresses(v))

    def apply(self, ctx: Installed) -> None:
        net = ctx.kernel.network
        kw = dict(drop=self.drop, delay=self.delay, duplicate=self.duplicate)
        rids = [net.add_fault(self.src, self.dst, **kw)]
        if self.both_ways:
            rids.append(net.add_fault(self.dst, self.src, **kw))
        if self.duration is not None:
            for rid in rids:
                ctx.kernel.call_after(self.duration, net.remove_fault, rid)

    def targets(self) -> tuple[str, ...]:
        return (self.src or ()) + (self.dst or ())

    def __str__(self) -> str:
        s = "*" if self.src is None else ",".join(self.src)
        d = "*" if self.dst is None else ",".join(self.dst)
        arrow = "<->" if self.both_ways else "->"
        parts = [f"{n}={v:g}" for n, v in (("drop", self.drop), ("delay", self.delay),
                                            ("dup", self.duplicate)) if v]
        dur = f" for {self.duration:g}s" if self.duration is not None else ""
        return f"LinkFault({s}{arrow}{d} {' '.join(parts)}{dur})"


@_frozen
class SlowHost(Fault):
    """Multiply ``address``'s CPU costs by ``factor`` for ``duration``."""

    address: str
    factor: float
    duration: float | None = None

    def apply(self, ctx: Installed) -> None:
        k = ctx.kernel
        host = k.host(self.address)
        before = host.cpu_factor
        k.slow(self.address, self.factor)
        if self.duration is not None:
            k.call_after(self.duration, k.slow, self.address, before)

    def targets(self) -> tuple[str, ...]:
        return (self.address,)

    def __str__(self) -> str:
        d = f" for {self.duration:g}s" if self.duration is not None else ""
        return f"SlowHost({self.address} x{self.factor:g}{d})"


@_frozen
class Pause(Fault):
    """Stop ``address`` (a host or a driver) for ``duration`` seconds, as
    SIGSTOP and SIGCONT would: what is sent to it queues, its timers fire
    late; ``timers_first``: on resume its overdue timers run before the
    queued messages (see ``SimKernel.pause``)."""

    address: str
    duration: float
    timers_first: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.duration, (int, float)) and self.duration > 0):
            raise ValueError(f"Pause({self.address!r}): duration must be > 0 seconds, got {self.duration!r}")

    def apply(self, ctx: Installed) -> None:
        ctx.kernel.pause(self.address, self.duration, self.timers_first)

    def targets(self) -> tuple[str, ...]:
        return (self.address,)

    def __str__(self) -> str:
        order = "timers first" if self.timers_first else "messages first"
        return f"Pause({self.address} for {self.duration:g}s, {order})"


# ===========================================================================


@dataclass
class Installed:
    """A schedule armed on a kernel (returned by ``FaultSchedule.install``)."""

    kernel: SimKernel
    restart: Callable[[str], Any] | None
    applied: list[tuple[float, Fault]] = field(default_factory=list)
    restarts: list[tuple[float, str]] = field(default_factory=list)

    def apply(self, fault: Fault) -> None:
        self.kernel.note(_first_target(fault), f"fault {fault}")
        self.applied.append((self.kernel.now, fault))
        fault.apply(self)

    def restart_now(self, address: str) -> None:
        if self.restart is None:  # pragma: no cover - checked at install
            raise ValueError("no restart factory")
        k = self.kernel
        if k.is_alive(address):
            return
        k.restart(address, self.restart(address))
        self.restarts.append((k.now, address))


def _first_target(fault: Fault) -> str:
    t = fault.targets()
    return t[0] if t else "*"


def _between(rng: random.Random, v: float | tuple[float, float]) -> float:
    if isinstance(v, tuple):
        lo, hi = v
        return lo + rng.random() * (hi - lo)
    return float(v)


@dataclass(frozen=True)
class FaultSchedule:
    """An immutable, time-sorted tuple of ``(time, fault)``.

    ``FaultSchedule([(1.0, Crash("node:2", restart_after=0.5)),
    (2.0, Partition(("node:0",), None, duration=0.3))])``
    """

    events: tuple[tuple[float, Fault], ...] = ()

    def __init__(self, events: Iterable[tuple[float, Fault]] = ()):
        evs = []
        for item in events:
            t, f = item
            if not isinstance(f, Fault):
                raise TypeError(f"schedule entries are (time, Fault), got {item!r}")
            if not (isinstance(t, (int, float)) and math.isfinite(t) and t >= 0):
                raise ValueError(f"fault time must be a finite number >= 0, got {t!r}")
            evs.append((float(t), f))
        evs.sort(key=lambda e: e[0])  # stable: equal times keep their order
        object.__setattr__(self, "events", tuple(evs))

    # -- building ----------------------------------------------------------
    @classmethod
    def random(
        cls,
        seed: int,
        *,
        hosts: Sequence[str],
        horizon: float,
        start: float = 0.0,
        protect: Iterable[str] = (),
        crash_rate: float = 0.0,
        restart_after: float | tuple[float, float] | None = None,
        max_down: int | None = None,
        partition_rate: float = 0.0,
        partition_duration: float | tuple[float, float] = (0.1, 1.0),
        isolate_rate: float = 0.0,
        isolate_duration: float | tuple[float, float] = (0.1, 1.0),
        link_fault_rate: float = 0.0,
        link_fault_duration: float | tuple[float, float] = (0.1, 1.0),
        link_drop: float | tuple[float, float] = (0.0, 0.5),
        link_delay: float | tuple[float, float] = 0.0,
        link_duplicate: float | tuple[float, float] = 0.0,
        slow_rate: float = 0.0,
        slow_factor: float | tuple[float, float] = (2.0, 10.0),
        slow_duration: float | tuple[float, float] = (0.1, 1.0),
        pause_rate: float = 0.0,
        pause_duration: float | tuple[float, float] = (0.1, 1.0),
    ) -> FaultSchedule:
        """Draw a schedule from ``seed``.

        Rates are cluster-wide faults per simulated second over
        ``[start, start + horizon)``.  Targets come from ``hosts`` minus
        ``protect`` (sorted, so the order of ``hosts`` does not matter).
        ``restart_after=None`` leaves crashed hosts down; ``max_down`` caps
        how many drawn crashes may be down at once (extra ones are skipped).
        Ranges ``(lo, hi)`` are drawn uniformly; plain numbers are fixed.
        Partitions put a random quarter-or-less of the targets on one side
        and everyone else on the other.
        """
        rng = random.Random(seed)
        protected = set(protect)
        targets = sorted(h for h in set(hosts) if h not in protected)
        end = start + horizon
        events: list[tuple[float, Fault]] = []

        def arrivals(rate: float) -> list[float]:
            out: list[float] = []
            if rate <= 0 or not targets:
                return out
            t = start
            while True:
                t += rng.expovariate(rate)
                if t >= end:
                    return out
                out.append(t)

        down: list[tuple[float, float]] = []  # (crash, back) intervals
        for t in arrivals(crash_rate):
            h = rng.choice(targets)
            ra = None if restart_after is None else _between(rng, restart_after)
            back = math.inf if ra is None else t + ra
            live = [(a, b) for a, b in down if a <= t < b]
            if max_down is not None and len(live) >= max_down:
                continue
            down.append((t, back))
            events.append((t, Crash(h, restart_after=ra)))
        for t in arrivals(partition_rate):
            k = rng.randint(1, max(1, len(targets) // 4))
            side = tuple(sorted(rng.sample(targets, k)))
            events.append((t, Partition(side, None, _between(rng, partition_duration))))
        for t in arrivals(isolate_rate):
            events.append((t, Isolate(rng.choice(targets), _between(rng, isolate_duration))))
        for t in arrivals(link_fault_rate):
            a = rng.choice(targets)
            b = rng.choice(targets)
            events.append((t, LinkFault((a,), (b,), drop=_between(rng, link_drop),
                                        delay=_between(rng, link_delay),
                                        duplicate=_between(rng, link_duplicate),
                                        duration=_between(rng, link_fault_duration),
                                        both_ways=True)))
        for t in arrivals(slow_rate):
            events.append((t, SlowHost(rng.choice(targets), _between(rng, slow_factor),
                                       _between(rng, slow_duration))))
        for t in arrivals(pause_rate):
            events.append((t, Pause(rng.choice(targets), _between(rng, pause_duration),
                                    timers_first=rng.random() < 0.5)))
        return cls(events)

    # -- editing (for shrinking by hand) -------------------------------------
    def without(self, index: int) -> FaultSchedule:
        """This schedule minus event ``index``."""
        evs = list(self.events)
        del evs[index]
        return FaultSchedule(evs)

    def truncated(self, n: int) -> FaultSchedule:
        """The first ``n`` events."""
        return FaultSchedule(self.events[:n])

    def __add__(self, other: FaultSchedule) -> FaultSchedule:
        return FaultSchedule(self.events + other.events)

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self):
        return iter(self.events)

    def __str__(self) -> str:
        if not self.events:
            return "FaultSchedule(no faults)"
        return "\n".join(f"{t:12.6f}  {f}" for t, f in self.events)

    # -- running -------------------------------------------------------------
    def install(self, kernel: SimKernel, restart: Callable[[str], Any] | None = None,
                *, offset: float = 0.0) -> Installed:
        """Arm every fault on ``kernel`` at ``time + offset``.

        Args:
            restart: ``restart(address) -> machine`` for ``Crash(...,
                restart_after=...)`` and ``Restart``.

        Raises:
            ValueError: a fault needs ``restart`` and none was given, a time is
                in the past, or a fault names an unknown address.
        """
        ctx = Installed(kernel, restart)
        known = kernel.endpoints
        for t, f in self.events:
            if f.needs_restart_factory() and restart is None:
                raise ValueError(f"{f} needs a restart factory: pass "
                                 f"install(kernel, restart=lambda address: new_machine)")
            for a in f.targets():
                if a not in known:
                    raise ValueError(f"{f} names {a!r}, which is not in the simulation")
            at = t + offset
            if at < kernel.now:
                raise ValueError(f"{f} is scheduled at {at!r}, before now ({kernel.now!r})")
        for t, f in self.events:
            kernel.call_at(t + offset, ctx.apply, f)
        return ctx
