"""Starting daemons: for ``penumbra start``, ``init()`` and test clusters.

``spawn_daemon`` starts one daemon process and waits until it serves (or
fails, with the tail of its log in the error); ``start_daemon`` and
``PendingDaemon.wait_ready`` are its two halves, for a caller with work to
do while the daemon starts.  This module imports neither trio nor numpy, so
that ``init()`` starts its daemon first and imports those meanwhile.  ``Cluster`` starts a head and
any number of extra nodes on this machine, the way Ray's
``cluster_utils.Cluster`` does, for tests and experiments.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from .session import new_session_name, new_token

__all__ = ["DaemonProcess", "PendingDaemon", "spawn_daemon", "start_daemon", "sessions_dir", "Cluster", "default_object_store_memory"]


def sessions_dir() -> str:
    # not a valid module name, so it can never shadow an import
    return os.environ.get("PENUMBRA_TMPDIR") or os.path.join(tempfile.gettempdir(), "penumbra-sessions")


def default_object_store_memory(shm_root: str = "/dev/shm") -> int:
    """30% of RAM (Ray's default), but no more than 80% of the free shm."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 << 30
    want = int(total * 0.3)
    try:
        st = os.statvfs(shm_root)
        want = min(want, int(st.f_bavail * st.f_frsize * 0.8))
    except OSError:
        pass
    return max(64 << 20, want)


@dataclass
class DaemonProcess:
    proc: subprocess.Popen
    session: str
    session_dir: str
    shm_root: str
    address: str
    node_id: str
    token: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def unix_path(self) -> str:
        return os.path.join(self.session_dir, "node.sock")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL; and clean its shared memory either way."""
        p = self.proc
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        _cleanup_shm(self.session, self.shm_root)
        shutil.rmtree(self.session_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL, as a crash would (shared memory is cleaned afterwards)."""
        _kill(self.proc, self.session, self.shm_root)


def start_daemon(*, head: bool, token: str | None = None, head_address: str = "", num_cpus: float | None = None,
                 num_gpus: float = 0, resources: dict | None = None, object_store_memory: int | None = None,
                 parent_pid: int = 0, host: str = "127.0.0.1", port: int = 0, detach: bool = True, **extra) -> PendingDaemon:
    """Start a daemon process; ``wait_ready`` on the result waits until it serves.

    Args:
        head: host the head and the GCS too.
        parent_pid: the daemon exits when this process is gone (embedded
            clusters and test clusters); 0 for a standalone daemon.
        extra: further ``DaemonConfig`` fields (``validate``, ``gcs_shards`` ...).
    """
    _check_timing(extra)
    session = new_session_name()
    session_dir = os.path.join(sessions_dir(), session)
    os.makedirs(session_dir, exist_ok=True)
    token = token or new_token()
    shm_root = extra.get("shm_root", "/dev/shm")
    cfg = {
        "session": session, "session_dir": session_dir, "head": head, "head_address": head_address,
        "host": host, "port": port, "num_cpus": os.cpu_count() or 1 if num_cpus is None else num_cpus,
        "num_gpus": num_gpus or 0, "resources": dict(resources or {}),
        "object_store_memory": int(object_store_memory or default_object_store_memory(shm_root)),
        "parent_pid": parent_pid, **extra,
    }
    r, w = os.pipe()
    env = dict(os.environ)
    env["PENUMBRA_TOKEN"] = token
    env["PENUMBRA_READY_FD"] = str(w)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "penumbra.transports.daemon", "--config", json.dumps(cfg)],
            pass_fds=(w,), env=env, start_new_session=detach, stdin=subprocess.DEVNULL,
        )
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    return PendingDaemon(proc, r, session, session_dir, shm_root, token)


@dataclass
class PendingDaemon:
    """A daemon process that has not said it serves yet."""

    proc: subprocess.Popen
    ready_fd: int
    session: str
    session_dir: str
    shm_root: str
    token: str

    def kill(self) -> None:
        """Give up on it: SIGKILL, and remove whatever it created."""
        _kill(self.proc, self.session, self.shm_root)
        try:
            os.close(self.ready_fd)
        except OSError:
            pass
        shutil.rmtree(self.session_dir, ignore_errors=True)

    def wait_ready(self, timeout: float = 30.0) -> DaemonProcess:
        """Wait for the daemon's address; on failure (or timeout) it is
        killed, and the error carries the tail of its log."""
        proc, r = self.proc, self.ready_fd
        buf = b""
        deadline = time.monotonic() + timeout
        try:
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the penumbra daemon did not start within {timeout} s")
                ready, _, _ = select.select([r], [], [], min(left, 0.5))
                if ready:
                    chunk = os.read(r, 4096)
                    if not chunk:
                        break
                    buf += chunk
                elif proc.poll() is not None:
                    break
        except BaseException:
            _kill(proc, self.session, self.shm_root)  # timed out or interrupted: do not leave it behind
            raise
        finally:
            os.close(r)
        if b"\n" not in buf:
            code = proc.wait()
            tail = ""
            try:
                with open(os.path.join(self.session_dir, "daemon.log")) as f:
                    tail = "".join(f.readlines()[-20:])
            except OSError:
                pass
            _kill(proc, self.session, self.shm_root)
            raise RuntimeError(f"the penumbra daemon exited with status {code} before it was ready:\n{tail}")
        info = json.loads(buf.split(b"\n", 1)[0])
        return DaemonProcess(proc, self.session, self.session_dir, self.shm_root, info["address"], info["node_id"],
                             self.token)


