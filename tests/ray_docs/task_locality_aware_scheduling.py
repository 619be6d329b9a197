# Mirrors Ray's doc_code/task_locality_aware_scheduling.py (Ray Core
# "Scheduling: locality-aware scheduling").
# Checks: a task consuming a large (1 M-element list) result, the same with
# scheduling_strategy="SPREAD" in .options, and one consuming a small result.
# Implicit init.  The doc fires and forgets; this mirror gets the lengths.
import penumbra as ray


@ray.remote
def large_object_function():
    return [1] * (1024 * 1024)


@ray.remote
def small_object_function():
    return [1]


@ray.remote
def consume_function(data):
    return len(data)


large = large_object_function.remote()
small = small_object_function.remote()
assert ray.get(consume_function.remote(large)) == 1024 * 1024
spread = [consume_function.options(scheduling_strategy="SPREAD").remote(large) for _ in range(10)]
assert ray.get(spread) == [1024 * 1024] * 10
assert ray.get(consume_function.remote(small)) == 1
