"""penumbra.sim."""
