"""Evolution strategies: a population of workers evaluating perturbations.

The shape of the Ray paper's Figure 13a (Salimans et al.'s ES on Ray): a
driver holds a policy's parameters; each iteration it broadcasts them once
(``ray.put``), every worker actor evaluates its share of random
perturbations of them, and the driver turns the returns into a gradient
estimate.  Only seeds travel: a perturbation is rebuilt from its seed on
both sides, so a worker sends back a few numbers per perturbation, never
its noise vector.

The task is a toy one a person can check: balance a pole on a cart
(CartPole, written here in plain Python floats) with a linear policy
``push right if w . state + b > 0``.  Starting from zero parameters (a pole
that falls in about ten steps), ES learns to hold it for most of an
episode in a few dozen iterations.

    python examples/evolution_strategies.py                  # real processes, 2 CPUs
    python examples/evolution_strategies.py --simulated --nodes 8 --workers 16
    python examples/evolution_strategies.py --ray            # the same program on Ray

The result is checked: the learned policy's mean return must have grown
past half an episode and beyond the start's.  The reward curve is written
to ``es_rewards.png``.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

if "--ray" in sys.argv[1:]:  # the same program on Ray itself
    import ray
else:
    import penumbra as ray

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Check, Session, base_parser, plot_figure, summary  # noqa: E402

# ---------------------------------------------------------------------------
# the toy environment (runs inside the workers)

GRAVITY, CART_MASS, POLE_MASS, HALF_LENGTH, FORCE, TAU = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
X_LIMIT, ANGLE_LIMIT = 2.4, 12 * 2 * math.pi / 360


def cartpole_return(params, seed: int, max_steps: int) -> int:
    """One CartPole episode under the linear policy ``params`` (5 numbers):
    the number of steps the pole stayed up (at most ``max_steps``).

    Plain floats rather than numpy: one state of four numbers is faster so.
    """
    rng = np.random.default_rng(seed)
    x, x_dot, theta, theta_dot = (float(v) for v in rng.uniform(-0.05, 0.05, 4))
    w0, w1, w2, w3, b = (float(v) for v in params)
    total_mass = CART_MASS + POLE_MASS
    pole_moment = POLE_MASS * HALF_LENGTH
    for t in range(max_steps):
        force = FORCE if w0 * x + w1 * x_dot + w2 * theta + w3 * theta_dot + b > 0 else -FORCE
        cos, sin = math.cos(theta), math.sin(theta)
        temp = (force + pole_moment * theta_dot * theta_dot * sin) / total_mass
        theta_acc = (GRAVITY * sin - cos * temp) / (HALF_LENGTH * (4 / 3 - POLE_MASS * cos * cos / total_mass))
        x_acc = temp - pole_moment * theta_acc * cos / total_mass
        x, x_dot = x + TAU * x_dot, x_dot + TAU * x_acc
        theta, theta_dot = theta + TAU * theta_dot, theta_dot + TAU * theta_acc
        if abs(x) > X_LIMIT or abs(theta) > ANGLE_LIMIT:
            return t + 1
    return max_steps


def perturbation(noise_seed: int, dim: int) -> np.ndarray:
    """The perturbation named by ``noise_seed``: the same vector on every process."""
    return np.random.default_rng(noise_seed).standard_normal(dim)


# ---------------------------------------------------------------------------
# the remote part


@ray.remote
class ESWorker:
    """Evaluates perturbations of the parameters it is sent."""

    def __init__(self, max_steps: int):
        self.max_steps = max_steps

    def evaluate(self, params, sigma: float, noise_seeds, episode_seeds):
        """Returns ``(R(params + sigma e), R(params - sigma e))`` for each
        perturbation ``e`` (antithetic pairs), each pair on its own episode."""
        out = []
        for ns, es in zip(noise_seeds, episode_seeds):
            e = perturbation(int(ns), len(params))
            out.append((cartpole_return(params + sigma * e, int(es), self.max_steps),
                        cartpole_return(params - sigma * e, int(es), self.max_steps)))
        return np.array(out, dtype=float)


@ray.remote
def score(params, seeds, max_steps: int) -> float:
    """The mean return of ``params`` itself over the evaluation episodes."""
    return float(np.mean([cartpole_return(params, sd, max_steps) for sd in seeds]))


def centered_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks scaled to [-0.5, 0.5]: ES's fitness shaping (robust to outliers)."""
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r / max(len(x) - 1, 1) - 0.5


# ---------------------------------------------------------------------------
# the driver


