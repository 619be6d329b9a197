"""The same API programs give the same results on the real runtime and on the
simulator (``penumbra.verification.scenarios``).

Each driver runs every scenario once, in a module-scoped fixture (one real
embedded cluster, several simulated ones); each scenario is then a test that
compares the results.
"""

from __future__ import annotations

import pytest

import penumbra as ray
from penumbra.core.scheduler import SchedulerConfig
from penumbra.sim.runtime import SimConfig
from penumbra.verification.scenarios import SCENARIOS

pytestmark = pytest.mark.timeout(180)

SIM_CONFIGS = {
    "sim-1node": SimConfig(),
    "sim-4nodes-spread": SimConfig(nodes=4, num_cpus=1, seed=3,
                                   layout={"scheduler": SchedulerConfig(forward_queue_threshold=1)}),
    "sim-zero-costs-slow-tasks": SimConfig(nodes=2, costs="ZERO", task_time=0.5, seed=11),
}


def _run_all() -> dict:
    out = {}
    for name, fn in SCENARIOS.items():
        try:
            out[name] = ("ok", fn(ray))
        except Exception as e:  # a failing scenario is a result to compare, not a crash of the module
            out[name] = ("raised", f"{type(e).__name__}: {e}")
    return out


@pytest.fixture(scope="module")
def real_results() -> dict:
    ray.init(num_cpus=2)
    try:
        return _run_all()
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def sim_results() -> dict:
    results = {}
    for label, cfg in SIM_CONFIGS.items():
        # as the real run's init(num_cpus=2), unless the configuration shapes its nodes itself
        ray.init(simulated=cfg, num_cpus=2 if cfg.num_cpus is None and isinstance(cfg.nodes, int) else None)
        try:
            results[label] = _run_all()
        finally:
            ray.shutdown()
    return results


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_same_result_on_both_drivers(name, real_results, sim_results):
    status, real = real_results[name]
    assert status == "ok", f"{name} failed on the real runtime: {real}"
    for label, results in sim_results.items():
        assert results[name] == ("ok", real), f"{name} on {label}: {results[name]!r} != real {real!r}"
