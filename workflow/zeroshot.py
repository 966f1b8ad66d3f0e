"""Inputs, outputs and arguments of the zero-shot retrieval rule, derived from the validated config.

``results/zeroshot/<method>.json`` scores one method's weights before fine-tuning on the test split of
every configured retrieval dataset (COCO, Flickr30k): ``seed``, ``ma``, ``ms`` (the pre-trained
checkpoints) and every ``merge.methods`` entry. A merge made per task (grams, ``used_experts_only``) is
scored on each dataset with that dataset's own merge, e.g. ``results/merged/coco/regmean.safetensors`` on
COCO. ``report.zeroshot: false`` (or no retrieval dataset among ``data.datasets``) leaves the tier out of
``snakemake`` and of the report.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from vlmerge.catalog.names import RETRIEVAL_TASKS
from vlmerge.errors import ConfigError
from vlmerge.runtime.settings import build
from vlmerge.zeroshot.config import ZeroshotSettings
from workflow.config import experiment_args
from workflow.merging import Merging
from workflow.paths import Paths, stage_code

BASELINES = ("seed", "ma", "ms")


class Zeroshot:
    def __init__(self, config: dict[str, Any], paths: Paths, merging: Merging) -> None:
        self.paths, self.merging = paths, merging
        self.datasets = [d for d in RETRIEVAL_TASKS if d in config["data"]["datasets"]]
        self.enabled = bool(config.get("report", {}).get("zeroshot", True)) and bool(self.datasets)
        clash = sorted(set(BASELINES) & set(merging.methods))
        if clash:
            raise ConfigError(f"config merge.methods: {clash} name pre-trained checkpoints of the zero-shot tier")
        self.methods = [*BASELINES, *merging.methods]
        self.threads = config["pretrain"]["launch"]["threads"]
        self.experiment = experiment_args(config)

    @property
    def method_pattern(self) -> str:
        return "|".join(re.escape(m) for m in self.methods)

    @staticmethod
    def result(method: str) -> str:
        return str(Path("results") / "zeroshot" / f"{method}.json")

    def results(self, switch: bool = True) -> list[str]:
        """Every method's result JSON; none when the tier is off (``switch`` False: whatever the switch says,
        for the named target ``snakemake zeroshot``)."""
        if not self.datasets or (switch and not self.enabled):
            return []
        return [self.result(m) for m in self.methods]

    def checkpoint(self, method: str, dataset: str) -> str:
        """The weights ``method`` is scored with on ``dataset``."""
        if method in ("seed", "ma"):
            return self.paths.checkpoint(method)
        if method == "ms":
            return self.paths.checkpoint(self.merging.ms_run)
        return self.merging.merged(method, dataset)

    def checkpoints(self, method: str) -> dict[str, str]:
        return {d: self.checkpoint(method, d) for d in self.datasets}

    def inputs(self, wildcards: Any) -> dict[str, Any]:
        return {
            "ckpt": sorted(set(self.checkpoints(wildcards.method).values())),
            "tokenizer": self.paths.tokenizer_dir,
            "manifests": [self.paths.manifest(d) for d in self.datasets],
            "code": stage_code("zeroshot"),
        }

    def args(self, wildcards: Any) -> str:
        """The stage's arguments from ``wildcards`` alone (so Snakemake's params trigger sees them), quoted."""
        settings = build(ZeroshotSettings, {"datasets": self.datasets, "method": wildcards.method}).as_json()
        args = ["--config", settings]
        for dataset, ckpt in self.checkpoints(wildcards.method).items():
            args += ["--ckpt", f"{dataset}={ckpt}"]
        args += ["--arrow-dir", self.paths.arrow_dir, "--tokenizer", self.paths.tokenizer_dir, *self.experiment]
        return shlex.join(args)
