"""How fast are the core state machines on their hot paths?

(a) ``node``: one ``NodeMachine`` (local scheduler, object manager, GCS
    client) handling submit -> dispatch -> finish of N empty tasks, driven
    directly: no network, no simulator.  The driver feeds ``WorkerStarted``,
    ``SubmitTask`` and ``TaskFinished``, and answers each GCS write with a
    ``GcsReply`` at once (the minimal processing that keeps the client's
    outstanding requests bounded, as a live GCS would); every other command
    is looked at only to find the ``Execute`` ones.  Target: 50,000 tasks/s.
(b) ``gcs``: one ``GcsReplica`` (a chain of one: head and tail) applying
    ``GcsWrite`` ops, a mix per task of AddTask, Subscribe (to its output),
    FinishTask and AddLocation; replies and notifications are produced but
    not delivered.  Target: 100,000 ops/s.

Times are CPU time of this process (``time.process_time``); each figure is the
best of ``--repeat`` runs.  ``--profile`` prints a cProfile of one run of each.

The figures depend on the machine (and its load) far more than on noise, so
the script also times a reference operation: building a small frozen,
slotted, keyword-only dataclass (what every protocol message was before they
became msgspec Structs; kept as the unit so figures stay comparable).  It
prints each cost in those units (machine-independent, roughly), and the
reference time at which the target would be met.

Run: ``python bench/bench_core.py [-n 50000] [--repeat 3] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from penumbra.core.gcs import GcsReplica  # noqa: E402
from penumbra.core.ids import child_task_id, driver_task_id  # noqa: E402
from penumbra.core.messages import (  # noqa: E402
    Execute,
    GcsReply,
    GcsWrite,
    NodeWelcome,
    Send,
    SubmitTask,
    TaskFinished,
    WorkerStarted,
)
from penumbra.core.node import NodeConfig, NodeMachine  # noqa: E402
from penumbra.core.records import ChainConfig  # noqa: E402
from penumbra.core.scheduler import SchedulerConfig  # noqa: E402
from penumbra.core.specs import FunctionDescriptor, ResourceSet, TaskSpec  # noqa: E402
from penumbra.core.tables import AddLocation, AddTask, FinishTask, Subscribe  # noqa: E402

NODE_TARGET = 50_000
GCS_TARGET = 100_000
CFG = ChainConfig(0, 1, ("gcs:0:0",))
FN = FunctionDescriptor(b"empty", "empty")


def make_specs(n: int) -> list[TaskSpec]:
    root = driver_task_id(1)
    one_cpu = ResourceSet.of(CPU=1)
    return [TaskSpec(task_id=child_task_id(root, i), job_id=1, parent_task_id=root, function=FN, resources=one_cpu)
            for i in range(n)]


# ---------------------------------------------------------------------------- (a) node


def bench_node(n: int, workers: int = 8) -> tuple[float, int]:
    specs = make_specs(n)
    submits = [SubmitTask(client="driver", spec=s) for s in specs]
    node = NodeMachine("node:0", NodeConfig(
        resources=ResourceSet.of(CPU=workers),
        scheduler=SchedulerConfig(prestart_workers=workers, max_workers=workers),
    ))
    now = 0.0
    execs: list[Execute] = []

    def process(cmds) -> None:
        # answer GCS writes at once; keep the Execute commands
        for c in cmds:
            t = type(c)
            if t is Execute:
                execs.append(c)
            elif t is Send and type(c.msg) is GcsWrite:
                process(node.handle(GcsReply(req_id=c.msg.req_id, result=None), now))

    process(node.start(now))
    process(node.handle(NodeWelcome(configs=(CFG,)), now))
    for i in range(workers):
        process(node.handle(WorkerStarted(worker_id=f"node:0/w{i}"), now))

    handle = node.handle
    finished = 0
    t0 = time.process_time()
    for ev in submits:
        process(handle(ev, now))
        # keep the pipeline full but drain as we go (submit-bound, as a driver would be)
        while len(execs) >= workers:
            ex = execs.pop(0)
            now += 1e-6
            process(handle(TaskFinished(worker_id=ex.worker_id, task_id=ex.spec.task_id,
                                        outputs=((ex.spec.return_ids[0], 8),)), now))
            finished += 1
    while execs:
        ex = execs.pop(0)
        process(handle(TaskFinished(worker_id=ex.worker_id, task_id=ex.spec.task_id,
                                    outputs=((ex.spec.return_ids[0], 8),)), now))
        finished += 1
    elapsed = time.process_time() - t0
    assert finished == n, (finished, n)
    sched = node.scheduler
    assert sched.finished_count == n and sched.available == sched.total and not sched.tasks
    node.validate()
    return n / elapsed, finished


# ---------------------------------------------------------------------------- (b) gcs


def gcs_ops(n_tasks: int) -> list[GcsWrite]:
    specs = make_specs(n_tasks)
    msgs: list[GcsWrite] = []
    req = 0
    for i, s in enumerate(specs):
        out = s.return_ids[0]
        node = f"node:{i % 16}"
        for op in (
            AddTask(s, node),
            Subscribe(f"node:{(i + 1) % 16}", "objects", out),
            FinishTask(s.task_id, node, ((out, 1024),), attempt=0),
            AddLocation(out, f"node:{(i + 1) % 16}", 1024),
        ):
            req += 1
            msgs.append(GcsWrite(client="node:0", req_id=req, op=op, low_water=req))
    return msgs


def bench_gcs(n_ops: int) -> tuple[float, int]:
    msgs = gcs_ops(max(1, n_ops // 4))
    replica = GcsReplica("gcs:0:0", 0, config=CFG)
    handle = replica.handle
    sent = 0
    t0 = time.process_time()
    for m in msgs:
        sent += len(handle(m, 0.0))
    elapsed = time.process_time() - t0
    assert replica.seq == len(msgs) == replica.committed
    replica.validate()
    return len(msgs) / elapsed, sent


# ---------------------------------------------------------------------------- reference


@dataclass(frozen=True, slots=True, kw_only=True)
class _Ref:
    a: int = 0
    b: str = ""
    c: object = None


def reference_us(n: int = 200_000) -> float:
    """Microseconds to build one small protocol-style message (best of 3)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for i in range(n):
            _Ref(a=i, b="x", c=None)
        best = min(best, time.process_time() - t0)
    return best / n * 1e6


