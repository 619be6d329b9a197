"""A parameter server with sharded actors.

The paper's parameter server example (its section on actors): the model's
parameters are split over several ``ParameterShard`` actors; ``DataWorker``
actors each hold a part of the data, read the current parameters from
every shard, compute a gradient, and send each shard only its slice of it
(``num_returns``: one object per shard).  The iteration is written as
dataflow: the driver passes object references along and never touches a
parameter or a gradient itself, so the shards' outputs go straight to the
workers and the workers' gradient slices straight to the shards.

The model is linear regression trained by synchronous gradient descent on
synthetic data.  The result is checked twice: the learned parameters must
be close to the ones the data was made from, and they must equal the same
computation done locally in numpy (same data, same order of operations).

    python examples/parameter_server.py                          # 2 shards, 2 workers
    python examples/parameter_server.py --shards 4 --workers 8 --dim 20000 --simulated --nodes 4
    python examples/parameter_server.py --ray

The training loss is written to ``ps_loss.png``.
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


def true_weights(seed: int, dim: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim)


def worker_data(seed: int, index: int, samples: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Worker ``index``'s part of the data: made from seeds, so the driver can
    make the same data to check the result."""
    rng = np.random.default_rng([seed, index])
    X = rng.standard_normal((samples, dim))
    y = X @ true_weights(seed, dim) + 0.1 * rng.standard_normal(samples)
    return X, y


