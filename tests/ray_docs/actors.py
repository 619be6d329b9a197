# Mirrors Ray's doc_code/actors.py (Ray Core "Actors" page: cancelling actor
# tasks, task events).
# Checks: cancelling a running async actor method (awaiting asyncio.sleep)
# makes get raise (RayTaskError/TaskCancelledError); a sync actor method
# that polls get_runtime_context().is_canceled() sees the cancel, and get
# raises TaskCancelledError; @ray.method(enable_task_events=False) is
# accepted.  Implicit init.
import asyncio
import time

import penumbra as ray


@ray.remote
class AsyncActor:
    async def f(self):
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            print("Actor task canceled.")


actor = AsyncActor.remote()
ref = actor.f.remote()
time.sleep(1)  # as in the doc: let the call start
ray.cancel(ref)
try:
    ray.get(ref)
except (ray.exceptions.RayTaskError, ray.exceptions.TaskCancelledError):
    print("Object reference was cancelled.")
else:
    raise AssertionError("get of a cancelled actor task returned")


@ray.remote
class SyncActor:
    def __init__(self):
        self.is_canceled = False

    def long_running_method(self):
        for _ in range(1000):
            if ray.get_runtime_context().is_canceled():
                self.is_canceled = True
                return "canceled"
            time.sleep(0.01)
        return "completed"

    def get_cancel_status(self):
        return self.is_canceled


actor = SyncActor.remote()
ref = actor.long_running_method.remote()
ray.cancel(ref)
try:
    ray.get(ref)
except ray.exceptions.TaskCancelledError:
    print("Actor task was cancelled")
else:
    raise AssertionError("expected TaskCancelledError")
print("Actor detected cancellation:", ray.get(actor.get_cancel_status.remote()))


@ray.remote
class FooActor:
    @ray.method(enable_task_events=False)
    def foo(self):
        return "foo"


assert ray.get(FooActor.remote().foo.remote()) == "foo"
