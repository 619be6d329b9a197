"""``accelerator_type=`` (Ray's ``ray.util.accelerators``) on both drivers."""

from __future__ import annotations

import pytest

import penumbra as ray

pytestmark = pytest.mark.timeout(120)


def test_accelerator_type_needs_a_node_that_offers_it():
    from penumbra.util.accelerators import NVIDIA_TESLA_V100

    @ray.remote(accelerator_type=NVIDIA_TESLA_V100)
    def on_v100():
        return ray.get_runtime_context().get_assigned_resources()

    for simulated in (False, True):
        ray.init(num_cpus=1, resources={f"accelerator_type:{NVIDIA_TESLA_V100}": 1}, simulated=simulated)
        try:
            assert ray.get(on_v100.remote(), timeout=60)[f"accelerator_type:{NVIDIA_TESLA_V100}"] == 0.001
            with pytest.raises(ray.exceptions.GetTimeoutError):  # no node has an A100: infeasible
                ray.get(on_v100.options(accelerator_type="A100").remote(), timeout=2)
        finally:
            ray.shutdown()
    with pytest.raises(TypeError, match="accelerator_type"):
        on_v100.options(accelerator_type=3).remote()
