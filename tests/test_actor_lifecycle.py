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


def test_cancel_of_running_threaded_actor_call(driver):
    """Ray: a threaded actor's running call is not interrupted either: it
    sees is_canceled(), and get raises TaskCancelledError."""
    a = Worker.options(max_concurrency=2).remote()
    flag = Flag.remote()
    running = a.poll.remote(flag)
    until(lambda: ray.get(flag.is_set.remote()), "the call to start", driver)
    ray.cancel(running)
    with pytest.raises(exc.TaskCancelledError):
        ray.get(running, timeout=60)
    assert ray.get(a.state.remote(), timeout=60) == (True, 0)


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

    async def asks(self):
        try:
            ray.get_runtime_context().is_canceled()
        except RuntimeError as e:
            return str(e)
        return "no error"


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


def test_is_canceled_in_an_async_actor_is_an_error(driver):
    """Ray: is_canceled() raises RuntimeError in an async actor."""
    a = AsyncWorker.remote()
    assert "async actor" in ray.get(a.asks.remote(), timeout=60)


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


def test_exit_actor_lets_the_calls_before_it_return(driver, tmp_path):
    """Ray: the calls made before the one that calls exit_actor() return
    their results; that call and the ones after it fail.  (Killed at once,
    a call whose result was on its way to the GCS failed instead.)"""
    a = Quits.remote(str(tmp_path / "cleaned"))
    before = [a.work.remote() for _ in range(3)]
    quit_ = a.quit.remote()
    after = a.work.remote()
    assert ray.get(before, timeout=60) == [1, 2, 3]
    for ref in (quit_, after):
        with pytest.raises(exc.ActorDiedError, match="exit_actor"):
            ray.get(ref, timeout=60)


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


# ============================================================================ the machines (memnet)
# The same rules, on the pure core machines with a deterministic in-memory
# network: where a cancel goes, who owns an actor, what a graceful end runs.

def _actors(core, **kw):
    from test_core_actors import Actors

    A = Actors(core)
    A.cluster(**kw)
    return A


def _error_kind(A, spec):
    info = A.results().get(spec.return_ids[0])
    return None if info is None else (info.error.kind if info.error is not None else "ok")


def test_core_cancel_queued_call_fails_at_the_host_and_never_runs(core):
    from penumbra.core.messages import CancelTask
    from penumbra.core.records import ErrorKind

    A = _actors(core, nodes=2)
    # a replay actor runs one call at a time and sends none ahead: the
    # second call waits in the host's queue
    aid = A.create(node="node:1", replay=True)
    A.net.run_for(0.2)
    slow, queued, after = A.call(aid, "slow"), A.call(aid), A.call(aid)
    A.watch([slow, queued, after])
    A.net.run_for(0.1)
    node, hosted = A.host_of(aid)
    assert slow.task_id in hosted.running and queued.sequence_no in hosted.queue["c:d"]
    A.net.send("c:d", "node:0", CancelTask(client="c:d", task_id=queued.task_id))
    A.net.run_for(0.1)
    assert _error_kind(A, queued) is ErrorKind.TASK_CANCELLED  # at once, before the slow call ends
    assert _error_kind(A, slow) is None
    A.net.run_for(2.0)
    assert _error_kind(A, slow) == "ok" and _error_kind(A, after) == "ok"
    assert [s for _, s, _ in A.runs(aid)] == [slow.sequence_no, after.sequence_no]  # it never ran
    A.net.machines[node].validate()


def test_core_cancel_running_call_interrupts_its_worker_and_is_never_retried(core):
    from penumbra.core.messages import CancelTask, InterruptTask
    from penumbra.core.records import ErrorKind

    A = _actors(core, nodes=2)
    aid = A.create(node="node:1", max_restarts=1, max_task_retries=-1)
    A.net.run_for(0.2)
    slow = A.call(aid, "slow")
    A.watch([slow])
    A.net.run_for(0.1)
    node, hosted = A.host_of(aid)
    seen = []
    machine = A.net.machines[node]
    handle = machine.handle

    def spy(ev, now):
        cmds = handle(ev, now)
        seen.extend(c for c in cmds if isinstance(c, InterruptTask))
        return cmds

    machine.handle = spy
    A.net.send("c:d", "node:0", CancelTask(client="c:d", task_id=slow.task_id))
    A.net.run_for(0.1)
    assert [c.task_id for c in seen] == [slow.task_id] and seen[0].worker_id == hosted.worker
    assert _error_kind(A, slow) is ErrorKind.TASK_CANCELLED
    assert len(A.runs(aid)) == 1


