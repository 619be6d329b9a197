"""``penumbra.dag.input_node``: where Ray's ``InputNode`` is imported from."""

from ..api.dag import InputAttributeNode, InputNode

__all__ = ["InputAttributeNode", "InputNode"]
