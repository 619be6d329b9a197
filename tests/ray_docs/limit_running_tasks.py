# Mirrors Ray's doc_code/limit_running_tasks.py (Ray Core pattern "Limit
# running tasks with resources": the memory resource).
# Checks: plain tasks run; tasks with .options(memory=2 GiB) are scheduled
# against the node's memory resource (the doc assumes a 16 GB node) and all
# complete.  Scaled down: 40 files (the doc: 1000).  Needs a node with at
# least 2 GiB of memory resource, like the doc.
import penumbra as ray

ray.init()


@ray.remote
def process(file):
    return file


NUM_FILES = 40
assert ray.get([process.remote(f"{i}.csv") for i in range(NUM_FILES)]) == [f"{i}.csv" for i in range(NUM_FILES)]
refs = [process.options(memory=2 * 1024 * 1024 * 1024).remote(f"{i}.csv") for i in range(NUM_FILES)]
assert ray.get(refs) == [f"{i}.csv" for i in range(NUM_FILES)]
