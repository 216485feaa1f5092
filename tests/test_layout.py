"""The layers: each module imports only its own layer or lower ones; only __main__ imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import qtts_eval

PACKAGE = Path(qtts_eval.__file__).parent

# Lowest first (README "Layout"). Keys are top-level modules or subpackages of qtts_eval.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"units", "errors"}),
    frozenset({"environment", "budget", "fixtures", "checkpoints", "comparability", "official"}),
    frozenset({"pipelines"}),
    frozenset({"metrics"}),
    frozenset({"measure", "results", "summary"}),
    frozenset({"wire", "dialects"}),
    frozenset({"bench", "cluster"}),
    frozenset({"parity", "candidates", "caches"}),
    frozenset({"gates", "history", "pytest_plugin", "report", "compare", "scoreboard"}),
    frozenset({"cli", "__main__"}),
)
LAYER_OF = {name: index for index, names in enumerate(LAYERS) for name in names}


def _top(module: str) -> str | None:
    """The top-level part of a qtts_eval module name ("qtts_eval.wire.client" -> "wire")."""
    parts = module.split(".")
    return parts[1] if parts[0] == "qtts_eval" and len(parts) > 1 else None


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {top for name in found if (top := _top(name)) is not None and top in LAYER_OF}


def test_every_module_has_a_layer() -> None:
    tops = {path.relative_to(PACKAGE).parts[0].removesuffix(".py") for path in PACKAGE.rglob("*.py")}
    assert tops - {"__init__"} <= set(LAYER_OF), sorted(tops - {"__init__"} - set(LAYER_OF))


def test_no_module_imports_a_higher_layer() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        own = relative.parts[0].removesuffix(".py")
        if own == "__init__":
            continue
        for imported in _imports(path):
            if LAYER_OF[imported] > LAYER_OF[own] or (imported == "cli" and own not in ("cli", "__main__")):
                wrong.append(f"{relative} imports {imported}")
    assert not wrong, wrong
