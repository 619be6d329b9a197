# Mirrors Ray's doc_code/pattern_async_actor.py (Ray Core pattern "Using
# async actors for non-blocking calls").
# Checks: a sync actor stuck in an endless method cannot serve another call
# (get with a timeout raises GetTimeoutError); an async actor whose endless
# method awaits refs still serves get_num_executed_tasks.  Implicit init.
# Scaled down: timeout 2 s instead of 5 s.  The endless methods are still
# running when the program ends: exit must not hang.
import penumbra as ray


@ray.remote
class TaskStore:
    def get_next_task(self):
        return "task"


@ray.remote
class TaskExecutor:
    def __init__(self, task_store):
        self.task_store = task_store
        self.num_executed_tasks = 0

    def run(self):
        while True:
            ray.get(self.task_store.get_next_task.remote())
            self.num_executed_tasks += 1

    def get_num_executed_tasks(self):
        return self.num_executed_tasks


task_store = TaskStore.remote()
executor = TaskExecutor.remote(task_store)
executor.run.remote()
try:
    ray.get(executor.get_num_executed_tasks.remote(), timeout=2)
except ray.exceptions.GetTimeoutError:
    print("get_num_executed_tasks didn't finish in 2 seconds")
else:
    raise AssertionError("a sync actor served a call while busy")


@ray.remote
class AsyncTaskExecutor:
    def __init__(self, task_store):
        self.task_store = task_store
        self.num_executed_tasks = 0

    async def run(self):
        while True:
            await self.task_store.get_next_task.remote()
            self.num_executed_tasks += 1

    def get_num_executed_tasks(self):
        return self.num_executed_tasks


async_executor = AsyncTaskExecutor.remote(task_store)
async_executor.run.remote()
n = ray.get(async_executor.get_num_executed_tasks.remote(), timeout=20)
print(f"num of executed tasks so far: {n}")
assert isinstance(n, int)
