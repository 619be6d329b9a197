# Mirrors Ray's doc_code/nested-tasks.py (Ray Core "Nested remote functions").
# Checks: a task returning refs of tasks it submitted; a task that gets its
# children's results; a task declared with num_cpus=1, num_gpus=1 (decorated
# only, as in the doc).  The doc only defines the functions; this mirror calls
# g and h and asserts what the page says they return.  Implicit init.
import penumbra as ray


@ray.remote
def f():
    return 1


@ray.remote
def g():
    return [f.remote() for _ in range(4)]


@ray.remote
def h():
    return ray.get([f.remote() for _ in range(4)])


refs = ray.get(g.remote())
assert len(refs) == 4 and ray.get(refs) == [1, 1, 1, 1]
assert ray.get(h.remote()) == [1, 1, 1, 1]


@ray.remote(num_cpus=1, num_gpus=1)
def g_gpu():
    return ray.get(f.remote())
