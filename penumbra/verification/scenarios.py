"""API-level scenarios that run unchanged on both drivers.

Each scenario is a plain function ``scenario(ray) -> result`` written against
the public API (``ray`` is the ``penumbra`` module, already initialized on
either the real runtime or the simulator).  Its result is plain data, so the
results of the two drivers can be compared for equality: the same program
must compute the same thing whichever driver runs it.

Scenarios define their remote functions inside themselves, so that nothing
depends on module import paths in workers.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["SCENARIOS", "GPU_SCENARIOS", "run_all"]


def fan_out_fan_in(ray) -> Any:
    @ray.remote
    def square(x):
        return x * x

    @ray.remote
    def total(*xs):
        return sum(xs)

    parts = [square.remote(i) for i in range(20)]
    return ray.get(total.remote(*parts))


def nested_tasks(ray) -> Any:
    @ray.remote
    def leaf(x):
        return x + 1

    @ray.remote
    def middle(n):
        return sum(ray.get([leaf.remote(i) for i in range(n)]))

    @ray.remote
    def top():
        return ray.get([middle.remote(n) for n in range(1, 6)])

    return ray.get(top.remote())


def dependency_chain(ray) -> Any:
    @ray.remote
    def step(prev, k):
        return prev * 3 + k

    ref = ray.put(1)
    for k in range(15):
        ref = step.remote(ref, k)
    return ray.get(ref)


def multiple_returns(ray) -> Any:
    @ray.remote(num_returns=3)
    def split(x):
        return x, x * 2, x * 3

    a, b, c = split.remote(7)
    return ray.get([c, b, a])


def actor_ordering(ray) -> Any:
    @ray.remote
    class Log:
        def __init__(self):
            self.items = []

        def add(self, x):
            self.items.append(x)
            return len(self.items)

        def items_(self):
            return list(self.items)

    log = Log.remote()
    counts = ray.get([log.add.remote(i) for i in range(30)])
    return counts, ray.get(log.items_.remote())


def actor_handle_in_tasks(ray) -> Any:
    @ray.remote
    class Acc:
        def __init__(self):
            self.total = 0

        def add(self, x):
            self.total += x
            return self.total

        def get(self):
            return self.total

    @ray.remote
    def contribute(acc, x):
        return ray.get(acc.add.remote(x))

    acc = Acc.remote()
    ray.get([contribute.remote(acc, i) for i in range(10)])
    return ray.get(acc.get.remote())


def errors_propagate(ray) -> Any:
    @ray.remote(max_retries=0)
    def fail(msg):
        raise KeyError(msg)

    @ray.remote
    def use(x):
        return x

    out = []
    for ref in (fail.remote("a"), use.remote(fail.remote("b"))):
        try:
            ray.get(ref)
            out.append("no error")
        except KeyError as e:
            out.append(("KeyError", isinstance(e, ray.exceptions.TaskError)))
    return out


def wait_semantics(ray) -> Any:
    @ray.remote
    def value(x):
        return x

    refs = [value.remote(i) for i in range(10)]
    ready, not_ready = ray.wait(refs, num_returns=10, timeout=60)
    return [ray.get(r) for r in ready], len(not_ready)


def put_and_share(ray) -> Any:
    import numpy as np

    @ray.remote
    def col_sums(m):
        return m.sum(axis=0).tolist()

    m = ray.put(np.arange(200 * 50, dtype=np.int64).reshape(200, 50))
    return ray.get([col_sums.remote(m) for _ in range(3)])


def named_actor(ray) -> Any:
    @ray.remote
    class Registry:
        def __init__(self):
            self.d = {}

        def set(self, k, v):
            self.d[k] = v

        def get(self, k):
            return self.d.get(k)

    Registry.options(name="scenario-registry").remote()
    r = ray.get_actor("scenario-registry")
    ray.get(r.set.remote("x", 42))
    return ray.get(ray.get_actor("scenario-registry").get.remote("x"))


def gpu_ids(ray) -> Any:
    """Which GPUs tasks and actors get (needs a node with 2 GPUs): an actor
    keeps its GPU for life, a fraction packs onto a GPU already in use, a
    task without GPUs and the driver get none, and a 2-GPU task waits for
    the actor's GPU to come back when the actor is killed."""

    @ray.remote(num_gpus=1)
    class Holder:
        def ids(self):
            return ray.get_gpu_ids()

        def assigned(self):
            return ray.get_runtime_context().get_assigned_resources()

    @ray.remote(num_gpus=1)
    def one():
        return ray.get_gpu_ids()

    @ray.remote(num_gpus=0.5)
    def half():
        ctx = ray.get_runtime_context()
        return ray.get_gpu_ids(), ctx.get_accelerator_ids(), ctx.get_assigned_resources()

    @ray.remote
    def none():
        return ray.get_gpu_ids()

    @ray.remote(num_gpus=2)
    def both():
        return ray.get_gpu_ids()

    h = Holder.remote()
    out = {"actor": ray.get(h.ids.remote()), "one": ray.get(one.remote()), "half": ray.get(half.remote()),
           "none": ray.get(none.remote()), "driver": ray.get_gpu_ids(), "actor again": ray.get(h.ids.remote()),
           "actor holds": ray.get(h.assigned.remote())}
    ray.kill(h)
    out["both"] = ray.get(both.remote(), timeout=60)
    return out


def actor_pool(ray) -> Any:
    @ray.remote
    class Doubler:
        def __init__(self):
            self.calls = 0

        def double(self, v):
            self.calls += 1
            return 2 * v

        def count(self):
            return self.calls

    actors = [Doubler.remote() for _ in range(3)]
    pool = ray.util.ActorPool(actors)
    ordered = list(pool.map(lambda a, v: a.double.remote(v), range(10)))
    unordered = sorted(pool.map_unordered(lambda a, v: a.double.remote(v), range(7)))
    for v in (100, 101, 102, 103, 104):  # more than there are actors: some wait for one
        pool.submit(lambda a, v: a.double.remote(v), v)
    in_order = [pool.get_next() for _ in range(5)]
    idle = pool.pop_idle()
    pool.push(idle)
    return ordered, unordered, in_order, pool.has_next(), pool.has_free(), sum(ray.get([a.count.remote() for a in actors]))


#: Scenarios that need GPUs on the cluster (``init(num_gpus=2)``).
GPU_SCENARIOS: dict[str, Callable[[Any], Any]] = {"gpu_ids": gpu_ids}

SCENARIOS: dict[str, Callable[[Any], Any]] = {
    f.__name__: f
    for f in (
        fan_out_fan_in, nested_tasks, dependency_chain, multiple_returns, actor_ordering,
        actor_handle_in_tasks, errors_propagate, wait_semantics, put_and_share, named_actor,
        actor_pool,
    )
}


def run_all(ray) -> dict[str, Any]:
    return {name: fn(ray) for name, fn in SCENARIOS.items()}
