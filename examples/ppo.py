"""PPO: rollout actors and a learner actor, with a toy environment in numpy.

The shape of the Ray paper's Figure 13b (PPO on Ray): simulation actors
collect experience with the current policy, a learner improves the policy
on it, and the new weights go back out.  The experience never passes
through the driver: each rollout's result is an object reference handed
straight to the learner's ``update`` call, so the batches go from the
rollout workers to the learner through the object store, and the driver
only orchestrates.

The environment is CartPole, vectorized in numpy (every rollout actor
steps several copies at once); the policy is a linear softmax over the
cart's state and the value function a linear one, so the PPO update
(clipped surrogate objective, generalized advantage estimation) fits in a
few lines of numpy with hand-written gradients.

    python examples/ppo.py                            # real processes, 2 CPUs
    python examples/ppo.py --simulated --nodes 4 --workers 8
    python examples/ppo.py --ray                      # the same program on Ray

The result is checked: the mean return of the last iterations must have
grown well past the first iteration's.  The return curve is written to
``ppo_returns.png``.
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

# ---------------------------------------------------------------------------
# the toy environment and the policy (run inside the actors)


class VecCartPole:
    """``n`` CartPoles stepped at once (numpy arrays); one that ends restarts."""

    def __init__(self, n: int, seed: int, max_steps: int):
        self.rng = np.random.default_rng(seed)
        self.n, self.max_steps = n, max_steps
        self.state = self.rng.uniform(-0.05, 0.05, (n, 4))
        self.steps = np.zeros(n, dtype=int)

    def step(self, action: np.ndarray):
        """Pushes each cart left (0) or right (1); returns (state, reward,
        failed, truncated), the state of an ended episode being a fresh one's."""
        x, x_dot, theta, theta_dot = self.state.T
        force = np.where(action == 1, 10.0, -10.0)
        cos, sin = np.cos(theta), np.sin(theta)
        temp = (force + 0.05 * theta_dot ** 2 * sin) / 1.1
        theta_acc = (9.8 * sin - cos * temp) / (0.5 * (4 / 3 - 0.1 * cos ** 2 / 1.1))
        x_acc = temp - 0.05 * theta_acc * cos / 1.1
        self.state = np.stack([x + 0.02 * x_dot, x_dot + 0.02 * x_acc,
                               theta + 0.02 * theta_dot, theta_dot + 0.02 * theta_acc], axis=1)
        self.steps += 1
        failed = (np.abs(self.state[:, 0]) > 2.4) | (np.abs(self.state[:, 2]) > 12 * 2 * np.pi / 360)
        truncated = ~failed & (self.steps >= self.max_steps)
        done = failed | truncated
        if done.any():
            self.state[done] = self.rng.uniform(-0.05, 0.05, (int(done.sum()), 4))
            self.steps[done] = 0
        return self.state.copy(), np.ones(self.n), failed, truncated


def features(state: np.ndarray) -> np.ndarray:
    return np.concatenate([state, np.ones((len(state), 1))], axis=1)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@ray.remote
class RolloutWorker:
    """Runs the current policy in its own copies of the environment."""

    def __init__(self, envs: int, seed: int, max_steps: int, gamma: float = 0.99, lam: float = 0.95):
        self.env = VecCartPole(envs, seed, max_steps)
        self.rng = np.random.default_rng(seed + 1)
        self.gamma, self.lam = gamma, lam
        self.running = np.zeros(envs)  # each env's return so far

    def sample(self, weights, steps: int) -> dict:
        """``steps`` steps of every env under ``weights = (W, V)``: the batch
        with advantages (GAE) and value targets, and the returns of the
        episodes that ended."""
        W, V = weights
        obs, acts, logps, rews, vals, ends, nonterminal = [], [], [], [], [], [], []
        finished = []
        state = self.env.state.copy()
        for _ in range(steps):
            f = features(state)
            p = softmax(f @ W)
            a = (self.rng.random(len(f)) < p[:, 1]).astype(int)
            state, r, failed, truncated = self.env.step(a)
            self.running += r
            done = failed | truncated
            finished.extend(self.running[done].tolist())
            self.running[done] = 0
            obs.append(f)
            acts.append(a)
            logps.append(np.log(p[np.arange(len(a)), a]))
            rews.append(r)
            vals.append(f @ V)
            ends.append(done)
            nonterminal.append(~failed)  # a truncated episode's value is bootstrapped, not zero
        next_v = np.vstack(vals[1:] + [features(state) @ V])
        adv = np.zeros((steps, self.env.n))
        gae = np.zeros(self.env.n)
        for t in reversed(range(steps)):
            delta = rews[t] + self.gamma * next_v[t] * nonterminal[t] - vals[t]
            gae = delta + self.gamma * self.lam * (1 - ends[t]) * gae
            adv[t] = gae
        return {"obs": np.concatenate(obs), "act": np.concatenate(acts), "logp": np.concatenate(logps),
                "adv": adv.ravel(), "ret": (adv + np.array(vals)).ravel(), "episodes": finished}


