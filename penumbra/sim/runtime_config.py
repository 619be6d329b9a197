"""How to simulate a real program: ``SimConfig`` and ``SimulationStalled``.

What ``penumbra.init(simulated=SimConfig(...))`` takes (the cluster's
shapes, the cost model, the seed, the faults), apart from the runtime that
uses it (``runtime.py``) so that the clients, the executor and the driver
can all read it without importing each other.  Importable from
``penumbra.sim.runtime`` as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.layout import NodeShape
from ..core.specs import ResourceSet, TaskSpec
from ..exceptions import PenumbraError
from .costs import LOCAL, PAPER, ZERO, CostModel

__all__ = ["SimConfig", "SimulationStalled", "default_memory_resource"]

_PRESETS = {"PAPER": PAPER, "LOCAL": LOCAL, "ZERO": ZERO}


class SimulationStalled(PenumbraError, TimeoutError):
    """A blocking call without a timeout waited ``max_blocking_time`` virtual
    seconds and no task is running towards an end: the program is
    deadlocked (a task waits for an object never produced, an actor waits
    for itself, a task needs resources no node has...)."""


@dataclass(frozen=True)
class SimConfig:
    """How to simulate: the cluster, the costs, the seed and the faults.

    Args:
        nodes: a number of identical nodes (each with ``num_cpus``,
            ``num_gpus``, ``resources``, ``object_store_memory``), or one entry
            per node: a ``NodeShape``, or a dict of resources (``{"CPU": 4,
            "GPU": 1, "ssd": 1}``; ``CPU`` defaults to ``num_cpus``).
        num_cpus, num_gpus, resources, object_store_memory: the shape of each
            node when ``nodes`` is a number (default 2 CPUs, 1 GiB); the same
            arguments given to ``init`` take precedence.
        costs: a ``CostModel`` or the name of a preset: ``"PAPER"`` (the Ray
            paper's testbed, default), ``"LOCAL"`` or ``"ZERO"``.
        seed: the seed of every random choice of the simulation.
        faults: a ``FaultSchedule`` or a list of ``(time, fault)``
            (``CrashNode("node:1")``, ``Crash``, ``Partition``, ...), with times
            in virtual seconds *after* ``init`` returns.
        task_time: the virtual seconds of work of every task and actor call
            (the cost model adds its ``task_overhead`` and store writes), or
            ``task_time(spec) -> seconds``.
        driver_node: the index of the node the driver runs on.
        detect: how the head finds dead nodes: ``"heartbeat"`` (missed
            heartbeats, as the real system) or ``"omniscient"`` (told at once,
            after ``detect_delay``).
        gcs_shards, chain_length: the GCS's shards and replicas per shard.
        trace: ``"key"`` (default), ``"type"``, ``"full"`` or ``False``; the
            trace's hash is ``runtime.trace_hash()``.
        validate: check every machine's invariants after every event (slow).
        max_blocking_time: a blocking call with no timeout raises
            ``SimulationStalled`` when this many virtual seconds passed and
            then no task is running towards an end (checked again every as
            many seconds while some are).
        layout: extra ``ClusterLayout`` fields (``heartbeat_interval``,
            ``node_timeout``, ``scheduler``...; ``spilling=False`` to make a
            full store fail puts instead of spilling them).
        disk_bytes: each node's disk for spilled objects (0: unbounded).
        direct_calls: actor calls go straight from the caller to the
            actor's worker, as on the real runtime (``penumbra.sim.direct``);
            False: through the nodes.  Default: ``PENUMBRA_DIRECT_CALLS``
            (on unless "0"), the real runtime's switch.
    """

    nodes: int | Sequence[Mapping[str, float] | NodeShape] = 1
    num_cpus: float | None = None
    num_gpus: float | None = None
    resources: Mapping[str, float] | None = None
    object_store_memory: int | None = None
    costs: CostModel | str = "PAPER"
    seed: int = 0
    faults: Any = None
    task_time: float | Callable[[TaskSpec], float] = 0.001
    driver_node: int = 0
    detect: str = "heartbeat"
    detect_delay: float = 0.0
    gcs_shards: int = 1
    chain_length: int = 1
    trace: Any = "key"
    validate: bool = False
    max_blocking_time: float = 60.0
    layout: Mapping[str, Any] = field(default_factory=dict)
    disk_bytes: int = 0
    direct_calls: bool | None = None

    def cost_model(self) -> CostModel:
        c = self.costs
        if isinstance(c, CostModel):
            return c
        if isinstance(c, str) and c.upper() in _PRESETS:
            return _PRESETS[c.upper()]
        raise ValueError(f"SimConfig.costs must be a CostModel or one of {sorted(_PRESETS)}, got {c!r}")

    def shapes(self, num_cpus=None, num_gpus=None, resources=None, object_store_memory=None) -> tuple[NodeShape, ...]:
        """The node shapes, with ``init``'s arguments taking precedence."""
        cpus = _first(num_cpus, self.num_cpus, 2)
        gpus = _first(num_gpus, self.num_gpus, 0)
        extra = dict(_first(resources, self.resources, {}))
        store = int(_first(object_store_memory, self.object_store_memory, 1 << 30))
        for k in extra:
            if k in ("CPU", "GPU"):
                raise ValueError(f"use num_cpus/num_gpus instead of resources={{{k!r}: ...}}")

        def shape(amounts: Mapping[str, float]) -> NodeShape:
            # every node offers ``memory`` (bytes, for ``memory=`` requests), as
            # Ray's do: Ray gives the store 30% of the node's memory and this
            # resource 70%, so a simulated node has 7/3 of its store
            amounts = {"memory": default_memory_resource(store), **amounts}
            return NodeShape(resources=ResourceSet.from_dict(amounts), object_store_memory=store)

        if isinstance(self.nodes, int):
            if self.nodes < 1:
                raise ValueError(f"SimConfig.nodes must be >= 1, got {self.nodes}")
            return (shape({"CPU": cpus, "GPU": gpus, **extra}),) * self.nodes
        if any(v is not None for v in (num_cpus, num_gpus, resources)):
            raise ValueError("SimConfig.nodes lists each node's resources: do not also pass num_cpus, num_gpus "
                             "or resources to init()")
        out = []
        for n in self.nodes:
            if isinstance(n, NodeShape):
                out.append(n)
            elif isinstance(n, Mapping):
                out.append(shape({"CPU": cpus, **n}))
            else:
                raise TypeError(f"each entry of SimConfig.nodes is a NodeShape or a dict of resources, got {n!r}")
        if not out:
            raise ValueError("SimConfig.nodes is empty")
        return tuple(out)


def default_memory_resource(object_store_memory: int) -> int:
    """A simulated node's ``memory`` resource: 70% of a node whose store
    holds the other 30%, Ray's split."""
    return object_store_memory * 7 // 3


def _first(*values):
    for v in values:
        if v is not None:
            return v
    return None
