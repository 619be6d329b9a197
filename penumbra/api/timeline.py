"""``penumbra.timeline()``: what ran where and when, in Chrome trace format.

As ``ray.timeline(filename=None)``: a list of trace events, or, given a
file name, the same list written there as JSON (and ``None`` returned).
Open the file in ``chrome://tracing`` or https://ui.perfetto.dev.

The events come from the runs every node records (``core.timeline``: the
node machine keeps one per execution that ended on its workers, the last
``NodeConfig.timeline_limit`` of them, 10,000 by default).  Both drivers
feed the node the same events, so a program run on the simulator
(``init(simulated=True)``: virtual time) and on real processes gives
traces of the same shape, to open side by side.

The trace's layout:

* a *process* per node (``pid``: 1, 2 ... in node id order, named ``Node
  <id>``), a *thread* (lane) per worker (named by its worker id; a threaded
  or async actor's overlapping calls take extra lanes ``<id> #2`` ...);
* one complete event (``"ph": "X"``) per run: ``name`` is the function's
  name, ``Class.method`` for an actor call (``Class.__init__`` for its
  creation); ``ts`` and ``dur`` in microseconds (wall clock on the real
  runtime, virtual time in the simulator); ``cat`` is ``task``,
  ``actor_call`` or ``actor_creation``; ``args`` hold the task id, job,
  attempt, node, worker and ``status`` (``ok``, the error kind such as
  ``task_error``, or ``worker_crashed``); a failed run has ``"cname":
  "terrible"`` (drawn red).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from ..core.timeline import NodeRuns
from .context import current_runtime

__all__ = ["timeline", "chrome_trace", "write_trace", "plot_trace"]


def chrome_trace(nodes: Iterable[NodeRuns]) -> list[dict[str, Any]]:
    """The Chrome trace events of ``nodes``' runs: lane metadata first,
    then one complete event per run in time order."""
    meta: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for pid, nr in enumerate(sorted(nodes, key=lambda n: n.node_id), start=1):
        meta.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                     "args": {"name": f"Node {nr.node_id}"}})
        meta.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
        lanes: dict[tuple[str, int], int] = {}
        ends: dict[str, list[float]] = {}  # worker -> the end of its last run on each of its lanes
        for r in sorted(nr.runs, key=lambda r: (r.worker_id, r.start, r.end)):
            # a worker's runs overlap only on a threaded or async actor:
            # those go to the first of its lanes free by then
            slots = ends.setdefault(r.worker_id, [])
            slot = next((i for i, e in enumerate(slots) if e <= r.start), None)
            if slot is None:
                slot = len(slots)
                slots.append(r.end)
            else:
                slots[slot] = r.end
            key = (r.worker_id, slot)
            tid = lanes.get(key)
            if tid is None:
                tid = lanes[key] = len(lanes) + 1
                name = r.worker_id if slot == 0 else f"{r.worker_id} #{slot + 1}"
                meta.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}})
            start = (r.start + nr.offset) * 1e6
            ev: dict[str, Any] = {
                "name": r.name, "cat": r.kind, "ph": "X", "pid": pid, "tid": tid,
                "ts": round(start, 3), "dur": round(max(0.0, (r.end - r.start) * 1e6), 3),
                "args": {"task_id": r.task_id.hex(), "job_id": r.job_id, "attempt": r.attempt,
                         "status": r.status, "node_id": nr.node_id, "worker_id": r.worker_id},
            }
            if r.status != "ok":
                ev["cname"] = "terrible"
            events.append(ev)
    events.sort(key=lambda e: (e["ts"], e["pid"], e["tid"]))
    return meta + events


def write_trace(events: list[dict[str, Any]], filename: str | os.PathLike) -> None:
    """Write ``events`` as a JSON array (what trace viewers open)."""
    with open(filename, "w") as f:
        json.dump(events, f)


def timeline(filename: str | os.PathLike | None = None) -> list[dict[str, Any]] | None:
    """Task and actor-call events of the cluster, in Chrome trace format.

    Args:
        filename: write the events there as JSON, and return ``None``
            (as Ray does); else return them.

    Returns:
        The trace events (see the module doc for their fields).

    Raises:
        PenumbraError: ``init()`` was not called (a timeline does not start
            a cluster), or the cluster cannot be asked.

    Each node keeps its last 10,000 runs (``timeline_limit``); older ones
    are not in the trace.  On the real runtime every node daemon is asked
    directly; a node that does not answer within 30 s is left out, with a
    warning in the log.
    """
    events = chrome_trace(current_runtime().timeline_runs(timeout=30.0))
    if filename is not None:
        write_trace(events, filename)
        return None
    return events


def plot_trace(events: list[dict[str, Any]], path: str | os.PathLike, title: str = "What ran where") -> int:
    """Draw ``events`` (``chrome_trace``'s) as a PNG: a row per worker lane,
    grouped by node, a bar per run (colored by name, hatched when it
    failed), time from the first run.  Returns how many runs it drew."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {(e["pid"], 0): e["args"]["name"] for e in events if e.get("name") == "process_name"}
    lanes = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    runs = [e for e in events if e.get("ph") == "X"]
    order = sorted(lanes)
    row = {k: i for i, k in enumerate(order)}
    t0 = min((e["ts"] for e in runs), default=0.0)
    palette = plt.get_cmap("tab10")
    colors: dict[str, Any] = {}
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.45 * max(1, len(order))))
    for e in runs:
        c = colors.setdefault(e["name"], palette(len(colors) % 10))
        failed = e["args"].get("status") != "ok"
        ax.barh(row[(e["pid"], e["tid"])], e["dur"] / 1e3, left=(e["ts"] - t0) / 1e3, height=0.6, color=c,
                edgecolor="black" if failed else c, hatch="//" if failed else None, linewidth=0.5)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels([f"{names.get((p, 0), p)} {lanes[(p, t)].rsplit('/', 1)[-1]}" for p, t in order], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("milliseconds since the first run")
    ax.set_title(title)
    handles = [matplotlib.patches.Patch(color=c, label=n) for n, c in colors.items()]
    if any(e["args"].get("status") != "ok" for e in runs):
        handles.append(matplotlib.patches.Patch(facecolor="white", edgecolor="black", hatch="//", label="failed"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return len(runs)
