"""Ray's documented behaviour in small places (issue 13), on the real
runtime and on the simulator.

Each test pins one thing Ray's documentation says and penumbra used to do
differently: a task's unpicklable exception, ``sys.exit()`` in an actor or a
task, read-only numpy arguments, anonymous namespaces, ``ObjectRef`` as an
asyncio future, an actor's ``__repr__`` as the prefix of its output, worker
output at driver exit, and ``ClusterInfo.disconnect()``.  The ones about a
whole driver's life (its exit, a second job) run a driver as a subprocess.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import penumbra as ray
from penumbra import exceptions as exc

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent


def run_driver(code: str, tmp_path: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``code`` as a driver program of its own (this checkout on the
    path, a private PENUMBRA_HOME); its completed process."""
    script = tmp_path / f"driver_{len(list(tmp_path.glob('driver_*.py')))}.py"
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
               PENUMBRA_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)


# -- 1. an unpicklable exception keeps a readable cause ------------------------

class Locked(Exception):
    """An exception that cannot be pickled (it holds a lock), of a class that can."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code
        self.lock = threading.Lock()


@ray.remote
def raise_locked():
    raise Locked("the door is locked", 7)


@ray.remote
def raise_unpicklable_class():
    import threading

    class Odd(Exception):
        guard = threading.Lock()  # the class itself cannot be pickled either

    raise Odd("odd failure")


def test_an_unpicklable_exception_becomes_a_stand_in_of_its_own_class(driver):
    with pytest.raises(Locked) as info:
        ray.get(raise_locked.remote(), timeout=60)
    e = info.value
    assert isinstance(e, exc.TaskError)
    assert type(e.cause) is Locked and e.cause.args == ("the door is locked",)
    assert e.code == 7 and e.cause.code == 7  # what could be pickled is kept
    assert "lock" not in vars(e.cause)
    assert str(e).startswith("Locked: task")


def test_an_unpicklable_exception_of_an_unpicklable_class_keeps_its_repr(driver):
    with pytest.raises(exc.TaskError) as info:
        ray.get(raise_unpicklable_class.remote(), timeout=60)
    e = info.value
    assert isinstance(e.cause, exc.UnserializableException)
    assert e.cause.type_name == "Odd" and "odd failure" in e.cause.original_repr
    assert str(e).startswith("Odd: task")


# -- 8. sys.exit() in an actor or a task ----------------------------------------

@ray.remote(max_restarts=2)
class Quitter:
    def __init__(self):
        self.calls = 0

    def ping(self):
        self.calls += 1
        return self.calls

    def quit(self):
        sys.exit()

    def crash(self):
        sys.exit(1)


@ray.remote(max_retries=2)
def task_exits():
    sys.exit(0)


@ray.remote(max_retries=0)
def task_crashes():
    sys.exit(3)


@ray.remote(max_retries=1)
def task_crashes_once(marker):
    if not os.path.exists(marker):
        open(marker, "w").close()
        sys.exit(1)
    return "second attempt"


def test_sys_exit_in_an_actor_method_ends_the_actor_for_good(driver):
    q = Quitter.remote()
    assert ray.get(q.ping.remote(), timeout=60) == 1
    with pytest.raises(exc.ActorDiedError):
        ray.get(q.quit.remote(), timeout=60)
    with pytest.raises(exc.RayActorError):  # no restart, whatever max_restarts says
        ray.get(q.ping.remote(), timeout=60)


def test_a_non_zero_sys_exit_in_an_actor_method_is_a_crash_it_restarts_from(driver):
    q = Quitter.remote()
    assert ray.get(q.ping.remote(), timeout=60) == 1
    with pytest.raises(exc.RayActorError):
        ray.get(q.crash.remote(), timeout=60)
    assert ray.get(q.ping.remote(), timeout=60) == 1  # restarted: a fresh instance


def test_sys_exit_in_a_task_fails_it_and_never_exits_the_driver(driver, tmp_path):
    with pytest.raises(exc.WorkerCrashedError, match=r"sys.exit\(0\)") as info:
        ray.get(task_exits.remote(), timeout=60)
    assert not isinstance(info.value, SystemExit)
    with pytest.raises(exc.WorkerCrashedError) as info:
        ray.get(task_crashes.remote(), timeout=60)
    assert not isinstance(info.value, SystemExit)
    # a non-zero status is a crash: retried like any other (max_retries)
    assert ray.get(task_crashes_once.remote(str(tmp_path / "crashed")), timeout=60) == "second attempt"


# -- 5. numpy arguments are read-only -------------------------------------------

@ray.remote
def try_to_write(a, nested):
    out = []
    for arr in (a, nested["inside"][0]):
        try:
            arr[0] = 1
            out.append("written")
        except ValueError as e:
            out.append(str(e))
    return out


def test_numpy_arguments_are_read_only_small_or_large(driver):
    ro = "assignment destination is read-only"
    assert ray.get(try_to_write.remote(np.zeros(100), {"inside": [np.arange(4)]}), timeout=60) == [ro, ro]
    assert ray.get(try_to_write.remote(np.zeros(1 << 18), {"inside": [np.zeros(3)]}), timeout=60) == [ro, ro]


# -- 7. a job without namespace= gets an anonymous one of its own ---------------

@ray.remote
class Named:
    def namespace(self):
        return ray.get_runtime_context().namespace


@ray.remote
def look_up(name):
    return ray.get_runtime_context().namespace, ray.get(ray.get_actor(name).namespace.remote())


def test_a_job_without_a_namespace_gets_a_fresh_anonymous_one(driver):
    ns = ray.get_runtime_context().namespace
    assert ns  # not the shared "" of every job
    a = Named.options(name="fidelity-named").remote()
    assert ray.get(a.namespace.remote(), timeout=60) == ns
    assert ray.get(look_up.remote("fidelity-named"), timeout=60) == (ns, ns)
    assert ray.get(ray.get_actor("fidelity-named", namespace=ns).namespace.remote(), timeout=60) == ns
    with pytest.raises(ValueError):
        ray.get_actor("fidelity-named", namespace="")
    ray.kill(a)


JOB = """
import sys
import penumbra as ray

