"""``zcoin.consensus`` stays pure: it imports no other part of zcoin and no I/O.

The rules must give the same answer on every node, so they may not read files,
sockets, clocks or randomness, and every other layer depends on them, never the
reverse (STYLE.md, "Dependencies point one way").  This reads the source of
each module with ``ast`` (imports inside functions included) rather than
importing it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CONSENSUS_DIR = Path(__file__).parents[1] / "zcoin" / "consensus"
CONSENSUS_PACKAGE = "zcoin.consensus"

# Modules that do I/O, keep time, spawn work or draw randomness.
FORBIDDEN_MODULES = frozenset({
    "zmq", "sqlite3", "socket", "loguru", "click", "threading", "asyncio", "subprocess", "multiprocessing",
    "os", "time", "pathlib", "io", "random",
    "shutil", "tempfile", "signal", "select", "selectors", "concurrent", "ssl", "http", "urllib",
    "logging", "datetime", "secrets", "importlib",
})
# Builtins that reach the outside world or import by name.
FORBIDDEN_CALLS = frozenset({"open", "print", "input", "__import__", "exec", "eval", "breakpoint"})


def imported_modules(tree: ast.AST, module_name: str) -> list[str]:
    """Absolute names of every module ``module_name``'s source imports (relative imports resolved)."""
    package_parts = module_name.split(".")[:-1]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.append(prefix)
            if prefix == "zcoin" or (node.level and not node.module):  # `from zcoin import wire`
                names.extend(f"{prefix}.{alias.name}" for alias in node.names)
    return names


def purity_violations(source: str, module_name: str) -> list[str]:
    """What in ``source`` breaks the purity rule, one line per violation."""
    tree = ast.parse(source)
    problems = []
    for name in imported_modules(tree, module_name):
        top = name.split(".")[0]
        if top in FORBIDDEN_MODULES:
            problems.append(f"{module_name} imports {name} (I/O, clock or randomness)")
        elif top == "zcoin" and name != "zcoin" and name != CONSENSUS_PACKAGE \
                and not name.startswith(CONSENSUS_PACKAGE + "."):
            problems.append(f"{module_name} imports {name} (outside {CONSENSUS_PACKAGE})")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
            problems.append(f"{module_name} calls {node.func.id}() at line {node.lineno}")
    return problems


def consensus_modules() -> list[tuple[str, Path]]:
    """``(dotted name, path)`` of every module; a package keeps ``.__init__`` so relative imports resolve."""
    return [(".".join((CONSENSUS_PACKAGE, *path.relative_to(CONSENSUS_DIR).with_suffix("").parts)), path)
            for path in sorted(CONSENSUS_DIR.rglob("*.py"))]


def test_consensus_package_has_its_modules():
    names = {name for name, _ in consensus_modules()}
    expected = {"__init__", "crypto", "errors", "primitives", "pow", "params", "validation", "builders"}
    assert {f"{CONSENSUS_PACKAGE}.{m}" for m in expected} <= names


@pytest.mark.parametrize(("module_name", "path"), consensus_modules(), ids=[n for n, _ in consensus_modules()])
def test_consensus_module_imports_nothing_of_zcoin_outside_consensus_and_no_io(module_name, path):
    assert purity_violations(path.read_text(), module_name) == []


@pytest.mark.parametrize(("source", "flagged"), [
    ("import zmq", True),
    ("import os.path", True),
    ("from time import monotonic", True),
    ("def f():\n    import sqlite3", True),
    ("from zcoin import wire", True),
    ("from zcoin.storage import Store", True),
    ("import zcoin.cli", True),
    ("from .. import mempool", True),
    ("from ..node import Node", True),
    ("open('chain.dat')", True),
    ("print('hello')", True),
    ("from zcoin import consensus", False),
    ("from zcoin.consensus.pow import check_pow", False),
    ("from . import errors", False),
    ("from .primitives import Block", False),
    ("import hashlib, struct\nimport msgpack", False),
    ("from dataclasses import dataclass", False),
], ids=lambda value: value if isinstance(value, bool) else value.replace("\n", " ").replace(" ", "_")[:40])
def test_purity_check_flags_what_it_should(source, flagged):
    assert bool(purity_violations(source, f"{CONSENSUS_PACKAGE}.example")) is flagged


def test_purity_check_resolves_relative_imports_of_the_package_itself():
    package_init = f"{CONSENSUS_PACKAGE}.__init__"
    assert purity_violations("from .crypto import sha256d", package_init) == []
    assert purity_violations("from .. import wire", package_init) != []
