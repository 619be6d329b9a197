"""Where an actor call's microseconds go: direct calls vs the routed path.

Runs ``ray.get(a.f.remote())`` in a loop (sync) and ``ray.get([a.f.remote()
for _ in range(n)])`` (async) on one actor, with direct calls on and off
(``PENUMBRA_DIRECT_CALLS``), alternating, each in a fresh process, and
reports per call: wall time, and the CPU time of the driver, of the actor's
worker and of the node daemon (from ``/proc``), so that on a shared,
noisy machine the CPU figures still say where the time is.

    python bench/bench_direct_calls.py [--rounds 3] [--sync 3000] [--async-n 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, os, sys, time
import penumbra as ray
from penumbra.api.context import current_runtime

def cpu_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")

@ray.remote
class A:
    def f(self):
        return None
    def pid(self):
        return os.getpid()

mode, n = sys.argv[1], int(sys.argv[2])
ray.init(num_cpus=2)
rt = current_runtime()
a = A.remote()
wpid = ray.get(a.pid.remote())
dpid = rt.embedded.pid

def run(k):
    if mode == "sync":
        for _ in range(k):
            ray.get(a.f.remote())
    else:
        ray.get([a.f.remote() for _ in range(k)])

run(n // 10)
c0, w0, d0, t0 = time.process_time(), cpu_of(wpid), cpu_of(dpid), time.perf_counter()
run(n)
t1, c1, w1, d1 = time.perf_counter(), time.process_time(), cpu_of(wpid), cpu_of(dpid)
print(json.dumps({"wall": (t1 - t0) / n * 1e6, "driver": (c1 - c0) / n * 1e6,
                  "worker": (w1 - w0) / n * 1e6, "daemon": (d1 - d0) / n * 1e6}))
ray.shutdown()
"""


def one(mode: str, n: int, direct: bool) -> dict:
    env = dict(os.environ, PENUMBRA_DIRECT_CALLS="1" if direct else "0")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(n)], env=env, capture_output=True, text=True,
                         timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sync", type=int, default=3000, help="calls per sync run")
    p.add_argument("--async-n", type=int, default=5000, help="calls per async run")
    args = p.parse_args()
    rows = []
    for mode, n in (("sync", args.sync), ("async", args.async_n)):
        got: dict[bool, list[dict]] = {True: [], False: []}
        for _ in range(args.rounds):
            for direct in (False, True):  # A/B, alternated
                got[direct].append(one(mode, n, direct))
        for direct in (False, True):
            med = {k: statistics.median(r[k] for r in got[direct]) for k in ("wall", "driver", "worker", "daemon")}
            rows.append((mode, "direct" if direct else "routed", med))
    print(f"load average: {os.getloadavg()}")
    print("| calls | path | wall us/call | driver CPU us | worker CPU us | daemon CPU us | CPU total us |")
    print("|---|---|---|---|---|---|---|")
    for mode, path, m in rows:
        total = m["driver"] + m["worker"] + m["daemon"]
        print(f"| {mode} | {path} | {m['wall']:.0f} | {m['driver']:.0f} | {m['worker']:.0f} | {m['daemon']:.0f} | {total:.0f} |")


if __name__ == "__main__":
    main()
