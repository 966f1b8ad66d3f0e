"""Raw datasets → ViLT Arrow tables (docs/data.md), one converter per raw layout (docs/raw-formats.md).

Each converter streams rows into the tables named by ``vlmerge.data.schema.FILES`` and records
what it kept and skipped on a :class:`Conversion`; :func:`write_manifest` then lists it all with
the outputs' checksums. Bad raw input raises :class:`RawDataError` naming the file and record.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vlmerge.data.arrow.conversion import Conversion, ConvertOptions
from vlmerge.data.arrow.errors import RawDataError
from vlmerge.data.arrow.karpathy import convert_karpathy
from vlmerge.data.arrow.manifest import write_manifest
from vlmerge.data.arrow.nlvr2 import convert_nlvr2
from vlmerge.data.arrow.pairs import convert_pairs
from vlmerge.data.arrow.vg import convert_vg
from vlmerge.data.arrow.vqa import convert_vqa

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


__all__ = ["CONVERTERS", "Conversion", "ConvertOptions", "RawDataError", "convert", "write_manifest"]
