"""Start-up cost of every stage: seconds to print ``--help`` and to import its run path, against ``import torch``.

A stage process pays its imports before it does any work, and the workflow starts one per job. Two figures per
stage, each the best of a few child processes:

- ``--help``: ``python -m vlmerge.<stage> --help``; built from the torch-free settings, it should cost a small
  fraction of the floor;
- run path: a child that imports every module ``python -m vlmerge.<stage>`` may import, i.e. the project modules
  of its import closure and every third-party module they name, function-level imports included (read with
  :mod:`ast`, nothing imported here): what a real run loads before its first step, as an upper bound, since
  every branch counts (prepare's includes torch, which only the metrics package's retrieval functions import;
  evaluate's, zeroshot's and grams' include torchvision and transformers, which only the training transforms
  and the training tokenizer loader import: a real run of these stages loads neither, nor pandas, as
  tests/test_light_path.py checks).

The floor is ``python -c "import torch"`` measured in the same run; figures are printed as ratios to it. A
training stage's run path is torch + Lightning (which itself loads torchmetrics, torchvision and
transformers), so its ratio is well above 1; the others stay near it or below.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from vlmerge.bench.measure import python_module, run_measured
from vlmerge.catalog.names import STAGE_NAMES

PACKAGE = Path(__file__).resolve().parents[1]  # vlmerge/
STAGES = STAGE_NAMES

# Imports a list of names; ``from module import attribute`` also names ``module.attribute``, skipped when
# ``module`` has that attribute.
_IMPORT_ALL = """
import importlib, sys
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        parent, _, attribute = name.rpartition(".")
        if not parent or not hasattr(importlib.import_module(parent), attribute):
            raise
"""


def _module_file(name: str) -> Path | None:
    base = PACKAGE.parent.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Dotted names ``path`` imports anywhere but under ``if TYPE_CHECKING:`` (relative ones resolved)."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names: set[str] = set()
    stack: list[ast.AST] = [ast.parse(path.read_text(), str(path))]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))
    return names


def run_path(stage: str) -> list[str]:
    """The project modules of ``python -m vlmerge.<stage>``'s import closure, then the third-party names they
    import (its ``__main__`` left out: importing it would run the stage)."""
    todo, seen, third = [PACKAGE / stage / "__main__.py"], set(), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            if name.split(".")[0] != PACKAGE.name:
                third.add(name)
                continue
            parts = name.split(".")
            todo.extend(f for i in range(len(parts)) if (f := _module_file(".".join(parts[: i + 1]))) is not None)
    project = sorted(_module_name(p) for p in seen if p.name != "__main__.py")
    return [*project, *sorted(third)]


def _best(argv: list[str], repeats: int) -> float:
    return min(run_measured(argv).seconds for _ in range(repeats))


def run(repeats: int = 3) -> list[dict[str, float | str]]:
    floor = _best([sys.executable, "-c", "import torch"], repeats)
    rows: list[dict[str, float | str]] = []
    for stage in STAGES:
        help_s = _best(python_module(f"vlmerge.{stage}", "--help"), repeats)
        import_s = _best([sys.executable, "-c", _IMPORT_ALL, *run_path(stage)], repeats)
        rows.append(
            {
                "stage": stage,
                "help_s": help_s,
                "help_vs_torch": help_s / floor,
                "run_path_s": import_s,
                "run_path_vs_torch": import_s / floor,
            }
        )
    print(f"\n## startup: seconds to --help and to import the run path (best of {repeats}), against `import torch`")
    print(f"floor: python -c 'import torch' {floor:.2f} s")
    print(f"{'stage':>10} {'--help s':>9} {'x torch':>8} {'run path s':>11} {'x torch':>8}")
    for r in rows:
        print(
            f"{r['stage']:>10} {r['help_s']:>9.2f} {r['help_vs_torch']:>8.2f}"
            f" {r['run_path_s']:>11.2f} {r['run_path_vs_torch']:>8.2f}"
        )
    return rows
