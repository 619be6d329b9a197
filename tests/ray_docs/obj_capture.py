# Mirrors Ray's doc_code/obj_capture.py (Ray Core "Objects: closure capture").
# Checks: refs captured from the driver's globals by a remote function can be
# got inside the task.
import penumbra as ray

a, b, c = ray.put(1), ray.put(2), ray.put(3)


@ray.remote
def print_via_capture():
    values = ray.get([a, b, c])
    print(values)
    return values


assert ray.get(print_via_capture.remote()) == [1, 2, 3]
