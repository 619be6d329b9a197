"""The paper's applications in ``examples/`` (issue 18), run end to end.

Each example's ``main(argv)`` returns an ``ExampleResult`` whose ``checks``
are the example's own verification (ES and PPO improve their objective,
the search finds a good configuration and stops the bad ones, the
parameter server and the allreduce equal numpy computed locally); the tests
assert on those and on the values behind them, not on printed text.

The default run has one fast test on the real runtime (the smallest
configurations of two examples, one of them as a script, as a user runs
it) and a test of the command lines' validation.  Under ``-m slow``: every
example at its default size on real processes and on the simulator, and on
Ray itself when a Ray install is at hand (``$PENUMBRA_RAY_PYTHON``, default
``/work/rayenv/bin/python``).
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
RAY_PYTHON = os.environ.get("PENUMBRA_RAY_PYTHON", "/work/rayenv/bin/python")
NAMES = ["evolution_strategies", "ppo", "hyperparameter_search", "parameter_server", "allreduce"]
PNG = b"\x89PNG\r\n\x1a\n"


def example(name: str):
    """The example's module, imported as a test imports any module (its remote
    functions pickle by reference; workers get the driver's sys.path)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


def run_script(python: str, name: str, args: list[str], root: Path, timeout: float, env_extra=None):
    """Runs ``examples/NAME.py`` as a user would, in its own session (so a
    timeout kills everything it started); returns the CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PENUMBRA_"))}
    env.update(HOME=str(root), PENUMBRA_HOME=str(root / "penumbra"), RAY_TMPDIR=str(root / "ray"),
               RAY_USAGE_STATS_ENABLED="0", **(env_extra or {}))
    proc = subprocess.Popen([python, str(EXAMPLES / f"{name}.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(root),
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_checked(result, runtime: str) -> None:
    assert result.runtime == runtime
    assert result.checks, "an example must verify what it computed"
    failed = [str(c) for c in result.checks if not c.passed]
    assert not failed, failed
    assert result.remote_calls > 0
    assert result.wall_seconds > 0
    assert (result.virtual_seconds is not None) == (runtime == "penumbra-simulated")
    if result.plot is not None:
        assert Path(result.plot).read_bytes()[:8] == PNG


# ---------------------------------------------------------------------------
# the default run


@pytest.mark.timeout(60)
def test_smallest_examples_run_on_real_processes(tmp_path):
    """ES in this process (values asserted), and the allreduce as a script
    (exit status 0 means its checks passed; the plot is where it says)."""
    es = example("evolution_strategies")
    r = es.main(["--iterations", "12", "--population", "16", "--quiet", "--out", str(tmp_path)])
    assert_checked(r, "penumbra")
    curve = r.values["curve"]
    assert len(curve) == 13 and curve[-1] > curve[0] and max(curve) >= 100
    assert Path(r.plot) == tmp_path / "es_rewards.png"

    root = Path(tempfile.mkdtemp(prefix="pn-ex-"))
    try:
        res = run_script(sys.executable, "allreduce", ["--workers", "3", "--sizes", "1e3,3e4", "--repeats", "1",
                                                       "--out", str(root / "plots")], root, timeout=45,
                         env_extra={"PYTHONPATH": str(REPO)})
        assert res.returncode == 0, res.stdout + res.stderr[-3000:]
        assert "check: every member's vector equals numpy's sum" in res.stdout
        plot = root / "plots" / "allreduce_time.png"
        assert f"plot written to {plot}" in res.stdout
        assert plot.read_bytes()[:8] == PNG
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("name,argv,says", [
    ("allreduce", ["--workers", "1"], "a ring of one has nothing to reduce"),
    ("allreduce", ["--sizes", "1e4,lots"], "--sizes takes numbers separated by commas"),
    ("allreduce", ["--workers", "8", "--sizes", "4"], "every size must be at least --workers"),
    ("parameter_server", ["--shards", "9", "--dim", "8"], "cannot exceed --dim"),
    ("hyperparameter_search", ["--grace", "30", "--epochs", "20"], "--grace must be between 1 and --epochs"),
    ("ppo", ["--nodes", "3"], "--nodes is for --simulated only"),
    ("evolution_strategies", ["--simulated", "--address", "127.0.0.1:6380"], "cannot join --address"),
    ("evolution_strategies", ["--ray"], "run it as a script"),
    ("evolution_strategies", ["--task-time", "0.1"], "--task-time is for --simulated only"),
])
def test_bad_flags_are_refused_with_a_reason(name, argv, says, capsys):
    """Checked before any runtime starts: the message names the flag and what is allowed."""
    with pytest.raises(SystemExit) as e:
        example(name).main(argv + ["--no-plot"])
    assert e.value.code != 0
    assert says in (str(e.value.code) + capsys.readouterr().err)


# ---------------------------------------------------------------------------
# slow: every example at its default size, on both runtimes, and on Ray


def check_values(name: str, r) -> None:
    """What each example must have achieved, from its values."""
    v = r.values
    if name == "evolution_strategies":
        assert v["curve"][-1] > v["curve"][0] and max(v["curve"]) >= 100
        assert v["time_to_target"] == v["times"][v["iterations_to_target"]]
    elif name == "ppo":
        assert sum(v["curve"][-5:]) / 5 > 2 * v["curve"][0]
        assert v["iterations_to_target"] is not None and v["time_to_target"] > 0
    elif name == "hyperparameter_search":
        assert v["best_loss"] <= 1.1 * v["optimum"]
        assert v["stopped"] and all(i in v["stopped"] for i in v["bad"])
        assert all(len(v["history"][i]) < 20 for i in v["stopped"])
    elif name == "parameter_server":
        import numpy as np

        np.testing.assert_allclose(v["learned"], v["expected"], rtol=1e-9, atol=1e-12)
        assert v["relative_error"] < 0.05
    elif name == "allreduce":
        assert v["agree"] and max(v["max_difference"].values()) <= 1e-9
        assert set(v["medians"]) == {10_000, 100_000, 1_000_000}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("simulated", [False, True], ids=["real", "simulated"])
@pytest.mark.parametrize("name", NAMES)
def test_example_at_default_size(name, simulated, tmp_path):
    argv = ["--quiet", "--out", str(tmp_path)] + (["--simulated", "--nodes", "2"] if simulated else [])
    r = example(name).main(argv)
    assert_checked(r, "penumbra-simulated" if simulated else "penumbra")
    assert r.plot is not None and Path(r.plot).parent == tmp_path
    check_values(name, r)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_simulated_examples_scale_out_by_flags(tmp_path):
    """The flags that scale an example up work on many virtual nodes."""
    r = example("allreduce").main(["--quiet", "--simulated", "--nodes", "8", "--workers", "8",
                                   "--sizes", "1e5,2e6", "--repeats", "1", "--out", str(tmp_path)])
    assert_checked(r, "penumbra-simulated")
    # on the simulator the network model decides the time: 20x the bytes take longer
    assert r.values["medians"][2_000_000] > r.values["medians"][100_000]
    r = example("parameter_server").main(["--quiet", "--simulated", "--nodes", "4", "--shards", "4",
                                          "--workers", "8", "--no-plot"])
    assert_checked(r, "penumbra-simulated")
    assert r.values["bit_identical"]
    # --task-time: each call's virtual work, on the clock the example reports
    r = example("evolution_strategies").main(["--quiet", "--simulated", "--nodes", "2", "--workers", "4",
                                              "--task-time", "0.05", "--no-plot"])
    assert_checked(r, "penumbra-simulated")
    assert r.values["time_to_target"] >= 0.05 * 2 * r.values["iterations_to_target"]  # a round and a score each


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not os.access(RAY_PYTHON, os.X_OK), reason=f"no Ray install at {RAY_PYTHON}")
@pytest.mark.parametrize("name", NAMES)
def test_example_runs_unchanged_on_ray(name):
    """``--ray``: the same file with ``import ray``, on Ray's own runtime (its
    exit status says whether its checks passed); penumbra is not on its path."""
    probe = subprocess.run([RAY_PYTHON, "-c", "import ray, numpy"], capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"{RAY_PYTHON} cannot import ray and numpy: {probe.stderr.strip()[-200:]}")
    root = Path(tempfile.mkdtemp(prefix="pn-exray-"))
    try:
        res = run_script(RAY_PYTHON, name, ["--ray", "--quiet", "--out", str(root / "plots")], root, timeout=500)
        assert res.returncode == 0, res.stdout + res.stderr[-3000:]
        assert " on Ray\n" in res.stdout
        assert "FAILED" not in res.stdout
    finally:
        shutil.rmtree(root, ignore_errors=True)
