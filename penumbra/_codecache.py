"""A persistent cache of the code penumbra generates at import time.

Why: ``dataclasses`` writes each class's ``__init__``, ``__repr__``,
``__eq__``... as source text and compiles it with ``exec`` every time the
module is imported, and ``core._pickling`` does the same for the protocol's
faster reducers (the protocol's messages, specs and records are
``msgspec.Struct``s, made in C; penumbra's other dataclasses remain).
Compiling such functions took about 0.2 s, 40% of what a daemon spent
importing penumbra, when the protocol's ~150 classes were dataclasses; it
is less now, but still on the path of
every ``penumbra.init()`` (which starts a daemon process) and every CLI
command.  ``.pyc`` files cannot help: the source is made at run time.

How: ``install()`` points the ``exec`` these two modules use at a
function that compiles each source text once per machine and keeps the code
object in a file (``marshal``, one per bytecode version), loaded at the next
import.  Only penumbra's own generated code goes through it (for
``dataclasses``, classes defined in ``penumbra`` modules); anything else is
plain ``exec``.  The code object of a given text is exactly what ``exec``
would have compiled, so behaviour cannot change; a stale entry is never
looked up, since the text is the key.

The file lives in ``$XDG_CACHE_HOME/penumbra`` (``~/.cache/penumbra``), in a
directory only its owner can write, like ``__pycache__``: whoever can write
it can run code as you.  Set ``PENUMBRA_NO_CODE_CACHE=1`` to turn the cache
off; an unreadable, unwritable or corrupt file just means compiling.
"""

from __future__ import annotations

import atexit
import builtins
import marshal
import os
import sys

__all__ = ["install"]

_MAX_ENTRIES = 20_000  # past this, the file is rewritten with what is in use only

_codes: dict[str, object] = {}
_loaded = 0
_added = 0
_path: str | None = None
_installed = False
_owner = 0  # the process that installed the cache; a forked child does not write it


def _cache_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    # (the bytecode magic number too: code objects are only valid for the
    # interpreter build that made them, exactly as for .pyc files)
    from importlib.util import MAGIC_NUMBER

    tag = f"{sys.implementation.cache_tag}-{MAGIC_NUMBER.hex()}"
    return os.path.join(base, "penumbra", f"codecache-{tag}.marshal")


def _load(path: str) -> None:
    global _loaded
    try:
        with open(path, "rb") as f:
            data = marshal.load(f)
    except (OSError, EOFError, ValueError, TypeError):
        return
    if isinstance(data, dict):
        _codes.update(data)
        _loaded = len(_codes)


def _save() -> None:
    if not _added or _path is None or os.getpid() != _owner:
        return
    entries = _codes if len(_codes) <= _MAX_ENTRIES else {}
    try:
        os.makedirs(os.path.dirname(_path), mode=0o700, exist_ok=True)
        tmp = f"{_path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            marshal.dump(entries, f)
        os.replace(tmp, _path)  # atomic: a concurrent reader sees the old or the new file
    except (OSError, ValueError):
        pass


def _cached_exec(source, globals=None, locals=None):  # noqa: A002 - exec's own parameter names
    if type(source) is not str:
        return builtins.exec(source, globals, locals)
    code = _codes.get(source)
    if code is None:
        global _added
        code = compile(source, "<string>", "exec", dont_inherit=True)
        _codes[source] = code
        _added += 1
    return builtins.exec(code, globals, locals)


def _dataclasses_exec(source, globals=None, locals=None):  # noqa: A002
    if globals is not None and str(globals.get("__name__", "")).startswith("penumbra"):
        return _cached_exec(source, globals, locals)
    return builtins.exec(source, globals, locals)


def install() -> None:
    """Route penumbra's generated code through the cache (once per process)."""
    global _installed, _path, _owner
    if _installed or os.environ.get("PENUMBRA_NO_CODE_CACHE"):
        return
    _installed = True
    _owner = os.getpid()
    import dataclasses

    from .core import _pickling

    _path = _cache_path()
    _load(_path)
    dataclasses.exec = _dataclasses_exec  # type: ignore[attr-defined]  # (its module global shadows the builtin)
    _pickling.exec = _cached_exec  # type: ignore[attr-defined]
    atexit.register(_save)


def stats() -> dict[str, int]:
    """Entries loaded from the file and compiled in this process."""
    return {"loaded": _loaded, "compiled": _added}
