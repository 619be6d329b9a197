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
"""

from . import _codecache

_codecache.install()  # before any module that defines the protocol's dataclasses

from . import actor, cloudpickle, dag, exceptions, experimental, util  # noqa: E402
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
