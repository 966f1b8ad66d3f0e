"""The grams and merge CLIs end to end on tiny arrow tables, and their one-line errors on bad input."""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from PIL import Image

from vlmerge.data.schema import CAPTION, NLVR2, VQA, VQA_ANSWERS_FILE
from vlmerge.data.tokenizer import train_wordpiece
from vlmerge.files.grams import load_grams, save_grams, sidecar_path
from vlmerge.grams import cli as grams_cli
from vlmerge.merge import cli as merge_cli
from vlmerge.merging import GramStats
from vlmerge.model import create_model
from vlmerge.model.checkpoint import load_model, read_meta, save_checkpoint, save_model

SMALL = dict(
    num_layers=3, dim=16, num_heads=2, mlp_dim=32, image_size=32, max_text_len=12, drop_path=0.0, embed_dropout=0.0
)
WORDS = ["red", "blue", "circle", "square", "left", "of", "is", "there", "a", "what", "colour", "two"]


def png(seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", (40, 40), tuple(rng.randrange(256) for _ in range(3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))


def write(path: Path, schema: pa.Schema, rows: dict[str, list]) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        writer.write_table(pa.table(rows, schema=schema))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Arrow tables for vqa / coco / nlvr2, a tokenizer, an MS checkpoint and a seed checkpoint."""
    root = tmp_path_factory.mktemp("cli")
    rng = random.Random(0)
    arrow = root / "arrow"
    arrow.mkdir()
    tok = train_wordpiece([sentence(rng) for _ in range(200)], root / "tok", vocab_size=60, min_frequency=1)
    questions = [[sentence(rng) for _ in range(2)] for _ in range(4)]
    write(
        arrow / "vqav2_train.arrow",
        VQA,
        {
            "image": [png(i) for i in range(4)],
            "questions": questions,
            "answers": [[["red"], ["two"]]] * 4,
            "answer_labels": [[[0], [1]]] * 4,
            "answer_scores": [[[1.0], [0.6]]] * 4,
            "image_id": list(range(4)),
            "question_id": [[2 * i, 2 * i + 1] for i in range(4)],
            "split": ["train"] * 4,
        },
    )
    (arrow / VQA_ANSWERS_FILE).write_text(json.dumps(["red", "two"]))
    write(
        arrow / "coco_caption_karpathy_train.arrow",
        CAPTION,
        {
            "image": [png(10 + i) for i in range(3)],
            "caption": [[sentence(rng), sentence(rng)] for _ in range(3)],
            "image_id": [str(i) for i in range(3)],
            "split": ["train"] * 3,
        },
    )
    write(
        arrow / "nlvr2_train.arrow",
        NLVR2,
        {
            "image_0": [png(20), png(21)],
            "image_1": [png(22), png(23)],
            "questions": [["a red circle", "two"]] * 2,
            "answers": [["True", "False"]] * 2,
            "identifier": ["p0", "p1"],
        },
    )
    vocab = len((tok / "vocab.txt").read_text().splitlines())
    torch.manual_seed(0)
    ms = create_model("tiny", "modality_specific", **SMALL, vocab_size=vocab)
    seed = create_model("tiny", "shared", **SMALL, vocab_size=vocab)
    save_model(root / "ms.safetensors", ms)
    save_model(root / "seed.safetensors", seed)
    return root


def collect(work: Path, task: str, out: str, *extra: str) -> Path:
    args = [
        "--ckpt",
        str(work / "ms.safetensors"),
        "--task",
        task,
        "--arrow",
        str(work / "arrow"),
        "--tokenizer",
        str(work / "tok"),
        "--out",
        str(work / out),
        "--batch-size",
        "3",
        *extra,
    ]
    assert grams_cli.main(args) == 0
    return work / out


def merged(work: Path, out: str, *args: str) -> int:
    return merge_cli.main(["--ms", str(work / "ms.safetensors"), "--out", str(work / out), *args])


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------- grams CLI
def test_grams_cli_routes_each_task_and_records_its_inputs(work: Path) -> None:
    vqa, record = load_grams(collect(work, "vqa", "vqa.safetensors", "--max-samples", "7"))
    assert (record["task"], record["split"], record["samples"], record["image_size"]) == ("vqa", "train", 7, 32)
    assert record["checkpoint_sha256"] == sha(work / "ms.safetensors") and record["include_pad"] is False
    assert vqa.counts["transformer.blocks.2.mlp.vl.fc1"] > 0 and vqa.counts["transformer.blocks.2.mlp.v.fc1"] == 0
    assert vqa.counts["transformer.blocks.0.attn.v"] == 7 * 5  # 7 pairs × (CLS + 2×2 patches)
    coco, _ = load_grams(collect(work, "coco", "coco.safetensors", "--image-size", "48"))
    assert coco.counts["transformer.blocks.2.attn.vl"] == 0 and coco.counts["transformer.blocks.2.attn.v"] == 6 * 10
    nlvr2, _ = load_grams(collect(work, "nlvr2", "nlvr2.safetensors"))
    assert nlvr2.counts["transformer.blocks.0.attn.v"] == 4 * 2 * 5  # two images per statement


def test_grams_cli_shards_reduce_to_the_whole(work: Path) -> None:
    # float64 products: the sums' order of addition shows only at 1e-10 of an entry; what remains is the
    # float32 forward itself, whose activations round differently when a sample sits in a batch of another
    # shape (GEMM blocking), about 1e-7 of |x|: bounded here by 1e-6 of G's largest diagonal entry
    # (|G_ij| ≤ √(G_ii·G_jj)). A missing or doubled shard moves entries by their own size.
    exact = ("--products", "float64")
    whole, _ = load_grams(collect(work, "vqa", "whole.safetensors", *exact))
    shards = [collect(work, "vqa", f"s{i}.safetensors", "--shard", f"{i}/2", *exact) for i in range(2)]
    assert grams_cli.main(["--reduce", *map(str, shards), "--out", str(work / "reduced.safetensors")]) == 0
    reduced, record = load_grams(work / "reduced.safetensors")
    assert record["samples"] == 8 and [s["sha256"] for s in record["shards"]] == [
        json.loads(sidecar_path(s).read_text())["weights_sha256"] for s in shards
    ]
    assert reduced.counts == whole.counts
    for name in whole.names:
        scale = float(whole.xtx[name].diagonal().max())
        torch.testing.assert_close(reduced.xtx[name], whole.xtx[name], rtol=1e-10, atol=1e-6 * scale)


# ---------------------------------------------------------------------------------------------- merge CLI
def test_merge_cli_writes_a_loadable_shared_checkpoint_with_its_record(work: Path) -> None:
    grams = collect(work, "vqa", "g.safetensors")
    assert (
        merged(
            work,
            "rm.safetensors",
            "--method",
            "regmean",
            "--grams",
            str(grams),
            "--param",
            "alpha=0.9",
            "--param",
            "used_experts_only=vqa",
        )
        == 0
    )
    model, meta = load_model(work / "rm.safetensors")
    assert meta.sharing.value == "shared" and model.config.num_layers == 3
    record = meta.extra["merge"]
    assert record["method"] == "regmean" and record["params"]["alpha"] == 0.9
    assert record["selection"]["used_experts_only"] == "vqa"
    assert set(record["method_diagnostics"]["linear"]) == {
        f"transformer.blocks.0.{p}.weight" for p in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    }  # from F on only vl merges: nothing to solve
    assert meta.inputs == {"ms": sha(work / "ms.safetensors"), "grams": sha(grams)}


def test_merge_cli_records_the_arithmetic_mode_and_is_deterministic(work: Path) -> None:
    args = [
        "--method",
        "arithmetic",
        "--seed",
        str(work / "seed.safetensors"),
        "--param",
        "lam=0.75",
        "--param",
        "mode=upstream_sequential",
    ]
    assert merged(work, "a1.safetensors", *args) == 0 and merged(work, "a2.safetensors", *args) == 0
    assert (work / "a1.safetensors").read_bytes() == (work / "a2.safetensors").read_bytes()
    meta = read_meta(work / "a1.safetensors")
    assert meta.extra["merge"]["method_diagnostics"]["arithmetic_mode"] == "upstream_sequential"
    assert meta.inputs["seed"] == sha(work / "seed.safetensors")


def test_merge_cli_list_prints_every_method(capsys) -> None:
    assert merge_cli.main(["--list"]) == 0
    text = capsys.readouterr().out
    for name in ("interpolation", "arithmetic", "regmean", "regmean_exact_bias", "task_arithmetic", "ties", "dare"):
        assert f"\n{name}: " in "\n" + text
    assert "https://arxiv.org/abs/2304.14933" in text and "used_experts_only" in text


def tampered(work: Path, name: str, key: str, value: torch.Tensor) -> Path:
    model, meta = load_model(work / "ms.safetensors")
    state = model.state_dict() | {key: value}
    save_checkpoint(work / name, state, meta)
    return work / name


def test_bad_inputs_end_in_one_line_and_exit_2(work: Path, capsys) -> None:
    grams = collect(work, "vqa", "bad_base.safetensors")
    g, record = load_grams(grams)
    poisoned = dict(g.xtx)
    poisoned["transformer.blocks.0.mlp.l.fc2"] = g.xtx["transformer.blocks.0.mlp.l.fc2"].clone()
    poisoned["transformer.blocks.0.mlp.l.fc2"][1, 1] = float("nan")
    nan_grams = work / "nan_grams.safetensors"
    save_grams(nan_grams, GramStats(poisoned, g.sums, g.counts), record)

    wide = create_model(
        "tiny",
        "modality_specific",
        **(SMALL | {"dim": 24}),
        vocab_size=read_meta(work / "ms.safetensors").config.vocab_size,
    )
    save_model(work / "wide.safetensors", wide)
    foreign = collect(work, "vqa", "foreign.safetensors", "--ckpt", str(work / "wide.safetensors"))
    coco = collect(work, "coco", "other_task.safetensors")
    model, meta = load_model(work / "ms.safetensors")
    huge = model.state_dict()
    for m in ("v", "l"):  # finite float32 weights whose task vectors, summed and scaled by λ = 2, overflow
        huge[f"transformer.blocks.0.mlp.{m}.fc2.weight"] = torch.full_like(
            huge["transformer.blocks.0.mlp.v.fc2.weight"], 3e38
        )
    save_checkpoint(work / "huge.safetensors", huge, meta)
    other_task = ["--method", "regmean", "--grams", str(coco), "--param", "used_experts_only=vqa"]
    cases = {
        "MA checkpoint given as --ms": (["--method", "interpolation"], "seed.safetensors", "modality-agnostic"),
        "shapes that disagree": (
            ["--method", "interpolation"],
            tampered(work, "shape.safetensors", "transformer.blocks.0.mlp.v.fc1.weight", torch.zeros(31, 16)).name,
            "disagree in shape",
        ),
        "NaN weights": (
            ["--method", "interpolation"],
            tampered(
                work, "nan.safetensors", "transformer.blocks.1.attn.l.q_bias", torch.full((16,), float("nan"))
            ).name,
            "q_bias contains NaN or Inf",
        ),
        "NaN grams": (["--method", "regmean", "--grams", str(nan_grams)], None, "mlp.l.fc2 contains NaN or Inf"),
        "grams of another checkpoint": (
            ["--method", "regmean", "--grams", str(foreign)],
            None,
            "collected on another checkpoint",
        ),
        "grams of another model": (
            ["--method", "regmean", "--grams", str(foreign), "--allow-foreign-grams"],
            None,
            "grams from another model",
        ),
        "unknown method": (["--method", "slerp"], None, "unknown merge method 'slerp'"),
        "unknown parameter": (
            ["--method", "ties", "--param", "density=0.2", "--seed", "x"],
            None,
            "has no parameter(s) ['density']",
        ),
        "bad parameter value": (["--method", "interpolation", "--param", "ratio=1.5"], None, "ratio='1.5'"),
        "λ out of its range": (
            ["--method", "arithmetic", "--param", "lam=inf", "--seed", str(work / "seed.safetensors")],
            None,
            "lam='inf'",
        ),
        "grams of another task": (other_task, None, "grams of task coco, but the merge keeps the experts of task vqa"),
        "non-finite result": (
            ["--method", "arithmetic", "--param", "lam=2", "--seed", str(work / "seed.safetensors")],
            "huge.safetensors",
            "produced NaN or Inf in transformer.blocks.0.mlp.fc2.weight",
        ),
        "missing seed": (["--method", "arithmetic"], None, "needs --seed"),
        "missing grams": (["--method", "regmean"], None, "needs --grams"),
    }
    for case, (args, ms, message) in cases.items():
        capsys.readouterr()
        argv = ["--out", str(work / "never.safetensors"), *args]
        argv += ["--ms", str(work / (ms or "ms.safetensors"))]
        assert merge_cli.main(argv) == 2, case
        err = capsys.readouterr().err.strip()
        assert err.startswith("vlmerge.merge: error:") and "\n" not in err, (case, err)
        assert message in err, (case, err)
    assert not (work / "never.safetensors").exists()
    assert merged(work, "other_task_merge.safetensors", *other_task, "--allow-other-task-grams") == 0
