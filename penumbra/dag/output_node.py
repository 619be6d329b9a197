"""``penumbra.dag.output_node``: where Ray's ``MultiOutputNode`` is imported from."""

from ..api.dag import MultiOutputNode

__all__ = ["MultiOutputNode"]
