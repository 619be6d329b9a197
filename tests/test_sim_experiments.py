"""The paper's experiments on the simulator: each quick run must show the
property the paper reports.  Full sizes run with ``-m slow``."""

from __future__ import annotations

import argparse
import csv
import io

import pytest

from penumbra.sim import experiments as E
from penumbra.sim.costs import PAPER


def test_fig8b_throughput_is_linear_and_1_8m_at_100_nodes():
    r = E.fig8b("quick", progress=False)
    assert r.summary["r2"] >= 0.98
    per_node = [row[2] for row in r.rows]
    assert all(abs(p / 18_000 - 1) < 0.05 for p in per_node), per_node
    assert abs(r.summary["throughput_at_100_nodes"] / 1.8e6 - 1) < 0.10
    assert r.passed, r.report()


def test_fig8a_locality_gap_grows_to_an_order_of_magnitude():
    r = E.fig8a("quick", progress=False)
    gaps = [row[3] for row in r.rows]
    assert gaps[0] < 2 and gaps[-1] >= 10, gaps
    assert r.passed, r.report()


def test_fig10a_gcs_failure_latency_and_no_lost_write():
    r = E.fig10a("quick", progress=False)
    assert r.summary["max latency (ms)"] < 30
    assert r.summary["max latency (ms)"] > 5  # the failure was felt: detection takes ~20 ms
    assert r.summary["writes read back intact"] == r.summary["writes acknowledged"] > 1000
    assert r.passed, r.report()


def test_fig10b_flushing_keeps_gcs_memory_flat_and_throughput():
    r = E.fig10b("quick", progress=False)
    assert r.summary["rows in memory at the end, off"] >= 20_000  # a task row and an object row per task
    assert r.summary["rows in memory at the end, on"] < 4_000 < r.summary["rows on disk at the end, on"]
    assert r.summary["throughput on (tasks/s)"] >= 0.9 * r.summary["throughput off (tasks/s)"]
    assert r.passed, r.report()


def test_fig11a_every_result_after_node_failures():
    r = E.fig11a("quick", progress=False)
    assert r.summary["results produced"] == r.summary["tasks"]
    assert r.summary["re-executions"] > 0
    assert r.passed, r.report()


def test_fig11b_checkpoints_cut_replay_by_an_order_of_magnitude():
    r = E.fig11b("quick", progress=False)
    (_, calls0, done0, restarted0, replayed0, wrong0, _, _), (_, calls1, done1, restarted1, replayed1, wrong1, _, _) = r.rows
    assert done0 == calls0 and done1 == calls1
    assert restarted0 == restarted1 > 0
    assert replayed0 >= 10 * max(1, replayed1) and replayed1 > 0
    assert wrong0 == wrong1 == 0
    # the plot's curves: methods the workers ran again, per run
    assert len(r.series["without_reruns"]) >= 10 * max(1, len(r.series["with_reruns"]))
    assert r.series["with_reruns"] and min(r.series["without_reruns"]) >= r.series["killed_at"]
    assert r.passed, r.report()


def test_experiments_are_deterministic():
    a = E.fig10a("quick", seed=3, progress=False)
    b = E.fig10a("quick", seed=3, progress=False)
    c = E.fig10a("quick", seed=4, progress=False)
    assert a.trace_hash() == b.trace_hash() and a.rows == b.rows
    assert a.trace_hash() != c.trace_hash()


