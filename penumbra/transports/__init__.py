"""penumbra.transports."""
