# Mirrors Ray's doc_code/limit_tasks.py (Ray Core pattern "Limit in-flight
# actor calls").
# Checks: actor calls carrying numpy arrays with at most max_in_flight
# pending, throttled by wait(num_returns=len - max); every result is
# collected.  Scaled down: 200 calls of 10,000-element arrays, 20 in flight
# (the doc: 1,000,000 calls of 1,000,000-element arrays, 1000 in flight).
import numpy as np

import penumbra as ray

ray.init()


@ray.remote
class Actor:
    def heavy_compute(self, large_array):
        return len(large_array)


actor = Actor.remote()
refs, results, max_in_flight = [], [], 20
for i in range(200):
    arr = np.zeros(10_000)
    if len(refs) > max_in_flight:
        done, refs = ray.wait(refs, num_returns=len(refs) - max_in_flight)
        results.extend(ray.get(r) for r in done)
    refs.append(actor.heavy_compute.remote(arr))
done, refs = ray.wait(refs, num_returns=len(refs))
results.extend(ray.get(r) for r in done)
assert results == [10_000] * 200 and refs == []
