"""penumbra: a simulator-verified implementation of the Ray paper.

Ray Core's API, so that ``import penumbra as ray`` runs a Ray program::

    import penumbra as ray

    ray.init()

    @ray.remote
    def square(x):
        return x * x

    print(ray.get([square.remote(i) for i in range(4)]))   # [0, 1, 4, 9]

The same program runs on the real runtime (processes, sockets and shared
memory on this machine or a cluster) or, with ``init(simulated=...)``, on the
discrete-event simulator.

This module is the top of the layers: it re-exports the API and registers
the drivers ``init`` starts (``api.drivers``), so that the API never
imports a driver.
"""

from . import _codecache

_codecache.install()  # before any module that defines the protocol's dataclasses

from . import actor, cloudpickle, dag, exceptions, experimental, util  # noqa: E402
from .api import drivers as _drivers
from .api.actor import ActorClass, ActorHandle, method
from .api.functions import (
    ClusterInfo,
    RuntimeContext,
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    get_gpu_ids,
    get_runtime_context,
    init,
    is_initialized,
    kill,
    nodes,
    put,
    remote,
    shutdown,
    wait,
)
from .api.generators import DynamicObjectRefGenerator, ObjectRefGenerator
from .api.refs import ObjectRef
from .api.remote_function import RemoteFunction
from .api.timeline import timeline

__version__ = "0.1.0"


# -- the drivers ``init`` starts (see ``api.drivers``) --------------------------
# The top of the layers picks the driver: each factory imports its driver
# inside it, when ``init`` first needs it, so ``import penumbra`` stays light.
def _start_simulated(simulated, **kwargs):
    from .sim.runtime import start_simulated

    return start_simulated(simulated, **kwargs)


def _start_local(*, num_cpus, num_gpus, resources, object_store_memory, system_config, namespace, log_to_driver):
    # start the daemon before importing the client side (trio and
    # friends): its start-up and our imports then overlap
    from .transports.launch import start_embedded

    pending = start_embedded(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                             object_store_memory=object_store_memory, system_config=system_config)
    try:
        from .transports.client import start_local
    except BaseException:
        pending.kill()
        raise
    return start_local(pending, namespace=namespace, log_to_driver=log_to_driver)


def _find_cluster():
    from .transports.cluster_file import find_cluster

    return find_cluster()


def _connect(address, **kwargs):
    from .transports.client import connect

    return connect(address, **kwargs)


_drivers.register("simulated", _start_simulated)
_drivers.register("local", _start_local)
_drivers.register("find_cluster", _find_cluster)
_drivers.register("connect", _connect)

__all__ = [
    "init",
    "shutdown",
    "is_initialized",
    "remote",
    "method",
    "get",
    "wait",
    "put",
    "cancel",
    "kill",
    "get_actor",
    "nodes",
    "cluster_resources",
    "available_resources",
    "get_gpu_ids",
    "get_runtime_context",
    "timeline",
    "ObjectRef",
    "ObjectRefGenerator",
    "DynamicObjectRefGenerator",
    "ActorHandle",
    "ActorClass",
    "RemoteFunction",
    "RuntimeContext",
    "ClusterInfo",
    "actor",
    "cloudpickle",
    "dag",
    "exceptions",
    "experimental",
    "util",
]
