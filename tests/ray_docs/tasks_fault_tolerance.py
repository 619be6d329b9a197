# Mirrors Ray's doc_code/tasks_fault_tolerance.py (Ray Core "Task fault
# tolerance": retries).
# Checks: a task with max_retries=1 that may exit its worker process either
# succeeds or raises WorkerCrashedError; init(ignore_reinit_error=True) twice;
# with retry_exceptions=True an application exception is retried once then
# raised as itself; retry_exceptions=[RandomError] does not retry a
# ValueError (raised as ValueError) and does retry RandomError.
# As in the doc, the failures are random (50%); every outcome the doc accepts
# is accepted here.
import os
import time

import numpy as np

import penumbra as ray

ray.init(ignore_reinit_error=True)


@ray.remote(max_retries=1)
def may_crash(p):
    time.sleep(0.2)
    if np.random.random() < p:
        os._exit(0)
    return 0


for _ in range(3):
    try:
        assert ray.get(may_crash.remote(0.5)) == 0
        print("SUCCESS")
    except ray.exceptions.WorkerCrashedError:
        print("FAILURE")

ray.init(ignore_reinit_error=True)


class RandomError(Exception):
    pass


@ray.remote(max_retries=1, retry_exceptions=True)
def may_raise(p):
    if p < 0 or p > 1:
        raise ValueError(f"failure_probability must be between 0 and 1, but got: {p}")
    time.sleep(0.2)
    if np.random.random() < p:
        raise RandomError("Failed!")
    return 0


for _ in range(3):
    try:
        assert ray.get(may_raise.remote(0.5)) == 0
        print("SUCCESS")
    except RandomError:
        print("FAILURE")

retry_on_random = may_raise.options(retry_exceptions=[RandomError])
try:
    ray.get(retry_on_random.remote(-1))
except ValueError:
    print("FAILED AS EXPECTED")
else:
    raise RuntimeError("An exception should be raised so this shouldn't be reached.")

for _ in range(3):
    try:
        assert ray.get(retry_on_random.remote(0.5)) == 0
        print("SUCCESS")
    except RandomError:
        print("FAILURE AFTER RETRIES")
