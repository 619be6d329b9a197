"""Node incarnations that join and die, one after another, on a MemNet.

What a node daemon that keeps rejoining does to its head (each incarnation
is a new node id: joined, welcomed, heartbeating, then its connection is
lost and the head is told ``NodeDied``), without the daemons, so what the
head, the GCS and a surviving node keep per dead node can be measured
(tests/test_dead_nodes.py, bench/bench_head_dead_nodes.py).  The MemNet's
own bookkeeping for a dead address (its store, workers, trace) is dropped
after each, so what stays is the machines'.
"""

from __future__ import annotations

import pickle
import random

from ..core.layout import ClusterLayout, NodeShape, build_machines
from ..core.messages import NodeDied
from ..core.node import NodeMachine
from ..core.specs import ResourceSet
from .memnet import MemNet

__all__ = ["NodeChurn"]


class NodeChurn:
    """A cluster (head, GCS, one node that lives on) plus churning nodes."""

    def __init__(self, shards: int = 1, chain: int = 1, seed: int = 0) -> None:
        self.layout = ClusterLayout(nodes=(NodeShape(ResourceSet.of(CPU=2)),), gcs_shards=shards,
                                    chain_length=chain, heartbeat_interval=0.05, node_timeout=0.3)
        self.net = MemNet(latency=0.001, validate=False)
        for address, machine in build_machines(self.layout, random.Random(seed)).items():
            self.net.add(address, machine)
        self.net.run_for(0.2)
        self.lasting = tuple(self.net.machines)  # head, replicas, node:0
        self._config = self.layout.node_config(self.layout.nodes[0])
        self.born = 0

    @property
    def head(self):
        return self.net.machines["head"]

    def incarnation(self, life: float = 0.06) -> str:
        """One node joins, lives ``life`` s, and is lost (``NodeDied``, as the
        head daemon says when a node's connection closes)."""
        net = self.net
        address = f"node:churn.{self.born}"
        self.born += 1
        net.add(address, NodeMachine(address, self._config))
        net.run_for(life)
        net.crash(address)
        net.inject("head", NodeDied(node_id=address, stimulus_id=f"disconnect:{address}"))
        net.run_for(0.02)
        self._forget(address)
        return address

    def _forget(self, address: str) -> None:
        net = self.net
        net.trace.clear()
        net.logs.clear()
        net.incarnations.pop(address, None)
        net.stores.pop(address, None)
        for wid in [w for w, (node, _) in net.workers.items() if node == address]:
            del net.workers[wid]
            net.running.pop(wid, None)

    def retained(self) -> dict[str, int]:
        """Bytes of each lasting machine's state, pickled: a deterministic
        measure of what it keeps."""
        return {a: len(pickle.dumps(self.net.machines[a])) for a in self.lasting if a in self.net.machines}
