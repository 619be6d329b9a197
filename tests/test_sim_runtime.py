"""The public API on the simulator (``init(simulated=...)``): real Python
code, virtual time, deterministic runs."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import penumbra as ray
from penumbra import exceptions as exc
from penumbra.core.scheduler import SchedulerConfig
from penumbra.sim import runtime as simrt
from penumbra.sim.runtime import CrashNode, SimConfig, SimulationStalled

pytestmark = pytest.mark.timeout(60)

SPREAD = {"scheduler": SchedulerConfig(forward_queue_threshold=1)}  # forward as soon as one task queues


@pytest.fixture
def start():
    """``start(config=None, **init_kwargs)`` -> the ``SimRuntime``; shut down after the test."""

    def go(config=None, **kw):
        ray.init(simulated=config if config is not None else True, **kw)
        return simrt.current_simulation()

    yield go
    ray.shutdown()
    assert not [t for t in threading.enumerate() if t.name.startswith("penumbra-sim")], "task threads left over"


# ----------------------------------------------------------------- module-level remote code


@ray.remote
def double(x):
    return 2 * x


@ray.remote
def add(a, b=0):
    return a + b


@ray.remote(num_returns=3)
def three(x):
    return x, x + 1, x + 2


@ray.remote
def where():
    ctx = ray.get_runtime_context()
    return ctx.get_node_id(), ctx.get_worker_id()


class Boom(ValueError):
    pass


@ray.remote(max_retries=0)
def boom(msg="bad"):
    raise Boom(msg)


@ray.remote
def tree(depth, width):
    if depth == 0:
        return 1
    return sum(ray.get([tree.remote(depth - 1, width) for _ in range(width)]))


@ray.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def inc(self, by=1):
        self.n += by
        return self.n

    def value(self):
        return self.n


# ----------------------------------------------------------------- tasks


def test_tasks_multiple_returns_and_ref_arguments(start):
    sim = start()
    assert ray.get(double.remote(21)) == 42
    assert ray.get(three.remote(1)) == [1, 2, 3]
    assert ray.get(add.remote(double.remote(5), b=double.remote(1))) == 12
    assert ray.get([double.remote(i) for i in range(10)]) == [2 * i for i in range(10)]
    assert sim.now > 0 and ray.is_initialized()


def test_refs_nested_in_containers_stay_refs(start):
    start()
    inner = double.remote(4)

    @ray.remote
    def look(d):
        ref = d["r"][0]
        assert isinstance(ref, ray.ObjectRef)
        return ray.get(ref) + 1

    assert ray.get(look.remote({"r": [inner]})) == 9


def test_nested_tasks_and_puts_inside_tasks(start):
    start()
    assert ray.get(tree.remote(3, 3)) == 27

    @ray.remote
    def concat(a, b):
        return a + b

    @ray.remote
    def producer(n):
        ref = ray.put(list(range(n)))
        return ray.get(concat.remote(ref, [n])), where.remote()

    value, inner = ray.get(producer.remote(3))
    assert value == [0, 1, 2, 3]
    node, worker = ray.get(inner)
    assert node == "node:0" and worker.startswith("node:0/w")


def test_a_worker_blocked_in_get_lends_its_cpu(start):
    start(SimConfig(num_cpus=1))  # one CPU: the child can only run if the parent lends it
    assert ray.get(tree.remote(2, 2)) == 4


def test_runtime_context_inside_tasks_and_driver(start):
    start(SimConfig(nodes=2))
    ctx = ray.get_runtime_context()
    assert ctx.get_node_id() == "node:0" and ctx.get_task_id() is None
    node, worker = ray.get(where.remote())
    assert worker != ctx.get_worker_id() and worker.startswith(node + "/")


def test_async_actor_methods_run(start):
    start()

    @ray.remote
    class Async:
        async def hello(self, x):
            return f"hi {x}"

    a = Async.remote()
    assert ray.get([a.hello.remote(i) for i in range(3)]) == ["hi 0", "hi 1", "hi 2"]


# ----------------------------------------------------------------- actors


def test_actor_calls_run_in_order_with_state(start):
    start()
    c = Counter.remote(10)
    assert ray.get([c.inc.remote() for _ in range(20)]) == list(range(11, 31))

    @ray.remote
    def bump(counter, k):
        return ray.get(counter.inc.remote(k))

    ray.get([bump.remote(c, 1) for _ in range(5)])
    assert ray.get(c.value.remote()) == 35


def test_named_actor_lookup_and_duplicate_name(start):
    start()
    Counter.options(name="shared").remote(5)
    h = ray.get_actor("shared")
    assert ray.get(h.inc.remote()) == 6
    with pytest.raises(ValueError, match="already exists"):
        Counter.options(name="shared").remote()
    same = Counter.options(name="shared", get_if_exists=True).remote()
    assert ray.get(same.value.remote()) == 6
    with pytest.raises(ValueError):
        ray.get_actor("nobody")


def test_killed_actor_raises_actor_died(start):
    start()
    c = Counter.remote()
    assert ray.get(c.inc.remote()) == 1
    ray.kill(c)
    with pytest.raises(exc.ActorDiedError):
        ray.get(c.inc.remote())


def test_actor_restored_from_checkpoint_after_its_node_crashes(start):
    sim = start(SimConfig(nodes=[{"CPU": 2}, {"CPU": 2, "spot": 1}],
                          faults=[(1.0, CrashNode("node:1", restart_after=0.2))]))

    @ray.remote(resources={"spot": 1}, max_restarts=1, checkpoint_interval=3, replay=True, max_task_retries=-1)
    class Ledger:
        def __init__(self):
            self.n = 0
            self.restored = False

        def inc(self):
            self.n += 1
            return self.n

        def where(self):
            return ray.get_runtime_context().get_node_id(), self.restored

        def __penumbra_checkpoint__(self):
            return {"n": self.n}

        def __penumbra_restore__(self, state):
            self.n = state["n"]
            self.restored = True

    a = Ledger.remote()
    assert ray.get([a.inc.remote() for _ in range(7)]) == list(range(1, 8))
    assert ray.get(a.where.remote()) == ("node:1", False)
    simrt.sleep(2.0)  # the node dies at 1.0 and a new one joins at 1.2
    assert ray.get([a.inc.remote() for _ in range(2)]) == [8, 9]  # checkpoint at 6, then replay
    node, restored = ray.get(a.where.remote())
    assert node == "node:2" and restored
    assert [e[1] for e in sim.cluster.events] == ["crash", "join"]


# ----------------------------------------------------------------- errors


def test_task_error_is_also_the_users_exception(start):
    start()
    with pytest.raises(Boom) as info:
        ray.get(boom.remote("kaput"))
    assert isinstance(info.value, exc.TaskError) and isinstance(info.value, ValueError)
    assert "kaput" in str(info.value)
    # through a dependency: the downstream task fails with the upstream error
    with pytest.raises(Boom):
        ray.get(double.remote(boom.remote()))

    @ray.remote(num_returns=2)
    def one():
        return 1

    a, _ = one.remote()
    with pytest.raises(ValueError, match="num_returns=2"):
        ray.get(a)


def test_retry_exceptions_reruns_the_task(start):
    sim = start()

    @ray.remote(max_retries=3, retry_exceptions=[KeyError])
    def flaky():
        from penumbra.api.context import task_context

        attempt = task_context().attempt
        if attempt < 2:
            raise KeyError(attempt)
        return attempt

    assert ray.get(flaky.remote()) == 2
    assert [e[4] for e in sim.executions if e[3].endswith("flaky")] == [0, 1, 2]

    @ray.remote(max_retries=3, retry_exceptions=[KeyError])
    def other():
        raise TypeError("not retried")

    with pytest.raises(TypeError):
        ray.get(other.remote())
    assert sum(1 for e in sim.executions if e[3].endswith("other")) == 1


def test_cancel_queued_running_and_forced(start):
    sim = start(SimConfig(num_cpus=1))

    @ray.remote
    def long():
        simrt.sleep(100)
        return 1

    first = long.remote()
    queued = long.remote()
    ray.cancel(queued)
    with pytest.raises(exc.TaskCancelledError):
        ray.get(queued)
    simrt.sleep(1.0)
    ray.cancel(first)  # running: interrupted at its next API call
    with pytest.raises(exc.TaskCancelledError):
        ray.get(first)
    forced = long.remote()
    simrt.sleep(1.0)
    ray.cancel(forced, force=True)
    with pytest.raises(exc.TaskCancelledError):
        ray.get(forced)
    assert sim.now < 50  # none of them slept its 100 virtual seconds
    assert ray.get(double.remote(1)) == 2


# ----------------------------------------------------------------- virtual time


def test_get_timeout_is_in_virtual_time(start):
    sim = start(SimConfig(task_time=lambda spec: 30.0 if spec.display_name().endswith("slow") else 0.001))

    @ray.remote
    def slow():
        return "done"

    ref = slow.remote()
    t0, w0 = sim.now, time.monotonic()
    with pytest.raises(exc.GetTimeoutError):
        ray.get(ref, timeout=5)
    assert 5.0 <= sim.now - t0 < 5.1
    assert ray.get(ref) == "done"
    assert sim.now - t0 >= 30.0
    assert time.monotonic() - w0 < 10  # 30 virtual seconds are not 30 real ones


def test_virtual_sleep_advances_time_and_time_sleep_does_not(start):
    sim = start()

    @ray.remote
    def nap(virtual, real):
        t = simrt.now()
        simrt.sleep(virtual)
        time.sleep(real)
        return simrt.now() - t

    assert ray.get(nap.remote(0, 0.2)) < 0.01
    assert 3.0 <= ray.get(nap.remote(3.0, 0)) < 3.01
    t = sim.now
    simrt.sleep(2.5)
    assert sim.now == pytest.approx(t + 2.5)


def test_wait_num_returns_and_timeout(start):
    sim = start(SimConfig(num_cpus=4, task_time=lambda spec: float(spec.name or 0.001)))

    @ray.remote
    def value(x):
        return x

    refs = [value.options(name=str(d)).remote(i) for i, d in enumerate([3.0, 1.0, 2.0, 50.0])]
    t0 = sim.now
    ready, not_ready = ray.wait(refs, num_returns=2)
    assert ready == [refs[1], refs[2]] and not_ready == [refs[0], refs[3]]
    assert 2.0 <= sim.now - t0 < 2.1  # the 2nd fastest ends after 2 virtual seconds
    t1 = sim.now
    ready, not_ready = ray.wait(refs, num_returns=4, timeout=10)
    assert ready == refs[:3] and not_ready == [refs[3]]
    assert 10.0 <= sim.now - t1 < 10.1
    assert ray.get(refs) == [0, 1, 2, 3]


def test_a_deadlocked_get_is_reported_as_stalled(start):
    sim = start(SimConfig(max_blocking_time=5))

    @ray.remote
    class Selfish:
        def outer(self, me):
            return ray.get(me.inner.remote())  # waits for itself: max_concurrency=1

        def inner(self):
            return 1

    s = Selfish.remote()
    t0 = sim.now
    with pytest.raises(SimulationStalled, match="deadlocked"):
        ray.get(s.outer.remote(s))
    assert 5 <= sim.now - t0 < 6

    @ray.remote
    def sleepy():
        simrt.sleep(12)  # running towards an end: not a deadlock
        return "awake"

    assert ray.get(sleepy.remote()) == "awake"


# ----------------------------------------------------------------- objects


def test_put_get_numpy_arrays_copy_semantics_and_sizes(start):
    sim = start()
    a = np.arange(200_000, dtype=np.int64)  # 1.6 MB
    ref = ray.put(a)
    a[0] = -1  # the stored copy does not change
    b = ray.get(ref)
    assert b[0] == 0 and b.sum() == np.arange(200_000).sum()
    assert not b.flags.writeable
    size, data = sim.cluster.nodes["node:0"].store[ref.id]
    assert size == len(data) and a.nbytes <= size < a.nbytes + 4096

    @ray.remote
    def total(x):
        return int(x.sum())

    assert ray.get(total.remote(ref)) == int(np.arange(200_000).sum())
    assert ray.get(total.remote(np.ones(100_000))) == 100_000  # big argument: an implicit put

    @ray.remote
    def make(n):
        return np.full(n, 7, dtype=np.uint8)

    out = ray.get(make.remote(300_000))
    assert out.shape == (300_000,) and int(out.sum()) == 7 * 300_000


def test_a_private_put_is_freed_when_its_last_ref_dies_and_a_shared_one_is_kept(start):
    sim = start()
    node = sim.cluster.nodes["node:0"]
    store = node.machine.objects.store
    private = ray.put(np.ones(100_000))
    shared = ray.put(np.ones(100_000))

    @ray.remote
    class Keeper:
        def __init__(self):
            self.kept = None

        def keep(self, box):
            self.kept = box[0]  # a ref nested in an argument: it left the driver
            return True

        def total(self):
            return int(ray.get(self.kept).sum())

    k = Keeper.remote()
    assert ray.get(k.keep.remote([shared]))
    pid, sid = private.id, shared.id
    assert pid in store and sid in store
    del private, shared
    assert ray.get(double.remote(1)) == 2  # a round trip after the releases
    assert pid not in store and pid not in node.store and node.machine.objects.freed == 1
    assert sid in store  # (still pinned here: the simulation's refcounts are one process's, the actor's ref counts)
    assert ray.get(k.total.remote()) == 100_000


def test_objects_cross_nodes(start):
    start(SimConfig(nodes=[{"CPU": 2}, {"CPU": 2, "far": 1}]))

    @ray.remote(resources={"far": 1})
    def far(x):
        return ray.get_runtime_context().get_node_id(), int(x.sum())

    ref = ray.put(np.ones(50_000))
    assert ray.get(far.remote(ref)) == ("node:1", 50_000)


# ----------------------------------------------------------------- determinism


def _program(ray):
    c = Counter.remote()
    refs = [add.remote(double.remote(i), i) for i in range(12)]
    nested = tree.remote(2, 3)
    got = ray.get(refs) + [ray.get(nested)]
    calls = ray.get([c.inc.remote(i) for i in range(5)])
    arr = ray.get(ray.put(np.arange(1000)))
    ready, _ = ray.wait([double.remote(i) for i in range(6)], num_returns=3)
    return got, calls, int(arr.sum()), [ray.get(r) for r in ready], ray.get([where.remote() for _ in range(8)])


def test_same_seed_same_results_and_trace_hash():
    runs = []
    for _ in range(2):
        ray.init(simulated=SimConfig(nodes=3, seed=7, layout=SPREAD))
        try:
            sim = simrt.current_simulation()
            result = _program(ray)
            runs.append((result, sim.trace_hash(), sim.now, list(sim.executions)))
        finally:
            ray.shutdown()
    assert runs[0][0] == runs[1][0]
    assert runs[0][1] == runs[1][1] and runs[0][1]
    assert runs[0][2] == runs[1][2]
    assert runs[0][3] == runs[1][3]


# ----------------------------------------------------------------- faults and many nodes


def test_node_crash_from_the_fault_schedule_retries_its_task(start):
    sim = start(SimConfig(nodes=2, num_cpus=1, task_time=1.0, layout=SPREAD,
                          faults=[(0.5, CrashNode("node:1"))]))

    @ray.remote
    def work(i):
        return i * 10

    assert ray.get([work.remote(i) for i in range(4)]) == [0, 10, 20, 30]
    on_dead = [e for e in sim.executions if e[1] == "node:1"]
    assert on_dead, "nothing ran on node:1 before it crashed"
    assert any(e[1] == "node:0" and e[4] >= 1 for e in sim.executions), "no task was retried"
    assert ("crash", "node:1") in [(e[1], e[2]) for e in sim.cluster.events]
    alive = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
    assert alive == {"node:0": True, "node:1": False}


def test_four_nodes_spread_tasks(start):
    sim = start(SimConfig(nodes=4, num_cpus=1, task_time=0.1, layout=SPREAD))
    assert ray.cluster_resources() == {"CPU": 4.0, "memory": 4.0 * simrt.default_memory_resource(1 << 30)}
    assert len(ray.nodes()) == 4
    t0 = sim.now
    nodes = [n for n, _ in ray.get([where.remote() for _ in range(16)])]
    assert set(nodes) == {"node:0", "node:1", "node:2", "node:3"}
    assert sim.now - t0 < 1.0  # 16 x 0.1 s on one CPU would be 1.6 s


def test_remote_function_exported_in_an_earlier_session_is_exported_again():
    # a RemoteFunction pickled into a task must not carry the descriptor of its
    # export to an earlier cluster (init/shutdown/init) as if it were exported
    for _ in range(2):
        ray.init(simulated=True)
        try:
            @ray.remote
            def outer():
                return ray.get(double.remote(1))  # never called by this session's driver

            assert ray.get(outer.remote()) == 2
            ray.get(double.remote(0))  # exported by the driver: in session 1 only, before the next init
        finally:
            ray.shutdown()


# ----------------------------------------------------------------- configuration


def test_config_validation_and_shapes():
    with pytest.raises(ValueError, match="costs"):
        SimConfig(costs="FAST").cost_model()
    with pytest.raises(ValueError):
        SimConfig(nodes=[{"CPU": 1}]).shapes(num_cpus=2)
    shapes = SimConfig(nodes=2, resources={"disk": 1}).shapes(num_cpus=3)
    memory = float(simrt.default_memory_resource(1 << 30))
    assert shapes[0].resources.to_dict() == {"CPU": 3.0, "disk": 1.0, "memory": memory} and len(shapes) == 2
    with pytest.raises(TypeError):
        simrt.start_simulated(42)


def test_cluster_info_and_shutdown_with_tasks_in_flight(start):
    start(SimConfig(nodes=[{"CPU": 2, "GPU": 1}, {"CPU": 1}]))
    assert ray.cluster_resources() == {"CPU": 3.0, "GPU": 1.0, "memory": 2.0 * simrt.default_memory_resource(1 << 30)}
    assert ray.available_resources()["CPU"] == 3.0

    @ray.remote
    def stuck():
        simrt.sleep(1e6)

    refs = [stuck.remote() for _ in range(3)]
    with pytest.raises(exc.GetTimeoutError):
        ray.get(refs, timeout=1)
    # shutdown (in the fixture) unwinds the three parked task threads


# ----------------------------------------------------------------- ray.util


def test_actor_pool_errors_and_timeouts(start):
    """(ActorPool's results on both drivers: scenarios.actor_pool.)"""
    start()

    @ray.remote
    class Slow:
        def work(self, v):
            simrt.sleep(v)  # virtual time
            return v

    a, b = Slow.remote(), Slow.remote()
    pool = ray.util.ActorPool([a, b])
    with pytest.raises(StopIteration):
        pool.get_next()
    with pytest.raises(TypeError, match="must return the ObjectRef"):
        pool.submit(lambda actor, v: v, 1)
    assert pool.has_free()  # the actor came back after the bad submission
    with pytest.raises(ValueError, match="already in the pool"):
        pool.push(a)
    pool.submit(lambda actor, v: actor.work.remote(v), 5.0)
    pool.submit(lambda actor, v: actor.work.remote(v), 0.1)
    pool.submit(lambda actor, v: actor.work.remote(v), 0.2)  # waits for an actor
    assert not pool.has_free() and pool.pop_idle() is None
    assert pool.get_next_unordered() == 0.1
    with pytest.raises(ValueError, match="get_next_unordered"):
        pool.get_next()
    with pytest.raises(TimeoutError):
        pool.get_next_unordered(timeout=0.05)
    assert sorted(pool.get_next_unordered() for _ in range(2)) == [0.2, 5.0]
    assert not pool.has_next()
    # in order again once drained; a timed-out result can be given up
    pool.submit(lambda actor, v: actor.work.remote(v), 3.0)
    pool.submit(lambda actor, v: actor.work.remote(v), 0.1)
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.5, ignore_if_timedout=True)
    assert pool.get_next() == 0.1 and not pool.has_next()


