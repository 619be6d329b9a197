# Mirrors Ray's doc_code/anti_pattern_out_of_band_object_ref_serialization.py
# (Ray Core anti-pattern "Serializing refs out of band").
# Checks: a task returns pickle.dumps(ref) of a ref it put; the driver
# unpickles it and gets it with timeout=5: the doc expects either the value or
# GetTimeoutError (the object may have been freed); a task returning
# ray.cloudpickle.dumps(ref) keeps the object pinned, so the unpickled ref
# gets 1.
# Left out: the doc's runtime_env env_vars toggle and
# ray._private.internal_api.memory_summary (a private API).
import pickle

import penumbra as ray

ray.init()


@ray.remote
def via_pickle():
    ref = ray.put(1)
    return pickle.dumps(ref)


@ray.remote
def via_ray_cloudpickle():
    from penumbra import cloudpickle

    ref = ray.put(1)
    return cloudpickle.dumps(ref)


blob = ray.get(via_pickle.remote())
try:
    assert ray.get(pickle.loads(blob), timeout=5) == 1
except ray.exceptions.GetTimeoutError:
    print("Underlying object is unexpectedly GC'ed!")

from penumbra import cloudpickle  # noqa: E402

assert ray.get(cloudpickle.loads(ray.get(via_ray_cloudpickle.remote())), timeout=5) == 1
