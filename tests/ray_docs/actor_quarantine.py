# Mirrors Ray's doc_code/actor_quarantine.py (Ray Core "Actor fault
# tolerance: unavailable actors / quarantine").
# Checks: an async control-plane actor awaits replica refs (await ref inside
# an async actor) and tells a dead replica (RayActorError) apart from an
# unavailable one (ActorUnavailableError): a dead replica is replaced and the
# request is retried on another one.
# Changed: the doc leaves the router and spawner as "..." stubs and builds the
# control plane without .remote(); this mirror fills them in (round robin,
# 3 replicas) and kills one replica with ray.kill to drive the dead path.
import asyncio

import penumbra as ray

ray.init()


@ray.remote
class Replica:
    def __init__(self):
        self.counter = 0

    def ping(self):
        return "pong"

    def workload(self):
        self.counter += 1
        return self.counter


@ray.remote
class ControlPlane:
    def __init__(self, num_replicas=3):
        self.actors = [Replica.remote() for _ in range(num_replicas)]
        self.next = 0
        self.replaced = 0

    async def kill_one(self):
        ray.kill(self.actors[0])
        await asyncio.sleep(0.5)

    async def workload(self):
        i = self.next % len(self.actors)
        self.next += 1
        a = self.actors[i]
        try:
            return await a.workload.remote()
        except ray.exceptions.ActorUnavailableError:
            self.actors.pop(i)
            return await self.workload()
        except ray.exceptions.RayActorError:
            self.actors[i] = Replica.remote()
            self.replaced += 1
            return await self.workload()

    def replacements(self):
        return self.replaced


control_plane = ControlPlane.remote()
assert ray.get(control_plane.workload.remote()) == 1
ray.get(control_plane.kill_one.remote())
results = [ray.get(control_plane.workload.remote()) for _ in range(4)]
assert all(isinstance(r, int) and r >= 1 for r in results), results
assert ray.get(control_plane.replacements.remote()) == 1
