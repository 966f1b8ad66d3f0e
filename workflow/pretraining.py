"""Arguments, inputs and resources of the pre-training rule, derived from the validated config.

Run names: ``seed`` (MA seed run), ``ma`` (MA baseline), ``ms_<sharing>`` (modality-specific or an
ablation layout, initialised from the seed checkpoint through ``expand_experts``); the seed-length
ablation adds ``seed<steps>`` and ``ms_<sharing>@seed<steps>`` initialised from it.
"""

from __future__ import annotations

import hashlib
import shlex
from typing import Any

from vlmerge.catalog.names import MS_SHARINGS, PRETRAIN_DATASETS
from vlmerge.pretrain.config import PretrainSection, PretrainSettings
from vlmerge.runtime.settings import build
from workflow.config import experiment_args
from workflow.launch import Launch
from workflow.paths import Paths, stage_code


class Pretraining:
    run_pattern = "seed([0-9]+)?|ma|ms_(" + "|".join(MS_SHARINGS) + ")(@seed[0-9]+)?"

    def __init__(self, config: dict[str, Any], paths: Paths) -> None:
        self.section = build(PretrainSection, config["pretrain"], where="pretrain")
        self.model, self.paths = config["model"], paths
        self.experiment = experiment_args(config)
        self.launch = Launch(self.section.launch.model_dump())

    def inputs(self, wildcards: Any) -> dict[str, Any]:
        inputs: dict[str, Any] = {
            "manifests": [self.paths.manifest(d) for d in PRETRAIN_DATASETS if d in self.section.datasets],
            "tokenizer": self.paths.tokenizer_dir,
            "code": stage_code("pretrain"),
        }
        if wildcards.run.startswith("ms_"):
            inputs["seed"] = self.paths.checkpoint(seed_of(wildcards.run))
        elif self.section.init.startswith("beit:"):
            inputs["beit"] = self.section.init.removeprefix("beit:")
        return inputs

    def settings(self, run: str) -> PretrainSettings:
        """The validated settings of ``run``, from the ``pretrain`` and ``model`` sections."""
        seed = self.paths.checkpoint(seed_of(run)) if run.startswith("ms_") else None
        return self.section.settings_for(run, self.model["preset"], self.model["overrides"], seed)

    def work_dir(self, wildcards: Any, resources: Any) -> str:
        """Resumable state of this exact run: a changed argument starts a fresh directory.

        (The stage refuses a work directory left by a run with other settings.)
        """
        geometry = f"--devices {resources.tasks_per_node} --nodes {resources.nodes}"
        digest = hashlib.sha256(f"{self.args(wildcards)} {geometry}".encode()).hexdigest()[:12]
        return self.paths.work(f"pretrain/{wildcards.run}-{digest}")

    def args(self, wildcards: Any) -> str:
        """``--config JSON`` of the run's settings and its input folders, each quoted for the shell.

        The process geometry is not here: the rule appends ``--devices``/``--nodes`` from its resources (which
        a profile may set), overriding the settings' defaults. Only ``wildcards``: Snakemake records such
        params for its params trigger, while a function asking for ``input`` or ``resources`` is "derived"
        and never compared, hiding every hyper-parameter.
        """
        settings = self.settings(wildcards.run).as_json()
        return shlex.join(
            ["--config", settings, "--arrow", self.paths.arrow_dir, "--tokenizer", self.paths.tokenizer_dir]
            + self.experiment
        )


def seed_of(ms_run: str) -> str:
    """The seed run an MS run starts from: ``ms_attn`` → ``seed``, ``ms_ffn@seed50`` → ``seed50``."""
    return ms_run.partition("@")[2] or "seed"
