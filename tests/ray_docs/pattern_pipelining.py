# Mirrors Ray's doc_code/pattern_pipelining.py (Ray Core pattern "Using
# pipelining to increase throughput").
# Checks: a worker actor pulling items from a queue actor, with and without
# prefetching the next item's ref before processing the current one; both
# process items 0..9 in order.  Implicit init.  The doc prints the items;
# this mirror also returns them.
import penumbra as ray


@ray.remote
class WorkQueue:
    def __init__(self):
        self.queue = list(range(10))

    def get_work_item(self):
        return self.queue.pop(0) if self.queue else None


@ray.remote
class WorkerWithoutPipelining:
    def __init__(self, work_queue):
        self.work_queue = work_queue

    def run(self):
        done = []
        while True:
            item = ray.get(self.work_queue.get_work_item.remote())
            if item is None:
                return done
            done.append(item)


@ray.remote
class WorkerWithPipelining:
    def __init__(self, work_queue):
        self.work_queue = work_queue

    def run(self):
        done = []
        next_ref = self.work_queue.get_work_item.remote()
        while True:
            item = ray.get(next_ref)
            if item is None:
                return done
            next_ref = self.work_queue.get_work_item.remote()
            done.append(item)


assert ray.get(WorkerWithoutPipelining.remote(WorkQueue.remote()).run.remote()) == list(range(10))
assert ray.get(WorkerWithPipelining.remote(WorkQueue.remote()).run.remote()) == list(range(10))
