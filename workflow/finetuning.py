"""Inputs and arguments of the fine-tune and evaluate rules, derived from the validated config.

A method name is ``ma`` (the MA baseline), ``ms`` (the MS model, fine-tuned as MS) or a merge of
``config["merge"]["methods"]`` (fine-tuned as MA); ``<name>@<variant>`` is one of them on an ablation
lineage (:mod:`workflow.ablations`); ``released_<name>[_<merge>]`` starts from a released checkpoint
(:mod:`workflow.released`). The ``finetune:`` block is read as its typed model
(:class:`~vlmerge.finetune.config.FinetuneSection`); each job gets its task's settings as one ``--config``
JSON argument, which the stage validates against the same model.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from typing import Any

from vlmerge.catalog.lineages import split_method
from vlmerge.finetune.config import FinetuneSection
from vlmerge.runtime.settings import build
from workflow.ablations import Ablations
from workflow.config import experiment_args
from workflow.launch import Launch
from workflow.merging import Merging
from workflow.paths import Paths, stage_code


class Finetuning:
    def __init__(self, config: dict[str, Any], paths: Paths, merging: Merging, ablations: Ablations) -> None:
        self.section = build(FinetuneSection, config["finetune"], where="finetune")
        self.paths, self.merging = paths, merging
        self.experiment = experiment_args(config)
        self.methods = [*self.section.baselines, *merging.methods]
        self.ablation_methods = ablations.names()
        self.released = merging.released
        self.launch = Launch(self.section.launch.model_dump())

    @property
    def method_pattern(self) -> str:
        return "|".join(re.escape(m) for m in [*self.methods, *self.ablation_methods, *self.released.methods()])

    def init_checkpoint(self, task: str, method: str) -> str:
        if self.released.lineage(method):
            return self.released.finetune_init(task, method) or self.merging.merged(method, task)
        base, variant = split_method(method)
        if base == "ma":
            return self.paths.checkpoint("ma")
        if base == "ms":
            return self.paths.checkpoint(self.merging.lineage_runs(variant)[0])
        return self.merging.merged(method, task)

    def evaluated(self, wildcards: Any) -> str:
        """The checkpoint ``results/<task>/<method>.json`` scores: the method's fine-tune, or a released
        checkpoint that was fine-tuned for the task already."""
        if self.released.lineage(wildcards.method):
            imported = self.released.evaluated(wildcards.task, wildcards.method)
            if imported is not None:
                return imported
        return self.paths.finetuned(wildcards.task, wildcards.method)

    def inputs(self, wildcards: Any) -> dict[str, Any]:
        return {
            "init": self.init_checkpoint(wildcards.task, wildcards.method),
            "tokenizer": self.paths.tokenizer_dir,
            "manifest": self.paths.manifest(wildcards.task),
            "code": stage_code("finetune"),
        }

    def args(self, wildcards: Any) -> str:
        """The stage's arguments, from ``wildcards`` alone: Snakemake records such params for its params
        trigger (a function asking for ``input`` is "derived" and never compared), so a changed setting
        reruns exactly the jobs of its task. Shell-quoted: the JSON and the paths pass the shell unchanged."""
        settings = self.section.task_settings(wildcards.task)
        return shlex.join(
            [
                "--config",
                settings.as_json(),
                "--init",
                self.init_checkpoint(wildcards.task, wildcards.method),
                "--arrow",
                self.paths.arrow_dir,
                "--tokenizer",
                self.paths.tokenizer_dir,
                *self.experiment,
            ]
        )

    def work_dir(self, wildcards: Any, resources: Any) -> str:
        """Resumable state of this exact run: a changed argument or geometry starts a fresh directory."""
        run = f"{self.args(wildcards)} --devices {resources.tasks_per_node} --nodes {resources.nodes}"
        digest = hashlib.sha256(run.encode()).hexdigest()[:12]
        return self.paths.work(f"finetune/{wildcards.task}/{wildcards.method}-{digest}")

    def eval_args(self, wildcards: Any, input: Any) -> str:
        args = [
            "--task",
            wildcards.task,
            "--method",
            wildcards.method,
            "--ckpt",
            str(input.ckpt),
            "--arrow",
            self.paths.arrow_dir,
            "--tokenizer",
            str(input.tokenizer),
        ]
        if wildcards.task == "vqa":  # the official VQA accuracy needs the ten human answers of the raw val annotations
            args += ["--vqa-annotations", self.paths.vqa_val_annotations()]
        return shlex.join(args + self.experiment)
