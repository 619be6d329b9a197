"""Ring allreduce over actors.

The paper builds allreduce on Ray (its Figure 12) to show that actors and
object references are enough for a communication primitive that usually
comes from MPI.  Here ``--workers`` actors each hold a vector; after the
allreduce every one of them holds the sum of all of them.  The ring
algorithm moves each vector in ``N`` chunks: ``N - 1`` steps of
reduce-scatter (each member sends one chunk to its right neighbour, which
adds it to its own), then ``N - 1`` steps of allgather (the reduced chunks
travel round the ring).  Each step is one actor call per member; a chunk
goes from one actor to the next as an object reference, and the per-caller
ordering of actor calls keeps the steps in sequence, so the driver
submits the whole schedule at once and waits only for the end.

The result is checked: every member's vector must equal the sum computed
locally with numpy, and all members must hold the same bits.  It runs for
several vector sizes and writes the time per allreduce to
``allreduce_time.png`` (virtual time on the simulator, where the network
model decides it).

    python examples/allreduce.py                                  # 4 members, 1e4 .. 1e6 floats
    python examples/allreduce.py --workers 16 --simulated --nodes 16 --sizes 1e5,1e6,1e7
    python examples/allreduce.py --ray
"""

from __future__ import annotations

import os
import sys

import numpy as np

if "--ray" in sys.argv[1:]:  # the same program on Ray itself
    import ray
else:
    import penumbra as ray

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Check, Session, base_parser, plot_figure, summary  # noqa: E402


def member_vector(seed: int, rank: int, size: int) -> np.ndarray:
    """Member ``rank``'s input: made from seeds, so the driver can check the sum."""
    return np.random.default_rng([seed, rank, size]).standard_normal(size)


@ray.remote
class RingMember:
    """One member of the ring: its vector, in ``world`` chunks."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world
        self.chunks: list[np.ndarray] = []

    def load(self, seed: int, size: int) -> int:
        """Takes a fresh input vector (what would be a gradient in training)."""
        self.chunks = [c.copy() for c in np.array_split(member_vector(seed, self.rank, size), self.world)]
        return size

    def send(self, phase: str, step: int) -> np.ndarray:
        """The chunk this member passes to its right neighbour at ``step``."""
        shift = 0 if phase == "reduce-scatter" else 1
        return self.chunks[(self.rank + shift - step) % self.world]

    def receive(self, phase: str, step: int, chunk: np.ndarray) -> None:
        """Takes the left neighbour's chunk: adds it (reduce-scatter) or keeps it (allgather)."""
        shift = -1 if phase == "reduce-scatter" else 0
        i = (self.rank + shift - step) % self.world
        if phase == "reduce-scatter":
            self.chunks[i] = self.chunks[i] + chunk
        else:
            self.chunks[i] = chunk

    def result(self) -> np.ndarray:
        return np.concatenate(self.chunks)


def ring_allreduce(members: list) -> list:
    """Submits a whole ring allreduce; returns the refs of every member's result.

    Nothing here waits: each ``receive`` takes the ``send`` of its left
    neighbour as an argument (the object moves between the two actors), and
    each actor runs its calls in the order they were made.
    """
    n = len(members)
    for phase in ("reduce-scatter", "allgather"):
        for step in range(n - 1):
            outgoing = [m.send.remote(phase, step) for m in members]
            for r, m in enumerate(members):
                m.receive.remote(phase, step, outgoing[(r - 1) % n])
    return [m.result.remote() for m in members]


# ---------------------------------------------------------------------------
# the driver


