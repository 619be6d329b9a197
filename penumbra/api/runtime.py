"""What the public API needs from a runtime, real or simulated.

The API (``penumbra.get``, ``f.remote`` ...) builds task specs, ids and
argument payloads itself; everything that moves data or talks to a node goes
through one ``Runtime``: the real one (``penumbra.transports.client``) or the
simulated one (``penumbra.sim.runtime``), which implement this interface and
which ``init`` starts through the factories ``penumbra/__init__`` registers
in ``drivers`` (the API imports no driver).  Exactly one runtime is current
in a process (see ``context``).
"""

from __future__ import annotations

import abc
import itertools
import sys
from typing import Any, Sequence

from ..core.ids import ActorId, ObjectId, TaskId
from ..core.records import ErrorInfo
from ..core.specs import Payload, TaskSpec
from ..core.tables import Get, PutFunction

__all__ = ["Runtime", "ErrorValue"]


class ErrorValue:
    """Stands for an object that holds an error, in ``get_objects`` results."""

    __slots__ = ("info",)

    def __init__(self, info: ErrorInfo) -> None:
        self.info = info

    def __reduce__(self):
        # stored as a value where one value of several failed (a generator
        # that raised after yielding some): get() of it raises the error
        return (ErrorValue, (self.info,))


_keys = itertools.count(1)


class Runtime(abc.ABC):
    job_id: int
    client_id: str
    node_id: str
    namespace: str = ""
    is_worker: bool = False
    # whether an async actor's calls may go direct (the simulator says no:
    # see penumbra.sim.runtime_clients)
    direct_async_calls: bool = True
    # functions and classes this process exported / loaded (set per instance)
    _exported: set[bytes]
    _functions: dict[bytes, Any]

    @property
    def key(self) -> int:
        """A number no other runtime of this process has had or will have:
        the key of per-runtime state kept outside the runtime (which
        functions were exported to it, actor call counters).  Not
        ``id(runtime)``: a runtime freed after ``shutdown()`` leaves its id
        to the next one, which would then skip exporting functions its
        cluster has never seen, and their tasks would never run."""
        k = self.__dict__.get("_key")
        if k is None:
            k = self.__dict__.setdefault("_key", next(_keys))
        return k

    def task_cancelled(self, task_id: TaskId) -> bool:
        """Whether ``cancel`` was asked for the task ``task_id`` running in
        this worker (``RuntimeContext.is_canceled``); False in a driver."""
        return False

    @abc.abstractmethod
    def submit(self, spec: TaskSpec) -> None:
        """Hand a task (or actor call, or actor creation) to the node."""

    def submit_actor_call(self, spec: TaskSpec, direct: bool) -> None:
        """Submit actor call ``spec``; ``direct``: it may go straight to the
        actor's worker (not for a ``replay=True`` actor's).  By default the
        node routes it, as ``submit``."""
        self.submit(spec)

    def hold_args(self, spec: TaskSpec, refs: list) -> None:
        """Keep ``refs`` (the ``ObjectRef`` arguments of actor call ``spec``,
        just submitted) alive until the call is resolved, if this runtime
        needs to: a direct call reaches the actor's worker without its node,
        which pins a routed call's arguments, seeing it.  By default
        nothing: the node pinned them."""

    @abc.abstractmethod
    def create_actor(self, spec: TaskSpec, timeout: float | None) -> None:
        """Submit an actor creation task; for a named actor, wait until the
        name is registered and raise ``ValueError`` if it is taken."""

    def lost_error(self) -> BaseException | None:
        """The error every call raises once the connection to the cluster
        is lost (``None`` while it is not): ``init`` says the same rather
        than "already connected"."""
        return None

    @staticmethod
    def report_need(need: int, timeout: float | None) -> int:
        """``WatchObjects.need`` for a wait on ``need`` objects: without a
        timeout nothing needs the partial answer, so the node may report
        once, when ``need`` are ready; with one, each report as it comes."""
        return need if timeout is None else 1

    def export_function(self, function_id: bytes, blob: bytes) -> None:
        """Make a pickled function or class available to every worker."""
        if function_id in self._exported:
            return
        # the driver's import path travels with the function, so that a
        # worker can import the modules the function lives in (as Ray does)
        self.gcs_request(PutFunction(function_id, Payload(len(blob), (blob, tuple(sys.path)))), timeout=60.0)
        self._exported.add(function_id)

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
    def release(self, oids: Sequence[ObjectId], free: bool = False) -> None:
        """This process holds no more references to these put objects
        (``free``: and their refs never left it, so they can be deleted
        now; see ``refs``)."""

    @abc.abstractmethod
    def cancel(self, task_id: TaskId, force: bool, recursive: bool) -> None: ...

    @abc.abstractmethod
    def kill_actor(self, actor_id: ActorId, no_restart: bool, exiting: TaskId | None = None) -> None:
        """Kill the actor (``exiting``: exit_actor() in its call with that id)."""

    @abc.abstractmethod
    def gcs_request(self, request: Any, timeout: float | None) -> Any:
        """Read or write the GCS through the node (``get_actor``, ``nodes``)."""

    @abc.abstractmethod
    def cluster_status(self, timeout: float | None) -> Any:
        """The head's ``ClusterStatus``: every node, alive or not, and its load."""

    def timeline_runs(self, timeout: float | None) -> Any:
        """What ran on every node's workers lately: a list of
        ``core.timeline.NodeRuns`` (see ``penumbra.timeline``)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no timeline")

    @abc.abstractmethod
    def shutdown(self) -> None: ...

    def load_function(self, function_id: bytes) -> Any:
        """A function or class ``export_function`` made available (worker side)."""
        fn = self._functions.get(function_id)
        if fn is not None:
            return fn
        payload = self.gcs_request(Get("functions", function_id), timeout=60.0)
        if payload is None:
            from ..exceptions import PenumbraError

            raise PenumbraError(f"function {function_id.hex()} is not in the GCS function table")
        from .._codepickle import loads

        blob, path = payload.data
        for entry in path:
            if entry not in sys.path:
                sys.path.append(entry)
        fn = self._functions[function_id] = loads(blob)
        return fn