def gradient(X: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
    """The mean squared error's gradient (halved) and the loss, on one part of the data."""
    residual = X @ w - y
    return X.T @ residual / len(y), float(np.mean(residual ** 2))


def apply_update(params: np.ndarray, grads, lr: float) -> np.ndarray:
    """A shard's step: the workers' gradients averaged (in worker order)."""
    return params - lr * np.mean(np.stack(grads), axis=0)


@ray.remote
class ParameterShard:
    """One slice of the model's parameters."""

    def __init__(self, size: int, lr: float):
        self.params = np.zeros(size)
        self.lr = lr

    def get(self) -> np.ndarray:
        return self.params

    def apply(self, *grads) -> np.ndarray:
        """Applies one gradient slice from every worker; returns the new slice."""
        self.params = apply_update(self.params, grads, self.lr)
        return self.params


@ray.remote
class DataWorker:
    """Holds a part of the data; turns parameters into gradient slices."""

    def __init__(self, seed: int, index: int, samples: int, dim: int, shards: int):
        self.X, self.y = worker_data(seed, index, samples, dim)
        self.shards = shards

    def compute(self, *param_slices):
        """The gradient at the parameters (given as the shards' slices), split
        the same way, followed by the loss: ``shards + 1`` return values."""
        g, loss = gradient(self.X, self.y, np.concatenate(param_slices))
        return (*np.array_split(g, self.shards), loss)


# ---------------------------------------------------------------------------
# the driver


def local_training(args) -> tuple[np.ndarray, list[float]]:
    """The same synchronous training, in this process: what the cluster must match."""
    data = [worker_data(args.seed, i, args.samples, args.dim) for i in range(args.workers)]
    sizes = [len(a) for a in np.array_split(np.arange(args.dim), args.shards)]
    slices = [np.zeros(n) for n in sizes]
    losses = []
    for _ in range(args.iterations):
        w = np.concatenate(slices)
        results = [gradient(X, y, w) for X, y in data]
        pieces = [np.array_split(g, args.shards) for g, _ in results]
        slices = [apply_update(slices[k], [p[k] for p in pieces], args.lr) for k in range(args.shards)]
        losses.append(float(np.mean([loss for _, loss in results])))
    return np.concatenate(slices), losses


def parse(argv):
    p = base_parser("parameter_server.py", "Synchronous data-parallel training with a parameter server "
                    "sharded over actors.")
    p.add_argument("--shards", type=int, default=2, help="parameter shard actors (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="data worker actors (default: %(default)s)")
    p.add_argument("--dim", type=int, default=500, help="model parameters (default: %(default)s)")
    p.add_argument("--samples", type=int, default=1000, help="samples per worker (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=50, help="gradient steps (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.5, help="step size (default: %(default)s)")
    args = p.parse_args(argv)
    for name in ("shards", "workers", "dim", "samples", "iterations"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.shards > args.dim:
        p.error(f"--shards ({args.shards}) cannot exceed --dim ({args.dim}): every shard holds a slice")
    if args.lr <= 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    return args


def main(argv=None):
    args = parse(argv)
    sizes = [len(a) for a in np.array_split(np.arange(args.dim), args.shards)]
    losses: list[float] = []
    with Session("parameter-server", args, ray) as s:
        spread = {"scheduling_strategy": "SPREAD"}  # one actor per node where there are several
        shards = [ParameterShard.options(**spread).remote(n, args.lr) for n in sizes]
        workers = [DataWorker.options(**spread).remote(args.seed, i, args.samples, args.dim, args.shards)
                   for i in range(args.workers)]
        params = [shard.get.remote() for shard in shards]
        s.calls += len(shards)
        for it in range(1, args.iterations + 1):
            # every worker reads every shard's slice and returns one gradient slice per shard, plus its loss
            outs = [w.compute.options(num_returns=args.shards + 1).remote(*params) for w in workers]
            # each shard gets its slice from every worker, in worker order
            params = [shard.apply.remote(*[out[k] for out in outs]) for k, shard in enumerate(shards)]
            s.calls += len(workers) + len(shards)
            losses.append(float(np.mean(ray.get([out[-1] for out in outs]))))
            s.step(it, args.iterations, f"training loss {losses[-1]:.6g}")
        learned = np.concatenate(ray.get(params))
        for a in shards + workers:
            ray.kill(a)

    expected, expected_losses = local_training(args)
    w_true = true_weights(args.seed, args.dim)
    diff = float(np.max(np.abs(learned - expected)))
    rel_err = float(np.linalg.norm(learned - w_true) / np.linalg.norm(w_true))
    exact = bool(np.array_equal(learned, expected))
    checks = [
        Check(f"the parameters equal the same training done locally in numpy "
              f"(max difference {diff:.3g}{', bit for bit' if exact else ''})",
              bool(np.allclose(learned, expected, rtol=1e-9, atol=1e-12))),
        Check("the losses equal the local ones", bool(np.allclose(losses, expected_losses, rtol=1e-9, atol=1e-12))),
        Check(f"the loss fell from {losses[0]:.4g} to {losses[-1]:.4g}", losses[-1] < 0.01 * losses[0]),
        Check(f"the parameters are within 5% of the ones the data was made from ({100 * rel_err:.2f}%)",
              rel_err < 0.05),
    ]

    def draw(fig):
        ax = fig.add_subplot()
        ax.plot(range(1, len(losses) + 1), losses, label="on the cluster")
        ax.plot(range(1, len(expected_losses) + 1), expected_losses, ls="--", color="k", lw=1,
                label="the same, computed locally")
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel("training loss (MSE)")
        ax.set_title(f"Parameter server: {args.shards} shards, {args.workers} workers, {args.dim} parameters")
        ax.legend()

    plot = plot_figure(args, "ps_loss.png", draw)
    result = s.result(checks, plot, {"learned": learned, "expected": expected, "losses": losses,
                                     "expected_losses": expected_losses, "max_difference": diff,
                                     "bit_identical": exact, "relative_error": rel_err})
    summary(result, [
        f"{args.workers} workers and {args.shards} parameter shards trained {args.dim} parameters on "
        f"{args.workers * args.samples} samples for {args.iterations} synchronous iterations",
        f"learned: loss {losses[0]:.4g} -> {losses[-1]:.4g}; parameters {100 * rel_err:.2f}% from the truth; "
        f"{'bit-identical to' if exact else f'within {diff:.3g} of'} the local numpy computation",
    ])
    return result


if __name__ == "__main__":
    sys.exit(0 if main().ok else 1)
