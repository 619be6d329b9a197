# Mirrors Ray's doc_code/placement_group_example.py (Ray Core "Placement
# groups"), with logical GPUs.
# Checks: placement_group([{"CPU": 1, "GPU": 1}]) becomes ready (get and wait
# on pg.ready()); placement_group_table; an infeasible group ({"GPU": 2}) is
# not ready within a timeout; an actor scheduled into the group (and into
# bundle 0 by index) runs; remove_placement_group sets state REMOVED; the
# STRICT_PACK strategy, lifetime="detached", a named group and
# ray.util.get_placement_group(name).  Scaled down: timeouts 2 s, not 5 s.
import time

import penumbra as ray
from penumbra.util.placement_group import placement_group, placement_group_table, remove_placement_group
from penumbra.util.scheduling_strategies import PlacementGroupSchedulingStrategy

ray.init(num_cpus=2, num_gpus=2)
pg = placement_group([{"CPU": 1, "GPU": 1}])
ray.get(pg.ready(), timeout=10)
ready, _ = ray.wait([pg.ready()], timeout=10)
assert len(ready) == 1
print(placement_group_table(pg))

pending = placement_group([{"CPU": 1}, {"GPU": 2}])
try:
    ray.get(pending.ready(), timeout=2)
except ray.exceptions.GetTimeoutError:
    print("Cannot create a placement group because {'GPU': 2} bundle cannot be created.")
else:
    raise AssertionError("an infeasible placement group became ready")


@ray.remote(num_cpus=1)
class Actor:
    def ready(self):
        return "ready"


actor = Actor.options(scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=pg)).remote()
assert ray.get(actor.ready.remote(), timeout=10) == "ready"


@ray.remote(num_cpus=0, num_gpus=1)
class GPUActor:
    def ready(self):
        return "ready"


actor2 = GPUActor.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
    placement_group=pg, placement_group_bundle_index=0)).remote()
assert ray.get(actor2.ready.remote(), timeout=10) == "ready"

remove_placement_group(pg)
deadline = time.monotonic() + 10
while placement_group_table(pg)["state"] != "REMOVED" and time.monotonic() < deadline:
    time.sleep(0.1)
assert placement_group_table(pg)["state"] == "REMOVED"

pg = placement_group([{"CPU": 1}, {"GPU": 1}], strategy="STRICT_PACK")
remove_placement_group(pg)

pg = placement_group([{"CPU": 1}], lifetime="detached", name="global_name")
ray.get(pg.ready())
remove_placement_group(pg)

pg = placement_group([{"CPU": 1}], name="global_name")
ray.get(pg.ready())
same = ray.util.get_placement_group("global_name")
assert same.id == pg.id
