"""Stage ``prepare``: convert one raw dataset into ViLT Arrow tables plus a manifest.

    python -m vlmerge.prepare --dataset coco --raw data/raw/coco --out data/arrow

Writes the tables named by ``vlmerge.data.schema.FILES`` and, last, ``<out>/<dataset>.manifest.json``
(row counts, skipped items with reasons, sha256 of every output, provenance). Bad raw input ends
with a one-line error naming the file and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlmerge.data.arrow import ConvertOptions, RawDataError, convert, write_manifest
from vlmerge.data.schema import DATASETS
from vlmerge.runtime import provenance, setup_logging

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareConfig:
    dataset: str
    raw: Path
    out: Path
    options: ConvertOptions
    verbose: bool = False

    def resolved(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "raw": str(self.raw), "out": str(self.out), **asdict(self.options)}


def _at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def parse_args(argv: list[str] | None) -> PrepareConfig:
    defaults = ConvertOptions()
    parser = argparse.ArgumentParser(prog="python -m vlmerge.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--raw", required=True, type=Path, help="root of the raw dataset (RAW-FORMATS.md layout)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the arrow files and the manifest")
    parser.add_argument("--strict", action="store_true", help="an unusable image is an error, not a skipped item")
    parser.add_argument("--shard-size", type=_at_least(1), default=defaults.shard_size,
                        help="rows per file of the sharded tables (sbu, gcc)")
    parser.add_argument("--min-answer-count", type=_at_least(1), default=defaults.min_answer_count,
                        help="vqa: keep answers seen at least this often in train+val")
    parser.add_argument("--rest-val-images", type=_at_least(0), default=defaults.rest_val_images,
                        help="vqa: last images of val held out as rest_val")
    parser.add_argument("--batch-rows", type=_at_least(1), default=defaults.batch_rows,
                        help="rows per arrow record batch (bounds memory)")
    parser.add_argument("--verbose", action="store_true", help="debug logging (lists each skipped item)")
    args = parser.parse_args(argv)
    options = ConvertOptions(strict=args.strict, shard_size=args.shard_size, min_answer_count=args.min_answer_count,
                             rest_val_images=args.rest_val_images, batch_rows=args.batch_rows)
    return PrepareConfig(args.dataset, args.raw.resolve(), args.out.resolve(), options, args.verbose)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    setup_logging(config.verbose)
    try:
        run = convert(config.dataset, config.raw, config.out, config.options)
    except RawDataError as err:
        print(f"vlmerge.prepare: error: {err}", file=sys.stderr)
        return 2
    manifest = write_manifest(run, provenance("prepare", config.resolved()))
    log.info("%s: %s rows, %d skipped; manifest %s", config.dataset,
             {split: counts["rows"] for split, counts in run.splits.items()}, len(run.skipped), manifest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
