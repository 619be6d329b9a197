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
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from .session import new_session_name, new_token

__all__ = ["DaemonProcess", "DaemonStartError", "PendingDaemon", "spawn_daemon", "start_daemon", "sessions_dir",
           "private_sessions_dir", "Cluster", "default_object_store_memory"]

# the thread-pool sizes of numeric libraries, set to 1 in daemons (and so in
# their workers) unless already set: see ``start_daemon``
THREAD_LIMITS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                 "NUMEXPR_NUM_THREADS")

def sessions_dir() -> str:
    """Where daemons keep their session directories (logs, Unix sockets):
    ``$PENUMBRA_TMPDIR``, else ``<tmp>/penumbra-sessions-<uid>``.

    Per user, because a session directory holds the node's socket and its
    log: another user must not be able to read them, nor to plant a
    directory for us to use.
    """
    # the "-" makes it an invalid module name, so it can never shadow an import
    return os.environ.get("PENUMBRA_TMPDIR") or os.path.join(tempfile.gettempdir(), f"penumbra-sessions-{os.getuid()}")


def private_sessions_dir() -> str:
    """``sessions_dir()``, created (mode 0700) if missing, after checking
    that it is ours and that nobody else can write in it.

    Raises:
        PermissionError: it belongs to another user, or others may write in
            it (they could swap a session directory under us).
        NotADirectoryError: it is not a directory (or is a symlink).
    """
    path = sessions_dir()
    try:
        os.makedirs(path, mode=0o700)
        os.chmod(path, 0o700)  # whatever the umask
    except FileExistsError:
        pass
    st = os.lstat(path)
    where = "$PENUMBRA_TMPDIR" if os.environ.get("PENUMBRA_TMPDIR") else "the default sessions directory"
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(
            f"{where} {path} is not a directory (or is a symlink): remove it, or set $PENUMBRA_TMPDIR "
            f"to a directory of yours"
        )
    if st.st_uid != os.getuid():
        raise PermissionError(
            f"{where} {path} belongs to another user (uid {st.st_uid}, you are {os.getuid()}): penumbra will "
            f"not keep its logs and sockets there; set $PENUMBRA_TMPDIR to a directory of yours"
        )
    if st.st_mode & 0o022:
        if not os.environ.get("PENUMBRA_TMPDIR"):
            os.chmod(path, 0o700)  # ours, and only ever meant for us
        else:
            raise PermissionError(
                f"$PENUMBRA_TMPDIR {path} may be written by others (mode {stat.S_IMODE(st.st_mode):o}): "
                f"use a directory only you can write (chmod 700 {path})"
            )
    return path


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


