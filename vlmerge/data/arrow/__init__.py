"""Raw datasets → ViLT Arrow tables (docs/data.md), one converter per raw layout (docs/raw-formats.md).

Each converter streams rows into the tables named by ``vlmerge.data.schema.FILES`` and records
what it kept and skipped on a :class:`Conversion`; :func:`write_manifest` then lists it all with
the outputs' checksums. :func:`prepare_dataset` does the whole of it as one unit: convert into a
staging folder, check, write the manifest, and swap the files in (vlmerge.data.arrow.manifest).
Bad raw input raises :class:`RawDataError` naming the file and record.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlmerge.data.arrow.conversion import Conversion, ConvertOptions
from vlmerge.data.arrow.errors import RawDataError
from vlmerge.data.arrow.karpathy import convert_karpathy
from vlmerge.data.arrow.manifest import commit, remove_stale_staging, staging_dir, write_manifest
from vlmerge.data.arrow.nlvr2 import convert_nlvr2
from vlmerge.data.arrow.pairs import convert_pairs
from vlmerge.data.arrow.vg import convert_vg
from vlmerge.data.arrow.vqa import convert_vqa
from vlmerge.data.schema import manifest_name

CONVERTERS: dict[str, Callable[[Conversion], None]] = {
    "coco": convert_karpathy,
    "f30k": convert_karpathy,
    "vqa": convert_vqa,
    "nlvr2": convert_nlvr2,
    "vg": convert_vg,
    "sbu": convert_pairs,
    "gcc": convert_pairs,
}


def convert(dataset: str, raw: Path, out: Path, options: ConvertOptions) -> Conversion:
    """Convert ``dataset`` from its raw layout under ``raw`` into Arrow tables under ``out``.

    Raises:
        RawDataError: a required input is missing or malformed (or, with ``options.strict``, an image).
    """
    if not raw.is_dir():
        raise RawDataError(f"missing raw dataset folder: {raw}")
    out.mkdir(parents=True, exist_ok=True)
    run = Conversion(dataset, raw, out, options)
    CONVERTERS[dataset](run)
    return run


def prepare_dataset(
    dataset: str, raw: Path, out: Path, options: ConvertOptions, provenance: dict[str, Any]
) -> tuple[Conversion, Path]:
    """Convert ``dataset`` and replace its files in ``out`` as one unit; returns the run and the manifest.

    Everything is written to a staging folder inside ``out`` and checked (:meth:`Conversion.check`)
    before the first file moves; on any failure the previous tables and manifest stay as they were.

    Raises:
        RawDataError: bad raw input, an empty split or too many skipped images (with the counts), or a
            write that failed (disk full, no permission), naming the file.
    """
    if not raw.is_dir():
        raise RawDataError(f"missing raw dataset folder: {raw}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(out, dataset)
        staging = staging_dir(out, dataset)
        staging.mkdir()
    except OSError as err:
        raise RawDataError(f"cannot write to {out}: {_reason(err)}") from None
    try:
        try:
            run = convert(dataset, raw, staging, options)
            run.check()
            write_manifest(run, provenance)
        except OSError as err:
            raise RawDataError(f"{dataset}: {_reason(err)}; the previous outputs in {out} are unchanged") from None
        try:
            return run, commit(run, out)
        except OSError as err:
            raise RawDataError(
                f"{dataset}: moving the new files into {out} failed ({_reason(err)}); the tables there no "
                f"longer match {manifest_name(dataset)}: run prepare again"
            ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _reason(err: OSError) -> str:
    """``<file>: <strerror>`` when the error names them, else its text."""
    if err.strerror and err.filename:
        return f"{err.filename}: {err.strerror}"
    return str(err) or type(err).__name__


__all__ = [
    "CONVERTERS",
    "Conversion",
    "ConvertOptions",
    "RawDataError",
    "convert",
    "prepare_dataset",
    "write_manifest",
]
