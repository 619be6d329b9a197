"""Multi-node clusters on one machine, security, and process lifetimes."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import penumbra as ray
from penumbra import exceptions as exc
from penumbra.transports.launch import Cluster

pytestmark = pytest.mark.timeout(180)


def _shm_files(session: str) -> list[str]:
    return [f for f in os.listdir("/dev/shm") if session in f]


@pytest.fixture
def cluster():
    c = Cluster(head_node_args={"num_cpus": 1, "validate": True, "node_timeout": 2.0})
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def test_tasks_go_where_resources_are_and_inputs_follow(cluster):
    node = cluster.add_node(num_cpus=2, resources={"special": 1}, validate=True)
    ray.init(address=cluster.address, _token=cluster.token)
    cluster.wait_for_nodes()

    @ray.remote
    def make(n):
        return np.ones(n, dtype=np.uint8)

    @ray.remote(resources={"special": 1})
    def total(x):
        return ray.get_runtime_context().get_node_id(), int(x.sum())

    big = make.remote(3_000_000)  # made on the head's node (1 CPU, no "special")
    where, s = ray.get(total.remote(big), timeout=60)
    assert where == node.node_id and s == 3_000_000
    total = ray.cluster_resources()
    assert total.pop("memory") > 0  # every node offers memory, as in Ray
    assert total == {"CPU": 3.0, "special": 1.0}


def test_tasks_spill_to_another_node_when_overloaded(cluster):
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, _token=cluster.token)
    cluster.wait_for_nodes()

    @ray.remote
    def node_of(_):
        time.sleep(0.05)
        return ray.get_runtime_context().get_node_id()

    # far more tasks than the head's queue threshold and its single CPU
    nodes = set(ray.get([node_of.remote(i) for i in range(300)], timeout=120))
    assert len(nodes) == 2


def test_node_death_reruns_tasks_and_rebuilds_lost_objects(cluster):
    doomed = cluster.add_node(num_cpus=1, resources={"doomed": 1})
    survivor = cluster.add_node(num_cpus=1, resources={"doomed": 1})
    ray.init(address=cluster.address, _token=cluster.token)
    cluster.wait_for_nodes()

    @ray.remote(resources={"doomed": 1})
    def produce(i):
        return ray.get_runtime_context().get_node_id(), np.full(200_000, i, dtype=np.int64)

    refs = [produce.remote(i) for i in range(6)]
    ray.wait(refs, num_returns=6, timeout=60, fetch_local=False)
    cluster.remove_node(doomed)  # SIGKILL: its objects are lost
    values = ray.get(refs, timeout=120)
    assert [int(v[1][0]) for v in values] == list(range(6))
    assert {v[0] for v in values} <= {doomed.node_id, survivor.node_id}


def test_wrong_token_and_garbage_are_refused_and_the_daemon_keeps_serving(cluster):
    host, port = cluster.address.rsplit(":", 1)
    # a hello with the wrong token
    s = socket.create_connection((host, int(port)), timeout=10)
    hello = json.dumps({"penumbra": 1, "token": "wrong", "role": "driver", "name": "x"}).encode()
    s.sendall(struct.pack(">I", len(hello)) + hello)
    reply = s.recv(4096)
    assert b'"ok": false' in reply or b'"ok":false' in reply
    s.close()
    # a malformed first frame (a huge length prefix)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(b"\xff\xff\xff\xffgarbage")
    s.settimeout(10)
    try:
        s.recv(4096)
    except OSError:
        pass
    s.close()
    # a well-behaved driver is still served
    ray.init(address=cluster.address, _token=cluster.token)

    @ray.remote
    def one():
        return 1

    assert ray.get(one.remote(), timeout=60) == 1
    log = open(os.path.join(cluster.head.session_dir, "daemon.log")).read()
    assert "refus" in log.lower()


def test_joining_without_the_token_fails_clearly(cluster):
    with pytest.raises(Exception) as info:
        ray.init(address=cluster.address, _token="not-the-token-" + "x" * 20)
    assert "token" in str(info.value).lower() or "refused" in str(info.value).lower()


DRIVER = textwrap.dedent("""
    import sys, time
    import penumbra as ray
    ray.init(num_cpus=2)
    @ray.remote
    def f(): return 1
    ray.get(f.remote())
    print(ray.get_runtime_context().get_node_id(), flush=True)
    import penumbra.api.context as c
    print(c.current_runtime().embedded.session, flush=True)
    print(c.current_runtime().embedded.pid, flush=True)
    time.sleep(60)
