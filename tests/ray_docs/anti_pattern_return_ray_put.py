# Mirrors Ray's doc_code/anti_pattern_return_ray_put.py (Ray Core anti-pattern
# "Returning ray.put() refs from a task").
# Checks: a task/actor method returning ray.put(x) gives a ref to a ref (two
# gets) with the same value as returning x; num_returns=1 vs 2 with tuples of
# put refs; @ray.method(num_returns=...) on actors; and a generator with
# num_returns="streaming" whose first item equals the list-of-puts version.
# Implicit init.  Scaled down: 1 M-element arrays instead of 10 M/9 M (8 MB).
import numpy as np

import penumbra as ray

N = 1024 * 1024


@ray.remote
def small_bad():
    return ray.put(1)


@ray.remote
def small_good():
    return 1


assert ray.get(ray.get(small_bad.remote())) == ray.get(small_good.remote())


@ray.remote
def large_bad():
    return ray.put(np.zeros(N))


@ray.remote
def large_good():
    return np.zeros(N)


assert np.array_equal(ray.get(ray.get(large_bad.remote())), ray.get(large_good.remote()))


@ray.remote
class Holder:
    def bad(self):
        return ray.put(np.zeros(N))

    def good(self):
        return np.zeros(N)


h = Holder.remote()
assert np.array_equal(ray.get(ray.get(h.bad.remote())), ray.get(h.good.remote()))


@ray.remote(num_returns=1)
def multi_bad1():
    return ray.put(1), ray.put(2)


@ray.remote(num_returns=2)
def multi_bad2():
    return ray.put(1), ray.put(2)


@ray.remote(num_returns=2)
def multi_good():
    return 1, 2


assert (ray.get(ray.get(multi_bad1.remote())[0])
        == ray.get(ray.get(multi_bad2.remote()[0]))
        == ray.get(multi_good.remote()[0]) == 1)


@ray.remote
class MultiHolder:
    @ray.method(num_returns=1)
    def bad1(self):
        return ray.put(1), ray.put(2)

    @ray.method(num_returns=2)
    def bad2(self):
        return ray.put(1), ray.put(2)

    @ray.method(num_returns=2)
    def good(self):
        return 1, 2


m = MultiHolder.remote()
assert (ray.get(ray.get(m.bad1.remote())[0])
        == ray.get(ray.get(m.bad2.remote()[0]))
        == ray.get(m.good.remote()[0]) == 1)


@ray.remote(num_returns=1)
def stream_bad(n):
    return [ray.put(np.zeros(i * 1024 * 1024)) for i in range(n)]


@ray.remote(num_returns="streaming")
def stream_good(n):
    for i in range(n):
        yield np.zeros(i * 1024 * 1024)


assert np.array_equal(ray.get(ray.get(stream_bad.remote(2))[0]), ray.get(next(stream_good.remote(2))))
