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


def plot(result: Any, path: str) -> None:
    """Draw ``result`` (an ``ExperimentResult``) into the PNG file ``path``."""
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