class DaemonStartError(RuntimeError):
    """A daemon could not start.  ``str()`` is one line a user can act on
    (a busy port, an unreachable head, a refused token ...); ``log_tail`` is
    the end of the daemon's log when it crashed instead (and ``log_path``
    where the rest is)."""

    def __init__(self, message: str, log_path: str = "", log_tail: str = "") -> None:
        super().__init__(message + (f":\n{log_tail}" if log_tail else ""))
        self.message = message
        self.log_path = log_path
        self.log_tail = log_tail


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
        _cleanup_shm(self.session, self.shm_root, self.session_dir)
        shutil.rmtree(self.session_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL, as a crash would (shared memory is cleaned afterwards)."""
        _kill(self.proc, self.session, self.shm_root, self.session_dir)


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
    limit = extra.get("timeline_limit", 0)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"timeline_limit must be an int >= 0 (the task runs a node keeps for penumbra.timeline(); "
                         f"0 keeps none), got {limit!r}")
    if extra.get("gcs_flush") is not None:
        from ..core.gcs import FlushConfig

        FlushConfig.from_value(extra["gcs_flush"])  # (a bad setting fails here, not in the daemon)
    session = new_session_name()
    session_dir = os.path.join(private_sessions_dir(), session)
    os.mkdir(session_dir, 0o700)  # a fresh name: fails rather than reuse anything
    token = token or new_token()
    shm_root = extra.get("shm_root", "/dev/shm")
    cfg = {
        "session": session, "session_dir": session_dir, "head": head, "head_address": head_address,
        "host": host, "port": port, "num_cpus": os.cpu_count() or 1 if num_cpus is None else num_cpus,
        "num_gpus": num_gpus or 0, "resources": dict(resources or {}),
        "object_store_memory": int(object_store_memory or default_object_store_memory(shm_root)),
        "parent_pid": parent_pid, "token": token, **extra,
    }
    # The config, token included, goes through a pipe: a command line is
    # readable by every user (ps), an environment by ours and root, and
    # both outlive the daemon's reading of them.
    cfg_r, cfg_w = os.pipe()
    r, w = os.pipe()
    env = dict(os.environ)
    env.pop("PENUMBRA_TOKEN", None)  # the daemon and its workers must not inherit it
    env["PENUMBRA_READY_FD"] = str(w)
    # As Ray does for its workers: numeric libraries start one thread each
    # unless the user chose otherwise (set the variable before init() or
    # penumbra start).  Without this every worker's BLAS starts a thread
    # per core and N workers on N cores fight over them: a numpy
    # matrix-vector product in a worker measured 20x slower on a busy
    # 2-core machine.  It must be in the daemon's environment: workers are
    # forked from a zygote that imported numpy, too late to change it there.
    for var in THREAD_LIMITS:
        env.setdefault(var, "1")
    # Its own log as stdout and stderr, from the first instruction on: the
    # caller's terminal (or a $(...) capture, a pipe, CI) is not held open,
    # and a traceback at import, a crash in C or at exit all land in the log.
    log = os.open(os.path.join(session_dir, "daemon.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "penumbra.transports.daemon", "--config-fd", str(cfg_r)],
            pass_fds=(w, cfg_r), env=env, start_new_session=detach, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )
    except BaseException:
        os.close(r)
        os.close(cfg_w)
        raise
    finally:
        for fd in (w, cfg_r, log):
            os.close(fd)
    try:
        with os.fdopen(cfg_w, "wb") as f:
            f.write(json.dumps(cfg).encode())
    except BrokenPipeError:
        pass  # it died already: wait_ready reports why
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
        _kill(self.proc, self.session, self.shm_root, self.session_dir)
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
                    raise TimeoutError(f"the penumbra daemon did not start within {timeout} s (its log: "
                                       f"{os.path.join(self.session_dir, 'daemon.log')})")
                ready, _, _ = select.select([r], [], [], min(left, 0.5))
                if ready:
                    chunk = os.read(r, 4096)
                    if not chunk:
                        break
                    buf += chunk
                elif proc.poll() is not None:
                    break
        except BaseException:
            _kill(proc, self.session, self.shm_root, self.session_dir)  # timed out or interrupted: do not leave it behind
            raise
        finally:
            os.close(r)
        log_path = os.path.join(self.session_dir, "daemon.log")
        if b"\n" not in buf:
            code = proc.wait()
            tail = ""
            try:
                with open(log_path) as f:
                    tail = "".join(f.readlines()[-20:])
            except OSError:
                pass
            _kill(proc, self.session, self.shm_root, self.session_dir)
            raise DaemonStartError(f"the penumbra daemon exited with status {code} before it was ready "
                                   f"(its log: {log_path})", log_path, tail)
        info = json.loads(buf.split(b"\n", 1)[0])
        if "error" in info:  # it said why it cannot start
            _kill(proc, self.session, self.shm_root, self.session_dir)
            if info.get("see_log"):  # an unforeseen error: its traceback is in the log
                raise DaemonStartError(info["error"], log_path, "")
            shutil.rmtree(self.session_dir, ignore_errors=True)  # the line says all there is to say
            raise DaemonStartError(info["error"])
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
        "forward_queue_threshold", "shm_root", "timeline_limit", "object_spilling_directory", "gcs_flush")}
    extra.update(spilling_options(system_config or {}))
    return start_daemon(head=True, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                        object_store_memory=object_store_memory, parent_pid=os.getpid(), **extra)


def spilling_options(system_config: dict) -> dict:
    """Daemon settings from Ray's spilling keys of ``_system_config``:
    ``object_spilling_config`` (JSON naming a directory),
    ``object_spilling_threshold`` and ``automatic_object_spilling_enabled``.

    Raises:
        ValueError: a value of the wrong shape (said where it was given).
    """
    from .spill import parse_spilling_config

    out: dict = {}
    path = parse_spilling_config(system_config.get("object_spilling_config"))
    if path is not None:
        out["object_spilling_directory"] = path
    if "object_spilling_threshold" in system_config:
        t = system_config["object_spilling_threshold"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1:
            raise ValueError(f"_system_config object_spilling_threshold must be a fraction in (0, 1] of the "
                             f"object store (Ray's default 0.8), got {t!r}")
        out["spill_threshold"] = float(t)
    if "automatic_object_spilling_enabled" in system_config:
        out["spilling"] = bool(system_config["automatic_object_spilling_enabled"])
    return out


def spawn_daemon(*, timeout: float = 30.0, **kwargs) -> DaemonProcess:
    """Start a daemon and wait until it serves (``start_daemon``'s arguments)."""
    return start_daemon(**kwargs).wait_ready(timeout)


def _kill(proc: subprocess.Popen, session: str, shm_root: str, session_dir: str = "") -> None:
    """SIGKILL a daemon (if it still runs) and remove its shared memory
    (and its spilled objects)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)
    _cleanup_shm(session, shm_root, session_dir)


def _cleanup_shm(session: str, shm_root: str, session_dir: str = "") -> int:
    from .shm_store import cleanup_session

    if session_dir:
        from .spill import cleanup_spill

        cleanup_spill(session_dir)
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
        from ..api.functions import nodes  # (the API's, which ``penumbra.nodes`` is: no import of the package root)

        want = 1 + len(self.nodes)
        deadline = time.monotonic() + timeout
        while True:
            alive = [n for n in nodes() if n["Alive"]]
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