# ---------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=50_000, help="tasks for (a); ops for (b) are 4x")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one run of each")
    args = ap.parse_args()

    if args.profile:
        for name, fn in (("node", lambda: bench_node(args.n)), ("gcs", lambda: bench_gcs(4 * args.n))):
            prof = cProfile.Profile()
            prof.enable()
            fn()
            prof.disable()
            print(f"=== profile: {name}")
            pstats.Stats(prof).sort_stats("tottime").print_stats(18)

    ref = reference_us()
    print(f"reference operation (one small frozen slotted dataclass): {ref:.3f} us on this machine")
    node_rate = max(bench_node(args.n)[0] for _ in range(args.repeat))
    gcs_rate = max(bench_gcs(4 * args.n)[0] for _ in range(args.repeat))
    ok = True
    for label, rate, target, unit in (
        ("(a) NodeMachine submit->dispatch->finish", node_rate, NODE_TARGET, "tasks/s"),
        ("(b) GcsReplica (chain of 1) GcsWrite ops", gcs_rate, GCS_TARGET, "ops/s"),
    ):
        verdict = "ok" if rate >= target else "BELOW TARGET"
        ok &= rate >= target
        cost = 1e6 / rate / ref  # reference operations per task (or op)
        print(f"{label:45s} {rate:>12,.0f} {unit:8s} target {target:>9,} {unit:8s} {verdict}")
        print(f"{'':45s} = {cost:.0f} reference ops each; the target is met where the reference "
              f"takes <= {1e6 / target / cost:.3f} us")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
