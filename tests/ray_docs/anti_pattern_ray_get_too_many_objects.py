# Mirrors Ray's doc_code/anti_pattern_ray_get_too_many_objects.py (Ray Core
# anti-pattern "Fetching too many objects at once").
# Checks: get of many 80 KB numpy results at once, then the better way:
# wait(num_returns=BATCH) in a loop until every ref is consumed.
# Scaled down: 200 tasks and batches of 20 (the doc: 1000 and 100).
import numpy as np

import penumbra as ray

ray.init()

NUM_TASKS, BATCH = 200, 20


@ray.remote
def big():
    return np.zeros(1024 * 10)


refs = [big.remote() for _ in range(NUM_TASKS)]
assert len(ray.get(refs)) == NUM_TASKS
seen = 0
while refs:
    ready, refs = ray.wait(refs, num_returns=BATCH)
    assert len(ready) == BATCH
    seen += len(ray.get(ready))
assert seen == NUM_TASKS
