"""What a stage process imports before it works: ``--help`` without torch, no Lightning outside training.

- ``python -m vlmerge.<stage> --help`` of every stage runs with ``torch``, Lightning, torchmetrics, torchvision
  and transformers replaced by packages that record the attempt and refuse to import: the parser comes from the
  torch-free settings models alone, and every field of the stage's settings is a flag in the help;
- the stages that do not train never reach Lightning or torchmetrics: neither in the import graph of their
  whole run path (function-level imports included), nor in ``sys.modules`` after importing all of it, nor
  after real runs of export → import and distance on a tiny checkpoint;
- a training stage's run path imports nothing beyond torch, Lightning (with what Lightning itself imports) and
  the few libraries the run reads its inputs with.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.builders import tiny_model
from vlmerge.bench import startup
from vlmerge.model import Heads
from vlmerge.model.checkpoint import save_model
from workflow.imports import ROOT, STAGES, closure, imported_names, module_file, module_name, stage_code, third_party

TRAINING = ("pretrain", "finetune")
NOT_TRAINING = tuple(s for s in STAGES if s not in TRAINING)
LIGHTNING = ("lightning", "pytorch_lightning", "torchmetrics")
REFUSED = ("torch", "lightning", "pytorch_lightning", "torchmetrics", "torchvision", "transformers", "timm")
# stage → (settings module, settings model) whose fields are its flags; merge and report take plain flags
SETTINGS = {
    "synth": ("vlmerge.synth.config", "SynthSettings"),
    "prepare": ("vlmerge.prepare.config", "PrepareSettings"),
    "vocab": ("vlmerge.vocab.config", "TokenizerSettings"),
    "pretrain": ("vlmerge.pretrain.config", "PretrainSettings"),
    "grams": ("vlmerge.grams.config", "GramsSettings"),
    "distance": ("vlmerge.distance.config", "DistanceSettings"),
    "finetune": ("vlmerge.finetune.config", "FinetuneSettings"),
    "evaluate": ("vlmerge.evaluate.config", "EvaluateSettings"),
    "zeroshot": ("vlmerge.zeroshot.config", "ZeroshotSettings"),
    "import": ("vlmerge.import.config", "ImportSettings"),
    "export": ("vlmerge.export.config", "ExportSettings"),
}
PLAIN_FLAGS = {"merge": ("--method", "--ms", "--out", "--experiment"), "report": ("--results", "--tables", "--plots")}


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A folder of packages named like the heavy libraries that log the attempt and raise: (folder, log)."""
    shim = tmp_path_factory.mktemp("shim")
    log = shim / "imported.log"
    for name in REFUSED:
        (shim / name).mkdir()
        (shim / name / "__init__.py").write_text(
            f"with open({str(log)!r}, 'a') as f:\n    f.write('{name}\\n')\n"
            f"raise ImportError('{name} imported to build a parser')\n"
        )
    return shim, log


def settings_flags(stage: str) -> list[str]:
    if stage not in SETTINGS:
        return list(PLAIN_FLAGS[stage])
    module, name = SETTINGS[stage]
    model = getattr(importlib.import_module(module), name)
    return ["--config", "--experiment", *("--" + field.replace("_", "-") for field in model.model_fields)]


