"""Object spilling, penumbra against Ray, on this machine in the same run.

    python bench/bench_spill.py                        # 128 MiB store, 3x working set, 3 rounds
    python bench/bench_spill.py --store-mib 256 --rounds 5
    python bench/bench_spill.py --ray-python /work/rayenv/bin/python

Each system runs the same program in a subprocess of its own (penumbra with
this interpreter as ``import penumbra as ray``, Ray with the interpreter of
its virtualenv, as ``bench/compare.py`` does): a one-node cluster with an
object store of ``--store-mib``, spilling to a fresh directory on the same
disk (Ray's ``object_spilling_config``; penumbra's
``object_spilling_directory``).  It puts a working set of ``--factor`` times
the store in objects of ``--object-mib``, holding every ref (so most of it
must go to disk), then reads every object back (restoring it) and checks
its first and last bytes.  Reported: put and read-back throughput in GB/s
(working set / wall time), how many objects were on disk after the puts,
and the best-of-rounds and median figures; the systems alternate so that
drift of this machine's speed hits both alike.  ``--sim`` adds the same
program on penumbra's simulator with the ``LOCAL`` cost model (its disk
bandwidth measured here), in virtual seconds: how well the model predicts.  A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_RAY_PYTHON = "/work/rayenv/bin/python"

PROGRAM = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np
    system, store, factor, obj, spill = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    if system == "ray":
        import ray
        ray.init(num_cpus=1, object_store_memory=store, include_dashboard=False, _system_config={
            "object_spilling_config": json.dumps({"type": "filesystem", "params": {"directory_path": spill}})})
    elif system == "sim":  # penumbra's simulator, with this machine's cost model: virtual time
        import penumbra as ray
        from penumbra.sim import SimConfig
        from penumbra.api import context
        ray.init(simulated=SimConfig(costs="LOCAL"), num_cpus=1, object_store_memory=store)
        rt = context.current_runtime()
        time.perf_counter = lambda: rt.now
        node = rt.cluster.nodes["node:0"]
        os.walk = lambda d: [("", [], list(node.spilled))]
    else:
        import penumbra as ray
        ray.init(num_cpus=1, object_store_memory=store, object_spilling_directory=spill)
    n = int(store * factor) // obj
    values = [np.full(obj, i % 251, np.uint8) for i in range(n)]  # made before timing
    ray.get(ray.put(values[0]))  # warm up: the store's first pages
    t0 = time.perf_counter()
    refs = [ray.put(v) for v in values]
    t1 = time.perf_counter()
    on_disk = sum(len(fs) for _, _, fs in os.walk(spill))
    ok = 0
    for i, r in enumerate(refs):
        a = ray.get(r)
        ok += int(a[0] == i % 251 and a[-1] == i % 251)
        del a
    t2 = time.perf_counter()
    total = n * obj
    print(json.dumps({"system": system, "objects": n, "bytes": total, "put_s": t1 - t0, "get_s": t2 - t1,
                      "put_gb_s": total / (t1 - t0) / 1e9, "get_gb_s": total / (t2 - t1) / 1e9,
                      "files_after_put": on_disk, "correct": ok}))
    del refs
    ray.shutdown()
""")


def run_one(system: str, python: str, args, tmp: str) -> dict:
    spill = tempfile.mkdtemp(prefix=f"spill-{system}-", dir=tmp)
    env = dict(os.environ)
    if system != "ray":
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    else:
        env.pop("PYTHONPATH", None)
    cmd = [python, "-c", PROGRAM, system, str(args.store_mib << 20), str(args.factor), str(args.object_mib << 20),
           spill]
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"system": system, "error": f"timed out after {args.timeout} s"}
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"system": system, "error": f"exit {p.returncode}: {p.stderr.strip()[-600:]}"}
    return json.loads(lines[-1])


