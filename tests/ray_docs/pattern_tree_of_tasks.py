# Mirrors Ray's doc_code/pattern_tree_of_tasks.py (Ray Core pattern "Using
# nested tasks to achieve nested parallelism": distributed quick sort).
# Checks: a task that recursively submits itself and gets its children's
# results (a tree of tasks, each blocked in get while its children run)
# sorts correctly.  Scaled down: see _quicksort.py.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import penumbra as ray  # noqa: E402
from _quicksort import SIZES, THRESHOLD, partition, unsorted  # noqa: E402

ray.init()


@ray.remote
def quick_sort_distributed(collection):
    if len(collection) <= THRESHOLD:
        return sorted(collection)
    lesser, pivot, greater = partition(collection)
    lesser = quick_sort_distributed.remote(lesser)
    greater = quick_sort_distributed.remote(greater)
    return ray.get(lesser) + [pivot] + ray.get(greater)


for size in SIZES:
    data = unsorted(size, size)
    assert ray.get(quick_sort_distributed.remote(list(data))) == sorted(data)
