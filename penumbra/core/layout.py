"""The shape of a cluster and the machines that make it up.

Both drivers build a cluster the same way: a head, ``gcs_shards`` chains of
``chain_length`` GCS replicas, and nodes.  ``build_machines`` returns them by
address, ready to be started; the driver decides where each one runs (a SimPy
host, a trio task in a process).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .gcs import GcsReplica, GcsTiming
from .head import HeadConfig, HeadMachine
from .node import NodeConfig, NodeMachine
from .records import ChainConfig
from .scheduler import GlobalConfig, Rng, SchedulerConfig
from .specs import ResourceSet

__all__ = ["ClusterLayout", "NodeShape", "replica_address", "node_address", "build_machines", "make_node"]


def replica_address(shard: int, index: int) -> str:
    return f"gcs:{shard}:{index}"


def node_address(index: int) -> str:
    return f"node:{index}"


@dataclass(frozen=True, slots=True)
class NodeShape:
    resources: ResourceSet = ResourceSet.of(CPU=2)
    object_store_memory: int = 1 << 30


@dataclass(frozen=True, slots=True)
class ClusterLayout:
    nodes: tuple[NodeShape, ...] = (NodeShape(),)
    gcs_shards: int = 1
    chain_length: int = 1
    scheduler: SchedulerConfig = SchedulerConfig()
    global_scheduler: GlobalConfig = GlobalConfig()
    gcs_timing: GcsTiming = GcsTiming()
    heartbeat_interval: float = 0.1
    node_timeout: float = 1.0
    gcs_retry_after: float = 0.05
    # the node sharing the head's process (the real runtime's head daemon):
    # the monitor never declares it dead (see core/head.py)
    own_node: str | None = None
    # runs each node keeps for ``penumbra.timeline()`` (the last N; 0: none)
    timeline_limit: int = 10_000
    extra: dict = field(default_factory=dict)
    # where GCS replicas live: replica address -> the node whose host runs
    # it (a replica not listed lives with the head, as by default all do).
    # A replica on a node's host dies with that node and outlives the head
    # (core/head.py, "Recovery: a new head from surviving replicas").
    replica_hosts: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.replica_hosts:
            return
        replicas = {r for c in self.chains() for r in c.replicas}
        nodes = {node_address(i) for i in range(len(self.nodes))}
        for r, n in self.replica_hosts.items():
            if r not in replicas:
                raise ValueError(f"ClusterLayout.replica_hosts: no GCS replica {r!r} in this layout "
                                 f"(its replicas: {sorted(replicas)}; gcs_shards={self.gcs_shards}, "
                                 f"chain_length={self.chain_length})")
            if n not in nodes:
                raise ValueError(f"ClusterLayout.replica_hosts: replica {r!r} placed on {n!r}, which is not a "
                                 f"node of this layout (its nodes: {sorted(nodes)})")

    def replicas_with_head(self) -> tuple[str, ...]:
        """The GCS replicas that live (and die) with the head."""
        return tuple(r for c in self.chains() for r in c.replicas if r not in self.replica_hosts)
    # object spilling to local disk (see core/objects.py); the drivers
    # that carry out SpillObjects/RestoreObject turn it on
    spilling: bool = False
    spill_threshold: float = 0.8

    def chains(self) -> tuple[ChainConfig, ...]:
        return tuple(
            ChainConfig(shard=s, epoch=1, replicas=tuple(replica_address(s, i) for i in range(self.chain_length)))
            for s in range(self.gcs_shards)
        )

    def head_config(self) -> HeadConfig:
        return HeadConfig(
            chains=self.chains(),
            scheduler=self.global_scheduler,
            gcs_timing=self.gcs_timing,
            node_timeout=self.node_timeout,
            check_interval=min(self.heartbeat_interval, self.node_timeout / 4),
            gcs_retry_after=self.gcs_retry_after,
            own_node=self.own_node,
        )

    def node_config(self, shape: NodeShape) -> NodeConfig:
        return NodeConfig(
            resources=shape.resources,
            object_store_memory=shape.object_store_memory,
            scheduler=self.scheduler,
            heartbeat_interval=self.heartbeat_interval,
            gcs_retry_after=self.gcs_retry_after,
            timeline_limit=self.timeline_limit,
            spilling=self.spilling,
            spill_threshold=self.spill_threshold,
        )


def make_node(layout: ClusterLayout, index: int, shape: NodeShape | None = None) -> NodeMachine:
    shape = shape or layout.nodes[index % len(layout.nodes)]
    return NodeMachine(node_address(index), layout.node_config(shape))


def build_machines(layout: ClusterLayout, rng: Rng) -> dict[str, object]:
    """Head first, then GCS replicas, then nodes: start them in this order."""
    machines: dict[str, object] = {"head": HeadMachine(layout.head_config(), rng)}
    for chain in layout.chains():
        for r in chain.replicas:
            machines[r] = GcsReplica(r, chain.shard, "head", layout.gcs_timing, config=chain)
    for i, shape in enumerate(layout.nodes):
        machines[node_address(i)] = NodeMachine(node_address(i), layout.node_config(shape))
    return machines
