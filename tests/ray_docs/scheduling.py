# Mirrors Ray's doc_code/scheduling.py (Ray Core "Scheduling strategies").
# Checks: the default strategy and scheduling_strategy="DEFAULT"; a function
# decorated with scheduling_strategy="SPREAD"; NodeAffinitySchedulingStrategy
# (ray.util.scheduling_strategies) hard to the driver's node and soft to the
# node a task reported; get_runtime_context().node_id in the driver and in
# tasks.  Implicit init.  Scaled down: 20 SPREAD tasks (the doc: 100).  The
# doc fires and forgets; this mirror gets the results.
import penumbra as ray
from penumbra.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@ray.remote
def default_function():
    return 1


assert ray.get(default_function.remote()) == 1
assert ray.get(default_function.options(scheduling_strategy="DEFAULT").remote()) == 1


@ray.remote(scheduling_strategy="SPREAD")
def spread_function():
    return 2


assert ray.get([spread_function.remote() for _ in range(20)]) == [2] * 20


@ray.remote
def node_affinity_function():
    return ray.get_runtime_context().node_id


here = ray.get_runtime_context().node_id
hard = node_affinity_function.options(
    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)).remote()
assert ray.get(hard) == here
soft = node_affinity_function.options(
    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=ray.get(node_affinity_function.remote()),
                                                       soft=True)).remote()
assert ray.get(soft) == here