def test_generator_functions_stream_or_collect_num_returns(start):
    start()

    @ray.remote
    def gen(n):
        yield from range(n)

    assert ray.get(list(gen.remote(3))) == [0, 1, 2]  # streams by default, as in Ray
    assert ray.get(list(gen.options(num_returns=3).remote(3))) == [0, 1, 2]
    # a generator gives its first num_returns values, as in Ray; fewer is an error
    assert ray.get(list(gen.options(num_returns=2).remote(3))) == [0, 1]
    with pytest.raises(ValueError, match="num_returns=4 but returned 3 values"):
        ray.get(gen.options(num_returns=4).remote(3)[0])


def test_memory_requests_run_on_simulated_nodes(start):
    start(SimConfig(nodes=2, num_cpus=1))
    per_node = simrt.default_memory_resource(1 << 30)

    @ray.remote(memory=per_node)
    def whole_node():
        return ray.get_runtime_context().get_node_id()

    assert ray.get([whole_node.remote(), whole_node.remote()]) and ray.cluster_resources()["memory"] == 2 * per_node
    # more than any node has: infeasible, so it stays pending
    with pytest.raises(ray.exceptions.GetTimeoutError):
        ray.get(whole_node.options(memory=per_node + 1).remote(), timeout=5)


def test_is_canceled_inside_a_cancelled_task(start, tmp_path):
    start(SimConfig(num_cpus=1))
    seen = tmp_path / "seen"  # (the task is a pickled copy: it reports through a file)

    @ray.remote
    def long(path):
        try:
            simrt.sleep(100)
        except KeyboardInterrupt:
            with open(path, "w") as f:
                f.write(str(ray.get_runtime_context().is_canceled()))
            raise
        return 1

    ref = long.remote(str(seen))
    simrt.sleep(1.0)
    ray.cancel(ref)
    with pytest.raises(exc.TaskCancelledError):
        ray.get(ref)
    simrt.sleep(0.01)  # (the node reports the cancel at once; the task's handler runs at the same instant, after)
    assert seen.read_text() == "True"
