"""Stage ``export``: write a vlmerge checkpoint as a vl-merging Lightning checkpoint.

    python -m vlmerge.export --ckpt IN.safetensors --out OUT.ckpt --format vl-merging [--text-rows-for 196]

Upstream loads with ``torch.load(path, map_location="cpu")["state_dict"]`` and
``load_state_dict(strict=False)``, so a file that misses a key loads silently with that weight left at
its initialisation: the state dict therefore carries upstream's names, its 0-d temperatures, its bias
table layout and the buffers its loader touches. ``python -m vlmerge.import`` of the result gives back
every tensor exactly. Bad input ends with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmerge.export.config import ExportSettings
from vlmerge.runtime import atomic_path, provenance, sha256_file
from vlmerge.runtime.outputs import check_outputs, with_sidecar
from vlmerge.runtime.settings import add_settings_arguments, settings_from_args
from vlmerge.runtime.stage import run_stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportConfig:
    ckpt: Path
    out: Path
    settings: ExportSettings

    def resolved(self) -> dict[str, Any]:
        return {"ckpt": str(self.ckpt), "out": str(self.out), **self.settings.model_dump()}


def parse_args(argv: list[str] | None) -> ExportConfig:
    parser = argparse.ArgumentParser(prog="python -m vlmerge.export", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="the vlmerge checkpoint (.safetensors + sidecar)")
    parser.add_argument("--out", type=Path, required=True, help="output Lightning checkpoint (.ckpt)")
    add_settings_arguments(parser, ExportSettings)
    args = parser.parse_args(argv)
    return ExportConfig(args.ckpt, args.out, settings_from_args(args, ExportSettings))


def run(config: ExportConfig) -> None:
    # torch and the model come with the run alone: ``--help`` stays light. The file written is the dictionary
    # Lightning saves, built by hand: exporting never imports Lightning.
    import torch

    from vlmerge.model.checkpoint import load_state
    from vlmerge.model.import_vlmerging import lightning_checkpoint, to_vlmerging_state

    check_outputs([("--out", config.out)], with_sidecar("--ckpt", config.ckpt))
    state, meta = load_state(config.ckpt)
    upstream = to_vlmerging_state(state, meta.config, config.settings.text_rows_for)
    record = {
        "source_sha256": sha256_file(config.ckpt),
        "sharing": meta.sharing.value,
        "preset": meta.preset,
        "overrides": meta.overrides,
        "provenance": provenance("export", config.resolved()),
    }
    with atomic_path(config.out) as tmp:
        torch.save(lightning_checkpoint(upstream, meta.steps, record), tmp)
    log.info("exported %s (%s) to %s", config.ckpt, meta.sharing.value, config.out)


def main(argv: list[str] | None = None) -> int:
    return run_stage("export", lambda: run(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
