"""Settings of the data-stage rules (synth, prepare, vocab), derived from the validated config.

Each stage gets its config.yaml block as one ``--config`` JSON: its settings model, validated here and
again by the stage. The functions take only ``wildcards`` so Snakemake's params trigger records them.
"""

from __future__ import annotations

import shlex
from typing import Any

from vlmerge.prepare.config import PrepareSettings
from vlmerge.runtime.settings import build
from vlmerge.synth.config import SynthSettings
from vlmerge.vocab.config import TokenizerSettings
from workflow.config import experiment_args
from workflow.paths import Paths


class DataStage:
    def __init__(self, config: dict[str, Any], paths: Paths) -> None:
        self.data, self.paths = config["data"], paths
        # ``--experiment NAME`` (shell-quoted): prepare records it in each manifest, vocab compares it.
        self.experiment = shlex.join(experiment_args(config))

    def synth_settings(self, wildcards: Any) -> str:
        """data.synthetic for the datasets without a real root (data.raw decides them, so they are added here)."""
        block = {**self.data["synthetic"], "datasets": self.paths.synthetic_datasets()}
        return build(SynthSettings, block, "data.synthetic").as_json()

    def prepare_settings(self, wildcards: Any) -> str:
        """data.prepare; the same for every dataset, so a changed value reconverts all of them."""
        return build(PrepareSettings, self.data["prepare"], "data.prepare").as_json()

    def tokenizer_settings(self, wildcards: Any) -> str:
        """data.tokenizer, bert_vocab included: a vocabulary outside the DAG, named by the config."""
        return build(TokenizerSettings, self.data["tokenizer"], "data.tokenizer").as_json()
