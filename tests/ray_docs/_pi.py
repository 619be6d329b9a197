"""Shared body of the getting_started.py and monte_carlo_pi.py mirrors.

Both Ray doc files are the same Monte Carlo pi tutorial (progress actor +
sampling tasks); kept in one place here.  Scaled down for a 2-CPU machine:
4 tasks x 200,000 samples (the doc: 10 x 10,000,000), progress reported
every 50,000 samples (the doc: 1,000,000), polled every 0.2 s (the doc: 1 s);
each task seeds its own RNG so the estimate is reproducible, and the check is
|pi - 3.14159| < 0.01 instead of str(pi).startswith("3.14").
"""
import math
import random
import time

import penumbra as ray

NUM_SAMPLING_TASKS = 4
NUM_SAMPLES_PER_TASK = 200_000
REPORT_EVERY = 50_000
TOTAL_NUM_SAMPLES = NUM_SAMPLING_TASKS * NUM_SAMPLES_PER_TASK


@ray.remote
class ProgressActor:
    def __init__(self, total_num_samples):
        self.total = total_num_samples
        self.done_per_task = {}

    def report_progress(self, task_id, done):
        self.done_per_task[task_id] = done

    def get_progress(self):
        return sum(self.done_per_task.values()) / self.total


@ray.remote
def sampling_task(num_samples, task_id, progress_actor):
    rng = random.Random(task_id)
    inside = 0
    for i in range(num_samples):
        if math.hypot(rng.uniform(-1, 1), rng.uniform(-1, 1)) <= 1:
            inside += 1
        if (i + 1) % REPORT_EVERY == 0:
            progress_actor.report_progress.remote(task_id, i + 1)
    progress_actor.report_progress.remote(task_id, num_samples)
    return inside


def run(shutdown):
    progress_actor = ProgressActor.remote(TOTAL_NUM_SAMPLES)
    results = [sampling_task.remote(NUM_SAMPLES_PER_TASK, i, progress_actor) for i in range(NUM_SAMPLING_TASKS)]
    while True:
        progress = ray.get(progress_actor.get_progress.remote())
        print(f"Progress: {int(progress * 100)}%")
        if progress == 1:
            break
        time.sleep(0.2)
    pi = sum(ray.get(results)) * 4 / TOTAL_NUM_SAMPLES
    print(f"Estimated value of pi is: {pi}")
    if shutdown:
        ray.shutdown()
    assert abs(pi - 3.14159) < 0.01, pi
