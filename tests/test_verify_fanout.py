"""``penumbra verify --seeds N --address HOST:PORT``: swarm seeds fanned out
as tasks over a real cluster (``penumbra.verification.fanout``).

The cluster is real: a head and a second node daemon started with
``penumbra start``, each with one CPU, in a private ``$HOME`` and sessions
directory (``test_operations.Machine``, which stops them and frees their
shared memory even when a test fails).  ``verify`` runs as a subprocess, as
a user runs it.  The last test runs the same module, unchanged, on a local
Ray instance, when a Ray install is at hand in ``/work/rayenv`` (penumbra
does not depend on Ray).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_operations import _TREE, Machine, _free_port, _kill_hard, _wait_for  # noqa: E402

from penumbra.cli import main as cli_main  # noqa: E402
from penumbra.verification.bugs import bug_named, planted  # noqa: E402
from penumbra.verification.fanout import _check_chunk, chunk_size, chunks_of, replay_command  # noqa: E402
from penumbra.verification.swarm import check_seed  # noqa: E402

pytestmark = pytest.mark.timeout(300)

RAY_PYTHON = os.environ.get("PENUMBRA_RAY_PYTHON", "/work/rayenv/bin/python")


@pytest.fixture(scope="module")
def two_nodes():
    """A head and one more node, one CPU each: (machine, head address, the
    two node ids)."""
    m = Machine()
    try:
        m.start("--head", "--port", "0", "--num-cpus", "1")
        info = m.head()
        m.start("--address", info["address"], "--num-cpus", "1")
        (node,) = m.head()["nodes"]
        yield m, info["address"], (info["node_id"], node["node_id"])
    finally:
        m.close()


@pytest.fixture
def two_nodes_fast():
    """As ``two_nodes``, for a node to be killed: a death noticed in ~2 s."""
    m = Machine()
    fast = ("--node-timeout", "2", "--heartbeat-interval", "0.5", "--num-cpus", "1")
    try:
        m.start("--head", "--port", "0", *fast)
        info = m.head()
        m.start("--address", info["address"], *fast)
        (node,) = m.head()["nodes"]
        yield m, info["address"], (info["node_id"], node["node_id"])
    finally:
        m.close()


def _verify(m: Machine, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return m.run("verify", *args, timeout=timeout)


def _per_node(stdout: str) -> dict[str, int]:
    """The 'ran on K node(s): ID n, ID n' line, as a dict."""
    line = next(ln for ln in stdout.splitlines() if ln.startswith("ran on "))
    return {name: int(n) for name, n in re.findall(r"(\S+) (\d+)(?:,|$)", line.split(": ", 1)[1])}


def test_seeds_fan_out_over_both_nodes_and_all_pass(two_nodes):
    m, address, nodes = two_nodes
    res = _verify(m, "--seeds", "40", "--address", address)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"^40 seeds in [\d.]+s: 40 ok, 0 failing$", res.stdout, re.M), res.stdout
    per_node = _per_node(res.stdout)
    assert set(per_node) == set(nodes), (per_node, nodes)  # every seed's node is known, and both worked
    assert sum(per_node.values()) == 40
    assert "40/40 seeds, 0 failing" in res.stderr  # the progress came as chunks completed


def test_a_planted_bug_is_planted_in_the_workers_and_its_seed_comes_back_with_its_replay_command(two_nodes):
    m, address, _ = two_nodes
    bug = bug_named("gcs-no-dedup")  # found at seed 0, and at most seeds
    seed = bug.seed
    with planted(bug):  # what the seed gives in one process, here
        here = check_seed(seed)
    assert not here.ok
    res = _verify(m, "--seeds", str(seed + 3), "--address", address, "--plant", bug.name)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"planted bug {bug.name} (in each worker)" in res.stdout
    head = re.search(r"^(\d+) seeds in [\d.]+s: (\d+) ok, (\d+) failing$", res.stdout, re.M)
    assert head and int(head[1]) == seed + 3 and int(head[3]) >= 1, res.stdout
    # the failing seed, as the worker saw it: the same run as here (its trace), and how to replay it
    assert f"seed {seed}: FAILED ({len(here.violations)} violations), trace {here.trace_hash[:16]}," in res.stdout
    assert f"   {here.violations[0]}" in res.stdout
    assert f"   replay: penumbra verify --seed {seed} --plant {bug.name}\n" in res.stdout
    # ...and the driver itself ran with nothing planted: without --plant the same seed passes on the cluster
    clean = _verify(m, "--seeds", str(seed + 1), "--address", address)
    assert clean.returncode == 0 and f"{seed + 1} ok, 0 failing" in clean.stdout, clean.stdout + clean.stderr


def test_a_chunk_past_its_timeout_is_cancelled_and_its_seeds_reported_not_checked(two_nodes):
    m, address, _ = two_nodes
    # one chunk of 40 seeds (~4 s of work) with half a second to do it
    res = _verify(m, "--seeds", "40", "--chunk", "40", "--timeout", "0.5", "--address", address)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "40 seeds in" in res.stdout and "0 ok, 0 failing, 40 not checked" in res.stdout, res.stdout
    assert "seed 0: NOT CHECKED (its chunk (40 seeds from 0) was not done after 0.5 s and was cancelled" in res.stdout
    assert "   replay: penumbra verify --seed 0\n" in res.stdout
    # the cancelled worker is gone and the cluster still serves
    again = _verify(m, "--seeds", "4", "--address", address)
    assert again.returncode == 0 and "4 ok, 0 failing" in again.stdout, again.stdout + again.stderr


class _Running:
    """``penumbra verify`` running in the background; its stderr (the
    progress) read line by line as it comes."""

    def __init__(self, m: Machine, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "penumbra.cli", "verify", *args], env=m.env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.err: list[str] = []
        self.reader = threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True)
        self.reader.start()

    def wait_for_progress(self, text: str, timeout: float = 120) -> None:
        _wait_for(f"progress saying {text!r}", lambda: any(text in ln for ln in self.err) or self.proc.poll(),
                  timeout=timeout)
        assert self.proc.poll() is None, f"verify ended first: {''.join(self.err)[-2000:]}"

    def finish(self, timeout: float = 180) -> subprocess.CompletedProcess:
        try:
            out = self.proc.stdout.read() if self.proc.wait(timeout) is not None else ""
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.reader.join(10)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, "".join(self.err))


def test_a_node_dying_mid_run_loses_no_seed(two_nodes_fast):
    m, address, (head, doomed) = two_nodes_fast
    run = _Running(m, "--seeds", "60", "--chunk", "5", "--address", address)
    try:
        # a chunk came back from the second node: the next ones are running or queued there
        run.wait_for_progress("on 2 node(s)")
        _kill_hard(m.head()["nodes"][0]["pid"])
        res = run.finish()
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    # the runtime re-ran its chunks (max_retries) on the head: every seed checked, once
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert re.search(r"^60 seeds in [\d.]+s: 60 ok, 0 failing$", res.stdout, re.M), res.stdout
    per_node = _per_node(res.stdout)
    assert sum(per_node.values()) == 60 and set(per_node) <= {head, doomed}, per_node
    print(res.stdout)  # (-s) how many seeds each node checked, and the time the death cost


def test_ctrl_c_cancels_the_chunks_in_flight_and_reports_what_finished(two_nodes):
    m, address, _ = two_nodes
    run = _Running(m, "--seeds", "400", "--chunk", "5", "--address", address)
    try:
        run.wait_for_progress("seeds, 0 failing")
        run.proc.send_signal(signal.SIGINT)
        res = run.finish(timeout=60)
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    assert res.returncode == 130, res.stdout + res.stderr[-3000:]
    head = re.search(r"^(\d+) seeds in [\d.]+s: \1 ok, 0 failing \(interrupted: (\d+) of 400 seeds not run\)$",
                     res.stdout, re.M)
    assert head and int(head[1]) + int(head[2]) == 400 and int(head[2]) > 0, res.stdout
    # the cancelled chunks' workers are gone, and the cluster serves the next run
    again = _verify(m, "--seeds", "4", "--address", address)
    assert again.returncode == 0 and "4 ok, 0 failing" in again.stdout, again.stdout + again.stderr


def test_fan_out_options_are_refused_where_they_mean_nothing(capsys):
    assert cli_main(["verify", "--seed", "3", "--address", "127.0.0.1:1"]) == 2
    assert "--seed runs here, in one process: drop --address 127.0.0.1:1" in capsys.readouterr().err
    assert cli_main(["verify", "--seeds", "3", "--chunk", "5"]) == 2
    assert "--chunk is for seeds fanned out over a cluster: add --address HOST:PORT" in capsys.readouterr().err
    assert cli_main(["verify", "--seeds", "3", "--address", "127.0.0.1:1", "--plant", "no-such-bug"]) == 2
    assert "no planted bug is called 'no-such-bug'" in capsys.readouterr().err
    assert cli_main(["verify", "--seeds", "3", "--address", "127.0.0.1:1", "--chunk", "0"]) == 2
    assert "--chunk must be 1 or more" in capsys.readouterr().err


def test_fan_out_reads_the_token_file_the_cli_way_after_checking_its_own_options(tmp_path, capsys):
    """The CLI hands its --token-file reader to the fan-out (verification
    sits below the CLI and does not import it): an unreadable or empty file
    stops ``verify --address`` with the CLI's message, and only once the
    fan-out's own options are known good."""
    missing = str(tmp_path / "missing")
    with pytest.raises(SystemExit, match=r"penumbra verify: cannot read --token-file .*missing"):
        cli_main(["verify", "--seeds", "3", "--address", "127.0.0.1:1", "--token-file", missing])
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SystemExit, match=r"penumbra verify: --token-file .*empty is empty"):
        cli_main(["verify", "--seeds", "3", "--address", "127.0.0.1:1", "--token-file", str(empty)])
    # (a bad option of the fan-out's own is reported first, as before)
    assert cli_main(["verify", "--seeds", "0", "--address", "127.0.0.1:1", "--token-file", missing]) == 2
    assert "--seeds must be 1 or more" in capsys.readouterr().err


