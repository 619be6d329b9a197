"""What the head keeps per dead node: node incarnations that join and die.

    python bench/bench_head_dead_nodes.py                   # 2,000 incarnations
    python bench/bench_head_dead_nodes.py -n 5000 --retention 200
    PYTHONPATH=/path/to/other/checkout python bench/bench_head_dead_nodes.py   # compare checkouts

Core level, on a MemNet (penumbra/verification/node_churn.py): a head, its
GCS replicas and one node that lives on, and ``-n`` node incarnations, each
joining, heartbeating for a moment, then lost (``NodeDied``), as a node
daemon that keeps rejoining makes them.  At checkpoints it prints what
tracemalloc says is retained (after a collection; the MemNet's own
bookkeeping for dead addresses is dropped) and each lasting machine's
pickled size.  Since core/dead_nodes.py these stop growing once
``RETENTION`` (1,000 by default, Ray's ``maximum_gcs_dead_node_cached_count``)
nodes have died.  A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import sys
import time
import tracemalloc

try:
    import penumbra  # noqa: F401  (whatever checkout PYTHONPATH names)
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _node_churn():
    """``NodeChurn``, from the checkout on the path, else this one's file
    (a checkout from before it existed: its core, this driver)."""
    try:
        from penumbra.verification.node_churn import NodeChurn
        return NodeChurn
    except ImportError:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "penumbra", "verification",
                            "node_churn.py")
        spec = importlib.util.spec_from_file_location("penumbra.verification.node_churn", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        return mod.NodeChurn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=2000, help="node incarnations (default 2,000)")
    ap.add_argument("--retention", type=int, default=None,
                    help="dead nodes remembered (default: core/dead_nodes.py's RETENTION)")
    ap.add_argument("--shards", type=int, default=1, help="GCS shards (default 1)")
    args = ap.parse_args()
    if args.n < 10:
        ap.error("-n must be at least 10")
    try:
        import penumbra.core.dead_nodes as dead_nodes
    except ImportError:
        dead_nodes = None
    if args.retention is not None:
        if dead_nodes is None:
            sys.exit("--retention: this checkout has no core/dead_nodes.py (it keeps every dead node)")
        dead_nodes.RETENTION = args.retention
    bound = dead_nodes.RETENTION if dead_nodes is not None else "none"
    print(f"penumbra from {os.path.dirname(penumbra.__file__)}; {args.n} incarnations; dead nodes kept: {bound}")

    c = _node_churn()(shards=args.shards)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.process_time()
    marks = sorted({max(1, args.n * k // 8) for k in range(1, 9)})
    rows = []
    for i in range(1, args.n + 1):
        c.incarnation()
        if i in marks:
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0] - base
            sizes = c.retained()
            rows.append((i, kept, sizes))
            print(f"  {i:>6} dead  retained {kept / 1024:8.1f} KiB ({kept / i:6.0f} B per dead node)  "
                  f"pickled: " + ", ".join(f"{a} {n / 1024:.1f} KiB" for a, n in sizes.items()),
                  f"  [{time.process_time() - t0:.1f} s CPU]", flush=True)
    tracemalloc.stop()
    (i1, k1, _), (i2, k2, _) = rows[len(rows) // 2 - 1], rows[-1]
    print(f"\nretained: {k1 / 1024:.1f} KiB after {i1} dead nodes, {k2 / 1024:.1f} KiB after {i2}: "
          f"{(k2 - k1) / max(1, i2 - i1):+.0f} B per further dead node")


if __name__ == "__main__":
    main()
