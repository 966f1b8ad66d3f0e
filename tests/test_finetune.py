"""``python -m vlmerge.finetune``: a short run per task, selection, sharing from the sidecar, resume, errors,
validation metrics on two DDP ranks equal to a one-process evaluation, and the settings (``--config`` and
flags, the ``finetune:`` block of the configs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.builders import build_task_data, tiny_model
from vlmerge.data.collate import BatchCollator
from vlmerge.data.tokenizer import load_tokenizer
from vlmerge.data.transforms import eval_transform
from vlmerge.errors import ConfigError
from vlmerge.finetune.cli import main
from vlmerge.finetune.config import FinetuneSection, FinetuneSettings, TaskOverrides
from vlmerge.finetune.run import FinetunePaths, FinetuneRun, resolve_run
from vlmerge.model import Heads
from vlmerge.model.checkpoint import load_model, read_meta, save_model
from vlmerge.runtime import sha256_file
from vlmerge.runtime.settings import build
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
        save_model(
            paths[sharing],
            tiny_model(vocab, sharing, Heads.pretraining(), drop_path=0.1),
            steps=7,
            extra={"stage": "pretrain", "init": "scratch"},
        )
    return paths


# A short run: the settings go in as the workflow passes them, one --config JSON; flags override its keys.
SHORT = {"steps": 2, "batch_size": 4, "global_batch": 4, "val_every": 1, "image_size": 32, "num_workers": 0, "lr": 1e-3}


def finetune_args(data, task: str, init: Path, root: Path, *flags: str, **settings: object) -> list[str]:
    arrow, tokenizer, _ = data
    return [
        "--config",
        json.dumps({"task": task, **SHORT, **settings}),
        "--init",
        str(init),
        "--arrow",
        str(arrow),
        "--tokenizer",
        str(tokenizer),
        "--out",
        str(root / "out.safetensors"),
        "--work-dir",
        str(root / "work"),
        *flags,
    ]


@pytest.fixture(scope="module")
def vqa_run(data, inits, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    root = tmp_path_factory.mktemp("vqa-run")
    # Resamples the relative positions from 32 to 48 px; accumulates two micro-batches per step.
    args = finetune_args(data, "vqa", inits["shared"], root, image_size=48, global_batch=8)
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
    assert "cannot select on it" in error_of(args("f30k", inits["shared"], "--f30k-train-val"), capsys)
    assert "must be 0" in error_of(args("coco", inits["shared"], "--val-batches", "1"), capsys)
    assert "cannot fill one global batch" in error_of(
        args("nlvr2", inits["shared"], "--global-batch", "4000", "--batch-size", "4000"), capsys
    )
    assert "is not a multiple" in error_of(
        args("nlvr2", inits["shared"], "--global-batch", "12", "--batch-size", "8"), capsys
    )
    assert "lr: Input should be greater than 0" in error_of(args("nlvr2", inits["shared"], "--lr", "0"), capsys)
    foreign = tmp_path / "foreign.safetensors"
    save_model(foreign, tiny_model(50, "shared", Heads.pretraining()))
    assert "tokens but" in error_of(args("nlvr2", foreign), capsys)
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.slow
def test_two_ddp_ranks_select_on_the_one_process_metrics(data, inits, tmp_path: Path) -> None:
    # f30k val has 7 images and 35 captions: both shards are padded, then gathered and de-duplicated.
    # The workflow's shape: --config JSON, then geometry flags (and here two settings) overriding its keys.
    args = finetune_args(
        data, "f30k", inits["modality_specific"], tmp_path, "--devices", "2", "--val-every", "2", "--global-batch", "8"
    )
    done = subprocess.run(
        [sys.executable, "-m", "vlmerge.finetune", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    check_run("f30k", inits["modality_specific"], tmp_path, steps=(2,))
    model, meta = load_model(tmp_path / "out.safetensors")
    task, tokenizer = get_task("f30k"), load_tokenizer(data[1])
    sides = task.eval_sides(data[0], "val", eval_transform(32))
    assert [len(s) for s in sides] == [7, 35]
    metrics = task.metrics(evaluation_rows(task, model, sides, BatchCollator(tokenizer), batch_size=5), sides)
    (recorded,) = meta.extra["selection"]["history"]
    assert recorded["step"] == 2 and recorded["metrics"] == pytest.approx(metrics, abs=1e-12)


# --- settings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "flags", "key"),
    [
        ({"warmup_ratio": 2}, (), "warmup_ratio: Input should be less than or equal to 1"),
        ({"learning_rate": 1e-3}, (), "learning_rate: Extra inputs are not permitted"),
        ({"epochs": 3}, (), "epochs: give steps or epochs, not both"),
        ({"precision": "8"}, (), "precision: Input should be 'auto', '32', 'bf16' or '16'"),
        ({}, ("--steps", "two"), "steps: Input should be a valid integer"),
    ],
)
def test_a_bad_setting_is_one_line_naming_its_key(settings, flags, key, data, inits, tmp_path: Path, capsys) -> None:
    assert main(finetune_args(data, "nlvr2", inits["shared"], tmp_path, *flags, **settings)) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlmerge.finetune: error: ") and err.count("\n") == 1 and key in err, err
    assert not (tmp_path / "work").exists()


def test_a_flag_overrides_its_key_of_config(data, inits, tmp_path: Path, capsys) -> None:
    # --config's lr 0 would be refused; the flag's 1e-3 wins, so the run gets as far as the retrieval check.
    message = error_of(
        finetune_args(
            data, "coco", inits["shared"], tmp_path, "--lr", "1e-3", "--val-batches", "1", lr=0, val_batches=0
        ),
        capsys,
    )
    assert "val_batches: retrieval ranks whole splits" in message


def layered(*overlays: str) -> FinetuneSection:
    """The ``finetune:`` block of config.yaml with ``overlays`` layered on it as Snakemake does (key by key)."""
    from snakemake.utils import update_config

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for overlay in overlays:
        update_config(config, yaml.safe_load((ROOT / overlay).read_text()))
    return build(FinetuneSection, config["finetune"], "finetune")


PAPER, FIXED = "profiles/slurm/paper.yaml", "profiles/slurm/paper-fixed.yaml"
SPLIT_KEYS = ("select_on", "f30k_val_is_test", "coco_train_restval", "vqa_trainable_val", "f30k_train_val")
TODAY = ("val", False, True, False, False)  # the defaults: vlmerge's fixes
UPSTREAM = ("test", True, False, True, True)  # the released code's choices


def test_the_finetune_blocks_of_the_configs_are_accepted() -> None:
    """config.yaml's block and paper.yaml's over it (Snakemake merges configfiles key by key; paper.yaml names
    every task and every key of the tasks it sets, so none of config.yaml's embedded settings leaks through)."""
    embedded = yaml.safe_load((ROOT / "config.yaml").read_text())["finetune"]
    section = layered()
    vqa = section.task_settings("vqa")
    assert (vqa.task, vqa.steps, vqa.global_batch, vqa.lr, vqa.image_size, vqa.val_every) == (
        "vqa",
        200,
        32,
        2e-4,
        48,
        100,
    )
    assert (vqa.epochs, vqa.drop_path, vqa.augment, vqa.num_workers, vqa.devices) == (None, None, False, 1, 1)
    at_scale = layered(PAPER)
    coco = at_scale.task_settings("coco")
    paper_defaults = {k: getattr(coco, k) for k in ("steps", "epochs", "global_batch", "lr", "image_size")}
    assert paper_defaults == dict.fromkeys(paper_defaults) and coco.augment and coco.precision == "16"
    assert (coco.devices, coco.nodes, coco.num_workers) == (8, 1, 8)
    # What the workflow passes is what the stage reads back.
    assert build(FinetuneSettings, json.loads(coco.as_json())) == coco
    with pytest.raises(ConfigError, match=r"^finetune\.settings\.vqa\.lr_warmup: Extra inputs"):
        build(FinetuneSection, {**embedded, "settings": {"vqa": {"lr_warmup": 3}}}, "finetune")
    with pytest.raises(ConfigError, match=r"^finetune\.launch: Field required"):
        build(FinetuneSection, {k: v for k, v in embedded.items() if k != "launch"}, "finetune")


def overridden(settings: FinetuneSettings) -> dict[str, object]:
    """The per-task keys ``settings`` set (None: the task's paper value)."""
    return {k: getattr(settings, k) for k in TaskOverrides.model_fields if getattr(settings, k) is not None}


def test_config_yaml_alone_keeps_todays_defaults() -> None:
    section = layered()
    for task in section.tasks:
        settings = section.task_settings(task)
        assert tuple(getattr(settings, k) for k in SPLIT_KEYS) == TODAY
        assert settings.embed_dropout is None and settings.horizontal_flip is None


def test_the_paper_overlay_carries_the_released_codes_choices() -> None:
    """config.yaml then paper.yaml: upstream's splits and selection, flips and embedding dropout; the paper's
    per-task hyper-parameters otherwise (no key of config.yaml's embedded scale)."""
    section = layered(PAPER)
    expected = {"vqa": {"horizontal_flip": True, "embed_dropout": 0.15}, "nlvr2": {"horizontal_flip": True}}
    for task in ("vqa", "coco", "f30k", "nlvr2"):
        settings = section.task_settings(task)
        assert tuple(getattr(settings, k) for k in SPLIT_KEYS) == UPSTREAM, task
        assert overridden(settings) == expected.get(task, {}), task


def test_the_fixed_overlay_switches_every_fix_back_on() -> None:
    """config.yaml, paper.yaml, then paper-fixed.yaml: today's defaults, the paper's per-task values, paper.yaml's
    scale."""
    paper, fixed = layered(PAPER), layered(PAPER, FIXED)
    for task in ("vqa", "coco", "f30k", "nlvr2"):
        settings = fixed.task_settings(task)
        assert tuple(getattr(settings, k) for k in SPLIT_KEYS) == TODAY, task
        assert overridden(settings) == {}, task
        # Precision goes back to bf16 (paper.yaml: upstream's fp16); nothing else of paper.yaml changes.
        assert (settings.precision, paper.task_settings(task).precision) == ("bf16", "16"), task
        others = set(FinetuneSettings.model_fields) - set(SPLIT_KEYS) - set(TaskOverrides.model_fields) - {"precision"}
        assert {k: getattr(settings, k) for k in others} == {k: getattr(paper.task_settings(task), k) for k in others}
    assert not get_task("vqa").settings.horizontal_flip and not get_task("nlvr2").settings.horizontal_flip
    assert get_task("vqa").settings.embed_dropout is None
    assert (fixed.tasks, fixed.baselines, fixed.launch) == (paper.tasks, paper.baselines, paper.launch)


def test_f30k_train_val_trains_on_both_splits(data, inits, tmp_path: Path) -> None:
    """Upstream's Flickr30k training set: train + val samples (selected on test); off, train only."""
    arrow, tokenizer, _ = data
    paths = FinetunePaths(
        init=inits["shared"], arrow=arrow, tokenizer=tokenizer, out=tmp_path / "o.safetensors", work_dir=tmp_path
    )
    task = get_task("f30k")

    def samples(*splits: str) -> int:
        return len(task.train_dataset(arrow, splits, eval_transform(32)))  # type: ignore[arg-type]

    def run(**values: object) -> FinetuneRun:
        return resolve_run(build(FinetuneSettings, {"task": "f30k", **SHORT, **values}), paths)

    today, upstream = run(), run(f30k_train_val=True, f30k_val_is_test=True)
    assert today.data.train_splits == ("train",) and today.train_samples == samples("train")
    assert upstream.data.train_splits == ("train", "val") and upstream.data.select_split == "test"
    assert upstream.train_samples == samples("train") + samples("val") > today.train_samples
    # A run that leaves the new keys at their defaults keeps its hash (the runs recorded before them).
    assert today.config_hash() == run(f30k_train_val=False, embed_dropout=None).config_hash()
    assert "f30k_train_val" in json.dumps(today.resolved()) and upstream.config_hash() != today.config_hash()
    # The speed options reach the run but not its hash (they change how fast a step runs, not what it computes).
    fast = run(attention_kernel="explicit", compile_blocks=True, optimizer_impl="for_loop")
    assert (fast.speed.attention, fast.speed.compile_blocks, fast.speed.optimizer) == ("explicit", True, "for_loop")
    assert fast.config_hash() == today.config_hash()


def test_embed_dropout_reaches_the_model(data, inits, tmp_path: Path) -> None:
    """The task's embed_dropout (None: the checkpoint's 0.1) sets the text-embedding dropout of the fine-tuned
    model, recorded in its sidecar; drop-path is set beside it, as upstream's drop_rate did."""
    root = tmp_path / "run"
    assert main(finetune_args(data, "nlvr2", inits["shared"], root, embed_dropout=0.15, drop_path=0.15)) == 0
    model, meta = load_model(root / "out.safetensors")
    assert model.config.embed_dropout == model.text_embeddings.dropout.p == 0.15 and model.config.drop_path == 0.15
    assert meta.overrides["embed_dropout"] == 0.15
    default = tmp_path / "default"
    assert main(finetune_args(data, "nlvr2", inits["shared"], default)) == 0
    assert load_model(default / "out.safetensors")[0].config.embed_dropout == 0.1


def test_the_settings_modules_do_not_import_torch() -> None:
    """The workflow imports them at every snakemake start-up (dry runs included)."""
    code = (
        "import sys, vlmerge.finetune.config, vlmerge.evaluate.config; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
