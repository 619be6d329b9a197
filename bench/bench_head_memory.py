"""The head daemon's memory across short-lived jobs: does it come back?

    python bench/bench_head_memory.py                  # 100,000 tasks over 10 jobs
    python bench/bench_head_memory.py --tasks 20000    # smaller
    cd /tmp && PYTHONPATH=/path/to/checkout python /path/to/bench_head_memory.py   # compare checkouts

Starts a real local cluster (one head daemon), measures the head daemon's
memory (``VmRSS`` from ``/proc/PID/status`` and ``Pss`` from
``/proc/PID/smaps_rollup``) at baseline, then runs ``--tasks`` tiny tasks
spread over ``--jobs`` driver programs, each a subprocess that joins with
``penumbra.init(address=...)``, submits its share, gets the results and
exits.  After each job, and once more when every job has ended and the
cluster is idle, it measures again and, where the daemon answers the
``TableSizes`` GCS query, counts the rows of the GCS tables.

A job that ended should leave nothing behind in the GCS (its task and object
rows are forgotten: see ``penumbra/core/tables.py``), so rows return to
baseline; RSS shows what the process actually gives back (Python's
allocator keeps some freed memory for reuse).  A benchmark, not a test:
nothing here asserts timings.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
import time

try:
    import penumbra  # noqa: F401  (whatever checkout PYTHONPATH names)
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import penumbra
from penumbra.transports.launch import Cluster

try:
    from penumbra.core.tables import TableSizes
except ImportError:  # a checkout from before the query existed
    TableSizes = None

DRIVER = textwrap.dedent("""
    import sys
    import penumbra as ray

    address, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ray.init(address=address, _token=token)

    @ray.remote
    def tiny(i):
        return i

    done = 0
    while done < n:
        k = min(2000, n - done)
        assert ray.get([tiny.remote(done + i) for i in range(k)]) == list(range(done, done + k))
        done += k
    ref = ray.put(b"x" * 1000)  # a put too, kept until the driver exits
    assert ray.get(ref) == b"x" * 1000
""")


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, Pss) of ``pid`` in KiB."""
    rss = pss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def gcs_rows() -> dict[str, int] | None:
    """Rows per GCS table over every shard (None: the daemon cannot say)."""
    if TableSizes is None:
        return None
    from penumbra.api.context import current_runtime

    per_shard = current_runtime().gcs_request(TableSizes(), timeout=60)
    out: dict[str, int] = {}
    for shard in per_shard:
        for name, n in shard:
            out[name] = out.get(name, 0) + n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=100_000, help="tiny tasks in all (default 100,000)")
    ap.add_argument("--jobs", type=int, default=10, help="driver programs to spread them over (default 10)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the head node (default 2)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to let the cluster go idle before the last measure")
    args = ap.parse_args()
    if args.tasks < 1 or args.jobs < 1:
        ap.error("--tasks and --jobs must be at least 1")

    repo = os.path.dirname(os.path.dirname(os.path.abspath(penumbra.__file__)))
    here = os.path.realpath(os.getcwd())
    if os.path.isdir(os.path.join(here, "penumbra")) and here != os.path.realpath(repo):
        sys.exit(f"run this from another directory: the daemons start with 'python -m', which puts the current "
                 f"directory ({here}) before PYTHONPATH, so they would run that checkout, not {repo}")
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    os.environ["PYTHONPATH"] = env["PYTHONPATH"]  # (the daemons too)
    print(f"penumbra from {repo}; {args.tasks} tasks over {args.jobs} jobs on {args.cpus} CPUs")

    cluster = Cluster(head_node_args={"num_cpus": args.cpus})
    rows_out: list[tuple] = []
    try:
        script_path = os.path.join(cluster.head.session_dir, "bench_driver.py")
        with open(script_path, "w") as f:
            f.write(DRIVER)
        penumbra.init(address=cluster.address, _token=cluster.token)
        pid = cluster.head.pid

        def measure(label: str, tasks_done: int) -> None:
            rss, pss = memory_kib(pid)
            rows = gcs_rows()
            rows_out.append((label, tasks_done, rss, pss, rows))
            r = "" if rows is None else f"  tasks={rows['tasks']} objects={rows['objects']}"
            print(f"  {label:<12} {tasks_done:>8} tasks  RSS {rss / 1024:7.1f} MiB  PSS {pss / 1024:7.1f} MiB{r}", flush=True)

        def run_job(n: int) -> float:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, script_path, cluster.address, cluster.token, str(n)],
                           env=env, check=True, timeout=3600)
            return time.perf_counter() - t0

        run_job(200)  # warm-up: first imports, worker pool, caches
        time.sleep(1.0)
        measure("baseline", 0)
        per_job = [args.tasks // args.jobs + (1 if i < args.tasks % args.jobs else 0) for i in range(args.jobs)]
        done = 0
        elapsed = 0.0
        for i, n in enumerate(per_job):
            elapsed += run_job(n)
            done += n
            measure(f"after job {i + 1}", done)
        time.sleep(args.settle)
        measure("idle", done)
    finally:
        penumbra.shutdown()
        cluster.shutdown()

    base, last = rows_out[0], rows_out[-1]
    peak_rss = max(r[2] for r in rows_out)
    print()
    print("| measure | RSS MiB | PSS MiB | GCS task rows | GCS object rows |")
    print("|---|---:|---:|---:|---:|")
    for label, _, rss, pss, rows in (base, max(rows_out, key=lambda r: r[2]), last):
        t = "n/a" if rows is None else rows["tasks"]
        o = "n/a" if rows is None else rows["objects"]
        print(f"| {label} | {rss / 1024:.1f} | {pss / 1024:.1f} | {t} | {o} |")
    grew = (last[2] - base[2]) / 1024
    print(f"\n{done} tasks in {elapsed:.1f} s of jobs ({done / elapsed:.0f} tasks/s); "
          f"head RSS after the jobs ended: {grew:+.1f} MiB over baseline "
          f"({grew * 1024 * 1024 / done:.0f} B per task; peak {peak_rss / 1024:.1f} MiB)")


if __name__ == "__main__":
    main()
