"""Hyperparameter search with early stopping: trials as actors, driven by ``wait``.

The paper's motivating workload for ``ray.wait``: many training runs at
once, each reporting as it goes, and a driver that reacts to whichever
reports first, stopping the hopeless runs so their resources go to new
ones.  Each trial is an actor that trains a model one epoch per call; the
driver keeps ``--concurrent`` trials going, handles each epoch's result as
it arrives (``ray.wait(num_returns=1)``), and applies the *median stopping
rule* (as Ray Tune's ``MedianStoppingRule`` and Google Vizier): after a
grace period, a trial whose best loss is worse than the median of the
other trials' losses at the same epoch is stopped (``ray.kill``), and a
trial that diverges is stopped at once.

The model is linear regression trained by minibatch SGD with momentum on
synthetic data (shared once with ``ray.put``); the hyperparameters are the
learning rate and the momentum, drawn at random.  The optimum is known in
closed form, so the search is checked: its best trial must come close to
it, and every trial is also trained to the end locally, to show that the
bad configurations were all stopped and that stopping lost nothing.

    python examples/hyperparameter_search.py                     # 16 trials, 4 at a time
    python examples/hyperparameter_search.py --trials 64 --concurrent 8 --simulated --nodes 4
    python examples/hyperparameter_search.py --ray

The trials' loss curves, stopped ones marked, are written to ``hpo_trials.png``.
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

DIVERGED = 1e6  # a validation loss past this is a diverged run


def make_data(seed: int, samples: int, dim: int, noise: float = 0.5) -> dict:
    """Synthetic regression data: a train and a validation split of ``y = X w + noise``."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(dim)
    X = rng.standard_normal((samples, dim))
    y = X @ w + noise * rng.standard_normal(samples)
    cut = samples * 4 // 5
    return {"X": X[:cut], "y": y[:cut], "X_val": X[cut:], "y_val": y[cut:]}


class SGDRegression:
    """Linear regression by minibatch SGD with momentum; one ``epoch()`` at a time."""

    def __init__(self, data: dict, lr: float, momentum: float, seed: int, batch: int = 32):
        self.data, self.lr, self.momentum, self.batch = data, lr, momentum, batch
        self.rng = np.random.default_rng(seed)
        self.w = np.zeros(data["X"].shape[1])
        self.velocity = np.zeros_like(self.w)

    def epoch(self) -> float:
        """One pass over the training split; returns the validation loss (MSE)."""
        X, y = self.data["X"], self.data["y"]
        with np.errstate(all="ignore"):  # a diverging run overflows: it is reported, not raised
            order = self.rng.permutation(len(y))
            for k in range(0, len(y), self.batch):
                j = order[k:k + self.batch]
                grad = X[j].T @ (X[j] @ self.w - y[j]) / len(y[j])
                self.velocity = self.momentum * self.velocity - self.lr * grad
                self.w = self.w + self.velocity
            loss = float(np.mean((self.data["X_val"] @ self.w - self.data["y_val"]) ** 2))
        return loss if math.isfinite(loss) else math.inf


@ray.remote
class Trial:
    """One configuration's training run, an epoch per call."""

    def __init__(self, data: dict, lr: float, momentum: float, seed: int):
        self.model = SGDRegression(data, lr, momentum, seed)

    def train_epoch(self) -> float:
        return self.model.epoch()


# ---------------------------------------------------------------------------
# the driver


def median_stop(history: dict[int, list[float]], trial: int, grace: int, min_others: int = 2) -> bool | None:
    """The median stopping rule: stop ``trial`` at its latest epoch ``t`` (at
    least ``grace``) when its best loss so far is worse than the median of the
    other trials' best losses up to epoch ``t`` (of those past their own grace
    period).  None: fewer than ``min_others`` trials to compare with yet."""
    mine = history[trial]
    t = len(mine)
    if t < grace:
        return False
    others = [min(h[:t]) for k, h in history.items() if k != trial and len(h) >= grace]
    if len(others) < min_others:
        return None
    return min(mine) > float(np.median(others))


