# Mirrors Ray's doc_code/deser.py (Ray Core "Serialization: numpy arrays are
# read-only").
# Checks: a numpy array argument arrives read-only (zero-copy from the object
# store), so writing to it fails with a RayTaskError that is also a
# ValueError ("assignment destination is read-only").
import numpy as np

import penumbra as ray


@ray.remote
def write_first(arr):
    arr[0] = 1


try:
    ray.get(write_first.remote(np.zeros(100)))
except ray.exceptions.RayTaskError as e:
    assert isinstance(e, ValueError), type(e)
    assert "read-only" in str(e)
else:
    raise AssertionError("writing to an argument array should fail")
