"""Actor lifecycle with Ray's semantics (issue 13), on the real runtime and
on the simulator: cancel of actor calls, owned actors dying with their
owner, get-if-exists, async ``__init__`` and ``__ray_shutdown__``."""

from __future__ import annotations

import asyncio
import time

import pytest

import penumbra as ray
from penumbra import exceptions as exc

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(params=["real", "sim"], scope="module")
def driver(request):
    ray.init(num_cpus=2, simulated=request.param == "sim")
    try:
        yield request.param
    finally:
        ray.shutdown()


def nap(seconds: float) -> None:
    """Sleep in the time of the runtime we run on (virtual on the simulator,
    where ``time.sleep`` would stop the whole simulation)."""
    from penumbra.api.context import current_runtime

    if getattr(current_runtime(), "sim", None) is not None:
        from penumbra.sim.runtime import sleep

        sleep(seconds)
    else:
        time.sleep(seconds)


def until(cond, what: str, driver: str, limit: float = 60.0) -> None:
    """Poll ``cond`` (which calls the API) until it holds, or fail."""
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        nap(0.02)


@ray.remote
class Flag:
    def __init__(self):
        self.up = False

    def set(self):
        self.up = True

    def is_set(self):
        return self.up


@ray.remote
def slow(seconds):
    nap(seconds)
    return seconds


@ray.remote
class Worker:
    def __init__(self):
        self.saw_cancel = False
        self.runs = 0

    def poll(self, flag):
        """Runs until cancel is asked for (is_canceled), at most ~20 s."""
        flag.set.remote()
        for _ in range(2000):
            if ray.get_runtime_context().is_canceled():
                self.saw_cancel = True
                return "canceled"
            nap(0.01)
        return "completed"

    def count(self, *inputs):
        self.runs += 1
        return self.runs

    def state(self):
        return self.saw_cancel, self.runs


def test_cancel_of_running_and_queued_sync_actor_calls(driver):
    """Ray: a running sync actor task is not interrupted (it sees
    is_canceled() and get raises TaskCancelledError); queued calls, at the
    worker or at the host waiting for an input, are cancelled and never run;
    the actor serves later calls."""
    a = Worker.remote()
    flag = Flag.remote()
    running = a.poll.remote(flag)
    until(lambda: ray.get(flag.is_set.remote()), "the call to start", driver)
    pipelined = a.count.remote()  # sent ahead to the actor's worker
    dep = slow.remote(3.0)
    waiting = a.count.remote(dep)  # queued at the host for its input
    ray.cancel(waiting)
    ray.cancel(pipelined)
    ray.cancel(running)
    for ref in (running, pipelined, waiting):
        with pytest.raises(exc.TaskCancelledError):
            ray.get(ref, timeout=60)
    # the running call went on to see the flag (not interrupted); the
    # cancelled queued calls never ran
    assert ray.get(a.state.remote(), timeout=60) == (True, 0)
    assert ray.get(a.count.remote(), timeout=60) == 1
    assert ray.get(dep, timeout=60) == 3.0


@ray.remote
class AsyncWorker:
    def __init__(self):
        self.cancelled = False

    async def wait(self, flag):
        flag.set.remote()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return "completed"

    async def seen(self):
        return self.cancelled


def test_cancel_of_running_async_actor_call(driver):
    """Ray: a running async actor task's asyncio task is cancelled."""
    if driver == "sim":
        pytest.skip("an async method awaiting in wall time blocks the simulator (see penumbra.sim.runtime)")
    a = AsyncWorker.remote()
    flag = Flag.remote()
    ref = a.wait.remote(flag)
    until(lambda: ray.get(flag.is_set.remote()), "the call to start", driver)
    t0 = time.monotonic()
    ray.cancel(ref)
    with pytest.raises(exc.TaskCancelledError):
        ray.get(ref, timeout=30)
    assert time.monotonic() - t0 < 30
    assert ray.get(a.seen.remote(), timeout=30) is True


