"""Partitions of one simulation as actors on a running cluster, through Ray Core's API.

Theory of operation
-------------------
``partition.run_partitioned`` advances the partitions of a simulation in
lockstep windows; each partition sits behind the same four calls (start,
advance, result, close).  By default a partition is a local child process
talking over a pipe.  With an address (``run_partitioned(address=...)``,
``penumbra sim --address``), each partition is instead an *actor* on a
running cluster, so a very large simulation uses the machines of a cluster
the user already has, not a launcher of our own:

* ``PartitionActor`` holds one ``partition._Partition`` (built in its
  constructor, from the same picklable ``SimSpec`` as every other one);
* each window is one actor call per partition (``advance``), all submitted
  before any result is taken, so the partitions run their windows at the
  same time on their workers;
* the window exchange rides on those calls: an actor returns the batches
  it sent to each other partition, pickled per destination, and the driver
  passes the bytes on, unread, as the next call's argument.  This is the
  pipe runner's protocol with actor calls in place of pipe messages, so
  the result and the trace hash are those of the local-process run, for
  any number of partitions.

Only Ray Core's public API is used -- ``init(address=...)``, ``remote``
(a class, ``num_cpus=1``, the ``"SPREAD"`` strategy), ``get``, ``kill``,
``cluster_resources``, ``available_resources``, ``is_initialized`` and
``shutdown`` -- through an ``api`` module: ``penumbra`` (the default) or
``ray``, as ``penumbra verify --address/--ray`` does
(``verification.fanout``).  The module is imported by name (this layer
sits below the package's top), and the cluster's workers must be able to
import penumbra.

Each partition takes one CPU for the whole run (a partition is busy every
window), so a cluster with fewer CPUs than partitions could never run
them all: that is refused up front with what to do, as is an address where
no cluster answers.
"""

from __future__ import annotations

import importlib
import pickle
import time
from types import ModuleType
from typing import Any

from .partition_step import PartitionError, SimSpec, _first_arrival, _Partition

__all__ = ["PartitionActor", "ActorCluster", "load_api"]

# seconds to wait for enough free CPUs (a previous job's actors may still be
# giving theirs back) before saying the cluster has too few
FREE_CPU_WAIT = 10.0


def load_api(name: str) -> ModuleType:
    """The Ray Core API to run partitions with: ``"penumbra"`` or ``"ray"``.

    Raises:
        ValueError: another name.
        PartitionError: ``ray`` asked for but not installed.
    """
    if name not in ("penumbra", "ray"):
        raise ValueError(f"partitions run as actors through 'penumbra' or 'ray', got {name!r}")
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise PartitionError(f"cannot import Ray ({e}): install it (pip install ray) in this environment, with "
                             "penumbra importable by its workers, or drop --ray to run the partitions on a "
                             "penumbra cluster") from None


class PartitionActor:
    """One partition of a simulation, hosted by an actor: the calls the
    pipe runner's child process (``partition._serve``) answers."""

    def __init__(self, spec: SimSpec, index: int, count: int) -> None:
        self.p = _Partition(spec, index, count)
        self.busy = 0.0

    def min_latency(self) -> float:
        return self.p.min_latency()

    def advance(self, until: float, inbound: list, count: bool = False) -> tuple:
        t0 = time.process_time()
        out, nxt = self.p.advance(until, inbound)
        n, first = sum(map(len, out)), _first_arrival(out)
        # pickled here, per destination: the driver only moves bytes
        packed = [pickle.dumps(o, pickle.HIGHEST_PROTOCOL) if o else b"" for o in out]
        finished = self.p.finished() if count else None
        self.busy += time.process_time() - t0
        return packed, nxt, n, first, finished

    def result(self) -> dict[str, Any]:
        r = self.p.result()
        r["cpu_s"] = self.busy
        return r


class _ActorPartition:
    """A partition as an actor, behind the same calls as ``partition._Remote``."""

    def __init__(self, api: ModuleType, cls: Any, spec: SimSpec, index: int, count: int) -> None:
        self.api, self.index = api, index
        self.actor = cls.remote(spec, index, count)
        self._ref: Any = None

    def _get(self, ref: Any) -> Any:
        try:
            return self.api.get(ref)
        except Exception as e:
            raise PartitionError(f"partition {self.index} (an actor): {type(e).__name__}: "
                                 f"{str(e).strip()[:2000]}") from e

    def start(self) -> float:
        return self._get(self.actor.min_latency.remote())

    def send_advance(self, until: float, inbound: list, count: bool = False) -> None:
        self._ref = self.actor.advance.remote(until, inbound, count)

    def recv_out(self) -> tuple:
        ref, self._ref = self._ref, None
        return self._get(ref)

    def result(self) -> dict[str, Any]:
        return self._get(self.actor.result.remote())

    def close(self) -> None:
        try:
            self.api.kill(self.actor)
        except Exception:  # already dead, or the cluster is gone: nothing left to stop
            pass


