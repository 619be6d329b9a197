# Mirrors Ray's doc_code/pattern_nested_tasks.py (Ray Core pattern "Nested
# tasks": distributed quick sort returning (lesser, pivot, greater)).
# Checks: recursive tasks that get their children's results; the nested
# tuples flatten to the sorted list.  Scaled down: see _quicksort.py.
# Left out: the doc wraps the call in ray.dynamic_resources(cpu=0), which is
# not a Ray API (ray has no dynamic_resources), so the doc program itself
# fails on Ray; the mirror calls the task directly, then shuts down.
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
    lesser_ref = quick_sort_distributed.remote(lesser)
    greater_ref = quick_sort_distributed.remote(greater)
    return ray.get(lesser_ref), pivot, ray.get(greater_ref)


def flatten(node):
    if isinstance(node, list):
        return node
    lesser, pivot, greater = node
    return flatten(lesser) + [pivot] + flatten(greater)


for size in SIZES:
    data = unsorted(size, size)
    assert flatten(ray.get(quick_sort_distributed.remote(list(data)))) == sorted(data)
ray.shutdown()