def test_an_unreachable_cluster_is_one_line_and_a_failure(two_nodes):
    m = two_nodes[0]
    port = _free_port()  # nobody listens there
    res = _verify(m, "--seeds", "3", "--address", f"127.0.0.1:{port}", timeout=60)
    assert res.returncode == 1
    assert res.stderr.startswith(f"penumbra verify: cannot reach the cluster at 127.0.0.1:{port}: "), res.stderr
    assert "Traceback" not in res.stderr


def test_a_chunk_plants_its_bug_around_its_own_seeds_and_undoes_it():
    """What a worker runs, here in the test process (which has joined no
    cluster: the node falls back to the host's name)."""
    bug = bug_named("gcs-no-dedup")
    got = _check_chunk((bug.seed,), bug.name, "penumbra")
    (o,) = got.outcomes
    assert not o.ok and o.checkers and o.node.startswith("host:"), o
    assert check_seed(bug.seed).ok  # the worker is left as it was: the next chunk runs clean code


def test_chunks_cover_every_seed_once_and_keep_every_cpu_busy():
    assert chunks_of(range(7), 3) == [(0, 1, 2), (3, 4, 5), (6,)]
    assert chunk_size(40, 2) == 5  # 8 chunks: four per CPU
    assert chunk_size(10_000, 2) == 50  # capped: a task's overhead is small against 50 seeds
    assert chunk_size(3, 16) == 1
    assert replay_command(5) == "penumbra verify --seed 5"
    assert replay_command(5, "gcs-no-dedup") == "penumbra verify --seed 5 --plant gcs-no-dedup"
    with pytest.raises(ValueError, match="at least one seed"):
        chunks_of(range(3), 0)


