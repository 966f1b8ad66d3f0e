"""``python -m vlmerge.synth``: write synthetic datasets in the published raw layouts (no download).

Example: ``python -m vlmerge.synth --out data/raw/synthetic --seed 0 --size small --count sbu.train=20000``
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from vlmerge.runtime import provenance
from vlmerge.runtime.settings import add_settings_arguments, settings_from_args
from vlmerge.runtime.stage import run_stage
from vlmerge.synth.config import SynthSettings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vlmerge.synth", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="output folder; one sub-folder per dataset")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_settings_arguments(p, SynthSettings)
    return p


def nested_counts(count: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """``{"sbu.train": 3}`` → ``{"sbu": {"train": 3}}``: the shape ``generate`` checks against its presets."""
    nested: dict[str, dict[str, int]] = {}
    for key, n in count.items():
        dataset, _, split = key.partition(".")
        nested.setdefault(dataset, {})[split] = n
    return nested


def run(out: Path, settings: SynthSettings) -> None:
    """Generate the datasets and say how many images were written (the record is ``<out>/synth.json``)."""
    from vlmerge.data.synth import generate  # imported by the run alone: ``--help`` stays light

    provenance("synth", {"out": str(out), **settings.model_dump()})
    summary = generate(
        out,
        seed=settings.seed,
        size=settings.size,
        datasets=settings.datasets,
        counts=nested_counts(settings.count) or None,
        image_size=settings.image_size,
    )
    images = sum(c.get("images", 0) for splits in summary["written"].values() for c in splits.values())
    print(f"wrote {images} images of {', '.join(summary['datasets'])} to {out}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_stage("synth", lambda: run(args.out, settings_from_args(args, SynthSettings)), verbose=args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
