# Mirrors Ray's doc_code/anti_pattern_redefine_task_actor_loop.py (Ray Core
# anti-pattern "Redefining the same remote function in a loop").
# Checks: a remote function defined anew in each of 10 iterations still
# computes the right results; defined once, too.
import penumbra as ray

ray.init()

outputs = []
for i in range(10):
    @ray.remote
    def double(i):
        return i * 2

    outputs.append(double.remote(i))
assert ray.get(outputs) == [i * 2 for i in range(10)]


@ray.remote
def double_once(i):
    return i * 2


assert ray.get([double_once.remote(i) for i in range(10)]) == [i * 2 for i in range(10)]
