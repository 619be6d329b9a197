# Mirrors Ray's doc_code/anti_pattern_unnecessary_ray_get.py (Ray Core
# anti-pattern "Calling get unnecessarily").
# Checks: a task's large result fetched and re-uploaded, or passed by ref
# to the next task, reduces to the same sum.  Scaled down: a 1000x1000 array
# (8 MB; the doc uses 10000x10000, 800 MB), so the sum is 1e6.
import numpy as np

import penumbra as ray

ray.init()


@ray.remote
def generate_rollout():
    return np.ones((1000, 1000))


@ray.remote
def reduce(rollout):
    return np.sum(rollout)


rollout = ray.get(generate_rollout.remote())
assert ray.get(reduce.remote(rollout)) == 1000000
assert ray.get(reduce.remote(generate_rollout.remote())) == 1000000
