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