address, token, mode = sys.argv[1:4]
ns = None if mode in ("anonymous", "look-anonymous") else "shared"
ray.init(address=address, _token=token, namespace=ns)

@ray.remote
class Box:
    def hello(self):
        return "hello"

if mode in ("anonymous", "shared"):
    Box.options(name="box-" + mode, lifetime="detached").remote()
    print(ray.get(ray.get_actor("box-" + mode).hello.remote(), timeout=60))
else:
    try:
        print(ray.get(ray.get_actor("box-" + mode.split("-")[1]).hello.remote(), timeout=60))
    except ValueError:
        print("not found")
print(ray.get_runtime_context().namespace)
"""


def test_named_actors_are_shared_across_jobs_only_through_a_namespace(tmp_path):
    from penumbra.transports.launch import Cluster

    cluster = Cluster(head_node_args={"num_cpus": 2})
    try:
        def job(mode):
            p = run_driver(JOB, tmp_path, cluster.address, cluster.token, mode)
            assert p.returncode == 0, p.stderr[-2000:]
            return p.stdout.splitlines()

        said, first_ns = job("anonymous")
        assert said == "hello" and first_ns not in ("", "shared")
        said, second_ns = job("look-anonymous")
        assert said == "not found" and second_ns not in ("", "shared", first_ns)
        assert job("shared") == ["hello", "shared"]
        assert job("look-shared") == ["hello", "shared"]
    finally:
        cluster.shutdown()


# -- 4. ObjectRef as an asyncio future ------------------------------------------

@ray.remote
def echo(x):
    if x == "fail":
        raise ValueError("failed on purpose")
    return x


def test_refs_work_with_asyncio_wait_gather_and_callbacks(driver):
    async def main():
        assert await echo.remote(1) == 1
        assert await asyncio.gather(echo.remote(2), echo.remote(3)) == [2, 3]
        refs = [echo.remote(i) for i in range(4)]
        done, pending = await asyncio.wait(refs)
        assert done == set(refs) and not pending and all(r.done() for r in refs)
        assert sorted(r.result() for r in done) == [0, 1, 2, 3]
        first = echo.remote(4)
        done, _ = await asyncio.wait([first], return_when=asyncio.FIRST_COMPLETED)
        assert done == {first}
        bad = echo.remote("fail")
        done, _ = await asyncio.wait([bad], return_when=asyncio.FIRST_EXCEPTION)
        assert isinstance(bad.exception(), ValueError)
        called = []
        r = echo.remote(5)
        r.add_done_callback(called.append)
        assert await r == 5
        await asyncio.sleep(0)
        assert called == [r]
        assert await asyncio.wrap_future(echo.remote(6).future()) == 6
        assert await asyncio.wait_for(echo.remote(7), 60) == 7
        with pytest.raises(ValueError):
            await echo.remote("fail")

    asyncio.run(main())
    fut = echo.remote(8).future()
    assert fut.result(timeout=60) == 8
    got = threading.Event()
    fut = echo.remote(9).future()
    fut.add_done_callback(lambda f: got.set())
    assert fut.result(timeout=60) == 9 and got.wait(10)


ABANDONED_AWAIT = """
import asyncio, time
import penumbra as ray

