"""``penumbra.dag``: Ray's lazy DAG API (``ray.dag``).  The nodes live in
``penumbra.api.dag``; ``f.bind(...)``, ``Actor.bind(...)`` and
``handle.method.bind(...)`` make them."""

from ..api.dag import ClassMethodNode, ClassNode, DAGNode, FunctionNode, InputAttributeNode, InputNode, MultiOutputNode

__all__ = ["ClassMethodNode", "ClassNode", "DAGNode", "FunctionNode", "InputAttributeNode", "InputNode",
           "MultiOutputNode"]
