"""Shared helpers of the pattern_nested_tasks.py / pattern_tree_of_tasks.py
mirrors: the sequential quick sort both Ray doc files compare against.

Scaled down for a 2-CPU machine: the doc's threshold is 200,000 elements and
its arrays have up to 8,000,000; here the threshold is 2,000 and arrays have
up to 16,000 (so at most ~16 nested tasks, blocked in get, at once).
"""
import random

THRESHOLD = 2000
SIZES = (2000, 8000, 16000)


def partition(collection):
    pivot = collection.pop()
    lesser = [x for x in collection if x <= pivot]
    greater = [x for x in collection if x > pivot]
    return lesser, pivot, greater


def unsorted(size, seed):
    rng = random.Random(seed)
    return [rng.randrange(1_000_000) for _ in range(size)]
