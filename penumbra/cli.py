"""The ``penumbra`` command: start, stop and inspect clusters; run the
simulator's experiments and the verification swarm.

::

    penumbra start --head [--port 6380] [--num-cpus N] [--resources '{"x": 1}'] [--gcs-replicas-on-nodes K] [--block]
    penumbra start --address HOST:PORT [--port P] [--token-file FILE] [--num-cpus N] [--gcs-replica] [--block]
    penumbra start --head --port PORT --recover NODE_HOST:NODE_PORT [--recover ...] [--token-file FILE]
    penumbra start --head --port PORT --recover auto [--recover-wait S] [--token-file FILE]
    penumbra status [--address HOST:PORT] [--token-file FILE]
    penumbra stop [--address HOST:PORT [--token-file FILE]]
    penumbra timeline [--address HOST:PORT] [--token-file FILE] [-o trace.json]
    penumbra sim EXPERIMENT [--size quick|full]
    penumbra verify --seeds N | --seed S [--shrink] [--plant BUG]
    penumbra verify --real --seeds N | --seed S
    penumbra verify --seeds N --address HOST:PORT [--ray] [--chunk K] [--timeout S] [--plant BUG]
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
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise SystemExit(f"--resources: the amount of {k!r} must be a number >= 0, got {v!r}")
    return value


def _error(command: str, message: str) -> int:
    """One line on stderr, no traceback; the exit status."""
    print(f"penumbra {command}: {message}", file=sys.stderr)
    return 1


def _token_from_args(args, command: str) -> str | None:
    """The token given explicitly: ``--token-file``, else the deprecated
    ``--token`` (with a warning: a command line is visible to every user
    of the machine in ``ps``).

    Raises:
        SystemExit: the token file cannot be read, or is empty.
    """
    if getattr(args, "token_file", None):
        try:
            with open(args.token_file) as f:
                token = f.read().strip()
        except OSError as e:
            raise SystemExit(f"penumbra {command}: cannot read --token-file {args.token_file}: {e.strerror}")
        if not token:
            raise SystemExit(f"penumbra {command}: --token-file {args.token_file} is empty: put the cluster's token in it")
        return token
    if getattr(args, "token", None):
        print(f"penumbra {command}: warning: --token is deprecated and will be removed: any user of this machine "
              "can read it with ps; use --token-file FILE or $PENUMBRA_TOKEN", file=sys.stderr)
        return args.token
    return None


def cmd_start(args) -> int:
    from .transports import cluster_file
    from .transports.launch import DaemonStartError, spawn_daemon

    common = dict(num_cpus=args.num_cpus, num_gpus=args.num_gpus or 0, resources=_resources(args.resources),
                  object_store_memory=args.object_store_memory, host=args.host)
    for name in ("node_timeout", "heartbeat_interval", "timeline_limit"):
        if getattr(args, name) is not None:
            common[name] = getattr(args, name)
    if getattr(args, "object_spilling_directory", None):
        common["object_spilling_directory"] = os.path.abspath(args.object_spilling_directory)
    if getattr(args, "block", False):
        common["parent_pid"] = os.getpid()  # and if this command is killed outright, the daemon goes too
    if args.head == bool(args.address):
        print("penumbra start needs --head (a new cluster) or --address HOST:PORT (join one), not both",
              file=sys.stderr)
        return 2
    if args.gcs_replica and args.head:
        print("penumbra start: --gcs-replica is for a node (--address HEAD:PORT): the head hosts the first replica "
              "of each GCS shard already", file=sys.stderr)
        return 2
    if args.recover and not args.head:
        print("penumbra start: --recover starts a new head (--head --recover NODE:PORT)", file=sys.stderr)
        return 2
    auto = args.recover == ["auto"]
    for a in args.recover or ():
        host, _, port = a.rpartition(":")
        if auto:
            break
        if a == "auto":
            print("penumbra start: --recover auto goes alone (it recovers from whichever nodes reconnect holding "
                  "GCS replicas), not with addresses", file=sys.stderr)
            return 2
        if not host or not port.isdigit():
            print(f"penumbra start: --recover must be HOST:PORT of a surviving node started with --gcs-replica "
                  f"(as 'penumbra status' listed it), or 'auto', got {a!r}", file=sys.stderr)
            return 2
    if args.gcs_replicas_on_nodes is not None:
        if not args.head or args.gcs_replicas_on_nodes < 0:
            print("penumbra start: --gcs-replicas-on-nodes K is for the head (--head), with K >= 0",
                  file=sys.stderr)
            return 2
        common["replicas_on_nodes"] = args.gcs_replicas_on_nodes
    if args.gcs_replica:
        common["gcs_replica"] = True
    if args.head_wait is not None:
        common["head_wait"] = args.head_wait
    timeout = 30.0
    if args.recover:
        common["recover_from"] = list(args.recover)
        common["recover_wait"] = args.recover_wait
        timeout += args.recover_wait
    if args.address:
        host, _, port = args.address.rpartition(":")
        if not host or not port.isdigit():
            print(f"penumbra start: --address must be HOST:PORT (the head's, as 'penumbra start --head' printed it), "
                  f"got {args.address!r}", file=sys.stderr)
            return 2
    token = _token_from_args(args, "start")
    if args.recover and not token:
        # the recovered head must accept the surviving nodes: the old token
        port = 6380 if args.port is None else args.port
        token = os.environ.get("PENUMBRA_TOKEN") or next(
            (info.get("token") for addr, info in cluster_file.all_clusters().items()
             if addr.rpartition(":")[2] == str(port) and not info.get("local_node")), None)
        if not token and not auto:  # (auto may start fresh: a new token then)
            return _error("start", "--recover needs the cluster's token (the surviving nodes accept no other): pass "
                                   "--token-file FILE or set $PENUMBRA_TOKEN")
    if args.address:
        info = cluster_file.read_cluster(args.address)
        token = token or os.environ.get("PENUMBRA_TOKEN") or (info or {}).get("token")
        if not token:
            return _error("start", f"no token for the cluster at {args.address}: put the token printed by "
                                   "'penumbra start --head' in a file only you can read and pass --token-file FILE, "
                                   "or set $PENUMBRA_TOKEN")
    try:
        if args.head:
            port = 6380 if args.port is None else args.port
            d = spawn_daemon(head=True, port=port, token=token, timeout=timeout, **common)
        else:
            d = spawn_daemon(head=False, head_address=args.address, token=token, port=args.port or 0, **common)
    except DaemonStartError as e:
        return _error("start", e.message)
    except (OSError, TimeoutError) as e:  # the sessions directory refused, a timeout ...
        return _error("start", str(e))
    if args.head:
        from .transports.session import pid_alive

        nodes = []
        if args.recover:  # this machine's nodes of the cluster live on: 'penumbra stop' still stops them
            nodes = [n for n in ((cluster_file.read_cluster(d.address) or {}).get("nodes") or [])
                     if n.get("pid") and pid_alive(int(n["pid"]))]
        info = {"token": d.token, "pid": d.pid, "session": d.session, "session_dir": d.session_dir,
                "unix_path": d.unix_path, "node_id": d.node_id, "nodes": nodes}
        cluster_file.write_cluster(d.address, info)
        if args.recover:
            print(f"Recovered the penumbra cluster at {d.address} from the GCS replicas on "
                  f"{', '.join(args.recover)} (pid {d.pid}, node {d.node_id})." if not auto else
                  f"Started the head of a penumbra cluster at {d.address} with --recover auto (pid {d.pid}, node "
                  f"{d.node_id}): it recovered the cluster if a node holding GCS replicas reconnected within "
                  f"--recover-wait, else started a fresh one (its log says which).")
        else:
            print(f"Started the head of a penumbra cluster at {d.address} (pid {d.pid}, node {d.node_id}).")
        print(f"Cluster token (keep it secret): {d.token}")
        print("It is stored, readable only by you, in", os.path.join(cluster_file.home(), "clusters.json"))
        print(f"Its log: {os.path.join(d.session_dir, 'daemon.log')}")
        print()
        print("Add a node from this machine:   penumbra start --address", d.address)
        print("Connect a driver:               penumbra.init(address=%r)" % d.address)
        print("From another machine, put the token in a file only you can read, then:")
        print("                                penumbra start --address %s --token-file FILE" % d.address)
        print("Stop everything:                penumbra stop")
        return _block(d) if args.block else 0
    if info is not None:
        info.setdefault("nodes", []).append({"pid": d.pid, "session": d.session, "node_id": d.node_id,
                                             "session_dir": d.session_dir})
        cluster_file.write_cluster(args.address, info)
    else:
        # The head runs on another machine: record this node, so that a
        # driver here (init(address=...)) joins through it -- its Unix
        # socket and its shared memory, which a driver talking TCP to a
        # remote daemon cannot share -- and 'penumbra stop' here stops it.
        cluster_file.write_cluster(args.address, {
            "token": token, "pid": d.pid, "session": d.session, "session_dir": d.session_dir,
            "unix_path": d.unix_path, "node_id": d.node_id, "nodes": [], "local_node": True})
    print(f"Started node {d.node_id} (pid {d.pid}) at {d.address}, joined the cluster at {args.address}.")
    print(f"Its log: {os.path.join(d.session_dir, 'daemon.log')}")
    return _block(d) if args.block else 0


def _block(d) -> int:
    """``--block``: stay in the foreground until the daemon exits, and stop
    it on SIGTERM/SIGINT/SIGHUP -- what a cluster manager needs of a job
    step or a container's main process (Slurm's srun, Kubernetes)."""
    sys.stdout.flush()

    def stop(signum, frame) -> None:
        try:
            os.kill(d.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    code = d.proc.wait()
    print(f"the daemon (pid {d.pid}) exited with status {code}", flush=True)
    return 0 if code in (0, -signal.SIGTERM) else 1


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
    token = _token_from_args(args, "status")
    try:
        penumbra.init(address=address, _token=token, log_to_driver=False)
    except Exception as e:
        return _error("status", f"cannot reach the cluster at {address}: {e}")
    try:
        from .api.context import current_runtime

        status = current_runtime().cluster_status(timeout=30.0)
    finally:
        penumbra.shutdown()
    table = None
    try:
        table = _ask_daemon(address, _cluster_token(address, token), "addresses")
        addresses = table.peers
    except Exception as e:  # an older daemon, or it went away: the table without addresses
        print(f"penumbra status: (no node addresses: {e})", file=sys.stderr)
        addresses = {}
    links = (getattr(table, "links", None) or {}) if table is not None else {}
    print(f"penumbra cluster at {address}")
    header = (f"{'NODE':<32} {'ADDRESS':<21} {'STATE':<6} {'LINK':<12} {'RESOURCES (used/total)':<40} {'QUEUED':>6} "
              f"{'RUNNING':>7} {'WORKERS':>7}  OBJECT STORE")
    print(header)
    totals: dict[str, list[float]] = {}
    for node_id, alive, _total, load in status.nodes:
        where = addresses.get(node_id, "-")
        if not alive:  # its last load is history, not a state: say only that it is gone
            print(f"{node_id:<32} {where:<21} {'dead':<6}")
            continue
        link = links.get(node_id, "-")
        if load is None:
            print(f"{node_id:<32} {where:<21} {'alive':<6} {link:<12} (no heartbeat yet)")
            continue
        total = load.total.to_dict()
        avail = load.available.to_dict()
        parts = []
        for k, v in total.items():
            used = v - avail.get(k, 0.0)
            parts.append(f"{k} {used:g}/{v:g}")
            t = totals.setdefault(k, [0.0, 0.0])
            t[0] += used
            t[1] += v
        store = f"{_fmt_bytes(load.store_used)} / {_fmt_bytes(load.store_capacity)}"
        print(f"{node_id:<32} {where:<21} {'alive':<6} {link:<12} {', '.join(parts):<40} "
              f"{load.queue_length:>6} {load.running:>7} {load.num_workers:>7}  {store}")
    alive_n = sum(1 for row in status.nodes if row[1])
    dead_n = len(status.nodes) - alive_n
    summary = ", ".join(f"{k} {u:g}/{t:g}" for k, (u, t) in sorted(totals.items()))
    print(f"\n{alive_n} node(s) alive" + (f", {dead_n} dead" if dead_n else "") + f"; in use: {summary}")
    if table is not None and getattr(table, "replicas", None):
        _print_replicas(table.replicas, getattr(table, "chains", ()) or ())
    earlier = (getattr(table, "earlier", None) or {}) if table is not None else {}
    if earlier:
        print(f"\nEARLIER CLUSTER (this cluster is {getattr(table, 'cluster', '') or '?'})")
    for node_id, cluster in sorted(earlier.items()):
        where = addresses.get(node_id, "NODE:PORT")
        print(f"node {node_id} ({where}) holds GCS replicas of an earlier cluster (id {cluster or '?'}), kept out of "
              f"this one; to recover that cluster instead, stop this head and run: penumbra start --head "
              f"--recover {where} (at this head's address)")
    return 0


def cmd_timeline(args) -> int:
    """``penumbra timeline``: every node's recent task and actor-call runs,
    as a Chrome trace (``penumbra.timeline()`` from outside a driver)."""
    from .api.timeline import chrome_trace, write_trace
    from .transports import cluster_file
    from .transports.timeline import collect

    try:
        address = args.address or cluster_file.find_cluster()
        token = _cluster_token(address, _token_from_args(args, "timeline"))
        got = collect(address, token, timeout=args.timeout)
    except Exception as e:  # unreachable, refused, no token: one line, no traceback
        why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        where = f"the cluster at {args.address}" if args.address else "a cluster on this machine"
        return _error("timeline", f"cannot get the timeline of {where}: {why}")
    for node_id, why in sorted(got.missing.items()):
        print(f"penumbra timeline: node {node_id} did not answer ({why}); its runs are left out", file=sys.stderr)
    events = chrome_trace(got.nodes)
    try:
        write_trace(events, args.output)
    except OSError as e:
        return _error("timeline", f"cannot write {args.output}: {e.strerror or e}")
    runs = sum(len(n.runs) for n in got.nodes)
    dropped = sum(max(0, n.recorded - len(n.runs)) for n in got.nodes)
    print(f"wrote {runs} runs on {len(got.nodes)} node(s) to {args.output} "
          f"(open it in chrome://tracing or https://ui.perfetto.dev)")
    if dropped:
        print(f"  ({dropped} older runs were dropped: each node keeps its last "
              f"{max(n.limit for n in got.nodes):,})")
    return 0


def _print_replicas(replicas: dict, chains) -> None:
    """The GCS chains: each replica, where it lives, and its place in the
    chain (writes enter at the head of the chain, the tail acknowledges)."""
    print(f"\n{'GCS REPLICA':<32} {'HOSTED AT':<21} ROLE")
    listed = set()
    for c in chains:
        for i, r in enumerate(c.replicas):
            listed.add(r)
            role = ("head+tail" if len(c.replicas) == 1 else "head" if i == 0 else
                    "tail" if i == len(c.replicas) - 1 else "middle")
            print(f"{r:<32} {replicas.get(r, 'lost'):<21} {role} (shard {c.shard}, epoch {c.epoch})")
    for r in sorted(set(replicas) - listed):
        print(f"{r:<32} {replicas[r]:<21} joining (not yet in its chain)")


def _cluster_token(address: str, token: str | None) -> str:
    """The token for ``address``: given, else ``$PENUMBRA_TOKEN``, else this
    machine's cluster file."""
    from .transports import cluster_file

    token = token or os.environ.get("PENUMBRA_TOKEN") or (cluster_file.read_cluster(address) or {}).get("token")
    if not token:
        raise ConnectionError(f"no token for the cluster at {address}: pass --token-file FILE (a file holding the "
                              "token 'penumbra start --head' printed) or set $PENUMBRA_TOKEN")
    return token


