"""The public API's implementation (re-exported by ``penumbra``)."""
