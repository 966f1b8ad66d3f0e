"""Pre-training: sampler and keyed batches, the objectives' composition, seed expansion, the settings, the CLI
and resume."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import get_args, get_type_hints

import pytest
import torch
import yaml

from tests.builders import PRETRAIN_MODEL, PRETRAIN_MODEL_ARG, build_pretrain_data, pretrain_cli
from vlmerge.data.readers import CaptionPairs
from vlmerge.data.transforms import eval_transform
from vlmerge.errors import ConfigError
from vlmerge.model import PRESETS, Heads, ModelConfig, Sharing, create_model
from vlmerge.model.checkpoint import load_model, read_meta, save_model
from vlmerge.pretrain import step as pretrain_step
from vlmerge.pretrain.config import MODEL_KEYS, Preset, PretrainSection, PretrainSettings
from vlmerge.pretrain.data import PretrainData, PretrainDataConfig
from vlmerge.pretrain.init_weights import InitSpec, initial_model
from vlmerge.pretrain.module import LossWeights, PretrainConfig, PretrainModule
from vlmerge.runtime import sha256_file
from vlmerge.runtime.settings import build, settings_from_args
from vlmerge.train.batches import KeyedSamples
from vlmerge.train.errors import TrainConfigError
from vlmerge.train.optim import OptimConfig
from vlmerge.train.sampler import ResumableSampler, evaluation_keys
from vlmerge.train.trainer import PRECISIONS, STRATEGIES, resume_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_pretrain_data(tmp_path_factory.mktemp("pretrain-data"))


@pytest.fixture(scope="session")
def data(corpus: tuple[Path, Path]) -> PretrainData:
    arrow, tokenizer = corpus
    module = PretrainData(PretrainDataConfig(arrow, tokenizer, image_size=32, batch_size=8))
    module.setup("fit")
    return module


def a_batch(data: PretrainData, size: int = 8) -> dict:
    """``size`` pairs of distinct images: every 5th pair (COCO lists 5 captions per image)."""
    keys = evaluation_keys(len(data.train), 1, seed=0)[: 5 * size : 5]
    samples = KeyedSamples(data.train)
    return data.collate([samples[k] for k in keys])


def small_model(data: PretrainData, sharing: str = "shared", **overrides: object) -> torch.nn.Module:
    torch.manual_seed(0)
    config = PRETRAIN_MODEL | {"vocab_size": len(data.tokenizer)} | overrides
    return create_model("tiny", sharing, Heads.pretraining(), **config)


# --- sampler and keyed batches --------------------------------------------------------------------


def take(iterator, n: int) -> list:
    return [next(iterator) for _ in range(n)]


def test_sampler_shards_epochs_like_distributed_sampler_and_resumes_at_any_batch() -> None:
    size, batch, world = 23, 2, 3  # 3 batches per rank per epoch, 5 samples dropped each epoch
    streams = [iter(ResumableSampler(size, batch, seed=7, rank=r, world=world)) for r in range(world)]
    epochs = [[take(s, 3 * batch) for s in streams] for _ in range(3)]
    for epoch in epochs:
        indices = [i for rank in epoch for i, _ in rank]
        assert len(set(indices)) == 18 and set(indices) <= set(range(size))  # disjoint across ranks
    assert [i for i, _ in epochs[0][0]] != [i for i, _ in epochs[1][0]]  # reshuffled each epoch
    # draws are per (epoch, index): the same index gets a new augmentation seed next epoch
    first = dict(epochs[0][0] + epochs[0][1] + epochs[0][2])
    second = dict(epochs[1][0] + epochs[1][1] + epochs[1][2])
    assert all(first[i] != second[i] for i in set(first) & set(second))
    whole = [k for e in epochs for k in e[1]]
    for start in (0, 1, 3, 4, 7):
        resumed = take(iter(ResumableSampler(size, batch, 7, rank=1, world=world, start_batch=start)), 4)
        assert resumed == whole[start * batch : start * batch + 4]
    assert take(iter(ResumableSampler(size, batch, 8, 1, world)), 6) != whole[:6]  # the seed matters


def test_sampler_refuses_a_dataset_smaller_than_one_global_batch() -> None:
    with pytest.raises(TrainConfigError, match="cannot fill one batch"):
        ResumableSampler(5, 2, 0, rank=0, world=3)
    keys = [evaluation_keys(10, 2, 0, r, 2) for r in range(2)]
    assert [i for i, _ in keys[0]] == [0, 1, 2, 3] and [i for i, _ in keys[1]] == [4, 5, 6, 7]


def test_keyed_samples_and_masks_do_not_depend_on_the_process_rng(data: PretrainData) -> None:
    torch.manual_seed(1)
    one = a_batch(data)
    torch.manual_seed(2)
    torch.rand(100)
    two = a_batch(data)
    for key in ("image", "mlm_ids", "mlm_labels", "text_ids"):
        assert torch.equal(one[key], two[key]), key
    state = torch.get_rng_state()
    other = KeyedSamples(data.train)[(0, 12345)]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is left alone
    assert not torch.equal(other["image"], KeyedSamples(data.train)[(0, 54321)]["image"])  # draw → augmentation
    assert (one["mlm_labels"] != -100).any(dim=1).all()  # every text has a masked word


# --- the objectives composed on a model -------------------------------------------------------------


@pytest.mark.parametrize("sharing", ["shared", "modality_specific"])
def test_every_parameter_gets_a_gradient_in_one_step(data: PretrainData, sharing: str) -> None:
    # Why DDP may run with find_unused_parameters=False when every loss weight is positive.
    module = PretrainModule(small_model(data, sharing), PretrainConfig(10, 0))
    module.losses(a_batch(data), None)["loss"].backward()
    assert [n for n, p in module.model.named_parameters() if p.grad is None] == []
    assert not LossWeights(itm=0.0).uses_every_head and LossWeights().uses_every_head


def test_a_few_steps_overfit_a_fixed_batch(data: PretrainData) -> None:
    model = small_model(data, drop_path=0.0)
    module = PretrainModule(model, PretrainConfig(20, 0, OptimConfig(lr=3e-3)))
    optimizer = module.configure_optimizers()["optimizer"]
    batch, losses = a_batch(data), []
    for step in range(20):
        torch.manual_seed(step)
        out = module.losses(batch, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append({k: float(v) for k, v in out.items()})
    first, last = losses[0], losses[-1]
    assert last["loss"] < 0.75 * first["loss"]
    assert last["mlm_loss"] < 0.6 * first["mlm_loss"] and last["itm_loss"] < first["itm_loss"]
    # ITC starts on a plateau (text [CLS] features are nearly equal at initialisation); it must not diverge.
    assert last["itc_loss"] < first["itc_loss"] + 1e-3


def itc_only_losses(data: PretrainData, steps: int, **overrides: object) -> list[float]:
    """ITC (both terms) alone on one fixed batch of 8 distinct pairs, AdamW 1e-3: the loss per step."""
    model = small_model(data, drop_path=0.0, embed_dropout=0.0, **overrides)
    module = PretrainModule(model, PretrainConfig(steps, 0, OptimConfig(lr=1e-3), LossWeights(mlm=0, itm=0)))
    optimizer = module.configure_optimizers()["optimizer"]
    batch, losses = a_batch(data), []
    for _ in range(steps):
        loss = module.losses(batch, None)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return losses


def test_the_tiny_preset_init_lets_itc_leave_its_plateau(data: PretrainData) -> None:
    # The tiny preset starts weights at 1/sqrt(128) with layer scale 1. With BEiT's 0.02 and 0.1 the image
    # [CLS] barely depends on the image at this width, and ITC stays at ln(B) for hundreds of steps.
    tiny = itc_only_losses(data, 40)
    beit = itc_only_losses(data, 40, init_std=0.02, layer_scale=0.1)
    plateau = float(torch.log(torch.tensor(8.0)))
    assert abs(beit[-1] - plateau) < 0.05 and abs(tiny[0] - plateau) < 0.5
    assert tiny[-1] < 0.5 * plateau


def test_no_augment_trains_on_the_evaluation_transform(corpus) -> None:
    arrow, tokenizer = corpus
    plain = PretrainData(PretrainDataConfig(arrow, tokenizer, image_size=32, batch_size=8, augment=False))
    augmented = PretrainData(PretrainDataConfig(arrow, tokenizer, image_size=32, batch_size=8))
    plain.setup("fit")
    augmented.setup("fit")
    draws = [KeyedSamples(plain.train)[(3, draw)]["image"] for draw in (1, 2)]
    torch.testing.assert_close(draws[0], draws[1], rtol=0, atol=0)
    resized = CaptionPairs(plain.train_files, eval_transform(32))[3]["image"]
    torch.testing.assert_close(draws[0], resized, rtol=0, atol=0)
    cropped = [KeyedSamples(augmented.train)[(3, draw)]["image"] for draw in (1, 2)]
    assert not torch.equal(cropped[0], cropped[1])


@pytest.mark.parametrize("sharing", ["modality_specific", "attn", "ffn", "ln"])
def test_seed_init_gives_the_ma_first_step_loss(data: PretrainData, tmp_path: Path, sharing: str) -> None:
    ma = small_model(data)
    seed = tmp_path / "seed.safetensors"
    save_model(seed, ma)
    ms = initial_model(
        InitSpec.parse(f"seed:{seed}"),
        "tiny",
        sharing,
        Heads.pretraining(),
        **PRETRAIN_MODEL,
        vocab_size=len(data.tokenizer),
    )
    assert ms.sharing is Sharing(sharing)
    batch, losses = a_batch(data), []
    for model in (ma, ms):
        torch.manual_seed(3)  # same dropout / drop-path draws in both
        losses.append(PretrainModule(model, PretrainConfig(10, 0)).losses(batch, torch.Generator().manual_seed(3)))
    for name in ("loss", "mlm_loss", "itc_loss", "itm_loss"):
        torch.testing.assert_close(losses[1][name], losses[0][name], msg=name)


def test_seed_init_refuses_an_ms_checkpoint_and_another_architecture(data: PretrainData, tmp_path: Path) -> None:
    path = tmp_path / "ms.safetensors"
    save_model(path, small_model(data, "modality_specific"))
    with pytest.raises(TrainConfigError, match="not a shared"):
        initial_model(
            InitSpec.parse(f"seed:{path}"),
            "tiny",
            "modality_specific",
            Heads.pretraining(),
            **PRETRAIN_MODEL,
            vocab_size=len(data.tokenizer),
        )
    save_model(path, small_model(data))
    with pytest.raises(TrainConfigError, match="dim"):
        initial_model(
            InitSpec.parse(f"seed:{path}"),
            "tiny",
            "modality_specific",
            Heads.pretraining(),
            **(PRETRAIN_MODEL | {"dim": 32}),
            vocab_size=len(data.tokenizer),
        )
    for bad in ("seed", "beit:", "scratch:x", "torch:x", f"seed:{tmp_path / 'missing'}"):
        with pytest.raises(TrainConfigError):
            InitSpec.parse(bad)


def test_beit_init_fills_every_expert(data: PretrainData, tmp_path: Path) -> None:
    torch.manual_seed(5)
    ma = small_model(data)
    beit = {
        k.removeprefix("transformer."): v.clone() for k, v in ma.state_dict().items() if k.startswith("transformer.")
    }
    for layer in range(3):  # timm keeps one relative position table per block: (2·2-1)² + 3 rows, 2 heads
        beit[f"blocks.{layer}.attn.relative_position_bias_table"] = torch.randn(12, 2)
    torch.save(beit, tmp_path / "beit.pth")
    ms = initial_model(
        InitSpec.parse(f"beit:{tmp_path / 'beit.pth'}"),
        "tiny",
        "modality_specific",
        Heads.pretraining(),
        **PRETRAIN_MODEL,
        vocab_size=len(data.tokenizer),
    )
    state = ms.state_dict()
    for expert in ("v", "l"):
        assert torch.equal(state[f"transformer.blocks.0.attn.{expert}.qkv.weight"], beit["blocks.0.attn.qkv.weight"])
    assert torch.equal(state["transformer.blocks.2.mlp.vl.fc1.weight"], beit["blocks.2.mlp.fc1.weight"])
    table = state["relative_position_bias_table"]
    assert torch.equal(table[:12, 2:4], beit["blocks.1.attn.relative_position_bias_table"])  # layer 1's heads


def test_itm_negatives_are_never_the_positive_in_real_steps(
    data: PretrainData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlmerge.train.trainer import TrainerConfig, build_trainer

    seen = []
    real = pretrain_step.sample_hard_negatives

    def recording(sim_i2t, sim_t2i, positive, generator=None):
        negatives = real(sim_i2t, sim_t2i, positive, generator)
        seen.append((negatives, positive))
        return negatives

    monkeypatch.setattr(pretrain_step, "sample_hard_negatives", recording)
    trainer = build_trainer(TrainerConfig(tmp_path, max_steps=4, ckpt_every=100))
    trainer.fit(PretrainModule(small_model(data), PretrainConfig(4, 0)), datamodule=data)
    assert len(seen) == 4
    for negatives, positive in seen:
        assert (negatives.neg_text_for_image != positive).all() and (negatives.neg_image_for_text != positive).all()
        assert len(positive) == 8


# --- the command line ---------------------------------------------------------------------------------


def common_args(corpus: tuple[Path, Path]) -> list[str]:
    arrow, tokenizer = corpus
    return [
        "--arrow",
        str(arrow),
        "--tokenizer",
        str(tokenizer),
        "--model",
        PRETRAIN_MODEL_ARG,
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--val-every",
        "0",
        "--num-workers",
        "0",
    ]


def run_cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(pretrain_cli(*args), cwd=ROOT, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def seed_run(corpus: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("seed-run")
    args = [
        *common_args(corpus),
        "--out",
        str(root / "seed.safetensors"),
        "--work-dir",
        str(root / "work"),
        "--steps",
        "4",
        "--ckpt-every",
        "2",
        "--val-every",
        "2",
        "--val-batches",
        "1",
    ]
    done = run_cli(args)
    assert done.returncode == 0, done.stderr
    return root / "seed.safetensors", args


@pytest.mark.slow
def test_cli_writes_a_strict_loadable_checkpoint_of_the_trained_weights(seed_run, corpus) -> None:
    out, args = seed_run
    model, meta = load_model(out)
    assert meta.sharing is Sharing.SHARED and meta.steps == 4 and meta.heads == Heads.pretraining()
    assert meta.inputs == {"tokenizer": sha256_file(corpus[1] / "vocab.txt")}
    assert meta.extra["init"] == "scratch" and meta.extra["provenance"]["config"]["trainer"]["max_steps"] == 4
    lightning = torch.load(out.parent / "work" / "checkpoints" / "last.ckpt", weights_only=False)
    assert lightning["global_step"] == 4
    for key, value in model.state_dict().items():
        assert torch.equal(value, lightning["state_dict"][f"model.{key}"]), key
    first = out.read_bytes()
    again = run_cli(args)  # resumes from last.ckpt at step 4: nothing to train, same weights
    assert again.returncode == 0, again.stderr
    assert out.read_bytes() == first
    assert read_meta(out).steps == 4
    assert json.loads((out.parent / "work" / "run.json").read_text())["module"]["optim"]["lr"] == 2e-4
    changed = run_cli([*args, "--lr", "1e-3", "--num-workers", "1"])  # workers may change, the LR may not
    assert changed.returncode == 2
    assert "belongs to another run (module.optim.lr: 0.0002 → 0.001)" in changed.stderr
    assert out.read_bytes() == first


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_weights(seed_run, corpus, tmp_path: Path) -> None:
    seed, _ = seed_run
    # modality-specific from the seed, with gradient accumulation 2 and a loader worker
    args = [
        *common_args(corpus),
        "--sharing",
        "modality_specific",
        "--init",
        f"seed:{seed}",
        "--steps",
        "6",
        "--ckpt-every",
        "2",
        "--global-batch",
        "16",
        "--num-workers",
        "1",
    ]
    # Both runs side by side, one thread each (the same thread count keeps float sums identical).
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    whole_log = (tmp_path / "whole.log").open("w")
    whole = subprocess.Popen(
        pretrain_cli(*args, "--out", tmp_path / "whole.safetensors", "--work-dir", tmp_path / "w1"),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=whole_log,
    )
    out, work = tmp_path / "resumed.safetensors", tmp_path / "w2"
    run = pretrain_cli(*args, "--out", out, "--work-dir", work)
    killed = subprocess.Popen(run, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = work / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert last.exists() and not out.exists()  # killed after a checkpoint, before the end
    resumed = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    assert whole.wait() == 0, (tmp_path / "whole.log").read_text()
    whole_log.close()
    a, _ = load_model(tmp_path / "whole.safetensors")
    b, meta = load_model(out)
    assert meta.sharing is Sharing.MODALITY_SPECIFIC and meta.inputs["init"] == sha256_file(seed)
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), key
    start, _ = load_model(seed)
    assert not torch.equal(a.state_dict()["itm_score.fc.weight"], start.state_dict()["itm_score.fc.weight"])


def error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    from vlmerge.pretrain.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("vlmerge.pretrain")]
    assert len(lines) == 1 and lines[0].startswith("vlmerge.pretrain: error: ") and "Traceback" not in err, err
    return lines[0]


def test_bad_input_is_a_one_line_error(corpus, tmp_path: Path, capsys, monkeypatch) -> None:
    base = [*common_args(corpus), "--out", str(tmp_path / "x.safetensors"), "--work-dir", str(tmp_path / "w")]
    assert str(tmp_path / "nowhere") in error_of([*base, "--arrow", str(tmp_path / "nowhere")], capsys)
    assert "sharing: Input should be" in error_of([*base, "--sharing", "moe"], capsys)
    assert "model: unknown key(s) ['depth']" in error_of([*base, "--model", "depth=2"], capsys)
    assert "num_layers 2 < 3" in error_of([*base, "--model", "num_layers=2,dim=64"], capsys)
    assert "warmup: 20 must be in [0, steps 10]" in error_of([*base, "--steps", "10", "--warmup", "20"], capsys)
    assert "expected a .safetensors path" in error_of([*base, "--out", str(tmp_path / "x.pt")], capsys)
    assert "init: expected scratch or beit:PATH or seed:PATH" in error_of([*base, "--init", "beit:"], capsys)
    assert "does not exist" in error_of([*base, "--init", f"seed:{tmp_path / 'missing'}"], capsys)
    assert "loss_weights: the weights must not all be 0" in error_of(
        [*base, "--loss-weights", "mlm=0,itc=0,itm=0"], capsys
    )
    assert "is not a multiple" in error_of([*base, "--global-batch", "12"], capsys)
    (tmp_path / "empty").mkdir()
    assert "missing pre-training table" in error_of(
        [*base, "--arrow", str(tmp_path / "empty"), "--datasets", "vg"], capsys
    )
    ms = tmp_path / "ms.safetensors"
    torch.manual_seed(0)
    save_model(ms, create_model("tiny", "modality_specific", Heads.pretraining(), **PRETRAIN_MODEL, vocab_size=300))
    assert "not a shared (MA) model" in error_of([*base, "--sharing", "ln", "--init", f"seed:{ms}"], capsys)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    message = error_of([*base, "--strategy", "fsdp"], capsys)
    assert "fsdp needs CUDA GPUs" in message and "refuses accelerator='cpu'" in message
    import lightning.pytorch as pl

    with pytest.raises(ValueError, match="requires a GPU accelerator"):  # what the message reports
        pl.Trainer(accelerator="cpu", strategy="fsdp", devices=2)


def test_resume_picks_the_newest_of_last_and_slurm_checkpoints(tmp_path: Path) -> None:
    assert resume_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    files = [tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hpc_ckpt_1.ckpt", tmp_path / "hpc_ckpt_2.ckpt"]
    for age, path in zip((30, 10, 20), files):
        path.write_bytes(b"x")
        os.utime(path, (time.time() - age, time.time() - age))
    assert resume_checkpoint(tmp_path) == files[1]


# --- the settings: --config, flags and the workflow's pretrain section ------------------------------

PATH_ARGS = ["--arrow", "a", "--tokenizer", "t", "--out", "o.safetensors", "--work-dir", "w"]


def settings_of(argv: list[str]) -> PretrainSettings:
    """What the stage's command line ``argv`` asks for (parsing and validation only)."""
    from vlmerge.pretrain.cli import _parser

    return settings_from_args(_parser().parse_args(argv), PretrainSettings)


