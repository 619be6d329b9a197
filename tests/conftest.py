"""Shared fixtures for the test suite (keep this file small).

``core``: builders for the pure-core tests (task specs with deterministic ids,
and whole clusters wired through ``penumbra.verification.memnet``).
``driver``: a module's tests run twice, on the real runtime (an embedded
cluster of 2 CPUs) and on the simulator; the fixture's value says which.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import settings

# Tests are deterministic: Hypothesis draws the same examples on every run
# and machine (no example database, no random seed).  Explore more with
# ``--hypothesis-profile=explore``.
settings.register_profile("deterministic", derandomize=True, database=None, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile("deterministic")


class CoreKit:
    """Deterministic task specs and memnet clusters for core tests."""

    def __init__(self) -> None:
        from penumbra.core.ids import driver_task_id
        from penumbra.core.specs import FunctionDescriptor

        self.root = driver_task_id(1)
        self.fn = FunctionDescriptor(b"fn-f", "f")
        self.count = 0

    def spec(self, deps=(), cpus: float | None = 1, resources=None, **kw):
        """A task spec: the next child of the driver (``cpus=None``: no CPU)."""
        from penumbra.core.ids import child_task_id
        from penumbra.core.specs import ResourceSet, TaskSpec

        if resources is None:
            resources = ResourceSet.of(CPU=cpus) if cpus else ResourceSet()
        tid = child_task_id(self.root, self.count)
        self.count += 1
        return TaskSpec(task_id=tid, job_id=1, parent_task_id=self.root, function=self.fn,
                        dependencies=tuple(deps), resources=resources, **kw)

    def cluster(self, nodes=2, shards=1, chain=1, behaviour=None, latency=0.001, settle=0.05,
                resources=None, seed=0, **layout_kw):
        """A started cluster on a MemNet; ``resources``: one ResourceSet per node."""
        from penumbra.core.layout import ClusterLayout, NodeShape, build_machines
        from penumbra.core.specs import ResourceSet
        from penumbra.verification.memnet import MemNet

        shapes = tuple(NodeShape(resources=r) for r in (resources or [ResourceSet.of(CPU=2)] * nodes))
        layout = ClusterLayout(nodes=shapes, gcs_shards=shards, chain_length=chain, **layout_kw)
        net = MemNet(behaviour=behaviour, latency=latency)
        for address, machine in build_machines(layout, random.Random(seed)).items():
            net.add(address, machine)
        net.run_for(settle)
        return net


@pytest.fixture
def core() -> CoreKit:
    return CoreKit()


@pytest.fixture(params=["real", "sim"], scope="module")
def driver(request):
    import penumbra as ray

    ray.init(num_cpus=2, simulated=request.param == "sim")
    try:
        yield request.param
    finally:
        ray.shutdown()
