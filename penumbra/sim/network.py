"""The simulated network: topology, latency, bandwidth, message sizes, faults.

Theory of operation
-------------------
Every address (a host running a machine, or a client endpoint) is *placed*
on a machine in a rack.  A client placed on a host's machine (a driver on
``node:3``) talks to it over loopback.  Between two addresses the network
picks one of three **levels** -- loopback (same machine), intra-rack,
inter-rack -- each with its one-way latency and bandwidth; ``set_link``
overrides a single directed link.

A **link** is a directed FIFO pipe from one address to another.  A batch of
messages leaving ``src`` for ``dst`` at time ``depart`` occupies the link for
``bytes / bandwidth`` seconds, starting when the link is free, and arrives
``latency`` after its last byte left::

    start   = max(depart, link.free_at)
    done    = start + size / bandwidth       # link.free_at = done
    arrival = done + latency

So a big transfer delays later messages on the same link, but not on other
links.  Messages handed to the network in one batch (same source, same
destination, same simulated instant) travel and arrive together, as one
write on a TCP connection would: one heap entry.  With infinite bandwidth
this holds even across separate steps of the sender in one instant (later
messages join the pending entry); with finite bandwidth a later hand-over
queues behind the earlier one on the link, as the model says.  Bulk object transfers should use
``transfer()``, which reserves bandwidth on a separate ``channel`` of the
same pair (as Ray's object manager uses its own connections), so a 1 GB
fetch does not hold up control messages.

**Sizes** come from a pluggable ``size_of``; the default ``SizeModel``
charges ``message_bytes`` per message plus its payload: the ``size`` field
if the message has one, else ``spec.args.size`` if it carries a TaskSpec.
It compiles one tiny function per message type, so estimating is cheap.

**Faults** are checked only when some are active (the fault-free path costs
two boolean tests):

* partitions: ``partition(a, b)`` cuts every message between a member of
  ``a`` and a member of ``b`` (``b=None``: everyone not in ``a``);
  ``isolate(x)`` cuts ``x`` from everyone; ``heal(pid)`` / ``heal()``.
  Membership is by machine, so isolating ``node:3`` also cuts the clients
  placed on it; loopback is never cut.  The cut is checked when a message
  is sent: messages already in flight still arrive.
* per-message rules (``add_fault``): drop with probability ``drop``, add a
  uniform random extra delay in ``[0, delay]`` (which reorders messages),
  duplicate with probability ``duplicate`` (the copy draws its own delay),
  or stall the link until ``hold_until`` (what is sent meanwhile arrives
  then, in one burst, in the order sent: a heartbeat storm).
  A rule applies to messages whose source (address or machine) is in
  ``src`` and whose destination is in ``dst`` (``None``: any), between two
  machines: loopback links (a worker or driver and its own node) are local
  pipes, which in the real runtime neither lose, repeat nor reorder.

All randomness comes from the kernel's ``random.Random`` (bound by
``SimKernel``), in a deterministic order, so the same seed and
configuration give the same run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from itertools import count
from typing import TYPE_CHECKING, Any, Protocol

from penumbra.core.msg_base import field_names

if TYPE_CHECKING:  # pragma: no cover
    import random

    import simpy

    from .costs import CostModel

__all__ = ["Network", "SizeModel", "FaultRule", "LOOPBACK", "INTRA_RACK", "INTER_RACK",
           "NetEndpoint", "NetKernel"]

LOOPBACK, INTRA_RACK, INTER_RACK = 0, 1, 2
_LEVEL_NAMES = ("loopback", "intra_rack", "inter_rack")
_SWEEP_MIN = 50_000  # links made between two sweeps of the idle ones, at least


# What the network uses of the kernel and its endpoints.  Protocols, not
# imports: the kernel builds its network and endpoints, so the network sits
# below both (kernel -> endpoints -> network) and knows them only by shape.


class NetEndpoint(Protocol):
    """An address's side of the network (``penumbra.sim.endpoints`` has the
    two kinds): its outgoing links, its liveness and incarnation, and the
    function that takes an arriving batch (a queue entry)."""

    address: str
    alive: bool
    epoch: int
    links: dict
    _on_net: Callable[[tuple], None]


class NetKernel(Protocol):
    """What ``Network.bind`` takes (``SimKernel``): its RNG, clock and queue,
    the endpoint an address resolves to, and where network events go."""

    rng: random.Random
    env: simpy.Environment
    _push: Callable[[tuple], None]
    _eid: Iterator[int]

    def _endpoint_for_send(self, src: str, dst: str, msgs: list) -> NetEndpoint | None: ...

    def _net_event(self, what: str, t: float, link: Any, msgs: list) -> None: ...


class SizeModel:
    """Estimates a message's wire size in bytes: ``base`` plus its payload.

    The payload is the ``size`` field when the message type has one,
    otherwise ``spec.args.size`` when it has a ``spec`` field.  Override a
    type with ``overrides={MsgType: fn_or_int}``.  Each type is compiled
    once into a constant or a small function.
    """

    __slots__ = ("base", "_cache")

    def __init__(self, base: int = 256, overrides: dict[type, Any] | None = None):
        self.base = int(base)
        self._cache: dict[type, Any] = dict(overrides or {})

    def _compile(self, t: type) -> Any:
        names = set(field_names(t) or ())
        base = self.base
        if "size" in names:
            fn: Any = lambda m: base + (m.size or 0)
        elif "spec" in names:
            def fn(m: Any) -> int:
                try:
                    return base + m.spec.args.size
                except AttributeError:
                    return base
        else:
            fn = base
        self._cache[t] = fn
        return fn

    def __call__(self, msg: Any) -> int:
        f = self._cache.get(msg.__class__)
        if f is None:
            f = self._compile(msg.__class__)
        return f if f.__class__ is int else f(msg)

    def batch(self, msgs: list) -> int:
        """Total bytes of ``msgs``."""
        cache = self._cache
        total = 0
        for m in msgs:
            f = cache.get(m.__class__)
            if f is None:
                f = self._compile(m.__class__)
            total += f if f.__class__ is int else f(m)
        return total


class Link:
    """A directed FIFO pipe.  ``inv_bw`` is seconds per byte (0: infinite)."""

    __slots__ = ("src", "dst", "src_m", "dst_m", "latency", "inv_bw", "free_at", "level",
                 "dst_ep", "on_net", "last")

    def __init__(self, src: str, dst: str, src_m: str, dst_m: str, latency: float,
                 bandwidth: float, level: int, dst_ep: Any):
        self.src, self.dst, self.src_m, self.dst_m = src, dst, src_m, dst_m
        self.latency = latency
        self.inv_bw = 1.0 / bandwidth if bandwidth and bandwidth > 0 else 0.0
        self.free_at = 0.0
        self.level = level
        self.dst_ep = dst_ep
        # the receiver's entry point, kept here so that a send need not touch
        # the receiver (an endpoint keeps its object across crashes)
        self.on_net = dst_ep._on_net if dst_ep is not None else None
        self.last: tuple | None = None  # the last heap entry pushed on this link

    def __repr__(self) -> str:
        bw = f"{1 / self.inv_bw:.3g}B/s" if self.inv_bw else "inf"
        return (f"Link({self.src}->{self.dst} {_LEVEL_NAMES[self.level]} "
                f"lat={self.latency:g}s bw={bw} free_at={self.free_at:g})")


@dataclasses.dataclass(frozen=True, slots=True)
class FaultRule:
    """Per-message faults on matching links (see the module docstring)."""

    src: frozenset | None = None
    dst: frozenset | None = None
    drop: float = 0.0
    delay: float = 0.0
    duplicate: float = 0.0
    # a stalled link: what is sent on it arrives no earlier than this
    # (virtual time), all at once and in the order sent (a burst)
    hold_until: float = 0.0

    def matches(self, link: Link) -> bool:
        if link.src_m == link.dst_m:
            return False  # a local pipe (see the module docstring)
        s, d = self.src, self.dst
        return ((s is None or link.src in s or link.src_m in s)
                and (d is None or link.dst in d or link.dst_m in d))


class Network:
    """Topology, per-link latency/bandwidth, sizes and faults.

    Args:
        latency: one-way seconds for (loopback, intra-rack, inter-rack).
        bandwidth: bytes/second for the same levels (``0``: infinite).
        size_of: a ``SizeModel`` (or anything with ``batch(msgs) -> int``
            and ``__call__(msg) -> int``); default ``SizeModel(message_bytes)``.
        message_bytes: per-message overhead for the default ``SizeModel``.
    """

    def __init__(
        self,
        *,
        latency: tuple[float, float, float] = (0.0, 0.0, 0.0),
        bandwidth: tuple[float, float, float] = (0.0, 0.0, 0.0),
        size_of: SizeModel | None = None,
        message_bytes: int = 256,
    ):
        self.latency_levels = tuple(float(x) for x in latency)
        self.bandwidth_levels = tuple(float(x) for x in bandwidth)
        self.size_of = size_of if size_of is not None else SizeModel(message_bytes)
        self.kernel: NetKernel | None = None
        self.rng = None
        self._rack: dict[str, Any] = {}
        self._machine: dict[str, str] = {}
        self._out: dict[str, dict[str, Link]] = {}   # src -> dst -> Link (control)
        self._data: dict[tuple[str, str, str], Link] = {}
        self._overrides: dict[tuple[str, str], tuple[float | None, float | None]] = {}
        # faults
        self._partitions: dict[int, tuple[frozenset, frozenset | None]] = {}
        self._isolated: dict[int, str] = {}
        self._rules: dict[int, FaultRule] = {}
        self._ids = count(1)
        self._cut = False      # any partition or isolation active
        self._faulty = False   # any per-message rule active
        self.batches = 0  # heap entries pushed (one per arriving batch)
        self.stats = {"cut": 0, "dropped": 0, "duplicated": 0, "delayed": 0, "to_dead": 0}
        self._qpush: Any = None  # the kernel queue's push (priority NORMAL)
        # set by a partitioned run: batches between machines go here instead
        # of into the queue (see penumbra.sim.partition)
        self.capture: list | None = None
        self.captured_links: list[Link] = []
        self._eid: Any = None
        # idle control links are forgotten now and then (``_sweep_links``)
        self._links_made = 0
        self._sweep_at = _SWEEP_MIN
        self.links_forgotten = 0

    @classmethod
    def from_costs(cls, costs: CostModel, **kw: Any) -> Network:
        """A network with ``costs``' latencies, bandwidths and message size."""
        kw.setdefault("latency", (costs.latency_loopback, costs.latency_intra_rack,
                                  costs.latency_inter_rack))
        kw.setdefault("bandwidth", (costs.bandwidth_loopback, costs.bandwidth_intra_rack,
                                    costs.bandwidth_inter_rack))
        kw.setdefault("message_bytes", costs.message_bytes)
        return cls(**kw)

    def bind(self, kernel: NetKernel) -> None:
        """Called by ``SimKernel``: share its clock, endpoints and RNG."""
        if self.kernel is not None and self.kernel is not kernel:
            raise RuntimeError("this Network is already bound to another SimKernel; "
                               "create one Network per kernel")
        self.kernel = kernel
        self.rng = kernel.rng
        self._env = kernel.env
        self._qpush = kernel._push
        self._eid = kernel._eid

    # ------------------------------------------------------------------
    # topology

    def place(self, address: str, rack: Any = 0, machine: str | None = None) -> dict[str, Link]:
        """Put ``address`` in ``rack`` on ``machine`` (default: its own).

        Returns the address's outgoing link table (the kernel keeps it).
        """
        if machine is not None and machine != address:
            if machine not in self._machine:
                raise ValueError(f"cannot place {address!r} on machine {machine!r}: "
                                 f"add that host first")
            rack = self._rack[machine]
            machine = self._machine[machine]
        self._rack[address] = rack
        self._machine[address] = machine or address
        return self._out.setdefault(address, {})

    def rack_of(self, address: str) -> Any:
        return self._rack[address]

    def machine_of(self, address: str) -> str:
        return self._machine[address]

    def level(self, src: str, dst: str) -> int:
        """``LOOPBACK`` (0), ``INTRA_RACK`` (1) or ``INTER_RACK`` (2)."""
        m = self._machine
        if m[src] == m[dst]:
            return LOOPBACK
        return INTRA_RACK if self._rack[src] == self._rack[dst] else INTER_RACK

    def latency(self, src: str, dst: str) -> float:
        """One-way latency from ``src`` to ``dst`` (with any override)."""
        o = self._overrides.get((src, dst))
        if o is not None and o[0] is not None:
            return o[0]
        return self.latency_levels[self.level(src, dst)]

    def bandwidth(self, src: str, dst: str) -> float:
        o = self._overrides.get((src, dst))
        if o is not None and o[1] is not None:
            return o[1]
        return self.bandwidth_levels[self.level(src, dst)]

    def set_link(self, src: str, dst: str, *, latency: float | None = None,
                 bandwidth: float | None = None, both_ways: bool = False) -> None:
        """Override one directed link's latency and/or bandwidth."""
        pairs = [(src, dst), (dst, src)] if both_ways else [(src, dst)]
        for a, b in pairs:
            self._overrides[(a, b)] = (latency, bandwidth)
            link = self._out.get(a, {}).get(b)
            if link is not None:
                link.latency = self.latency(a, b)
                bw = self.bandwidth(a, b)
                link.inv_bw = 1.0 / bw if bw > 0 else 0.0
            for (s, d, _c), dl in self._data.items():
                if s == a and d == b:
                    dl.latency = self.latency(a, b)
                    bw = self.bandwidth(a, b)
                    dl.inv_bw = 1.0 / bw if bw > 0 else 0.0

    def link(self, src: str, dst: str) -> Link | None:
        """The control link ``src -> dst`` if it was used (for inspection)."""
        return self._out.get(src, {}).get(dst)

    def _new_link(self, src: str, dst: str, dst_ep: Any) -> Link:
        if src not in self._machine or dst not in self._machine:
            missing = src if src not in self._machine else dst
            raise KeyError(f"address {missing!r} is not placed on the network")
        sm, dm = self._machine[src], self._machine[dst]
        if sm == dm:
            lv = LOOPBACK
        else:
            lv = INTRA_RACK if self._rack[src] == self._rack[dst] else INTER_RACK
        lat, bw = self.latency_levels[lv], self.bandwidth_levels[lv]
        if self._overrides:
            o = self._overrides.get((src, dst))
            if o is not None:
                lat = lat if o[0] is None else o[0]
                bw = bw if o[1] is None else o[1]
        link = Link(src, dst, sm, dm, lat, bw, lv, dst_ep)
        self._out[src][dst] = link
        self._links_made += 1
        if self._links_made >= self._sweep_at:
            self._sweep_links()
        return link

    def _sweep_links(self) -> None:
        """Forget the control links that hold nothing a new one would not.

        A link carries state only while something is on it: ``free_at``
        (its last byte still leaving) and ``last`` (a batch not delivered
        yet, which a batch sent at the same instant may ride along with).
        An idle one -- ``free_at`` past, ``last`` arrived -- acts exactly as
        the one ``_new_link`` makes the next time the pair talks (the same
        latency, bandwidth and endpoint; ``max(depart, free_at)`` is
        ``depart`` either way).  Kept, they were one per (node, GCS shard)
        pair ever in touch: ~130 bytes each, millions at 10,000 nodes over
        5,000 shards.  Swept when as many links were made since the last
        sweep as were kept then (at least ``_SWEEP_MIN``): amortised, a link
        is looked at a few times in its life."""
        now = self._env._now
        kept = 0
        endpoints = self.kernel.endpoints
        out = self._out
        for src, links in out.items():
            busy = {d: l for d, l in links.items()
                    if l.free_at > now or (l.last is not None and l.last[0] >= now)}
            kept += len(busy)
            if len(busy) < len(links):
                self.links_forgotten += len(links) - len(busy)
                out[src] = busy
                ep = endpoints.get(src)
                if ep is not None and ep.links is links:
                    ep.links = busy
        self._links_made = 0
        self._sweep_at = max(_SWEEP_MIN, kept)

    # ------------------------------------------------------------------
    # partitions

    def partition(self, a: Iterable[str], b: Iterable[str] | None = None) -> int:
        """Cut all traffic between ``a`` and ``b`` (``None``: everyone else).

        Returns an id for ``heal(id)``.
        """
        pid = next(self._ids)
        self._partitions[pid] = (frozenset(a), None if b is None else frozenset(b))
        self._cut = True
        return pid

    def isolate(self, address: str) -> int:
        """Cut ``address``'s machine from everyone; returns an id for ``heal``."""
        pid = next(self._ids)
        self._isolated[pid] = self._machine.get(address, address)
        self._cut = True
        return pid

    def heal(self, pid: int | None = None) -> None:
        """Remove partition/isolation ``pid``, or all of them."""
        if pid is None:
            self._partitions.clear()
            self._isolated.clear()
        else:
            self._partitions.pop(pid, None)
            self._isolated.pop(pid, None)
        self._cut = bool(self._partitions or self._isolated)

    def is_cut(self, src: str, dst: str) -> bool:
        """True if a message from ``src`` to ``dst`` would be cut now."""
        m = self._machine
        return self._cut and self._blocked(m.get(src, src), m.get(dst, dst))

    def _blocked(self, sm: str, dm: str) -> bool:
        if sm == dm:
            return False
        iso = self._isolated
        if iso:
            for x in iso.values():
                if x == sm or x == dm:
                    return True
        for a, b in self._partitions.values():
            if b is None:
                if (sm in a) != (dm in a):
                    return True
            elif (sm in a and dm in b) or (sm in b and dm in a):
                return True
        return False

    # ------------------------------------------------------------------
    # per-message fault rules

    def add_fault(self, src: Iterable[str] | None = None, dst: Iterable[str] | None = None,
                  *, drop: float = 0.0, delay: float = 0.0, duplicate: float = 0.0,
                  hold_until: float = 0.0) -> int:
        """Drop / delay / duplicate messages on matching links until removed.

        ``hold_until``: the links stall, as a TCP connection can: what is sent
        on them arrives no earlier than that virtual time, all in one burst,
        in the order sent (nothing is lost).
        Returns an id for ``remove_fault``.
        """
        for name, p in (("drop", drop), ("duplicate", duplicate)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
        if delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay!r}")
        rid = next(self._ids)
        self._rules[rid] = FaultRule(None if src is None else frozenset(src),
                                     None if dst is None else frozenset(dst),
                                     float(drop), float(delay), float(duplicate), float(hold_until))
        self._faulty = True
        return rid

    def remove_fault(self, rid: int | None = None) -> None:
        """Remove rule ``rid``, or all rules."""
        if rid is None:
            self._rules.clear()
        else:
            self._rules.pop(rid, None)
        self._faulty = bool(self._rules)

    # ------------------------------------------------------------------
    # sending (called by the kernel)

    def transmit(self, src_ep: NetEndpoint, dst: str, msgs: list, depart: float) -> None:
        """Carry ``msgs`` from ``src_ep`` to ``dst``, leaving at ``depart``.

        Called by the kernel with each batch; pushes one heap entry per
        arriving batch (see ``penumbra.sim.kernel`` for the entry layout).
        While no endpoint ever crashed or restarted (the kernel's
        ``_epoch_bumps`` is 0) every receiver is alive at epoch 0, and the
        receiver's object is not touched: at 1,000 nodes it is a cache miss.
        """
        link = src_ep.links.get(dst)
        if link is None:
            dst_ep = self.kernel._endpoint_for_send(src_ep.address, dst, msgs)
            if dst_ep is None:
                return
            link = self._new_link(src_ep.address, dst, dst_ep)
        if self._cut and self._blocked(link.src_m, link.dst_m):
            self.stats["cut"] += len(msgs)
            self.kernel._net_event("cut", depart, link, msgs)
            return
        if self.kernel._epoch_bumps:
            dst_ep = link.dst_ep
            if not dst_ep.alive:
                self.stats["to_dead"] += len(msgs)
                return
            dst_epoch = dst_ep.epoch
        else:
            dst_epoch = 0
        inv_bw = link.inv_bw
        if inv_bw:
            start = link.free_at
            if start < depart:
                start = depart
            if len(msgs) == 1:  # (SizeModel.batch, inlined for the usual batch of one)
                size_of = self.size_of
                m = msgs[0]
                f = size_of._cache.get(m.__class__)
                if f is None:
                    f = size_of._compile(m.__class__)
                done = start + (f if f.__class__ is int else f(m)) * inv_bw
            else:
                done = start + self.size_of.batch(msgs) * inv_bw
            link.free_at = done
            arrival = done + link.latency
        else:
            arrival = depart + link.latency
            last = link.last
            if (last is not None and last[8] == depart and last[0] > self._env._now
                    and last[5] == dst_epoch and not self._faulty):
                # Same link, same instant, batch not delivered yet: ride along
                # (exact: with infinite bandwidth the arrival time is the same).
                last[4].extend(msgs)
                return
        if self.capture is not None and link.src_m != link.dst_m:
            # a partitioned run (penumbra.sim.partition): messages between
            # machines leave through the window exchange, in every partition
            # alike; shaped like a heap entry so that riding along works
            rec = (arrival, 1, 0, dst, msgs, dst_epoch, src_ep.address, 0, depart)
            self.capture.append(rec)
            self.captured_links.append(link)
            link.last = rec
            self.batches += 1
            return
        if not self._faulty:
            entry = (arrival, 1, next(self._eid), link.on_net, msgs,
                     dst_epoch, src_ep, src_ep.epoch, depart, link)
            self._qpush(entry)
            link.last = entry
            self.batches += 1
            return
        self._faulty_transmit(link, src_ep, link.dst_ep, msgs, depart, arrival)

    def min_machine_latency(self) -> float:
        """The smallest one-way latency between two machines (levels and
        overrides): how far one partition may run ahead of the others."""
        lats = [self.latency_levels[1], self.latency_levels[2]]
        lats += [o[0] for (a, b), o in self._overrides.items()
                 if o[0] is not None and self._machine.get(a, a) != self._machine.get(b, b)]
        return min(lats)

    def _push(self, t: float, dst_ep: Any, msgs: list, src_ep: Any, depart: float) -> None:
        self.batches += 1
        self._qpush((t, 1, next(self._eid), dst_ep._on_net, msgs,
                               dst_ep.epoch, src_ep, src_ep.epoch, depart, None))

    def _faulty_transmit(self, link: Link, src_ep: Any, dst_ep: Any, msgs: list,
                         depart: float, arrival: float) -> None:
        """The slow path: per-message fates, drawn in a deterministic order."""
        rules = [r for r in self._rules.values() if r.matches(link)]
        if not rules:
            self._push(arrival, dst_ep, msgs, src_ep, depart)
            return
        stats = self.stats
        kernel = self.kernel
        rnd = self.rng.random
        hold = max(r.hold_until for r in rules)
        keep: list = []
        for m in msgs:
            copies = [0.0]
            for r in rules:
                nxt = []
                for extra in copies:
                    if r.drop and rnd() < r.drop:
                        stats["dropped"] += 1
                        kernel._net_event("drop", depart, link, [m])
                        continue
                    if r.delay:
                        extra += rnd() * r.delay
                    nxt.append(extra)
                    if r.duplicate and rnd() < r.duplicate:
                        stats["duplicated"] += 1
                        kernel._net_event("dup", depart, link, [m])
                        nxt.append(extra + (rnd() * r.delay if r.delay else 0.0))
                copies = nxt
            for extra in copies:
                if hold and arrival + extra < hold:
                    # a stalled link: it comes with the burst, at exactly
                    # ``hold`` (so the burst keeps the order sent)
                    stats["held"] = stats.get("held", 0) + 1
                    self._push(hold, dst_ep, [m], src_ep, depart)
                elif extra:
                    stats["delayed"] += 1
                    self._push(arrival + extra, dst_ep, [m], src_ep, depart)
                else:
                    keep.append(m)
        if keep:
            self._push(arrival, dst_ep, keep, src_ep, depart)

    # ------------------------------------------------------------------
    # bulk transfers (object fetches), for command handlers

    def transfer(self, src: str, dst: str, size: int, start: float,
                 channel: str = "data") -> float | None:
        """Reserve ``size`` bytes from ``src`` to ``dst`` on ``channel``.

        Returns the time the last byte arrives (FIFO behind earlier transfers
        on the same channel of the same pair), or ``None`` if the pair is cut
        by a partition now.  Per-message fault rules do not apply; a handler
        that wants transfers to fail when the source dies checks
        ``kernel.is_alive(src)`` at the returned time.
        """
        if self._cut and self.is_cut(src, dst):
            return None
        key = (src, dst, channel)
        link = self._data.get(key)
        if link is None:
            if src not in self._machine or dst not in self._machine:
                missing = src if src not in self._machine else dst
                raise KeyError(f"address {missing!r} is not placed on the network")
            link = Link(src, dst, self._machine[src], self._machine[dst], self.latency(src, dst),
                        self.bandwidth(src, dst), self.level(src, dst), None)
            self._data[key] = link
        t = link.free_at if link.free_at > start else start
        done = t + size * link.inv_bw
        link.free_at = done
        return done + link.latency

    def transfer_time(self, src: str, dst: str, size: int) -> float:
        """Seconds to move ``size`` bytes on an idle link (no reservation)."""
        bw = self.bandwidth(src, dst)
        return self.latency(src, dst) + (size / bw if bw > 0 else 0.0)