def test_core_owned_actors_die_with_their_owners_worker_or_node(core):
    from msgspec.structs import replace as _replace

    from penumbra.core.ids import actor_id_of
    from penumbra.core.messages import SubmitTask, WorkerCrashed
    from penumbra.core.records import ActorState
    from penumbra.core.specs import ActorSpec, FunctionDescriptor

    A = _actors(core, nodes=3)
    net = A.net

    def create_from(worker, node, **kw):
        s = core.spec(cpus=None)
        a = ActorSpec(actor_id=actor_id_of(s.task_id), cls=FunctionDescriptor(b"C", "C"), **kw)
        net.send(worker, node, SubmitTask(client=worker, spec=_replace(s, actor_creation=a)))
        return a.actor_id

    w0 = sorted(net.machines["node:0"].scheduler.workers)[0]
    w2 = sorted(net.machines["node:2"].scheduler.workers)[0]
    owned = create_from(w0, "node:0", max_restarts=-1)
    detached = create_from(w0, "node:0", detached=True, name="d")
    on_node2 = create_from(w2, "node:2")
    by_driver = A.create()
    net.run_for(0.3)
    assert all(A.entry(a).state is ActorState.ALIVE for a in (owned, detached, on_node2, by_driver))
    # the owner's worker dies: its owned actor dies for good (no restart)
    net.workers[w0] = ("node:0", False)
    net.inject("node:0", WorkerCrashed(worker_id=w0, reason="killed by test"))
    net.run_for(0.5)
    e = A.entry(owned)
    assert e.state is ActorState.DEAD and "owner" in e.death_cause.message and e.restarts == 0
    assert A.entry(detached).state is ActorState.ALIVE and A.entry(by_driver).state is ActorState.ALIVE
    # a whole node dies: the actors its workers own die with it
    net.crash("node:2")
    net.run_for(3.0)
    assert A.entry(on_node2).state is ActorState.DEAD and "owner" in A.entry(on_node2).death_cause.message
    assert A.entry(detached).state is ActorState.ALIVE and A.entry(by_driver).state is ActorState.ALIVE


def test_core_job_end_runs_ray_shutdown_and_kill_does_not(core):
    from penumbra.core.messages import JobFinished, KillActor
    from penumbra.core.records import ActorState

    A = _actors(core, nodes=2)
    methods = (("__ray_shutdown__", 0), ("m", 1))
    ends, killed, plain = A.create(methods=methods), A.create(methods=methods), A.create()
    A.net.run_for(0.2)
    calls = [A.call(a) for a in (ends, killed, plain)]
    A.watch(calls)
    A.net.run_for(0.2)
    A.net.send("c:d", "node:0", KillActor(client="c:d", actor_id=killed))
    A.net.run_for(0.2)
    A.net.send("c:d", "head", JobFinished(job_id=1))
    A.net.run_for(1.0)
    assert all(A.entry(a).state is ActorState.DEAD for a in (ends, killed, plain))
    assert "job 1 ended" in A.entry(ends).death_cause.message and A.entry(ends).graceful
    # __ray_shutdown__ ran once, on the actor that ended with its job only
    assert [(ac, m) for _, ac, _, _, m, _ in A.log if m == "__ray_shutdown__"] == [(ends, "__ray_shutdown__")]
    # and every worker is gone
    for n in ("node:0", "node:1"):
        assert not A.net.machines[n].host.actors


def test_core_ray_terminate_waits_for_earlier_results_then_ends_the_actor(core):
    from penumbra.core.messages import JobFinished
    from penumbra.core.records import ActorState, ErrorKind

    A = _actors(core, nodes=2)
    methods = (("__ray_shutdown__", 0), ("m", 1))
    aid, other = A.create(methods=methods), A.create(methods=methods)
    A.net.run_for(0.2)
    before = [A.call(aid) for _ in range(3)]
    end = A.call(aid, "__ray_terminate__")
    after = A.call(aid)
    other_call = A.call(other, "__ray_terminate__")
    A.watch(before + [end, after, other_call])
    A.net.run_for(0.5)
    assert all(_error_kind(A, s) == "ok" for s in before)
    assert _error_kind(A, end) is ErrorKind.ACTOR_DIED and _error_kind(A, after) is ErrorKind.ACTOR_DIED
    e = A.entry(aid)
    assert e.state is ActorState.DEAD and "__ray_terminate__" in e.death_cause.message and not e.graceful
    assert [m for _, ac, _, _, m, _ in A.log if ac == aid] == ["m", "m", "m", "__ray_terminate__"]
    # the job ends too: nothing runs twice, and every worker is gone
    A.net.send("c:d", "head", JobFinished(job_id=1))
    A.net.run_for(1.0)
    assert [m for _, ac, _, _, m, _ in A.log if ac == other] == ["__ray_terminate__"]
    for n in ("node:0", "node:1"):
        assert not A.net.machines[n].host.actors
        A.net.machines[n].validate()
