"""One partition of a simulation split over processes: its trace, what it
simulates, and its window step.

``partition`` (the coordinator and its runners) says how the windows work;
this module holds what every runner hosts, wherever it runs -- a local child
process, this process, or an actor on a cluster (``partition_actors``):

* ``PartitionTrace``: the trace hashed per address, so the run's hash does
  not depend on how addresses are dealt out;
* ``SimSpec`` (and ``ScalabilitySpec``, Figure 8b's workload): what to
  build, the same in every partition;
* ``_Partition``: a cluster of its share of the machines (the others are
  stand-ins) that advances one window at a time, returning the batches it
  sent to the others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
from collections.abc import Callable
from typing import Any

from msgspec.structs import replace as replace_struct

from penumbra.core.messages import NodeWelcome

from .trace import Trace

__all__ = ["PartitionError", "PartitionTrace", "ScalabilitySpec", "SimSpec"]



class PartitionError(RuntimeError):
    """A partitioned run cannot do what was asked (see the module's Scope)."""


# ===========================================================================
# the trace, hashed per address


class PartitionTrace(Trace):
    """A ``Trace`` whose hash is the same however the addresses are dealt
    out over processes: each address's records feed its own hash.

    ``digests(owned)`` gives the owned addresses' hashes; ``combine`` makes
    the run's hash from all of them."""

    _PER = 512  # records of one address per hashed chunk

    def __init__(self, fields: str = "key") -> None:
        super().__init__(fields=fields)
        self._per: dict[str, list] = {}
        self._hashers: dict[str, Any] = {}

    def _flush(self) -> None:
        rec = self._rec
        if len(rec) < 4096:
            return
        self._spread(rec)

    def _spread(self, rec: list) -> None:
        per = self._per
        for r in rec:
            lst = per.get(r[1])
            if lst is None:
                lst = per[r[1]] = []
            lst.append(r)
            if len(lst) >= self._PER:
                self._hash_into(r[1], lst)
                per[r[1]] = []
        self._hashed += len(rec)
        self._rec = []

    def _hash_into(self, address: str, lst: list, hasher: Any = None) -> None:
        h = hasher if hasher is not None else self._hashers.get(address)
        if h is None:
            h = self._hashers[address] = hashlib.blake2b(digest_size=16)
        buf = io.BytesIO()
        p = pickle.Pickler(buf, 4)
        p.fast = True  # no memo: equal values give equal bytes in any process
        p.dump(lst)
        h.update(buf.getvalue())

    def digests(self, owned: Callable[[str], bool]) -> dict[str, str]:
        """``{address: hash}`` of the addresses ``owned`` says are ours."""
        self._spread(self._rec)
        out = {}
        for a in sorted(set(self._per) | set(self._hashers)):
            if not owned(a):
                continue
            h = self._hashers.get(a)
            h = h.copy() if h is not None else hashlib.blake2b(digest_size=16)
            if self._per.get(a):
                self._hash_into(a, self._per[a], h)
            out[a] = h.hexdigest()
        return out

    @staticmethod
    def combine(digests: dict[str, str]) -> str:
        h = hashlib.blake2b(digest_size=16)
        for a in sorted(digests):
            h.update(f"{a}={digests[a]};".encode())
        return h.hexdigest()

    def hexdigest(self) -> str:
        return self.combine(self.digests(lambda a: True))


# ===========================================================================
# what to simulate


class SimSpec:
    """What a partitioned run simulates.  Picklable (it goes to every
    worker); each method must act the same in every worker.

    ``build(trace, machines)``: a ``SimCluster`` made with ``start=False``,
    ``trace=trace`` and ``machines=machines`` (it builds only this
    partition's machines; the others are stand-ins).  ``setup(cluster,
    owned)``: at ``setup_at`` seconds of simulated time, in every worker:
    create what the workload needs on the nodes ``owned(address)`` says are
    this partition's, and take the same ids for the others
    (``cluster.reserve_driver``), so that ids agree everywhere.
    """

    setup_at: float = 0.0
    trace_fields: str = "key"  # what a trace record holds (see ``Trace``)

    def build(self, trace: Trace, machines: Callable[[str], bool] | None = None) -> Any:  # pragma: no cover
        raise NotImplementedError

    def setup(self, cluster: Any, owned: Callable[[str], bool]) -> None:  # pragma: no cover
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class ScalabilitySpec(SimSpec):
    """Figure 8b's workload: ``nodes`` nodes, one closed-loop driver each
    (``experiments.scalability_cluster``), started at ``setup_at``."""

    nodes: int = 8
    seed: int = 0
    cpus: int = 4
    preset: str = "paper"
    window: int = 64
    batch: int = 16
    setup_at: float = 0.5
    trace_fields: str = "type"  # as experiments_fig8.scalability_cluster

    def build(self, trace: Trace, machines: Callable[[str], bool] | None = None) -> Any:
        from .experiments_fig8 import scalability_cluster
        from .experiments_results import preset_costs

        c = scalability_cluster(self.nodes, preset_costs(self.preset), self.seed, cpus=self.cpus,
                                trace=trace, start=False, machines=machines)
        return c

    def setup(self, cluster: Any, owned: Callable[[str], bool]) -> None:
        from .workloads import ClosedLoop

        for a in cluster.node_addresses:
            if owned(a):
                ClosedLoop(cluster.driver(a), window=self.window, batch=self.batch).start()
            else:
                cluster.reserve_driver(a)  # its ids, as the partition that runs it takes them


# ===========================================================================
# one partition


class _Standin:
    """The sender of a batch from another partition (never crashes here)."""

    epoch = 0
    crashed_at = float("-inf")


_STANDIN = _Standin()


class _Partition:
    """Partition ``index`` of ``count``: a cluster that builds and runs its
    share of the machines; the others are stand-ins (``SimCluster``'s
    ``machines``), so memory per process falls with the partition count."""

    def __init__(self, spec: SimSpec, index: int, count: int) -> None:
        self.spec, self.index, self.count = spec, index, count
        self.trace = PartitionTrace(spec.trace_fields)
        self.part_of: dict[str, int] = {}  # machine -> partition (see _deal)
        c = self.cluster = spec.build(self.trace, self._deal)
        if c._started:
            raise PartitionError("SimSpec.build must make the cluster with start=False "
                                 "(a partitioned run disowns machines before they boot)")
        if not self.part_of:
            raise PartitionError("SimSpec.build must pass machines= on to the SimCluster it makes "
                                 "(each partition builds only its own machines)")
        self.net = c.kernel.network
        c.start()
        self._disown()
        self.net.capture = []
        self.setup_done = False
        self._mine: list = []  # batches between this partition's own machines, for the next window
        self._configs: tuple | None = None  # the GCS shards' configs last welcomed with (_share)

    def _deal(self, machine: str) -> bool:
        """Is ``machine`` ours?  Asked once per machine, in build order, the
        same in every worker: the head goes to partition 0, the GCS replicas
        and then the nodes round-robin."""
        i = len(self.part_of)
        if i == 0 and machine != "head":
            raise PartitionError(f"the cluster's first machine must be the head, got {machine!r}")
        p = self.part_of[machine] = 0 if i == 0 else (i - 1) % self.count
        return p == self.index

    def owned(self, address: str) -> bool:
        m = self.net.machine_of(address)
        return self.part_of.get(m, 0) == self.index

    def _disown(self) -> None:
        # (the other partitions' machines are stand-ins, never run; what
        # the workload makes for them is disowned, should it make any)
        remote = self.cluster.remote
        for a, ep in self.cluster.kernel.endpoints.items():
            if a not in remote and not self.owned(a) and not getattr(ep, "_disowned", False):
                ep.epoch += 1  # what is queued for it goes stale
                self.cluster.kernel._epoch_bumps += 1
                ep._disowned = True
                if hasattr(ep, "pending"):
                    ep.pending = {}

    def min_latency(self) -> float:
        return self.net.min_machine_latency()

    def advance(self, until: float, inbound: list) -> tuple[list[list], float]:
        """Deliver ``inbound`` batches (and those this partition sent to its
        own machines last window), run to ``until``; returns the batches
        sent to other partitions' machines (per destination partition; its
        own entry stays empty) and the time of the first thing left to do
        here (``inf``: nothing)."""
        c = self.cluster
        k = c.kernel
        net = self.net
        if net._cut or net._faulty:
            raise PartitionError("partitioned runs are fault-free: network partitions and fault rules act "
                                 "on one process's view; run this simulation in one SimCluster instead")
        if not self.setup_done and until > self.spec.setup_at >= k.now:
            if k.now < self.spec.setup_at:
                self._deliver(inbound)
                inbound = []
                c.run(self.spec.setup_at)
            self.spec.setup(c, self.owned)
            self._disown()
            self.setup_done = True
        self._deliver(inbound)
        if until > k.now:
            c.run(until)
        out = self._collect()
        mine = self._mine = out[self.index]
        out[self.index] = []
        nxt = k._cal.first_time()
        for r in mine:
            if r[0] < nxt:
                nxt = r[0]
        return out, nxt

    def _deliver(self, chunks: list) -> None:
        # ``chunks``: per source partition, in partition order, a list of
        # batches or its pickle (bytes, passed through the coordinator as is)
        inbound = self._mine
        self._mine = []
        for ch in chunks:
            if ch:
                got = pickle.loads(ch) if isinstance(ch, bytes) else ch
                self._share(got)
                inbound += got
        if not inbound:
            return
        k = self.cluster.kernel
        eps = k.endpoints
        push, eid = k._push, k._eid
        inbound.sort(key=lambda r: (r[0], r[1], r[2]))  # stable: a source keeps its order
        if inbound[0][0] < k.now:
            raise PartitionError(f"a batch for {inbound[0][1]!r} arrives at {inbound[0][0]!r}, before this "
                                 f"partition's time {k.now!r}: the window is longer than a latency")
        for arrival, dst, src, msgs, depart in inbound:
            ep = eps[dst]
            push((arrival, 1, next(eid), ep._on_net, msgs, ep.epoch, _STANDIN, 0, depart, None))

    def _share(self, batches: list) -> None:
        """Batches from another process are copies, each with its own copy
        of every value in it.  One value that must not be: the tuple of
        every GCS shard's config in a ``NodeWelcome``, which the node's GCS
        client keeps as it is (copy on write).  In one process every node
        shares the head's one tuple; welcomed from another partition, each
        node kept its own -- 5,000 configs a node at 10,000 nodes, ~3.6 GB
        in the partition without the head.  So an equal tuple is replaced
        by the one this partition already has.  Nothing else changes: the
        values are equal, and the trace pickles records without a memo."""
        for b in batches:
            msgs = b[3]
            for i, m in enumerate(msgs):
                if m.__class__ is NodeWelcome:
                    have = self._configs
                    if m.configs is have:
                        continue
                    if have is not None and m.configs == have:
                        msgs[i] = replace_struct(m, configs=have)
                    else:
                        self._configs = m.configs

    def _collect(self) -> list[list]:
        net = self.net
        out: list[list] = [[] for _ in range(self.count)]
        part_of, machine = self.part_of, net._machine
        for r in net.capture:
            out[part_of.get(machine[r[3]], 0)].append((r[0], r[3], r[6], r[4], r[8]))
        for link in net.captured_links:
            link.last = None  # shipped: later sends start a new batch
        net.capture = []
        net.captured_links = []
        return out

    def finished(self) -> int:
        """Tasks finished so far on this partition's nodes."""
        return sum(n.finished for a, n in self.cluster.nodes.items() if self.owned(a))

    def result(self) -> dict[str, Any]:
        c = self.cluster
        hosts = c.kernel.hosts
        return {
            "digests": self.trace.digests(self.owned),
            "tasks_finished": self.finished(),
            "events": sum(h.handled for a, h in hosts.items() if self.owned(a)),
            "now": c.now,
            "hosts": len(hosts),
            "peak_rss_mb": _peak_rss_mb(),
        }


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (0: unknown here)."""
    try:
        import resource
    except ImportError:  # (not POSIX)
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _first_arrival(out: list[list]) -> float:
    return min((r[0] for o in out for r in o), default=float("inf"))
