# Mirrors Ray's doc_code/actor-queue.py (Ray Core "ray.util.queue" page).
# Checks: ray.util.queue.Queue(maxsize=100) can be passed to tasks; consumer
# tasks block in queue.get(block=True) until the driver puts items.  The doc
# fires and forgets; this mirror gets the consumers' results to assert them.
import penumbra as ray
from penumbra.util.queue import Queue

ray.init()
queue = Queue(maxsize=100)


@ray.remote
def consumer(q):
    item = q.get(block=True)
    print(f"got work {item}")
    return item


consumers = [consumer.remote(queue) for _ in range(2)]
for i in range(10):
    queue.put(i)
got = ray.get(consumers)
assert len(got) == 2 and set(got) <= set(range(10))
