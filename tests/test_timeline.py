"""``penumbra.timeline()`` and ``penumbra timeline``: what ran where, as a
Chrome trace, from the runs every node machine records -- on real
processes and on the simulator, with the same shape -- and the progress
``penumbra verify`` shows.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict

import pytest

import penumbra as ray
from penumbra._progress import Progress
from penumbra.api.context import current_runtime
from penumbra.api.timeline import chrome_trace
from penumbra.core.ids import TaskId
from penumbra.core.timeline import NodeRuns, TaskRun
from penumbra.sim.runtime import SimConfig
from penumbra.sim.runtime import sleep as sim_sleep

from test_operations import _TREE, machine  # noqa: F401 - the CLI tests' fixture

NAP = 0.2  # a task's sleep (seconds: wall on real processes, virtual in the simulator)
CALL_NAP = 0.1


def program(nap, marker: str | None = None) -> list:
    """The same program for both runtimes: 4 tasks and an actor's 3 calls
    on 2 CPUs (so 2 workers besides the actor's), and, given ``marker``, a
    task whose first worker dies.  ``nap`` sleeps (wall or virtual)."""

    @ray.remote
    def work(i):
        nap(NAP)
        return i

    @ray.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def add(self, k):
            nap(CALL_NAP)
            self.n += k
            return self.n

    out = ray.get([work.remote(i) for i in range(4)])
    c = Counter.remote()
    out += ray.get([c.add.remote(k) for k in (1, 2, 3)])
    if marker is not None:
        @ray.remote(max_retries=1)
        def flaky(path):
            if not os.path.exists(path):
                open(path, "w").close()
                os._exit(1)
            return "recovered"

        out.append(ray.get(flaky.remote(marker)))
    return out


def _runs(events):
    return [e for e in events if e["ph"] == "X"]


def _check_shape(events) -> None:
    """Chrome trace fields, named lanes, and no overlap within a lane."""
    lanes = {(e["pid"], e["tid"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    nodes = {e["pid"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    by_lane = defaultdict(list)
    for e in _runs(events):
        assert {"name", "cat", "ph", "ts", "dur", "pid", "tid", "args"} <= set(e), e
        assert isinstance(e["ts"], float) and isinstance(e["dur"], float) and e["dur"] >= 0
        assert {"task_id", "job_id", "attempt", "status", "node_id", "worker_id"} <= set(e["args"]), e
        assert (e["pid"], e["tid"]) in lanes and e["pid"] in nodes
        by_lane[(e["pid"], e["tid"])].append(e)
    for lane, evs in by_lane.items():
        evs.sort(key=lambda e: e["ts"])
        for a, b in zip(evs, evs[1:]):
            assert a["ts"] + a["dur"] <= b["ts"] + 1e-3, f"runs overlap on lane {lane}: {a} and {b}"
    assert json.loads(json.dumps(events)) == events


def _names(events) -> Counter:
    return Counter((e["name"], e["cat"], e["args"]["status"]) for e in _runs(events))


EXPECTED = Counter({("work", "task", "ok"): 4, ("Counter.__init__", "actor_creation", "ok"): 1,
                    ("Counter.add", "actor_call", "ok"): 3})


# ---------------------------------------------------------------------------- real processes

@pytest.mark.timeout(120)
def test_real_runtime_timeline_has_every_run_on_worker_lanes(tmp_path):
    ray.init(num_cpus=2, object_store_memory=128 << 20, _system_config={"validate": True})
    try:
        before = time.time()
        assert program(time.sleep, str(tmp_path / "crashed-once"))[-1] == "recovered"
        after = time.time()
        events = ray.timeline()
        path = tmp_path / "trace.json"
        assert ray.timeline(filename=str(path)) is None  # as Ray: written, nothing returned
    finally:
        ray.shutdown()
    _check_shape(events)
    names = _names(events)
    assert names - Counter({("flaky", "task", "worker_crashed"): 1, ("flaky", "task", "ok"): 1}) == EXPECTED
    assert names[("flaky", "task", "worker_crashed")] == 1 and names[("flaky", "task", "ok")] == 1
    runs = _runs(events)
    for e in runs:
        # the wall clock: each run lies within the program's run
        assert before * 1e6 - 1e3 <= e["ts"] and e["ts"] + e["dur"] <= after * 1e6 + 1e3, e
        if e["name"] == "work":
            assert e["dur"] >= NAP * 1e6
        if e["name"] == "Counter.add":
            assert e["dur"] >= CALL_NAP * 1e6
    crashed = next(e for e in runs if e["args"]["status"] == "worker_crashed")
    assert crashed["cname"] == "terrible" and crashed["args"]["attempt"] == 0
    assert next(e for e in runs if e["name"] == "flaky" and e["args"]["status"] == "ok")["args"]["attempt"] == 1
    # two workers ran the tasks; the actor's calls are on one lane, after its creation
    assert len({e["tid"] for e in runs if e["name"] == "work"}) == 2
    actor = [e for e in runs if e["name"].startswith("Counter.")]
    assert len({e["tid"] for e in actor}) == 1
    assert min(actor, key=lambda e: e["ts"])["name"] == "Counter.__init__"
    loaded = json.loads(path.read_text())
    assert _names(loaded) == names


# ---------------------------------------------------------------------------- the simulator

@pytest.mark.timeout(120)
def test_simulated_timeline_has_the_same_shape_in_virtual_time():
    ray.init(simulated=SimConfig(num_cpus=2, seed=3, task_time=0.001))
    try:
        assert program(sim_sleep) == [0, 1, 2, 3, 1, 3, 6]
        events = ray.timeline()
        now = current_runtime().now  # virtual seconds
    finally:
        ray.shutdown()
    _check_shape(events)
    assert _names(events) == EXPECTED
    runs = _runs(events)
    for e in runs:
        assert 0 <= e["ts"] and e["ts"] + e["dur"] <= now * 1e6 + 1e-3
        # a virtual sleep parks the task: its bar still starts where it began
        if e["name"] == "work":
            assert e["dur"] >= NAP * 1e6
        if e["name"] == "Counter.add":
            assert e["dur"] >= CALL_NAP * 1e6
    assert len({e["tid"] for e in runs if e["name"] == "work"}) == 2
    assert len({e["tid"] for e in runs if e["name"].startswith("Counter.")}) == 1


@pytest.mark.timeout(60)
def test_simulated_pipelined_actor_calls_do_not_overlap_and_the_record_is_bounded():
    # calls sent ahead to a sequential actor wait on its worker: each bar
    # starts when the one before it ended, not when the node sent it; and a
    # node keeps only its last timeline_limit runs
    ray.init(simulated=SimConfig(num_cpus=1, seed=1, task_time=0.01, layout={"timeline_limit": 5}))
    try:
        @ray.remote
        class A:
            def f(self, i):
                return i

        a = A.remote()
        assert ray.get([a.f.remote(i) for i in range(20)]) == list(range(20))
        (node,) = current_runtime().timeline_runs(timeout=None)
        events = ray.timeline()
    finally:
        ray.shutdown()
    assert node.limit == 5 and len(node.runs) == 5 and node.recorded == 21  # the creation and 20 calls
    _check_shape(events)
    assert [e["name"] for e in _runs(events)] == ["A.f"] * 5
    starts = [e["ts"] for e in _runs(events)]
    assert all(b - a >= 0.01 * 1e6 - 1e-3 for a, b in zip(starts, starts[1:]))


def test_concurrent_runs_of_one_worker_get_lanes_of_their_own():
    # a threaded actor's calls overlap on one worker: extra lanes, no overlap in any
    tid = TaskId(b"\x01" * 16)
    runs = [TaskRun(0.0, 1.0, "n/w0", tid, "A.f", 1, 0, "actor_call", "ok"),
            TaskRun(0.5, 1.5, "n/w0", tid, "A.f", 1, 0, "actor_call", "ok"),
            TaskRun(1.2, 2.0, "n/w0", tid, "A.f", 1, 0, "actor_call", "task_error")]
    events = chrome_trace([NodeRuns("n", runs, offset=10.0)])
    _check_shape(events)
    lanes = [e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"]
    assert lanes == ["n/w0", "n/w0 #2"]
    first = _runs(events)[0]
    assert first["ts"] == 10.0 * 1e6 and first["dur"] == 1e6  # offset applied, microseconds
    assert _runs(events)[-1]["cname"] == "terrible"


# ---------------------------------------------------------------------------- the command

@pytest.mark.timeout(240)
def test_cli_timeline_of_a_started_cluster_has_both_nodes(machine, tmp_path):  # noqa: F811
    machine.start("--head", "--port", "0", "--num-cpus", "1")
    head = machine.head()["address"]
    machine.start("--address", head, "--num-cpus", "1", "--resources", '{"other": 1}')
    code = f"""
import time, penumbra as ray
ray.init(address={head!r})
@ray.remote
def here():
    time.sleep(0.05)
    return 1
@ray.remote(resources={{"other": 1}})
def there():
    time.sleep(0.05)
    return 2
assert ray.get([here.remote(), there.remote(), here.remote()]) == [1, 2, 1]
ray.shutdown()
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=machine.env)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "trace.json"
    res = machine.run("timeline", "--address", head, "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert "wrote 3 runs on 2 node(s)" in res.stdout, res.stdout
    events = json.loads(out.read_text())
    _check_shape(events)
    assert Counter(e["name"] for e in _runs(events)) == Counter({"here": 2, "there": 1})
    (other,) = machine.head()["nodes"]
    (there,) = [e for e in _runs(events) if e["name"] == "there"]
    assert there["args"]["node_id"] == other["node_id"]  # the node with the "other" resource
    assert len({e["pid"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}) == 2


def test_cli_timeline_of_an_unreachable_cluster_is_one_line(machine, tmp_path):  # noqa: F811
    from test_operations import _free_port

    res = machine.run("timeline", "--address", f"127.0.0.1:{_free_port()}", "-o", str(tmp_path / "t.json"),
                      "--timeout", "5", env={"PENUMBRA_TOKEN": "t" * 64})
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("penumbra timeline: cannot get the timeline"), res.stderr
    assert not (tmp_path / "t.json").exists()


# ---------------------------------------------------------------------------- progress

@pytest.mark.timeout(180)
def test_verify_prints_plain_progress_lines_when_not_a_terminal():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([_TREE, os.environ.get("PYTHONPATH", "")]))
    env.pop("PENUMBRA_NO_PROGRESS", None)
    res = subprocess.run([sys.executable, "-m", "penumbra.cli", "verify", "--seeds", "4"], capture_output=True,
                         text=True, timeout=170, env=env, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("verify:")]
    assert [ln.split(" (")[0] for ln in lines] == [f"verify: {i}/4 seeds" for i in (1, 2, 3, 4)], res.stderr
    assert all(", 0 failing, " in ln for ln in lines)
    assert "\r" not in res.stderr
    assert "4 seeds in" in res.stdout


def test_progress_is_a_bar_on_a_terminal_and_a_line_per_tenth_in_a_log(monkeypatch):
    monkeypatch.delenv("PENUMBRA_NO_PROGRESS", raising=False)
    log = io.StringIO()
    with Progress(100, "verify", "seeds", stream=log) as p:
        for i in range(100):
            p.update(1, failing=i // 50)
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and lines[0].startswith("verify: 10/100 seeds (10%), 0 failing")
    assert lines[-1].startswith("verify: 100/100 seeds (100%), 1 failing")
    term = io.StringIO()
    with Progress(3, "verify", "seeds", stream=term, tty=True) as p:
        for _ in range(3):
            p.update(1, failing=0)
    assert "\r" in term.getvalue() and "3/3" in term.getvalue() and "failing=0" in term.getvalue()
    monkeypatch.setenv("PENUMBRA_NO_PROGRESS", "1")
    quiet = io.StringIO()
    with Progress(3, "verify", "seeds", stream=quiet) as p:
        p.update(3)
    assert quiet.getvalue() == ""
    with pytest.raises(ValueError, match="total > 0"):
        Progress(0, "verify")


@pytest.mark.timeout(60)
def test_a_real_nodes_timeline_limit_is_configurable_and_checked():
    with pytest.raises(ValueError, match="timeline_limit must be an int >= 0"):
        ray.init(num_cpus=1, _system_config={"timeline_limit": -1})
    assert not ray.is_initialized()
    ray.init(num_cpus=1, object_store_memory=64 << 20, _system_config={"timeline_limit": 2})
    try:
        @ray.remote
        def f(i):
            return i

        assert ray.get([f.remote(i) for i in range(5)]) == list(range(5))
        (node,) = current_runtime().timeline_runs(timeout=30)
        assert node.limit == 2 and node.recorded == 5 and len(node.runs) == 2
    finally:
        ray.shutdown()
