# Mirrors Ray's doc_code/actor_checkpointing.py (Ray Core "Actor fault
# tolerance: checkpointing").
# Part 1 (manual): a driver-side controller recreates a crashed actor
# (sys.exit in a method -> RayActorError) and restores its state; after two
# calls the state counts 2.  Part 2 (automatic): an actor with
# max_restarts=-1, max_task_retries=-1 restores itself from a checkpoint file
# in __init__; its crashing update calls are retried transparently.
# Changed: the doc crashes at random (randrange < 5); here each update crashes
# on its first attempt only (decided by a marker file), so the run is
# deterministic.  The checkpoint lives in a temporary directory, not /tmp.
import json
import os
import sys
import tempfile

import penumbra as ray

workdir = tempfile.mkdtemp(prefix="ckpt-")


@ray.remote(num_cpus=1)
class Worker:
    def __init__(self):
        self.state = {"num_tasks_executed": 0}

    def execute_task(self, crash=False):
        if crash:
            sys.exit(1)
        self.state["num_tasks_executed"] += 1

    def checkpoint(self):
        return self.state

    def restore(self, state):
        self.state = state


class Controller:
    def __init__(self):
        self.worker = Worker.remote()
        self.worker_state = ray.get(self.worker.checkpoint.remote())

    def execute_task_with_fault_tolerance(self):
        i = 0
        while True:
            i += 1
            try:
                ray.get(self.worker.execute_task.remote(crash=(i % 2 == 1)))
                self.worker_state = ray.get(self.worker.checkpoint.remote())
                return
            except ray.exceptions.RayActorError:
                print("Actor crashes, restarting...")
                self.worker = Worker.remote()
                ray.get(self.worker.restore.remote(self.worker_state))


controller = Controller()
controller.execute_task_with_fault_tolerance()
controller.execute_task_with_fault_tolerance()
assert ray.get(controller.worker.checkpoint.remote())["num_tasks_executed"] == 2


@ray.remote(max_restarts=-1, max_task_retries=-1)
class ImmortalActor:
    def __init__(self, workdir):
        self.workdir = workdir
        self.path = os.path.join(workdir, "checkpoint.json")
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.state = json.load(f)
        else:
            self.state = {}

    def update(self, key, value):
        marker = os.path.join(self.workdir, f"crashed-{key}")
        if not os.path.exists(marker):
            open(marker, "w").close()
            sys.exit(1)
        self.state[key] = value
        with open(self.path, "w") as f:
            json.dump(self.state, f)

    def get(self, key):
        return self.state[key]


actor = ImmortalActor.remote(workdir)
actor.update.remote("1", 1)
actor.update.remote("2", 2)
assert ray.get(actor.get.remote("1")) == 1
assert ray.get(actor.get.remote("2")) == 2
