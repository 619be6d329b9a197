"""CPU per operation, per process: what a sync task, an actor call or a
small put/get costs the driver, the daemon and the workers.

``compare.py`` reports wall-clock rates; on a shared 2-core machine those
move with the neighbours' load.  CPU time (utime + stime from
``/proc/<pid>/stat``, for the driver and every process of its cluster) moves
much less, and says *where* the time goes.  Used to A/B a change against
another tree: run it with that tree on ``PYTHONPATH``::

    PYTHONPATH=/work/main python bench/bench_cpu.py --n 2000
    PYTHONPATH=$PWD      python bench/bench_cpu.py --n 2000

Prints, per workload: wall microseconds per operation, then CPU
microseconds per operation for the driver, the daemon, the workers, and all.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))  # workloads (after PYTHONPATH's tree)

from workloads import INIT_KWARGS, TAG_ENV, cluster_processes  # noqa: E402

_TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        raw = fh.read().decode()
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _role(pid: int, driver: int) -> str:
    """The driver; the daemon (the driver's child); workers (forked by the
    daemon's zygote, so with the daemon's command line: told by parentage)."""
    if pid == driver:
        return "driver"
    with open(f"/proc/{pid}/stat", "rb") as fh:
        raw = fh.read().decode()
    ppid = int(raw[raw.rindex(")") + 2:].split()[1])
    return "daemon" if ppid == driver else "worker"


def _snapshot(driver: int, tag: str) -> dict[int, int]:
    out = {}
    for pid in cluster_processes(driver, tag, [], 0):
        try:
            out[pid] = _cpu_ticks(pid)
        except OSError:
            pass
    return out


def measure(name: str, op, n: int, tag: str) -> dict[str, float]:
    driver = os.getpid()
    for _ in range(min(n // 5, 300)):  # warm up
        op()
    before = _snapshot(driver, tag)
    t0 = time.perf_counter()
    p0 = time.process_time()
    for _ in range(n):
        op()
    wall = time.perf_counter() - t0
    dcpu = time.process_time() - p0
    after = _snapshot(driver, tag)
    per = {"driver": 0.0, "daemon": 0.0, "worker": 0.0}
    for pid, ticks in after.items():
        role = _role(pid, driver)
        if role == "driver":
            continue
        per[role] += (ticks - before.get(pid, ticks)) * _TICK_US
    per["driver"] = dcpu * 1e6
    res = {"wall": wall * 1e6 / n, **{k: v / n for k, v in per.items()}}
    res["all"] = res["driver"] + res["daemon"] + res["worker"]
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="operations per workload")
    p.add_argument("--only", default="tasks_sync,actor_sync,tasks_async,actor_async,put_get_small")
    args = p.parse_args()
    tag = f"bench-cpu-{os.getpid()}"
    os.environ[TAG_ENV] = tag
    import penumbra as ray

    ray.init(**INIT_KWARGS)
    try:
        @ray.remote
        def f():
            return None

        @ray.remote
        class A:
            def m(self):
                return None

        a = A.remote()
        ray.get(a.m.remote())
        value = b"x" * 100
        batch = 100
        ops = {
            "tasks_sync": lambda: ray.get(f.remote()),
            "actor_sync": lambda: ray.get(a.m.remote()),
            # per task: a batch of 100 submitted, then got (n counts batches of 100)
            "tasks_async": lambda: ray.get([f.remote() for _ in range(batch)]),
            "actor_async": lambda: ray.get([a.m.remote() for _ in range(batch)]),
            "put_get_small": lambda: ray.get(ray.put(value)),
        }
        print(f"penumbra from {os.path.dirname(os.path.dirname(ray.__file__))}; load {os.getloadavg()[0]:.2f}")
        print(f"{'workload':14} {'wall us':>8} {'driver':>8} {'daemon':>8} {'workers':>8} {'all CPU':>8}   (per op)")
        for name in args.only.split(","):
            k = batch if name.endswith("_async") else 1
            r = measure(name, ops[name], max(1, args.n // k), tag)
            print(f"{name:14} {r['wall'] / k:8.1f} {r['driver'] / k:8.1f} {r['daemon'] / k:8.1f} "
                  f"{r['worker'] / k:8.1f} {r['all'] / k:8.1f}", flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
