"""Operating a cluster with the ``penumbra`` command, on real processes.

Each test runs the real CLI in a subprocess with its own ``$HOME`` (so its
own ``~/.penumbra/clusters.json``) and its own ``$PENUMBRA_TMPDIR``, on
ports nobody else holds, and stops every cluster it started (and removes
its shared memory) even when it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import penumbra
from penumbra.transports.session import pid_alive
from penumbra.transports.shm_store import cleanup_session, session_segments

pytestmark = pytest.mark.timeout(180)

# the tree under test, for the CLI and the daemons it starts
_TREE = str(Path(penumbra.__file__).resolve().parent.parent)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(what: str, cond, timeout: float = 30.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


class Machine:
    """A private home and sessions directory, and the CLI run in them."""

    def __init__(self) -> None:
        # short: a session's Unix socket path must fit in 108 bytes
        self.root = Path(tempfile.mkdtemp(prefix="pn-ops-"))
        self.home = self.root / "home"
        self.home.mkdir()
        self.sessions = self.root / "sessions"
        env = {k: v for k, v in os.environ.items()
               if k not in ("PENUMBRA_TOKEN", "PENUMBRA_HOME", "PENUMBRA_ADDRESS", "PENUMBRA_TMPDIR")}
        env.update(HOME=str(self.home), PENUMBRA_TMPDIR=str(self.sessions),
                   PYTHONPATH=os.pathsep.join([_TREE, env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        self.env = env
        self.seen: dict[str, dict] = {}  # every cluster entry we saw, for the clean-up

    def run(self, *args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run([sys.executable, "-m", "penumbra.cli", *args], capture_output=True, text=True,
                                  timeout=timeout, env=dict(self.env, **(env or {})), stdin=subprocess.DEVNULL)
        finally:
            self.clusters()  # remember what it started, even if it hung

    def start(self, *args: str, **kw) -> subprocess.CompletedProcess:
        res = self.run("start", *args, **kw)
        assert res.returncode == 0, res.stderr
        return res

    def clusters(self) -> dict[str, dict]:
        try:
            data = json.loads((self.home / ".penumbra" / "clusters.json").read_text())
        except (OSError, ValueError):
            return {}
        for k, v in data.items():
            self.seen.setdefault(k, {}).update(v)
        return data

    def remember_node(self, res: subprocess.CompletedProcess) -> int:
        """The pid of the node ``start`` says it started (one this machine's
        cluster file does not record), remembered for the clean-up."""
        pid = int(res.stdout.split("(pid ", 1)[1].split(")", 1)[0])
        session = Path(res.stdout.split("Its log: ", 1)[1].split()[0]).parent.name
        self.seen[f"node {pid}"] = {"pid": pid, "session": session}
        return pid

    def head(self) -> dict:
        (info,) = self.clusters().values()
        return info

    def close(self) -> None:
        try:
            self.run("stop", timeout=60)
        except subprocess.TimeoutExpired:
            pass
        daemons = [d for info in self.seen.values() for d in [info] + info.get("nodes", [])]
        for d in daemons:  # whatever stop missed: they clean up after themselves on SIGTERM
            if d.get("pid") and pid_alive(int(d["pid"])):
                os.kill(int(d["pid"]), signal.SIGTERM)
        deadline = time.monotonic() + 15
        for d in daemons:
            while d.get("pid") and pid_alive(int(d["pid"])):
                if time.monotonic() > deadline:
                    os.kill(int(d["pid"]), signal.SIGKILL)
                    break
                time.sleep(0.05)
            if d.get("session"):
                cleanup_session(d["session"])
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def machine():
    m = Machine()
    try:
        yield m
    finally:
        m.close()


def _kill_hard(pid: int, sig: int = signal.SIGKILL) -> None:
    os.kill(pid, sig)
    _wait_for(f"pid {pid} to die", lambda: not pid_alive(pid))


def test_start_returns_at_once_when_its_output_is_captured(machine):
    # a daemon holding our stdout open made this hang until the timeout
    t0 = time.monotonic()
    res = machine.run("start", "--head", "--port", "0", "--num-cpus", "1", timeout=60)
    assert res.returncode == 0, res.stderr
    info = machine.head()
    assert info["address"] in res.stdout
    assert time.monotonic() - t0 < 50
    assert pid_alive(info["pid"])


def test_a_busy_port_is_one_line_and_a_failure(machine):
    machine.start("--head", "--port", "0", "--num-cpus", "1")
    port = machine.head()["address"].rsplit(":", 1)[1]
    res = machine.run("start", "--head", "--port", port, "--num-cpus", "1")
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "already in use" in lines[0] and "--port" in lines[0]
    assert "Traceback" not in res.stdout + res.stderr


def test_an_unreachable_head_is_one_line_and_a_failure(machine):
    address = f"127.0.0.1:{_free_port()}"  # nobody listens there
    res = machine.run("start", "--address", address, "--num-cpus", "1", env={"PENUMBRA_TOKEN": "t" * 64})
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "cannot reach the head" in lines[0] and address in lines[0]


def test_a_node_listens_on_the_port_it_is_given(machine):
    machine.start("--head", "--port", "0", "--num-cpus", "1")
    head = machine.head()["address"]
    port = _free_port()
    res = machine.start("--address", head, "--port", str(port), "--num-cpus", "1")
    assert f"127.0.0.1:{port}" in res.stdout
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        pass


@pytest.mark.timeout(240)
def test_status_shows_a_killed_node_as_dead(machine):
    machine.start("--head", "--port", "0", "--num-cpus", "1")
    head = machine.head()["address"]
    machine.start("--address", head, "--num-cpus", "1", "--resources", '{"doomed": 1}')
    (node,) = machine.head()["nodes"]

    def line_of_node(state: str):
        res = machine.run("status")
        assert res.returncode == 0, res.stderr
        line = next((ln for ln in res.stdout.splitlines() if ln.startswith(node["node_id"])), "")
        return line if state in line.split() else None

    # the head has its load (a dead node used to keep showing it)
    line = _wait_for("status to show the node's load", lambda: (line_of_node("alive") or "").find("doomed") > 0,
                     timeout=60, every=0.2)
    _kill_hard(node["pid"])
    line = _wait_for("status to show the node dead", lambda: line_of_node("dead"), timeout=120, every=0.5)
    # its last load is gone with it: no resources, queues or store
    assert "CPU" not in line and "doomed" not in line and "B /" not in line, line


@pytest.mark.parametrize("next_start", ["penumbra start", "init()"])
def test_a_killed_daemons_shared_memory_is_freed_by_the_next_start(machine, next_start):
    machine.start("--head", "--port", "0", "--num-cpus", "1")
    info = machine.head()
    assert session_segments(info["session"]), "the head has no shared memory to lose"
    _kill_hard(info["pid"])
    assert session_segments(info["session"])  # nobody cleaned up after it
    if next_start == "penumbra start":
        machine.start("--head", "--port", "0", "--num-cpus", "1")
    else:
        code = "import penumbra; penumbra.init(num_cpus=1); penumbra.shutdown()"
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             env=machine.env)
        assert res.returncode == 0, res.stderr
    assert session_segments(info["session"]) == []


def test_session_directories_and_logs_are_private(machine):
    machine.start("--head", "--port", "0", "--num-cpus", "1")
    info = machine.head()
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(machine.sessions) == 0o700
    assert mode(info["session_dir"]) == 0o700
    assert mode(os.path.join(info["session_dir"], "daemon.log")) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_a_sessions_dir_of_another_user_is_refused(machine):
    machine.sessions.mkdir(mode=0o700)
    os.chown(machine.sessions, 65534, 65534)
    res = machine.run("start", "--head", "--port", "0", "--num-cpus", "1")
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "belongs to another user" in lines[0], res.stderr
    assert machine.clusters() == {}


def test_the_token_is_on_no_command_line_nor_in_any_daemons_environment(machine):
    token = "0123456789abcdef" * 4
    token_file = machine.root / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    res = machine.start("--head", "--port", "0", "--num-cpus", "1", "--token-file", str(token_file))
    head = machine.head()
    assert head["token"] == token
    # a node from "another machine": the token from the environment, no cluster file
    other = {"HOME": str(machine.root / "other-home"), "PENUMBRA_TOKEN": token}
    res = machine.run("start", "--address", head["address"], "--num-cpus", "1", env=other)
    assert res.returncode == 0, res.stderr
    node_pid = machine.remember_node(res)
    for pid in (head["pid"], node_pid):
        for what in ("cmdline", "environ"):
            with open(f"/proc/{pid}/{what}", "rb") as f:
                assert token.encode() not in f.read(), f"the token is in /proc/{pid}/{what}"
    # and the node really joined with it
    status = machine.run("status")
    assert status.stdout.count(" alive ") == 2, status.stdout + status.stderr


def test_a_daemons_fatal_error_reaches_its_log(machine):
    machine.start("--head", "--port", "0", "--num-cpus", "1")
    info = machine.head()
    _kill_hard(info["pid"], signal.SIGSEGV)  # a crash in C
    log = Path(info["session_dir"], "daemon.log")
    text = _wait_for("the crash in the log", lambda: "Fatal Python error" in log.read_text() and log.read_text())
    assert "Segmentation fault" in text


def test_the_token_flag_still_works_but_warns(machine):
    machine.start("--head", "--port", "0", "--num-cpus", "1")
    head = machine.head()
    other = {"HOME": str(machine.root / "other-home")}  # no cluster file: only the flag has the token
    res = machine.run("start", "--address", head["address"], "--num-cpus", "1", "--token", head["token"], env=other)
    assert res.returncode == 0, res.stderr
    machine.remember_node(res)
    assert "deprecated" in res.stderr and "--token-file" in res.stderr