def _ask_daemon(address: str, token: str, what: str, timeout: float = 15.0):
    """Ask the daemon at ``address`` over TCP: ``"addresses"`` (its
    ``PeerTable``: node id -> host:port) or ``"stop"`` (stop the cluster;
    returns once the daemon has closed the connection, i.e. is stopping)."""
    import trio

    from .transports import protocol as P
    from .transports.wire import ConnectionClosed, connect_tcp

    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"--address must be HOST:PORT (the head's, as 'penumbra start --head' printed it), "
                         f"got {address!r}")
    name = f"cli:{os.getpid()}"

    async def ask():
        with trio.fail_after(timeout):
            ch = await connect_tcp(host or "127.0.0.1", int(port), token, "cli", name)
            try:
                await ch.send(P.ClientHello(name, os.getpid(), False, 0))
                await ch.receive()  # the welcome
                await ch.send(P.StopCluster() if what == "stop" else P.AddressesRequest())
                while True:
                    try:
                        reply = await ch.receive()
                    except ConnectionClosed:
                        if what == "stop":
                            return None
                        raise
                    if what != "stop" and type(reply) is P.PeerTable:
                        return reply
            finally:
                await ch.aclose()

    return trio.run(ask)


def _kill(pid: int) -> bool:
    """SIGTERM ``pid`` if it is one of our penumbra daemons (a pid in an old
    cluster entry may belong to another program by now)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline: bytes | None = f.read()
    except OSError:
        cmdline = b"" if os.path.exists("/proc/self") else None  # gone; or no /proc: trust the entry
    if cmdline is not None and b"penumbra.transports.daemon" not in cmdline:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def cmd_stop(args) -> int:
    from .transports import cluster_file
    from .transports.session import pid_alive
    from .transports.shm_store import cleanup_session

    clusters = cluster_file.all_clusters()
    if args.address:
        clusters = {k: v for k, v in clusters.items() if k == args.address}
        if not clusters or clusters[args.address].get("local_node") or _token_from_args(args, "stop"):
            return _stop_remote(args)
    if not clusters:
        print("no penumbra cluster started on this machine")
        return 0
    for address, info in clusters.items():
        pids = [n.get("pid") for n in info.get("nodes", [])] + [info.get("pid")]
        stopped = [p for p in pids if p and pid_alive(int(p)) and _kill(int(p))]
        deadline = time.monotonic() + 10
        for p in stopped:
            while pid_alive(int(p)):  # a zombie nobody reaps counts as gone
                if time.monotonic() > deadline:
                    try:
                        os.kill(int(p), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    break
                time.sleep(0.05)
        for sess in [info.get("session")] + [n.get("session") for n in info.get("nodes", [])]:
            if sess:
                cleanup_session(sess)
        from .transports.spill import cleanup_spill

        for sdir in [info.get("session_dir")] + [n.get("session_dir") for n in info.get("nodes", [])]:
            if sdir:
                cleanup_spill(sdir)  # (a daemon killed before it cleaned up its spilled objects)
        cluster_file.remove_cluster(address)
        if info.get("local_node"):  # the head runs elsewhere: only this machine's node(s) stopped
            print(f"stopped this machine's node(s) of the cluster at {address} ({len(stopped)} daemon(s)); "
                  f"'penumbra stop --address {address}' stops the whole cluster")
        else:
            print(f"stopped the cluster at {address} ({len(stopped)} daemon(s))")
    return 0


def _stop_remote(args) -> int:
    """``penumbra stop --address HOST:PORT`` for a head on another machine
    (or one this machine only has a node of): ask the head, with the token,
    to stop; it stops every node daemon of the cluster, then itself."""
    from .transports import cluster_file

    try:
        token = _cluster_token(args.address, _token_from_args(args, "stop"))
        _ask_daemon(args.address, token, "stop")
    except Exception as e:
        return _error("stop", f"cannot stop the cluster at {args.address}: {e}")
    # this machine's own node of it (if any) is stopping too: forget it
    info = cluster_file.read_cluster(args.address)
    if info is not None and info.get("local_node"):
        cluster_file.remove_cluster(args.address)
    print(f"asked the cluster at {args.address} to stop (its head stops every node, then itself)")
    return 0


def _node_counts(text: str) -> list[int]:
    """``--nodes 100,1000``: positive cluster sizes, comma-separated."""
    try:
        out = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or any(n < 1 for n in out):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of cluster sizes: give positive whole numbers separated by commas, "
            f"e.g. --nodes 100,1000")
    return out


def _jobs(text: str) -> int:
    """``--jobs N``: a whole number of worker processes >= 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of worker processes: give a whole number "
                                         f">= 1, e.g. --jobs 2 (1: everything in this process)")
    return n


