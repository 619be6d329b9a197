"""runtime_env env_vars (Ray's runtime_env={"env_vars": ...}), job-level and
per task or actor, on both drivers; other runtime_env fields are refused
where they are given."""

from __future__ import annotations

import os

import pytest

import penumbra as ray

pytestmark = pytest.mark.timeout(120)


@ray.remote
def read(*names):
    return [os.environ.get(n) for n in names]


@ray.remote
def nested(*names):
    return ray.get(read.remote(*names))


@ray.remote
class Reader:
    def read(self, *names):
        return [os.environ.get(n) for n in names]

    def child(self, *names):
        return ray.get(read.remote(*names))


@pytest.mark.parametrize("simulated", [False, True], ids=["real", "sim"])
def test_env_vars_reach_tasks_children_and_actors(simulated):
    os.environ.pop("PN_JOB", None)
    os.environ.pop("PN_OWN", None)
    ray.init(num_cpus=1, simulated=simulated, runtime_env={"env_vars": {"PN_JOB": "job", "PN_OWN": "job"}})
    try:
        assert ray.get(read.remote("PN_JOB", "PN_OWN"), timeout=60) == ["job", "job"]
        own = read.options(runtime_env={"env_vars": {"PN_OWN": "task"}})
        assert ray.get(own.remote("PN_JOB", "PN_OWN"), timeout=60) == ["job", "task"]
        # children inherit their parent's env, as in Ray
        assert ray.get(nested.options(runtime_env={"env_vars": {"PN_OWN": "parent"}}).remote("PN_OWN"),
                       timeout=60) == ["parent"]
        # the next task on the same worker does not see the last one's own vars
        assert ray.get(read.remote("PN_OWN"), timeout=60) == ["job"]
        a = Reader.options(runtime_env={"env_vars": {"PN_OWN": "actor"}}).remote()
        assert ray.get(a.read.remote("PN_JOB", "PN_OWN"), timeout=60) == ["job", "actor"]
        assert ray.get(a.child.remote("PN_OWN"), timeout=60) == ["actor"]
        assert os.environ.get("PN_OWN") is None  # the driver's environment is its own
    finally:
        ray.shutdown()


def test_unsupported_runtime_env_fields_are_refused_where_given():
    with pytest.raises(ValueError, match="'pip'"):
        read.options(runtime_env={"pip": ["requests"]})
    with pytest.raises(ValueError, match="'working_dir'"):
        ray.init(runtime_env={"working_dir": "."})
    assert not ray.is_initialized()
    with pytest.raises(ValueError, match="string values"):
        read.options(runtime_env={"env_vars": {"N": 1}})


_THREADS_PROBE = r'''
import json, os, sys
import penumbra as ray

ray.init(num_cpus=1)

@ray.remote
def probe():
    import numpy as np  # the worker's numpy, imported in the zygote before the fork
    return {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}

print(json.dumps(ray.get(probe.remote(), timeout=60)))
ray.shutdown()
'''


@pytest.mark.timeout(120)
@pytest.mark.parametrize("user_value", [None, "3"])
def test_workers_run_numeric_libraries_on_one_thread_unless_told(tmp_path, user_value):
    """As in Ray, a worker's BLAS/OpenMP pools default to one thread (N
    workers on N cores would otherwise each start N threads); a value the
    user set before ``init()`` is kept."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PENUMBRA_TMPDIR"] = str(tmp_path)
    if user_value is not None:
        env["OMP_NUM_THREADS"] = user_value
    out = subprocess.run([sys.executable, "-c", _THREADS_PROBE], env=env, capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"OMP_NUM_THREADS": user_value or "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
