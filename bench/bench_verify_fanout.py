"""Wall time of ``penumbra verify --seeds N``: fanned out over a local
multi-node cluster (``--address``) against one process.

Starts a private cluster (its own ``$HOME`` and sessions directory, so no
cluster of anyone else is touched): a head and ``--nodes - 1`` more node
daemons, ``--cpus-per-node`` CPUs each; runs ``verify --seeds N --address``
on it, stops it, then runs ``verify --seeds N`` in one process.  Prints each
command, its wall time, its summary line and the load average around it
(the machine may be shared: say so next to the figures).

::

    python bench/bench_verify_fanout.py --seeds 10000                 # head + 1 node, 1 CPU each
    python bench/bench_verify_fanout.py --seeds 2000 --nodes 1 --cpus-per-node 2
    python bench/bench_verify_fanout.py --seeds 2000 --only fanout     # or: --only local

Run it from outside a checkout or with the tree on ``PYTHONPATH``: the
daemons and the CLI are started with ``python -m`` from the current
directory's view of ``penumbra``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TREE = str(Path(__file__).resolve().parent.parent)


def _env(root: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PENUMBRA_TOKEN", "PENUMBRA_HOME", "PENUMBRA_ADDRESS", "PENUMBRA_TMPDIR")}
    (root / "home").mkdir()
    env.update(HOME=str(root / "home"), PENUMBRA_TMPDIR=str(root / "s"),
               PYTHONPATH=os.pathsep.join([TREE, env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return env


def _cli(env: dict, *args: str, timeout: float = 120, cwd: str | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "penumbra.cli", *args], env=env, capture_output=True, text=True,
                         timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)
    if res.returncode not in (0, 1):
        raise RuntimeError(f"penumbra {' '.join(args)} failed ({res.returncode}): {res.stderr[-2000:]}")
    return res


def _timed(env: dict, args: list[str], cwd: str) -> dict:
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    res = _cli(env, *args, timeout=6 * 3600, cwd=cwd)
    wall = time.perf_counter() - t0
    lines = res.stdout.splitlines()
    summary = next((ln for ln in lines if " seeds in " in ln), "(no summary)")
    nodes = next((ln for ln in lines if ln.startswith("ran on ")), "")
    failing = [ln.split(":")[0].split()[1] for ln in lines if ln.startswith("seed ") and "FAILED" in ln]
    out = {"command": "penumbra " + " ".join(args), "wall": round(wall, 1), "summary": summary, "nodes": nodes,
           "failing_seeds": failing,
           "rc": res.returncode, "load_before": [round(x, 2) for x in load0],
           "load_after": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(out), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=10_000)
    p.add_argument("--nodes", type=int, default=2, help="node daemons, the head included (default 2)")
    p.add_argument("--cpus-per-node", type=int, default=1)
    p.add_argument("--chunk", type=int, default=None, help="seeds per task (default: verify's own choice)")
    p.add_argument("--only", choices=("fanout", "local"), default=None)
    a = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="pn-bfan-"))
    env = _env(root)
    cwd = str(root)  # not a checkout: the tree comes from PYTHONPATH only
    rev = subprocess.run(["git", "-C", TREE, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(f"# {a.seeds} seeds; {os.cpu_count()} CPUs on this machine; load {os.getloadavg()}; "
          f"git {rev.stdout.strip()}", flush=True)
    results = []
    try:
        if a.only != "local":
            cpus = ("--num-cpus", str(a.cpus_per_node))
            head = _cli(env, "start", "--head", "--port", "0", *cpus, cwd=cwd)
            address = head.stdout.split(" at ", 1)[1].split()[0]
            for _ in range(a.nodes - 1):
                _cli(env, "start", "--address", address, *cpus, cwd=cwd)
            chunk = ["--chunk", str(a.chunk)] if a.chunk else []
            results.append(_timed(env, ["verify", "--seeds", str(a.seeds), "--address", address, *chunk], cwd))
            _cli(env, "stop", cwd=cwd)
        if a.only != "fanout":
            results.append(_timed(env, ["verify", "--seeds", str(a.seeds)], cwd))
    finally:
        try:
            _cli(env, "stop", cwd=cwd, timeout=60)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    if len(results) == 2:
        print(f"# speed-up: {results[1]['wall'] / results[0]['wall']:.2f}x "
              f"({results[0]['wall']:.1f} s fanned out vs {results[1]['wall']:.1f} s in one process)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
