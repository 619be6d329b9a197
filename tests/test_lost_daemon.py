"""A lost daemon fails every call at once, with one clear error; none hangs.

Real processes: a head daemon (``launch.Cluster``, joined over TCP) or the
embedded cluster of ``init()`` (joined over its Unix socket) is SIGKILLed
while the driver uses it.  Then a blocked ``get`` fails promptly, and every
call made after the loss (``get``, ``wait``, ``put``, ``nodes``,
``.remote()``, actor calls ...) fails within a few seconds with
``ClusterConnectionLostError`` naming the cluster's address, until
``shutdown()``; ``init()`` then works again.

The bounds (``_BOUND`` seconds) are limits on a hang, not timings: the old
code waited forever, or 30-60 s and then raised a misleading timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

import penumbra as ray
from penumbra import exceptions as exc
from penumbra.api import context
from penumbra.core.messages import ClusterStatusRequest
from penumbra.transports.launch import Cluster
from test_runtime_cluster import _alive  # (its /proc probe: alive and not a zombie)

pytestmark = pytest.mark.timeout(180)

_BOUND = 10.0  # seconds: "promptly", as a bound on a hang


def _outcome(fn, bound: float = _BOUND + 5) -> tuple[BaseException | None, float]:
    """Run ``fn`` on a thread; what it raised and how long it took.  A call
    still blocked after ``bound`` fails the test (and is left behind on its
    daemon thread, not waited for)."""
    out: dict = {}

    def run() -> None:
        t0 = time.monotonic()
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - the test looks at it
            out["error"] = e
        out["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(bound)
    assert not t.is_alive(), f"the call still blocks {bound} s after the daemon was lost"
    return out.get("error"), out["elapsed"]


def _assert_lost(err: BaseException | None, elapsed: float, address: str, what: str) -> None:
    assert isinstance(err, exc.ClusterConnectionLostError), f"{what}: {err!r}"
    assert isinstance(err, ConnectionError) and isinstance(err, exc.RaySystemError)
    assert elapsed < _BOUND, f"{what} took {elapsed:.1f} s to fail"
    text = str(err)
    assert address in text and "unreachable" in text, text
    assert "penumbra.shutdown()" in text and "penumbra.init()" in text, text
    assert err.address == address


def _wait_for(cond, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def cluster():
    c = Cluster(head_node_args={"num_cpus": 2})
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()  # (a killed head: its shared memory and session dir go)


def test_killed_head_fails_a_blocked_get_and_every_later_call(cluster, tmp_path):
    address = cluster.address
    ray.init(address=address, _token=cluster.token)
    rt = context.current_runtime()
    pid_file = tmp_path / "hang.pid"

    @ray.remote(max_retries=0)
    def hang(path):
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(120)

    @ray.remote
    def one():
        return 1

    @ray.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def incr(self):
            self.n += 1
            return self.n, os.getpid()

    counter = Counter.options(name="counter").remote()
    _, actor_pid = ray.get(counter.incr.remote(), timeout=60)
    done = one.remote()
    assert ray.get(done, timeout=60) == 1
    ref = hang.remote(str(pid_file))
    _wait_for(lambda: pid_file.exists() and pid_file.read_text(), "the hanging task to start")
    task_pid = int(pid_file.read_text())

    blocked: dict = {}
    waiter = threading.Thread(target=lambda: blocked.update(zip(("error", "elapsed"), _outcome(lambda: ray.get(ref)))),
                              daemon=True)
    waiter.start()
    _wait_for(lambda: rt.machine.requests, "the blocked get to reach the node")
    t_kill = time.monotonic()
    cluster.head.kill()  # SIGKILL
    waiter.join(_BOUND + 10)
    assert not waiter.is_alive()
    _assert_lost(blocked["error"], time.monotonic() - t_kill, address, "the blocked get")

    # every call made after the loss: the same error, at once
    calls = {
        "get": lambda: ray.get(ref),
        "get with a timeout": lambda: ray.get(ref, timeout=30),
        "get of a value already here": lambda: ray.get(done),
        "wait": lambda: ray.wait([ref]),
        "put": lambda: ray.put(1),
        "nodes()": ray.nodes,
        "cluster_resources()": ray.cluster_resources,
        "available_resources()": ray.available_resources,
        "f.remote()": lambda: one.remote(),
        "an actor call": lambda: counter.incr.remote(),
        "Actor.remote()": lambda: Counter.remote(),
        "a named Actor.remote()": lambda: Counter.options(name="another").remote(),
        "get_actor()": lambda: ray.get_actor("counter"),
        "kill()": lambda: ray.kill(counter),
        "cancel()": lambda: ray.cancel(ref),
        "init() again": lambda: ray.init(address=address, _token=cluster.token),
        "init(ignore_reinit_error=True)": lambda: ray.init(ignore_reinit_error=True),
    }
    for what, call in calls.items():
        err, elapsed = _outcome(call)
        _assert_lost(err, elapsed, address, what)

    # the node's processes went with it: no worker is left running
    _wait_for(lambda: not _alive(task_pid) and not _alive(actor_pid), "the workers to exit", timeout=_BOUND)

    err, elapsed = _outcome(ray.shutdown)
    assert err is None and elapsed < _BOUND
    assert not ray.is_initialized()
    ray.init(num_cpus=1)  # the embedded default: a fresh local cluster
    try:
        assert ray.get(one.remote(), timeout=60) == 1
        assert ray.get(ray.put("again"), timeout=60) == "again"
    finally:
        ray.shutdown()


def test_killed_embedded_daemon_fails_waits_and_named_actors_until_shutdown():
    ray.init(num_cpus=1)
    try:
        rt = context.current_runtime()
        daemon = rt.embedded
        address = rt.address

        @ray.remote
        def slow():
            time.sleep(120)

        ref = slow.remote()
        blocked: dict = {}
        waiter = threading.Thread(
            target=lambda: blocked.update(zip(("error", "elapsed"), _outcome(lambda: ray.wait([ref], timeout=120)))),
            daemon=True)
        waiter.start()
        _wait_for(lambda: rt.machine.linger is not None and rt.machine.linger.waiters, "the blocked wait to reach the node")
        os.kill(daemon.pid, signal.SIGKILL)
        waiter.join(_BOUND + 10)
        assert not waiter.is_alive()
        _assert_lost(blocked["error"], blocked["elapsed"], address, "the blocked wait")

        @ray.remote
        class Named:
            def hi(self):
                return "hi"

        for what, call in {
            "a named Actor.remote()": lambda: Named.options(name="n").remote(),
            "wait with a timeout": lambda: ray.wait([ref], timeout=30),
            "put of a large value": lambda: ray.put(bytearray(1 << 20)),
            "nodes()": ray.nodes,
        }.items():
            err, elapsed = _outcome(call)
            _assert_lost(err, elapsed, address, what)
    finally:
        ray.shutdown()
    assert not os.path.exists(daemon.session_dir), "shutdown() left the dead daemon's session behind"
    assert not ray.is_initialized()  # (the lost runtime is gone: the next call starts afresh)


def test_a_wait_registered_after_the_loss_fails_at_once(cluster):
    # The ordering race, below the public API's early check: a watch or a
    # request whose registration reaches the trio thread after the receive
    # loop recorded the loss must fail, not wait for a reply that cannot come.
    ray.init(address=cluster.address, _token=cluster.token)
    rt = context.current_runtime()

    @ray.remote
    def one():
        return 1

    ref = one.remote()
    assert ray.get(ref, timeout=60) == 1
    cluster.head.kill()
    _wait_for(lambda: rt._closed, "the client's receive loop to see the loss", timeout=_BOUND)
    err, elapsed = _outcome(lambda: rt._watch([ref._id], 1, None, True))
    _assert_lost(err, elapsed, cluster.address, "a watch registered after the loss")
    err, elapsed = _outcome(lambda: rt._request(lambda rid: ClusterStatusRequest(client=rt.client_id, req_id=rid),
                                                None, "cluster status"))
    _assert_lost(err, elapsed, cluster.address, "a request registered after the loss")


def test_a_worker_that_loses_its_daemon_exits_instead_of_finishing_its_task(cluster, tmp_path):
    # Usually a daemon's death kills its workers (the zygote's
    # PR_SET_PDEATHSIG).  Here the worker's connection breaks while the
    # daemon lives (the task shuts its own socket down): the worker must
    # exit, not run its two-minute task to the end for no one.
    ray.init(address=cluster.address, _token=cluster.token)
    pid_file = tmp_path / "worker.pid"

    @ray.remote(max_retries=0)
    def cut_and_hang(path):
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        context.current_runtime().channel._sock.shutdown(socket.SHUT_RDWR)
        time.sleep(120)

    @ray.remote
    def one():
        return 1

    ref = cut_and_hang.remote(str(pid_file))
    _wait_for(lambda: pid_file.exists() and pid_file.read_text(), "the task to start")
    pid = int(pid_file.read_text())
    _wait_for(lambda: not _alive(pid), "the cut-off worker to exit", timeout=_BOUND)
    with pytest.raises(exc.WorkerCrashedError):
        ray.get(ref, timeout=60)
    assert ray.get(one.remote(), timeout=60) == 1  # the node goes on serving
