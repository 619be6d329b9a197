"""The one rule of ``penumbra/core``: no I/O, no clocks, no randomness.

Every module under ``penumbra/core`` is parsed (not imported) and its AST is
checked: no import of a forbidden module anywhere (top level, inside a
function, ``import x``, ``import x.y``, ``from x import y``, ``from x.y import
z``), and no call that reads a clock.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import penumbra.core

CORE = Path(penumbra.core.__file__).parent
FORBIDDEN = {
    "trio", "simpy", "socket", "asyncio", "threading", "multiprocessing",
    "time", "random", "subprocess", "selectors",
}
CLOCK_CALLS = {
    ("time", "time"), ("time", "monotonic"), ("time", "perf_counter"),
    ("time", "time_ns"), ("time", "monotonic_ns"), ("time", "perf_counter_ns"),
    ("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"), ("date", "today"),
}


def core_files() -> list[Path]:
    files = sorted(CORE.rglob("*.py"))
    assert len(files) >= 10, f"expected the core modules under {CORE}, found {files}"
    return files


def forbidden_imports(tree: ast.AST) -> list[tuple[int, str]]:
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FORBIDDEN:
                    bad.append((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.split(".")[0] in FORBIDDEN:
                bad.append((node.lineno, f"from {node.module} import ..."))
        elif isinstance(node, ast.Call):
            # __import__("time") / importlib.import_module("time")
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if name in ("__import__", "import_module") and node.args:
                a = node.args[0]
                if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.split(".")[0] in FORBIDDEN:
                    bad.append((node.lineno, f"{name}({a.value!r})"))
    return bad


def clock_calls(tree: ast.AST) -> list[tuple[int, str]]:
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            attr = node.func.attr
            base = node.func.value
            base_name = (
                base.id if isinstance(base, ast.Name)
                else base.attr if isinstance(base, ast.Attribute) else ""
            )
            if (base_name, attr) in CLOCK_CALLS:
                bad.append((node.lineno, f"{base_name}.{attr}()"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            # from time import monotonic; monotonic()
            if node.func.id in {"perf_counter", "monotonic", "time_ns", "perf_counter_ns", "monotonic_ns"}:
                bad.append((node.lineno, f"{node.func.id}()"))
    return bad


@pytest.mark.parametrize("path", core_files(), ids=lambda p: p.name)
def test_core_module_is_pure(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    problems = forbidden_imports(tree) + clock_calls(tree)
    assert not problems, (
        f"{path.relative_to(CORE.parent.parent)} breaks the core's no-I/O rule: "
        + "; ".join(f"line {n}: {what}" for n, what in problems)
        + ". Time must come in as `now`, randomness as a seeded Rng argument."
    )


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "import os, socket",
        "import multiprocessing.pool",
        "from asyncio import sleep",
        "from threading import Lock",
        "def f():\n    import random\n    return random.random()",
        "class C:\n    def m(self):\n        from subprocess import run",
        "import selectors as s",
        "m = __import__('trio')",
        "import importlib\nimportlib.import_module('simpy')",
    ],
)
def test_checker_catches_forbidden_imports(source: str) -> None:
    assert forbidden_imports(ast.parse(source))


@pytest.mark.parametrize(
    "source",
    [
        "import t\nt.time.time()",
        "time.monotonic()",
        "x = time.perf_counter()",
        "from datetime import datetime\ndatetime.now()",
        "import datetime\ndatetime.datetime.utcnow()",
        "from time import perf_counter\nperf_counter()",
    ],
)
def test_checker_catches_clock_reads(source: str) -> None:
    assert clock_calls(ast.parse(source))


@pytest.mark.parametrize(
    "source",
    ["import hashlib", "from .ids import TaskId", "from collections import deque", "import networkx as nx",
     "now = 1.0\nx = now + 2", "from .timer import x"],
)
def test_checker_allows_pure_code(source: str) -> None:
    tree = ast.parse(source)
    assert not forbidden_imports(tree) and not clock_calls(tree)
