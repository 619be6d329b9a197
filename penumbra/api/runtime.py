"""What the public API needs from a runtime, real or simulated.

The API (``penumbra.get``, ``f.remote`` ...) builds task specs, ids and
argument payloads itself; everything that moves data or talks to a node goes
through one ``Runtime``: the real one (``penumbra.transports.client``) or the
simulated one (``penumbra.sim.runtime``).  Exactly one runtime is current in
a process (see ``context``).
"""

from __future__ import annotations

import abc
from typing import Any, Sequence

from ..core.ids import ActorId, ObjectId, TaskId
from ..core.records import ErrorInfo
from ..core.specs import TaskSpec

__all__ = ["Runtime", "ErrorValue"]


class ErrorValue:
    """Stands for an object that holds an error, in ``get_objects`` results."""

    __slots__ = ("info",)

    def __init__(self, info: ErrorInfo) -> None:
        self.info = info


class Runtime(abc.ABC):
    job_id: int
    client_id: str
    node_id: str
    namespace: str = ""
    is_worker: bool = False

    @abc.abstractmethod
    def submit(self, spec: TaskSpec) -> None:
        """Hand a task (or actor call, or actor creation) to the node."""

    @abc.abstractmethod
    def create_actor(self, spec: TaskSpec, timeout: float | None) -> None:
        """Submit an actor creation task; for a named actor, wait until the
        name is registered and raise ``ValueError`` if it is taken."""

    @abc.abstractmethod
    def export_function(self, function_id: bytes, blob: bytes) -> None:
        """Make a pickled function or class available to every worker."""

    @abc.abstractmethod
    def get_objects(self, ids: Sequence[ObjectId], timeout: float | None) -> list[Any]:
        """The values of ``ids`` (``ErrorValue`` for errors), waiting for
        them; raise ``GetTimeoutError`` on timeout."""

    @abc.abstractmethod
    def wait_objects(self, ids: Sequence[ObjectId], num_returns: int, timeout: float | None,
                     fetch_local: bool) -> set[ObjectId]:
        """The ids that are ready once ``num_returns`` are, or at timeout."""

    @abc.abstractmethod
    def put_object(self, oid: ObjectId, value: Any) -> None:
        """Store ``value`` as ``oid`` (pinned until released)."""

    @abc.abstractmethod
    def release(self, oids: Sequence[ObjectId]) -> None:
        """This process holds no more references to these put objects."""

    @abc.abstractmethod
    def cancel(self, task_id: TaskId, force: bool, recursive: bool) -> None: ...

    @abc.abstractmethod
    def kill_actor(self, actor_id: ActorId, no_restart: bool) -> None: ...

    @abc.abstractmethod
    def gcs_request(self, request: Any, timeout: float | None) -> Any:
        """Read or write the GCS through the node (``get_actor``, ``nodes``)."""

    @abc.abstractmethod
    def cluster_status(self, timeout: float | None) -> Any:
        """The head's ``ClusterStatus``: every node, alive or not, and its load."""

    @abc.abstractmethod
    def shutdown(self) -> None: ...

    def load_function(self, function_id: bytes) -> Any:  # worker side
        raise NotImplementedError