def parse(argv):
    p = base_parser("hyperparameter_search.py", "Random search over SGD's learning rate and momentum, with "
                    "trials as actors, results handled as they arrive (ray.wait) and the median stopping rule.")
    p.add_argument("--trials", type=int, default=16, help="configurations to try (default: %(default)s)")
    p.add_argument("--concurrent", type=int, default=4, help="trials running at once (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=20, help="epochs of a trial that is not stopped (default: %(default)s)")
    p.add_argument("--grace", type=int, default=3,
                   help="epochs every trial runs before it may be stopped (default: %(default)s)")
    p.add_argument("--samples", type=int, default=2000, help="data set size (default: %(default)s)")
    p.add_argument("--dim", type=int, default=20, help="features (default: %(default)s)")
    args = p.parse_args(argv)
    for name in ("trials", "concurrent", "epochs", "samples", "dim"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not 1 <= args.grace <= args.epochs:
        p.error(f"--grace must be between 1 and --epochs ({args.epochs}), got {args.grace}")
    if args.samples < 10:
        p.error(f"--samples must be >= 10 (a fifth is the validation split), got {args.samples}")
    return args


def main(argv=None):
    args = parse(argv)
    rng = np.random.default_rng(args.seed)
    configs = [{"lr": float(10 ** rng.uniform(-4, -0.3)), "momentum": float(rng.uniform(0, 0.95))}
               for _ in range(args.trials)]
    data = make_data(args.seed, args.samples, args.dim)
    # the best any configuration can reach: least squares in closed form
    w_opt = np.linalg.lstsq(data["X"], data["y"], rcond=None)[0]
    optimum = float(np.mean((data["X_val"] @ w_opt - data["y_val"]) ** 2))

    history: dict[int, list[float]] = {}
    stopped: dict[int, str] = {}  # trial -> why
    with Session("hyperparameter-search", args, ray) as s:
        data_ref = ray.put(data)  # shared once: every trial reads the same object
        pending = {}  # ref of a trial's current epoch -> trial index
        actors = {}
        queue = list(range(args.trials))

        def start(i):
            actors[i] = Trial.remote(data_ref, configs[i]["lr"], configs[i]["momentum"], args.seed + i)
            history[i] = []
            pending[actors[i].train_epoch.remote()] = i
            s.calls += 2

        def decide(i):
            """What to do with trial ``i`` after its latest epoch: ``"go"`` on,
            ``"hold"`` (past its grace period with too few trials to compare
            with, while some are still on their way: in an asynchronous search
            a trial that happens to run ahead must not run to the end unjudged),
            or ``("over", why)`` (why is None for a trial that finished)."""
            h = history[i]
            if h[-1] > DIVERGED:
                return ("over", "diverged")
            if len(h) >= args.epochs:
                return ("over", None)
            verdict = median_stop(history, i, args.grace, min_others=min(2, args.trials - 1))
            if verdict:
                return ("over", "worse than the median")
            if verdict is None and any(len(history[k]) < args.grace for k in actors if k != i):
                return "hold"
            return "go"

        while queue and len(actors) < args.concurrent:
            start(queue.pop(0))
        held: list[int] = []
        done_count = 0
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ref)
            history[i].append(ray.get(ref))
            for k in [i] + held:  # a new result may settle the held trials too
                what = decide(k)
                if k in held and what != "hold":
                    held.remove(k)
                if what == "go":
                    pending[actors[k].train_epoch.remote()] = k
                    s.calls += 1
                elif what == "hold":
                    if k not in held:
                        held.append(k)
                else:  # the trial is over: finished, or stopped early
                    why = what[1]
                    ray.kill(actors.pop(k))
                    if why:
                        stopped[k] = why
                    done_count += 1
                    verdict = f"stopped after {len(history[k])} epochs ({why})" if why else "finished"
                    s.step(done_count, args.trials, f"trial {k} lr={configs[k]['lr']:.4g} "
                           f"momentum={configs[k]['momentum']:.2f}: {verdict}, loss {min(history[k]):.4g}")
                    if queue:
                        start(queue.pop(0))

    finished = [i for i in history if i not in stopped]
    best = min(history, key=lambda i: min(history[i]))
    best_loss = min(history[best])
    # every configuration trained to the end, here: what stopping early would have missed
    full = {}
    for i, c in enumerate(configs):
        model = SGDRegression(data, c["lr"], c["momentum"], args.seed + i)
        full[i] = min(model.epoch() for _ in range(args.epochs))
    best_possible = min(full.values())
    epochs_run = sum(len(h) for h in history.values())
    bad = [i for i in full if full[i] > 1.5 * best_possible]
    checks = [
        Check(f"the best trial's validation loss {best_loss:.4f} is within 10% of the optimum {optimum:.4f}",
              best_loss <= 1.10 * optimum),
        Check(f"stopping early kept a configuration as good as the best of all {args.trials} run to the end "
              f"(within 2%: {best_loss:.4f} vs {best_possible:.4f})", best_loss <= 1.02 * best_possible),
        Check(f"the {len(bad)} bad configurations (run to the end here: loss > 1.5 x the best) were all "
              f"stopped early", all(i in stopped for i in bad)),
        Check(f"stopping saved epochs ({epochs_run} run of {args.trials * args.epochs})",
              len(stopped) > 0 and epochs_run < args.trials * args.epochs),
        Check("finished trials' losses equal the same training done locally",
              all(np.isclose(min(history[i]), full[i], rtol=1e-9) for i in finished)),
    ]

    def draw(fig):
        ax = fig.add_subplot()
        for i, h in history.items():
            shown = [min(x, 1e3) for x in h]
            epochs = range(1, len(h) + 1)
            if i in stopped:
                ax.plot(epochs, shown, color="tab:red", alpha=0.5, lw=1, ls="--")
                ax.plot(len(h), shown[-1], "x", color="tab:red", ms=7)
            else:
                ax.plot(epochs, shown, color="tab:blue", alpha=0.7, lw=1.5 if i == best else 1)
        ax.plot([], [], color="tab:blue", label="ran to the end")
        ax.plot([], [], color="tab:red", ls="--", marker="x", label="stopped early")
        ax.axhline(optimum, color="grey", ls=":", lw=1, label="optimum (least squares)")
        ax.annotate(f"best: lr={configs[best]['lr']:.3g}, momentum={configs[best]['momentum']:.2f}",
                    (len(history[best]), best_loss), textcoords="offset points", xytext=(-10, 12),
                    ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation loss (MSE)")
        ax.set_title(f"Random search, {args.trials} trials, median stopping after {args.grace} epochs")
        ax.legend(loc="upper right", fontsize=8)

    plot = plot_figure(args, "hpo_trials.png", draw)
    result = s.result(checks, plot, {
        "configs": configs, "history": history, "stopped": stopped, "best": best, "best_loss": best_loss,
        "optimum": optimum, "full": full, "bad": bad, "epochs_run": epochs_run})
    summary(result, [
        f"{args.trials} trials ({args.concurrent} at a time): {len(finished)} ran {args.epochs} epochs, "
        f"{len(stopped)} were stopped early ({sum(1 for w in stopped.values() if w == 'diverged')} diverged)",
        f"epochs run: {epochs_run} of {args.trials * args.epochs} without stopping",
        f"best: trial {best}, lr={configs[best]['lr']:.4g}, momentum={configs[best]['momentum']:.2f}, "
        f"validation loss {best_loss:.4f} (optimum {optimum:.4f})",
    ])
    return result


if __name__ == "__main__":
    sys.exit(0 if main().ok else 1)
