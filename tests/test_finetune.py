"""``python -m vlmerge.finetune``: a short run per task, selection, sharing from the sidecar, resume, errors,
and validation metrics on two DDP ranks equal to a one-process evaluation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_tasks import build_task_data, tiny_model
from vlmerge.data.collate import BatchCollator
from vlmerge.data.tokenizer import load_tokenizer
from vlmerge.data.transforms import eval_transform
from vlmerge.finetune.cli import main
from vlmerge.model import Heads
from vlmerge.model.checkpoint import load_model, read_meta, save_model
from vlmerge.runtime import sha256_file
from vlmerge.tasks import get_task
from vlmerge.tasks.evaluation import evaluation_rows
from vlmerge.tasks.lineage import weights_sha256

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return build_task_data(tmp_path_factory.mktemp("finetune-data"))


@pytest.fixture(scope="module")
def inits(data, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A pre-trained-shaped checkpoint per sharing layout (all pre-training heads, a lineage record)."""
    root, vocab = tmp_path_factory.mktemp("inits"), len(load_tokenizer(data[1]))
    paths = {}
    for sharing in ("shared", "modality_specific"):
        paths[sharing] = root / f"{sharing}.safetensors"
        save_model(paths[sharing], tiny_model(vocab, sharing, Heads.pretraining(), drop_path=0.1), steps=7,
                   extra={"stage": "pretrain", "init": "scratch"})
    return paths


def finetune_args(data, task: str, init: Path, root: Path, *extra: str) -> list[str]:
    arrow, tokenizer, _ = data
    return ["--task", task, "--init", str(init), "--arrow", str(arrow), "--tokenizer", str(tokenizer),
            "--out", str(root / "out.safetensors"), "--work-dir", str(root / "work"), "--steps", "2",
            "--batch-size", "4", "--global-batch", "4", "--val-every", "1", "--image-size", "32",
            "--num-workers", "0", "--lr", "1e-3", *extra]


@pytest.fixture(scope="module")
def vqa_run(data, inits, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    root = tmp_path_factory.mktemp("vqa-run")
    # Resamples the relative positions from 32 to 48 px; accumulates two micro-batches per step.
    args = finetune_args(data, "vqa", inits["shared"], root, "--image-size", "48", "--global-batch", "8")
    assert main(args) == 0
    return args, root


def check_run(task_name: str, init: Path, root: Path, steps: tuple[int, ...] = (1, 2)) -> None:
    out, task = root / "out.safetensors", get_task(task_name)
    model, meta = load_model(out)
    init_meta = read_meta(init)
    assert meta.sharing is init_meta.sharing  # MS fine-tunes as MS, shared as MA
    assert model.heads == task.heads(Path(meta.extra["provenance"]["config"]["data"]["arrow"]))
    selection = meta.extra["selection"]
    history = {h["step"]: h["metrics"][task.settings.headline] for h in selection["history"]}
    assert tuple(sorted(history)) == steps and selection["metric"] == task.settings.headline
    assert selection["value"] == max(history.values()) and history[selection["step"]] == selection["value"]
    assert meta.steps == selection["step"] and selection["split"] == task.val
    assert all(0 <= v <= 1 for h in selection["history"] for v in h["metrics"].values())
    assert meta.extra["task"] == task_name and meta.inputs["init"] == sha256_file(init)
    lineage = meta.extra["lineage"]
    assert lineage["checkpoint_sha256"] == weights_sha256(init) and lineage["stage"] == "pretrain"
    assert lineage["steps"] == 7 and lineage["sharing"] == init_meta.sharing.value
    saved = load_file(str(root / "work" / "selection" / f"step{selection['step']}.safetensors"))
    weights = model.state_dict()
    assert sorted(saved) == sorted(weights) and all(torch.equal(saved[k], weights[k]) for k in saved)
    start, _ = load_model(init)
    key = next(k for k in weights if "blocks.0." in k and k.endswith("fc1.weight"))
    assert not torch.equal(weights[key], start.state_dict()[key])  # the backbone was trained


def test_vqa_run_writes_the_selected_weights(vqa_run, inits) -> None:
    _, root = vqa_run
    check_run("vqa", inits["shared"], root)
    meta = read_meta(root / "out.safetensors")
    assert meta.config.image_size == 48 and meta.config.drop_path == 0.15  # the task's stochastic depth


@pytest.mark.parametrize(("task", "sharing"), [("coco", "modality_specific"), ("nlvr2", "modality_specific")])
def test_short_run_per_task(task: str, sharing: str, data, inits, tmp_path: Path) -> None:
    assert main(finetune_args(data, task, inits[sharing], tmp_path)) == 0
    check_run(task, inits[sharing], tmp_path)


def test_rerun_resumes_to_the_same_bytes_and_refuses_another_runs_work_dir(vqa_run, inits, capsys) -> None:
    args, root = vqa_run
    out, sidecar = root / "out.safetensors", root / "out.json"
    first = out.read_bytes(), sidecar.read_bytes()
    assert main(args) == 0  # resumes at the last step: validates again, writes the same selection
    assert (out.read_bytes(), sidecar.read_bytes()) == first
    other = [a if a != str(inits["shared"]) else str(inits["modality_specific"]) for a in args]
    message = error_of(other, capsys)
    assert "belongs to another run (run_id: " in message
    assert (out.read_bytes(), sidecar.read_bytes()) == first


def error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("vlmerge.finetune")]
    assert len(lines) == 1 and lines[0].startswith("vlmerge.finetune: error: ") and "Traceback" not in err, err
    return lines[0]


