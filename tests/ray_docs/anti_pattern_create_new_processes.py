# Mirrors Ray's doc_code/anti_pattern_create_new_processes.py (Ray Core
# anti-pattern "Forking new processes in application code").
# Checks: a driver can use ProcessPoolExecutor with the "spawn" start method
# after getting task results, and shut down cleanly.
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed

import penumbra as ray


@ray.remote
def generate_response(request):
    return "Response to " + request


def process_response(response):
    return "Processed " + response


def main():
    ray.init()
    responses = ray.get([generate_response.remote(f"request {i}") for i in range(4)])
    multiprocessing.set_start_method("spawn", force=True)
    done = {}
    with ProcessPoolExecutor(max_workers=2) as executor:
        futures = {executor.submit(process_response, r): i for i, r in enumerate(responses)}
        for fut in as_completed(futures):
            done[futures[fut]] = fut.result()
    assert done == {i: f"Processed Response to request {i}" for i in range(4)}
    ray.shutdown()


if __name__ == "__main__":
    main()
