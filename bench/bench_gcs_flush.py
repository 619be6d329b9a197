"""GCS flushing on the real runtime (the paper's Figure 10b): the head
daemon's memory over a long run of tasks, flushing off and on.

    python bench/bench_gcs_flush.py                    # 100,000 tasks per mode (a few minutes)
    python bench/bench_gcs_flush.py --million          # 1,000,000 tasks per mode
    python bench/bench_gcs_flush.py --tasks 20000 --out /tmp/gcs-flush.md

For each mode it starts a fresh local cluster (one head daemon; with
``_system_config={"gcs_flush": True}``-style settings when on), joins it,
and runs ``--tasks`` tiny tasks in ONE job (a long-running program: no
``ForgetJob`` ever frees its rows), ``--batch`` at a time.  Every
``--every`` tasks it measures the head daemon's ``VmRSS`` and counts the
GCS rows in memory (the ``TableSizes`` query) and on disk (the segment
files under the head's session directory).  It prints a table and writes
markdown to ``--out`` (default ``bench/results/gcs-flush.md``).

What to expect: without flushing, task rows grow by one per task and RSS
with them; with flushing, task rows stay near the threshold and RSS grows
much more slowly.  Object rows are the same in both modes: a task's result
stays cached in the object store (penumbra has no distributed reference
counting), and a row with a location is live; it leaves with the object.
A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

try:
    import penumbra  # noqa: F401  (whatever checkout PYTHONPATH names)
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import penumbra
from penumbra.core.tables import TableSizes
from penumbra.transports.launch import Cluster

FLUSH = {"interval": 1.0, "max_rows": 20_000, "keep_rows": 2_000, "batch": 20_000}


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def gcs_rows() -> dict[str, int]:
    from penumbra.api.context import current_runtime

    out: dict[str, int] = {}
    for shard in current_runtime().gcs_request(TableSizes(), timeout=120):
        for name, n in shard:
            out[name] = out.get(name, 0) + n
    return out


def disk_bytes(session_dir: str) -> int:
    return sum(os.path.getsize(p) for p in glob.glob(os.path.join(session_dir, "gcs-flush", "*", "*.pkl")))


def run_mode(flush: bool, tasks: int, batch: int, every: int, cpus: int) -> list[tuple]:
    args = {"num_cpus": cpus}
    if flush:
        args["gcs_flush"] = FLUSH
    cluster = Cluster(head_node_args=args)
    out: list[tuple] = []
    try:
        penumbra.init(address=cluster.address, _token=cluster.token)
        pid = cluster.head.pid

        @penumbra.remote
        def tiny(i):
            return i

        assert penumbra.get([tiny.remote(i) for i in range(200)]) == list(range(200))  # warm-up
        time.sleep(0.5)

        def measure(done: int, elapsed: float) -> None:
            rows = gcs_rows()
            r = (done, elapsed, rss_kib(pid), rows["tasks"], rows["objects"], disk_bytes(cluster.head.session_dir))
            out.append(r)
            print(f"  {'on ' if flush else 'off'} {done:>9,} tasks {elapsed:7.1f} s  RSS {r[2] / 1024:7.1f} MiB  "
                  f"task rows {r[3]:>9,}  object rows {r[4]:>9,}  on disk {r[5] / 2**20:6.1f} MiB", flush=True)

        measure(0, 0.0)
        done, t0, nxt = 0, time.perf_counter(), every
        while done < tasks:
            k = min(batch, tasks - done)
            got = penumbra.get([tiny.remote(done + i) for i in range(k)], timeout=600)
            assert got[0] == done and got[-1] == done + k - 1
            done += k
            if done >= nxt or done == tasks:
                measure(done, time.perf_counter() - t0)
                nxt += every
        time.sleep(2 * FLUSH["interval"])  # the last flush
        measure(done, time.perf_counter() - t0)
    finally:
        penumbra.shutdown()
        cluster.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=100_000, help="tiny tasks per mode (default 100,000)")
    ap.add_argument("--million", action="store_true", help="1,000,000 tasks per mode (the paper's scale)")
    ap.add_argument("--batch", type=int, default=2_000, help="tasks submitted before each get (default 2,000)")
    ap.add_argument("--every", type=int, default=0, help="measure every N tasks (default: 20 points)")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the head node (default 2)")
    ap.add_argument("--modes", default="off,on", help="which runs, in order (default off,on)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "gcs-flush.md"))
    args = ap.parse_args()
    tasks = 1_000_000 if args.million else args.tasks
    if tasks < 1 or args.batch < 1:
        ap.error("--tasks and --batch must be at least 1")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("off", "on") for m in modes):
        ap.error("--modes takes off, on or both (off,on)")
    every = args.every or max(args.batch, tasks // 20)

    repo = os.path.dirname(os.path.dirname(os.path.abspath(penumbra.__file__)))
    here = os.path.realpath(os.getcwd())
    if os.path.isdir(os.path.join(here, "penumbra")) and here != os.path.realpath(repo):
        sys.exit(f"run this from another directory: the daemons start with 'python -m', which puts the current "
                 f"directory ({here}) before PYTHONPATH, so they would run that checkout, not {repo}")
    os.environ["PYTHONPATH"] = repo + os.pathsep + os.environ.get("PYTHONPATH", "")  # (the daemons too)
    print(f"penumbra from {repo}; {tasks:,} tasks per mode in one job, batches of {args.batch:,}, {args.cpus} CPUs")

    results = {m: run_mode(m == "on", tasks, args.batch, every, args.cpus) for m in modes}

    lines = ["# GCS flushing on the real runtime (Figure 10b)", "",
             f"`python bench/bench_gcs_flush.py --tasks {tasks}` on this machine ({os.cpu_count()} cores): "
             f"{tasks:,} tiny tasks in one job, batches of {args.batch:,}, head daemon with {args.cpus} CPUs. "
             f"Flushing on: `_system_config={{\"gcs_flush\": {FLUSH}}}`.", "",
             "| flushing | tasks | seconds | head RSS MiB | task rows in memory | object rows in memory | on disk MiB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for m, rows in results.items():
        for done, el, rss, t, o, d in rows:
            lines.append(f"| {m} | {done:,} | {el:.1f} | {rss / 1024:.1f} | {t:,} | {o:,} | {d / 2**20:.1f} |")
    lines.append("")
    for m, rows in results.items():
        base, last = rows[0], rows[-1]
        tput = last[0] / last[1] if last[1] else 0.0
        lines.append(f"- flushing {m}: {tput:,.0f} tasks/s; head RSS {base[2] / 1024:.1f} -> {last[2] / 1024:.1f} MiB "
                     f"({(last[2] - base[2]) * 1024 / max(1, last[0]):.0f} B per task); task rows at the end {last[3]:,}")
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