def _check_timing(extra: dict) -> None:
    """Refuse heartbeat settings the daemon would refuse, here, where they
    were passed (not as a daemon that dies at start)."""
    hb = extra.get("heartbeat_interval", 1.0)
    timeout = extra.get("node_timeout", 30.0)
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (hb, timeout))
    if not (ok and hb > 0 and timeout > hb):
        raise ValueError(f"node_timeout ({timeout!r} s) must be longer than heartbeat_interval ({hb!r} s), "
                         f"which must be > 0: a node is declared dead after node_timeout without "
                         f"heartbeats (e.g. heartbeat_interval=1, node_timeout=30)")


def start_embedded(*, num_cpus=None, num_gpus=None, resources=None, object_store_memory=None,
                   system_config=None) -> PendingDaemon:
    """Start the daemon of ``init()``'s embedded cluster: the head, with a
    fresh token, exiting with this process."""
    extra = {k: v for k, v in (system_config or {}).items() if k in (
        "validate", "gcs_shards", "chain_length", "node_timeout", "heartbeat_interval",
        "forward_queue_threshold", "shm_root")}
    return start_daemon(head=True, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                        object_store_memory=object_store_memory, parent_pid=os.getpid(), **extra)


def spawn_daemon(*, timeout: float = 30.0, **kwargs) -> DaemonProcess:
    """Start a daemon and wait until it serves (``start_daemon``'s arguments)."""
    return start_daemon(**kwargs).wait_ready(timeout)


def _kill(proc: subprocess.Popen, session: str, shm_root: str) -> None:
    """SIGKILL a daemon (if it still runs) and remove its shared memory."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)
    _cleanup_shm(session, shm_root)


def _cleanup_shm(session: str, shm_root: str) -> int:
    from .shm_store import cleanup_session

    return cleanup_session(session, shm_root)


class Cluster:
    """Several node daemons on this machine, for tests (Ray's
    ``cluster_utils.Cluster``).

    ::

        cluster = Cluster(head_node_args={"num_cpus": 1})
        cluster.add_node(num_cpus=2, resources={"special": 1})
        penumbra.init(address=cluster.address, _token=cluster.token)
        ...
        penumbra.shutdown(); cluster.shutdown()

    Every daemon dies with the process that made the cluster.
    """

    def __init__(self, initialize_head: bool = True, head_node_args: dict | None = None) -> None:
        self.token = new_token()
        self.head: DaemonProcess | None = None
        self.nodes: list[DaemonProcess] = []
        if initialize_head:
            args = dict(head_node_args or {})
            args.setdefault("num_cpus", 1)
            self.head = spawn_daemon(head=True, token=self.token, parent_pid=os.getpid(), **args)

    @property
    def address(self) -> str:
        return self.head.address

    def add_node(self, **args) -> DaemonProcess:
        args.setdefault("num_cpus", 1)
        node = spawn_daemon(head=False, token=self.token, head_address=self.address, parent_pid=os.getpid(), **args)
        self.nodes.append(node)
        return node

    def remove_node(self, node: DaemonProcess, allow_graceful: bool = False) -> None:
        if allow_graceful:
            node.stop()
        else:
            node.kill()
        self.nodes.remove(node)

    def wait_for_nodes(self, timeout: float = 30.0) -> None:
        """Block until every node has joined (as seen by ``penumbra.nodes()``)."""
        import penumbra

        want = 1 + len(self.nodes)
        deadline = time.monotonic() + timeout
        while True:
            alive = [n for n in penumbra.nodes() if n["Alive"]]
            if len(alive) >= want:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(alive)} of {want} nodes joined within {timeout} s")
            time.sleep(0.05)

    def shutdown(self) -> None:
        for n in self.nodes:
            n.stop()
        self.nodes.clear()
        if self.head is not None:
            self.head.stop()
            self.head = None
