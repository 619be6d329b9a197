"""PNG plots of the experiments (matplotlib, Agg backend: no display needed).

``plot(result, path)`` draws the figure of ``result.name`` the way the paper
shows it, from ``result.series``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["plot"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bins(times: list[float], width: float) -> tuple[list[float], list[float]]:
    if not times:
        return [], []
    n = int(max(times) / width) + 1
    counts = [0] * n
    for t in times:
        counts[int(t / width)] += 1
    return [i * width for i in range(n)], [c / width for c in counts]


def _save(fig: Any, plt: Any, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_fig10a(result: Any, path: str) -> None:
    """Latency over the run, and a zoom on the failure: the spike is a
    handful of writes over a few ms, invisible at the scale of the run."""
    plt = _plt()
    s = result.series
    fig, (ax, zx) = plt.subplots(2, 1, figsize=(7, 6.4), gridspec_kw={"height_ratios": [1, 1.2]})
    sent, lat, kill = s["sent"], s["latency_ms"], s["kill"]
    spike = max(range(len(lat)), key=lat.__getitem__) if lat else None
    for a in (ax, zx):
        a.axvline(kill, color="r", linestyle="--", alpha=0.6, zorder=1, label="replica killed")
        a.axvline(s["back"], color="g", linestyle="--", alpha=0.6, zorder=1, label="replica restarted")
        a.axhline(30, color="k", linestyle=":", zorder=1, label="30 ms")
        a.plot(sent, lat, ".", markersize=3, color="C0", zorder=2, label="write latency")
        a.set_yscale("log")
        a.set_ylabel("client latency (ms)")
        a.grid(True, alpha=0.3)
    if spike is not None:
        # the writes that waited out the failure, drawn big and labelled
        hi = [i for i in range(len(lat)) if lat[i] > 3 * sorted(lat)[len(lat) // 2]]
        for a in (ax, zx):
            # each delayed write: a dot when sent, a bar while it waited
            a.hlines([lat[i] for i in hi], [sent[i] for i in hi], [sent[i] + lat[i] / 1e3 for i in hi],
                     color="C3", linewidth=3, alpha=0.7, zorder=3)
            a.plot([sent[i] for i in hi], [lat[i] for i in hi], "o", markersize=7, color="C3", zorder=4,
                   label="writes delayed by the failure (bar: the wait)" if a is ax else None)
        for a in (ax, zx):
            a.annotate(f"spike: {lat[spike]:.1f} ms", (sent[spike], lat[spike]), xytext=(30, -30),
                       textcoords="offset points", color="C3", fontsize=9, arrowprops={"arrowstyle": "->", "color": "C3"})
        lo, hi_t = kill - 0.01, max(kill + 0.03, sent[spike] + 2 * lat[spike] / 1e3)
        zx.set_xlim(lo, hi_t)
        zx.set_title(f"zoom on the failure: {(hi_t - lo) * 1e3:.0f} ms around the kill", fontsize=9)
    ax.set_xlabel("time (s)")
    zx.set_xlabel("time (s)")
    ax.set_title(f"Figure 10a: GCS chain of 2, one replica killed ({result.preset} preset)")
    ax.legend(loc="center right", fontsize=7)
    _save(fig, plt, path)


def _plot_fig10b(result: Any, path: str) -> None:
    plt = _plt()
    s = result.series
    fig, (ax, tx) = plt.subplots(2, 1, figsize=(7, 6.4), sharex=True)
    ax.plot(s["off_t"], s["off_mb"], "-", color="C3", label="without flushing")
    ax.plot(s["on_t"], s["on_mb"], "-", color="C0", label="with flushing")
    if "on_index_mb" in s:
        ax.plot(s["on_t"], s["on_index_mb"], "-.", color="C0", alpha=0.6, label="with flushing: of which the index of flushed keys")
    ax.axhline(s["threshold_mb"], color="k", linestyle=":", label="flush threshold")
    ax.set_ylabel("GCS memory (MB, estimated)")
    ax.set_title(f"Figure 10b: GCS memory with and without flushing ({result.preset} preset)")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(True, alpha=0.3)
    tx.plot(s["off_t"], [d / 1e3 for d in s["off_done"]], "-", color="C3", label="without flushing")
    tx.plot(s["on_t"], [d / 1e3 for d in s["on_done"]], "--", color="C0", label="with flushing")
    tx.set_xlabel("time (s)")
    tx.set_ylabel("tasks finished (thousands)")
    tx.set_title("throughput holds: the same tasks finish at the same pace", fontsize=9)
    tx.legend(loc="upper left", fontsize=8)
    tx.grid(True, alpha=0.3)
    _save(fig, plt, path)


def _plot_fig11b(result: Any, path: str) -> None:
    """Calls completed per second, and the methods re-executed to rebuild
    the actors' state: the curves the paper compares."""
    plt = _plt()
    s = result.series
    fig, (ax, rx) = plt.subplots(2, 1, figsize=(7, 6.4), sharex=True)
    width = 0.05
    runs = (("without", "no checkpoints", "C3", "-"), ("with", f"checkpoint every {s['interval']} calls", "C0", "--"))
    for key, label, color, style in runs:
        xs, ys = _bins(s[key], width)
        ax.step(xs, ys, where="post", color=color, linestyle=style, label=label)
        re = sorted(s.get(f"{key}_reruns", []))
        end = max(s[key]) if s[key] else (re[-1] if re else 0.0)
        rx.step([0.0] + re + [end], [0] + list(range(1, len(re) + 1)) + [len(re)], where="post", color=color,
                linestyle=style, label=f"{label}: {len(re)} re-executed")
    for a in (ax, rx):
        if s.get("killed_at") is not None:
            a.axvline(s["killed_at"], color="k", linestyle=":", label="nodes killed" if a is ax else None)
        a.grid(True, alpha=0.3)
        a.legend(loc="upper right", fontsize=8)
    ax.set_ylabel("method calls completed / s")
    rx.set_ylabel("methods re-executed (cumulative)")
    rx.set_xlabel("time (s)")
    ax.set_title(f"Figure 11b: actor reconstruction ({result.preset} preset)")
    _save(fig, plt, path)


