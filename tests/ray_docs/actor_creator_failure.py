# Mirrors Ray's doc_code/actor_creator_failure.py (Ray Core "Actor fault
# tolerance: actor creator failure").
# Checks: an actor created by another actor (its owner) dies when the owner's
# process is SIGKILLed, even with max_restarts=-1 (get raises
# RayActorError); a detached actor created by the same owner survives and
# still answers "hello".
import os
import signal

import penumbra as ray

ray.init()


@ray.remote(max_restarts=-1)
class Child:
    def ping(self):
        return "hello"


@ray.remote
class Parent:
    def generate_actors(self):
        self.child = Child.remote()
        self.detached = Child.options(name="actor", lifetime="detached").remote()
        return self.child, self.detached, os.getpid()


parent = Parent.remote()
child, detached, pid = ray.get(parent.generate_actors.remote())
os.kill(pid, signal.SIGKILL)

try:
    print("actor.ping:", ray.get(child.ping.remote()))
except ray.exceptions.RayActorError as e:
    print("Failed to submit actor call", e)
else:
    raise AssertionError("the owned actor outlived its owner")

assert ray.get(detached.ping.remote()) == "hello"
