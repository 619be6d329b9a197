"""Benchmark workloads that run unchanged on Ray and on penumbra.

Why this module exists: penumbra claims to be a faster, lighter Ray Core.
To check that claim the same code has to run on both systems on the same
machine.  Every workload here is a plain function ``workload(ray, **params)``
that takes the *API module* -- the real ``ray`` or ``penumbra`` imported as
``ray`` -- uses only Ray Core names on it, and returns a flat ``dict`` of
metrics.  ``bench/compare.py`` runs each workload in a fresh subprocess per
system (``python bench/workloads.py --api ray --workload tasks_sync ...``)
and puts the results side by side.

Design rules:

* No third-party import at top level except numpy, so the module imports in
  both the project interpreter and the separate Ray virtualenv; the API
  module is passed in, never imported here (except by the CLI at the bottom
  and by the fresh child process of ``init_to_first_result``).
* Remote functions and actor classes are defined *inside* each workload, so
  cloudpickle ships them by value and workers never need to import this file.
* Each workload starts its own cluster with ``ray.init(**INIT_KWARGS)`` (the
  same arguments on both systems: ``num_cpus=2`` and an
  ``object_store_memory`` big enough for a few 100 MiB objects) and always
  calls ``ray.shutdown()``.
* Statistics: every workload does a warm-up pass (not measured), then
  ``reps`` measured repetitions.  The reported metric is the **median** of
  the repetitions; ``<metric>_best`` and ``<metric>_reps`` are reported
  beside it for reference.  Sizes come from ``PRESETS`` (``quick`` keeps a
  whole run short, ``full`` is for numbers worth quoting).

Units: rates are per second of wall-clock time (``time.perf_counter``);
GB/s uses decimal gigabytes (1e9 bytes); memory is in MiB (2**20 bytes).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

MIB = 1 << 20

#: Arguments every workload passes to ``ray.init``; both systems accept them.
#: 1 GiB of object store holds the 100 MiB objects of ``put_100mib`` with room
#: to spare (Ray's default would be 30% of RAM; fixing it keeps runs alike).
INIT_KWARGS: dict[str, Any] = {"num_cpus": 2, "object_store_memory": 1 << 30}

#: Environment variable that tags every process a benchmark run starts, so the
#: memory workload (and compare.py's leftover clean-up) can find processes even
#: if the system daemonized them away from the driver's process tree.
TAG_ENV = "PENUMBRA_BENCH_TAG"

#: Prefix of the one stdout line carrying JSON from a child process.
RESULT_MARKER = "@@PENUMBRA_BENCH_RESULT@@"

# --------------------------------------------------------------------------
# Presets: sizes per workload.  "quick" aims at a few seconds of measurement
# per workload (cluster start-up time comes on top); "full" at stable numbers.
# --------------------------------------------------------------------------
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "tasks_sync": {"n": 200, "warmup": 50, "reps": 3},
        "tasks_async": {"n": 1000, "warmup": 200, "reps": 3},
        "nested_tasks": {"parents": 10, "children": 50, "warmup": 2, "reps": 3},
        "actor_calls_sync": {"n": 300, "warmup": 50, "reps": 3},
        "actor_calls_async": {"n": 1000, "warmup": 200, "reps": 3},
        "put_get_small": {"n": 500, "warmup": 100, "reps": 3, "value_bytes": 64},
        "put_100mib": {"mib": 100, "warmup": 1, "reps": 5, "pause_s": 0.5},
        "wait_1000": {"n": 1000, "warmup": 100, "reps": 2},
        "init_to_first_result": {"reps": 1, "child_timeout_s": 120.0},
        "idle_memory": {"settle_s": 3.0},
    },
    "full": {
        "tasks_sync": {"n": 1000, "warmup": 100, "reps": 5},
        "tasks_async": {"n": 5000, "warmup": 500, "reps": 5},
        "nested_tasks": {"parents": 20, "children": 100, "warmup": 4, "reps": 5},
        "actor_calls_sync": {"n": 2000, "warmup": 200, "reps": 5},
        "actor_calls_async": {"n": 5000, "warmup": 500, "reps": 5},
        "put_get_small": {"n": 5000, "warmup": 500, "reps": 5, "value_bytes": 64},
        "put_100mib": {"mib": 100, "warmup": 1, "reps": 10, "pause_s": 0.5},
        "wait_1000": {"n": 1000, "warmup": 200, "reps": 5},
        "init_to_first_result": {"reps": 3, "child_timeout_s": 120.0},
        "idle_memory": {"settle_s": 5.0},
    },
}

#: Metrics shown in the comparison table, per workload:
#: (metric key, unit, "higher" or "lower" is better).  Workloads may return
#: more keys (``*_best``, ``*_reps``, details); those only go to the JSON.
METRICS: dict[str, list[tuple[str, str, str]]] = {
    "tasks_sync": [("tasks_per_s", "tasks/s", "higher")],
    "tasks_async": [("tasks_per_s", "tasks/s", "higher")],
    "nested_tasks": [("child_tasks_per_s", "tasks/s", "higher")],
    "actor_calls_sync": [("calls_per_s", "calls/s", "higher")],
    "actor_calls_async": [("calls_per_s", "calls/s", "higher")],
    "put_get_small": [("ops_per_s", "ops/s", "higher")],
    "put_100mib": [
        ("put_gb_per_s", "GB/s", "higher"),
        ("put_settled_gb_per_s", "GB/s", "higher"),
        ("cold_put_gb_per_s", "GB/s", "higher"),
        ("get_gb_per_s", "GB/s", "higher"),
        ("get_zero_copy", "bool", "higher"),
    ],
    "wait_1000": [
        ("wait_all_s", "s", "lower"),
        ("wait_one_loop_s", "s", "lower"),
    ],
    "init_to_first_result": [
        ("init_to_first_result_s", "s", "lower"),
        ("import_s", "s", "lower"),
    ],
    "idle_memory": [
        ("idle_pss_mib", "MiB", "lower"),
        ("idle_rss_mib", "MiB", "lower"),
        ("idle_processes", "procs", "lower"),
    ],
}


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
@contextlib.contextmanager
def cluster(ray: Any, **overrides: Any) -> Iterator[None]:
    """``ray.init(**INIT_KWARGS)`` for the duration of a block, then shutdown."""
    kwargs = {**INIT_KWARGS, **overrides}
    ray.init(**kwargs)
    try:
        yield
    finally:
        ray.shutdown()


def _summary(
    name: str, samples: list[float], best: Callable[..., float]
) -> dict[str, Any]:
    """Median as the metric, plus the best repetition and all of them."""
    return {
        name: statistics.median(samples),
        f"{name}_best": best(samples),
        f"{name}_reps": samples,
    }


def _rates(name: str, count: int, fn: Callable[[], None], reps: int) -> dict[str, Any]:
    """Run ``fn`` ``reps`` times; ``count`` operations each; report ops/s."""
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append(count / (time.perf_counter() - t0))
    return _summary(name, samples, max)


# --------------------------------------------------------------------------
# Task throughput
# --------------------------------------------------------------------------
def tasks_sync(
    ray: Any, n: int = 1000, warmup: int = 100, reps: int = 5
) -> dict[str, Any]:
    """Round trips of one empty task: ``ray.get(f.remote())`` in a loop."""
    with cluster(ray):
        f = ray.remote(_empty_fn())

        def run(k: int) -> None:
            for _ in range(k):
                ray.get(f.remote())

        run(warmup)
        return {**_rates("tasks_per_s", n, lambda: run(n), reps), "n": n}


def tasks_async(
    ray: Any, n: int = 5000, warmup: int = 500, reps: int = 5
) -> dict[str, Any]:
    """Submit ``n`` empty tasks, then ``ray.get`` the whole list."""
    with cluster(ray):
        f = ray.remote(_empty_fn())

        def run(k: int) -> None:
            ray.get([f.remote() for _ in range(k)])

        run(warmup)
        return {**_rates("tasks_per_s", n, lambda: run(n), reps), "n": n}


def nested_tasks(
    ray: Any, parents: int = 20, children: int = 100, warmup: int = 4, reps: int = 5
) -> dict[str, Any]:
    """``parents`` tasks, each submitting ``children`` empty tasks and getting them.

    Exercises submission from workers and blocking ``get`` inside a task
    (which must release the parent's CPU, or 2 CPUs deadlock).
    """
    with cluster(ray):
        child = ray.remote(_empty_fn())

        def parent_body(k: int) -> int:
            return len(ray.get([child.remote() for _ in range(k)]))

        parent = ray.remote(parent_body)

        def run(p: int) -> None:
            done = ray.get([parent.remote(children) for _ in range(p)])
            assert sum(done) == p * children, done

        run(warmup)
        return {
            **_rates(
                "child_tasks_per_s", parents * children, lambda: run(parents), reps
            ),
            "parents": parents,
            "children": children,
        }


def _empty_fn() -> Callable[[], None]:
    """A fresh empty function object, so each ``ray.remote`` wraps its own."""

    def empty() -> None:
        return None

    return empty


# --------------------------------------------------------------------------
# Actor throughput
# --------------------------------------------------------------------------
def _actor_class() -> type:
    class Actor:
        """An actor whose method does nothing: measures call overhead only."""

        def m(self) -> None:
            return None

    return Actor


def actor_calls_sync(
    ray: Any, n: int = 2000, warmup: int = 200, reps: int = 5
) -> dict[str, Any]:
    """``ray.get(a.m.remote())`` in a loop on one actor."""
    with cluster(ray):
        a = ray.remote(_actor_class()).remote()

        def run(k: int) -> None:
            for _ in range(k):
                ray.get(a.m.remote())

        run(warmup)
        return {**_rates("calls_per_s", n, lambda: run(n), reps), "n": n}


def actor_calls_async(
    ray: Any, n: int = 5000, warmup: int = 500, reps: int = 5
) -> dict[str, Any]:
    """``n`` calls on one actor, then ``ray.get`` them all."""
    with cluster(ray):
        a = ray.remote(_actor_class()).remote()

        def run(k: int) -> None:
            ray.get([a.m.remote() for _ in range(k)])

        run(warmup)
        return {**_rates("calls_per_s", n, lambda: run(n), reps), "n": n}


# --------------------------------------------------------------------------
# Object store
# --------------------------------------------------------------------------
def put_get_small(
    ray: Any, n: int = 5000, warmup: int = 500, reps: int = 5, value_bytes: int = 64
) -> dict[str, Any]:
    """``ray.get(ray.put(value))`` for a small ``bytes`` value, in a loop."""
    value = b"x" * value_bytes
    with cluster(ray):

        def run(k: int) -> None:
            for _ in range(k):
                assert ray.get(ray.put(value)) == value

        run(warmup)
        return {
            **_rates("ops_per_s", n, lambda: run(n), reps),
            "n": n,
            "value_bytes": value_bytes,
        }


def put_100mib(
    ray: Any, mib: int = 100, warmup: int = 1, reps: int = 10, pause_s: float = 0.5
) -> dict[str, Any]:
    """Put a ``mib`` MiB uint8 array (filled with ones, so its pages are real), then get it.

    Three ways to time ``ray.put``, because on this kind of machine writing to
    never-touched memory (page faults) is ~10x slower than to warm memory,
    so a put's speed depends on whether the store hands out recycled pages:

    * ``put_gb_per_s`` (headline, target): back-to-back puts, each object's
      ref dropped before the next put -- what a loop putting large arrays
      sees.  Median of ``reps``.
    * ``put_settled_gb_per_s``: the same, but after a ``pause_s`` sleep that
      lets deferred frees finish (best case).  Median of ``reps``.
    * ``cold_put_gb_per_s``: the first (warm-up) put into the fresh store.

    ``get_gb_per_s`` is size / time of ``ray.get`` of the object just put, in
    the same process; it should be zero-copy: ``get_zero_copy`` is true when
    every returned array (``get_zero_copy_reps``: each one) did not own its
    data and either lies in a shared mapping (the store's shared memory, per
    /proc/self/maps) or shares memory with a second get of the same ref.  ``memcpy_gb_per_s`` is a numpy copy into warm memory on this
    machine, the ceiling for a single-threaded put (no system involved).
    """
    arr = np.ones(mib * MIB, dtype=np.uint8)
    nbytes = arr.nbytes
    put_s: list[float] = []
    settled_s: list[float] = []
    cold_s: list[float] = []
    get_s: list[float] = []
    zero_copy: list[bool] = []

    def one(series: list[float] | None) -> None:
        t0 = time.perf_counter()
        ref = ray.put(arr)
        t1 = time.perf_counter()
        out = ray.get(ref)
        t2 = time.perf_counter()
        assert out.shape == arr.shape and out[0] == 1 and out[-1] == 1
        again = ray.get(ref)
        zc = (not out.flags.owndata) and (
            _in_shared_mapping(out) or bool(np.shares_memory(out, again))
        )
        del out, again, ref
        if series is not None:
            series.append(t1 - t0)
            get_s.append(t2 - t1)
            zero_copy.append(zc)

    with cluster(ray):
        for i in range(warmup):
            one(cold_s if i == 0 else None)
        for _ in range(reps):
            one(put_s)
        for _ in range(reps):
            time.sleep(pause_s)
            one(settled_s)

    dst = np.empty_like(arr)
    np.copyto(dst, arr)  # fault the pages in, then time warm copies
    copies = []
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(dst, arr)
        copies.append(time.perf_counter() - t0)
    memcpy = nbytes / 1e9 / min(copies)
    del dst

    def gbps(times: list[float]) -> list[float]:
        return [nbytes / 1e9 / t for t in times]

    return {
        **_summary("put_gb_per_s", gbps(put_s), max),
        **_summary("put_settled_gb_per_s", gbps(settled_s), max),
        "cold_put_gb_per_s": gbps(cold_s)[0] if cold_s else None,
        **_summary("get_gb_per_s", gbps(get_s), max),
        **_summary("put_s", put_s, min),
        **_summary("get_s", get_s, min),
        "get_zero_copy": all(zero_copy),
        "get_zero_copy_reps": zero_copy,
        "memcpy_gb_per_s": memcpy,
        "bytes": nbytes,
    }


def _in_shared_mapping(arr: np.ndarray) -> bool:
    """Whether ``arr``'s data lies in a MAP_SHARED mapping (e.g. /dev/shm), not private memory."""
    addr = arr.__array_interface__["data"][0]
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                bounds, perms = line.split(None, 2)[:2]
                lo, hi = (int(x, 16) for x in bounds.split("-"))
                if lo <= addr < hi:
                    return perms[3] == "s"
    except OSError:
        pass
    return False


# --------------------------------------------------------------------------
# wait
# --------------------------------------------------------------------------
def wait_1000(
    ray: Any, n: int = 1000, warmup: int = 200, reps: int = 5
) -> dict[str, Any]:
    """Submit ``n`` empty tasks, then wait for them.

    ``wait_all_s``: one ``ray.wait(refs, num_returns=n)`` (timed from after
    submission, so it includes whatever execution is still outstanding).
    ``wait_one_loop_s``: a fresh batch, then ``ray.wait(rest, num_returns=1)``
    repeatedly until nothing is left (the "process results as they come"
    pattern).  ``submit_s`` is the submission time of the first batch.
    """
    all_s: list[float] = []
    loop_s: list[float] = []
    submit_s: list[float] = []
    with cluster(ray):
        f = ray.remote(_empty_fn())
        ray.get([f.remote() for _ in range(warmup)])
        for _ in range(reps):
            t0 = time.perf_counter()
            refs = [f.remote() for _ in range(n)]
            t1 = time.perf_counter()
            ready, rest = ray.wait(refs, num_returns=n)
            t2 = time.perf_counter()
            assert len(ready) == n and not rest
            submit_s.append(t1 - t0)
            all_s.append(t2 - t1)

            rest = [f.remote() for _ in range(n)]
            t3 = time.perf_counter()
            seen = 0
            while rest:
                ready, rest = ray.wait(rest, num_returns=1)
                seen += len(ready)
            loop_s.append(time.perf_counter() - t3)
            assert seen == n
    return {
        **_summary("wait_all_s", all_s, min),
        **_summary("wait_one_loop_s", loop_s, min),
        **_summary("submit_s", submit_s, min),
        "n": n,
    }


# --------------------------------------------------------------------------
# Cold start: init -> first result, in a fresh interpreter
# --------------------------------------------------------------------------
_COLD_START_CHILD = r"""
import importlib, json, sys, time
t0 = time.perf_counter()
mod_name, path_json, kwargs_json, marker = sys.argv[1:5]
sys.path[:0] = [p for p in json.loads(path_json) if p not in sys.path]
ray = importlib.import_module(mod_name)
t1 = time.perf_counter()
ray.init(**json.loads(kwargs_json))
t2 = time.perf_counter()
def one():
    return 1
f = ray.remote(one)
assert ray.get(f.remote()) == 1
t3 = time.perf_counter()
ray.shutdown()
t4 = time.perf_counter()
print(marker + json.dumps({"import_s": t1 - t0, "init_call_s": t2 - t1,
    "init_to_first_result_s": t3 - t1, "import_to_first_result_s": t3 - t0,
    "shutdown_s": t4 - t3}), flush=True)
"""


def init_to_first_result(
    ray: Any, reps: int = 3, child_timeout_s: float = 120.0
) -> dict[str, Any]:
    """Seconds from ``ray.init()`` to the first task's result, in a fresh process.

    ``init`` happens once per process, so each repetition starts a new
    interpreter (``sys.executable``) that imports the same API module, calls
    ``init(**INIT_KWARGS)``, runs one trivial task, and shuts down.
    ``import_s`` (module import) is reported separately; ``process_wall_s``
    is the child's whole life, interpreter start and shutdown included.
    """
    keys = [
        "init_to_first_result_s",
        "import_s",
        "init_call_s",
        "import_to_first_result_s",
        "shutdown_s",
        "process_wall_s",
    ]
    samples: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(reps):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                _COLD_START_CHILD,
                ray.__name__,
                json.dumps(sys.path),
                json.dumps(INIT_KWARGS),
                RESULT_MARKER,
            ],
            capture_output=True,
            text=True,
            timeout=child_timeout_s,
            check=False,
        )
        wall = time.perf_counter() - t0
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARKER)]
        if proc.returncode != 0 or not lines:
            err = proc.stderr.strip().splitlines() or ["no output"]
            raise RuntimeError(
                f"cold-start child failed (rc={proc.returncode}): {err[-1]}\n"
                + "\n".join(err[-40:])
            )
        got = json.loads(lines[-1][len(RESULT_MARKER) :])
        got["process_wall_s"] = wall
        for k in keys:
            samples[k].append(got[k])
    out: dict[str, Any] = {}
    for k in keys:
        out.update(_summary(k, samples[k], min))
    return out


