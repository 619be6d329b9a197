"""The simulator's cost model: what each simulated action costs in time.

Theory of operation
-------------------
The simulator charges simulated time for four things, and nothing else:

1. **CPU per handled event.**  A host (a node's local scheduler, the head,
   a GCS replica) is single-threaded: every event it handles costs
   ``handle[kind]`` seconds, plus ``per_command`` for each command the
   machine emits (serialising a message, a syscall), plus a scheduling
   surcharge for task-carrying events (``task_scheduling`` at a node for the
   types in ``task_event_types``; ``global_scheduling`` at the head for the
   types in ``global_event_types``).  Events arriving while a host is busy
   queue behind, so a host saturates at ``1 / cost`` events per second.
2. **The network**: one-way latency and bandwidth per level of the topology
   (same machine / same rack / across racks); see ``penumbra.sim.network``.
   Every control message is ``message_bytes`` plus its payload.
3. **Workers**: ``worker_start`` to start a worker process and
   ``task_overhead`` of fixed per-task cost on the worker (deserialise the
   spec and arguments, call, store the result), on top of the task's own
   duration.  These are used by the per-host command handlers (``Execute``,
   ``StartWorker``), not by the kernel.
4. **The object store**: ``store_put_overhead + size / store_write_bandwidth``
   to write an object; transfers between nodes use the network's bandwidth.
   Spilling to the node's local disk costs ``disk_op_overhead + size /
   disk_write_bandwidth`` (restoring: ``disk_read_bandwidth``), one disk
   operation at a time per node.

Two presets are given.  ``PAPER`` is calibrated to the hardware and numbers
of the Ray paper (OSDI 2018, see /work/shared/PAPER.md) so the simulator can
reproduce its figures; ``LOCAL`` describes penumbra's own runtime
on this machine, calibrated from its measured throughput and latency with
``CostModel.from_benchmark`` (``bench/bench_sim.py --only fidelity``).

All times are in seconds, all sizes in bytes, all bandwidths in bytes/second.
``CostModel`` is frozen; derive variants with ``dataclasses.replace`` or
``model.with_(...)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CostModel", "PAPER", "LOCAL", "ZERO"]


@dataclass(frozen=True, eq=False)
class CostModel:
    """Simulated time charged for CPU, network, workers and the object store.

    Args:
        name: shown in reports.
        calibrated: False for models of estimates, not measurements.
        handle: CPU seconds per event handled, by host kind (the address
            prefix: ``"node"``, ``"head"``, ``"gcs"``; clients cost nothing).
        default_handle: CPU seconds per event for a kind not in ``handle``.
        per_command: CPU seconds per command emitted (serialise + syscall).
        task_scheduling: extra CPU at a node (local scheduler) for each event
            whose type name is in ``task_event_types``.
        global_scheduling: extra CPU at the head (global scheduler) for each
            event whose type name is in ``global_event_types``.
        latency_*: one-way network latency per topology level.
        bandwidth_*: bytes/second per topology level (``0`` = infinite).
        message_bytes: wire size of a control message without payload.
        worker_start: seconds to start a worker process.
        task_overhead: fixed worker-side seconds per task.
        store_write_bandwidth: bytes/second to write an object into a store.
        store_put_overhead: fixed seconds per object written.
        disk_write_bandwidth: bytes/second to spill an object to local disk.
        disk_read_bandwidth: bytes/second to restore a spilled object.
        disk_op_overhead: fixed seconds per spill or restore.
        client_call: driver-side CPU per ``.remote()`` / ``get`` call, for
            simulated programs that want to model it.
    """

    name: str = "custom"
    calibrated: bool = True

    # ---- 1. CPU per handled event ------------------------------------
    handle: Mapping[str, float] = field(default_factory=dict)
    default_handle: float = 0.0
    per_command: float = 0.0
    task_scheduling: float = 0.0
    global_scheduling: float = 0.0
    task_event_types: tuple[str, ...] = ("SubmitTask", "PlaceTask", "ActorCall")
    global_event_types: tuple[str, ...] = ("ForwardTask",)
    scheduler_kinds: tuple[str, ...] = ("node",)
    global_scheduler_kinds: tuple[str, ...] = ("head",)

    # ---- 2. network ----------------------------------------------------
    latency_loopback: float = 0.0
    latency_intra_rack: float = 0.0
    latency_inter_rack: float = 0.0
    bandwidth_loopback: float = 0.0  # 0 = infinite
    bandwidth_intra_rack: float = 0.0
    bandwidth_inter_rack: float = 0.0
    message_bytes: int = 0

    # ---- 3. workers -------------------------------------------------------
    worker_start: float = 0.0
    task_overhead: float = 0.0

    # ---- 4. object store ------------------------------------------------------
    store_write_bandwidth: float = 0.0  # 0 = infinite
    store_put_overhead: float = 0.0
    disk_write_bandwidth: float = 0.0  # 0 = infinite
    disk_read_bandwidth: float = 0.0
    disk_op_overhead: float = 0.0

    # ---- driver programs --------------------------------------------------------
    client_call: float = 0.0

    # -----------------------------------------------------------------------
    def handling_cost(self, kind: str, event_type: type | str) -> float:
        """CPU seconds for a host of ``kind`` to handle one event of this type
        (without the ``per_command`` part, which depends on the output)."""
        name = event_type if isinstance(event_type, str) else event_type.__name__
        cost = self.handle.get(kind, self.default_handle)
        if kind in self.scheduler_kinds and name in self.task_event_types:
            cost += self.task_scheduling
        if kind in self.global_scheduler_kinds and name in self.global_event_types:
            cost += self.global_scheduling
        return cost

    def store_write_time(self, size: int) -> float:
        """Seconds to write an object of ``size`` bytes into a node's store."""
        bw = self.store_write_bandwidth
        return self.store_put_overhead + (size / bw if bw > 0 else 0.0)

    def disk_write_time(self, size: int) -> float:
        """Seconds to spill ``size`` bytes to a node's local disk."""
        bw = self.disk_write_bandwidth
        return self.disk_op_overhead + (size / bw if bw > 0 else 0.0)

    def disk_read_time(self, size: int) -> float:
        """Seconds to read ``size`` spilled bytes back."""
        bw = self.disk_read_bandwidth
        return self.disk_op_overhead + (size / bw if bw > 0 else 0.0)

    def with_(self, **changes: Any) -> CostModel:
        """A copy with ``changes`` applied (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    # -----------------------------------------------------------------------
    @classmethod
    def from_benchmark(
        cls, results: Mapping[str, float], *, base: CostModel | None = None,
        name: str = "LOCAL",
    ) -> CostModel:
        """Build a calibrated model from measurements of the real runtime.

        ``results`` maps field names of this class (``"per_command"``,
        ``"worker_start"``, ``"latency_loopback"``, ...) or ``"handle.<kind>"``
        (e.g. ``"handle.node"``) to measured values, in seconds, bytes and
        bytes/second.  Two derived keys are also understood:

        * ``"node_tasks_per_s"``: empty tasks per second one node sustains;
          sets ``task_scheduling`` so that the node's CPU per task
          (``events_per_task`` handled events, ``commands_per_task`` emitted
          commands, one scheduling surcharge) adds up to ``1 / rate``.
        * ``"events_per_task"`` / ``"commands_per_task"``: the message
          pattern assumed by the above (defaults 4 and 4).

        Fields not measured keep the value of ``base`` (``LOCAL`` by
        default).  Raises ValueError on an unknown key.
        """
        base = base if base is not None else LOCAL
        names = {f.name for f in dataclasses.fields(cls)}
        handle = dict(base.handle)
        changes: dict[str, Any] = {}
        derived = {"node_tasks_per_s", "events_per_task", "commands_per_task"}
        for key, value in results.items():
            if key.startswith("handle."):
                handle[key[len("handle."):]] = float(value)
            elif key in names and key not in ("name", "calibrated", "handle"):
                changes[key] = value
            elif key not in derived:
                raise ValueError(
                    f"unknown benchmark key {key!r}; use a CostModel field name "
                    f"({', '.join(sorted(names - {'name', 'calibrated', 'handle'}))}), "
                    f"'handle.<kind>', or one of {sorted(derived)}"
                )
        model = dataclasses.replace(base, handle=handle, name=name, calibrated=True, **changes)
        if "node_tasks_per_s" in results:
            ev = float(results.get("events_per_task", 4))
            cm = float(results.get("commands_per_task", 4))
            per_task = 1.0 / float(results["node_tasks_per_s"])
            rest = ev * model.handle.get("node", model.default_handle) + cm * model.per_command
            model = dataclasses.replace(model, task_scheduling=max(0.0, per_task - rest))
        return model


# ===========================================================================
# PAPER: the Ray paper's testbed (AWS m4.16xlarge, 64 vCPUs, "25 Gigabit").

_GBPS = 1e9 / 8  # bytes per second in one Gbit/s

PAPER = CostModel(
    name="PAPER",
    calibrated=True,
    handle={
        # A node's local scheduler: Figure 8b reports > 1.8M empty tasks/s on
        # 100 nodes, i.e. ~18,000 tasks/s, ~55.6 us of scheduler CPU per task.
        # We assume the node handles ~4 events per empty task (SubmitTask,
        # TaskFinished, two GCS replies: task table and object table) and
        # emits ~4 commands; 4 x 8 us + 4 x 2 us + 15 us scheduling = 55 us.
        # Re-check with the Figure 8b experiment and adjust task_scheduling.
        "node": 8e-6,
        # The head (global scheduler, monitor): a C++ event loop like the
        # local scheduler; its extra per-decision cost is global_scheduling.
        "head": 8e-6,
        # A GCS replica is a Redis shard: ~100K simple commands/s on one core,
        # i.e. ~10 us per request (redis-benchmark on a 2017 Xeon).
        "gcs": 10e-6,
        # Drivers and workers are client endpoints (no machine, no CPU).
        "client": 0.0,
    },
    default_handle=8e-6,
    # Serialising one flatbuffer message and a send() syscall: ~2 us.
    per_command=2e-6,
    # See "node" above: 55.6 us/task - 4 x 8 us - 4 x 2 us ~= 15 us.
    # Checked with the Figure 8b experiment (penumbra sim fig8b): in steady
    # state a node then runs ~18,300 empty tasks/s (1.83M at 100 nodes).
    task_scheduling=15e-6,
    # One global placement decision (filter by resources, pick the lowest
    # estimated wait); the paper's global scheduler is not its bottleneck
    # because most tasks stay local (bottom-up).  Estimate: 20 us.
    global_scheduling=20e-6,
    # One-way latencies.  Loopback: a Unix-socket/localhost TCP hop, ~5 us.
    # Same rack / EC2 cluster placement group: ~30 us one way (~60 us RTT).
    # Across racks: ~100 us one way.  With these, a GCS write through a chain
    # of 2 replicas is ~0.3 ms, so Figure 10a's "< 30 ms client latency under
    # a replica failure" is dominated by the failure detector's timeout (a
    # GCS setting, not a cost): keep detection + reconfiguration < ~25 ms.
    latency_loopback=5e-6,
    latency_intra_rack=30e-6,
    latency_inter_rack=100e-6,
    # m4.16xlarge: "25 Gigabit" networking = 3.125 GB/s; we assume a
    # non-oversubscribed fabric (lower bandwidth_inter_rack to model one).
    # Loopback copies through shared memory at roughly memcpy speed, ~10 GB/s.
    bandwidth_loopback=10e9,
    bandwidth_intra_rack=25 * _GBPS,
    bandwidth_inter_rack=25 * _GBPS,
    # A control message (header + spec without arguments): a few hundred
    # bytes of flatbuffers in 2018 Ray.
    message_bytes=256,
    # Starting a Python worker (interpreter + imports): ~0.1-0.3 s; the paper
    # pre-starts one worker per core, so this only matters after failures.
    worker_start=0.25,
    # Worker-side fixed cost of an empty task (deserialise, call, put the
    # result): a few hundred us in 2018 Ray; with 64 workers per node this is
    # not the bottleneck (64 / 200 us = 320K tasks/s >> 18K).
    task_overhead=200e-6,
    # Figure 9: > 15 GB/s writes of large objects (8 copy threads) and ~18K
    # IOPS for small ones, i.e. ~55.6 us fixed cost per put.
    store_write_bandwidth=15e9,
    store_put_overhead=1 / 18_000,
    # m4.16xlarge has EBS only (no instance store): a gp2 volume of the
    # time gives ~250 MB/s (its throughput cap) and ~1 ms per operation.
    disk_write_bandwidth=250e6,
    disk_read_bandwidth=250e6,
    disk_op_overhead=1e-3,
    # A driver's .remote(): build a spec, serialise args, one IPC: ~20 us.
    client_call=20e-6,
)


# ===========================================================================
# LOCAL: penumbra's own runtime on this machine (2 shared cores), calibrated
# with ``python bench/bench_sim.py --only fidelity --reps 5`` (2026-11-26
# 12:19 UTC, git 5c1002d + the batched get reports of a244ef7): the real
# embedded runtime (``penumbra.init(num_cpus=2)``) ran empty tasks at a
# median of 2,757/s async (range 1,935-3,113 over 5 runs), 864/s sync
# (679-987) and 2,307/s in batches of 50 (1,909-3,029); per task, the
# workers used 0.38 ms of CPU (with two hops), the driver 0.04 ms (a get of
# many results now hears once, so the driver no longer wakes per task).
# From these:
#
# * the node's whole per-task cost is the async rate (``node_tasks_per_s``:
#   on one shared machine the daemon, the workers and the driver contend for
#   two cores; the node is where the model puts that);
# * a worker's ``task_overhead`` is its CPU per task plus two process hops
#   (daemon -> worker -> daemon), and ``client_call`` the driver's CPU;
# * the one-way hop latency (0.19 ms: a message through trio, a socket and
#   the other process's event loop, far above a raw socket's ~20 us) is
#   fitted so that the simulated sync rate matches the measured one.
#
# The simulator then predicts 3,094 async tasks/s (+12%), 864 sync (+0%)
# and 2,831/s in batches of 50 (+23%, a workload not used to fit).  This
# machine's speed moves by 1.5x within an hour: two later runs (a faster
# spell: 3,127 and 3,283 async, 1,126 and 994 sync, 2,901 and 2,668 in
# batches of 50) put this model at -1%/-6%, -23%/-13% and -2%/+6%.  Fields
# not measured (below, in ``_LOCAL_BASE``) are estimates of the right order.
# Re-run the benchmark and paste its ``from_benchmark`` line here after
# changing the runtime.

_LOCAL_BASE = CostModel(
    name="LOCAL base (estimates)",
    calibrated=False,
    handle={
        # how the node's per-task cost splits between its events (the total
        # is measured: task_scheduling takes the rest)
        "node": 50e-6,    # estimate: Python handle() of a node machine
        "head": 50e-6,    # estimate
        "gcs": 30e-6,     # estimate: Python GCS shard, per request
        "client": 0.0,
    },
    default_handle=50e-6,      # estimate
    per_command=15e-6,         # estimate: trio send + framing per message
    global_scheduling=100e-6,  # estimate
    bandwidth_loopback=2e9,    # estimate (~Ray's 2 GB/s for a 100 MiB put here)
    bandwidth_intra_rack=2e9,
    bandwidth_inter_rack=2e9,
    message_bytes=256,         # estimate
    worker_start=0.5,          # estimate: CPython + cloudpickle + pyarrow
    store_write_bandwidth=2e9,  # estimate
    store_put_overhead=100e-6,  # estimate
    # the spill directory's disk on this machine (2026-12-07, 8 MiB files, as
    # bench/bench_spill.py spills): new files are written at 0.17 to 2.9
    # GB/s, depending on how much dirty data the page cache holds already
    # (the kernel throttles writers past its dirty limit), and read back
    # from the page cache at 4-10 GB/s.  A middle value each; see
    # bench/results/spill.md for a run with the disk's speed at the time
    disk_write_bandwidth=700e6,
    disk_read_bandwidth=5e9,
    disk_op_overhead=200e-6,    # estimate: open, write/read, rename or unlink
)


LOCAL = CostModel.from_benchmark(
    {
        "node_tasks_per_s": 2757.0,
        "task_overhead": 0.000377,
        "client_call": 0.00004,
        "latency_loopback": 0.000188,
        "latency_intra_rack": 0.000188,  # one machine: every hop is local
        "latency_inter_rack": 0.000188,
    },
    base=_LOCAL_BASE,
    name="LOCAL",
)


# ===========================================================================
# ZERO: everything free and instantaneous (unit tests of logic, not timing).

ZERO = CostModel(name="ZERO")
