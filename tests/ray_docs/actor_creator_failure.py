# Mirrors Ray's doc_code/actor_creator_failure.py (Ray Core "Actor fault
# tolerance: actor creator failure").
# Checks: an actor created by another actor (its owner) dies when the owner's
# process is SIGKILLed, even with max_restarts=-1 (get raises
# RayActorError); a detached actor created by the same owner survives and
# still answers "hello".
# Changed: the doc pings the owned actor once, right after the kill, and
# prints the RayActorError it gets; the owner's death reaches the actor
# asynchronously (in Ray too), so this mirror pings until the error comes,
# for up to 30 s.
import os
import signal
import time

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

deadline = time.monotonic() + 30
while True:
    try:
        print("actor.ping:", ray.get(child.ping.remote()))
    except ray.exceptions.RayActorError as e:
        print("Failed to submit actor call", e)
        break
    if time.monotonic() > deadline:
        raise AssertionError("the owned actor outlived its owner")
    time.sleep(0.05)

assert ray.get(detached.ping.remote()) == "hello"
