"""Lazy task graphs: Ray's DAG API (``.bind()`` and ``.execute()``).

``f.bind(x)`` records a call instead of making it; ``node.execute(*inputs)``
submits the whole graph that node depends on and returns its ref.  A node
may stand in the arguments of another (at top level or inside lists,
tuples and dicts), so a graph is built the way the calls would be written.

* ``RemoteFunction.bind`` -> :class:`FunctionNode` (a task per execution);
* ``ActorClass.bind`` -> :class:`ClassNode` (an actor per execution);
  ``class_node.method.bind(...)`` -> :class:`ClassMethodNode`;
* ``handle.method.bind(...)`` on a live actor -> a :class:`ClassMethodNode`
  that calls that actor on every execution;
* :class:`InputNode` stands for what ``execute`` is given
  (``input_node[key]``/``input_node.attr`` for a part of it);
* :class:`MultiOutputNode` gathers several nodes: ``execute`` returns a
  list of refs.

Rules, as in Ray: each node runs once per execution, however many nodes
use it; a ``ClassNode`` runs, when its actor is created, every method bound
on it so far, in the order they were bound (``a.inc.bind(2)`` counts even
if no other node uses it), and a node that uses one of those calls gets
that call's ref.  Nothing is pure about this module in the core's sense:
it is API sugar that makes ordinary ``.remote()`` calls, so both drivers
run it unchanged.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ClassMethodNode", "ClassNode", "DAGNode", "FunctionNode", "InputAttributeNode", "InputNode",
           "MultiOutputNode"]


class _Execution:
    """One ``execute``: the inputs, and each node's result (once)."""

    def __init__(self, args: tuple, kwargs: dict) -> None:
        self.args = args
        self.kwargs = kwargs
        self.results: dict[int, Any] = {}

    def run(self, node: "DAGNode") -> Any:
        key = id(node)
        if key not in self.results:
            self.results[key] = node._run(self)
        return self.results[key]

    def resolve(self, value: Any) -> Any:
        if isinstance(value, DAGNode):
            return self.run(value)
        if type(value) in (list, tuple):
            return type(value)(self.resolve(v) for v in value)
        if type(value) is dict:
            return {k: self.resolve(v) for k, v in value.items()}
        return value


class DAGNode:
    """A call recorded by ``.bind()``, run by ``execute``."""

    def execute(self, *args, **kwargs) -> Any:
        """Submit this node and everything it depends on; its ref (a list of
        refs for a ``MultiOutputNode``, a handle for a ``ClassNode``).
        ``args``/``kwargs`` are what an ``InputNode`` stands for."""
        return _Execution(args, kwargs).run(self)

    def _run(self, ex: _Execution) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


class FunctionNode(DAGNode):
    def __init__(self, fn: Any, args: tuple, kwargs: dict) -> None:
        self._fn, self._args, self._kwargs = fn, args, kwargs

    def _run(self, ex: _Execution) -> Any:
        return self._fn.remote(*ex.resolve(self._args), **ex.resolve(self._kwargs))

    def __repr__(self) -> str:
        return f"FunctionNode({self._fn!r})"


class ClassNode(DAGNode):
    """An actor to create per execution; ``node.method.bind(...)`` records
    calls on it."""

    def __init__(self, cls: Any, args: tuple, kwargs: dict) -> None:
        self._cls, self._args, self._kwargs = cls, args, kwargs
        self._calls: list[ClassMethodNode] = []

    def __getattr__(self, name: str) -> "_Binder":
        if name.startswith("_"):
            raise AttributeError(name)
        return _Binder(self, name)

    def _run(self, ex: _Execution) -> Any:
        handle = self._cls.remote(*ex.resolve(self._args), **ex.resolve(self._kwargs))
        ex.results[id(self)] = handle  # (its calls below look it up)
        for call in list(self._calls):
            ex.run(call)
        return handle


class _Binder:
    """``class_node.method``: ``.bind(...)`` records a call on it."""

    def __init__(self, parent: ClassNode, name: str) -> None:
        self._parent, self._name = parent, name

    def bind(self, *args, **kwargs) -> "ClassMethodNode":
        node = ClassMethodNode(self._parent, self._name, args, kwargs)
        self._parent._calls.append(node)
        return node


class ClassMethodNode(DAGNode):
    """A method call on a ``ClassNode``'s actor or on a live actor handle."""

    def __init__(self, target: Any, method: str, args: tuple, kwargs: dict) -> None:
        self._target, self._method, self._args, self._kwargs = target, method, args, kwargs

    def _run(self, ex: _Execution) -> Any:
        handle = ex.run(self._target) if isinstance(self._target, ClassNode) else self._target
        if isinstance(self._target, ClassNode) and id(self) in ex.results:
            return ex.results[id(self)]  # (run when its actor was created)
        return getattr(handle, self._method).remote(*ex.resolve(self._args), **ex.resolve(self._kwargs))


class InputNode(DAGNode):
    """What ``execute`` is given: the one positional argument, or (with
    several, or keywords) ``input_node[i]`` / ``input_node[key]``.  Use it
    as a context manager, as in Ray: ``with InputNode() as inp: ...``."""

    def __enter__(self) -> "InputNode":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __getitem__(self, key: Any) -> "InputAttributeNode":
        return InputAttributeNode(self, key, item=True)

    def __getattr__(self, name: str) -> "InputAttributeNode":
        if name.startswith("_"):
            raise AttributeError(name)
        return InputAttributeNode(self, name, item=False)

    def _run(self, ex: _Execution) -> Any:
        if len(ex.args) == 1 and not ex.kwargs:
            return ex.args[0]
        if not ex.args and not ex.kwargs:
            raise ValueError("this DAG has an InputNode: pass its value to execute(...)")
        return _Inputs(ex.args, ex.kwargs)


class _Inputs:
    """Several inputs: ``[i]`` for positional ones, ``[key]``/``.key`` for keywords."""

    def __init__(self, args: tuple, kwargs: dict) -> None:
        self.args, self.kwargs = args, kwargs

    def __getitem__(self, key: Any) -> Any:
        return self.args[key] if isinstance(key, int) else self.kwargs[key]


class InputAttributeNode(DAGNode):
    def __init__(self, parent: InputNode, key: Any, item: bool) -> None:
        self._parent, self._key, self._item = parent, key, item

    def _run(self, ex: _Execution) -> Any:
        value = ex.run(self._parent)
        if isinstance(value, _Inputs):
            return value[self._key]
        return value[self._key] if self._item else getattr(value, self._key)


class MultiOutputNode(DAGNode):
    """Several nodes at once: ``execute`` returns the list of their refs."""

    def __init__(self, nodes: list) -> None:
        if not isinstance(nodes, (list, tuple)) or not all(isinstance(n, DAGNode) for n in nodes):
            raise TypeError("MultiOutputNode takes a list of bound nodes (made with .bind())")
        self._nodes = list(nodes)

    def _run(self, ex: _Execution) -> Any:
        return [ex.run(n) for n in self._nodes]