def plot(result: Any, path: str) -> None:
    """Draw ``result`` (an ``ExperimentResult``) into the PNG file ``path``."""
    special = {"fig10a": _plot_fig10a, "fig10b": _plot_fig10b, "fig11b": _plot_fig11b}.get(result.name)
    if special is not None:
        special(result, path)
        return
    plt = _plt()
    s = result.series
    name = result.name
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if name == "fig8b":
        xs, ys = s["nodes"], s["throughput"]
        a, b, r2 = s["fit"]
        ax.plot(xs, [y / 1e6 for y in ys], "o", label="simulated")
        lo, hi = min(xs), max(xs)
        ax.plot([lo, hi], [(a + b * lo) / 1e6, (a + b * hi) / 1e6], "-", alpha=0.6,
                label=f"fit: {b / 1e3:.1f}K tasks/s per node, R$^2$={r2:.4f}")
        ax.set_xlabel("number of nodes")
        ax.set_ylabel("millions of tasks/s")
        ax.set_title(f"Figure 8b: scalability ({result.preset} preset)")
    elif name == "fig8a":
        ax.loglog(s["sizes"], s["aware"], "o-", label="locality aware")
        ax.loglog(s["sizes"], s["unaware"], "s-", label="locality unaware")
        ax.set_xlabel("object size (MB)")
        ax.set_ylabel("mean task latency (s)")
        ax.set_title(f"Figure 8a: locality-aware placement ({result.preset} preset)")
        for x, a, u in zip(s["sizes"], s["aware"], s["unaware"]):
            if x >= 1:
                ax.annotate(f"{u / a:.1f}x", (x, u), xytext=(4, 4), textcoords="offset points", fontsize=8)
        if s.get("note"):
            import textwrap

            ax.text(0.02, 0.98, "At 10 MB: " + "\n".join(textwrap.wrap(s["note"], 70)), transform=ax.transAxes,
                    fontsize=7, va="top", bbox={"boxstyle": "round", "fc": "white", "alpha": 0.85})
    elif name == "fig10a":
        ax.plot(s["sent"], s["latency_ms"], ".", markersize=2, label="write latency")
        ax.axvline(s["kill"], color="r", linestyle="--", label="replica killed")
        ax.axvline(s["back"], color="g", linestyle="--", label="replica restarted")
        ax.axhline(30, color="k", linestyle=":", label="30 ms")
        ax.set_yscale("log")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("client latency (ms)")
        ax.set_title(f"Figure 10a: GCS chain of 2, one replica killed ({result.preset} preset)")
    elif name == "fig11a":
        t = s["t"]
        ax.stackplot(t, s["orig"], s["rerun"], labels=["original tasks", "re-executed tasks"], step="post", alpha=0.8)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("throughput (tasks/s)")
        ax2 = ax.twinx()
        ax2.step(t, s["nodes"], "k--", where="post", label="nodes alive")
        ax2.set_ylabel("nodes alive")
        ax2.set_ylim(0, max(s["nodes"]) + 1)
        ax2.legend(loc="upper right")
        ax.set_title(f"Figure 11a: task reconstruction ({result.preset} preset)")
    elif name == "fig11b":
        width = 0.05
        for key, label in (("without", "no checkpoints"), ("with", f"checkpoint every {s['interval']} calls")):
            xs, ys = _bins(s[key], width)
            ax.step(xs, ys, where="post", label=label)
        if s.get("killed_at") is not None:
            ax.axvline(s["killed_at"], color="r", linestyle="--", label="nodes killed")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("method calls completed per second")
        ax.set_title(f"Figure 11b: actor reconstruction ({result.preset} preset)")
    else:
        plt.close(fig)
        raise ValueError(f"no plot for experiment {name!r}")
    ax.legend(loc="best", fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
