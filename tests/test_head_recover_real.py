"""A GCS that outlives its head, on real processes (loopback).

A cluster of three daemons on this machine: the head (A), a node started
with ``--gcs-replica`` (B: its replica joins the shard's chain as the tail,
so every acknowledged write is in B's process too) and a plain node (C).  A
driver connected to C writes acknowledged data: keys through the GCS's kv
table, a named detached actor, finished tasks.  Then every process of the
head's daemon is killed with SIGKILL (the daemon, its zygote, its workers)
and ``penumbra start --head --recover B`` starts a new head at the same
address.  Checked:

* the driver that was using the cluster gets ``ClusterConnectionLostError``
  naming the lost head within a bound (never a hang);
* every acknowledged kv write reads back exactly, the job counter goes on
  (no job id is handed out twice), the detached actor answers by name, and
  a new driver runs tasks on every node.

The same scenario runs across network namespaces in
``tests/test_multihost.py`` (``test_head_host_killed_recovered_from_a_node_replica``);
the driver scripts are shared (``OLD_DRIVER``, ``NEW_DRIVER``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ("--node-timeout", "3", "--heartbeat-interval", "0.5")
STORE = ("--object-store-memory", str(128 << 20))
KEYS = 40
LOST_BOUND = 15.0  # seconds: the old driver's error must come within this (a bound on a hang)

# The driver that uses the cluster when its head dies.  argv: address, dir.
# It writes acknowledged data, says so in ``dir/written``, blocks on a task
# that sleeps, and records what that ``get`` raised, and when, in
# ``dir/old-result``.
OLD_DRIVER = r'''
import json, os, sys, time
import penumbra as ray
from penumbra.api import context
from penumbra.core.tables import KvPut

address, out = sys.argv[1], sys.argv[2]

def say(name, value):
    with open(os.path.join(out, name + ".tmp"), "w") as f:
        json.dump(value, f)
    os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))

ray.init(address=address, namespace="recover-test")
rt = context.current_runtime()
for i in range(KEYS):
    assert rt.gcs_request(KvPut(f"recover-test:{i}", {"i": i, "square": i * i}), timeout=60) is not None

@ray.remote(max_restarts=-1, resources={"c": 1})
class Keeper:
    def __init__(self):
        self.calls = 0
    def hi(self):
        self.calls += 1
        return "hi", self.calls

@ray.remote(resources={"c": 1})
def square(i):
    return i * i

@ray.remote(resources={"c": 1}, max_retries=0)
def sleeper():
    time.sleep(600)

keeper = Keeper.options(name="keeper", lifetime="detached").remote()
assert ray.get(keeper.hi.remote(), timeout=60) == ("hi", 1)
squares = ray.get([square.remote(i) for i in range(20)], timeout=60)
ref = sleeper.remote()
say("written", {"job": rt.job_id, "squares": squares})
try:
    ray.get(ref)
    say("old-result", {"error": None, "at": time.time()})
except Exception as e:
    say("old-result", {"error": type(e).__name__, "message": str(e), "at": time.time(),
                       "address": getattr(e, "address", "")})
'''.replace("KEYS", str(KEYS))

# A driver after the recovery.  argv: address.  Prints one JSON line.
NEW_DRIVER = r'''
import json, sys
import penumbra as ray
from penumbra.api import context
from penumbra.core.tables import Get

ray.init(address=sys.argv[1], namespace="recover-test")
rt = context.current_runtime()
kv = {i: rt.gcs_request(Get("kv", f"recover-test:{i}"), timeout=60) for i in range(KEYS)}
keeper = ray.get_actor("keeper")
hi = ray.get(keeper.hi.remote(), timeout=60)

@ray.remote(num_cpus=0)
def where(i):
    return i * 3, ray.get_runtime_context().get_node_id()

@ray.remote(resources={"b": 1})
def on_b(i):
    return i + 1000, ray.get_runtime_context().get_node_id()

@ray.remote(resources={"c": 1})
def on_c(i):
    return i + 2000, ray.get_runtime_context().get_node_id()

spread = ray.get([where.options(scheduling_strategy="SPREAD").remote(i) for i in range(30)], timeout=120)
b = ray.get([on_b.remote(i) for i in range(5)], timeout=120)
c = ray.get([on_c.remote(i) for i in range(5)], timeout=120)
print(json.dumps({"kv": {str(k): v for k, v in kv.items()}, "hi": list(hi), "job": rt.job_id,
                  "spread": [v for v, _ in spread], "b": [v for v, _ in b], "c": [v for v, _ in c],
                  "nodes": sorted({n for _, n in spread + b + c})}))
'''.replace("KEYS", str(KEYS))


def check_old_driver(result: dict, t_kill: float, head: str) -> float:
    """The old driver failed with a clear error naming the lost head, within
    ``LOST_BOUND`` seconds of the kill; returns how long it took."""
    assert result["error"] == "ClusterConnectionLostError", result
    took = result["at"] - t_kill
    assert took < LOST_BOUND, f"the old driver learnt of the loss {took:.1f} s after the kill"
    assert head in result["message"] and "--recover" in result["message"], result["message"]
    return took


def check_recovered(res: dict, written: dict, want_nodes: int) -> None:
    assert res["kv"] == {str(i): {"i": i, "square": i * i} for i in range(KEYS)}, res["kv"]
    assert res["hi"][0] == "hi"
    assert res["job"] > written["job"], (res["job"], written["job"])  # the job counter survived
    assert written["squares"] == [i * i for i in range(20)]
    assert res["spread"] == [i * 3 for i in range(30)]
    assert res["b"] == [i + 1000 for i in range(5)] and res["c"] == [i + 2000 for i in range(5)]
    assert len(res["nodes"]) >= want_nodes, res["nodes"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_members(leaders: set[int]) -> list[int]:
    """Every process whose session is one of ``leaders`` (a daemon started
    by ``penumbra start`` leads its own session: its zygote and workers are
    in it)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) in leaders:
            out.append(int(name))
    return out


