"""The package's layout: the import graph is a DAG in the documented direction, and no function
is longer than 80 code lines (STYLE.md, DESIGN.md "Architecture").

Both checks read the source with ``ast`` (nothing is imported), so they are fast and see imports
inside functions too.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recsampled"
MAX_CODE_LINES = 80

#: Layer -> the layers it must never import (DESIGN.md: core <- data / evaluation / index <- runs
#: <- cli). "core" is samplers, losses, tasks, models and layers.
FORBIDDEN = {
    "core": {"data", "evaluation", "index", "training", "runs", "config", "cli", "serving"},
    "data": {"evaluation", "index", "training", "runs", "config", "cli", "serving"},
    "evaluation": {"index", "training", "runs", "config", "cli", "serving"},
    "index": {"training", "runs", "config", "cli", "evaluation"},
    "training": {"index", "runs", "config", "cli", "serving"},
    "config": {"index", "training", "runs", "cli", "serving"},
    "runs": {"cli", "serving"},
    "serving": {"runs", "training", "config", "cli"},
}
CORE = {"samplers", "losses", "tasks", "models", "layers"}


def _layer(module: str) -> str | None:
    """``recsampled.index.build`` -> ``"index"``; private top-level modules -> None."""
    parts = module.split(".")
    if parts[0] != "recsampled" or len(parts) < 2:
        return None
    name = parts[1]
    if name in CORE:
        return "core"
    return name if not name.startswith("_") else None


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every ``recsampled...`` module ``path`` imports (relative imports resolved; imports under
    ``if TYPE_CHECKING:`` are for type checkers only and do not count)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            node.body = []
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path.parent / "x")
    package = package.rsplit(".", 1)[0] if path.name != "__init__.py" else package
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("recsampled")}


def _edges() -> dict[tuple[str, str], list[str]]:
    """(layer, imported layer) -> the files with such an import."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _layer(_module_name(path))
        if source is None:
            continue
        for target in {_layer(name) for name in _imports(path)} - {None, source}:
            edges[(source, target)].append(str(path.relative_to(PACKAGE.parent)))
    return edges


def test_no_layer_imports_a_layer_above_it():
    bad = [
        f"{source} imports {target}: {', '.join(files)}"
        for (source, target), files in _edges().items()
        if target in FORBIDDEN.get(source, set())
    ]
    assert not bad, "\n".join(bad)


def test_index_imports_nothing_of_runs_training_or_config():
    imported = set()
    for path in (PACKAGE / "index").rglob("*.py"):
        imported |= {name for name in _imports(path) if _layer(name) in ("runs", "training")}
        imported |= {name for name in _imports(path) if name.startswith("recsampled.config")}
    assert imported == set()


def test_the_layers_form_a_dag():
    graph: dict[str, set[str]] = defaultdict(set)
    for source, target in _edges():
        graph[source].add(target)
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"import cycle: {' -> '.join([*trail, node])}"
        state[node] = "open"
        for child in sorted(graph[node]):
            visit(child, [*trail, node])
        state[node] = "done"

    for node in sorted(graph):
        visit(node, [])


def _code_lines(node: ast.AST, lines: list[str]) -> int:
    """Non-blank, non-comment lines of a function, its docstring excluded."""
    span = range(node.lineno - 1, node.end_lineno)
    skip: set[int] = set()
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        if isinstance(body[0].value.value, str):
            skip = set(range(body[0].lineno - 1, body[0].end_lineno))
    return sum(
        1
        for i in span
        if i not in skip and lines[i].strip() and not lines[i].strip().startswith("#")
    )


def _functions() -> list[tuple[int, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"
                found.append((_code_lines(node, lines), where))
    return found


def test_no_function_is_longer_than_80_code_lines():
    long = sorted((n, where) for n, where in _functions() if n > MAX_CODE_LINES)
    assert not long, f"functions over {MAX_CODE_LINES} code lines: {long}"


@pytest.mark.parametrize("subpackage, most", [("index", 16), ("training", 8)])
def test_subpackages_export_what_users_call(subpackage, most):
    tree = ast.parse((PACKAGE / subpackage / "__init__.py").read_text(encoding="utf-8"))
    (names,) = [
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__"
    ]
    assert 0 < len(names) <= most and names == sorted(names)