# --------------------------------------------------------------------------
# Idle memory
# --------------------------------------------------------------------------
def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _proc_stat(pid: int) -> tuple[int, int]:
    """(ppid, start time in clock ticks since boot) from /proc/<pid>/stat."""
    raw = _read(f"/proc/{pid}/stat").decode()
    fields = raw[raw.rindex(")") + 2 :].split()  # fields after "(comm)"; [0] is state
    return int(fields[1]), int(fields[19])


def _memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) in KiB; PSS from smaps_rollup when readable, else RSS."""
    rss = pss = None
    for line in _read(f"/proc/{pid}/status").decode().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    try:
        for line in _read(f"/proc/{pid}/smaps_rollup").decode().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    rss = rss or 0
    return (pss if pss is not None else rss), rss


def cluster_processes(
    root: int, tag: str | None, markers: list[str], since_ticks: int
) -> list[int]:
    """PIDs of ``root``, its descendants, and processes started by the run.

    A process belongs to the run if it descends from ``root``, or carries
    ``TAG_ENV=tag`` in its environment (children inherit it even when
    daemonized), or -- if it started at or after ``since_ticks`` -- its command
    line mentions one of ``markers`` (e.g. Ray's session directory).
    """
    children: dict[int, list[int]] = {}
    candidates: set[int] = set()
    tag_bytes = f"{TAG_ENV}={tag}".encode() if tag else None
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            ppid, start = _proc_stat(pid)
            children.setdefault(ppid, []).append(pid)
            if tag_bytes and tag_bytes in _read(f"/proc/{pid}/environ").split(b"\0"):
                candidates.add(pid)
            elif markers and start >= since_ticks:
                cmdline = (
                    _read(f"/proc/{pid}/cmdline")
                    .replace(b"\0", b" ")
                    .decode(errors="replace")
                )
                if any(m in cmdline for m in markers):
                    candidates.add(pid)
        except (OSError, ValueError):
            continue  # exited meanwhile, or unreadable
    found: set[int] = set()
    stack = [root, *candidates]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, []))
    return sorted(found)


def _label(pid: int) -> str:
    """A short name: ``comm``, or for interpreters the script/module they run."""
    comm = _read(f"/proc/{pid}/comm").decode().strip()
    if not comm.startswith("python"):
        return comm
    args = [
        a.decode(errors="replace")
        for a in _read(f"/proc/{pid}/cmdline").split(b"\0")
        if a
    ]
    for i, a in enumerate(args[1:], 1):
        if a == "-m" and i + 1 < len(args):
            return f"{comm} -m {args[i + 1]}"
        if a == "-c":
            return f"{comm} -c"
        if not a.startswith("-"):
            return f"{comm} {os.path.basename(a)}"
    return comm


def _session_markers(ray: Any) -> list[str]:
    """Strings that identify this cluster's daemons on their command lines.

    Only Ray exposes one (its session directory, via a private attribute);
    for other systems the environment tag and the process tree suffice.
    """
    try:
        return [ray._private.worker._global_node.get_session_dir_path()]
    except Exception:  # noqa: BLE001 -- best effort on any system
        return []


def _uptime_ticks() -> int:
    return int(float(_read("/proc/uptime").split()[0]) * os.sysconf("SC_CLK_TCK"))


def measure_memory(ray: Any, tag: str | None, since_ticks: int) -> dict[str, Any]:
    """Sum PSS/RSS of the driver and every process the cluster started."""
    pids = cluster_processes(os.getpid(), tag, _session_markers(ray), since_ticks)
    procs = []
    for pid in pids:
        try:
            pss, rss = _memory_kib(pid)
            label = _label(pid)
        except OSError:
            continue
        procs.append(
            {"pid": pid, "name": label, "pss_mib": pss / 1024, "rss_mib": rss / 1024}
        )
    return {
        "pss_mib": sum(p["pss_mib"] for p in procs),
        "rss_mib": sum(p["rss_mib"] for p in procs),
        "processes": procs,
    }


def idle_memory(ray: Any, settle_s: float = 5.0) -> dict[str, Any]:
    """Memory of an idle cluster ``settle_s`` seconds after ``init``, in MiB.

    Counts the driver (this process, API module imported) plus every process
    the cluster started; PSS (proportional set size, shared pages divided
    among their users) is the headline since RSS double-counts shared
    libraries and shared memory.  ``after_tasks_pss_mib`` is measured again
    after 200 empty tasks and ``settle_s`` more seconds, for reference.
    """
    tag = os.environ.setdefault(TAG_ENV, uuid.uuid4().hex)
    since = _uptime_ticks() - os.sysconf("SC_CLK_TCK")  # one second of slack
    with cluster(ray):
        time.sleep(settle_s)
        idle = measure_memory(ray, tag, since)
        f = ray.remote(_empty_fn())
        ray.get([f.remote() for _ in range(200)])
        time.sleep(settle_s)
        warm = measure_memory(ray, tag, since)
    return {
        "idle_pss_mib": idle["pss_mib"],
        "idle_rss_mib": idle["rss_mib"],
        "idle_processes": len(idle["processes"]),
        "idle_breakdown": idle["processes"],
        "after_tasks_pss_mib": warm["pss_mib"],
        "after_tasks_processes": len(warm["processes"]),
        "settle_s": settle_s,
    }


WORKLOADS: dict[str, Callable[..., dict[str, Any]]] = {
    "tasks_sync": tasks_sync,
    "tasks_async": tasks_async,
    "nested_tasks": nested_tasks,
    "actor_calls_sync": actor_calls_sync,
    "actor_calls_async": actor_calls_async,
    "put_get_small": put_get_small,
    "put_100mib": put_100mib,
    "wait_1000": wait_1000,
    "init_to_first_result": init_to_first_result,
    "idle_memory": idle_memory,
}
assert set(WORKLOADS) == set(METRICS) == set(PRESETS["quick"]) == set(PRESETS["full"])


# --------------------------------------------------------------------------
# CLI: run one workload on one system, write its result as JSON.
# --------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    """numpy scalars and the like into plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def run_one(api: str, workload: str, preset: str) -> dict[str, Any]:
    """Import ``api``, run ``workload`` with ``preset`` sizes; never raises."""
    params = PRESETS[preset][workload]
    result: dict[str, Any] = {
        "api": api,
        "workload": workload,
        "preset": preset,
        "params": params,
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "pid": os.getpid(),
    }
    t0 = time.perf_counter()
    try:
        if api == "penumbra":  # the working tree, even if not installed
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            if root not in sys.path:
                sys.path.insert(0, root)
        mod = importlib.import_module(api)
        result["api_version"] = getattr(mod, "__version__", None)
        result["metrics"] = WORKLOADS[workload](mod, **params)
        result["ok"] = True
    except BaseException as exc:  # noqa: BLE001 -- report everything, even SystemExit
        result["ok"] = False
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
    result["elapsed_s"] = time.perf_counter() - t0
    return _jsonable(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run one benchmark workload on one system."
    )
    parser.add_argument(
        "--api", required=True, help="module to import as `ray` (ray or penumbra)"
    )
    parser.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    parser.add_argument("--json-out", help="write the result here (default: stdout)")
    args = parser.parse_args(argv)
    result = run_one(args.api, args.workload, args.preset)
    text = json.dumps(result, indent=1)
    if args.json_out:
        with open(args.json_out, "w") as fh:
            fh.write(text)
    else:
        print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
