# Mirrors Ray's doc_code/limit_pending_tasks.py (Ray Core pattern "Limit
# pending tasks with wait").
# Checks: many calls to an async actor submitted at once complete; with
# backpressure (wait(num_returns=1) once more than MAX are pending) they
# complete too.  Scaled down: 300 calls, at most 30 pending (the doc: 1000
# and 100).
import penumbra as ray

ray.init()


@ray.remote
class Actor:
    async def heavy_compute(self):
        return


actor = Actor.remote()
NUM_TASKS, MAX_PENDING = 300, 30
ray.get([actor.heavy_compute.remote() for _ in range(NUM_TASKS)])

refs = []
for _ in range(NUM_TASKS):
    if len(refs) > MAX_PENDING:
        ready, refs = ray.wait(refs, num_returns=1)
        ray.get(ready)
    refs.append(actor.heavy_compute.remote())
ray.get(refs)
