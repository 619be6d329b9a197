# Mirrors Ray's doc_code/anti_pattern_fork_new_processes.py (Ray Core
# anti-pattern "Forking new processes"): numpy results from tasks handed to a
# spawn-mode ProcessPoolExecutor.
# Checks: arrays got from tasks (zero-copy, read-only) pickle into spawned
# processes and come back intact.
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np

import penumbra as ray


@ray.remote
def generate_response(request):
    print(request)
    return np.ones(100000)


def process_response(response, idx):
    return float(response.sum())


def main():
    ray.init()
    responses = ray.get([generate_response.remote(f"request {i}") for i in range(4)])
    multiprocessing.set_start_method("spawn", force=True)
    with ProcessPoolExecutor(max_workers=2) as executor:
        futures = {executor.submit(process_response, r, i): i for i, r in enumerate(responses)}
        sums = {futures[f]: f.result() for f in as_completed(futures)}
    assert sums == {i: 100000.0 for i in range(4)}
    ray.shutdown()


if __name__ == "__main__":
    main()
