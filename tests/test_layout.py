"""The package's layering, read from the import graph (``ast``, nothing imported) and checked at run time.

- stages (``vlmerge/<stage>/``) sit on top; the libraries below them never import a stage;
- no import cycle between packages;
- ``model``, ``merging``, ``objectives``, ``metrics`` and ``tasks`` never reach Lightning, however indirectly;
- the catalogue, the settings models and the workflow's config never reach torch, so ``snakemake -n``
  of the paper's DAG starts without it (checked for real with a ``torch`` that refuses to import);
- every project module a stage loads is among the code inputs the workflow declares for its rule.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builders import paper_site
from workflow.imports import LIBRARIES, ROOT, STAGES, closure, module_name, project_imports, stage_code, third_party

NO_LIGHTNING = ("model", "merging", "objectives", "metrics", "tasks")
SOURCES = sorted((ROOT / "vlmerge").rglob("*.py"))


def package_of(path: Path) -> str:
    """``vlmerge/merging/regmean.py`` → ``merging``; ``vlmerge/errors.py`` → ``errors``."""
    parts = module_name(path).split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in SOURCES:
        here = package_of(path)
        graph.setdefault(here, set()).update(package_of(p) for p in project_imports(path) if package_of(p) != here)
    graph.pop("vlmerge", None)
    for targets in graph.values():
        targets.discard("vlmerge")  # the root __init__ only holds the version
    return graph


def test_every_package_is_a_stage_a_library_or_the_benchmarks() -> None:
    assert set(package_graph()) == {*STAGES, *LIBRARIES, "bench"}


def test_libraries_never_import_a_stage() -> None:
    graph = package_graph()
    offending = {lib: sorted(graph[lib] & {*STAGES, "bench"}) for lib in LIBRARIES if graph[lib] & {*STAGES, "bench"}}
    assert not offending


def test_no_import_cycle_between_packages() -> None:
    graph, done, path = package_graph(), set(), []

    def visit(node: str) -> None:
        if node in path:
            raise AssertionError(f"import cycle: {' -> '.join(path[path.index(node) :] + [node])}")
        if node in done:
            return
        path.append(node)
        for target in sorted(graph.get(node, ())):
            visit(target)
        path.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)


@pytest.mark.parametrize("package", NO_LIGHTNING)
def test_plain_libraries_never_reach_lightning(package: str) -> None:
    for path in (ROOT / "vlmerge" / package).rglob("*.py"):
        reached = closure(path)
        assert not {"lightning", "pytorch_lightning", "torchmetrics"} & third_party(reached), path


def test_catalogue_and_settings_never_reach_torch() -> None:
    light = [
        *(ROOT / "vlmerge" / "catalog").rglob("*.py"),
        *(p for s in STAGES if (p := ROOT / "vlmerge" / s / "config.py").exists()),
        ROOT / "vlmerge" / "runtime" / "settings.py",
        ROOT / "workflow" / "config.py",
    ]
    for path in light:
        assert "torch" not in third_party(closure(path, ROOT), ROOT), path


def test_the_import_graph_sees_a_known_chain() -> None:
    """A check of the checker: the merge stage reaches the atomic writer through three modules."""
    assert str(ROOT / "vlmerge/runtime/atomic.py") in stage_code("merge")
    assert str(ROOT / "vlmerge/merging/regmean.py") in stage_code("merge")
    assert not any("/finetune/" in p for p in stage_code("merge"))


@pytest.mark.parametrize("stage", STAGES)
def test_modules_a_stage_loads_are_its_declared_code(stage: str) -> None:
    """Run ``python -m vlmerge.<stage> --help`` and list the project modules it loaded: each must be among the
    files the rule declares (the static closure may hold more: function-level imports that --help skips)."""
    script = (
        "import runpy, sys\nsys.argv = ['x', '--help']\ntry:\n"
        f"    runpy.run_module('vlmerge.{stage}', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('\\n'.join(sorted({m.__file__ for n, m in list(sys.modules.items())"
        " if n.startswith('vlmerge') and getattr(m, '__file__', None)})), file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    loaded = {line for line in done.stderr.splitlines() if line.startswith(str(ROOT))}
    assert loaded and str(ROOT / "vlmerge" / stage / "cli.py") in loaded, done.stderr[-2000:]
    assert loaded <= set(stage_code(stage))


@pytest.mark.slow
def test_paper_dry_run_never_imports_torch(tmp_path: Path) -> None:
    """``snakemake -n`` of the paper profile with a ``torch`` that raises on import: planning must not need it."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('torch imported while planning')\n")
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    site = paper_site(tmp_path)  # the paper overlay names site paths (data, BEiT, vocabulary) absent here
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--profile",
            "profiles/slurm",
            "-d",
            str(tmp_path / "w"),
            "-s",
            str(ROOT / "Snakefile"),
            "results/vqa/regmean.json",
            "--configfile",
            str(ROOT / "config.yaml"),
            str(ROOT / "profiles/slurm/paper.yaml"),
            str(site),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "pretrain" in done.stdout
