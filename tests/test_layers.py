"""The package's import shape: layers import downward, modules import no circle.

The architecture is a stack (docs/DESIGN.md, "Layers"): the pure core at the
bottom, the public API above it (it defines the ``Runtime`` interface the
drivers implement), then the two drivers, then verification, and at the top
the package root, the command line and the demo, which pick a driver and
wire it in.  This test keeps that shape: it fails on

* an **import circle** between modules (any two modules that import each
  other, directly or through others);
* an **upward import**: a module importing one from a higher layer (for
  example the API importing a driver, or the core importing the API);
* a **file too long** to hold in one's head (over ``MAX_LINES``).

Every import counts: module level, a lazy import inside a function, and an
import under ``if TYPE_CHECKING:``, because each one is a dependency a
reader has to follow (and a lazy one is a circle that merely has not bitten
yet).  A package importing its own submodules (an ``__init__`` that
re-exports) is not a circle.

When the test fails, its message lists the edges: move what both sides need
to a module below them, or pass it in, rather than importing upward.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import networkx as nx
import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "penumbra"

#: The layers, lowest first.  A module belongs to the layer of the longest
#: prefix that names it; it may import its own layer and the ones below.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("penumbra.core", "penumbra.exceptions", "penumbra._codepickle", "penumbra._codecache",
              "penumbra.cloudpickle", "penumbra._progress")),
    ("api", ("penumbra.api", "penumbra.util", "penumbra.dag", "penumbra.experimental", "penumbra.actor")),
    ("transports", ("penumbra.transports",)),
    ("sim", ("penumbra.sim",)),
    ("verification", ("penumbra.verification",)),
    ("top", ("penumbra", "penumbra.cli", "penumbra.demo")),
]

#: The core may import nothing of the package outside itself but these.
CORE_MAY_IMPORT = ("penumbra.exceptions",)

MAX_LINES = 900  # split files aim at about 800; this leaves room to grow before a split


# ---------------------------------------------------------------------------
# reading the import graph


def modules(pkg_dir: Path) -> dict[str, Path]:
    """Every module of the package under ``pkg_dir``, by dotted name."""
    root = pkg_dir.parent
    out = {}
    for dirpath, _, files in os.walk(pkg_dir):
        for f in files:
            if f.endswith(".py"):
                path = Path(dirpath) / f
                name = ".".join(path.relative_to(root).with_suffix("").parts)
                if name.endswith(".__init__"):
                    name = name[: -len(".__init__")]
                out[name] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            # ``from pkg import name``: name may be a submodule
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(pkg_dir: Path) -> nx.DiGraph:
    mods = modules(pkg_dir)
    known = set(mods)
    graph = nx.DiGraph()
    for name, path in mods.items():
        graph.add_node(name)
        for target in imports_of(name, path, known):
            if target.startswith(name + "."):
                continue  # a package re-exporting its submodules
            graph.add_edge(name, target)
    return graph


def layer_of(module: str, layers=LAYERS) -> int | None:
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    return None if best is None else best[0]


def circles(graph: nx.DiGraph) -> list[list[str]]:
    return sorted(sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1)


def circle_edges(graph: nx.DiGraph, circle: list[str]) -> list[str]:
    return [f"{a} -> {b}" for a, b in sorted(graph.subgraph(circle).edges)]


def upward_imports(graph: nx.DiGraph, layers=LAYERS) -> list[str]:
    out = []
    for a, b in sorted(graph.edges):
        la, lb = layer_of(a, layers), layer_of(b, layers)
        if la is not None and lb is not None and lb > la:
            out.append(f"{a} [{layers[la][0]}] -> {b} [{layers[lb][0]}]")
    return out


def unplaced(graph: nx.DiGraph, layers=LAYERS) -> list[str]:
    return sorted(m for m in graph.nodes if layer_of(m, layers) is None)


# ---------------------------------------------------------------------------
# the package


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    return import_graph(PACKAGE_DIR)


def test_every_module_has_a_layer(graph):
    missing = unplaced(graph)
    assert not missing, f"modules in no layer: {missing}; add their prefix to LAYERS in {__file__}"


def test_no_import_circle(graph):
    found = circles(graph)
    detail = "\n".join(f"circle {i + 1}:\n  " + "\n  ".join(circle_edges(graph, c)) for i, c in enumerate(found))
    assert not found, (
        f"{len(found)} import circle(s) between modules (lazy and TYPE_CHECKING imports count):\n{detail}\n"
        "Move what both sides need to a module below them, or pass it in.")


def test_layers_import_downward(graph):
    ups = upward_imports(graph)
    assert not ups, ("imports from a lower layer into a higher one (the order is in LAYERS):\n  "
                     + "\n  ".join(ups))


def test_core_imports_nothing_outside_core(graph):
    out = [f"{a} -> {b}" for a, b in sorted(graph.edges)
           if a.startswith("penumbra.core") and not b.startswith("penumbra.core") and b not in CORE_MAY_IMPORT]
    assert not out, "the core must stay pure (no drivers, no API):\n  " + "\n  ".join(out)


def test_no_file_too_long():
    long = sorted((n, p) for n, p in ((len(p.read_text(encoding="utf-8").splitlines()), p)
                                      for p in PACKAGE_DIR.rglob("*.py")) if n > MAX_LINES)
    assert not long, (f"files over {MAX_LINES} lines; split them along their seams:\n  "
                      + "\n  ".join(f"{p.relative_to(PACKAGE_DIR.parent)}: {n}" for n, p in long))


# ---------------------------------------------------------------------------
# the checker itself finds what it is for (a package written to a temp dir)


def _write(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "penumbra"
    for rel, text in files.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for d in [pkg, *[p for p in pkg.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    return pkg


def test_checker_finds_a_lazy_circle_and_a_type_checking_one(tmp_path):
    pkg = _write(tmp_path, {
        "core/a.py": "from .b import x\n",
        "core/b.py": "def f():\n    from .a import y\n",
        "core/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import Z\n",
        "core/d.py": "from . import c\n",
        "core/e.py": "from .a import x\n",
    })
    g = import_graph(pkg)
    assert circles(g) == [["penumbra.core.a", "penumbra.core.b"], ["penumbra.core.c", "penumbra.core.d"]]
    assert circle_edges(g, ["penumbra.core.a", "penumbra.core.b"]) == [
        "penumbra.core.a -> penumbra.core.b", "penumbra.core.b -> penumbra.core.a"]


def test_checker_finds_an_upward_import_and_ignores_reexports(tmp_path):
    pkg = _write(tmp_path, {
        "core/ids.py": "",
        "api/functions.py": "from ..core import ids\ndef init():\n    from ..transports import client\n",
        "transports/client.py": "from ..api import functions\n",
        "transports/__init__.py": "from .client import *\n",
        "__init__.py": "from .api import functions\nfrom .transports import client\n",
    })
    g = import_graph(pkg)
    assert upward_imports(g) == ["penumbra.api.functions [api] -> penumbra.transports [transports]",
                                 "penumbra.api.functions [api] -> penumbra.transports.client [transports]"]
    # the root importing its own subpackages, and transports/__init__ its
    # module, are not edges; api.functions <-> transports.client is a circle
    assert circles(g) == [["penumbra.api.functions", "penumbra.transports.client"]]
    assert ("penumbra", "penumbra.api.functions") not in g.edges