@pytest.mark.parametrize("stage", STAGES)
def test_help_needs_no_torch(stage: str, refusing: tuple[Path, Path]) -> None:
    shim, log = refusing
    log.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{shim}{os.pathsep}{ROOT}"}
    done = subprocess.run(
        [sys.executable, "-m", f"vlmerge.{stage}", "--help"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not log.exists(), f"--help of {stage} tried to import {log.read_text().split()}"
    assert done.stdout.startswith(f"usage: python -m vlmerge.{stage}")
    shown = set(re.findall(r"--[a-z0-9-]+", done.stdout))
    missing = [flag for flag in settings_flags(stage) if flag not in shown]
    assert not missing, f"{stage} --help lacks {missing}"


def test_the_refusing_packages_refuse(refusing: tuple[Path, Path]) -> None:
    """A check of the check: a stage that needs torch to print its help fails under the shim."""
    shim, log = refusing
    log.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{shim}{os.pathsep}{ROOT}"}
    done = subprocess.run([sys.executable, "-c", "import vlmerge.model"], cwd=ROOT, env=env, capture_output=True)
    assert done.returncode != 0 and log.read_text().split() == ["torch"]


@pytest.mark.parametrize("stage", NOT_TRAINING)
def test_run_path_never_reaches_lightning_in_the_import_graph(stage: str) -> None:
    reached = third_party([Path(p) for p in stage_code(stage)])
    assert not set(LIGHTNING) & reached, f"{stage} imports {sorted(set(LIGHTNING) & reached)}"


def run_path(stage: str) -> list[str]:
    """Every module ``python -m vlmerge.<stage>`` may import: the project modules of its closure and the
    third-party names they import anywhere (function level included), in a stable order."""
    files = [Path(p) for p in stage_code(stage)]
    project = [module_name(p) for p in files if p.name != "__main__.py"]
    return [*project, *sorted({n for p in files for n in imported_names(p) if not n.startswith("vlmerge")})]


# Imports a list of names; ``from module import attribute`` also names ``module.attribute``, which is skipped when
# ``module`` has that attribute (anything else that fails to import is an error).
_IMPORTER = """
import importlib, json, sys

def load(name):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        parent, _, attribute = name.rpartition(".")
        if not parent or not hasattr(importlib.import_module(parent), attribute):
            raise
"""
_IMPORT_ALL = (
    _IMPORTER
    + """
found = {}
for stage, names in json.loads(sys.argv[1]).items():
    for name in names:
        load(name)
    found[stage] = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2].split(",")))
print(json.dumps(found))
"""
)


def test_run_paths_of_non_training_stages_load_no_lightning() -> None:
    """Import the whole run path of every non-training stage, one stage after another, in one process: after
    each, neither Lightning nor torchmetrics is loaded (the first stage that loads one is named)."""
    paths = {stage: run_path(stage) for stage in NOT_TRAINING}
    assert any("transformers" in names for names in paths.values())  # function-level imports are part of it
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, json.dumps(paths), ",".join(LIGHTNING)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert list(found) == list(NOT_TRAINING)
    loaded = {stage: names for stage, names in found.items() if names}
    assert not loaded, f"after importing these stages' run paths: {loaded}"


_REAL_RUNS = """
import importlib, json, sys
ckpt, ms, seed, work = sys.argv[1:5]
TINY = ["--preset", "tiny", "--overrides", "num_layers=3,dim=32,num_heads=2,mlp_dim=64"]
runs = [
    ("export", ["--ckpt", ckpt, "--out", work + "/up.ckpt", "--format", "vl-merging"]),
    ("import", ["--ckpt", work + "/up.ckpt", "--out", work + "/back.safetensors", *TINY]),
    ("distance", ["--ms", ms, "--seed", seed, "--out", work + "/distance.json"]),
]
found, lightning = {}, {"lightning", "pytorch_lightning", "torchmetrics"}
for stage, argv in runs:
    code = importlib.import_module(f"vlmerge.{stage}.cli").main(argv)
    found[stage] = [code, sorted({m.split(".")[0] for m in sys.modules} & lightning)]
print(json.dumps(found))
"""


def test_export_import_and_distance_runs_load_no_lightning(tmp_path: Path) -> None:
    """Real runs on tiny checkpoints, in one process: each exits 0 and Lightning is never loaded."""
    small: dict[str, Any] = dict(num_layers=3, dim=32, num_heads=2, mlp_dim=64)
    ckpt, ms, seed = tmp_path / "ma.safetensors", tmp_path / "ms.safetensors", tmp_path / "seed.safetensors"
    save_model(ckpt, tiny_model(50, heads=Heads.pretraining(), **small), steps=3)
    save_model(ms, tiny_model(50, sharing="modality_specific", seed=1, **small), steps=3)
    save_model(seed, tiny_model(50, seed=2, **small), steps=3)
    done = subprocess.run(
        [sys.executable, "-c", _REAL_RUNS, str(ckpt), str(ms), str(seed), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert found == {stage: [0, []] for stage in ("export", "import", "distance")}, done.stderr[-3000:]
    assert (tmp_path / "back.safetensors").is_file() and (tmp_path / "distance.json").is_file()


# Top-level packages a training run may import beyond what `import torch, lightning.pytorch` loads: the
# project, its settings library, and what the run reads its tables and checkpoints with.
TRAINING_EXTRA = {"vlmerge", "pydantic", "pydantic_core", "annotated_types", "typing_inspection", "pyarrow"}
TRAINING_EXTRA |= {"safetensors"}

_TRAINING_EXTRA = (
    _IMPORTER
    + """
import torch, lightning.pytorch
floor = {m.split(".")[0] for m in sys.modules}
found = {}
for stage, names in json.loads(sys.argv[1]).items():
    for name in names:
        load(name)
    found[stage] = sorted({m.split(".")[0] for m in sys.modules} - floor)
print(json.dumps(found))
"""
)


@pytest.mark.slow
def test_training_run_paths_add_nothing_to_torch_and_lightning() -> None:
    """Import torch and Lightning, then the whole run path of pretrain and finetune: the only new top-level
    packages are the project's and the few ``TRAINING_EXTRA`` libraries (no timm, pandas, ...)."""
    paths = {stage: run_path(stage) for stage in TRAINING}
    done = subprocess.run(
        [sys.executable, "-c", _TRAINING_EXTRA, json.dumps(paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    extra = {
        stage: [m for m in names if m not in TRAINING_EXTRA and not m.startswith("_")] for stage, names in found.items()
    }
    assert extra == {stage: [] for stage in TRAINING}


def test_the_run_path_holds_function_level_imports() -> None:
    """A check of the checker: evaluate's run path reaches the tokenizer loader and the transformers it imports
    inside a function, and a stage's module list starts with its own cli."""
    names = run_path("evaluate")
    assert "vlmerge.data.tokenizer" in names and "transformers" in names
    entry = module_file("vlmerge.evaluate.__main__")
    assert entry is not None and module_file("vlmerge.evaluate.cli") in closure(entry)


def test_the_benchmark_times_the_same_run_paths() -> None:
    """``python -m vlmerge.bench startup`` reads each stage's run path with its own walker: the same lists."""
    assert startup.STAGES == STAGES
    assert {s: startup.run_path(s) for s in STAGES} == {s: run_path(s) for s in STAGES}
