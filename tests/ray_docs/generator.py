# Mirrors Ray's doc_code/generator.py (Ray Core "Generators: dynamic
# num_returns").
# Checks: num_returns="dynamic": the task's ref resolves to a
# DynamicObjectRefGenerator of refs, one per yield (chunks of <= 1000 of a
# numpy array); the generator ref can be passed to another task, as can the
# generator itself; a generator with num_returns=4 that raises after 2 yields
# stores the error in the last two refs; with "dynamic" the error is the last
# ref; a generator yielding more values than num_returns=2 still fills the 2.
# Implicit init.  Changed: a fixed array size (63,153) instead of a random one.
import numpy as np

import penumbra as ray
from penumbra import DynamicObjectRefGenerator


@ray.remote(num_returns="dynamic")
def split(array, chunk_size):
    while len(array) > 0:
        yield array[:chunk_size]
        array = array[chunk_size:]


array_ref = ray.put(np.zeros(63153))
block_size = 1000
dynamic_ref = split.remote(array_ref, block_size)
gen = ray.get(dynamic_ref)
count = 0
for ref in gen:
    assert len(ray.get(ref)) <= block_size
    count += 1
assert count == 64
array_size = len(ray.get(array_ref))
del dynamic_ref


@ray.remote
def get_size(ref_generator):
    total = 0
    for ref in ref_generator:
        part = ray.get(ref)
        assert len(part) <= block_size
        total += len(part)
    return total


dynamic_ref = split.remote(array_ref, block_size)
assert ray.get(get_size.remote(dynamic_ref)) == array_size
assert ray.get(get_size.remote(ray.get(dynamic_ref))) == array_size


@ray.remote
def two_then_fail():
    for i in range(2):
        yield i
    raise Exception("error")


r1, r2, r3, r4 = two_then_fail.options(num_returns=4).remote()
assert ray.get([r1, r2]) == [0, 1]
for r in (r3, r4):
    try:
        ray.get(r)
    except Exception as e:
        assert "error" in str(e)
    else:
        raise AssertionError("the refs after the error should hold it")

r1, r2, r3 = ray.get(two_then_fail.options(num_returns="dynamic").remote())
assert ray.get([r1, r2]) == [0, 1]
try:
    ray.get(r3)
except Exception as e:
    assert "error" in str(e)
else:
    raise AssertionError("the last dynamic ref should hold the error")

r1, r2 = two_then_fail.options(num_returns=2).remote()
assert ray.get([r1, r2]) == [0, 1]