ray.init(num_cpus=1)

@ray.remote
def forever():
    time.sleep(3600)

async def main():
    try:
        await asyncio.wait_for(forever.remote(), 0.5)
    except asyncio.TimeoutError:
        print("timed out")

t0 = time.monotonic()
asyncio.run(main())
print(f"asyncio.run returned after {time.monotonic() - t0:.1f} s")
"""


def test_an_abandoned_await_does_not_keep_the_program_from_exiting(tmp_path):
    # (awaiting used to block a thread of the loop's executor in get() until
    # the value came: asyncio.run waits for that thread, here for an hour)
    t0 = time.monotonic()
    p = run_driver(ABANDONED_AWAIT, tmp_path, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "timed out" in p.stdout
    assert time.monotonic() - t0 < 30


# -- 2. an actor's __repr__ prefixes its output ---------------------------------

@ray.remote
class Talker:
    def __init__(self, index):
        self.index = index

    def talk(self):
        print(f"talking {self.index}")
        return os.getpid()

    def __repr__(self):
        return f"Talker(index={self.index})"


@ray.remote
class Plain:
    def talk(self):
        print("plain talking")
        return os.getpid()


def _read_until(capfd, needles, timeout=20.0) -> str:
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        out += capfd.readouterr().out
        if all(n in out for n in needles):
            break
        time.sleep(0.05)
    return out


def test_an_actors_output_is_prefixed_with_its_repr_or_class(driver, capfd):
    # (on the simulator every worker is this process: the same prefixes, this pid)
    pid = ray.get(Talker.remote(1).talk.remote(), timeout=60)
    plain = ray.get(Plain.remote().talk.remote(), timeout=60)
    want = [f"(Talker(index=1) pid={pid}) talking 1", f"(Plain pid={plain}) plain talking"]
    out = _read_until(capfd, want)
    assert all(w in out for w in want), out


# -- 3. worker output at driver exit ----------------------------------------------

EXITING_DRIVER = """
import os, sys, time
import penumbra as ray

marker = sys.argv[1]
LINES = 20000
ray.init(num_cpus=2)

@ray.remote
def no_newline():
    print("the last words", end="")  # a line never ended
    return 1

@ray.remote
def fire_and_forget():
    for i in range(LINES):
        print("on my way", i)
    # (a round trip to the node on the connection the line went out on: the
    # node has the line before the driver sees the marker, which is what
    # the rule promises to print)
    ray.nodes()
    open(marker, "w").close()
    time.sleep(3600)  # still running when the driver exits

ray.get(no_newline.remote(), timeout=60)
fire_and_forget.remote()
deadline = time.monotonic() + 60
while not os.path.exists(marker) and time.monotonic() < deadline:
    time.sleep(0.01)
"""


def test_what_tasks_printed_reaches_a_driver_that_exits_at_once(tmp_path):
    p = run_driver(EXITING_DRIVER, tmp_path, str(tmp_path / "marker"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "(no_newline pid=" in p.stdout and ") the last words" in p.stdout, p.stdout
    # every line, though the driver was still printing them when it exited
    lines = [line for line in p.stdout.splitlines() if "(fire_and_forget pid=" in line]
    assert len(lines) == 20000 and lines[-1].endswith(") on my way 19999"), p.stdout[-2000:]


# -- 6. ClusterInfo.disconnect() and init() as a context manager ----------------

DISCONNECTING = """
import sys
import penumbra as ray

simulated = sys.argv[1] == "sim"
info = ray.init(num_cpus=1, simulated=simulated)
assert ray.is_initialized()
info.disconnect()
assert not ray.is_initialized()
with ray.init(num_cpus=1, simulated=simulated) as ctx:
    assert ray.get(ray.put(41)) == 41 and ctx is not None
assert not ray.is_initialized()
print("ok")
"""


@pytest.mark.parametrize("mode", ["real", "sim"])
def test_cluster_info_disconnect_and_init_as_a_context_manager(tmp_path, mode):
    p = run_driver(DISCONNECTING, tmp_path, mode)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-2000:]
