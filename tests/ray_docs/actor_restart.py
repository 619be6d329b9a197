# Mirrors Ray's doc_code/actor_restart.py (Ray Core "Actor fault tolerance:
# actor restart").
# Checks: an actor with max_restarts=4, max_task_retries=-1 that exits its
# process after every 10 calls is restarted (constructor re-run) 4 times, so
# 50 calls succeed and print 1..10 five times; after that every call raises
# RayActorError.
import os

import penumbra as ray

ray.init()


@ray.remote(max_restarts=4, max_task_retries=-1)
class Actor:
    def __init__(self):
        self.counter = 0

    def increment_and_possibly_fail(self):
        if self.counter == 10:
            os._exit(0)
        self.counter += 1
        return self.counter


actor = Actor.remote()
seen = [ray.get(actor.increment_and_possibly_fail.remote()) for _ in range(50)]
print(seen)
assert seen == list(range(1, 11)) * 5

for _ in range(10):
    try:
        ray.get(actor.increment_and_possibly_fail.remote())
    except ray.exceptions.RayActorError:
        print("FAILURE")
    else:
        raise AssertionError("the actor ran past its restart budget")
