"""Run the benchmark workloads on penumbra and on Ray, side by side.

Why: penumbra's goals are stated relative to Ray on the same machine (e.g.
>= 3x Ray's task throughput, <= 1/3 of its idle memory).  Numbers measured
on different days or machines are not comparable, so this script measures
both systems in the same run and prints the ratios next to the targets.

How: every workload of ``bench/workloads.py`` runs in its own subprocess per
system -- penumbra with this interpreter (``import penumbra as ray``), Ray
with a separate interpreter from its own virtualenv (Ray is never a project
dependency).  Each subprocess writes one JSON result; a per-workload timeout
kills anything that hangs, and every process the run started (found by an
environment tag, since Ray daemonizes some) is cleaned up afterwards by pid.
A failure on one side shows up as an error in the table, never a crash.

Usage::

    python bench/compare.py [--quick] [--ray-python /work/rayenv/bin/python]
                            [--only tasks_sync,put_100mib] [--out bench/results]

Outputs ``<out>/latest.json`` and ``<out>/latest.md`` (plus copies named
``latest-<preset>.*``, so the quick and the full run are both kept) and a
log per workload and system under ``<out>/logs/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import workloads as wl  # needs the path above; imports numpy only

DEFAULT_RAY_PYTHON = "/work/rayenv/bin/python"
RAY_PYTHON_ENV = "PENUMBRA_BENCH_RAY_PYTHON"
SYSTEMS = ("penumbra", "ray")

#: Targets, as penumbra vs Ray.  kind "ratio": the table's ratio (oriented so
#: that > 1 means penumbra is better) must be >= value; kind "max": penumbra's
#: absolute figure must be < value.
TARGETS: dict[tuple[str, str], tuple[str, float, str]] = {
    ("tasks_sync", "tasks_per_s"): ("ratio", 3.0, ">= 3x"),
    ("tasks_async", "tasks_per_s"): ("ratio", 3.0, ">= 3x"),
    ("actor_calls_sync", "calls_per_s"): ("ratio", 3.0, ">= 3x"),
    ("actor_calls_async", "calls_per_s"): ("ratio", 3.0, ">= 3x"),
    ("put_100mib", "put_gb_per_s"): ("ratio", 1.5, ">= 1.5x"),
    ("init_to_first_result", "init_to_first_result_s"): ("max", 1.0, "< 1 s"),
    ("idle_memory", "idle_pss_mib"): ("ratio", 3.0, "<= 1/3 of Ray"),
}


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------
def tagged_pids(tag: str) -> list[int]:
    """PIDs whose environment carries ``TAG_ENV=tag``: everything a run started."""
    needle = f"{wl.TAG_ENV}={tag}".encode()
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open(f"/proc/{name}/environ", "rb") as fh:
                    if needle in fh.read().split(b"\0"):
                        pids.append(int(name))
            except OSError:
                continue
    return pids


def reap(tag: str, grace_s: float = 5.0) -> list[int]:
    """Let a run's leftover processes exit, then kill the stragglers by pid."""
    deadline = time.monotonic() + grace_s
    while (pids := tagged_pids(tag)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
        pids = tagged_pids(tag)
        if not pids:
            break
    return pids


def run_workload(
    system: str,
    python: str,
    workload: str,
    preset: str,
    timeout_s: float,
    log_path: Path,
    nice: int = 0,
) -> dict[str, Any]:
    """One workload on one system in a fresh subprocess; always returns a result dict."""
    tag = uuid.uuid4().hex
    env = dict(os.environ)
    env[wl.TAG_ENV] = tag
    # Ray would otherwise try to report usage statistics over the network.
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    if (
        system == "penumbra"
    ):  # the working tree, for the driver and any worker it spawns
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])
        )
    fd, json_path = tempfile.mkstemp(
        prefix=f"bench-{workload}-{system}-", suffix=".json"
    )
    os.close(fd)
    os.unlink(json_path)
    cmd = [
        python,
        str(BENCH_DIR / "workloads.py"),
        "--api",
        system,
        "--workload",
        workload,
        "--preset",
        preset,
        "--json-out",
        json_path,
    ]
    if nice:  # inherited by every process the system starts
        cmd = ["nice", "-n", str(nice), *cmd]
    load_before = _loadavg()
    t0 = time.perf_counter()
    timed_out = False
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            rc = proc.wait()
    wall = time.perf_counter() - t0
    leftovers = reap(tag)
    try:
        with open(json_path) as fh:
            result = json.load(fh)
        os.unlink(json_path)
    except (OSError, ValueError):
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        reason = (
            f"timed out after {timeout_s:.0f} s"
            if timed_out
            else f"exited with code {rc}"
        )
        result = {"ok": False, "error": f"no result: {reason}", "log_tail": tail}
    result["wall_s"] = wall
    result["loadavg_before"] = load_before
    result["log"] = (
        os.path.relpath(log_path, REPO_ROOT)
        if log_path.is_relative_to(REPO_ROOT)
        else str(log_path)
    )
    if leftovers:
        result["leftover_pids"] = leftovers
    return result


