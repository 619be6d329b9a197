# Mirrors Ray's doc_code/pattern_map_reduce.py (Ray Core pattern "Map and
# reduce").
# Checks: lambdas passed to tasks; 100 map tasks; a reduce over *refs
# (resolved to values); a tree reduce of 5 partial reduces; all give 9900.
# Implicit init.
import penumbra as ray

items = list(range(100))
assert sum(i * 2 for i in items) == 9900


@ray.remote
def map_(func, obj):
    return func(obj)


@ray.remote
def reduce_(func, *objs):
    return func(objs)


outs = [map_.remote(lambda i: i * 2, i) for i in items]
assert ray.get(reduce_.remote(sum, *outs)) == 9900
partial = [reduce_.remote(sum, *outs[i * 20:(i + 1) * 20]) for i in range(5)]
assert ray.get(reduce_.remote(sum, *partial)) == 9900
