"""The ViLT Arrow tables (docs/data.md): file names and column types, shared by writers and readers.

Files are Arrow IPC *file* format; images are the raw encoded bytes of the source file. These
match the tables written by ViLT's ``write_*.py`` scripts (and used by VLMo and vl-merging), so
existing arrow files and ours are interchangeable.
"""

from __future__ import annotations

import pyarrow as pa

from vlmerge.catalog.names import DATASETS

CAPTION = pa.schema(
    [
        ("image", pa.binary()),
        ("caption", pa.list_(pa.string())),
        ("image_id", pa.string()),
        ("split", pa.string()),
    ]
)

VQA = pa.schema(
    [
        ("image", pa.binary()),
        ("questions", pa.list_(pa.string())),
        ("answers", pa.list_(pa.list_(pa.string()))),
        ("answer_labels", pa.list_(pa.list_(pa.int64()))),
        ("answer_scores", pa.list_(pa.list_(pa.float64()))),
        ("image_id", pa.int64()),
        ("question_id", pa.list_(pa.int64())),
        ("split", pa.string()),
    ]
)

NLVR2 = pa.schema(
    [
        ("image_0", pa.binary()),
        ("image_1", pa.binary()),
        ("questions", pa.list_(pa.string())),
        ("answers", pa.list_(pa.string())),
        ("identifier", pa.string()),
    ]
)

VG = pa.schema(
    [
        ("image", pa.binary()),
        ("caption", pa.list_(pa.string())),
        ("width", pa.list_(pa.int64())),
        ("height", pa.list_(pa.int64())),
        ("x", pa.list_(pa.int64())),
        ("y", pa.list_(pa.int64())),
        ("image_id", pa.string()),
    ]
)

# NLVR2's balanced/unbalanced subsets of dev and test1 (ViLT's write_nlvr2.py names).
NLVR2_SUBSETS = ("balanced_dev", "balanced_test1", "unbalanced_dev", "unbalanced_test1")

# Output files per dataset and split. SBU and GCC are sharded: ``{shard}`` is 0, 1, …
FILES: dict[str, dict[str, str]] = {
    "coco": {s: f"coco_caption_karpathy_{s}.arrow" for s in ("train", "restval", "val", "test")},
    "f30k": {s: f"f30k_caption_karpathy_{s}.arrow" for s in ("train", "val", "test")},
    "vqa": {s: f"vqav2_{s}.arrow" for s in ("train", "val", "trainable_val", "rest_val", "test", "test-dev")},
    "nlvr2": {s: f"nlvr2_{s}.arrow" for s in ("train", "dev", "test1", *NLVR2_SUBSETS)},
    "vg": {"train": "vg.arrow"},
    "sbu": {"train": "sbu_{shard}.arrow"},
    "gcc": {s: f"conceptual_caption_{s}_{{shard}}.arrow" for s in ("train", "val")},
}

SCHEMAS: dict[str, pa.Schema] = {
    "coco": CAPTION,
    "f30k": CAPTION,
    "vqa": VQA,
    "nlvr2": NLVR2,
    "vg": VG,
    "sbu": CAPTION,
    "gcc": CAPTION,
}

assert tuple(FILES) == DATASETS, "one table layout per catalogued dataset, in the catalogue's order"

# Splits of FILES written only when the raw data has their annotation files (the others always are).
OPTIONAL_SPLITS: dict[str, tuple[str, ...]] = {"nlvr2": NLVR2_SUBSETS}

# The VQA answer vocabulary (label index → answer string) is written beside the arrow files.
VQA_ANSWERS_FILE = "vqav2_answers.json"
TOKENIZER_DIR = "tokenizer"


def manifest_name(dataset: str) -> str:
    """Per-dataset manifest: row counts, skipped items with reasons, sha256 of every output."""
    return f"{dataset}.manifest.json"
