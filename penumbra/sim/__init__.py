"""penumbra.sim."""


def __getattr__(name: str):
    # ``penumbra.sim.SimConfig`` (what ``init(simulated=...)`` takes), imported
    # lazily: the simulated runtime pulls in the API layer
    if name in ("SimConfig", "SimRuntime"):
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'penumbra.sim' has no attribute {name!r}")
