"""The experiment, typed: ``config.yaml`` (+ a profile's overlay) validated once, when the DAG is built.

Each block is the settings model of the stage that uses it (``vlmerge.<stage>.config``, torch-free), so
defaults, ranges and help live in one place and the stage validates the very same model again from the
``--config`` JSON the rule hands it. A bad value or an unknown key anywhere stops ``snakemake`` (and
``snakemake -n``) with one line naming the key. ``python -m workflow.config`` prints the JSON schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import Field, model_validator

from vlmerge.catalog.names import DATASETS, MS_SHARINGS, TASKS
from vlmerge.distance.config import DistanceSettings
from vlmerge.errors import ConfigError
from vlmerge.finetune.config import FinetuneSection
from vlmerge.grams.config import GramsSettings
from vlmerge.merge.config import MergeEntry
from vlmerge.prepare.config import PrepareSettings
from vlmerge.pretrain.config import PretrainSection
from vlmerge.runtime.settings import Settings, build
from vlmerge.synth.config import SynthSettings
from vlmerge.vocab.config import TokenizerSettings

Dataset = Literal["coco", "f30k", "vqa", "nlvr2", "vg", "sbu", "gcc"]
Task = Literal["vqa", "coco", "f30k", "nlvr2"]
assert set(Dataset.__args__) == set(DATASETS) and set(Task.__args__) == set(TASKS)  # type: ignore[attr-defined]


class DataSection(Settings):
    dir: str = Field("data", min_length=1, description="where raw/synthetic/ and arrow/ are written")
    datasets: list[Dataset] = Field(
        default_factory=lambda: cast(list[Dataset], list(DATASETS)), min_length=1, description="datasets to convert"
    )
    raw: dict[Dataset, str | None] = Field(
        default_factory=dict, description="root of each real raw dataset (null: synthetic stand-in)"
    )
    synthetic: SynthSettings = Field(default_factory=SynthSettings)
    prepare: PrepareSettings = Field(default_factory=PrepareSettings)
    tokenizer: TokenizerSettings = Field(default_factory=TokenizerSettings)


class ModelSection(Settings):
    preset: Literal["tiny", "base", "large"] = "tiny"
    overrides: dict[str, int | float] = Field(default_factory=dict, description="ModelConfig fields to change")


class MergeSection(Settings):
    methods: dict[str, MergeEntry] = Field(
        default_factory=dict, description="name → merge; each name is a method of the result tables"
    )
    grams: GramsSettings = Field(default_factory=GramsSettings)
    # The distance stage's own field (default, range, help); pydantic takes a FieldInfo as the
    # default, its stubs only the field's type.
    distance_topk: float = DistanceSettings.model_fields["k"]  # type: ignore[assignment]

    @model_validator(mode="after")
    def _names(self) -> MergeSection:
        reserved = sorted({"ma", "ms"} & set(self.methods))
        if reserved:
            raise ValueError(f"methods: {reserved} are the baselines' names, not merges")
        return self


class Ablations(Settings):
    sharing: list[Literal[MS_SHARINGS]] = Field(default_factory=list)  # type: ignore[valid-type]
    seed_steps: list[int] = Field(default_factory=list)
    methods: list[str] = Field(default_factory=lambda: ["interpolation"], min_length=1)
    tasks: list[Task] = Field(default_factory=lambda: cast(list[Task], ["vqa"]), min_length=1)


class ReportSection(Settings):
    ablations: Ablations = Field(default_factory=Ablations)


class Experiment(Settings):
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    pretrain: PretrainSection
    merge: MergeSection = Field(default_factory=MergeSection)
    finetune: FinetuneSection
    report: ReportSection = Field(default_factory=ReportSection)

    @model_validator(mode="after")
    def _ablation_methods(self) -> Experiment:
        unknown = [m for m in self.report.ablations.methods if m != "ms" and m not in self.merge.methods]
        if unknown:
            raise ValueError(f"report.ablations.methods: {unknown} are neither merge.methods entries nor 'ms'")
        return self


def external_paths(config: dict[str, Any]) -> dict[str, str]:
    """Config key → path of every file or folder the experiment reads from outside the workflow: the real
    raw-data roots, the BERT vocabulary and the BEiT weights (``pretrain.init: beit:PATH``)."""
    data = config["data"]
    paths = {f"data.raw.{name}": root for name, root in sorted(data["raw"].items()) if root}
    if data["tokenizer"].get("bert_vocab"):
        paths["data.tokenizer.bert_vocab"] = data["tokenizer"]["bert_vocab"]
    init = config["pretrain"]["init"]
    if init.startswith("beit:"):
        paths["pretrain.init"] = init.removeprefix("beit:")
    return paths


def check_external(config: dict[str, Any]) -> None:
    """Every external path exists, or one :class:`ConfigError` listing each missing one with its key.

    Checked when the DAG is built, whatever the target: a missing input that Snakemake would treat as a
    source file could otherwise let an old output (say a tiny embedded seed checkpoint) stand in for it.
    """
    missing = [f"{key}={path}" for key, path in external_paths(config).items() if not Path(path).exists()]
    if missing:
        raise ConfigError(f"the config names files or folders that do not exist: {', '.join(missing)}")


def validated(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` checked against :class:`Experiment`, with every default filled in (a plain dict again, as
    Snakemake's ``config``); raises :class:`~vlmerge.errors.ConfigError` naming the key."""
    return build(Experiment, config, "config").model_dump(mode="json")


if __name__ == "__main__":
    print(json.dumps(Experiment.model_json_schema(), indent=2))
