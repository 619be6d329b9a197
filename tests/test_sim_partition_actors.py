"""One simulation split over partitions that run as actors on a running
cluster (``penumbra.sim.partition_actors``), through Ray Core's API.

The cluster is real: a head and a second node started with ``penumbra
start``, one CPU each, in a private ``$HOME`` and sessions directory
(``test_operations.Machine``, which stops them and frees their shared memory
even when a test fails).  The partitioned run's trace hash and results must
be those of the same simulation run in this process, in one partition.  The
last test runs the same code on a local Ray instance, when a Ray install is
at hand in ``/work/rayenv`` (penumbra does not depend on Ray).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_operations import _TREE, Machine, _free_port  # noqa: E402

import penumbra  # noqa: E402
from penumbra.cli import main as cli_main  # noqa: E402
from penumbra.sim import experiments as E  # noqa: E402
from penumbra.sim.partition import PartitionError, ScalabilitySpec, run_partitioned  # noqa: E402

pytestmark = pytest.mark.timeout(300)

RAY_PYTHON = os.environ.get("PENUMBRA_RAY_PYTHON", "/work/rayenv/bin/python")

SPEC = ScalabilitySpec(nodes=6, setup_at=0.3)
UNTIL = 0.32
MARKS = (0.305, 0.31, UNTIL)


@pytest.fixture(scope="module")
def two_nodes():
    """A head and one more node, one CPU each: (machine, head address, token)."""
    m = Machine()
    try:
        m.start("--head", "--port", "0", "--num-cpus", "1")
        info = m.head()
        m.start("--address", info["address"], "--num-cpus", "1")
        assert len(m.head()["nodes"]) == 1
        yield m, info["address"], info["token"]
    finally:
        m.close()


@pytest.fixture(scope="module")
def reference():
    """The same simulation in this process, in one partition."""
    return run_partitioned(SPEC, 1, UNTIL, processes=False, marks=MARKS)


def _hash_line(stdout: str) -> str:
    return re.search(r"^trace hash: (\w+)$", stdout, re.M)[1]


def test_two_partitions_as_actors_on_a_penumbra_cluster_give_the_in_process_run(two_nodes, reference):
    _, address, token = two_nodes
    got = run_partitioned(SPEC, 2, UNTIL, address=address, token=token, marks=MARKS)
    assert reference.tasks_finished > 1000
    assert (got.trace_hash, got.tasks_finished, got.events, got.windows) == (
        reference.trace_hash, reference.tasks_finished, reference.events, reference.windows)
    assert got.marks == reference.marks and len(got.marks) == 3
    assert got.runner == f"actors on {address}" and len(got.partition_cpu_s) == 2
    assert got.exchanged_batches > 0  # the partitions did talk, through the actor calls
    assert not penumbra.is_initialized()  # the connection it opened is closed again
    # the actors are gone: the cluster's CPUs are free for the next run
    again = run_partitioned(SPEC, 2, UNTIL, address=address, token=token)
    assert again.trace_hash == reference.trace_hash


def test_penumbra_sim_runs_fig8b_partitions_as_actors_with_the_same_hash(two_nodes, tmp_path):
    m, address, _ = two_nodes
    res = m.run("sim", "fig8b", "--nodes", "4", "--partitions", "2", "--address", address, "--out", str(tmp_path),
                timeout=240)
    assert res.returncode in (0, 1), res.stdout + res.stderr  # (1: a check against the paper's 100 nodes)
    here = E.run("fig8b", nodes=[4], partitions=1, progress=False)
    assert _hash_line(res.stdout) == here.trace_hash()
    row = next(ln.split() for ln in res.stdout.splitlines() if ln.split()[:1] == ["4"])
    assert int(row[3]) == here.rows[0][3] and float(row[1]) == pytest.approx(here.rows[0][1], abs=0.06)  # tasks, tasks/s
    assert (tmp_path / "fig8b.csv").exists()


def test_a_cluster_with_too_few_cpus_is_refused_with_what_to_do(two_nodes):
    _, address, token = two_nodes
    with pytest.raises(PartitionError, match=r"has 2 CPUs; a simulation in 3 partitions runs one actor of 1 CPU "
                                             r"per partition: add nodes or CPUs .* or use at most 2 partitions"):
        run_partitioned(SPEC, 3, UNTIL, address=address, token=token)
    assert not penumbra.is_initialized()


def test_an_unreachable_address_is_one_line_saying_what_to_do(two_nodes):
    m = two_nodes[0]
    port = _free_port()  # nobody listens there
    with pytest.raises(PartitionError, match=rf"cannot reach the cluster at 127.0.0.1:{port}: .*penumbra start "
                                             r"--head"):
        run_partitioned(SPEC, 2, UNTIL, address=f"127.0.0.1:{port}")
    res = m.run("sim", "fig8b", "--nodes", "2", "--partitions", "2", "--address", f"127.0.0.1:{port}",
                "--out", str(m.root / "out"), timeout=60)
    assert res.returncode == 1
    assert f"penumbra sim: cannot reach the cluster at 127.0.0.1:{port}: " in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_partition_options_are_refused_where_they_mean_nothing(capsys, tmp_path):
    out = str(tmp_path)
    assert cli_main(["sim", "fig10a", "--partitions", "2", "--out", out]) == 2
    assert "--partitions splits fig8b's (scalability) simulation" in capsys.readouterr().err
    assert cli_main(["sim", "fig8b", "--address", "127.0.0.1:1", "--out", out]) == 2
    assert "add --partitions N" in capsys.readouterr().err
    assert cli_main(["sim", "fig8b", "--partitions", "2", "--token-file", "x", "--out", out]) == 2
    assert "--token-file is for partitions run as actors on a cluster" in capsys.readouterr().err
    assert cli_main(["sim", "fig8b", "--partitions", "0", "--out", out]) == 2
    assert "--partitions wants a whole number >= 1" in capsys.readouterr().err
    missing = str(tmp_path / "missing")
    with pytest.raises(SystemExit, match=r"penumbra sim: cannot read --token-file .*missing"):
        cli_main(["sim", "fig8b", "--partitions", "2", "--address", "127.0.0.1:1", "--token-file", missing,
                  "--out", out])
    with pytest.raises(ValueError, match="ask for one or the other"):
        run_partitioned(SPEC, 2, UNTIL, processes=False, address="local")


def test_a_process_already_connected_is_told_how_to_use_its_connection():
    penumbra.init(num_cpus=1)
    try:
        with pytest.raises(PartitionError, match=r"already connected to a cluster .* call penumbra.shutdown\(\) "
                                                 r"first, then run it again"):
            run_partitioned(SPEC, 2, UNTIL, address="127.0.0.1:1")
    finally:
        penumbra.shutdown()


# -- the same code on Ray -------------------------------------------------------


def _ray_shim(root: Path) -> str:
    """penumbra's dependencies the Ray venv may lack, linked
    from this interpreter's install (as ``test_verify_fanout`` does)."""
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
def test_the_same_partitions_run_as_ray_actors_with_the_same_hash(tmp_path):
    probe = subprocess.run([RAY_PYTHON, "-c", "import ray"], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"{RAY_PYTHON} cannot import ray: {probe.stderr.strip()[-200:]}")
    root = Path(tempfile.mkdtemp(prefix="pn-partray-"))
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PENUMBRA_"))}
        # the driver and Ray's workers (which inherit its environment) import penumbra from the tree under test
        env.update(PYTHONPATH=os.pathsep.join([_TREE, _ray_shim(root)]), HOME=str(root),
                   RAY_TMPDIR=str(root / "ray"), RAY_USAGE_STATS_ENABLED="0", PENUMBRA_ENABLE_AUTO_CONNECT="0",
                   PENUMBRA_NO_PROGRESS="1")
        # its own session: the local Ray instance ray.init() starts goes with it if the test times out
        proc = subprocess.Popen([RAY_PYTHON, "-m", "penumbra.cli", "sim", "fig8b", "--nodes", "4", "--partitions",
                                 "2", "--ray", "--out", str(root / "out")], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=str(root), stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=360)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert proc.returncode in (0, 1), out + err[-3000:]
        here = E.run("fig8b", nodes=[4], partitions=1, progress=False)
        assert _hash_line(out) == here.trace_hash(), out + err[-3000:]
    finally:
        shutil.rmtree(root, ignore_errors=True)
