# Mirrors Ray's doc_code/streaming_generator.py (Ray Core "Ray generators").
# Checks: a generator task (no num_returns) returns an ObjectRefGenerator:
# next() gives a ref per yield as it is produced, iteration ends with the
# task; an exception after the first yield is raised by get of the next ref;
# generators as methods of sync, async and threaded (max_concurrency=5)
# actors; `async for` over a generator in asyncio, also two at once; deleting
# a generator midway; ray.wait on a generator (not ready with timeout=0 before
# the first yield, ready after); mixing generators and refs in one wait loop.
# Implicit init.  Scaled down: sleeps of 0.2 s (the doc: 5 s and 1 s).
import asyncio
import time

import penumbra as ray

T = 0.2


@ray.remote
def task():
    for i in range(5):
        time.sleep(T)
        yield i


gen = task.remote()
assert ray.get(next(gen)) == 0
assert ray.get(next(gen)) == 1
assert [ray.get(r) for r in gen] == [2, 3, 4]


@ray.remote
def fails_at_one():
    for i in range(5):
        time.sleep(T)
        if i == 1:
            raise ValueError("i == 1")
        yield i


gen = fails_at_one.remote()
assert ray.get(next(gen)) == 0
try:
    ray.get(next(gen))
except ValueError:
    pass
else:
    raise AssertionError("the generator's exception was not raised")


@ray.remote
class Actor:
    def f(self):
        for i in range(5):
            yield i


@ray.remote
class AsyncActor:
    async def f(self):
        for i in range(5):
            yield i


@ray.remote(max_concurrency=5)
class ThreadedActor:
    def f(self):
        for i in range(5):
            yield i


for cls in (Actor, AsyncActor, ThreadedActor):
    assert [ray.get(r) for r in cls.remote().f.remote()] == [0, 1, 2, 3, 4]


async def consume():
    return [await ref async for ref in task.remote()]


assert asyncio.run(consume()) == [0, 1, 2, 3, 4]


async def two_at_once():
    return await asyncio.gather(consume(), consume())


assert asyncio.run(two_at_once()) == [[0, 1, 2, 3, 4]] * 2

gen = task.remote()
first = next(gen)
del gen
assert ray.get(first) == 0


@ray.remote
def slow_task():
    for i in range(5):
        time.sleep(1)
        yield i


gen = slow_task.remote()
ready, unready = ray.wait([gen], timeout=0)
assert len(ready) == 0 and len(unready) == 1
ready, unready = ray.wait([gen])
assert len(ready) == 1 and len(unready) == 0
next(gen)
ready, unready = ray.wait([gen], timeout=0)
assert len(ready) == 0 and len(unready) == 1


@ray.remote
def generator_task():
    for i in range(5):
        time.sleep(T)
        yield i


@ray.remote
def regular_task():
    time.sleep(5 * T)
    return "done"


unready = [generator_task.remote(), regular_task.remote()]
result = []
while unready:
    ready, unready = ray.wait(unready)
    for r in ready:
        if isinstance(r, ray.ObjectRefGenerator):
            try:
                result.append(ray.get(next(r)))
            except StopIteration:
                pass
            else:
                unready.append(r)
        else:
            result.append(ray.get(r))
assert sorted(result, key=str) == sorted([0, 1, 2, 3, 4, "done"], key=str)
