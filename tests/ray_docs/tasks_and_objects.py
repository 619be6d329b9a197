# Mirrors Ray's doc_code/tasks_and_objects.py (Ray Core "Objects" page).
# Checks: implicit init on the first .remote(); a task's result via get; an
# ObjectRef passed as a task argument is resolved to its value.
import penumbra as ray


@ray.remote
def one():
    return 1


@ray.remote
def plus_one(v):
    return v + 1


first = one.remote()
assert ray.get(first) == 1
second = plus_one.remote(first)
assert ray.get(second) == 2
