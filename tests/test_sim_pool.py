"""``penumbra sim --jobs N``: Figure 8b's cluster sizes in worker processes.

The points run in real spawned processes (``experiments_pool``); the result
must be the one process's, to the byte where the run decides it (every
column but the wall times, the trace hashes, the plot), and a point that
fails, dies or hangs must stop the run with an error naming it, its
workers gone.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import multiprocessing
import os
import time

import pytest

from penumbra.sim import experiments as E
from penumbra.sim.experiments_pool import PointError, run_points

WALL_COLUMNS = ("wall (s)", "sim tasks/wall s")


def _cli(tmp_path, name: str, **kw) -> tuple[int, str, str]:
    out = tmp_path / name
    args = argparse.Namespace(experiment="fig8b", size="quick", preset="paper", seed=0, out=str(out), **kw)
    return E.run_experiment_cli(args), (out / "fig8b.csv").read_text(), str(out / "fig8b.png")


def _without_wall(csv_text: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(csv_text)))
    keep = [i for i, c in enumerate(rows[0]) if c not in WALL_COLUMNS]
    return [[r[i] for i in keep] for r in rows]


@pytest.mark.timeout(300)
def test_jobs_2_gives_the_one_process_table_csv_plot_and_hashes(tmp_path, capsys):
    one = E.run("fig8b", progress=False, jobs=1)
    two = E.run("fig8b", progress=False, jobs=2)
    assert two.hashes == one.hashes and two.trace_hash() == one.trace_hash()
    assert [r[0] for r in two.rows] == [2, 4, 8, 12]  # (asked order, though the largest ran first)
    cols = [i for i, c in enumerate(one.columns) if c not in WALL_COLUMNS]
    assert [[r[i] for i in cols] for r in two.rows] == [[r[i] for i in cols] for r in one.rows]
    assert two.summary == one.summary and two.checks == one.checks and two.series == one.series
    # through the command line: the CSV and the plot
    status1, csv1, png1 = _cli(tmp_path, "one", jobs=1)
    status2, csv2, png2 = _cli(tmp_path, "two", jobs=2)
    assert status1 == status2 == 0
    assert _without_wall(csv1) == _without_wall(csv2)
    with open(png1, "rb") as a, open(png2, "rb") as b:
        assert a.read() == b.read()
    out = capsys.readouterr().out
    assert out.count(f"trace hash: {one.trace_hash()}") == 2


@pytest.mark.timeout(300)
def test_progress_moves_in_plain_lines_with_jobs(monkeypatch, capsys):
    monkeypatch.delenv("PENUMBRA_NO_PROGRESS", raising=False)
    E.run("fig8b", progress=True, jobs=2, nodes=[4, 8])
    lines = capsys.readouterr().err.splitlines()
    # (how many lines depends on how the points' reports fall between the
    # parent's polls: only what holds for every timing is asserted)
    assert lines and "\r" not in "".join(lines), lines
    done = [int(line.split(": ")[1].split("/")[0]) for line in lines]
    assert done == sorted(done) and done[-1] == 12, lines
    assert all(line.startswith("fig8b: ") and "node-points" in line for line in lines), lines


def test_jobs_is_refused_where_it_does_not_apply(tmp_path, capsys):
    with pytest.raises(ValueError, match="do not combine"):
        E.run("fig8b", jobs=2, partitions=2)
    with pytest.raises(ValueError, match="--jobs runs fig8b's cluster sizes"):
        E.run("fig10a", jobs=2)
    with pytest.raises(ValueError, match="whole number of worker processes"):
        E.run("fig8b", jobs=0)
    args = argparse.Namespace(experiment="fig8b", size="quick", preset="paper", seed=0, out=str(tmp_path),
                              jobs=2, partitions=2)
    assert E.run_experiment_cli(args) == 2
    assert "--jobs N runs whole cluster sizes in parallel" in capsys.readouterr().err
    from penumbra.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["sim", "fig8b", "--jobs", "0"])
    assert "not a number of worker processes" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# a point that fails, dies or hangs (functions run in the spawned workers)


def _point(n: int, on_progress, *, fail: int = -1, die: int = -1, hang: int = -1) -> dict:
    on_progress(0.5)
    if n == fail:
        raise ValueError(f"no good at {n}")
    if n == die:
        os._exit(3)
    if n == hang:
        time.sleep(600)
    time.sleep(0.05)
    return {"n": n, "pid": os.getpid()}


def _pool(**kw) -> list[dict]:
    return run_points(functools.partial(_point, **{k: v for k, v in kw.items() if k != "stall"}), [1, 2, 3],
                      jobs=2, label=lambda n: f"the {n}-node point", cost=float,
                      stall_timeout=kw.get("stall", 120))


def _no_children_left(deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while multiprocessing.active_children() and time.monotonic() < end:
        time.sleep(0.05)
    assert not multiprocessing.active_children()


@pytest.mark.timeout(120)
def test_points_come_back_in_order():
    assert [r["n"] for r in _pool()] == [1, 2, 3]
    _no_children_left()


@pytest.mark.timeout(120)
def test_a_point_that_raises_is_named_with_its_traceback():
    with pytest.raises(PointError, match=r"the 2-node point failed in a worker process: ValueError: no good at 2") as e:
        _pool(fail=2)
    assert "the worker's traceback" in str(e.value) and "_point" in str(e.value)
    _no_children_left()


@pytest.mark.timeout(120)
def test_a_worker_that_dies_is_an_error_not_a_hang():
    with pytest.raises(PointError, match=r"a worker process ended abruptly .* while running .*the 3-node point"):
        _pool(die=3)
    _no_children_left()


@pytest.mark.timeout(120)
def test_a_hung_point_is_stopped_and_named():
    t0 = time.monotonic()
    with pytest.raises(PointError, match=r"the 3-node point reported no progress for 3 s"):
        _pool(hang=3, stall=3)
    assert time.monotonic() - t0 < 60
    _no_children_left()


@pytest.mark.timeout(120)
def test_an_interrupt_terminates_the_workers():
    pids: list[int] = []

    def interrupt(i: int, fraction: float) -> None:
        pids.extend(p.pid for p in multiprocessing.active_children())
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_points(functools.partial(_point, hang=3), [3, 1], jobs=2, label=str, cost=float, on_progress=interrupt)
    _no_children_left()
    assert pids
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_sim_help_explains_jobs():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "penumbra.cli", "sim", "--help"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "--jobs N" in out and "os.cpu_count()" in out and "largest first" in out, out
