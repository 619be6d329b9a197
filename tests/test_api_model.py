"""The public API against a model, driven by Hypothesis: on the simulator,
and (fewer steps) on the real runtime."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

import penumbra as ray
from penumbra.sim.runtime import SimConfig
from penumbra.verification.api_model import ApiMachine

pytestmark = pytest.mark.timeout(600)


def test_api_state_machine_on_the_simulator():
    seeds = iter(range(10_000))

    class OnSim(ApiMachine):
        def __init__(self):
            ray.init(simulated=SimConfig(nodes=2, seed=next(seeds)))
            super().__init__()

        def teardown(self):
            ray.shutdown()

    OnSim.ray = ray
    run_state_machine_as_test(OnSim, settings=settings(
        max_examples=100, stateful_step_count=30, deadline=None, database=None, derandomize=True,
        suppress_health_check=list(HealthCheck)))


def test_api_state_machine_on_the_real_runtime():
    ray.init(num_cpus=2)
    try:
        class OnReal(ApiMachine):
            pass

        OnReal.ray = ray
        run_state_machine_as_test(OnReal, settings=settings(
            max_examples=10, stateful_step_count=15, deadline=None, database=None, derandomize=True,
            suppress_health_check=list(HealthCheck)))
    finally:
        ray.shutdown()
