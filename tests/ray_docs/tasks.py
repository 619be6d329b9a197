# Mirrors Ray's doc_code/tasks.py (Ray Core "Tasks" page).
# Checks: implicit init; remote function -> ref -> get; fire-and-forget slow
# tasks; passing a ref as an argument; wait(num_returns=1, timeout=None);
# single vs num_returns=3 returns; a generator with num_returns=3; cancelling
# a blocking task makes get raise TaskCancelledError; decorating with
# num_gpus / fractional GPUs / custom resources (decoration only, as in the doc).
# Scaled down: the slow task sleeps 1 s instead of 10 s (2-CPU machine).
import time

import penumbra as ray


@ray.remote
def my_function():
    return 1


assert ray.get(my_function.remote()) == 1


@ray.remote
def slow_function():
    time.sleep(1)
    return 1


for _ in range(4):
    slow_function.remote()          # does not block


@ray.remote
def add_one(value):
    return value + 1


ref1 = my_function.remote()
assert ray.get(ref1) == 1
assert ray.get(add_one.remote(ref1)) == 2

pending = [slow_function.remote() for _ in range(2)]
ready, rest = ray.wait(pending, num_returns=1, timeout=None)
assert len(ready) == 1 and len(rest) == 1


@ray.remote
def triple():
    return 0, 1, 2


assert ray.get(triple.remote()) == (0, 1, 2)


@ray.remote(num_returns=3)
def three_refs():
    return 0, 1, 2


a, b, c = three_refs.remote()
assert ray.get([a, b, c]) == [0, 1, 2]


@ray.remote(num_returns=3)
def three_yields():
    for i in range(3):
        yield i


a, b, c = three_yields.remote()
assert ray.get([a, b, c]) == [0, 1, 2]


@ray.remote
def blocks_forever():
    time.sleep(10e6)


ref = blocks_forever.remote()
ray.cancel(ref)
try:
    ray.get(ref)
except ray.exceptions.TaskCancelledError:
    print("Object reference was cancelled.")
else:
    raise AssertionError("get of a cancelled task returned")


@ray.remote(num_cpus=4, num_gpus=2)
def needs_gpus():
    return 1


@ray.remote(num_gpus=0.5)
def half_gpu():
    return 1


@ray.remote(resources={"Custom": 1})
def custom():
    return 1