def test_cli_writes_csv_and_png(tmp_path, capsys):
    args = argparse.Namespace(experiment="fig10a", size="quick", preset="paper", seed=0, out=str(tmp_path))
    assert E.run_experiment_cli(args) == 0
    out = capsys.readouterr().out
    assert "check PASS: no acknowledged write lost" in out and "trace hash:" in out
    rows = list(csv.reader(io.StringIO((tmp_path / "fig10a.csv").read_text())))
    assert rows[0] == ["time (s)", "max write latency in the 10 ms bin (ms)"] and len(rows) > 10
    png = (tmp_path / "fig10a.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_an_unknown_experiment(tmp_path, capsys):
    args = argparse.Namespace(experiment="fig99", size="quick", preset="paper", seed=0, out=str(tmp_path))
    assert E.run_experiment_cli(args) == 2
    assert "unknown experiment 'fig99'" in capsys.readouterr().err


def test_linear_fit_and_progress(capsys):
    a, b, r2 = E.linear_fit([1, 2, 3, 4], [3, 5, 7, 9])
    assert (round(a, 9), round(b, 9), r2) == (1.0, 2.0, 1.0)
    p = E.Progress(10, "x", stream=None)
    p.update(5)
    p.close()
    assert E.node_task_rate(PAPER) > 15_000


def test_local_preset_is_calibrated():
    from penumbra.sim.costs import LOCAL

    assert LOCAL.calibrated, "LOCAL must come from CostModel.from_benchmark (bench/bench_sim.py --fidelity)"


@pytest.mark.slow
@pytest.mark.timeout(1800)  # (fig10b's full run takes about 2 minutes here, fig8b's a few)
@pytest.mark.parametrize("name", list(E.EXPERIMENTS))
def test_full_size(name):
    r = E.run(name, size="full", progress=False)
    assert r.passed, r.report()


# ---------------------------------------------------------------------------
# `penumbra sim` as a user meets it: --help, --nodes, progress


def test_sim_help_explains_each_option():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "penumbra.cli", "sim", "--help"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    for opt, words in (("--size", "paper's sizes"), ("--nodes", "cluster sizes"), ("--preset", "cost model"),
                       ("--seed", "trace hash"), ("--out", "CSV"), ("EXPERIMENT", "fig11b")):
        assert opt in out and words in out, (opt, out)


def test_cli_nodes_sets_the_cluster_sizes_of_fig8b(tmp_path, capsys):
    args = argparse.Namespace(experiment="fig8b", size="quick", preset="paper", seed=0, out=str(tmp_path),
                              nodes=[3, 5])
    assert E.run_experiment_cli(args) == 0
    rows = list(csv.reader(io.StringIO((tmp_path / "fig8b.csv").read_text())))
    assert [r[0] for r in rows[1:]] == ["3", "5"]


def test_cli_nodes_is_refused_where_it_does_not_apply(tmp_path, capsys):
    args = argparse.Namespace(experiment="fig10a", size="quick", preset="paper", seed=0, out=str(tmp_path),
                              nodes=[3])
    assert E.run_experiment_cli(args) == 2
    assert "--nodes sets the cluster sizes of fig8b" in capsys.readouterr().err
    with pytest.raises(ValueError, match="cluster sizes >= 1"):
        E.run("fig8b", nodes=[0])


def test_progress_moves_within_a_point():
    seen = []
    E.run_scalability_point(4, PAPER, 0, warm_tasks=50, measure_tasks=50, on_progress=seen.append)
    assert len(seen) >= 20 and seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    assert 0 < seen[0] < 0.5


def test_progress_prints_plain_lines_when_not_a_terminal(monkeypatch):
    """Through the project's progress helper: a line per tenth in a log
    (fractional units are fine), a tqdm bar on a terminal."""
    monkeypatch.delenv("PENUMBRA_NO_PROGRESS", raising=False)
    s = io.StringIO()
    p = E.Progress(2000, "fig8b", stream=s, unit="node-points")
    p.update(650.5, "1000 nodes")
    p.update(2000)
    p.close()
    lines = s.getvalue().splitlines()
    assert lines[0].startswith("fig8b: 650/2000 node-points (32%), 1000 nodes now")
    assert lines[-1].startswith("fig8b: 2000/2000 node-points (100%)") and "\r" not in s.getvalue()
    s = io.StringIO()
    p = E.Progress(0.3, "fig10a", stream=s)  # simulated seconds: counted in percent
    p.update(0.15)
    assert s.getvalue().startswith("fig10a: 50/100 % (50%)")

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    t = Tty()
    p = E.Progress(10, "fig8b", stream=t)
    p.update(5, "100 nodes")
    p.close()
    assert "\r" in t.getvalue() and "100 nodes" in t.getvalue()  # a tqdm bar
