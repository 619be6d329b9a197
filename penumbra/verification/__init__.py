"""penumbra.verification."""