def test_force_cancel_of_an_actor_call_is_refused(driver):
    a = Worker.remote()
    ref = a.count.remote()
    with pytest.raises(ValueError, match="force=True is not supported for actor tasks"):
        ray.cancel(ref, force=True)
    assert ray.get(ref, timeout=60) == 1
    # cancel of a finished call does nothing
    ray.cancel(ref)
    assert ray.get(ref, timeout=60) == 1


@ray.remote
class AsyncInit:
    async def __init__(self, value):
        await asyncio.sleep(0)
        self.value = value
        # (on the real runtime, a task started here lives on the actor's loop)
        self.loop_id = id(asyncio.get_running_loop())

    async def get(self):
        return self.value, self.loop_id == id(asyncio.get_running_loop())


@ray.remote
class AsyncInitFails:
    async def __init__(self):
        raise KeyError("no config")

    async def get(self):
        return 1


def test_async_init(driver):
    """Ray runs an async actor's ``async def __init__`` on its event loop."""
    a = AsyncInit.remote(7)
    value, same_loop = ray.get(a.get.remote(), timeout=60)
    assert value == 7
    if driver == "real":
        assert same_loop  # (the simulator runs each async call on a loop of its own)
    b = AsyncInitFails.remote()
    with pytest.raises(exc.ActorDiedError, match="no config"):
        ray.get(b.get.remote(), timeout=60)


@ray.remote(max_restarts=-1)
class Child:
    def ping(self):
        return "hello"


@ray.remote
class Parent:
    def make(self, detached_name):
        self.child = Child.remote()
        self.detached = Child.options(name=detached_name, lifetime="detached").remote()
        return self.child, self.detached


@ray.remote
def make_child():
    return Child.remote()


def _dies(handle, driver: str) -> None:
    """Calls to ``handle`` end with ActorDiedError soon (the death is
    asynchronous: a call made a moment after the owner's death may still
    run first)."""
    def dead():
        try:
            ray.get(handle.ping.remote(), timeout=30)
        except exc.ActorDiedError as e:
            assert "owner" in str(e), str(e)
            return True
        return False

    until(dead, "the owned actor to die", driver)


def test_owned_actors_die_with_their_owner(driver):
    """Ray's fate sharing: an actor created by an actor dies when its
    creator's worker dies, even with max_restarts=-1; a detached one lives."""
    parent = Parent.remote()
    child, detached = ray.get(parent.make.remote(f"detached-{driver}"), timeout=60)
    assert ray.get(child.ping.remote(), timeout=60) == "hello"
    ray.kill(parent)
    _dies(child, driver)
    assert ray.get(detached.ping.remote(), timeout=60) == "hello"
    ray.kill(detached)


def test_actor_made_by_a_task_outlives_the_task(driver):
    """The owner is the worker process, not the task: when the task that
    made an actor returns, its worker lives on, and so does the actor."""
    child = ray.get(make_child.remote(), timeout=60)
    assert ray.get(child.ping.remote(), timeout=60) == "hello"
    assert ray.get([slow.remote(0.01) for _ in range(4)], timeout=60) == [0.01] * 4
    assert ray.get(child.ping.remote(), timeout=60) == "hello"


@ray.remote
class Tidy:
    def __init__(self, path):
        self.path = path
        self.calls = 0

    def work(self):
        self.calls += 1
        return self.calls

    def __ray_shutdown__(self):
        with open(self.path, "w") as f:
            f.write(f"cleaned after {self.calls}")


def test_ray_terminate_runs_ray_shutdown_after_earlier_calls(driver, tmp_path):
    """Ray: ``__ray_terminate__`` is queued like a call; the actor then
    runs ``__ray_shutdown__`` and exits for good."""
    path = tmp_path / "cleaned"
    a = Tidy.remote(str(path))
    refs = [a.work.remote() for _ in range(3)]
    end = a.__ray_terminate__.remote()
    assert ray.get(refs, timeout=60) == [1, 2, 3]
    with pytest.raises(exc.ActorDiedError):
        ray.get(end, timeout=60)
    assert path.read_text() == "cleaned after 3"
    with pytest.raises(exc.ActorDiedError):
        ray.get(a.work.remote(), timeout=60)


