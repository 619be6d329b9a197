# Mirrors Ray's doc_code/anti_pattern_nested_ray_get.py (Ray Core
# anti-pattern "Passing nested refs and calling get in a nested task").
# Checks: a list of refs passed as one argument needs get inside the task;
# refs unpacked with *args arrive as values.  Implicit init.  The doc only
# prints the sums; this mirror returns them too.
import penumbra as ray


@ray.remote
def one():
    return 1


@ray.remote
def via_nested(refs):
    total = sum(ray.get(refs))
    print(total)
    return total


@ray.remote
def via_args(*args):
    print(sum(args))
    return sum(args)


assert ray.get(via_nested.remote([one.remote() for _ in range(3)])) == 3
assert ray.get(via_args.remote(*[one.remote() for _ in range(3)])) == 3
