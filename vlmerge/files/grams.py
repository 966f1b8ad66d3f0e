"""Gram files: ``grams.safetensors`` plus a JSON sidecar (task, split, samples, image size, model sha256).

Both are written as one unit (:func:`~vlmerge.runtime.atomic.atomic_pair`); loading checks the sidecar's
``weights_sha256`` against the file, so a gram file and the record of how it was made cannot drift apart.
The record names the experiment that wrote it; a gram file of another experiment is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vlmerge.merging.errors import GramsError
from vlmerge.merging.grams import GramStats, reduce_grams
from vlmerge.runtime import sha256_file
from vlmerge.runtime.atomic import atomic_pair
from vlmerge.runtime.experiment import check_experiment, experiment_record

# Fields that must agree between shards (and that describe what the statistics mean).
SHARD_KEYS = ("task", "split", "image_size", "include_pad", "checkpoint_sha256", "layout")


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    return Path(path).with_suffix(".json")


def save_grams(path: str | os.PathLike[str], grams: GramStats, record: Mapping[str, Any]) -> None:
    """Write the statistics and ``record`` (plus the experiment and ``weights_sha256``) as one unit."""
    tensors = grams.to_tensors()
    atomic_pair(path, sidecar_path(path), lambda tmp: save_file(tensors, str(tmp)), dict(record) | experiment_record())


def load_grams(path: str | os.PathLike[str]) -> tuple[GramStats, dict[str, Any]]:
    """The statistics of a gram file and its sidecar record, after checking that they belong together."""
    sidecar = sidecar_path(path)
    if Path(path).suffix == ".json" or Path(path).is_dir():
        raise GramsError(f"gram file {path}: expected the .safetensors file beside its sidecar")
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GramsError(f"cannot read the sidecar {sidecar} of gram file {path}: {err}") from err
    if not isinstance(record, dict):
        raise GramsError(f"{sidecar}: the sidecar of gram file {path} is not a JSON object")
    if not Path(path).is_file():
        raise GramsError(f"gram file {path} does not exist")
    check_experiment(path, record)
    if record.get("weights_sha256") != sha256_file(path):
        raise GramsError(
            f"{path} does not match the weights_sha256 in {sidecar}: the gram file and its sidecar are from "
            "different writes"
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise GramsError(f"cannot read gram file {path}: {err}") from err
    return GramStats.from_tensors(tensors, str(path)), record


def reduce_files(paths: Sequence[str | os.PathLike[str]]) -> tuple[GramStats, dict[str, Any]]:
    """Load shard files, check they describe the same task/model/split, and sum them."""
    loaded = [load_grams(p) for p in paths]
    first = loaded[0][1]
    for path, (_, record) in zip(paths[1:], loaded[1:]):
        differ = [k for k in SHARD_KEYS if record.get(k) != first.get(k)]
        if differ:
            raise GramsError(f"gram shard {path} differs from {paths[0]} in {differ}")
    record = {k: first.get(k) for k in SHARD_KEYS} | {
        "samples": sum(int(r.get("samples", 0)) for _, r in loaded),
        "shards": [{"path": str(p), "sha256": r["weights_sha256"]} for p, (_, r) in zip(paths, loaded)],
    }
    return reduce_grams([g for g, _ in loaded]), record
