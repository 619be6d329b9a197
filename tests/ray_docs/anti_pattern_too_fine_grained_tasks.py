# Mirrors Ray's doc_code/anti_pattern_too_fine_grained_tasks.py (Ray Core
# anti-pattern "Over-parallelizing with too fine-grained tasks").
# Checks: one tiny task per number and batched tasks both give the serial
# result.  Scaled down: 1,000 numbers and batches of 100 (the doc: 10,000 and
# 1,000).
import itertools
import time

import penumbra as ray

ray.init()

numbers = list(range(1000))


def double(n):
    time.sleep(0.00001)
    return n * 2


serial = [double(n) for n in numbers]


@ray.remote
def remote_double(n):
    return double(n)


assert ray.get([remote_double.remote(n) for n in numbers]) == serial


@ray.remote
def remote_double_batch(batch):
    return [double(n) for n in batch]


BATCH = 100
refs = [remote_double_batch.remote(numbers[i:i + BATCH]) for i in range(0, len(numbers), BATCH)]
assert list(itertools.chain(*ray.get(refs))) == serial