def _kill_sessions(leaders: set[int]) -> None:
    for _ in range(3):
        pids = _session_members(leaders)
        if not pids:
            return
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


class _Local:
    """``penumbra`` commands and drivers on this machine, in a private HOME."""

    def __init__(self, tmp) -> None:
        self.tmp = str(tmp)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PENUMBRA_")}
        self.env.update(HOME=self.tmp, PENUMBRA_TMPDIR=os.path.join(self.tmp, "sessions"),
                        PYTHONPATH=REPO + os.pathsep + self.env.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
        self.daemons: set[int] = set()
        self.procs: list[subprocess.Popen] = []
        self.token_file = os.path.join(self.tmp, "token")

    def status_when(self, head: str, want) -> str | None:
        """``penumbra status`` of the cluster at ``head`` if ``want(text)``
        holds, else None (a condition for ``wait_for``)."""
        text = self.penumbra("status", "--address", head, check=False)
        return text if want(text) else None

    def penumbra(self, *args: str, check: bool = True, timeout: float = 90) -> str:
        r = subprocess.run([sys.executable, "-m", "penumbra.cli", *args], capture_output=True, text=True,
                           env=self.env, timeout=timeout)
        for m in re.finditer(r"\(pid (\d+)", r.stdout):
            self.daemons.add(int(m.group(1)))
        if check and r.returncode != 0:
            raise AssertionError(f"penumbra {' '.join(args)} exited with {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r.stdout + r.stderr

    def driver(self, text: str, *argv: str) -> subprocess.Popen:
        path = os.path.join(self.tmp, f"driver{len(self.procs)}.py")
        with open(path, "w") as f:
            f.write(text)
        env = dict(self.env, PENUMBRA_TOKEN=open(self.token_file).read().strip())
        p = subprocess.Popen([sys.executable, path, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        _kill_sessions(self.daemons)
        from penumbra.transports.shm_store import cleanup_stale_sessions

        try:
            cleanup_stale_sessions("/dev/shm", only=set(os.listdir(os.path.join(self.tmp, "sessions"))))
        except OSError:
            pass


def wait_for(cond, what: str, timeout: float = 60.0, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the driver exited ({proc.returncode}) while waiting for {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def read_json(path: str):
    return json.load(open(path)) if os.path.exists(path) else None


def finish(p: subprocess.Popen, timeout: float = 180.0) -> dict:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"driver did not finish within {timeout} s:\n{out}\n{err}")
    assert p.returncode == 0, f"driver exited with {p.returncode}:\n{out}\n{err}"
    return json.loads([ln for ln in out.splitlines() if ln.strip()][-1])


@pytest.mark.timeout(240)
def test_head_killed_recovered_from_a_node_replica_on_loopback(tmp_path):
    local = _Local(tmp_path)
    try:
        port, port_b, port_c = _free_port(), _free_port(), _free_port()
        head = f"127.0.0.1:{port}"
        out = local.penumbra("start", "--head", "--port", str(port), "--num-cpus", "1", *FAST, *STORE)
        token = re.search(r"Cluster token \(keep it secret\): (\w+)", out).group(1)
        fd = os.open(local.token_file, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        head_pid = int(re.search(r"\(pid (\d+)", out).group(1))
        local.penumbra("start", "--address", head, "--port", str(port_b), "--gcs-replica", "--num-cpus", "1",
                       "--resources", '{"b": 2}', *FAST, *STORE)
        local.penumbra("start", "--address", head, "--port", str(port_c), "--num-cpus", "2",
                       "--resources", '{"c": 4}', *FAST, *STORE)
        replica_b = f"127.0.0.1:{port_b}"

        status = lambda want: local.status_when(head, want)  # noqa: E731

        text = wait_for(lambda: status(lambda s: s.count(" alive ") == 3 and re.search(
            rf"gcs:0:\S+\s+{re.escape(replica_b)}\s+tail", s)), "B's replica to be the chain's tail")
        assert re.search(rf"gcs:0:0\s+{re.escape(head)}\s+head", text), text

        old = local.driver(OLD_DRIVER, f"127.0.0.1:{port_c}", local.tmp)
        written = wait_for(lambda: read_json(os.path.join(local.tmp, "written")), "the writes", proc=old,
                           timeout=120)
        time.sleep(0.5)  # (the sleeper reached its worker)
        t_kill = time.time()
        _kill_sessions({head_pid})  # kill -9: the head daemon, its zygote and workers
        assert not _session_members({head_pid})

        local.penumbra("start", "--head", "--port", str(port), "--recover", replica_b, "--token-file",
                       local.token_file, "--num-cpus", "1", *FAST, *STORE)
        old_result = wait_for(lambda: read_json(os.path.join(local.tmp, "old-result")), "the old driver's error",
                              timeout=LOST_BOUND + 5)
        lost_after = check_old_driver(old_result, t_kill, head)
        wait_for(lambda: status(lambda s: s.count(" alive ") == 3), "three live nodes after the recovery")
        res = finish(local.driver(NEW_DRIVER, f"127.0.0.1:{port_c}"))
        recovered = time.time() - t_kill
        check_recovered(res, written, want_nodes=3)
        print(f"\n[recover] loopback: old driver told {lost_after:.2f} s after the kill; cluster usable again "
              f"(acknowledged writes read back, new job done) {recovered:.2f} s after the kill")
        # this machine's nodes are still known to the recovered cluster's entry: 'penumbra stop' stops all three
        assert "(3 daemon(s))" in local.penumbra("stop")
    finally:
        local.close()


def _start_three(local: _Local) -> tuple[str, int, str]:
    """Head, node B with --gcs-replica, node C; returns (head, head pid, B)."""
    port, port_b = _free_port(), _free_port()
    head = f"127.0.0.1:{port}"
    out = local.penumbra("start", "--head", "--port", str(port), "--num-cpus", "1", *FAST, *STORE)
    token = re.search(r"Cluster token \(keep it secret\): (\w+)", out).group(1)
    fd = os.open(local.token_file, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    local.penumbra("start", "--address", head, "--port", str(port_b), "--gcs-replica", "--num-cpus", "1", *FAST,
                   *STORE)
    return head, int(re.search(r"\(pid (\d+)", out).group(1)), f"127.0.0.1:{port_b}"


@pytest.mark.timeout(120)
def test_a_replica_outlives_its_nodes_rejoin_and_joins_its_chain_again(tmp_path):
    """Node B (hosting a replica) stops for longer than the node timeout
    (SIGSTOP): the head declares it dead and the chain master cuts its
    replica.  When B runs again it is fenced and rejoins as a fresh node;
    its replica, kept across the rejoin, joins the chain again as the tail,
    and the writes made while it was out are in it (a key written then reads
    back from it: reads are served by the tail)."""
    local = _Local(tmp_path)
    try:
        head, _, replica_b = _start_three(local)

        status = lambda want: local.status_when(head, want)  # noqa: E731

        wait_for(lambda: status(lambda s: re.search(rf"gcs:0:\S+\s+{re.escape(replica_b)}\s+tail", s)),
                 "B's replica to be the tail")
        b_pid = max(local.daemons)  # (started last)
        os.kill(b_pid, signal.SIGSTOP)
        try:
            wait_for(lambda: status(lambda s: " dead " in s and "gcs:0:0" in s and "head+tail" in s),
                     "B declared dead and its replica cut", timeout=30)
            writer = local.driver(r'''
import json, sys
import penumbra as ray
from penumbra.api import context
from penumbra.core.tables import KvPut
ray.init(address=sys.argv[1])
print(json.dumps(context.current_runtime().gcs_request(KvPut("while-b-was-out", 42), timeout=60)))
''', head)
            finish(writer, timeout=60)
        finally:
            os.kill(b_pid, signal.SIGCONT)
        text = wait_for(lambda: status(lambda s: re.search(rf"node:\S+\.1\s+{re.escape(replica_b)}\s+alive", s)
                                       and re.search(rf"gcs:0:\S+\s+{re.escape(replica_b)}\s+tail", s)),
                        "B to rejoin and its replica to be the tail again", timeout=60)
        assert re.search(rf"gcs:0:0\s+{re.escape(head)}\s+head ", text), text
        reader = local.driver(r'''
import json, sys
import penumbra as ray
from penumbra.api import context
from penumbra.core.tables import Get
ray.init(address=sys.argv[1])
print(json.dumps(context.current_runtime().gcs_request(Get("kv", "while-b-was-out"), timeout=60)))
''', head)
        assert finish(reader, timeout=60) == 42
    finally:
        local.close()


@pytest.mark.timeout(60)
def test_recover_without_its_replica_hosts_fails_clearly(tmp_path):
    """--recover naming an address where no replica host reconnects: the
    start fails within --recover-wait with a message saying what to give;
    misused flags are refused where they were given."""
    local = _Local(tmp_path)
    try:
        with open(local.token_file, "w") as f:
            f.write("0" * 64 + "\n")
        port = _free_port()
        t0 = time.monotonic()
        out = local.penumbra("start", "--head", "--port", str(port), "--recover", "127.0.0.1:9", "--recover-wait",
                             "2", "--token-file", local.token_file, "--num-cpus", "1", *STORE, check=False)
        assert time.monotonic() - t0 < 30
        assert "cannot recover the cluster" in out and "127.0.0.1:9" in out and "--gcs-replica" in out, out
        out = local.penumbra("start", "--head", "--gcs-replica", check=False)
        assert "--gcs-replica is for a node" in out, out
        out = local.penumbra("start", "--address", "127.0.0.1:1", "--recover", "127.0.0.1:2", check=False)
        assert "--recover starts a new head" in out, out
        out = local.penumbra("start", "--head", "--recover", "nonsense", check=False)
        assert "--recover must be HOST:PORT" in out, out
    finally:
        local.close()


@pytest.mark.timeout(120)
def test_the_head_places_replicas_on_the_first_k_nodes(tmp_path):
    """``--gcs-replicas-on-nodes 1``: the first node to join hosts a replica
    (it becomes the tail), the second does not; when the replica host is
    lost, the next node to join is asked to host one."""
    local = _Local(tmp_path)
    try:
        port = _free_port()
        head = f"127.0.0.1:{port}"
        local.penumbra("start", "--head", "--port", str(port), "--num-cpus", "1", "--gcs-replicas-on-nodes", "1",
                       *FAST, *STORE)
        ports = [_free_port() for _ in range(3)]
        pids = []
        for p in ports[:2]:
            out = local.penumbra("start", "--address", head, "--port", str(p), "--num-cpus", "1", *FAST, *STORE)
            pids.append(int(re.search(r"\(pid (\d+)", out).group(1)))

        status = lambda want: local.status_when(head, want)  # noqa: E731

        first, second = (f"127.0.0.1:{p}" for p in ports[:2])
        text = wait_for(lambda: status(lambda s: s.count(" alive ") == 3 and re.search(
            rf"gcs:0:\S+\s+{re.escape(first)}\s+tail", s)), "the first node's replica to be the tail")
        assert second not in text.split("GCS REPLICA")[1], text
        os.kill(pids[0], signal.SIGKILL)  # the replica host is lost
        third = f"127.0.0.1:{ports[2]}"
        local.penumbra("start", "--address", head, "--port", str(ports[2]), "--num-cpus", "1", *FAST, *STORE)
        text = wait_for(lambda: status(lambda s: re.search(rf"gcs:0:\S+\s+{re.escape(third)}\s+tail", s)),
                        "the next node to join to host a replica", timeout=60)
        assert second not in text.split("GCS REPLICA")[1], text
    finally:
        local.close()


@pytest.mark.timeout(120)
def test_status_shows_each_nodes_link_health(tmp_path):
    """``penumbra status``'s LINK column: ``local`` for the head's own node,
    ``ok`` for a node heard from, ``missed N/LIMIT`` while a node is silent
    (stopped here with SIGSTOP, within a long node timeout), ``ok`` again
    once it is heard."""
    local = _Local(tmp_path)
    try:
        port, port_b = _free_port(), _free_port()
        head = f"127.0.0.1:{port}"
        slow = ("--node-timeout", "20", "--heartbeat-interval", "0.5")
        local.penumbra("start", "--head", "--port", str(port), "--num-cpus", "1", *slow, *STORE)
        out = local.penumbra("start", "--address", head, "--port", str(port_b), "--num-cpus", "1", *slow, *STORE)
        b_pid = int(re.search(r"\(pid (\d+)", out).group(1))
        node_b = rf"node:\S+\s+127\.0\.0\.1:{port_b}\s+alive\s+"

        status = lambda want: local.status_when(head, want)  # noqa: E731

        text = wait_for(lambda: status(lambda s: re.search(node_b + "ok ", s)), "node B's link ok")
        assert re.search(rf"node:\S+\s+{re.escape(head)}\s+alive\s+local ", text), text
        os.kill(b_pid, signal.SIGSTOP)
        try:
            text = wait_for(lambda: status(lambda s: re.search(node_b + r"missed \d+/40 ", s)),
                            "node B's missed heartbeats", timeout=15)
        finally:
            os.kill(b_pid, signal.SIGCONT)
        wait_for(lambda: status(lambda s: re.search(node_b + "ok ", s)), "node B's link ok again")
    finally:
        local.close()


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(180)
@pytest.mark.parametrize("round_", range(3))
def test_stop_address_stops_every_node_whatever_it_hosts(tmp_path, round_):
    """``penumbra stop --address`` (an orderly stop of the head) stops every
    node daemon at once, the one hosting a GCS replica
    (``--gcs-replicas-on-nodes 1``) included: each is told ``StopCluster``
    before its head connection closes.  (A node whose head connection just
    closes takes the head for killed and rejoins: a plain node for 20 s, a
    replica host for good.  The head's main loop used to cancel the stop
    path that tells them as soon as the stop was asked for, which lost the
    race about half of the time: three rounds.)"""
    local = _Local(tmp_path)
    try:
        port, port_b, port_c = _free_port(), _free_port(), _free_port()
        head = f"127.0.0.1:{port}"
        out = local.penumbra("start", "--head", "--port", str(port), "--num-cpus", "1",
                             "--gcs-replicas-on-nodes", "1", *FAST, *STORE)
        token = re.search(r"Cluster token \(keep it secret\): (\w+)", out).group(1)
        fd = os.open(local.token_file, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        logs = []
        for p in (port_b, port_c):
            out = local.penumbra("start", "--address", head, "--port", str(p), "--num-cpus", "1", *FAST, *STORE)
            logs.append(re.search(r"Its log: (\S+)", out).group(1))

        status = lambda want: local.status_when(head, want)  # noqa: E731

        wait_for(lambda: status(lambda s: s.count(" alive ") == 3 and re.search(
            rf"gcs:0:\S+\s+127\.0\.0\.1:({port_b}|{port_c})\s+tail", s)), "a node's replica to be the tail")
        pids = set(local.daemons)
        assert len(pids) == 3 and all(_pid_alive(p) for p in pids)
        t0 = time.monotonic()
        out = local.penumbra("stop", "--address", head, "--token-file", local.token_file)
        assert "asked the cluster" in out, out
        wait_for(lambda: not any(_pid_alive(p) for p in pids), "every daemon to stop (a node told nothing "
                 "rejoins: 20 s for a plain node, for good for a replica host)", timeout=10)
        took = time.monotonic() - t0
        for log in logs:
            text = open(log).read()
            assert "the head asked this node to stop" in text, text[-3000:]
            assert "rejoining" not in text, text[-3000:]
        print(f"\n[stop] head + 2 nodes (one hosting a GCS replica) stopped in {took:.2f} s")
    finally:
        local.close()


# A driver of a fresh cluster.  argv: address.  Prints one JSON line: what
# the earlier cluster's key reads as here, and tasks on both nodes.
FRESH_DRIVER = r'''
import json, sys
import penumbra as ray
from penumbra.api import context
from penumbra.core.tables import Get, KvPut

ray.init(address=sys.argv[1])
rt = context.current_runtime()
earlier = rt.gcs_request(Get("kv", "recover-test:0"), timeout=60)
assert rt.gcs_request(KvPut("fresh-test", "new"), timeout=60) is not None

@ray.remote(resources={"a": 1})
def on_a(i):
    return i + 100, ray.get_runtime_context().get_node_id()

@ray.remote(resources={"b": 1})
def on_b(i):
    return i + 1000, ray.get_runtime_context().get_node_id()

a = ray.get([on_a.remote(i) for i in range(5)], timeout=120)
b = ray.get([on_b.remote(i) for i in range(5)], timeout=120)
print(json.dumps({"earlier": earlier, "fresh": rt.gcs_request(Get("kv", "fresh-test"), timeout=60),
                  "a": [v for v, _ in a], "b": [v for v, _ in b], "nodes": sorted({n for _, n in a + b})}))
'''

# Acknowledged kv writes, then exit.  argv: address.
WRITER = r'''
import sys
import penumbra as ray
from penumbra.api import context
from penumbra.core.tables import KvPut
ray.init(address=sys.argv[1], namespace="recover-test")
rt = context.current_runtime()
for i in range(KEYS):
    assert rt.gcs_request(KvPut(f"recover-test:{i}", {"i": i, "square": i * i}), timeout=60) is not None
print("{}")
'''.replace("KEYS", str(KEYS))

# Reads the writes back.  argv: address.  Prints the kv as one JSON line.
READER = r'''
import json, sys
import penumbra as ray
from penumbra.api import context
from penumbra.core.tables import Get
ray.init(address=sys.argv[1], namespace="recover-test")
rt = context.current_runtime()
print(json.dumps({str(i): rt.gcs_request(Get("kv", f"recover-test:{i}"), timeout=60) for i in range(KEYS)}))
'''.replace("KEYS", str(KEYS))

FRESH_BOUND = 30.0  # seconds from the fresh head's start until its status answers with both nodes


@pytest.mark.timeout(240)
def test_a_fresh_head_at_the_old_address_keeps_a_nodes_earlier_replicas_out(tmp_path):
    """The head (A) is killed with SIGKILL and a FRESH head (no --recover:
    Kubernetes restarting the container, an operator starting anew) starts
    at its address.  Node B, hosting a replica of the old cluster, reconnects
    to it.  The new cluster works at once (status answers, a job runs on A
    and B), none of the old state enters it (the old key is not there, B's
    replica is not in its chain; status and B's log say B holds replicas of
    an earlier cluster, and how to recover that one).  Then the fresh head
    is killed too and ``--recover B`` brings back the EARLIER cluster: B
    kept its replicas, and every acknowledged write reads back.  (Before
    cluster ids, B fed its old replicas -- higher chain epochs -- into the
    new cluster and it stalled: status timed out after 30 s.)"""
    local = _Local(tmp_path)
    try:
        port, port_b = _free_port(), _free_port()
        head = f"127.0.0.1:{port}"
        replica_b = f"127.0.0.1:{port_b}"
        out = local.penumbra("start", "--head", "--port", str(port), "--num-cpus", "1", *FAST, *STORE)
        token = re.search(r"Cluster token \(keep it secret\): (\w+)", out).group(1)
        fd = os.open(local.token_file, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        head_pid = int(re.search(r"\(pid (\d+)", out).group(1))
        out = local.penumbra("start", "--address", head, "--port", str(port_b), "--gcs-replica", "--num-cpus", "1",
                             "--resources", '{"b": 2}', *FAST, *STORE)
        log_b = re.search(r"Its log: (\S+)", out).group(1)

        status = lambda want: local.status_when(head, want)  # noqa: E731

        wait_for(lambda: status(lambda s: re.search(rf"gcs:0:\S+\s+{re.escape(replica_b)}\s+tail", s)),
                 "B's replica to be the chain's tail")
        finish(local.driver(WRITER, head), timeout=120)
        _kill_sessions({head_pid})
        assert not _session_members({head_pid})

        t0 = time.monotonic()
        out = local.penumbra("start", "--head", "--port", str(port), "--token-file", local.token_file,
                             "--num-cpus", "1", "--resources", '{"a": 2}', *FAST, *STORE)
        fresh_pid = int(re.search(r"\(pid (\d+)", out).group(1))
        text = wait_for(lambda: status(lambda s: s.count(" alive ") == 2 and "EARLIER CLUSTER" in s),
                        "the fresh cluster's status with both nodes", timeout=FRESH_BOUND)
        answered = time.monotonic() - t0
        replicas = text.split("GCS REPLICA")[1].split("EARLIER CLUSTER")[0]
        assert re.search(rf"gcs:0:0\s+{re.escape(head)}\s+head\+tail", replicas), text
        assert replica_b not in replicas, text  # B's old replica is not in the new chain
        assert re.search(rf"node \S+ \({re.escape(replica_b)}\) holds GCS replicas of an earlier cluster", text), text
        assert f"penumbra start --head --recover {replica_b}" in text, text
        res = finish(local.driver(FRESH_DRIVER, head), timeout=120)
        assert res["earlier"] is None and res["fresh"] == "new", res  # nothing of the old state came in
        assert res["a"] == [i + 100 for i in range(5)] and res["b"] == [i + 1000 for i in range(5)], res
        assert len(res["nodes"]) == 2, res
        worked = time.monotonic() - t0
        assert "is a NEW cluster" in open(log_b).read()

        # the earlier cluster is still recoverable from B's kept replicas
        _kill_sessions({fresh_pid})
        local.penumbra("start", "--head", "--port", str(port), "--recover", replica_b, "--token-file",
                       local.token_file, "--num-cpus", "1", *FAST, *STORE)
        kv = finish(local.driver(READER, head), timeout=120)
        assert kv == {str(i): {"i": i, "square": i * i} for i in range(KEYS)}, kv
        print(f"\n[fresh head] status answered {answered:.2f} s after the fresh head's start, a job ran on both "
              f"nodes {worked:.2f} s after it; the earlier cluster recovered afterwards from B's kept replicas")
    finally:
        local.close()


@pytest.mark.timeout(240)
def test_recover_auto_recovers_from_a_node_that_reconnects_with_replicas(tmp_path):
    """kill -9 of the head, then ``penumbra start --head --recover auto`` at
    its address (what a Kubernetes head Deployment runs every time): node B
    reconnects holding the replica, the head recovers the cluster from it
    without being told where it is, and every acknowledged write reads
    back; B's replica is in the recovered chain."""
    local = _Local(tmp_path)
    try:
        head, head_pid, replica_b = _start_three(local)

        status = lambda want: local.status_when(head, want)  # noqa: E731

        wait_for(lambda: status(lambda s: re.search(rf"gcs:0:\S+\s+{re.escape(replica_b)}\s+tail", s)),
                 "B's replica to be the chain's tail")
        finish(local.driver(WRITER, head), timeout=120)
        _kill_sessions({head_pid})
        t0 = time.monotonic()
        out = local.penumbra("start", "--head", "--port", head.rpartition(":")[2], "--recover", "auto",
                             "--token-file", local.token_file, "--num-cpus", "1", *FAST, *STORE)
        log = re.search(r"Its log: (\S+)", out).group(1)
        kv = finish(local.driver(READER, head), timeout=120)
        assert kv == {str(i): {"i": i, "square": i * i} for i in range(KEYS)}, kv
        took = time.monotonic() - t0
        text = open(log).read()
        assert "--recover auto: node daemons" in text and "recovering the cluster from GCS replicas" in text, text
        wait_for(lambda: status(lambda s: re.search(rf"gcs:0:\S+\s+{re.escape(replica_b)}\s+(head|middle|tail) ", s)
                                and "EARLIER CLUSTER" not in s), "B's replica in the recovered chain")
        print(f"\n[recover auto] acknowledged writes read back {took:.2f} s after the head's restart")
    finally:
        local.close()


@pytest.mark.timeout(120)
def test_recover_auto_on_a_clean_address_starts_fresh_after_the_wait(tmp_path):
    """``--recover auto`` where no cluster lived: nothing reconnects, so
    after ``--recover-wait`` the head starts a fresh cluster (not before:
    the wait is what lets surviving replica hosts come back), which works:
    a node joins with --gcs-replica, its replica becomes the tail, a kv
    write and a task on the node go through.  'auto' with addresses is
    refused where it was given."""
    local = _Local(tmp_path)
    try:
        port, port_b = _free_port(), _free_port()
        head = f"127.0.0.1:{port}"
        wait = 3.0
        t0 = time.monotonic()
        out = local.penumbra("start", "--head", "--port", str(port), "--recover", "auto", "--recover-wait", str(wait),
                             "--num-cpus", "1", *FAST, *STORE)
        assert time.monotonic() - t0 >= wait, out
        token = re.search(r"Cluster token \(keep it secret\): (\w+)", out).group(1)
        fd = os.open(local.token_file, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        log = re.search(r"Its log: (\S+)", out).group(1)
        assert "starting a fresh cluster" in open(log).read()
        local.penumbra("start", "--address", head, "--port", str(port_b), "--gcs-replica", "--num-cpus", "1",
                       "--resources", '{"b": 2}', *FAST, *STORE)
        replica_b = f"127.0.0.1:{port_b}"
        wait_for(lambda: re.search(rf"gcs:0:\S+\s+{re.escape(replica_b)}\s+tail",
                                   local.penumbra("status", "--address", head, check=False)),
                 "B's replica to be the chain's tail")
        finish(local.driver(WRITER, head), timeout=120)
        assert finish(local.driver(READER, head), timeout=120)["3"] == {"i": 3, "square": 9}
        out = local.penumbra("start", "--head", "--recover", "auto", "--recover", "127.0.0.1:1", check=False)
        assert "--recover auto goes alone" in out, out
    finally:
        local.close()


@pytest.mark.timeout(180)
def test_recover_auto_refuses_replicas_of_two_clusters(tmp_path):
    """B holds replicas of the first cluster; a fresh head then ran at the
    address with ``--gcs-replicas-on-nodes 1`` and node C hosts replicas of
    that second cluster.  Both heads gone, ``--recover auto`` sees replica
    hosts of two clusters: it does not guess which one is wanted, it stops
    with an error naming both daemons and what to do."""
    local = _Local(tmp_path)
    try:
        head, head_pid, replica_b = _start_three(local)
        port = head.rpartition(":")[2]

        status = lambda want: local.status_when(head, want)  # noqa: E731

        wait_for(lambda: status(lambda s: re.search(rf"gcs:0:\S+\s+{re.escape(replica_b)}\s+tail", s)),
                 "B's replica to be the chain's tail")
        _kill_sessions({head_pid})
        out = local.penumbra("start", "--head", "--port", port, "--token-file", local.token_file,
                             "--gcs-replicas-on-nodes", "1", "--num-cpus", "1", *FAST, *STORE)
        fresh_pid = int(re.search(r"\(pid (\d+)", out).group(1))
        port_c = _free_port()
        replica_c = f"127.0.0.1:{port_c}"
        local.penumbra("start", "--address", head, "--port", str(port_c), "--num-cpus", "1", *FAST, *STORE)
        wait_for(lambda: status(lambda s: re.search(rf"gcs:0:\S+\s+{re.escape(replica_c)}\s+tail", s)
                                and "EARLIER CLUSTER" in s), "C's replica in the second cluster's chain")
        _kill_sessions({fresh_pid})
        out = local.penumbra("start", "--head", "--port", port, "--recover", "auto", "--recover-wait", "20",
                             "--token-file", local.token_file, "--num-cpus", "1", *FAST, *STORE, check=False)
        assert "replicas of different clusters" in out and replica_b in out and replica_c in out, out
        assert "--recover HOST:PORT" in out, out
    finally:
        local.close()
