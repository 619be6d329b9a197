"""How a planted bug is installed: swap one attribute, hand back the undo."""

from __future__ import annotations

from typing import Callable

__all__ = ["patch", "handler"]


def patch(obj, attr, new) -> Callable[[], None]:
    old = getattr(obj, attr)
    setattr(obj, attr, new)
    return lambda: setattr(obj, attr, old)


def handler(module, msg_type, fn) -> Callable[[], None]:
    """Replace a machine's handler for ``msg_type`` (machines dispatch through
    a module-level table, so patching the method alone would not do)."""
    table = module._HANDLERS
    old = table[msg_type]
    table[msg_type] = fn
    return lambda: table.__setitem__(msg_type, old)
