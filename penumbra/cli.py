"""The ``penumbra`` command: start, stop and inspect clusters; run the
simulator's experiments and the verification swarm.

::

    penumbra start --head [--port 6380] [--num-cpus N] [--resources '{"x": 1}']
    penumbra start --address HOST:PORT [--num-cpus N]
    penumbra status [--address HOST:PORT]
    penumbra stop
    penumbra sim EXPERIMENT [--size quick|full]
    penumbra verify --seeds N | --seed S [--shrink] [--plant BUG]
    penumbra verify --bugs
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

__all__ = ["main"]


def _resources(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise SystemExit(f"--resources must be JSON like '{{\"special\": 2}}': {e}")
    if not isinstance(value, dict):
        raise SystemExit("--resources must be a JSON object of name -> amount")
    return value


def cmd_start(args) -> int:
    from .transports import cluster_file
    from .transports.launch import spawn_daemon

    common = dict(num_cpus=args.num_cpus, num_gpus=args.num_gpus or 0, resources=_resources(args.resources),
                  object_store_memory=args.object_store_memory, host=args.host)
    for name in ("node_timeout", "heartbeat_interval"):
        if getattr(args, name) is not None:
            common[name] = getattr(args, name)
    if args.head:
        d = spawn_daemon(head=True, port=args.port, token=args.token, **common)
        info = {"token": d.token, "pid": d.pid, "session": d.session, "session_dir": d.session_dir,
                "unix_path": d.unix_path, "node_id": d.node_id, "nodes": []}
        cluster_file.write_cluster(d.address, info)
        print(f"Started the head of a penumbra cluster at {d.address} (pid {d.pid}, node {d.node_id}).")
        print(f"Cluster token (keep it secret): {d.token}")
        print("It is stored, readable only by you, in", os.path.join(cluster_file.home(), "clusters.json"))
        print()
        print("Add a node from this machine:   penumbra start --address", d.address)
        print("Connect a driver:               penumbra.init(address=%r)" % d.address)
        print("From another machine, pass the token: penumbra start --address %s --token <token>" % d.address)
        print("Stop everything:                penumbra stop")
        return 0
    if not args.address:
        print("penumbra start needs --head (a new cluster) or --address HOST:PORT (join one)", file=sys.stderr)
        return 2
    info = cluster_file.read_cluster(args.address)
    token = args.token or os.environ.get("PENUMBRA_TOKEN") or (info or {}).get("token")
    if not token:
        print(f"no token for the cluster at {args.address}: pass --token (printed by 'penumbra start --head')",
              file=sys.stderr)
        return 2
    d = spawn_daemon(head=False, head_address=args.address, token=token, **common)
    if info is not None:
        info.setdefault("nodes", []).append({"pid": d.pid, "session": d.session, "node_id": d.node_id})
        cluster_file.write_cluster(args.address, info)
    print(f"Started node {d.node_id} (pid {d.pid}), joined the cluster at {args.address}.")
    return 0


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_status(args) -> int:
    import penumbra
    from .transports import cluster_file

    try:
        address = args.address or cluster_file.find_cluster()
    except ConnectionError as e:
        print(e, file=sys.stderr)
        return 1
    try:
        penumbra.init(address=address, _token=args.token, log_to_driver=False)
    except Exception as e:
        print(f"cannot reach the cluster at {address}: {e}", file=sys.stderr)
        return 1
    try:
        from .api.context import current_runtime

        status = current_runtime().cluster_status(timeout=30.0)
    finally:
        penumbra.shutdown()
    print(f"penumbra cluster at {address}")
    header = f"{'NODE':<32} {'STATE':<6} {'RESOURCES (used/total)':<40} {'QUEUED':>6} {'RUNNING':>7} {'WORKERS':>7}  OBJECT STORE"
    print(header)
    totals: dict[str, list[float]] = {}
    for node_id, alive, _total, load in status.nodes:
        if load is None:
            print(f"{node_id:<32} {'alive' if alive else 'dead':<6} (no heartbeat yet)")
            continue
        total = load.total.to_dict()
        avail = load.available.to_dict()
        parts = []
        for k, v in total.items():
            used = v - avail.get(k, 0.0)
            parts.append(f"{k} {used:g}/{v:g}")
            if alive:
                t = totals.setdefault(k, [0.0, 0.0])
                t[0] += used
                t[1] += v
        store = f"{_fmt_bytes(load.store_used)} / {_fmt_bytes(load.store_capacity)}"
        print(f"{node_id:<32} {'alive' if alive else 'dead':<6} {', '.join(parts):<40} "
              f"{load.queue_length:>6} {load.running:>7} {load.num_workers:>7}  {store}")
    alive_n = sum(1 for row in status.nodes if row[1])
    summary = ", ".join(f"{k} {u:g}/{t:g}" for k, (u, t) in sorted(totals.items()))
    print(f"\n{alive_n} node(s) alive; in use: {summary}")
    return 0


def _kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGTERM)
        return True
    except ProcessLookupError:
        return False


def cmd_stop(args) -> int:
    from .transports import cluster_file
    from .transports.shm_store import cleanup_session

    clusters = cluster_file.all_clusters()
    if args.address:
        clusters = {k: v for k, v in clusters.items() if k == args.address}
    if not clusters:
        print("no penumbra cluster started on this machine")
        return 0
    for address, info in clusters.items():
        pids = [n.get("pid") for n in info.get("nodes", [])] + [info.get("pid")]
        stopped = [p for p in pids if p and _kill(int(p))]
        deadline = time.monotonic() + 10
        for p in stopped:
            while time.monotonic() < deadline:
                try:
                    os.kill(int(p), 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                try:
                    os.kill(int(p), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for sess in [info.get("session")] + [n.get("session") for n in info.get("nodes", [])]:
            if sess:
                cleanup_session(sess)
        cluster_file.remove_cluster(address)
        print(f"stopped the cluster at {address} ({len(stopped)} daemon(s))")
    return 0


def cmd_sim(args) -> int:
    from .sim.experiments import run_experiment_cli

    return run_experiment_cli(args)


def cmd_verify(args) -> int:
    if args.bugs:
        if args.plant:
            print("--bugs plants every bug in turn: it takes no --plant", file=sys.stderr)
            return 2
        from .verification.teeth import main as teeth_main

        return teeth_main([])
    from .verification.swarm import run_swarm_cli

    if not args.plant:
        return run_swarm_cli(args)
    from .verification.bugs import bug_named, planted

    try:
        bug = bug_named(args.plant)
    except KeyError as e:
        print(f"penumbra verify --plant: {e.args[0]}", file=sys.stderr)
        return 2
    print(f"planted bug {bug.name}: {bug.description}")
    with planted(bug):
        return run_swarm_cli(args)


def cmd_demo(args) -> int:
    from .demo import main as demo_main

    return demo_main(args)


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="penumbra", description="penumbra: the Ray paper's system, simulator-verified")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("start", help="start the head of a cluster, or a node joining one")
    s.add_argument("--head", action="store_true", help="start a new cluster (its head, GCS and first node)")
    s.add_argument("--address", help="HOST:PORT of the head to join")
    s.add_argument("--port", type=int, default=6380, help="the head's TCP port (default 6380)")
    s.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default loopback; 0.0.0.0 for a cluster across machines)")
    s.add_argument("--token", help="the cluster token (joining from another machine)")
    s.add_argument("--num-cpus", type=float, default=None)
    s.add_argument("--num-gpus", type=float, default=None)
    s.add_argument("--resources", help='custom resources as JSON, e.g. \'{"special": 2}\'')
    s.add_argument("--object-store-memory", type=int, default=None, help="bytes")
    s.add_argument("--node-timeout", type=_seconds, default=None,
                   help="seconds without heartbeats before the head declares a node dead (default 30, "
                        "as Ray's health checks; pass the same value to every node)")
    s.add_argument("--heartbeat-interval", type=_seconds, default=None,
                   help="seconds between a node's heartbeats (default 1)")
    s.set_defaults(fn=cmd_start)

    s = sub.add_parser("status", help="nodes, resources, queued and running tasks, object store use")
    s.add_argument("--address")
    s.add_argument("--token")
    s.set_defaults(fn=cmd_status)

    s = sub.add_parser("stop", help="stop the clusters started on this machine")
    s.add_argument("--address")
    s.set_defaults(fn=cmd_stop)

    s = sub.add_parser("sim", help="run one of the paper's experiments on the simulator")
    s.add_argument("experiment", help="fig8a, fig8b, fig10a, fig11a, fig11b, or all")
    s.add_argument("--size", choices=("quick", "full"), default="quick")
    s.add_argument("--preset", choices=("paper", "local"), default="paper")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="sim-results", help="directory for CSV and PNG files")
    s.set_defaults(fn=cmd_sim)

    s = sub.add_parser("verify", help="seeded fault-injection runs with invariant checkers")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--seeds", type=int, default=100, help="run seeds 0..N-1")
    g.add_argument("--seed", type=int, help="replay one seed and print its story")
    g.add_argument("--bugs", action="store_true",
                   help="plant each known bug in turn and print the seed that finds it (proof the checkers have teeth)")
    s.add_argument("--shrink", action="store_true", help="shrink a failing seed's schedule")
    s.add_argument("--plant", metavar="BUG", help="run with this known bug planted in core/ (see --bugs for the names)")
    s.set_defaults(fn=cmd_verify)

    s = sub.add_parser("demo", help="the quick-start job: a real workload and a short simulation")
    s.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args) or 0


if __name__ == "__main__":
    sys.exit(main())
