# Mirrors Ray's doc_code/anti_pattern_pass_large_arg_by_value.py (Ray Core
# anti-pattern "Passing the same large argument by value repeatedly").
# Checks: an 8 MB numpy array passed by value to 10 tasks, then put once and
# passed by ref to 10 tasks, gives the same results.
import numpy as np

import penumbra as ray

ray.init()


@ray.remote
def func(large_arg, i):
    return len(large_arg) + i


large_arg = np.zeros(1024 * 1024)
by_value = ray.get([func.remote(large_arg, i) for i in range(10)])
large_ref = ray.put(large_arg)
by_ref = ray.get([func.remote(large_ref, i) for i in range(10)])
assert by_value == by_ref == [1024 * 1024 + i for i in range(10)]