def difference(got: np.ndarray, expected: np.ndarray) -> float:
    """The largest elementwise difference (infinite when the shapes differ)."""
    if got.shape != expected.shape:
        return float("inf")
    return float(np.max(np.abs(got - expected)))


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(float(t)) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SystemExit(f"--sizes takes numbers separated by commas (e.g. 1e4,1e5,1e6), got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise SystemExit(f"--sizes must list sizes >= 1, got {text!r}")
    return sizes


def parse(argv):
    p = base_parser("allreduce.py", "Ring allreduce over actors (the Ray paper's Figure 12), checked against "
                    "numpy's sum.")
    p.add_argument("--workers", type=int, default=4, help="members of the ring (default: %(default)s)")
    p.add_argument("--sizes", default="1e4,1e5,1e6",
                   help="vector lengths (float64 numbers), comma-separated (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3,
                   help="allreduces per size; the time plotted is the median (default: %(default)s)")
    args = p.parse_args(argv)
    if args.workers < 2:
        p.error(f"--workers must be >= 2 (a ring of one has nothing to reduce), got {args.workers}")
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    args.size_list = parse_sizes(args.sizes)
    if min(args.size_list) < args.workers:
        p.error(f"every size must be at least --workers ({args.workers}): each member owns one chunk")
    return args


def main(argv=None):
    args = parse(argv)
    n = args.workers
    times: dict[int, list[float]] = {}
    worst: dict[int, float] = {}
    agree = True
    with Session("allreduce", args, ray) as s:
        members = [RingMember.options(scheduling_strategy="SPREAD").remote(r, n) for r in range(n)]
        for size in args.size_list:
            times[size] = []
            for rep in range(args.repeats):
                seed = args.seed * 1000 + rep
                ray.get([m.load.remote(seed, size) for m in members])
                t0 = s.elapsed()
                results = ray.get(ring_allreduce(members))
                t1 = s.elapsed()
                s.calls += n + 2 * (n - 1) * 2 * n + n
                times[size].append(t1 - t0)
                expected = np.sum([member_vector(seed, r, size) for r in range(n)], axis=0)
                worst[size] = max(worst.get(size, 0.0), *(difference(v, expected) for v in results))
                agree = agree and all(np.array_equal(results[0], v) for v in results[1:])
            med = float(np.median(times[size]))
            s.step(args.size_list.index(size) + 1, len(args.size_list),
                   f"{size} floats ({size * 8 / 1e6:.2f} MB) over {n} members: {1e3 * med:.2f} ms per allreduce")
        for m in members:
            ray.kill(m)

    clock = "virtual" if args.simulated else "wall"
    checks = [Check(f"every member's vector equals numpy's sum of the {n} inputs "
                    f"(max difference {max(worst.values()):.2g}), for every size and repeat",
                    max(worst.values()) <= 1e-9),
              Check("all members hold the same bits", agree)]
    medians = {size: float(np.median(t)) for size, t in times.items()}

    def draw(fig):
        ax = fig.add_subplot()
        sizes = sorted(medians)
        mb = [sz * 8 / 1e6 for sz in sizes]
        ax.plot(mb, [1e3 * medians[sz] for sz in sizes], marker="o")
        for sz in sizes:
            ax.scatter([sz * 8 / 1e6] * len(times[sz]), [1e3 * t for t in times[sz]], s=8, color="grey", alpha=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("vector size (MB of float64)")
        ax.set_ylabel(f"time per allreduce (ms, {clock} clock)")
        ax.set_title(f"Ring allreduce over {n} actors ({s.runtime})")

    plot = plot_figure(args, "allreduce_time.png", draw)
    result = s.result(checks, plot, {"times": times, "medians": medians, "max_difference": worst, "agree": agree})
    lines = [f"{n} actors ran {args.repeats} ring allreduces ({2 * (n - 1)} steps each) per size"]
    for size in args.size_list:
        per_member = 2 * (n - 1) / n * size * 8 / 1e6
        lines.append(f"{size:>12} floats ({size * 8 / 1e6:8.2f} MB): {1e3 * medians[size]:9.2f} ms per allreduce "
                     f"({clock}), {per_member:.2f} MB sent by each member")
    summary(result, lines)
    return result


if __name__ == "__main__":
    sys.exit(0 if main().ok else 1)