def parse(argv):
    p = base_parser("evolution_strategies.py", "Evolution strategies on a toy CartPole: a population of "
                    "worker actors evaluates perturbations of a linear policy (the Ray paper's Figure 13a).")
    p.add_argument("--workers", type=int, default=2, help="worker actors (default: %(default)s)")
    p.add_argument("--population", type=int, default=32,
                   help="antithetic perturbation pairs per iteration (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=30, help="ES iterations (default: %(default)s)")
    p.add_argument("--episode-length", type=int, default=200, help="steps of a full episode (default: %(default)s)")
    p.add_argument("--sigma", type=float, default=0.1, help="perturbation scale (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.1, help="Adam step size (default: %(default)s)")
    p.add_argument("--eval-episodes", type=int, default=8,
                   help="episodes the driver's policy is scored on each iteration (default: %(default)s)")
    args = p.parse_args(argv)
    for name in ("workers", "population", "iterations", "episode_length", "eval_episodes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.sigma <= 0 or args.lr <= 0:
        p.error("--sigma and --lr must be > 0")
    return args


def main(argv=None):
    args = parse(argv)
    rng = np.random.default_rng(args.seed)
    dim = 5
    params = np.zeros(dim)
    m, v = np.zeros(dim), np.zeros(dim)  # Adam's moments
    eval_seeds = [int(s) for s in rng.integers(1 << 31, size=args.eval_episodes)]
    curve: list[float] = []  # the policy's mean return, before the first and after each iteration
    population_mean: list[float] = []
    with Session("evolution-strategies", args, ray) as s:
        workers = [ESWorker.options(scheduling_strategy="SPREAD").remote(args.episode_length) for _ in range(args.workers)]
        curve.append(ray.get(score.remote(params, eval_seeds, args.episode_length)))
        times = [s.elapsed()]
        s.calls += 1
        for it in range(1, args.iterations + 1):
            noise = rng.integers(1 << 31, size=args.population)
            episodes = rng.integers(1 << 31, size=args.population)
            params_ref = ray.put(params)  # broadcast once, read by every worker
            shares = np.array_split(np.arange(args.population), len(workers))
            refs = [w.evaluate.remote(params_ref, args.sigma, noise[idx], episodes[idx])
                    for w, idx in zip(workers, shares) if len(idx)]
            s.calls += len(refs)
            returns = np.concatenate(ray.get(refs))  # (population, 2), in perturbation order
            ranks = centered_ranks(returns.ravel()).reshape(returns.shape)
            weights = ranks[:, 0] - ranks[:, 1]
            grad = sum(w * perturbation(int(ns), dim) for w, ns in zip(weights, noise))
            grad = grad / (2 * args.population * args.sigma)
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad ** 2
            params = params + args.lr * (m / (1 - 0.9 ** it)) / (np.sqrt(v / (1 - 0.999 ** it)) + 1e-8)
            curve.append(ray.get(score.remote(params, eval_seeds, args.episode_length)))
            times.append(s.elapsed())
            s.calls += 1
            population_mean.append(float(returns.mean()))
            s.step(it, args.iterations, f"policy return {curve[-1]:.1f}, population mean {returns.mean():.1f}")
        for w in workers:
            ray.kill(w)

    target = 0.5 * args.episode_length
    reached = next((i for i, r in enumerate(curve) if r >= target), None)
    checks = [Check(f"the policy's return grew from {curve[0]:.1f} to {curve[-1]:.1f}", curve[-1] > curve[0]),
              Check(f"the best policy holds the pole over half an episode ({max(curve):.1f} >= {target:.0f})",
                    max(curve) >= target)]

    def draw(fig):
        ax = fig.add_subplot()
        ax.plot(range(len(curve)), curve, marker="o", ms=3, label="policy (mean over evaluation episodes)")
        ax.plot(range(1, len(curve)), population_mean, alpha=0.6, label="population (mean of perturbations)")
        ax.axhline(args.episode_length, color="grey", ls=":", lw=1, label="full episode")
        ax.set_xlabel("iteration")
        ax.set_ylabel("return (steps the pole stayed up)")
        ax.set_title(f"ES on CartPole: {args.workers} workers, population {2 * args.population}")
        ax.legend(loc="lower right")

    plot = plot_figure(args, "es_rewards.png", draw)
    result = s.result(checks, plot, {"curve": curve, "params": params.tolist(), "times": times,
                                     "episodes": args.iterations * args.population * 2,
                                     "iterations_to_target": reached,
                                     "time_to_target": None if reached is None else times[reached]})
    clock = "virtual" if args.simulated else "wall"
    summary(result, [
        f"{args.workers} workers evaluated {args.iterations} x {2 * args.population} perturbed policies "
        f"({args.iterations * args.population * 2} episodes of up to {args.episode_length} steps)",
        f"learned: return {curve[0]:.1f} -> {curve[-1]:.1f} (best {max(curve):.1f}); "
        f"policy w = {np.round(params[:4], 3).tolist()}, b = {params[4]:.3f}",
        (f"time to a return of {target:.0f} (the paper's Figure 13a measure): {times[reached]:.2f} s {clock}, "
         f"{reached} iterations" if reached is not None else f"never reached a return of {target:.0f}"),
    ])
    return result


if __name__ == "__main__":
    sys.exit(0 if main().ok else 1)
