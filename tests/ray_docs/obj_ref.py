# Mirrors Ray's doc_code/obj_ref.py (Ray Core "Objects: passing object
# arguments", nested refs).
# Checks: refs nested in a list argument are NOT de-referenced: the task
# sees ObjectRefs and can get them itself.
import penumbra as ray


@ray.remote
def echo_and_get(refs):
    print("args:", refs)
    assert all(isinstance(r, ray.ObjectRef) for r in refs)
    values = ray.get(refs)
    print("values:", values)
    return values


a, b, c = ray.put(1), ray.put(2), ray.put(3)
assert ray.get(echo_and_get.remote([a, b, c])) == [1, 2, 3]
