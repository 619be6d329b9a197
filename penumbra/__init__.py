"""penumbra: a simulator-verified implementation of the Ray paper."""

__version__ = "0.1.0"
