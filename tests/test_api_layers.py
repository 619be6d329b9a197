"""The API layer's shape (issue 19): it never imports a driver, its modules
import one another one way, and ``exceptions`` imports nothing above the
base layer; ``init`` reaches the drivers through ``api.drivers``, which
``penumbra/__init__`` wires.

Every import counts: module level, lazy inside a function, and under
``if TYPE_CHECKING:`` (the AST is walked whole).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import penumbra
from penumbra.api import drivers

PKG = Path(penumbra.__file__).parent
# the API layer: what the drivers import and implement
API = ("penumbra.api", "penumbra.util", "penumbra.dag", "penumbra.experimental", "penumbra.actor")
BASE = ("penumbra.core", "penumbra.exceptions", "penumbra._codepickle", "penumbra._codecache",
        "penumbra.cloudpickle", "penumbra._progress")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(mod: str) -> set[str]:
    """The penumbra modules ``mod`` imports anywhere in its file."""
    path = MODULES[mod]
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            while n and n not in MODULES:
                n = n.rsplit(".", 1)[0] if "." in n else ""
            if n and n != mod and not n.startswith(mod + "."):
                out.add(n)
    return out


def _in(mod: str, prefixes: tuple[str, ...]) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


def test_the_api_layer_imports_only_itself_and_the_base_layer():
    up = sorted(f"{m} -> {t}" for m in MODULES if _in(m, API)
                for t in _imports(m) if not _in(t, API + BASE))
    assert up == [], "the API imports a driver or the top (register a factory in api.drivers instead):\n" + "\n".join(up)


def test_exceptions_import_only_the_base_layer():
    up = sorted(t for t in _imports("penumbra.exceptions") if not _in(t, BASE))
    assert up == [], f"penumbra.exceptions is in the base layer but imports {up}"


def test_no_import_circle_in_the_api_layer():
    mods = [m for m in MODULES if _in(m, API + ("penumbra.exceptions",))]
    graph = {m: {t for t in _imports(m) if t in mods} for m in mods}
    # Tarjan's strongly connected components
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for m in sorted(mods):
        if m not in index:
            visit(m)
    assert circles == [], f"import circles: {circles}"


def test_import_penumbra_registers_every_driver_and_loads_none():
    code = ("import sys, penumbra\n"
            "from penumbra.api import drivers\n"
            "assert all(drivers.registered(w) for w in drivers.WAYS)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'simpy') "
            "or m.startswith(('penumbra.transports', 'penumbra.sim'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(PKG.parent)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_registering_a_driver_checks_its_way_and_factory():
    with pytest.raises(ValueError, match="unknown driver way 'cloud'"):
        drivers.register("cloud", lambda: None)
    with pytest.raises(TypeError, match="must be a callable"):
        drivers.register("connect", "penumbra.transports.client.connect")


def test_init_without_a_registered_driver_says_who_registers_it():
    saved = drivers.registered("connect")
    del drivers._factories["connect"]
    try:
        with pytest.raises(RuntimeError, match="no driver is registered for 'connect'"):
            penumbra.init(address="127.0.0.1:1")
        assert not penumbra.is_initialized()
    finally:
        drivers.register("connect", saved)
