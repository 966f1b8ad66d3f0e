"""Stage ``prepare``: convert one raw dataset into ViLT Arrow tables plus a manifest.

    python -m vlmerge.prepare --dataset coco --raw data/raw/coco --out data/arrow [--strict]

Writes the tables named by ``vlmerge.data.schema.FILES`` and, last, ``<out>/<dataset>.manifest.json``
(row counts, skipped items with reasons, sha256 of every output, provenance). The dataset is replaced
as one unit: everything is written to ``<out>/.staging-<dataset>-<pid>/`` and moved into place only
when the conversion succeeded, the manifest last. Bad raw input, a split with no rows, more skipped
images than ``max_skip_rate``, a bad setting or a failed write ends with a one-line error naming the
file, key or counts and exit code 2, and leaves the previous tables and manifest as they were.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmerge.catalog.names import DATASETS
from vlmerge.prepare.config import PrepareSettings
from vlmerge.runtime import provenance
from vlmerge.runtime.settings import add_settings_arguments, settings_from_args
from vlmerge.runtime.stage import run_stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareConfig:
    dataset: str
    raw: Path
    out: Path
    settings: PrepareSettings

    def resolved(self) -> dict[str, Any]:
        """What the manifest's provenance records: the paths and every setting."""
        return {"dataset": self.dataset, "raw": str(self.raw), "out": str(self.out), **self.settings.model_dump()}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vlmerge.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--raw", required=True, type=Path, help="root of the raw dataset (layout: docs/raw-formats.md)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the arrow files and the manifest")
    parser.add_argument("--verbose", action="store_true", help="debug logging (lists each skipped item)")
    add_settings_arguments(parser, PrepareSettings)
    return parser


def run(config: PrepareConfig) -> None:
    """Convert into a staging folder, check, then swap the files in with the manifest last."""
    from vlmerge.data.arrow import ConvertOptions, prepare_dataset  # imported by the run alone

    result, manifest = prepare_dataset(
        config.dataset,
        config.raw,
        config.out,
        ConvertOptions(**config.settings.model_dump()),
        provenance("prepare", config.resolved()),
    )
    log.info(
        "%s: %s rows, %d skipped; manifest %s",
        config.dataset,
        {split: counts["rows"] for split, counts in result.splits.items()},
        len(result.skipped),
        manifest,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> None:
        settings = settings_from_args(args, PrepareSettings)
        run(PrepareConfig(args.dataset, args.raw.resolve(), args.out.resolve(), settings))

    return run_stage("prepare", body, verbose=args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
