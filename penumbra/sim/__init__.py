"""penumbra.sim: the core's state machines on a SimPy discrete-event cluster.

Layers, bottom up: ``eventqueue`` (the bucketed calendar SimPy runs on),
``network`` (latency, bandwidth, faults), ``endpoints`` (hosts and clients),
``kernel`` (``SimKernel``: the clock, injection, crashes and pauses),
``costs`` (what simulated work costs: PAPER, LOCAL, ZERO), ``faults``
(schedules as data), ``trace`` (the run's hash), ``node`` (the node-local
world: store, workers, transfers; the executor interface), ``driver``
(simulated driver programs), ``workloads`` (modelled tasks and task graphs),
``cluster`` (``SimCluster``: head, GCS chains and nodes built from
``core.layout``, failures), ``partition`` (one simulation across
processes, or across actors on a cluster: ``partition_step``,
``partition_actors``), ``experiments`` (the paper's figures, ``penumbra sim``: the
shared ``experiments_results`` and one ``experiments_figN`` per figure),
``plots``, and ``runtime`` (real programs written against the public API, on
the simulator: ``penumbra.init(simulated=SimConfig(...))``; built from
``runtime_config``, ``runtime_fibers``, ``runtime_clients`` and
``runtime_executor``).
"""

from .cluster import (
    AddNode,
    CrashHead,
    CrashNode,
    Executor,
    Outcome,
    SimActor,
    SimCluster,
    SimDriver,
    SimNode,
    SimWorker,
)
from .costs import LOCAL, PAPER, ZERO, CostModel
from .faults import (
    Crash,
    Fault,
    FaultSchedule,
    Heal,
    Isolate,
    LinkFault,
    Partition,
    Restart,
    SlowHost,
    Pause,
)
from .kernel import SimKernel
from .network import Network
from .trace import Trace
from .workloads import (
    ActorRounds,
    ChainStream,
    ClosedLoop,
    Dist,
    Graph,
    GraphTask,
    ModelExecutor,
    TaskModel,
    chains,
    fan_in_tree,
    independent,
    random_dag,
)

__all__ = [
    "SimCluster", "SimDriver", "SimNode", "SimWorker", "SimActor", "Outcome", "Executor",
    "CrashNode", "AddNode", "CrashHead",
    "CostModel", "PAPER", "LOCAL", "ZERO",
    "Fault", "FaultSchedule", "Crash", "Restart", "Partition", "Heal", "Isolate", "LinkFault", "SlowHost", "Pause",
    "SimKernel", "Network", "Trace",
    "TaskModel", "Dist", "Graph", "GraphTask", "ModelExecutor", "ClosedLoop", "ChainStream", "ActorRounds",
    "chains", "independent", "random_dag", "fan_in_tree",
    "SimConfig", "SimRuntime",
]


def __getattr__(name: str):
    # ``penumbra.sim.SimConfig`` (what ``init(simulated=...)`` takes), imported
    # lazily: the simulated runtime pulls in the API layer
    if name in ("SimConfig", "SimRuntime"):
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'penumbra.sim' has no attribute {name!r}")
