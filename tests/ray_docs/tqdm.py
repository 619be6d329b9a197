# Mirrors Ray's doc_code/tqdm.py (Ray Core "Using tqdm with Ray":
# ray.experimental.tqdm_ray).
# Checks: tqdm_ray.tqdm wraps an iterable inside tasks (progress bars sent to
# the driver) and yields every item.  Implicit init.  Scaled down: 10 items
# of 0.01 s (the doc: 100 of 0.1 s).
import time

import penumbra as ray
from penumbra.experimental.tqdm_ray import tqdm


@ray.remote
def f(name):
    n = 0
    for _ in tqdm(range(10), desc=name):
        time.sleep(0.01)
        n += 1
    return n


assert ray.get([f.remote("task 1"), f.remote("task 2")]) == [10, 10]
