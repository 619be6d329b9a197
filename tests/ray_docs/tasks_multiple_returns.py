# Mirrors Ray's doc_code/tasks_multiple_returns.py (Ray Core "Tasks" page,
# multiple returns).
# Checks: a task returning a tuple gives one ref holding the tuple;
# num_returns=3 splits it into three refs.  No ray.init(): implicit init.
import penumbra as ray


@ray.remote
def as_one():
    return 0, 1, 2


assert ray.get(as_one.remote()) == (0, 1, 2)


@ray.remote(num_returns=3)
def as_three():
    return 0, 1, 2


r0, r1, r2 = as_three.remote()
assert [ray.get(r0), ray.get(r1), ray.get(r2)] == [0, 1, 2]
