"""``python -m vlmerge.synth``: write synthetic datasets in the published raw layouts (no download).

Example: ``python -m vlmerge.synth --out data/raw/synthetic --seed 0 --size small --count sbu.train=20000``
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from vlmerge.data.synth import SIZES, SPLITS, SynthError, generate, parse_count
from vlmerge.runtime import provenance, setup_logging

log = logging.getLogger("vlmerge.synth")


@dataclass(frozen=True)
class SynthArgs:
    out: Path
    seed: int
    size: str
    datasets: tuple[str, ...] | None
    counts: dict[str, dict[str, int]]
    image_size: int
    verbose: bool


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vlmerge.synth", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="output folder; one sub-folder per dataset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--datasets", default=None, help=f"comma-separated subset of {','.join(SPLITS)} (default: all)")
    p.add_argument("--count", action="append", default=[], metavar="DATASET.SPLIT=N",
                   help="override one split's count, e.g. sbu.train=20000 (repeatable)")
    p.add_argument("--image-size", type=int, default=48, help="image side in pixels (default 48)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def parse_args(argv: list[str] | None) -> SynthArgs:
    """Parse and validate once; raises SynthError for bad --datasets/--count values."""
    ns = _parser().parse_args(argv)
    datasets = None
    if ns.datasets is not None:
        datasets = tuple(d.strip() for d in ns.datasets.split(",") if d.strip())
    counts: dict[str, dict[str, int]] = {}
    for text in ns.count:
        dataset, split, n = parse_count(text)
        counts.setdefault(dataset, {})[split] = n
    return SynthArgs(ns.out, ns.seed, ns.size, datasets, counts, ns.image_size, ns.verbose)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        setup_logging(args.verbose)
        provenance("synth", {**asdict(args), "out": str(args.out)})
        summary = generate(args.out, seed=args.seed, size=args.size, datasets=args.datasets,
                           counts=args.counts or None, image_size=args.image_size)
    except SynthError as err:
        print(f"vlmerge.synth: error: {err}", file=sys.stderr)
        return 2
    images = sum(c.get("images", 0) for splits in summary["written"].values() for c in splits.values())
    print(f"wrote {images} images of {', '.join(summary['datasets'])} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