""")


def _children_of(pid: int) -> set[int]:
    out = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.add(int(d))
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_killed_driver_leaves_no_orphans_and_no_shared_memory(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    # The driver imports this checkout, whether or not it is installed.
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        p.stdout.readline()
        session = p.stdout.readline().strip()
        daemon_pid = int(p.stdout.readline().strip())
        family = {daemon_pid} | _children_of(daemon_pid)
        for z in list(family):
            family |= _children_of(z)
        assert _shm_files(session)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
        deadline = time.time() + 20
        while time.time() < deadline and (any(_alive(q) for q in family) or _shm_files(session)):
            time.sleep(0.1)
        assert not [q for q in family if _alive(q)], "processes outlived their driver"
        assert not _shm_files(session), "shared memory outlived its driver"
    finally:
        if p.poll() is None:
            p.kill()


def test_a_node_started_from_a_thread_that_ends_keeps_serving(cluster):
    """A daemon dies with its parent (PR_SET_PDEATHSIG), but Linux sends that
    signal when the *thread* that started it ends: a node added from a
    thread that then returned used to stop at once, and a task only it can
    run hung.  (Found by tests/test_swarm_real.py: the node that replaces a
    killed one joins from the fault thread.)"""
    import threading

    ray.init(address=cluster.address, _token=cluster.token)
    made = []
    t = threading.Thread(target=lambda: made.append(cluster.add_node(num_cpus=1, resources={"late": 1})))
    t.start()
    t.join(60)
    assert made, "add_node from a thread failed"
    cluster.wait_for_nodes()

    @ray.remote(resources={"late": 1})
    def where():
        return ray.get_runtime_context().get_node_id()

    assert ray.get(where.remote(), timeout=30) == made[0].node_id
    assert made[0].alive()
    log = open(os.path.join(made[0].session_dir, "daemon.log")).read()
    assert "stopping" not in log, log[-2000:]


def test_a_dead_daemon_fails_a_waiting_wait_instead_of_hanging():
    # (the second wait rides on the watch the first one left open)
    import threading

    import penumbra.api.context as c

    ray.init(num_cpus=1)
    try:
        @ray.remote
        def hang():
            time.sleep(120)

        @ray.remote
        def one():
            return 1

        refs = [one.remote(), hang.remote()]
        ready, rest = ray.wait(refs, num_returns=1, timeout=60)
        assert ready == refs[:1]
        rt = c.current_runtime()
        out = {}

        def waiter():
            try:
                out["result"] = ray.wait(rest, num_returns=1)
            except BaseException as e:  # noqa: BLE001 - the test looks at it
                out["error"] = e

        t = threading.Thread(target=waiter)
        t.start()
        deadline = time.monotonic() + 30
        while not (rt.machine.linger is not None and rt.machine.linger.waiters):
            assert time.monotonic() < deadline, "the second wait never reached the open watch"
            time.sleep(0.001)
        os.kill(rt.embedded.pid, signal.SIGKILL)
        t.join(30)
        assert not t.is_alive(), "wait() hung after its daemon died"
        assert isinstance(out.get("error"), exc.PenumbraError), out
    finally:
        ray.shutdown()


def test_shutdown_stops_everything_and_frees_shared_memory():
    ray.init(num_cpus=1)
    from penumbra.api.context import current_runtime

    d = current_runtime().embedded
    ray.get(ray.put(np.ones(1_000_000)))
    assert _shm_files(d.session)
    family = {d.pid} | _children_of(d.pid)
    ray.shutdown()
    assert not ray.is_initialized()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(q) for q in family):
        time.sleep(0.05)
    assert not [q for q in family if _alive(q)]
    assert not _shm_files(d.session)


def test_object_store_full_is_an_error_not_a_hang():
    # (with spilling off: with it on, the put spills instead; see test_spilling.py)
    ray.init(num_cpus=1, object_store_memory=64 << 20, _system_config={"automatic_object_spilling_enabled": False})
    try:
        keep = [ray.put(np.ones(20 << 20, dtype=np.uint8)) for _ in range(3)]  # pinned: 60 MiB
        with pytest.raises(exc.ObjectStoreFullError) as info:
            ray.put(np.ones(20 << 20, dtype=np.uint8))
        assert "object store" in str(info.value)
        del keep
    finally:
        ray.shutdown()


def test_init_twice_and_shutdown_twice():
    ray.init(num_cpus=1)
    try:
        with pytest.raises(RuntimeError, match="twice"):
            ray.init()
        ray.init(ignore_reinit_error=True)
    finally:
        ray.shutdown()
        ray.shutdown()
    assert not ray.is_initialized()


def test_first_api_call_starts_a_cluster_as_in_ray(monkeypatch):
    # Ray calls init() on the first remote API call; so does penumbra
    assert not ray.is_initialized()
    try:
        @ray.remote
        def inc(x):
            return x + 1

        assert ray.get(inc.remote(1), timeout=60) == 2
        assert ray.is_initialized()
        with pytest.raises(RuntimeError, match="twice"):
            ray.init()
    finally:
        ray.shutdown()
    try:
        assert ray.get(ray.put("again"), timeout=60) == "again"  # put, after a shutdown, starts one too
    finally:
        ray.shutdown()
    # RAY_ENABLE_AUTO_CONNECT=0 (or PENUMBRA_ENABLE_AUTO_CONNECT=0) turns it off
    monkeypatch.setenv("RAY_ENABLE_AUTO_CONNECT", "0")
    with pytest.raises(exc.PenumbraError, match="init"):
        ray.put(1)
    assert not ray.is_initialized()


def test_init_without_an_address_joins_penumbra_address(cluster, monkeypatch):
    # as Ray's init() joins $RAY_ADDRESS
    node = cluster.add_node(num_cpus=1)
    monkeypatch.setenv("PENUMBRA_ADDRESS", cluster.address)
    info = ray.init(_token=cluster.token)
    assert info.address_info["address"] == cluster.address
    cluster.wait_for_nodes()
    assert {n["NodeID"] for n in ray.nodes()} >= {cluster.head.node_id, node.node_id}
