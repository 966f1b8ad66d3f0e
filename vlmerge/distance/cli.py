"""Stage ``distance``: weight-distance metrics between an MS checkpoint's experts and to the seed.

    python -m vlmerge.distance --ms MS.safetensors --seed SEED.safetensors --out distance.json [--k 20]

Writes per-layer and overall L2, cosine and sign dissimilarities (defined in
:mod:`vlmerge.merging.distance`) with the sha256 of both inputs, for the report stage to correlate
with downstream scores. Bad input ends with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmerge.distance.config import DistanceSettings
from vlmerge.runtime import atomic_write_json, provenance, sha256_file
from vlmerge.runtime.outputs import check_outputs, with_sidecar
from vlmerge.runtime.settings import add_settings_arguments, settings_from_args
from vlmerge.runtime.stage import run_stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistanceConfig:
    ms: Path
    seed: Path
    out: Path
    settings: DistanceSettings

    def resolved(self) -> dict[str, Any]:
        return {"ms": str(self.ms), "seed": str(self.seed), "out": str(self.out), **self.settings.model_dump()}


def parse_args(argv: list[str] | None) -> DistanceConfig:
    parser = argparse.ArgumentParser(prog="python -m vlmerge.distance", description=__doc__.split("\n")[0])
    parser.add_argument("--ms", type=Path, required=True, help="the modality-specific (MS) checkpoint")
    parser.add_argument("--seed", type=Path, required=True, help="the seed (MA) checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="output JSON")
    add_settings_arguments(parser, DistanceSettings)
    args = parser.parse_args(argv)
    return DistanceConfig(args.ms, args.seed, args.out, settings_from_args(args, DistanceSettings))


def run(config: DistanceConfig) -> None:
    # torch and the model come with the run alone: ``--help`` stays light.
    from vlmerge.merging.distance import weight_distances
    from vlmerge.merging.errors import MergeError
    from vlmerge.merging.validate import check_finite, check_ms_state
    from vlmerge.model import Sharing, expert_layout
    from vlmerge.model.checkpoint import load_state

    check_outputs([("--out", config.out)], [*with_sidecar("--ms", config.ms), *with_sidecar("--seed", config.seed)])
    ms_state, meta = load_state(config.ms)
    seed_state, seed_meta = load_state(config.seed)
    if meta.sharing is Sharing.SHARED:
        raise MergeError(f"{config.ms} is a modality-agnostic (MA) checkpoint; --ms needs a modality-specific one")
    if seed_meta.sharing is not Sharing.SHARED:
        raise MergeError(f"{config.seed} is {seed_meta.sharing.value}; --seed needs the MA seed checkpoint")
    layout = expert_layout(meta.config, meta.sharing)
    groups = check_ms_state(ms_state, layout)
    for group in groups:
        shape = tuple(ms_state[group.experts[next(iter(group.experts))]].shape)
        if group.ma_key not in seed_state or tuple(seed_state[group.ma_key].shape) != shape:
            raise MergeError(f"{config.seed}: {group.ma_key} is missing or not shaped {shape} like the experts")
    check_finite({g.ma_key: seed_state[g.ma_key] for g in groups}, str(config.seed))
    record = weight_distances(ms_state, seed_state, layout, config.settings.k)
    record["inputs"] = {"ms": sha256_file(config.ms), "seed": sha256_file(config.seed)}
    record["provenance"] = provenance("distance", config.resolved())
    atomic_write_json(config.out, record)
    log.info("wrote %s; overall %s", config.out, record["overall"]["pairs"])


def main(argv: list[str] | None = None) -> int:
    return run_stage("distance", lambda: run(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