def cmd_sim(args) -> int:
    from .sim.experiments import run_experiment_cli

    if args.token_file and not (args.address or args.ray):
        print("penumbra sim: --token-file is for partitions run as actors on a cluster: add --address HOST:PORT",
              file=sys.stderr)
        return 2
    if (args.address or args.ray) and args.partitions is None:
        print("penumbra sim: --address/--ray run the partitions of a simulation as actors on a cluster: add "
              "--partitions N", file=sys.stderr)
        return 2
    token = _token_from_args(args, "sim") if args.address and not args.ray else None
    return run_experiment_cli(args, token)


def cmd_verify(args) -> int:
    if getattr(args, "real", False) and (args.address or args.ray):
        print("penumbra verify: --real starts its own real cluster on this machine; it does not fan out "
              "(drop --address/--ray)", file=sys.stderr)
        return 2
    if args.address or args.ray:
        return _verify_fanned_out(args)
    for name in ("chunk", "timeout", "token_file"):
        if getattr(args, name) is not None:
            print(f"penumbra verify: --{name.replace('_', '-')} is for seeds fanned out over a cluster: "
                  "add --address HOST:PORT (or --ray)", file=sys.stderr)
            return 2
    if args.bugs:
        if args.plant:
            print("--bugs plants every bug in turn: it takes no --plant", file=sys.stderr)
            return 2
        from .verification.teeth import main as teeth_main

        return teeth_main([])
    if getattr(args, "real", False):
        if args.plant or args.shrink:
            print("--real runs seeds on real processes: it takes no --plant or --shrink", file=sys.stderr)
            return 2
        from .verification.realrun import run_real_cli

        return run_real_cli(args)
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


