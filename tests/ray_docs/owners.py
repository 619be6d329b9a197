# Mirrors Ray's doc_code/owners.py (Ray Core "Object fault tolerance:
# ownership").
# Checks: a driver put and a task returning a numpy array (100k floats) both
# produce refs the driver can get.  The doc only creates the refs.
import numpy as np

import penumbra as ray


@ray.remote
def large_array():
    return np.zeros(int(1e5))


x = ray.put(1)
y = large_array.remote()
assert ray.get(x) == 1
arr = ray.get(y)
assert arr.shape == (100000,) and not arr.any()
