# Mirrors Ray's doc_code/placement_group_capture_child_tasks_example.py (Ray
# Core "Placement groups: capturing child tasks").
# Checks: with placement_group_capture_child_tasks=True a parent task in a
# {"CPU": 2} group on a 2-CPU node runs its child inside the group; a child
# that opts out (PlacementGroupSchedulingStrategy(placement_group=None))
# cannot be scheduled, so get(timeout=5) fails.  Scaled down: the child
# sleeps 1 s instead of 5 s, and the failing get waits 3 s instead of 5 s.
import penumbra as ray
from penumbra.util.placement_group import placement_group
from penumbra.util.scheduling_strategies import PlacementGroupSchedulingStrategy

ray.init(num_cpus=2)
pg = placement_group([{"CPU": 2}])
ray.get(pg.ready())


@ray.remote(num_cpus=1)
def child():
    import time

    time.sleep(1)
    return "child"


@ray.remote(num_cpus=1)
def parent():
    return ray.get(child.remote())


captured = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_capture_child_tasks=True)
assert ray.get(parent.options(scheduling_strategy=captured).remote(), timeout=30) == "child"


@ray.remote
def parent_opting_out():
    return ray.get(child.options(
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None)).remote())


try:
    ray.get(parent_opting_out.options(scheduling_strategy=captured).remote(), timeout=3)
except ray.exceptions.GetTimeoutError:
    print("Couldn't create a child task!")
else:
    raise AssertionError("the child ran outside the placement group that holds every CPU")
