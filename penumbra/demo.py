"""The quick-start job (``penumbra demo``): a real workload on the embedded
cluster, then a short experiment on the simulator.

The real part exercises what the paper's API offers: tasks returning
futures, nested tasks, ``wait``, a stateful actor (a parameter server),
zero-copy numpy through the shared-memory object store, and a task that
fails and is retried.
"""

from __future__ import annotations

import os
import time

import numpy as np

__all__ = ["main", "run_real"]


def run_real() -> dict:
    import penumbra as ray

    info = ray.init()
    print(f"penumbra: embedded cluster up (node {info.node_id}, resources {ray.cluster_resources()})")

    @ray.remote
    def sample_pi(n: int, seed: int) -> int:
        rng = np.random.default_rng(seed)
        xy = rng.random((n, 2))
        return int(((xy ** 2).sum(axis=1) <= 1.0).sum())

    @ray.remote
    def estimate(chunks: int, n: int) -> float:
        # a nested task graph: this task fans out and gathers
        hits = ray.get([sample_pi.remote(n, s) for s in range(chunks)])
        return 4.0 * sum(hits) / (chunks * n)

    @ray.remote
    class ParameterServer:
        def __init__(self, dim: int):
            self.w = np.zeros(dim)
            self.updates = 0

        def apply(self, grad):
            self.w += grad
            self.updates += 1
            return self.updates

        def weights(self):
            return self.w

    @ray.remote
    def gradient(w, seed: int):
        rng = np.random.default_rng(seed)
        return -0.1 * (w - 1.0) + 0.01 * rng.standard_normal(w.shape)

    t0 = time.perf_counter()
    pi = ray.get(estimate.remote(8, 200_000))
    print(f"  pi ~ {pi:.4f} from 8 nested tasks of 200k samples")

    ps = ParameterServer.remote(1_000)
    for step in range(20):
        w = ps.weights.remote()
        grads = [gradient.remote(w, step * 10 + i) for i in range(4)]
        ready, _ = ray.wait(grads, num_returns=4, timeout=60)
        ray.get([ps.apply.remote(g) for g in ready])
    w = ray.get(ps.weights.remote())
    print(f"  parameter server: 80 updates, mean weight {w.mean():.3f} (converging to 1.0)")

    big = np.random.default_rng(0).random(25_000_000 // 8)
    t = time.perf_counter()
    ref = ray.put(big)
    got = ray.get(ref)
    dt = time.perf_counter() - t
    print(f"  put+get of a {big.nbytes / 2**20:.0f} MiB array in {dt * 1000:.1f} ms, zero-copy "
          f"(read-only: {not got.flags.writeable})")

    marker = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"penumbra-demo-{os.getpid()}")

    @ray.remote(max_retries=2)
    def flaky(path: str) -> str:
        if not os.path.exists(path):
            open(path, "w").close()
            os._exit(1)  # the worker dies; the task is retried elsewhere
        os.unlink(path)
        return "recovered"

    print(f"  a task whose worker crashed: {ray.get(flaky.remote(marker))}")
    elapsed = time.perf_counter() - t0
    ray.shutdown()
    return {"pi": pi, "mean_weight": float(w.mean()), "seconds": elapsed}


def main(args=None) -> int:
    print("== penumbra demo: a real workload on the embedded local cluster ==")
    run_real()
    try:
        from .sim.experiments import run_quick_demo
    except ImportError:
        return 0
    print("\n== and a short simulated experiment (virtual time) ==")
    run_quick_demo()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
