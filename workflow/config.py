"""The experiment, typed: ``config.yaml`` (+ a profile's overlay) validated once, when the DAG is built.

Each block is the settings model of the stage that uses it (``vlmerge.<stage>.config``, torch-free), so
defaults, ranges and help live in one place and the stage validates the very same model again from the
``--config`` JSON the rule hands it. A bad value or an unknown key anywhere stops ``snakemake`` (and
``snakemake -n``) with one line naming the key. ``python -m workflow.config`` prints the JSON schema.
"""

from __future__ import annotations

import importlib
import json
import re
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
    zeroshot: bool = Field(
        True,
        description="score seed, MA, MS and every merge on COCO/F30K test retrieval before fine-tuning "
        "(results/zeroshot/<method>.json) and report them (results/tables/zeroshot.*, a zero-shot plot per sweep)",
    )


# `import` is a keyword: the import stage's settings module is reached by name (torch-free, like every config.py).
ImportSettings = importlib.import_module("vlmerge.import.config").ImportSettings
RELEASED_NAME = re.compile(r"[A-Za-z0-9]+(_[A-Za-z0-9]+)*")


class ReleasedEntry(Settings):
    """A released vl-merging ``.ckpt`` (docs/released.md); what it holds is read from its keys."""

    path: str = Field(min_length=1, description="the vl-merging Lightning checkpoint (.ckpt)")
    task: Task | None = Field(
        None,
        description="the task a fine-tuned checkpoint was fine-tuned for: needed for a retrieval one (coco or f30k, "
        "which its heads do not tell apart), otherwise checked against its heads; null for a pre-trained one",
    )
    vqa_answers: str | None = Field(
        None, description="JSON list of the VQA head's answers in its label order, kept beside the import"
    )
    # The import stage's own fields (default, help); pydantic takes a FieldInfo as the default.
    preset: Literal["tiny", "base", "large"] | None = ImportSettings.model_fields["preset"]
    overrides: dict[str, int | float] = ImportSettings.model_fields["overrides"]


class Experiment(Settings):
    experiment: str = Field(
        "embedded",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="name of this experiment: recorded in every checkpoint, gram file and manifest it writes; "
        "a stage refuses an input made under another experiment",
    )
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    pretrain: PretrainSection
    merge: MergeSection = Field(default_factory=MergeSection)
    finetune: FinetuneSection
    report: ReportSection = Field(default_factory=ReportSection)
    released: dict[str, ReleasedEntry] = Field(
        default_factory=dict, description="name → released vl-merging checkpoint (results/<task>/released_<name>.json)"
    )

    @model_validator(mode="after")
    def _ablation_methods(self) -> Experiment:
        unknown = [m for m in self.report.ablations.methods if m != "ms" and m not in self.merge.methods]
        if unknown:
            raise ValueError(f"report.ablations.methods: {unknown} are neither merge.methods entries nor 'ms'")
        return self

    @model_validator(mode="after")
    def _released_names(self) -> Experiment:
        bad = sorted(name for name in self.released if not RELEASED_NAME.fullmatch(name))
        if bad:
            raise ValueError(f"released: names {bad} must be letters and digits joined by single underscores")
        methods = [f"released_{n}" for n in self.released]
        methods += [f"released_{n}_{m}" for n in self.released for m in self.merge.methods]
        taken = sorted({m for m in methods if methods.count(m) > 1} | (set(methods) & set(self.merge.methods)))
        if taken:
            raise ValueError(f"released: the method names {taken} would stand for two lineages; rename an entry")
        return self


def experiment_args(config: dict[str, Any]) -> list[str]:
    """``["--experiment", NAME]``: what every stage that reads or writes checkpoints, grams or results gets, so
    that it records the experiment in what it writes and refuses inputs made under another."""
    name = config.get("experiment")
    return ["--experiment", str(name)] if name else []


def external_paths(config: dict[str, Any]) -> dict[str, str]:
    """Config key → path of every file or folder the experiment reads from outside the workflow: the real
    raw-data roots, the BERT vocabulary, the BEiT weights (``pretrain.init: beit:PATH``) and the released
    checkpoints (``released.<name>.path``, ``.vqa_answers``)."""
    data = config["data"]
    paths = {f"data.raw.{name}": root for name, root in sorted(data["raw"].items()) if root}
    if data["tokenizer"].get("bert_vocab"):
        paths["data.tokenizer.bert_vocab"] = data["tokenizer"]["bert_vocab"]
    init = config["pretrain"]["init"]
    if init.startswith("beit:"):
        paths["pretrain.init"] = init.removeprefix("beit:")
    for name, entry in sorted((config.get("released") or {}).items()):
        paths |= {f"released.{name}.{key}": entry[key] for key in ("path", "vqa_answers") if entry.get(key)}
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