def _verify_fanned_out(args) -> int:
    """``--address``/``--ray``: the seeds run as tasks on a cluster
    (``verification.fanout``); the bug, if any, is planted in the workers."""
    flag = f"--address {args.address}" if args.address else "--ray"
    if args.bugs or args.seed is not None or args.shrink:
        what = "--bugs" if args.bugs else "--shrink" if args.shrink else "--seed"
        print(f"penumbra verify: {flag} fans --seeds N out over a cluster; {what} runs here, in one process: "
              f"drop {flag}", file=sys.stderr)
        return 2
    from .verification.fanout import run_fanout_cli

    return run_fanout_cli(args, _token_from_args)


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
    s.add_argument("--port", type=int, default=None,
                   help="TCP port to listen on (default: 6380 for the head, any free port for a node)")
    s.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default loopback; 0.0.0.0 for a cluster across machines)")
    s.add_argument("--token-file", metavar="FILE",
                   help="a file holding the cluster token (to join from another machine; with --head, the token "
                        "to use). Else $PENUMBRA_TOKEN, or ~/.penumbra/clusters.json on the head's machine")
    s.add_argument("--token", help=argparse.SUPPRESS)  # deprecated: visible in ps
    s.add_argument("--num-cpus", type=float, default=None)
    s.add_argument("--num-gpus", type=float, default=None)
    s.add_argument("--resources", help='custom resources as JSON, e.g. \'{"special": 2}\'')
    s.add_argument("--object-store-memory", type=int, default=None, help="bytes")
    s.add_argument("--object-spilling-directory", default=None,
                   help="where objects are spilled when the store is full of referenced ones "
                        "(default: under the session directory)")
    s.add_argument("--node-timeout", type=_seconds, default=None,
                   help="seconds without heartbeats before the head declares a node dead (default 30, "
                        "as Ray's health checks; pass the same value to every node)")
    s.add_argument("--heartbeat-interval", type=_seconds, default=None,
                   help="seconds between a node's heartbeats (default 1)")
    s.add_argument("--timeline-limit", type=int, default=None, metavar="N",
                   help="task and actor-call runs this node keeps for 'penumbra timeline' (the last N; default "
                        "10000; 0: none)")
    s.add_argument("--block", action="store_true",
                   help="stay in the foreground until the daemon exits; SIGTERM stops it (for srun, containers)")
    s.add_argument("--gcs-replica", action="store_true",
                   help="(a node) also host a replica of each GCS shard, appended to the shard's chain: every "
                        "acknowledged write is then on this host too, so the cluster survives the loss of the "
                        "head's host (recover it with 'penumbra start --head --recover THIS_NODE:PORT'). Give the "
                        "node a fixed --port so its address is known after a crash")
    s.add_argument("--gcs-replicas-on-nodes", type=int, default=None, metavar="K",
                   help="(with --head) have K node daemons host a GCS replica each, as if started with "
                        "--gcs-replica: the first K to join, and the next to join whenever one is lost")
    s.add_argument("--recover", action="append", metavar="NODE_HOST:NODE_PORT|auto",
                   help="(with --head) start a head that rebuilds the cluster from the GCS replicas of the node "
                        "daemons at these addresses (nodes started with --gcs-replica; repeat for several), after "
                        "the old head's host was lost. Start it at the old head's address (same --host and "
                        "--port) with the cluster's token: the surviving nodes keep retrying that address and "
                        "reconnect to the new head on their own. '--recover auto': recover from whichever nodes "
                        "reconnect holding GCS replicas within --recover-wait, else start a fresh cluster then "
                        "(for a head restarted by a cluster manager, e.g. Kubernetes). A head started without "
                        "--recover is a NEW cluster: a node holding replicas of the old one keeps them out of it "
                        "(paused, still recoverable; 'penumbra status' lists it under EARLIER CLUSTER)")
    s.add_argument("--recover-wait", type=_seconds, default=20.0,
                   help="(with --recover) seconds to wait for those nodes to reconnect (default 20; with "
                        "'--recover auto', how long a head with nothing to recover waits before starting fresh)")
    s.add_argument("--head-wait", type=_seconds, default=None,
                   help="(a node) seconds to keep retrying a lost head before stopping (default 20; without "
                        "limit for a node with --gcs-replica, which holds the cluster's state until a head "
                        "recovers it)")
    s.set_defaults(fn=cmd_start)

    s = sub.add_parser("status", help="nodes, resources, queued and running tasks, object store use")
    s.add_argument("--address")
    s.add_argument("--token-file", metavar="FILE", help="a file holding the cluster token (else $PENUMBRA_TOKEN "
                                                       "or ~/.penumbra/clusters.json)")
    s.add_argument("--token", help=argparse.SUPPRESS)  # deprecated: visible in ps
    s.set_defaults(fn=cmd_status)

    s = sub.add_parser("stop", help="stop the clusters started on this machine, or the one at --address")
    s.add_argument("--address", help="HOST:PORT of a cluster's head: stop the whole cluster, wherever it runs "
                                     "(with the token from --token-file, $PENUMBRA_TOKEN or this machine's "
                                     "cluster file)")
    s.add_argument("--token-file", metavar="FILE", help="a file holding the cluster token")
    s.set_defaults(fn=cmd_stop)

    s = sub.add_parser("timeline", help="task and actor-call runs of every node, as a Chrome trace (JSON)")
    s.add_argument("--address", help="HOST:PORT of a daemon of the cluster (default: the one started here)")
    s.add_argument("--token-file", metavar="FILE", help="a file holding the cluster token (else $PENUMBRA_TOKEN "
                                                       "or ~/.penumbra/clusters.json)")
    s.add_argument("-o", "--output", default="timeline.json", metavar="FILE",
                   help="where to write the trace (default timeline.json)")
    s.add_argument("--timeout", type=_seconds, default=15.0, metavar="SECONDS",
                   help="how long to wait for each node (default 15)")
    s.set_defaults(fn=cmd_timeline)

    s = sub.add_parser(
        "sim", help="run one of the paper's experiments on the simulator",
        description="Run one of the paper's experiments on the simulator (thousands of virtual nodes\n"
                    "running the real core machines), print its table and checks, and write a CSV and a\n"
                    "plot.  The exit status is 1 when a check against the paper fails.  Progress goes to\n"
                    "stderr: a bar on a terminal, plain lines otherwise (PENUMBRA_NO_PROGRESS=1: none).",
        epilog="examples:\n"
               "  penumbra sim fig8b                      # scalability, a few nodes (seconds)\n"
               "  penumbra sim fig8b --size full          # 10 to 1,000 nodes, as in the paper (minutes)\n"
               "  penumbra sim fig8b --nodes 100,1000,10000\n"
               "  penumbra sim fig8b --size full --jobs 2  # two cluster sizes at a time, in 2 processes\n"
               "  penumbra sim fig8b --nodes 1000 --partitions 2             # two local processes\n"
               "  penumbra sim fig8b --nodes 1000 --partitions 8 --address auto  # actors on a cluster\n"
               "  penumbra sim all --out results/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("experiment", metavar="EXPERIMENT",
                   help="fig8a (object locality: data-aware vs unaware placement), fig8b (task throughput "
                        "against cluster size), fig10a (GCS replica killed: read/write latency), fig10b (GCS "
                        "memory with and without flushing to disk), fig11a "
                        "(task throughput while nodes die and come back), fig11b (actor methods re-executed "
                        "after a failure, with and without checkpoints), or all")
    s.add_argument("--size", choices=("quick", "full"), default="quick",
                   help="quick: small clusters and short runs, seconds to a minute (default); full: the "
                        "paper's sizes, minutes")
    s.add_argument("--nodes", type=_node_counts, metavar="N[,N...]",
                   help="fig8b only: the cluster sizes to run, comma-separated (e.g. 100,1000,10000); "
                        "default: 2,4,8,12 (quick) or 10..1000 (full)")
    s.add_argument("--preset", choices=("paper", "local"), default="paper",
                   help="the cost model: paper (the paper's 2018 hardware, default) or local (calibrated on "
                        "this machine by bench/bench_sim.py)")
    s.add_argument("--seed", type=int, default=0,
                   help="the simulation's seed: the same seed gives the same run and trace hash (default 0)")
    s.add_argument("--out", default="sim-results", metavar="DIR",
                   help="directory for the CSV and PNG files, created if missing (default: sim-results)")
    s.add_argument("--jobs", type=_jobs, default=None, metavar="N",
                   help="fig8b: run its cluster sizes (independent simulations) in a pool of N worker processes, "
                        "largest first; the table, CSV, plot and trace hashes are the same for any N (default: "
                        "the machine's CPUs, os.cpu_count(); 1: one after another in this process, as before). "
                        "A point that fails or dies in its worker stops the run with an error naming it. "
                        "N > 1 does not combine with --partitions (which splits each size over processes itself)")
    s.add_argument("--partitions", type=int, default=None, metavar="N",
                   help="fig8b only: split each cluster size's simulation over N partitions advanced in "
                        "lockstep windows (local processes unless --address); the results and trace hashes are "
                        "the same for any N")
    s.add_argument("--address", metavar="HOST:PORT",
                   help="with --partitions: run each partition as an actor (1 CPU) on the penumbra cluster at "
                        "HOST:PORT ('auto': the one started last here; 'local': a new one on this machine)")
    s.add_argument("--ray", action="store_true",
                   help="with --partitions: run the partitions as actors through Ray's API (import ray) on a Ray "
                        "cluster (--address) or a local Ray instance; Ray's workers must be able to import penumbra")
    s.add_argument("--token-file", metavar="FILE", help="with --address: a file holding the cluster token "
                                                       "(else $PENUMBRA_TOKEN or ~/.penumbra/clusters.json)")
    s.set_defaults(fn=cmd_sim)

    s = sub.add_parser("verify", help="seeded fault-injection runs with invariant checkers")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--seeds", type=int, default=100, help="run seeds 0..N-1")
    g.add_argument("--seed", type=int, help="replay one seed and print its story")
    g.add_argument("--bugs", action="store_true",
                   help="plant each known bug in turn and print the seed that finds it (proof the checkers have teeth)")
    s.add_argument("--shrink", action="store_true", help="shrink a failing seed's schedule")
    s.add_argument("--plant", metavar="BUG", help="run with this known bug planted in core/ (see --bugs for the names)")
    s.add_argument("--real", action="store_true",
                   help="run the seeds' workloads on a real local cluster (with worker and node kills) and compare "
                        "every value with the simulator's fault-free run")
    s.add_argument("--address", metavar="HOST:PORT",
                   help="fan the seeds out as tasks on the cluster at HOST:PORT ('auto': the one started last "
                        "here; 'local': a new one on this machine); failing seeds are replayed here with --seed")
    s.add_argument("--ray", action="store_true",
                   help="fan out with Ray's API (import ray) on a Ray cluster (--address) or a local Ray "
                        "instance; Ray's workers must be able to import penumbra")
    s.add_argument("--chunk", type=int, default=None, metavar="K",
                   help="with --address: seeds per task (default: about four tasks per CPU, at most 50 seeds)")
    s.add_argument("--timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="with --address: cancel a task not done this long after it was submitted and report its "
                        "seeds as not checked (default 600)")
    s.add_argument("--token-file", metavar="FILE", help="with --address: a file holding the cluster token "
                                                       "(else $PENUMBRA_TOKEN or ~/.penumbra/clusters.json)")
    s.set_defaults(fn=cmd_verify)

    s = sub.add_parser("demo", help="the quick-start job: a real workload and a short simulation")
    s.add_argument("--out", default="penumbra-demo", metavar="DIR",
                   help="where to write the real run's timeline (timeline.json, timeline.png); default ./penumbra-demo")
    s.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args) or 0


if __name__ == "__main__":
    sys.exit(main())