class ActorCluster:
    """The cluster the partitions run on, joined for one run.

    ``address``: ``HOST:PORT``, ``"auto"`` (the cluster started last on this
    machine) or ``"local"`` (a new one here, stopped afterwards); with
    ``api="ray"``, ``None`` means a local Ray instance, or the Ray cluster
    this process is already connected to (used as it is and left open).  A
    process already connected with penumbra is refused: the run joins the
    cluster itself, and closes its connection afterwards.
    """

    def __init__(self, address: str | None, api: str = "penumbra", token: str | None = None) -> None:
        self.api = load_api(api)
        self.address = address
        self.where = address or ("the cluster this process is connected to" if self.api.is_initialized()
                                 else "a local Ray instance")
        self._own = False
        if self.api.is_initialized():
            if address is not None or api == "penumbra":
                # (penumbra: address=None means local processes, so an open
                # connection cannot be named; Ray's can, with address=None)
                use = " or pass address=None to run the partitions there," if api == "ray" else ""
                raise PartitionError(f"this process is already connected to a cluster ({api}.init() was called) "
                                     f"and run_partitioned joins the cluster at {address} itself: call "
                                     f"{api}.shutdown() first,{use} then run it again")
            return
        kwargs: dict[str, Any] = {}
        if address:
            kwargs["address"] = address
        if token and api == "penumbra":
            kwargs["_token"] = token
        try:
            self.api.init(**kwargs)
        except Exception as e:
            first = str(e).strip().splitlines()
            raise PartitionError(
                f"cannot reach the cluster at {self.where}: {first[0] if first else type(e).__name__}. Start one "
                "with `penumbra start --head` and give the address it prints (or 'auto' for the one started "
                "last on this machine, 'local' for a new one here), or drop the address to run the partitions "
                "as local processes") from None
        self._own = True

    def check_cpus(self, partitions: int) -> None:
        """Each partition holds one CPU for the whole run: refuse a cluster
        that cannot give ``partitions`` of them (waiting ``FREE_CPU_WAIT``
        seconds for busy ones to come free)."""
        total = float(self.api.cluster_resources().get("CPU", 0))
        if total < partitions:
            raise PartitionError(
                f"the cluster at {self.where} has {total:g} CPUs; a simulation in {partitions} partitions runs "
                f"one actor of 1 CPU per partition: add nodes or CPUs (penumbra start --address HOST:PORT "
                f"--num-cpus K) or use at most {int(total)} partitions")
        deadline = time.monotonic() + FREE_CPU_WAIT
        while True:
            free = float(self.api.available_resources().get("CPU", 0))
            if free >= partitions:
                return
            if time.monotonic() > deadline:
                raise PartitionError(
                    f"only {free:g} of the {total:g} CPUs of the cluster at {self.where} are free (other jobs "
                    f"hold the rest); a simulation in {partitions} partitions needs {partitions}: wait for "
                    f"them, or use at most {max(1, int(free))} partitions")
            time.sleep(0.2)

    def partitions(self, spec: SimSpec, count: int) -> list[_ActorPartition]:
        """``count`` partition actors, one CPU each, spread over the nodes."""
        self.check_cpus(count)
        cls = self.api.remote(num_cpus=1, scheduling_strategy="SPREAD")(PartitionActor)
        return [_ActorPartition(self.api, cls, spec, i, count) for i in range(count)]

    def gather(self, workers: list[_ActorPartition]) -> list[tuple]:
        """Every partition's window, taken in one ``get`` (a quarter less
        time a window than one ``get`` per partition, measured)."""
        refs = [w._ref for w in workers]
        for w in workers:
            w._ref = None
        try:
            return self.api.get(refs)
        except Exception:
            for w, ref in zip(workers, refs):  # which one failed, and why
                w._ref = ref
                w.recv_out()
            raise

    def close(self) -> None:
        if self._own:
            self._own = False
            self.api.shutdown()
