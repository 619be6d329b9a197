# Mirrors Ray's doc_code/actor-sync.py (Ray Core "Actors: synchronizing with
# a signal actor").
# Checks: an async actor with num_cpus=0 holding an asyncio.Event; 4 tasks
# block in get(signal.wait.remote()) until the driver calls send; then all
# tasks finish.  Implicit init.  Scaled down: the tasks need 4 concurrent
# blocked workers, which the node must lend CPUs for (2-CPU machine).
import asyncio

import penumbra as ray


@ray.remote(num_cpus=0)
class Signal:
    def __init__(self):
        self.event = asyncio.Event()

    def send(self, clear=False):
        self.event.set()
        if clear:
            self.event.clear()

    async def wait(self, should_wait=True):
        if should_wait:
            await self.event.wait()


@ray.remote
def wait_and_go(signal):
    ray.get(signal.wait.remote())
    print("go!")
    return "went"


signal = Signal.remote()
tasks = [wait_and_go.remote(signal) for _ in range(4)]
ready, _ = ray.wait(tasks, num_returns=1, timeout=0.5)
assert ready == [], "a task passed the signal before it was sent"
ray.get(signal.send.remote())
assert ray.get(tasks) == ["went"] * 4
