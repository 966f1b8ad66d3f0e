"""Gram files: ``grams.safetensors`` plus a JSON sidecar (task, split, samples, image size, model sha256).

Both are written as one unit (:func:`~vlmerge.runtime.atomic.atomic_pair`); loading checks the sidecar's
``weights_sha256`` against the file, so a gram file and the record of how it was made cannot drift apart.
The record names the experiment that wrote it; a gram file of another experiment is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from vlmerge.merging.errors import GramsError
from vlmerge.merging.grams import GramStats, reduce_grams
from vlmerge.merging.stream import SafetensorsReader
from vlmerge.merging.validate import is_finite
from vlmerge.runtime import sha256_file
from vlmerge.runtime.atomic import atomic_pair
from vlmerge.runtime.checksums import BackgroundChecksums
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
    record = _checked_record(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise GramsError(f"cannot read gram file {path}: {err}") from err
    return GramStats.from_tensors(tensors, str(path)), record


def _checked_record(path: str | os.PathLike[str], checksums: BackgroundChecksums | None = None) -> dict[str, Any]:
    """The sidecar record of gram file ``path``, from this experiment and describing these very bytes
    (that check queued on ``checksums`` when given)."""
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

    def mismatch(_: str) -> GramsError:
        return GramsError(
            f"{path} does not match the weights_sha256 in {sidecar}: the gram file and its sidecar are from "
            "different writes"
        )

    if checksums is not None:
        checksums.add(path, str(record.get("weights_sha256")), mismatch)
    elif record.get("weights_sha256") != sha256_file(path):
        raise mismatch("")
    return record


class _OnDemand(Mapping[str, torch.Tensor]):
    """Gram entries of an open file read when indexed (float64, checked finite), never kept."""

    def __init__(self, reader: SafetensorsReader, names: Sequence[str], suffix: str, source: str) -> None:
        self._reader, self._names, self._suffix, self._source = reader, frozenset(names), suffix, source

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._names:
            raise KeyError(name)
        tensor = self._reader.read(name + self._suffix)
        if not is_finite(tensor):
            raise GramsError(f"{self._source}: {name} contains NaN or Inf")
        return tensor.to(torch.float64)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._names))

    def __len__(self) -> int:
        return len(self._names)


@dataclass(frozen=True)
class LazyGramStats(GramStats):
    """:class:`GramStats` over an open gram file: each XᵀX and Σx is read when a merge asks for it, so
    RegMean holds one layer's grams at a time; ``shapes`` gives every gram's shape from the header."""

    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


def open_grams(
    path: str | os.PathLike[str], checksums: BackgroundChecksums | None = None
) -> tuple[LazyGramStats, dict[str, Any]]:
    """:func:`load_grams` reading nothing but the header and the token counts: the same checks of the
    sidecar, checksum and layout (names, shapes, counts); each gram's finiteness when it is read. With
    ``checksums`` the checksum is queued there (the caller must ``checksums.verify()`` before writing)."""
    record = _checked_record(path, checksums)
    source = str(path)
    try:
        with safe_open(source, framework="pt"):  # the header checks of safetensors itself
            pass
        reader = SafetensorsReader(source)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise GramsError(f"cannot read gram file {path}: {err}") from err
    shapes = {k: reader.shape(k) for k in reader.keys()}
    names = sorted(k for k in shapes if not k.endswith((".sum", ".count")))
    counts: dict[str, int] = {}
    for name in names:
        if f"{name}.sum" not in shapes or f"{name}.count" not in shapes:
            raise GramsError(f"{source}: {name} has no .sum or .count entry")
        g, s, n = shapes[name], shapes[f"{name}.sum"], shapes[f"{name}.count"]
        dim = g[0] if len(g) == 2 else -1
        if g != (dim, dim) or s != (dim,) or n != ():
            raise GramsError(f"{source}: {name} has shapes {g}, {s}, {n}; expected [D, D], [D] and a scalar count")
        counts[name] = int(reader.read(f"{name}.count"))
        if counts[name] < 0:
            raise GramsError(f"{source}: {name} has a negative token count")
    orphans = sorted(set(shapes) - set(names) - {f"{n}.sum" for n in names} - {f"{n}.count" for n in names})
    if orphans:
        raise GramsError(f"{source}: entries without a gram: {orphans[:5]}")
    grams = LazyGramStats(
        _OnDemand(reader, names, "", source),
        _OnDemand(reader, names, ".sum", source),
        counts,
        {n: shapes[n] for n in names},
    )
    return grams, record


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