# -- the same module on Ray -----------------------------------------------------


def _ray_shim(root: Path) -> str:
    """A directory with penumbra's dependencies the Ray venv may
    lack (the simulator's), linked from this interpreter's install: Ray's
    own packages stay the venv's."""
    shim = root / "shim"
    shim.mkdir()
    import cloudpickle
    import msgspec  # compiled, but the Ray venv runs the same Python (checked by the import in the child)
    import simpy

    for mod in (cloudpickle, msgspec, simpy):
        (shim / mod.__name__).symlink_to(Path(mod.__file__).parent)
    return str(shim)


@pytest.mark.timeout(420)
@pytest.mark.skipif(not os.access(RAY_PYTHON, os.X_OK), reason=f"no Ray install at {RAY_PYTHON}")
def test_the_same_fan_out_runs_unchanged_on_ray():
    probe = subprocess.run([RAY_PYTHON, "-c", "import ray"], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"{RAY_PYTHON} cannot import ray: {probe.stderr.strip()[-200:]}")
    root = Path(tempfile.mkdtemp(prefix="pn-fanray-"))
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PENUMBRA_"))}
        # the driver and Ray's workers (which inherit its environment) import penumbra from the tree under test
        env.update(PYTHONPATH=os.pathsep.join([_TREE, _ray_shim(root)]), HOME=str(root),
                   RAY_TMPDIR=str(root / "ray"), RAY_USAGE_STATS_ENABLED="0", PENUMBRA_ENABLE_AUTO_CONNECT="0")
        bug = bug_named("gcs-no-dedup")
        # its own session: the local Ray instance ray.init() starts goes with it if the test times out
        proc = subprocess.Popen([RAY_PYTHON, "-m", "penumbra.cli", "verify", "--ray", "--seeds", "6", "--plant",
                                 bug.name], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                cwd=str(root), stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=360)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        assert "fanning 6 seeds out over ray" in res.stdout, res.stdout + res.stderr[-3000:]
        assert res.returncode == 1, res.stdout + res.stderr[-3000:]
        with planted(bug):
            here = check_seed(bug.seed)
        assert re.search(r"^6 seeds in [\d.]+s: \d+ ok, [1-9]\d* failing$", res.stdout, re.M), res.stdout
        want = f"seed {bug.seed}: FAILED ({len(here.violations)} violations), trace {here.trace_hash[:16]},"
        assert want in res.stdout, res.stdout
        assert f"   replay: {replay_command(bug.seed, bug.name)}\n" in res.stdout
        assert len(_per_node(res.stdout)) == 1  # Ray's node id, asked of Ray's runtime context in the worker
    finally:
        shutil.rmtree(root, ignore_errors=True)
