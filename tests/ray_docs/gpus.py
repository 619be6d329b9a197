# Mirrors Ray's doc_code/gpus.py (Ray Core "Accelerator support: GPUs"),
# with logical GPUs (no real GPU needed).
# Checks: with init(num_gpus=2) a num_gpus=1 actor gets GPU [0] and a task
# then gets [1], and CUDA_VISIBLE_DEVICES names them; four num_gpus=0.25
# tasks share 1 GPU; three num_gpus=0.5 actors on 3 GPUs are packed as
# [0], [0], [1]; max_calls=0 is accepted; accelerator_type=NVIDIA_TESLA_V100
# (ray.util.accelerators) schedules on a node with that accelerator.
# Left out: the TensorFlow bodies (never called in the doc either).
import os

import penumbra as ray

ray.init(num_gpus=2)


@ray.remote(num_gpus=1)
class GPUActor:
    def ping(self):
        return ray.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"]


@ray.remote(num_gpus=1)
def use_gpu():
    return ray.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"]


gpu_actor = GPUActor.remote()
ids, visible = ray.get(gpu_actor.ping.remote())
assert [int(i) for i in ids] == [0] and visible == "0", (ids, visible)
ids, visible = ray.get(use_gpu.remote())
assert [int(i) for i in ids] == [1] and visible == "1", (ids, visible)
ray.shutdown()

ray.init(num_cpus=4, num_gpus=1)


@ray.remote(num_gpus=0.25)
def quarter():
    return True


assert ray.get([quarter.remote() for _ in range(4)]) == [True] * 4
ray.shutdown()

ray.init(num_gpus=3)


@ray.remote(num_gpus=0.5)
class FractionalGPUActor:
    def ping(self):
        return [int(i) for i in ray.get_gpu_ids()]


actors = [FractionalGPUActor.remote() for _ in range(3)]
assert [ray.get(a.ping.remote()) for a in actors] == [[0], [0], [1]]


@ray.remote(num_gpus=1, max_calls=0)
def leak_gpus():
    return None


ray.shutdown()

from penumbra.util.accelerators import NVIDIA_TESLA_V100  # noqa: E402

ray.init(num_gpus=4, resources={f"accelerator_type:{NVIDIA_TESLA_V100}": 1})


@ray.remote(num_gpus=1, accelerator_type=NVIDIA_TESLA_V100)
def train(data):
    return "This function was run on a node with a Tesla V100 GPU"


assert ray.get(train.remote(1)).endswith("Tesla V100 GPU")
