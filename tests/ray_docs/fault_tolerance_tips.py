# Mirrors Ray's doc_code/fault_tolerance_tips.py (Ray Core "Fault tolerance"
# tips: avoid letting objects outlive their owner).
# Checks: a ref put inside a task and returned can be got by the driver (the
# doc tolerates OwnerDiedError); a plain return can; a ref to a child task's
# result returned from a task can be got (OwnerDiedError tolerated); getting
# the value inside the task and returning it works; a task pinned to a node
# with resources={"node:127.0.0.3": 1} can be submitted (it may never run).
# Implicit init.
import penumbra as ray


@ray.remote
def put_and_return_ref():
    return ray.put(1)


x_ref = ray.get(put_and_return_ref.remote())
try:
    assert ray.get(x_ref) == 1
except ray.exceptions.OwnerDiedError:
    pass


@ray.remote
def returns_one():
    return 1


assert ray.get(returns_one.remote()) == 1


@ray.remote
def returns_child_ref():
    return returns_one.remote()


x_ref = ray.get(returns_child_ref.remote())
try:
    assert ray.get(x_ref) == 1
except ray.exceptions.OwnerDiedError:
    pass


@ray.remote
def returns_child_value():
    return ray.get(returns_one.remote())


assert ray.get(returns_child_value.remote()) == 1


@ray.remote
def pinned():
    return 1


pinned.options(resources={"node:127.0.0.3": 1}).remote()