def section_of(*files: str) -> dict:
    """The ``pretrain:`` block of ``files`` layered key by key, as Snakemake merges configfiles."""
    block: dict = {}
    for name in files:
        block |= yaml.safe_load((ROOT / name).read_text())["pretrain"]
    return block


def test_the_settings_import_no_torch() -> None:
    code = (
        "import sys, vlmerge.pretrain.config, workflow.pretraining; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_settings_mirror_the_model_and_trainer_choices() -> None:
    hints = {name: hint for name, hint in get_type_hints(ModelConfig).items() if name not in {"preset", "vocab_size"}}
    optional = {name: get_args(hint)[0] for name, hint in hints.items() if type(None) in get_args(hint)}
    assert MODEL_KEYS == hints | optional  # an optional field (None: derived) is overridden with its type
    assert set(get_args(Preset)) == set(PRESETS) - {"pico"}  # pico: conftest's test-only preset
    fields = PretrainSettings.model_fields
    assert get_args(fields["precision"].annotation) == PRECISIONS
    assert get_args(fields["strategy"].annotation) == STRATEGIES


def test_config_errors_name_the_key_in_one_line(tmp_path: Path, capsys) -> None:
    assert error_of([*PATH_ARGS, "--config", '{"lr": -1}'], capsys).startswith("vlmerge.pretrain: error: lr: ")
    unknown = error_of([*PATH_ARGS, "--config", '{"lrate": 0.001}'], capsys)
    assert unknown.startswith("vlmerge.pretrain: error: lrate: ") and "not permitted" in unknown
    assert "loss_weights.itx" in error_of([*PATH_ARGS, "--config", '{"loss_weights": {"itx": 1}}'], capsys)
    assert "model: ['dim'] must be whole numbers" in error_of(
        [*PATH_ARGS, "--config", '{"model": {"dim": 1.5}}'], capsys
    )


def test_a_flag_overrides_its_key_of_config() -> None:
    config = json.dumps({"lr": 1e-3, "steps": 50, "augment": False, "model": {"dim": 64}})
    settings = settings_of([*PATH_ARGS, "--config", config, "--lr", "5e-4", "--augment", "--model", "drop_path=0"])
    assert (settings.lr, settings.steps, settings.augment) == (5e-4, 50, True)
    assert settings.model == {"drop_path": 0.0}  # a flag replaces the whole key
    assert settings.warmup_steps == round(0.0125 * 50)
    assert settings_of([*PATH_ARGS, "--loss-weights", "itm=0"]).loss_weights == {"mlm": 1.0, "itc": 1.0, "itm": 0.0}
    assert build(PretrainSettings, json.loads(settings.as_json())) == settings  # --config round-trips


def test_the_section_accepts_the_shipped_config_blocks() -> None:
    embedded = build(PretrainSection, section_of("config.yaml"), "pretrain")
    build(PretrainSection, section_of("profiles/slurm/paper.yaml"), "pretrain")
    paper = build(PretrainSection, section_of("config.yaml", "profiles/slurm/paper.yaml"), "pretrain")
    seed = embedded.settings_for("seed", "tiny", {}, None)
    assert (seed.steps, seed.warmup, seed.init, seed.augment, seed.global_batch) == (150, 15, "scratch", False, 32)
    assert (seed.lr, seed.num_workers, seed.val_every, seed.image_size) == (5e-4, 1, 0, 48)
    assert embedded.settings_for("seed50", "tiny", {}, None).warmup == 5  # the seed run's 10 %
    assert paper.settings_for("seed50000", "base", {}, None).warmup == 625
    ms = embedded.settings_for("ms_ffn@seed50", "tiny", {"drop_path": 0}, "results/pretrain/seed50.safetensors")
    assert ms.sharing is Sharing.FFN and ms.init == "seed:results/pretrain/seed50.safetensors"
    assert (ms.steps, ms.warmup, ms.model) == (300, 30, {"drop_path": 0.0})
    with pytest.raises(ConfigError, match="pretrain.gpus: "):
        build(PretrainSection, section_of("config.yaml") | {"gpus": 8}, "pretrain")
    with pytest.raises(ConfigError, match="pretrain.runs.ms.sharing: "):
        build(
            PretrainSection,
            section_of("config.yaml")
            | {
                "runs": {
                    "seed": {"steps": 2, "warmup": 0},
                    "ma": {"steps": 2, "warmup": 0},
                    "ms": {"steps": 2, "warmup": 0, "sharing": "shared"},
                }
            },
            "pretrain",
        )


def test_the_workflow_passes_the_run_settings_quoted(tmp_path: Path) -> None:
    from workflow.paths import Paths
    from workflow.pretraining import Pretraining

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["data"]["dir"] = "my data"  # a space the shell must keep
    pretraining = Pretraining(config, Paths(config))
    argv = shlex.split(pretraining.args(SimpleNamespace(run="ms_attn")))
    assert argv[argv.index("--arrow") + 1] == "my data/arrow"
    settings = settings_of([*argv, "--out", "o.safetensors", "--work-dir", "w", "--devices", "2"])
    assert settings == pretraining.settings("ms_attn").model_copy(update={"devices": 2})
    assert settings.init == f"seed:{Paths(config).checkpoint('seed')}"


# --- options where the released code departs from the defaults ---------------------------------------

UPSTREAM_OPTIONS = {
    "itc_gather": "upstream",
    "logit_scale_max": None,
    "decay_norm_and_scale": True,
    "coco_restval": False,
    "dedup_captions": True,
}
DEFAULT_OPTIONS = {
    "itc_gather": "exact",
    "logit_scale_max": 100.0,
    "decay_norm_and_scale": False,
    "coco_restval": True,
    "dedup_captions": False,
}


def options_of(settings: PretrainSettings) -> dict:
    return {k: getattr(settings, k) for k in UPSTREAM_OPTIONS}


def test_the_paper_overlay_sets_upstreams_options_and_config_yaml_keeps_the_defaults(capsys) -> None:
    from vlmerge.objectives import ITCGather
    from vlmerge.pretrain.config import ItcGather

    assert get_args(ItcGather) == get_args(ITCGather)
    assert options_of(build(PretrainSettings, {}, "pretrain")) == DEFAULT_OPTIONS
    embedded = build(PretrainSection, section_of("config.yaml"), "pretrain")
    paper = build(PretrainSection, section_of("config.yaml", "profiles/slurm/paper.yaml"), "pretrain")
    for run, checkpoint in (("seed", None), ("ma", None), ("ms_modality_specific", "seed.safetensors")):
        assert options_of(embedded.settings_for(run, "tiny", {}, checkpoint)) == DEFAULT_OPTIONS
        assert options_of(paper.settings_for(run, "base", {}, checkpoint)) == UPSTREAM_OPTIONS
    flags = ["--itc-gather", "upstream", "--logit-scale-max", "50", "--decay-norm-and-scale", "--no-coco-restval"]
    from_flags = settings_of([*PATH_ARGS, *flags, "--dedup-captions"])
    assert options_of(from_flags) == UPSTREAM_OPTIONS | {"logit_scale_max": 50.0}
    assert options_of(settings_of([*PATH_ARGS, "--config", json.dumps(UPSTREAM_OPTIONS)])) == UPSTREAM_OPTIONS  # null
    assert "logit_scale_max: " in error_of([*PATH_ARGS, "--logit-scale-max", "0"], capsys)
    assert "itc_gather" in error_of([*PATH_ARGS, "--config", '{"itc_gather": "approximate"}'], capsys)


def test_the_options_reach_the_run_and_its_identity_only_when_set(corpus, tmp_path: Path) -> None:
    from vlmerge.pretrain.run import RunPaths, resolve_run

    arrow, tokenizer = corpus
    paths = RunPaths(arrow, tokenizer, tmp_path / "o.safetensors", tmp_path / "w")
    default = resolve_run(build(PretrainSettings, {}, "pretrain"), paths)
    upstream = resolve_run(build(PretrainSettings, UPSTREAM_OPTIONS, "pretrain"), paths)
    assert (default.module.itc_gather, default.module.logit_scale_max) == ("exact", 100.0)
    assert (upstream.module.itc_gather, upstream.module.logit_scale_max) == ("upstream", None)
    assert (default.module.optim.decay_norm_and_scale, upstream.module.optim.decay_norm_and_scale) == (False, True)
    assert (default.data.coco_restval, default.data.dedup_captions) == (True, False)
    assert (upstream.data.coco_restval, upstream.data.dedup_captions) == (False, True)
    # A default run's identity has none of the new keys (work directories of earlier runs still match).
    identity, changed = default.identity({}, {}), upstream.identity({}, {})
    flat, flat_changed = json.dumps(identity), json.dumps(changed)
    assert not any(f'"{key}"' in flat for key in UPSTREAM_OPTIONS)
    assert all(f'"{key}"' in flat_changed for key in UPSTREAM_OPTIONS)
    assert changed["module"]["logit_scale_max"] is None and changed["data"]["coco_restval"] is False
    # The speed options reach the run (and the module the CLI builds from it) but never its identity.
    fast = resolve_run(
        build(PretrainSettings, {"attention_kernel": "explicit", "optimizer_impl": "for_loop"}, "pretrain"), paths
    )
    assert (fast.speed.attention, fast.speed.optimizer) == ("explicit", "for_loop")
    assert (default.speed.attention, default.speed.optimizer) == ("auto", "auto")
    assert fast.identity({}, {}) == identity and fast.resolved()["speed"] != default.resolved()["speed"]


def test_coco_restval_and_dedup_choose_the_training_pairs(corpus) -> None:
    from vlmerge.pretrain.data import pretrain_files

    arrow, tokenizer = corpus
    names = [p.name for p in pretrain_files(arrow, ("coco",))]
    assert names == ["coco_caption_karpathy_train.arrow", "coco_caption_karpathy_restval.arrow"]
    assert [p.name for p in pretrain_files(arrow, ("coco",), coco_restval=False)] == names[:1]
    config = PretrainDataConfig(arrow, tokenizer, datasets=("coco",), image_size=32, validate=False)
    sizes = {}
    for restval in (True, False):
        for dedup in (False, True):
            module = PretrainData(dataclasses.replace(config, coco_restval=restval, dedup_captions=dedup))
            module.setup("fit")
            sizes[restval, dedup] = len(module.train)
            texts = [module.train.caption(i) for i in range(len(module.train))]
            rows = module.train.pair_row.tolist()
            if dedup:
                assert len(set(zip(rows, texts))) == len(texts)  # no image repeats a caption
    assert sizes[False, False] < sizes[True, False] and sizes[True, True] <= sizes[True, False]


def test_itc_options_change_the_loss_only_where_they_should(data: PretrainData) -> None:
    """One process: upstream's gather is the exact loss; without the cap a temperature above 100 counts."""
    batch = a_batch(data)

    def itc(model: torch.nn.Module, **options: object) -> torch.Tensor:
        torch.manual_seed(0)
        config = PretrainConfig(10, 0, weights=LossWeights(mlm=0.0, itm=0.0), **options)  # type: ignore[arg-type]
        return PretrainModule(model, config).losses(batch, None)["itc_loss"].detach()

    model = small_model(data)
    torch.testing.assert_close(itc(model, itc_gather="upstream"), itc(model))
    torch.testing.assert_close(itc(model, logit_scale_max=None), itc(model))  # the scale starts below the cap
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
        model.logit_vl_scale.fill_(math.log(1000.0))
    assert not torch.allclose(itc(model, logit_scale_max=None), itc(model))