def test_bad_input_is_a_one_line_error(data, inits, tmp_path: Path, capsys) -> None:
    def args(task: str = "nlvr2", init: Path = inits["shared"], *extra: str) -> list[str]:
        return finetune_args(data, task, init, tmp_path, *extra)

    assert "does not exist" in error_of(args("nlvr2", tmp_path / "missing.safetensors"), capsys)
    assert "not public" in error_of(args("vqa", inits["shared"], "--select-on", "test"), capsys)
    assert "must be 0" in error_of(args("coco", inits["shared"], "--val-batches", "1"), capsys)
    assert "cannot fill one global batch" in error_of(args("nlvr2", inits["shared"], "--global-batch", "4000",
                                                           "--batch-size", "4000"), capsys)
    assert "is not a multiple" in error_of(args("nlvr2", inits["shared"], "--global-batch", "12", "--batch-size", "8"),
                                          capsys)
    assert "must be positive" in error_of(args("nlvr2", inits["shared"], "--lr", "0"), capsys)
    foreign = tmp_path / "foreign.safetensors"
    save_model(foreign, tiny_model(50, "shared", Heads.pretraining()))
    assert "tokens but" in error_of(args("nlvr2", foreign), capsys)
    assert not (tmp_path / "out.safetensors").exists()


def test_two_ddp_ranks_select_on_the_one_process_metrics(data, inits, tmp_path: Path) -> None:
    # f30k val has 7 images and 35 captions: both shards are padded, then gathered and de-duplicated.
    args = finetune_args(data, "f30k", inits["modality_specific"], tmp_path, "--devices", "2", "--val-every", "2",
                         "--global-batch", "8")
    done = subprocess.run([sys.executable, "-m", "vlmerge.finetune", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    check_run("f30k", inits["modality_specific"], tmp_path, steps=(2,))
    model, meta = load_model(tmp_path / "out.safetensors")
    task, tokenizer = get_task("f30k"), load_tokenizer(data[1])
    sides = task.eval_sides(data[0], "val", eval_transform(32))
    assert [len(s) for s in sides] == [7, 35]
    metrics = task.metrics(evaluation_rows(task, model, sides, BatchCollator(tokenizer), batch_size=5), sides)
    (recorded,) = meta.extra["selection"]["history"]
    assert recorded["step"] == 2 and recorded["metrics"] == pytest.approx(metrics, abs=1e-12)