def probe_disk(tmp: str, n: int = 40, size: int = 8 << 20) -> tuple[float, float]:
    """Raw write and read MB/s of ``n`` new files of ``size`` bytes in
    ``tmp`` (the spill directories' disk): on this VM new files are written
    at anything from ~0.2 to ~3 GB/s, depending on how much dirty data the
    page cache already holds, so each run reports what the disk did."""
    d = tempfile.mkdtemp(prefix="probe-", dir=tmp)
    buf = bytes(size)
    try:
        t = time.perf_counter()
        for i in range(n):
            with open(os.path.join(d, str(i)), "wb", buffering=0) as f:
                f.write(buf)
        w = n * size / (time.perf_counter() - t) / 1e6
        t = time.perf_counter()
        for i in range(n):
            with open(os.path.join(d, str(i)), "rb", buffering=0) as f:
                f.read()
        r = n * size / (time.perf_counter() - t) / 1e6
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return w, r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store-mib", type=int, default=128, help="object store size (Ray needs >= 75 MiB)")
    ap.add_argument("--factor", type=float, default=3.0, help="working set / store size")
    ap.add_argument("--object-mib", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ray-python", default=os.environ.get("PENUMBRA_BENCH_RAY_PYTHON", DEFAULT_RAY_PYTHON))
    ap.add_argument("--only", choices=["penumbra", "ray"], default=None)
    ap.add_argument("--sim", action="store_true",
                    help="also run the program on penumbra's simulator (LOCAL cost model, virtual seconds)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", default=None, help="write the markdown report here")
    ap.add_argument("--tmp", default=None, help="where the spill directories go (default: the system temp dir)")
    args = ap.parse_args()
    systems = [s for s in ("penumbra", "ray") if args.only in (None, s)]
    if args.sim:
        systems.append("sim")
    if "ray" in systems and not os.path.exists(args.ray_python):
        print(f"no Ray interpreter at {args.ray_python}: give --ray-python, or --only penumbra", file=sys.stderr)
        systems.remove("ray")
    tmp = args.tmp or tempfile.gettempdir()
    results: dict[str, list[dict]] = {s: [] for s in systems}
    probes = [probe_disk(tmp)]
    for r in range(args.rounds):
        for s in (systems if r % 2 == 0 else systems[::-1]):
            res = run_one(s, args.ray_python if s == "ray" else sys.executable, args, tmp)
            results[s].append(res)
            print(f"round {r + 1} {s}: {json.dumps(res)}", flush=True)
    probes.append(probe_disk(tmp))
    rows = []
    summary = {}
    for s in systems:
        good = [x for x in results[s] if "error" not in x]
        if not good:
            rows.append(f"| {s} | error: {results[s][0].get('error', '?')[:200]} | | | |")
            continue
        put = [x["put_gb_s"] for x in good]
        get = [x["get_gb_s"] for x in good]
        summary[s] = (statistics.median(put), statistics.median(get))
        rows.append(f"| {s} | {statistics.median(put):.3f} (best {max(put):.3f}) | "
                    f"{statistics.median(get):.3f} (best {max(get):.3f}) | {good[0]['files_after_put']} | "
                    f"{min(x['correct'] for x in good)}/{good[0]['objects']} |")
    ws = (args.store_mib << 20) * args.factor / (1 << 20)
    lines = [
        f"Working set {ws:.0f} MiB ({args.factor:g}x a {args.store_mib} MiB store) in {args.object_mib} MiB objects, "
        f"{len(results[systems[0]]) if systems else 0} rounds; GB/s = working set / wall time, median (best).",
        "",
        "The spill directories' disk, raw (40 new 8 MiB files), before and after: "
        + ", ".join(f"write {w:.0f} MB/s, read {r:.0f} MB/s" for w, r in probes) + ".",
        "",
        "| system | put GB/s | read back GB/s | files on disk after the puts | correct |",
        "|---|---|---|---|---|",
        *rows,
    ]
    if "penumbra" in summary and "ray" in summary:
        (pp, pg), (rp, rg) = summary["penumbra"], summary["ray"]
        lines += ["", f"penumbra / Ray: put {pp / rp:.2f}x, read back {pg / rg:.2f}x"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"# Spilling: penumbra vs Ray ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n")
            f.write("Command: `python bench/bench_spill.py " + " ".join(sys.argv[1:]) + "`\n\n")
            f.write("Machine: %d CPUs, load average %.1f/%.1f/%.1f at the end (a shared machine: the systems "
                    "alternate rounds, so load hits both).\n\n" % ((os.cpu_count() or 0,) + os.getloadavg()))
            f.write(text + "\n")


if __name__ == "__main__":
    main()