@ray.remote
class Quits:
    def __init__(self, path):
        self.path = path
        self.calls = 0

    def work(self):
        self.calls += 1
        return self.calls

    def __ray_shutdown__(self):
        with open(self.path, "w") as f:
            f.write(f"cleaned after {self.calls}")

    def quit(self):
        from penumbra.actor import exit_actor

        exit_actor()


@ray.remote
class AsyncQuits:
    def __init__(self, path):
        self.path = path

    async def quit(self):
        from penumbra.actor import exit_actor

        exit_actor()

    async def __ray_shutdown__(self):
        await asyncio.sleep(0)
        with open(self.path, "w") as f:
            f.write("async cleaned")


def test_exit_actor_runs_ray_shutdown(driver, tmp_path):
    """Ray: exit_actor() ends the actor gracefully: __ray_shutdown__ runs
    (an async one is awaited)."""
    path = tmp_path / "cleaned"
    a = Quits.remote(str(path))
    assert ray.get(a.work.remote(), timeout=60) == 1
    with pytest.raises(exc.ActorDiedError):
        ray.get(a.quit.remote(), timeout=60)
    assert path.read_text() == "cleaned after 1"
    if driver == "real":  # (the simulator runs no API call from an async method)
        path2 = tmp_path / "cleaned2"
        b = AsyncQuits.remote(str(path2))
        with pytest.raises(exc.ActorDiedError):
            ray.get(b.quit.remote(), timeout=60)
        assert path2.read_text() == "async cleaned"


def test_kill_does_not_run_ray_shutdown(driver, tmp_path):
    """Ray: ``penumbra.kill`` ends the actor at once, without cleanup."""
    path = tmp_path / "cleaned"
    a = Tidy.remote(str(path))
    assert ray.get(a.work.remote(), timeout=60) == 1
    ray.kill(a)
    with pytest.raises(exc.ActorDiedError):
        ray.get(a.work.remote(), timeout=60)
    assert not path.exists()


SHUTDOWN_DRIVER = """
import sys
import penumbra as ray

address, token, out = sys.argv[1:4]
ray.init(address=address, _token=token)


@ray.remote
class Tidy:
    def __init__(self, name):
        self.name = name

    def ping(self):
        return self.name

    def __ray_shutdown__(self):
        with open(f"{out}/{self.name}", "w") as f:
            f.write("cleaned")


@ray.remote
class Async:
    async def ping(self):
        return "async"

    async def __ray_shutdown__(self):
        with open(f"{out}/async", "w") as f:
            f.write("cleaned")


a, b, c = Tidy.remote("ends-with-job"), Tidy.remote("killed"), Async.remote()
assert ray.get([a.ping.remote(), b.ping.remote(), c.ping.remote()]) == ["ends-with-job", "killed", "async"]
ray.kill(b)
print("ok", flush=True)
# and exit: the job ends
"""


@pytest.mark.timeout(180)
def test_job_end_runs_ray_shutdown_but_kill_does_not(tmp_path):
    """Ray: when the job ends, its actors end gracefully: their
    ``__ray_shutdown__`` runs (sync or async); ``penumbra.kill`` skips it."""
    import os
    import subprocess
    import sys

    from penumbra.transports.launch import Cluster

    cluster = Cluster(head_node_args={"num_cpus": 2})
    try:
        script = tmp_path / "driver.py"
        script.write_text(SHUTDOWN_DRIVER)
        out = tmp_path / "out"
        out.mkdir()
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
        p = subprocess.run([sys.executable, str(script), cluster.address, cluster.token, str(out)],
                           capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 0 and p.stdout.startswith("ok"), (p.stdout, p.stderr)
        deadline = time.monotonic() + 60
        while len(os.listdir(out)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(os.listdir(out)) == ["async", "ends-with-job"]
        assert (out / "ends-with-job").read_text() == "cleaned"
    finally:
        cluster.shutdown()