@ray.remote
class Learner:
    """Holds the policy and improves it with PPO's clipped objective."""

    def __init__(self, seed: int, lr: float, epochs: int, clip: float = 0.2, minibatch: int = 256):
        self.W = np.zeros((5, 2))  # logits = features @ W
        self.V = np.zeros(5)       # value = features @ V
        self.rng = np.random.default_rng(seed)
        self.lr, self.epochs, self.clip, self.minibatch = lr, epochs, clip, minibatch

    def weights(self):
        return self.W.copy(), self.V.copy()

    def update(self, *batches) -> dict:
        """One PPO update on the rollout workers' batches (resolved refs)."""
        obs = np.concatenate([b["obs"] for b in batches])
        act = np.concatenate([b["act"] for b in batches])
        old_logp = np.concatenate([b["logp"] for b in batches])
        ret = np.concatenate([b["ret"] for b in batches])
        adv = np.concatenate([b["adv"] for b in batches])
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        n = len(adv)
        clipped = 0
        for _ in range(self.epochs):
            order = self.rng.permutation(n)
            for k in range(0, n, self.minibatch):
                j = order[k:k + self.minibatch]
                f, a, A = obs[j], act[j], adv[j]
                p = softmax(f @ self.W)
                ratio = np.exp(np.log(p[np.arange(len(a)), a]) - old_logp[j])
                # the clipped surrogate's gradient flows only where the ratio is not clipped
                active = np.where(A >= 0, ratio < 1 + self.clip, ratio > 1 - self.clip)
                clipped += int((~active).sum())
                grad_logits = -(active * A * ratio)[:, None] * (np.eye(2)[a] - p) / len(j)
                self.W -= self.lr * (f.T @ grad_logits)
                self.V -= 0.001 * (f.T @ (f @ self.V - ret[j])) / len(j)
        episodes = [e for b in batches for e in b["episodes"]]
        return {"steps": n, "episodes": len(episodes),
                "mean_return": float(np.mean(episodes)) if episodes else float("nan"),
                "clipped": clipped / (n * self.epochs)}


# ---------------------------------------------------------------------------
# the driver


def parse(argv):
    p = base_parser("ppo.py", "PPO on a toy CartPole written in numpy: rollout actors and a learner actor "
                    "(the Ray paper's Figure 13b).")
    p.add_argument("--workers", type=int, default=2, help="rollout actors (default: %(default)s)")
    p.add_argument("--envs", type=int, default=8, help="environments each rollout actor steps (default: %(default)s)")
    p.add_argument("--steps", type=int, default=128, help="steps per environment per iteration (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=30, help="PPO iterations (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=10, help="passes over each batch (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.5, help="policy step size (default: %(default)s)")
    p.add_argument("--episode-length", type=int, default=200, help="steps of a full episode (default: %(default)s)")
    args = p.parse_args(argv)
    for name in ("workers", "envs", "steps", "iterations", "epochs", "episode_length"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.lr <= 0:
        p.error(f"--lr must be > 0, got {args.lr}")
    return args


def main(argv=None):
    args = parse(argv)
    curve: list[float] = []
    times: list[float] = []  # seconds since the start, after each iteration
    with Session("ppo", args, ray) as s:
        learner = Learner.remote(args.seed, args.lr, args.epochs)
        workers = [RolloutWorker.options(scheduling_strategy="SPREAD").remote(args.envs, args.seed * 1000 + i, args.episode_length)
                   for i in range(args.workers)]
        weights = learner.weights.remote()
        s.calls += 1
        for it in range(1, args.iterations + 1):
            batches = [w.sample.remote(weights, args.steps) for w in workers]
            stats = learner.update.remote(*batches)  # batches go worker -> learner, not via the driver
            weights = learner.weights.remote()
            s.calls += len(batches) + 2
            st = ray.get(stats)
            last = curve[-1] if curve else 0.0
            curve.append(st["mean_return"] if st["episodes"] else last)
            times.append(s.elapsed())
            s.step(it, args.iterations, f"mean return {curve[-1]:.1f} over {st['episodes']} episodes, "
                   f"{st['steps']} steps, {100 * st['clipped']:.0f}% clipped")
        W, _ = ray.get(weights)
        for a in workers + [learner]:
            ray.kill(a)

    k = max(1, min(5, len(curve) // 4))
    first, final = curve[0], float(np.mean(curve[-k:]))
    target = 0.4 * args.episode_length
    reached = next((i for i, r in enumerate(curve) if r >= target), None)
    checks = [Check(f"the mean return grew from {first:.1f} to {final:.1f} (mean of the last {k} iterations)",
                    final > 2 * first),
              Check(f"the policy keeps the pole up for {final:.1f} >= {target:.0f} steps on average", final >= target)]

    def draw(fig):
        ax = fig.add_subplot()
        ax.plot(range(1, len(curve) + 1), curve, marker="o", ms=3)
        ax.axhline(args.episode_length, color="grey", ls=":", lw=1, label="full episode")
        ax.set_xlabel("iteration")
        ax.set_ylabel("mean return of the episodes that ended")
        ax.set_title(f"PPO on CartPole: {args.workers} rollout actors x {args.envs} envs, one learner")
        ax.legend(loc="lower right")

    plot = plot_figure(args, "ppo_returns.png", draw)
    steps = args.iterations * args.workers * args.envs * args.steps
    result = s.result(checks, plot, {"curve": curve, "W": W.tolist(), "steps": steps, "times": times,
                                     "iterations_to_target": None if reached is None else reached + 1,
                                     "time_to_target": None if reached is None else times[reached]})
    clock = "virtual" if args.simulated else "wall"
    summary(result, [
        f"{args.workers} rollout actors stepped {steps} environment steps over {args.iterations} iterations; "
        f"one learner made {args.iterations * args.epochs} passes",
        f"learned: mean return {first:.1f} -> {final:.1f} (best iteration {max(curve):.1f})",
        (f"time to a mean return of {target:.0f} (the paper's Figure 13b measure): {times[reached]:.2f} s {clock}, "
         f"{reached + 1} iterations" if reached is not None else f"never reached a mean return of {target:.0f}"),
    ])
    return result


if __name__ == "__main__":
    sys.exit(0 if main().ok else 1)
