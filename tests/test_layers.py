"""Imports point inward: the layer arrows of DESIGN.md and STYLE.md, checked.

Every module under src/postoffice is parsed (never imported), its imports resolved,
relative ones included, and each import of a postoffice module checked against the
table below.  Imports under ``if TYPE_CHECKING:`` count too: a type-only arrow is still
an arrow.  A new top-level module or package needs a row in LAYERS before it may exist.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "postoffice"
SRC = Path(__file__).resolve().parents[1] / "src"

_INWARD = frozenset({"errors", "config", "amqp", "store", "core", "server"})

# layer -> the other postoffice layers it may import; a layer may always import itself.
# "__init__" is the package itself (`from postoffice import __version__`): the public
# surface, which may re-export outer layers, so the inner layers never import it.
LAYERS: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "config": frozenset(),
    "amqp": frozenset({"errors"}),
    "store": frozenset({"errors", "config"}),
    "core": frozenset({"errors", "config", "store"}),
    "server": frozenset({"errors", "config", "amqp", "store", "core", "__init__"}),
    "http": _INWARD | {"__init__"},
    "client": _INWARD | {"__init__"},
    "testing": _INWARD | {"http", "client", "__init__"},
    "bench": frozenset({"errors", "amqp", "__init__"}),
    "cli": _INWARD | {"http", "client", "bench", "__init__"},
    "__main__": frozenset({"cli"}),
    "__init__": _INWARD | {"http", "client"},
}

# Layers that may import nothing outside the standard library but postoffice itself.
STDLIB_ONLY = frozenset({"errors", "config", "amqp", "store", "core"})


def layer_of(module: str) -> str:
    """``postoffice.core.queue`` -> ``core``; the bare package is ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Every (line, absolute module name) that ``module`` imports."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                # `from postoffice import errors` imports postoffice.errors, but
                # `from postoffice import __version__` imports postoffice itself.
                if alias.name == "*" or (source == PACKAGE and alias.name not in LAYERS):
                    found.append((node.lineno, source))
                else:
                    found.append((node.lineno, f"{source}.{alias.name}"))
    return sorted(found)


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """The layer rules that ``source``, the text of ``module``, breaks."""
    layer = layer_of(module)
    if layer not in LAYERS:
        return [f"{module}: layer {layer!r} has no row in LAYERS in tests/test_layers.py"]
    allowed = LAYERS[layer] | {layer}
    problems = []
    for line, target in imported_modules(ast.parse(source), module, is_package):
        top = target.partition(".")[0]
        if top == PACKAGE:
            target_layer = layer_of(target)
            if target_layer not in allowed:
                problems.append(
                    f"{module} (line {line}) imports {target}: layer {layer!r} may import "
                    f"only {sorted(allowed)}, not {target_layer!r}"
                )
        elif layer in STDLIB_ONLY and top not in sys.stdlib_module_names:
            problems.append(
                f"{module} (line {line}) imports {target}: layer {layer!r} may import "
                "only the standard library and postoffice"
            )
    return problems


def modules() -> list[tuple[str, Path, bool]]:
    found = []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found.append((".".join(parts), path, is_package))
    return found


def test_imports_point_inward() -> None:
    problems = []
    for module, path, is_package in modules():
        source = path.read_text(encoding="utf-8")
        problems.extend(violations(source, module, is_package))
    assert not problems, "layer rules broken:\n  " + "\n  ".join(problems)


def test_the_checker_sees_every_module() -> None:
    names = {module for module, _, _ in modules()}
    assert {"postoffice", "postoffice.errors", "postoffice.config", "postoffice.cli"} <= names


def test_the_checker_catches_a_violation() -> None:
    source = (
        "import json\n"
        "from .. import errors, config\n"
        "from ..store import segments\n"
        "from . import routing\n"
        "from ..amqp import frames\n"
        "from postoffice.server import connection\n"
        "import uvloop\n"
    )
    problems = violations(source, "postoffice.core.queue")
    assert problems == [
        "postoffice.core.queue (line 5) imports postoffice.amqp.frames: layer 'core' may import "
        "only ['config', 'core', 'errors', 'store'], not 'amqp'",
        "postoffice.core.queue (line 6) imports postoffice.server.connection: layer 'core' "
        "may import only ['config', 'core', 'errors', 'store'], not 'server'",
        "postoffice.core.queue (line 7) imports uvloop: layer 'core' may import only the "
        "standard library and postoffice",
    ]


def test_relative_imports_resolve_from_a_package_init() -> None:
    # In amqp/__init__.py, `..` is postoffice itself.
    assert violations("from .. import errors\n", "postoffice.amqp", is_package=True) == []
    assert violations("from ..core import x\n", "postoffice.amqp", is_package=True) != []
    # In errors.py, `.` is postoffice, whose __init__ may import anything.
    assert violations("from . import __version__\n", "postoffice.errors") != []
    assert violations("from . import config\n", "postoffice.errors") != []
