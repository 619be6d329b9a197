# Mirrors Ray's doc_code/resources.py (Ray Core "Resources": specifying node
# resources and task/actor requirements), with logical GPUs.
# Checks: init with num_cpus=3, num_gpus=4 and custom resources (reported by
# cluster_resources); a function decorated with num_cpus=4, num_gpus=2 and a
# custom resource; .options overriding them with a request the node cannot
# meet (num_cpus=5): submitting it does not raise (it stays pending); an
# actor with fractional num_gpus and its .options override run.
import penumbra as ray

ray.init(num_cpus=3, num_gpus=4, resources={"special_hardware": 1, "custom_label": 1})
total = ray.cluster_resources()
assert total["CPU"] == 3 and total["GPU"] == 4, total
assert total["special_hardware"] == 1 and total["custom_label"] == 1, total


@ray.remote(num_cpus=4, num_gpus=2, resources={"special_hardware": 1})
def func():
    return 1


pending = func.options(num_cpus=5, num_gpus=3, resources={"custom_label": 0.001}).remote()
ready, _ = ray.wait([pending], timeout=0.5)
assert ready == []


@ray.remote(num_cpus=0, num_gpus=0.5)
class Actor:
    def ping(self):
        return "pong"


actor = Actor.options(num_cpus=0, num_gpus=0.6).remote()
assert ray.get(actor.ping.remote()) == "pong"