def probe_ray(python: str) -> tuple[str | None, str | None]:
    """(ray version, None) if ``python`` imports ray, else (None, error)."""
    try:
        out = subprocess.run(
            [python, "-c", "import ray; print(ray.__version__)"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if out.returncode != 0:
        return None, (out.stderr.strip().splitlines() or ["import ray failed"])[-1]
    return out.stdout.strip(), None


# --------------------------------------------------------------------------
# Machine info
# --------------------------------------------------------------------------
def _first_line_with(path: str, prefix: str) -> str | None:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    mem_kib = _first_line_with("/proc/meminfo", "MemTotal")
    try:
        shm = shutil.disk_usage("/dev/shm").total / 2**30
    except OSError:
        shm = None
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        rev = None
    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpu": _first_line_with("/proc/cpuinfo", "model name"),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(int(mem_kib.split()[0]) / 2**20, 1) if mem_kib else None,
        "dev_shm_gib": round(shm, 1) if shm is not None else None,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "penumbra_git_rev": rev,
        "loadavg": _loadavg(),
    }


def _loadavg() -> str | None:
    """Other load on the machine skews every figure: record it with them."""
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return None


# --------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------
def fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    a = abs(value)
    if a >= 100:
        return f"{value:,.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 0.01 or a == 0:
        return f"{value:.3f}"
    return f"{value:.2e}"


def build_rows(results: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (workload, metric), with both values, the ratio and the target."""
    rows = []
    for workload, per_system in results.items():
        for i, (metric, unit, better) in enumerate(wl.METRICS[workload]):
            row: dict[str, Any] = {
                "workload": workload,
                "metric": metric,
                "unit": unit,
                "better": better,
            }
            values = {}
            for system in SYSTEMS:
                res = per_system.get(system)
                if res is None:
                    row[system] = None
                    row[f"{system}_cell"] = "-"
                elif not res.get("ok"):
                    row[system] = None
                    # The message once per workload; the error list below has it whole.
                    msg = (res.get("error") or "?").splitlines()[0]
                    if len(msg) > 64:
                        msg = msg[:63] + "~"
                    row[f"{system}_cell"] = "ERROR" + (f": {msg}" if i == 0 else "")
                else:
                    v = res.get("metrics", {}).get(metric)
                    row[system] = v
                    row[f"{system}_cell"] = fmt(v)
                    values[system] = v
            p, r = values.get("penumbra"), values.get("ray")
            ratio = None
            if all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                for v in (p, r)
            ):
                ratio = p / r if better == "higher" else r / p
            row["ratio"] = ratio
            target = TARGETS.get((workload, metric))
            row["target"] = target[2] if target else ""
            met = None
            if target:
                kind, bound, _ = target
                if kind == "ratio" and ratio is not None:
                    met = ratio >= bound
                elif kind == "max" and isinstance(p, (int, float)):
                    met = p < bound
            row["met"] = met
            rows.append(row)
    return rows


def table_lines(rows: list[dict[str, Any]], markdown: bool) -> list[str]:
    header = ["workload", "metric", "unit", "penumbra", "Ray", "ratio", "target", "met"]
    body = []
    for row in rows:
        met = {True: "yes", False: "NO", None: "?" if row["target"] else ""}[row["met"]]
        body.append(
            [
                row["workload"],
                row["metric"],
                row["unit"],
                row["penumbra_cell"],
                row["ray_cell"],
                f"{row['ratio']:.2f}x" if row["ratio"] else "-",
                row["target"],
                met,
            ]
        )
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += [
            "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"
            for cells in body
        ]
        return out
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) for c, w in zip(cells, widths, strict=True)
        ).rstrip()

    return [line(header), line(["-" * w for w in widths]), *[line(c) for c in body]]


def error_lines(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    out = []
    for workload, per_system in results.items():
        for system, res in per_system.items():
            if res and not res.get("ok"):
                msg = (res.get("error") or "?").splitlines()[0]
                out.append(f"- {workload} [{system}]: {msg} (log: {res.get('log')})")
    return out


def write_markdown(
    path: Path,
    meta: dict[str, Any],
    rows: list[dict[str, Any]],
    results: dict[str, dict[str, dict[str, Any]]],
) -> None:
    m = meta["machine"]
    lines = [
        f"# penumbra vs Ray benchmark ({meta['preset']} preset)",
        "",
        f"- date: {m['date_utc']}",
        f"- command: `{meta['command']}`",
        (
            f"- machine: {m['cpus']} CPUs ({m['cpus_usable']} usable), {m['cpu']}, "
            f"{m['memory_gib']} GiB RAM, /dev/shm {m['dev_shm_gib']} GiB, kernel {m['kernel']}"
        ),
        f"- load average (1/5/15 min) before: {m['loadavg_before']}, after: {m['loadavg']}"
        + (f"; workloads ran under nice {meta['nice']}" if meta.get("nice") else ""),
        f"- penumbra: git {m['penumbra_git_rev']}, Python {m['python']} ({meta['penumbra_python']})",
        f"- Ray: {meta.get('ray_version') or 'not run'} ({meta.get('ray_python') or '-'})"
        + (f"; figures from {meta['ray_from']}" if meta.get("ray_from") else ""),
        f"- init kwargs (both): `{meta['init_kwargs']}`",
        (
            "- statistic: median of the measured repetitions after a warm-up "
            "(see bench/workloads.py; best and every repetition are in latest.json)"
        ),
        (
            "- ratio: penumbra / Ray for throughput, Ray / penumbra for time and memory, "
            "so > 1 means penumbra is better"
        ),
        "",
        *table_lines(rows, markdown=True),
    ]
    errors = error_lines(results)
    if errors:
        lines += ["", "## Errors", "", *errors]
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (default: full preset)"
    )
    parser.add_argument(
        "--ray-python",
        default=None,
        help=f"interpreter with ray installed (default: ${RAY_PYTHON_ENV}, "
        f"else {DEFAULT_RAY_PYTHON} if it exists)",
    )
    parser.add_argument("--no-ray", action="store_true", help="run penumbra only")
    parser.add_argument("--no-penumbra", action="store_true", help="run Ray only")
    parser.add_argument(
        "--ray-from",
        type=Path,
        default=None,
        help="take Ray's figures from an earlier results JSON instead of running Ray",
    )
    parser.add_argument("--only", default=None, help="comma-separated workloads to run")
    parser.add_argument(
        "--out",
        type=Path,
        default=BENCH_DIR / "results",
        help="output directory (default: bench/results)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds per workload and system (default: 180 quick, 600 full)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the workloads under `nice -n N` (e.g. -10 on a shared, "
        "busy machine; needs root for negative N)",
    )
    parser.add_argument("--list", action="store_true", help="list workloads and exit")
    args = parser.parse_args(argv)

    if args.list:
        for name, fn in wl.WORKLOADS.items():
            print(f"{name:22} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0

    preset = "quick" if args.quick else "full"
    timeout_s = args.timeout or (180.0 if args.quick else 600.0)
    names = list(wl.WORKLOADS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in wl.WORKLOADS]
        if unknown:
            parser.error(
                f"unknown workload(s) {unknown}; choose from {list(wl.WORKLOADS)}"
            )

    # Which systems, and with which interpreter.
    pythons: dict[str, str] = {}
    if not args.no_penumbra:
        pythons["penumbra"] = sys.executable
        # Byte-compile penumbra first, as ``pip install`` does for Ray: an
        # editable install under PYTHONDONTWRITEBYTECODE=1 (this sandbox
        # sets it) would otherwise recompile every module in every process
        # it starts, about 0.2 s of init_to_first_result.
        import compileall

        compileall.compile_dir(str(BENCH_DIR.parent / "penumbra"), quiet=1)
    ray_version = ray_python = None
    ray_from: dict[str, Any] = {}
    if args.ray_from:
        saved = json.loads(args.ray_from.read_text())
        if saved["meta"]["preset"] != preset:
            print(
                f"warning: {args.ray_from} holds the {saved['meta']['preset']} preset, "
                f"this run is {preset}",
                file=sys.stderr,
            )
        ray_from = {w: r["ray"] for w, r in saved["results"].items() if r.get("ray")}
        ray_version, ray_python = (
            saved["meta"].get("ray_version"),
            saved["meta"].get("ray_python"),
        )
    elif not args.no_ray:
        ray_python = args.ray_python or os.environ.get(RAY_PYTHON_ENV)
        if not ray_python and os.path.exists(DEFAULT_RAY_PYTHON):
            ray_python = DEFAULT_RAY_PYTHON
        if ray_python:
            ray_version, err = probe_ray(ray_python)
            if err:
                print(
                    f"warning: Ray interpreter {ray_python} unusable ({err}); "
                    "running penumbra only",
                    file=sys.stderr,
                )
                ray_python = None
            else:
                pythons["ray"] = ray_python
        else:
            print(
                "note: no Ray interpreter (see bench/README.md); running penumbra only",
                file=sys.stderr,
            )

    out_dir: Path = args.out
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    load_before = _loadavg()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    total = len(names) * len(pythons)
    k = 0
    for workload in names:
        results[workload] = {}
        for system, python in pythons.items():
            k += 1
            print(
                f"[{k:2}/{total}] {workload:22} {system:9} ...",
                end="",
                flush=True,
                file=sys.stderr,
            )
            res = run_workload(
                system,
                python,
                workload,
                preset,
                timeout_s,
                log_dir / f"{preset}-{workload}-{system}.log",
                args.nice,
            )
            status = (
                "ok"
                if res.get("ok")
                else "ERROR " + res.get("error", "").splitlines()[0][:70]
            )
            print(f" {status} ({res['wall_s']:.1f} s)", file=sys.stderr, flush=True)
            results[workload][system] = res
        if workload in ray_from:
            results[workload]["ray"] = ray_from[workload]

    rows = build_rows(results)
    meta = {
        "preset": preset,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": {**machine_info(), "loadavg_before": load_before},
        "penumbra_python": sys.executable,
        "ray_python": ray_python,
        "ray_version": ray_version,
        "ray_from": str(args.ray_from) if args.ray_from else None,
        "init_kwargs": wl.INIT_KWARGS,
        "nice": args.nice,
        "presets": {w: wl.PRESETS[preset][w] for w in names},
        "targets": {f"{w}.{m}": t[2] for (w, m), t in TARGETS.items()},
    }
    payload = {"meta": meta, "rows": rows, "results": results}

    print()
    print("\n".join(table_lines(rows, markdown=False)))
    errors = error_lines(results)
    if errors:
        print("\nerrors:")
        print("\n".join(errors))

    for stem in ("latest", f"latest-{preset}"):
        (out_dir / f"{stem}.json").write_text(json.dumps(payload, indent=1) + "\n")
        write_markdown(out_dir / f"{stem}.md", meta, rows, results)
    print(f"\nwrote {out_dir / 'latest.json'} and {out_dir / 'latest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
