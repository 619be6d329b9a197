# Mirrors Ray's doc_code/original_resource_unavailable_example.py (Ray Core
# "Placement groups": reserved resources are unavailable to other tasks).
# Checks: a placement group [{"CPU": 2}] on a 2-CPU node becomes ready; a
# num_cpus=2 task outside it stays pending; the same task scheduled into the
# group with PlacementGroupSchedulingStrategy runs.  The doc fires and
# forgets; this mirror checks the first stays pending (wait, 1 s) and gets the
# second.
import penumbra as ray
from penumbra.util.placement_group import placement_group
from penumbra.util.scheduling_strategies import PlacementGroupSchedulingStrategy

ray.init(num_cpus=2)
pg = placement_group([{"CPU": 2}])
ray.get(pg.ready())


@ray.remote(num_cpus=2)
def f():
    return True


outside = f.remote()
inside = f.options(scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=pg)).remote()
assert ray.get(inside, timeout=20) is True
ready, _ = ray.wait([outside], timeout=1)
assert ready == [], "a task ran on CPUs reserved by a placement group"
