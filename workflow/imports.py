"""The project modules a stage imports, read from the source with :mod:`ast` (nothing is imported).

Each rule declares the files of its stage's import closure as inputs, so editing any module that
``python -m vlmerge.<stage>`` can run reruns exactly the jobs of the stages that import it, and nothing
else. Every ``import`` statement counts wherever it stands (a function-level import runs when the
function is called), except under ``if TYPE_CHECKING:``, which never runs. Importing ``a.b.c`` runs
the ``__init__.py`` of ``a`` and ``a.b`` too, so those are part of the closure.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from vlmerge.catalog.names import STAGE_NAMES

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "vlmerge"
# The package's rooms: stages (``python -m vlmerge.<stage>``) on top, libraries below that never import a
# stage (tests/test_layout.py checks both from the import graph).
STAGES = STAGE_NAMES
LIBRARIES = (
    "catalog",
    "data",
    "errors",
    "files",
    "merging",
    "metrics",
    "model",
    "objectives",
    "runtime",
    "tasks",
    "train",
)


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The source file of a dotted project module name, or None if it names no module."""
    base = root / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement of a module, skipping ``if TYPE_CHECKING:`` bodies."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imported_names(path: Path, root: Path = ROOT) -> set[str]:
    """Dotted names of every module ``path`` imports (project and third-party), with relative ones resolved."""
    names: set[str] = set()
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
        names.add(base)
        names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return names


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@cache
def project_imports(path: Path, root: Path = ROOT) -> frozenset[Path]:
    """Project files that importing ``path`` runs directly (its imports and their parent packages)."""
    files = set()
    for name in imported_names(path, root):
        if name.split(".")[0] != PACKAGE:
            continue
        for prefix in _with_parents(name):
            found = module_file(prefix, root)
            if found is not None:
                files.add(found)
    return frozenset(files)


def closure(entry: Path, root: Path = ROOT) -> list[Path]:
    """``entry`` and every project file it imports, transitively (sorted)."""
    seen: set[Path] = set()
    todo = [entry, *(module_file(p, root) for p in _with_parents(module_name(entry, root))[:-1])]
    while todo:
        path = todo.pop()
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(project_imports(path, root))
    return sorted(seen)


def stage_code(stage: str, root: Path = ROOT) -> list[str]:
    """The source files ``python -m vlmerge.<stage>`` may run (absolute paths, sorted)."""
    entry = module_file(f"{PACKAGE}.{stage}.__main__", root)
    if stage not in STAGES or entry is None:
        raise ValueError(f"{PACKAGE}.{stage} has no __main__ module: not a stage")
    return [str(p) for p in closure(entry, root)]


def third_party(paths: list[Path], root: Path = ROOT) -> set[str]:
    """Top-level names of the non-project packages that ``paths`` import (for layering checks)."""
    return {n.split(".")[0] for p in paths for n in imported_names(p, root) if n and n.split(".")[0] != PACKAGE}
