"""The drivers ``init`` starts runtimes with, registered from the top.

Which way the layers point (issue 19): **the drivers implement an interface
that the API defines, and the driver is picked at the top.**  The API
(``penumbra.api``, ``penumbra.util`` ...) never imports a driver, not even
lazily inside a function; the drivers (``penumbra.transports``, the real
one, and ``penumbra.sim``, the simulated one) import the API and implement
its ``api.runtime.Runtime``; ``penumbra/__init__.py``, the top, is the one
place that knows both: it registers here, for each way ``init`` can start a
runtime, a factory that imports its driver inside it.  So ``import
penumbra`` loads no driver (neither trio nor simpy): a driver is imported
when ``init`` first asks for it, as before.

What a driver must provide, one factory per way (``init`` calls the
functions below, which call the factory registered for their way):

* ``"simulated"``: ``start_simulated`` -- a runtime on the discrete-event
  simulator (``penumbra.sim.runtime``);
* ``"local"``: ``start_local`` -- start an embedded cluster on this machine
  (stopped by ``shutdown``) and connect to it (``penumbra.transports``);
* ``"find_cluster"``: ``find_cluster`` -- the address of the cluster started
  last on this machine, for ``init("auto")``;
* ``"connect"``: ``connect`` -- join a running cluster at an address.

Each returns what it says with the arguments shown below; a runtime it
returns is an ``api.runtime.Runtime``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["WAYS", "register", "registered", "start_simulated", "start_local", "find_cluster", "connect"]

WAYS = ("simulated", "local", "find_cluster", "connect")

_factories: dict[str, Callable[..., Any]] = {}


def register(way: str, factory: Callable[..., Any]) -> None:
    """Make ``factory`` the driver ``init`` uses for ``way`` (one of
    ``WAYS``); a later registration for the same way replaces it.

    Raises:
        ValueError: ``way`` is not one of ``WAYS``.
        TypeError: ``factory`` is not callable.
    """
    if way not in WAYS:
        raise ValueError(f"unknown driver way {way!r}: register one of {', '.join(map(repr, WAYS))}")
    if not callable(factory):
        raise TypeError(f"the driver for {way!r} must be a callable that starts it, got {factory!r}")
    _factories[way] = factory


def registered(way: str) -> Callable[..., Any]:
    """The factory registered for ``way``.

    Raises:
        RuntimeError: none is (``penumbra/__init__.py`` registers every way
            when ``penumbra`` is imported).
    """
    factory = _factories.get(way)
    if factory is None:
        raise RuntimeError(
            f"no driver is registered for {way!r}: penumbra/__init__.py registers the drivers when the "
            f"penumbra package is imported; import penumbra, or call penumbra.api.drivers.register({way!r}, ...)"
        )
    return factory


def start_simulated(simulated: Any, *, num_cpus: float | None, num_gpus: float | None,
                    resources: dict[str, float] | None, object_store_memory: int | None,
                    namespace: str) -> "Runtime":
    """A runtime on the simulator (``simulated``: a ``SimConfig`` or ``True``)."""
    return registered("simulated")(simulated, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                                   object_store_memory=object_store_memory, namespace=namespace)


def start_local(*, num_cpus: float | None, num_gpus: float | None, resources: dict[str, float] | None,
                object_store_memory: int | None, system_config: dict, namespace: str,
                log_to_driver: bool) -> "Runtime":
    """Start an embedded cluster on this machine and a runtime connected to it."""
    return registered("local")(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                               object_store_memory=object_store_memory, system_config=system_config,
                               namespace=namespace, log_to_driver=log_to_driver)


def find_cluster() -> str:
    """The address of the cluster started last on this machine (``init("auto")``)."""
    return registered("find_cluster")()


def connect(address: str, *, token: str | None, namespace: str, log_to_driver: bool) -> "Runtime":
    """A runtime connected to the running cluster at ``address``."""
    return registered("connect")(address, token=token, namespace=namespace, log_to_driver=log_to_driver)
