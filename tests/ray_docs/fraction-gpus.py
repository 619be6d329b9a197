# Mirrors Ray's doc_code/fraction-gpus.py (Ray Core "GPUs: fractional GPUs").
# Checks: on a node with 4 CPUs and 1 (logical) GPU, four num_gpus=0.25 tasks
# run at the same time.  The doc only sleeps 1 s in each; to assert the
# concurrency deterministically each task waits (with a deadline) until all
# four have started, counted by a num_cpus=0 actor.
import time

import penumbra as ray

ray.init(num_cpus=4, num_gpus=1)


@ray.remote(num_cpus=0)
class Arrivals:
    def __init__(self):
        self.n = 0

    def arrive(self):
        self.n += 1

    def count(self):
        return self.n


@ray.remote(num_gpus=0.25)
def f(arrivals):
    ray.get(arrivals.arrive.remote())
    deadline = time.monotonic() + 20
    while ray.get(arrivals.count.remote()) < 4:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


arrivals = Arrivals.remote()
assert ray.get([f.remote(arrivals) for _ in range(4)]) == [True] * 4
