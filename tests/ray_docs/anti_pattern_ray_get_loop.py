# Mirrors Ray's doc_code/anti_pattern_ray_get_loop.py (Ray Core anti-pattern
# "Calling get in a loop").
# Checks: 100 get-per-task results equal 100 tasks submitted then got at once.
import penumbra as ray

ray.init()


@ray.remote
def f(i):
    return i


sequential = [ray.get(f.remote(i)) for i in range(100)]
parallel = ray.get([f.remote(i) for i in range(100)])
assert sequential == parallel == list(range(100))
