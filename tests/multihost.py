"""A test bed of several "hosts" on one Linux machine, for the real transport.

Every multi-node test elsewhere runs several daemons on one loopback
address, which hides whatever depends on machines being apart: the address
a node advertises, which interface a listener binds, whose ``/dev/shm`` a
process reads, what a partition does to a TCP connection.  Here each host
is

* a network namespace (``pmh<pid>h<i>``) with one veth, ``eth0``, plugged
  into a bridge that lives in a namespace of its own (``pmh<pid>sw``), with
  the address ``10.231.0.<i+1>/24``.  Nothing is added to the machine's own
  namespace, so no traffic can leave the bed;
* a mount namespace of its own with a private tmpfs on ``/dev/shm`` (one
  ``sleep`` process, the *anchor*, holds both namespaces; every command of
  that host joins them with ``nsenter``), so a process on one host cannot
  read another host's shared memory, as on real machines;
* its own ``HOME`` and ``$PENUMBRA_TMPDIR`` (cluster files, sessions).

A partition takes a host's cable out: its veth's bridge end goes down, so
packets are dropped silently (no reset), as when a switch port dies.
``Relay`` is a fault-injecting TCP relay (delay, stalls, resets) to put
between hosts, since the kernel may lack ``netem``.

Everything is torn down by ``TestBed.close`` (every process in the host
namespaces is killed by pid, then the namespaces are deleted, which removes
the veths and the bridge), even when a test fails.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBNET = "10.231.0"


def unavailable() -> str:
    """Why the bed cannot be built here ("" when it can)."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "making network namespaces needs root (run the multihost tests as root, as CI does)"
    for tool in ("ip", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"the {tool!r} command is missing (iproute2 / util-linux)"
    name = f"pmh{os.getpid()}probe"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return f"'ip netns add' failed: {r.stderr.strip()}"
    try:
        # each host gets its own /dev/shm in a mount namespace of its own
        r = subprocess.run(["ip", "netns", "exec", name, "unshare", "-m", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs tmpfs /dev/shm"], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            return f"cannot make a private /dev/shm in a mount namespace: {r.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return ""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {r.stderr.strip()}")
    return r


@dataclass
class Host:
    """One "machine" of the bed."""

    index: int
    netns: str
    addr: str
    cable: str  # the bridge end of its veth, in the switch namespace
    switch: str
    root: str  # its private directory: HOME, sessions, scripts
    token_file: str
    anchor: subprocess.Popen | None = None
    procs: list = field(default_factory=list)

    @property
    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PENUMBRA_")}
        env.update(HOME=os.path.join(self.root, "home"), PENUMBRA_TMPDIR=os.path.join(self.root, "sessions"),
                   PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
        return env

    def cmd(self, argv: list[str]) -> list[str]:
        """``argv`` run on this host (its network and mount namespaces)."""
        return ["nsenter", "-t", str(self.anchor.pid), "-m", "-n", "--", *argv]

    def run(self, argv: list[str], timeout: float = 60.0, env: dict | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(self.cmd(argv), capture_output=True, text=True, timeout=timeout,
                           env={**self.env, **(env or {})})
        if check and r.returncode != 0:
            raise AssertionError(f"on host {self.index} ({self.addr}) {' '.join(argv)} exited with "
                                 f"{r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def penumbra(self, *args: str, timeout: float = 60.0, check: bool = True, env: dict | None = None):
        """``penumbra ARGS`` on this host."""
        return self.run([sys.executable, "-m", "penumbra.cli", *args], timeout=timeout, check=check, env=env)

    def script(self, name: str, text: str) -> str:
        path = os.path.join(self.root, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def python(self, text: str, timeout: float = 90.0, env: dict | None = None) -> dict:
        """Run a driver script on this host; its last stdout line is JSON: the result."""
        path = self.script(f"driver{len(self.procs)}.py", text)
        token = open(self.token_file).read().strip()
        r = self.run([sys.executable, path], timeout=timeout, env={"PENUMBRA_TOKEN": token, **(env or {})})
        lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
        if not lines:
            raise AssertionError(f"driver on host {self.index} printed nothing:\n{r.stderr}")
        return json.loads(lines[-1])

    def popen(self, text: str, env: dict | None = None) -> subprocess.Popen:
        """Start a driver script on this host without waiting (``finish`` reads it)."""
        path = self.script(f"driver{len(self.procs)}.py", text)
        token = open(self.token_file).read().strip()
        p = subprocess.Popen(self.cmd([sys.executable, path]), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**self.env, "PENUMBRA_TOKEN": token, **(env or {})})
        self.procs.append(p)
        return p

    def cut(self) -> None:
        """Partition this host: its cable goes dead (packets dropped, no reset)."""
        _ip("-n", self.switch, "link", "set", self.cable, "down")

    def heal(self) -> None:
        _ip("-n", self.switch, "link", "set", self.cable, "up")

    def pids(self) -> list[int]:
        r = _ip("netns", "pids", self.netns, check=False)
        return [int(x) for x in r.stdout.split() if x.isdigit()]


def finish(p: subprocess.Popen, timeout: float = 90.0) -> dict:
    """Wait for a driver started with ``Host.popen``; its JSON result."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"driver did not finish within {timeout} s:\n{out}\n{err}")
    if p.returncode != 0:
        raise AssertionError(f"driver exited with {p.returncode}:\n{out}\n{err}")
    return json.loads([ln for ln in out.splitlines() if ln.strip()][-1])


class TestBed:
    """``n`` hosts on one bridge; ``close()`` removes every trace."""

    __test__ = False  # (not a pytest class)

    def __init__(self, n: int, root: str, token: str = "") -> None:
        self.tag = f"pmh{os.getpid()}"
        self.switch = f"{self.tag}sw"
        self.root = root
        self.token = token or os.urandom(32).hex()
        self.hosts: list[Host] = []
        self.relays: list[Relay] = []
        self._netns: list[str] = []
        try:
            self._build(n)
        except BaseException:
            self.close()
            raise

    def _build(self, n: int) -> None:
        _ip("netns", "add", self.switch)
        self._netns.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i in range(n):
            ns = f"{self.tag}h{i}"
            _ip("netns", "add", ns)
            self._netns.append(ns)
            cable = f"h{i}"
            _ip("-n", self.switch, "link", "add", cable, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", self.switch, "link", "set", cable, "master", "br0", "up")
            addr = f"{SUBNET}.{i + 1}"
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            root = os.path.join(self.root, f"host{i}")
            for d in ("home", "sessions"):
                os.makedirs(os.path.join(root, d), mode=0o700, exist_ok=True)
            token_file = os.path.join(root, "home", "token")
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.token + "\n")
            host = Host(i, ns, addr, cable, self.switch, root, token_file)
            # the anchor: holds the host's mount namespace, with /dev/shm its own
            host.anchor = subprocess.Popen(
                ["ip", "netns", "exec", ns, "unshare", "-m", "--propagation", "private", "sh", "-c",
                 "mount -t tmpfs -o size=2g,mode=1777 tmpfs /dev/shm && echo ready && exec sleep 3600"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            line = host.anchor.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"could not give host {i} its own /dev/shm: {host.anchor.stderr.read()}")
            self.hosts.append(host)
        # the bridge learns and forwards: wait until every host sees the others
        deadline = time.monotonic() + 10
        for h in self.hosts[1:]:
            while subprocess.run(h.cmd(["ping", "-c1", "-W1", self.hosts[0].addr]), capture_output=True).returncode:
                if shutil.which("ping") is None or time.monotonic() > deadline:
                    break
                time.sleep(0.05)

    # ---------------------------------------------------------------- clusters
    def start_head(self, host: Host, port: int = 6380, *args: str) -> str:
        r = host.penumbra("start", "--head", "--host", host.addr, "--port", str(port),
                          "--token-file", host.token_file, *args)
        assert f"{host.addr}:{port}" in r.stdout, r.stdout
        return f"{host.addr}:{port}"

    def start_node(self, host: Host, head: str, *args: str, bind: str | None = None) -> str:
        r = host.penumbra("start", "--address", head, "--host", bind or host.addr,
                          "--token-file", host.token_file, *args)
        return r.stdout

    def relay(self, host: Host, port: int, target: tuple[str, int], **kw) -> "Relay":
        """A relay listening on ``host``:``port`` (inside its namespace) to ``target``."""
        r = Relay(host.netns, (host.addr, port), target, **kw)
        self.relays.append(r)
        return r

    # ---------------------------------------------------------------- teardown
    def close(self) -> None:
        for r in self.relays:
            r.close()
        for h in self.hosts:
            for p in h.procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=10)
        # every process left in a host (daemons, zygotes, workers, the anchor): by pid
        for _ in range(3):
            pids = [p for h in self.hosts for p in h.pids() if p != os.getpid()]
            if not pids:
                break
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(_exists(p) for p in pids):
                time.sleep(0.02)
        for h in self.hosts:
            if h.anchor is not None:
                try:
                    h.anchor.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        for ns in reversed(self._netns):
            _ip("netns", "del", ns, check=False)
        self._netns.clear()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ============================================================================
# A fault-injecting relay

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _enter_netns(name: str) -> None:
    """Move the calling *thread* into network namespace ``name`` (sockets it
    creates afterwards live there)."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns into {name}: {os.strerror(e)}")
    finally:
        os.close(fd)


class Relay:
    """A TCP relay from ``listen`` to ``target`` inside network namespace
    ``netns``, with faults: every chunk is held ``delay`` seconds (order
    kept, bandwidth not limited: latency, as netem's delay), ``stall()``
    stops forwarding until ``resume()``, and ``reset()`` aborts every
    connection with an RST.

    Its threads run inside the namespace (``setns`` is per thread), so the
    relay reaches only the bed's addresses.
    """

    def __init__(self, netns: str, listen: tuple[str, int], target: tuple[str, int], delay: float = 0.0) -> None:
        self.netns = netns
        self.listen = listen
        self.target = target
        self.delay = delay
        self.forwarded = 0  # bytes
        self.connections = 0
        self._go = threading.Event()
        self._go.set()
        self._closed = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True, name="relay-accept")
        self._thread.start()
        ready.wait(10)
        if self._error is not None:
            raise self._error

    @property
    def address(self) -> str:
        return f"{self.listen[0]}:{self.listen[1]}"

    def _serve(self, ready: threading.Event) -> None:
        try:
            _enter_netns(self.netns)
            self._lsock = socket.create_server(self.listen, reuse_port=False)
        except BaseException as e:  # noqa: BLE001 - handed to the constructor
            self._error = e
            ready.set()
            return
        ready.set()
        while not self._closed:
            try:
                a, _ = self._lsock.accept()
            except OSError:
                return
            try:
                b = socket.create_connection(self.target, timeout=10)
                b.settimeout(None)
            except OSError:
                a.close()
                continue
            with self._lock:
                self.connections += 1
                self._socks += [a, b]
            for src, dst in ((a, b), (b, a)):
                self._pump(src, dst)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        import queue

        q: queue.Queue = queue.Queue()

        def reader() -> None:
            try:
                while True:
                    data = src.recv(1 << 16)
                    if not data:
                        break
                    q.put((time.monotonic() + self.delay, data))
            except OSError:
                pass
            q.put((0.0, b""))

        def writer() -> None:
            try:
                while True:
                    due, data = q.get()
                    if not data:
                        break
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    self._go.wait()
                    dst.sendall(data)
                    self.forwarded += len(data)
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        threading.Thread(target=reader, daemon=True, name="relay-read").start()
        threading.Thread(target=writer, daemon=True, name="relay-write").start()

    def stall(self) -> None:
        """Stop forwarding (bytes queue up; connections stay open)."""
        self._go.clear()

    def resume(self) -> None:
        self._go.set()

    def reset(self) -> None:
        """Abort every open connection with an RST (SO_LINGER 0), both ways."""
        import struct

        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        self._go.set()
        try:
            self._lsock.close()
        except (OSError, AttributeError):
            pass
        self.reset()


def netem_available(host: Host) -> str:
    """"" if ``tc qdisc ... netem`` works on this kernel, else why not."""
    if shutil.which("tc") is None:
        return "no 'tc' command"
    r = subprocess.run(["ip", "netns", "exec", host.netns, "tc", "qdisc", "add", "dev", "eth0", "root", "netem",
                        "delay", "1ms"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"no netem qdisc in this kernel ({r.stderr.strip()})"
    subprocess.run(["ip", "netns", "exec", host.netns, "tc", "qdisc", "del", "dev", "eth0", "root"],
                   capture_output=True)
    return ""


# ============================================================================
# A fake Slurm: srun and scontrol that run on the bed's hosts

FAKE_SRUN = r'''#!PYTHON
"""A stand-in for Slurm's srun: ``srun [--nodes N] [--ntasks N] -w HOST CMD...``
runs CMD on bed host HOST (its namespaces, HOME and sessions directory)."""
import json, os, sys
bed = json.load(open(os.environ["FAKE_SLURM_BED"]))
args = sys.argv[1:]
host = None
while args and args[0].startswith("-"):
    a = args.pop(0)
    if a in ("-w", "--nodelist"):
        host = args.pop(0)
    elif a.startswith("--nodelist="):
        host = a.split("=", 1)[1]
    elif a in ("-N", "-n", "--nodes", "--ntasks"):
        args.pop(0)
if host is None or host not in bed:
    sys.exit(f"fake srun: give -w HOST, one of {sorted(bed)}")
h = bed[host]
env = dict(os.environ, HOME=h["home"], PENUMBRA_TMPDIR=h["sessions"], SLURMD_NODENAME=host)
os.execvpe("nsenter", ["nsenter", "-t", str(h["anchor"]), "-m", "-n", "--", *args], env)
'''

FAKE_SCONTROL = r'''#!PYTHON
"""A stand-in for ``scontrol show hostnames LIST``: the bed's host names."""
import json, os, sys
if sys.argv[1:3] != ["show", "hostnames"]:
    sys.exit("fake scontrol: only 'show hostnames' is supported")
for name in json.load(open(os.environ["FAKE_SLURM_BED"])):
    print(name)
'''


def fake_slurm(bed: TestBed, directory: str) -> dict:
    """Put fake ``srun``/``scontrol`` in ``directory``; the environment to run
    a batch script with (on the bed's first host, as Slurm would)."""
    os.makedirs(directory, exist_ok=True)
    hosts = {f"host{h.index}": {"anchor": h.anchor.pid, "home": os.path.join(h.root, "home"),
                                "sessions": os.path.join(h.root, "sessions")} for h in bed.hosts}
    bed_file = os.path.join(directory, "bed.json")
    with open(bed_file, "w") as f:
        json.dump(hosts, f)
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(text.replace("PYTHON", sys.executable, 1))
        os.chmod(path, 0o755)
    return {"FAKE_SLURM_BED": bed_file, "PATH": directory + os.pathsep + os.environ.get("PATH", ""),
            "SLURM_JOB_ID": str(os.getpid()), "SLURM_JOB_NODELIST": f"host[0-{len(bed.hosts) - 1}]",
            "SLURM_CPUS_PER_TASK": "2"}
