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


def test_gpu_ids_same_on_both_drivers_and_cuda_visible_devices_set():
    import os

    from penumbra.verification.scenarios import GPU_SCENARIOS

    @ray.remote(num_gpus=1)
    def visible():
        return os.environ.get("CUDA_VISIBLE_DEVICES"), ray.get_gpu_ids()

    results = {}
    for label, kw in (("real", {}), ("sim", {"simulated": True})):
        ray.init(num_cpus=2, num_gpus=2, **kw)
        try:
            results[label] = {name: fn(ray) for name, fn in GPU_SCENARIOS.items()}
            if label == "real":
                env, ids = ray.get(visible.remote())
                assert env == ",".join(map(str, ids)) and len(ids) == 1
        finally:
            ray.shutdown()
    assert results["real"] == results["sim"]
    assert results["real"]["gpu_ids"] == {
        "actor": [0], "one": [1], "half": ([1], {"GPU": ["1"]}, {"CPU": 1.0, "GPU": 0.5}), "none": [], "driver": [],
        "actor again": [0], "actor holds": {"GPU": 1.0}, "both": [0, 1],
    }
