"""The public API on the real runtime: real daemon, workers, sockets, shm.

One embedded cluster serves the whole module (starting one costs about a
second); tests that need their own cluster shape live elsewhere.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import penumbra as ray
from penumbra import exceptions as exc

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(num_cpus=2, object_store_memory=256 << 20, _system_config={"validate": True})
    yield
    ray.shutdown()


@ray.remote
def double(x):
    return 2 * x


@ray.remote(num_returns=3)
def three(x):
    return x, x + 1, x + 2


@ray.remote
def add(a, b=0):
    return a + b


@ray.remote
def identity(x):
    return x


class Boom(ValueError):
    pass


@ray.remote(max_retries=0)
def boom(msg="bad"):
    raise Boom(msg)


# --------------------------------------------------------------------- tasks


def test_task_and_multiple_returns():
    assert ray.get(double.remote(21)) == 42
    refs = three.remote(1)
    assert isinstance(refs, list) and len(refs) == 3
    assert ray.get(refs) == [1, 2, 3]


def test_kwargs_and_ref_arguments_are_resolved():
    a = double.remote(5)
    assert ray.get(add.remote(a, b=double.remote(1))) == 12


def test_refs_nested_in_containers_stay_refs():
    inner = double.remote(4)

    @ray.remote
    def look(d):
        ref = d["r"][0]
        assert isinstance(ref, ray.ObjectRef)
        return ray.get(ref) + 1

    assert ray.get(look.remote({"r": [inner]})) == 9


def test_nested_tasks_do_not_deadlock_on_two_cpus():
    @ray.remote
    def parent(n):
        return sum(ray.get([double.remote(i) for i in range(n)]))

    @ray.remote
    def grandparent():
        return ray.get([parent.remote(5) for _ in range(4)])

    assert ray.get(grandparent.remote()) == [20] * 4


def test_direct_call_is_a_type_error():
    with pytest.raises(TypeError, match=r"double\.remote\(\)"):
        double(1)


def test_bad_options_are_reported_where_made():
    with pytest.raises(TypeError, match="num_cpu"):
        ray.remote(num_cpu=1)(lambda: 1)
    with pytest.raises(ValueError, match="num_cpus"):
        double.options(num_cpus=-1)
    with pytest.raises(ValueError, match="num_gpus"):
        double.options(resources={"GPU": 1})


def test_unserializable_argument_names_argument_and_object():
    lock = threading.Lock()
    with pytest.raises(TypeError) as info:
        identity.remote({"config": {"lock": lock}})
    msg = str(info.value)
    assert "argument 0" in msg and "lock" in msg


# --------------------------------------------------------------------- get/wait/put


def test_get_timeout_raises_get_timeout_error():
    @ray.remote
    def slow():
        time.sleep(5)

    ref = slow.remote()
    with pytest.raises(exc.GetTimeoutError) as info:
        ray.get(ref, timeout=0.2)
    assert isinstance(info.value, TimeoutError)
    ray.cancel(ref, force=True)


def test_get_rejects_non_refs():
    with pytest.raises(ValueError):
        ray.get(3)
    with pytest.raises(TypeError):
        ray.get([double.remote(1), 3])
    assert ray.get([]) == []


def test_wait_returns_in_input_order():
    @ray.remote
    def sleepy(t):
        time.sleep(t)
        return t

    refs = [sleepy.remote(0.6), double.remote(1), double.remote(2)]
    ready, not_ready = ray.wait(refs, num_returns=2, timeout=10)
    assert ready == [refs[1], refs[2]]
    assert not_ready == [refs[0]]
    ready, not_ready = ray.wait(refs, num_returns=3, timeout=10)
    assert ready == refs and not_ready == []


def test_wait_timeout_and_bad_input():
    @ray.remote
    def slow():
        time.sleep(3)

    r = slow.remote()
    ready, not_ready = ray.wait([r], timeout=0.1)
    assert ready == [] and not_ready == [r]
    with pytest.raises(ValueError):
        ray.wait([r, r])
    with pytest.raises(ValueError):
        ray.wait([r], num_returns=2)
    with pytest.raises(TypeError):
        ray.wait(r)
    ray.cancel(r, force=True)


def test_wait_on_a_thousand_refs():
    refs = [double.remote(i) for i in range(1000)]
    ready, not_ready = ray.wait(refs, num_returns=1000, timeout=60)
    assert len(ready) == 1000 and not not_ready
    assert ray.get(refs[-1]) == 1998


def test_a_wait_loop_is_served_by_one_open_watch():
    from penumbra.api.context import current_runtime
    from penumbra.core.messages import WatchObjects

    rt = current_runtime()
    watches = []
    send_now = rt._send_now

    def counting(item):  # (runs on the trio thread)
        if isinstance(getattr(item, "msg", None), WatchObjects):
            watches.append(item.msg)
        send_now(item)

    rt._send_now = counting
    try:
        # process-as-they-come: each result exactly once
        refs = [double.remote(i) for i in range(300)]
        rest, seen = refs, []
        while rest:
            ready, rest = ray.wait(rest, num_returns=1, timeout=60)
            assert len(ready) == 1
            seen.append(ray.get(ready[0]))
        assert sorted(seen) == [2 * i for i in range(300)]
        # the first wait opened a watch on all 300; the rest waited on it
        # (without it: one watch of the remaining refs per round)
        assert len(watches) <= 3, [len(w.object_ids) for w in watches]
        # a loop given up half way: a get of everything still works, and a
        # wait with a timeout over refs the open watch does not cover too
        refs = [double.remote(i) for i in range(100)]
        ready, rest = ray.wait(refs, num_returns=1)
        assert ray.get(refs) == [2 * i for i in range(100)]
        more = [double.remote(i) for i in range(5)]
        ready, rest = ray.wait(more + refs[:3], num_returns=8, timeout=60)
        assert len(ready) == 8 and not rest
    finally:
        rt._send_now = send_now


@ray.remote
class Gate:
    def __init__(self):
        import asyncio

        self.opened = asyncio.Event()

    async def wait(self):
        await self.opened.wait()
        return "opened"

    async def open(self):
        self.opened.set()
        return True


def test_a_wait_is_not_held_behind_another_threads_wait():
    # thread A waits for all of three refs, two of them behind a gate: the
    # node holds A's reports until all three are ready.  Thread B's wait for
    # the one that is ready must not queue behind A's (it used to).
    from penumbra.api.context import current_runtime

    rt = current_runtime()
    gate = Gate.options(max_concurrency=4).remote()
    shut = [gate.wait.remote(), gate.wait.remote()]
    fast = double.remote(21)
    out = {}
    a = threading.Thread(target=lambda: out.setdefault("a", ray.wait(shut + [fast], num_returns=3)))
    a.start()
    deadline = time.monotonic() + 30
    # (A's wait is registered: served by the open watch on the routed path;
    # with direct actor calls, waiting here for the gate's replies while
    # the node watches ``fast``)
    while not rt.machine.pending() and a.is_alive():
        assert time.monotonic() < deadline, "thread A's wait never started"
        time.sleep(0.001)
    ready, rest = ray.wait([fast], num_returns=1, timeout=30)
    assert ready == [fast] and ray.get(fast) == 42
    assert ray.wait(shut, timeout=0)[0] == []  # the gate is still shut
    assert ray.get(gate.open.remote()) is True
    a.join(30)
    assert out["a"] == (shut + [fast], [])


def test_waits_from_several_threads_at_once():
    @ray.remote
    def after(t, x):
        time.sleep(t)
        return x

    refs = [after.remote(0.05 * (i % 4), i) for i in range(40)]
    out: dict[int, list] = {}

    def loop(k, mine):
        got, rest = [], mine
        while rest:
            ready, rest = ray.wait(rest, num_returns=1, timeout=60)
            got += ray.get(ready)
        out[k] = sorted(got)

    threads = [threading.Thread(target=loop, args=(k, refs[k::2])) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out == {0: list(range(0, 40, 2)), 1: list(range(1, 40, 2))}


def test_put_get_small_and_put_of_ref_refused():
    ref = ray.put({"a": [1, 2, 3]})
    assert ray.get(ref) == {"a": [1, 2, 3]}
    assert ray.get(identity.remote(ref)) == {"a": [1, 2, 3]}
    with pytest.raises(TypeError):
        ray.put(ref)


@ray.remote
class Keeper:
    def __init__(self):
        self.kept = None

    def keep(self, box):
        self.kept = box[0]
        return True

    def total(self):
        return int(ray.get(self.kept).sum())


def test_private_put_memory_is_reused_and_a_shared_put_survives_its_owner_dropping_it():
    from penumbra.api.context import current_runtime

    shm = current_runtime().shm
    a = np.ones(8 << 20, dtype=np.uint8)
    private = ray.put(a)
    view = ray.get(private)
    oid = bytes(private.id)
    assert shm.contains(oid)
    del private
    assert not shm.contains(oid)  # deleted by the owner at once: its pages serve the next put
    assert int(view.sum()) == 8 << 20  # a value already read stays valid
    del view
    again = ray.put(a)
    assert int(ray.get(again).sum()) == 8 << 20
    shared = ray.put(a)
    sid = bytes(shared.id)
    k = Keeper.remote()
    assert ray.get(k.keep.remote([shared]))  # the ref left the driver, nested in an argument
    del shared
    assert shm.contains(sid)
    assert ray.get(k.total.remote()) == 8 << 20
    ray.kill(k)


def test_large_numpy_is_zero_copy_and_read_only():
    a = np.arange(4_000_000, dtype=np.float64)
    ref = ray.put(a)
    b = ray.get(ref)
    assert np.array_equal(a, b)
    assert not b.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        b[0] = 1
    # a worker reads it zero-copy too, and returns a large result
    out = ray.get(identity.remote(ref))
    assert np.array_equal(out, a)


def test_arrow_table_round_trip():
    pa = pytest.importorskip("pyarrow")
    t = pa.table({"x": list(range(100_000)), "y": [float(i) for i in range(100_000)]})
    assert ray.get(identity.remote(ray.put(t))).equals(t)


# --------------------------------------------------------------------- errors


def test_task_error_is_also_the_users_class_with_remote_traceback():
    with pytest.raises(Boom) as info:
        ray.get(boom.remote("kaput"))
    e = info.value
    assert isinstance(e, exc.TaskError) and isinstance(e, exc.RayTaskError)
    assert "kaput" in str(e) and "Traceback" in str(e) and "boom" in str(e)


def test_dependent_task_fails_with_same_cause():
    failed = boom.remote("root cause")
    with pytest.raises(Boom, match="root cause"):
        ray.get(add.remote(failed, 1))


def test_retry_exceptions(tmp_path):
    marker = tmp_path / "attempts"

    @ray.remote(max_retries=2, retry_exceptions=[KeyError])
    def flaky(path):
        n = int(open(path).read()) if os.path.exists(path) else 0
        open(path, "w").write(str(n + 1))
        if n < 2:
            raise KeyError("not yet")
        return n

    assert ray.get(flaky.remote(str(marker))) == 2

    @ray.remote(max_retries=2, retry_exceptions=[KeyError])
    def other():
        raise IndexError("not retried")

    with pytest.raises(IndexError):
        ray.get(other.remote())


def test_worker_killed_mid_task_is_retried(tmp_path):
    marker = tmp_path / "crashed"

    @ray.remote(max_retries=1)
    def crash_once(path):
        if not os.path.exists(path):
            open(path, "w").close()
            os.kill(os.getpid(), 9)
        return "survived"

    assert ray.get(crash_once.remote(str(marker)), timeout=60) == "survived"


def test_worker_crash_without_retries_is_worker_crashed_error():
    @ray.remote(max_retries=0)
    def die():
        os._exit(1)

    with pytest.raises(exc.WorkerCrashedError):
        ray.get(die.remote(), timeout=60)


def test_cancel_queued_and_running_tasks():
    @ray.remote
    def sleeper():
        time.sleep(30)

    running = [sleeper.remote() for _ in range(2)]
    time.sleep(0.3)
    queued = sleeper.remote()
    ray.cancel(queued)
    with pytest.raises(exc.TaskCancelledError):
        ray.get(queued, timeout=30)
    for r in running:
        ray.cancel(r, force=True)
    for r in running:
        with pytest.raises(exc.TaskCancelledError):
            ray.get(r, timeout=30)


def test_cancel_interrupts_a_running_task_even_inside_a_blocking_call(tmp_path):
    # Ray raises KeyboardInterrupt in a running task that is cancelled without
    # force; one asleep in time.sleep (a blocking call) is woken by it too
    seen = tmp_path / "seen"

    @ray.remote
    def sleeper(path):
        try:
            open(path + ".started", "w").close()
            time.sleep(60)
        except KeyboardInterrupt:
            with open(path, "w") as f:
                f.write(str(ray.get_runtime_context().is_canceled()))
            raise

    ref = sleeper.remote(str(seen))
    deadline = time.monotonic() + 30
    while not os.path.exists(str(seen) + ".started"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    t0 = time.monotonic()
    ray.cancel(ref)
    with pytest.raises(exc.TaskCancelledError):
        ray.get(ref, timeout=30)
    assert time.monotonic() - t0 < 20  # interrupted, not slept out
    assert seen.read_text() == "True"
    # the worker lives on and serves the next task
    assert ray.get(double.remote(4), timeout=30) == 8
    with pytest.raises(RuntimeError, match="inside a task"):
        ray.get_runtime_context().is_canceled()


def test_infeasible_task_warns_and_stays_pending(caplog):
    @ray.remote(resources={"unobtainium": 1})
    def never():
        return 1

    with caplog.at_level("WARNING", logger="penumbra"):
        ref = never.remote()
        with pytest.raises(exc.GetTimeoutError):
            ray.get(ref, timeout=1.0)
    assert any("unobtainium" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------- actors


@ray.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def inc(self, k=1):
        self.n += k
        return self.n

    def pid(self):
        return os.getpid()

    def die(self):
        os._exit(1)


def test_actor_calls_run_in_order():
    c = Counter.remote(10)
    assert ray.get([c.inc.remote() for _ in range(200)]) == list(range(11, 211))


def test_actor_handle_passed_to_tasks():
    c = Counter.remote()

    @ray.remote
    def bump(counter, k):
        return ray.get(counter.inc.remote(k))

    ray.get([bump.remote(c, 1) for _ in range(10)])
    assert ray.get(c.inc.remote(0)) == 10


def test_actor_direct_instantiation_is_a_type_error():
    with pytest.raises(TypeError, match="Counter.remote"):
        Counter()
    c = Counter.remote()
    with pytest.raises(AttributeError, match="no method"):
        c.nope


def test_named_actor_and_get_actor():
    Counter.options(name="the-counter").remote(100)
    h = ray.get_actor("the-counter")
    assert ray.get(h.inc.remote()) == 101
    with pytest.raises(ValueError, match="already exists"):
        Counter.options(name="the-counter").remote()
    with pytest.raises(ValueError, match="missing-actor"):
        ray.get_actor("missing-actor")


def test_kill_actor_then_calls_raise_actor_died():
    c = Counter.remote()
    assert ray.get(c.inc.remote()) == 1
    ray.kill(c)
    with pytest.raises(exc.ActorDiedError) as info:
        for _ in range(50):
            ray.get(c.inc.remote(), timeout=30)
            time.sleep(0.05)
    assert isinstance(info.value, exc.RayActorError)


def test_actor_restarts_after_crash():
    c = Counter.options(max_restarts=1).remote(5)
    pid1 = ray.get(c.pid.remote())
    with pytest.raises(exc.ActorDiedError):
        ray.get(c.die.remote(), timeout=30)
    # restarted with a fresh state (Ray semantics: constructor re-run)
    deadline = time.time() + 30
    while True:
        try:
            pid2 = ray.get(c.pid.remote(), timeout=30)
            break
        except exc.ActorDiedError:
            assert time.time() < deadline
            time.sleep(0.1)
    assert pid2 != pid1
    assert ray.get(c.inc.remote()) == 6
    with pytest.raises(exc.ActorDiedError):
        ray.get(c.die.remote(), timeout=30)
    with pytest.raises(exc.ActorDiedError):
        ray.get(c.inc.remote(), timeout=30)


def test_threaded_actor_runs_calls_concurrently():
    @ray.remote(max_concurrency=4)
    class Gate:
        def __init__(self):
            self.barrier = threading.Barrier(4, timeout=20)

        def meet(self):
            self.barrier.wait()
            return True

    g = Gate.remote()
    assert ray.get([g.meet.remote() for _ in range(4)], timeout=60) == [True] * 4


def test_async_actor():
    import asyncio

    @ray.remote
    class AsyncWorker:
        async def work(self, x):
            await asyncio.sleep(0.05)
            return x * 3

    a = AsyncWorker.remote()
    t0 = time.time()
    assert ray.get([a.work.remote(i) for i in range(20)], timeout=60) == [3 * i for i in range(20)]
    assert time.time() - t0 < 5  # concurrent, not 20 x 50 ms serial... with slack


# --------------------------------------------------------------------- cluster info


def test_cluster_resources_and_nodes():
    assert ray.cluster_resources()["CPU"] == 2.0
    nodes = ray.nodes()
    assert len(nodes) == 1 and nodes[0]["Alive"]
    assert ray.available_resources().get("CPU", 0) <= 2.0


def test_runtime_context():
    ctx = ray.get_runtime_context()
    assert ctx.get_node_id().startswith("node:")

    @ray.remote
    def where():
        c = ray.get_runtime_context()
        return c.get_task_id(), c.get_node_id()

    tid, nid = ray.get(where.remote())
    assert tid and nid == ctx.get_node_id()


def test_worker_output_reaches_driver(capfd):
    @ray.remote
    def talk():
        print("hello from a worker")
        return os.getpid()

    pid = ray.get(talk.remote())
    deadline = time.time() + 10
    out = ""
    while time.time() < deadline:
        out += capfd.readouterr().out
        if "hello from a worker" in out:
            break
        time.sleep(0.05)
    assert f"(talk pid={pid}) hello from a worker" in out


def test_memory_requests_are_scheduled_against_the_nodes_memory():
    # Ray gives every node a ``memory`` resource (70% of its available RAM)
    total = ray.cluster_resources()["memory"]
    assert total > 0

    @ray.remote(memory=64 << 20)
    def small():
        return ray.get_runtime_context().get_assigned_resources().get("memory")

    assert ray.get(small.remote(), timeout=60) == 64 << 20
    a = Counter.options(memory=32 << 20).remote()
    assert ray.get(a.inc.remote(), timeout=60) == 1
    ray.kill(a)


def test_runtime_keys_are_never_reused_even_when_ids_are():
    # A runtime freed after shutdown() leaves its id() to the next one; state
    # keyed by id() (which functions a cluster has been sent) then leaked into
    # a new cluster that had never seen them, and their tasks never ran.
    from penumbra.api.runtime import Runtime

    R = type("R", (Runtime,), {name: (lambda *a, **k: None) for name in Runtime.__abstractmethods__})
    ids, keys = [], set()
    for _ in range(50):
        rt = R()
        ids.append(id(rt))
        keys.add(rt.key)
        assert rt.key == rt.key
        del rt  # (no cycles: freed at once, so the next one may take its id)
    assert len(keys) == 50
    assert len(set(ids)) < 50  # (the hazard is real: ids were reused)


def test_a_function_runs_on_each_of_many_successive_clusters():
    ray.shutdown()
    try:
        @ray.remote
        def plus_one(x):
            return x + 1

        for i in range(8):
            ray.init(num_cpus=1)
            assert ray.get(plus_one.remote(i), timeout=30) == i + 1
            ray.shutdown()
    finally:
        ray.init(num_cpus=2, object_store_memory=256 << 20, _system_config={"validate": True})
