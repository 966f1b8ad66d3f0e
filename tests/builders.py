"""Small data, models and commands several test modules build (imported, never collected as tests).

Each builder makes real files with the real code: the synthetic generator in its published raw layouts,
the real converters, a WordPiece vocabulary trained on the converted text.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from vlmerge.data.arrow import ConvertOptions, convert
from vlmerge.data.synth import generate
from vlmerge.data.tokenizer import train_wordpiece
from vlmerge.metrics import normalize_answer
from vlmerge.model import Heads, create_model
from vlmerge.vocab.cli import arrow_texts

ROOT = Path(__file__).resolve().parents[1]
# Rules call `python -m vlmerge.<stage>`: the interpreter running the tests must be the one they find.
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]

# --- model sizes ------------------------------------------------------------------------------------------
# Width 32 (the `pico` preset of conftest.py is width 16): the model, checkpoint and expansion tests.
SMALL = dict(
    num_layers=3,
    dim=32,
    num_heads=2,
    mlp_dim=64,
    image_size=32,
    max_text_len=8,
    vocab_size=50,
    drop_path=0.0,
    embed_dropout=0.0,
)

# --- fine-tuning tasks -----------------------------------------------------------------------------------
TASK_DATASETS = ("coco", "f30k", "vqa", "nlvr2")
TASK_MODEL = dict(num_layers=3, dim=64, num_heads=2, mlp_dim=128, image_size=32, drop_path=0.0)
# Odd split sizes, so that two evaluation shards need padding.
COUNTS = {"f30k": {"val": 7, "test": 7}, "vqa": {"val": 10, "test": 5, "test-dev": 3}, "nlvr2": {"dev": 7}}


def build_task_data(root: Path) -> tuple[Path, Path, Path]:
    """Tiny synthetic fine-tuning data → (arrow dir, tokenizer dir, raw dir)."""
    raw, arrow = root / "raw", root / "arrow"
    generate(raw, seed=0, size="tiny", datasets=list(TASK_DATASETS), counts=COUNTS)
    for dataset in TASK_DATASETS:
        convert(dataset, raw / dataset, arrow, ConvertOptions(min_answer_count=1, rest_val_images=5))
    return arrow, train_wordpiece(arrow_texts(arrow), root / "tokenizer", vocab_size=300), raw


def tiny_model(vocab_size: int, sharing: str = "shared", heads: Heads = Heads(), seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return create_model("tiny", sharing, heads, **(TASK_MODEL | {"vocab_size": vocab_size} | overrides))


# --- pre-training ----------------------------------------------------------------------------------------
PRETRAIN_MODEL = dict(num_layers=3, dim=64, num_heads=2, mlp_dim=128, image_size=32)
PRETRAIN_MODEL_ARG = "num_layers=3,dim=64,num_heads=2,mlp_dim=128"
CORPORA = ("coco", "vg", "sbu", "gcc")


def build_pretrain_data(root: Path) -> tuple[Path, Path]:
    """Tiny synthetic caption corpora → arrow tables + a WordPiece tokenizer: (arrow dir, tokenizer dir)."""
    raw, arrow = root / "raw", root / "arrow"
    generate(raw, seed=0, size="tiny", datasets=list(CORPORA))
    for dataset in CORPORA:
        convert(dataset, raw / dataset, arrow, ConvertOptions())
    return arrow, train_wordpiece(arrow_texts(arrow), root / "tokenizer", vocab_size=300)


def pretrain_cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "vlmerge.pretrain", *map(str, args)]


# --- references ------------------------------------------------------------------------------------------
def naive_question_accuracy(prediction: str, humans: list[str]) -> float:
    """Reference for ``mode="always_normalize"``, written as a plain loop: both sides always normalised,
    leave each human out, count the others that match, cap at 3. Not the official rule, which compares
    raw stripped strings when the ten stripped human answers are all identical."""
    pred = normalize_answer(prediction)
    total = 0.0
    for i in range(len(humans)):
        others = humans[:i] + humans[i + 1 :]
        total += min(1.0, sum(normalize_answer(o) == pred for o in others) / 3)
    return total / len(humans)


# --- the workflow ----------------------------------------------------------------------------------------
def write_config(tmp_path: Path, **data_overrides: object) -> Path:
    """config.yaml at the tests' sizes (tiny synthetic data, small vocabulary) with ``data`` overrides."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["data"]["synthetic"]["size"] = "tiny"
    config["data"]["prepare"]["rest_val_images"] = 4
    config["data"]["prepare"]["min_answer_count"] = 2
    config["data"]["tokenizer"]["vocab_size"] = 300
    config["data"].update(data_overrides)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake(tmp_path: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # --configfile takes several files: it goes last so that targets are not read as config files.
    return subprocess.run(
        [*SNAKEMAKE, *args, "-d", str(tmp_path), "--configfile", str(config)],
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
    )


def planned_jobs(tmp_path: Path, config: Path, *targets: str) -> dict[str, int]:
    """Job counts per rule from a dry run (``snakemake -n`` prints a 'job count' table)."""
    out = snakemake(tmp_path, config, *targets, "-n", "--quiet", "rules")
    assert out.returncode == 0, out.stderr
    counts: dict[str, int] = {}
    for line in (out.stdout + out.stderr).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            counts[parts[0]] = int(parts[1])
    return counts


def paper_site(tmp_path: Path) -> Path:
    """A site overlay for the paper profile whose external paths exist: empty raw-data roots, a BERT
    vocabulary file and a BEiT weights file under ``tmp_path`` (enough for dry runs)."""
    site = tmp_path / "site"
    raw = {name: str(site / "datasets" / name) for name in ("coco", "f30k", "vqa", "nlvr2", "vg", "sbu", "gcc")}
    for root in raw.values():
        Path(root).mkdir(parents=True, exist_ok=True)
    (site / "vocab.txt").write_text("[PAD]\n")
    (site / "beit.pth").write_bytes(b"")
    overlay = {
        "data": {"raw": raw, "tokenizer": {"bert_vocab": str(site / "vocab.txt")}},
        "pretrain": {"init": f"beit:{site / 'beit.pth'}"},
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return path
