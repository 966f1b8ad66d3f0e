"""Inputs and arguments of the grams, merge and distance rules, derived from the validated config.

Which methods need the seed or grams, and which parameters each takes, comes from the torch-free
catalogue :mod:`vlmerge.catalog.methods`, the same table the merge functions are registered against.
Every ``merge.methods`` entry is checked here, when the DAG is built: a bad value or an unknown key
stops ``snakemake -n`` naming the entry and the key, long before any job runs.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from vlmerge.catalog.lineages import Defaults, ms_run, resolve, seed_run, split_method
from vlmerge.catalog.methods import check_merge, for_task, method_info, per_task
from vlmerge.catalog.names import TASKS
from vlmerge.errors import ConfigError
from vlmerge.grams.config import GramsSettings
from vlmerge.runtime.settings import build
from workflow.ablations import Ablations
from workflow.paths import Paths, stage_code

__all__ = ["TASKS", "Merging"]


def checked_methods(methods: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``merge.methods`` with every entry's parameters parsed against the catalogue (for every task)."""
    for name, spec in methods.items():
        try:
            for task in TASKS:
                check_merge(spec["method"], spec.get("params") or {}, task=task)
        except ConfigError as err:
            raise ConfigError(f"config merge.methods.{name}: {err}") from None
    return methods


class Merging:
    def __init__(self, config: dict[str, Any], paths: Paths, ablations: Ablations) -> None:
        self.methods: dict[str, dict[str, Any]] = checked_methods(config["merge"]["methods"])
        self.grams = config["merge"]["grams"]
        self.paths = paths
        self.defaults: Defaults = ablations.defaults
        self.ms_run = ms_run(None, self.defaults)
        # Every merge the workflow can make: the configured entries and their ablation lineages.
        self.names = [*self.methods, *ablations.names(merges_only=True)]

    def lineage_runs(self, variant: str | None) -> tuple[str, str]:
        """The MS and seed runs a lineage variant merges from (None: the main lineage)."""
        return ms_run(variant, self.defaults), seed_run(resolve(variant, self.defaults).seed_steps, self.defaults)

    def per_task(self, name: str) -> bool:
        """A merge that depends on the downstream task: grams of its data, or its used experts."""
        spec = self.methods[split_method(name)[0]]
        return per_task(spec["method"], spec.get("params") or {})

    def task_independent(self) -> str:
        """Wildcard pattern of the merges made once (``^$`` matches none when there are none)."""
        return "|".join(re.escape(n) for n in self.names if not self.per_task(n)) or "^$"

    def task_dependent(self) -> str:
        """Wildcard pattern of the merges made per task."""
        return "|".join(re.escape(n) for n in self.names if self.per_task(n)) or "^$"

    def merged(self, name: str, task: str) -> str:
        """Where the merge ``name`` used by ``task`` lives."""
        return self.paths.merged(name, task if self.per_task(name) else None)

    def inputs(self, wildcards: Any) -> dict[str, Any]:
        (base, variant), task = split_method(wildcards.name), getattr(wildcards, "task", None)
        info = method_info(self.methods[base]["method"])
        ms, seed = self.lineage_runs(variant)
        inputs: dict[str, Any] = {"ms": self.paths.checkpoint(ms), "code": stage_code("merge")}
        if info.needs_seed:
            inputs["seed"] = self.paths.checkpoint(seed)
        if info.needs_grams:
            if task is None:  # a grams merge is per task (per_task), so only task rules reach here
                raise ValueError(f"merge {wildcards.name!r} needs grams, which exist per task, but has no task")
            inputs["grams"] = self.paths.grams(task, variant)
        return inputs

    def grams_ms(self, wildcards: Any) -> str:
        """The MS checkpoint whose grams the grams rules collect (``variant``: an ablation lineage)."""
        return self.paths.checkpoint(self.lineage_runs(getattr(wildcards, "variant", None))[0])

    # The argument builders below take only ``wildcards``: Snakemake records (and compares on rerun) the
    # params whose functions do not ask for input/output/threads/resources; an ``input`` argument would
    # hide every hyper-parameter from the params trigger. Paths come from the same input functions.
    # Every value is shell-quoted: config values are data, never shell code.
    def args(self, wildcards: Any) -> str:
        spec = self.methods[split_method(wildcards.name)[0]]
        task = getattr(wildcards, "task", None)
        given = spec.get("params") or {}
        params = for_task(given, task) if task else {k: v for k, v in given.items() if v is not None}
        inputs = self.inputs(wildcards)
        args = ["--method", spec["method"], "--ms", inputs["ms"]]
        for key, value in sorted(params.items()):
            args += ["--param", f"{key}={_text(value)}"]
        for name in ("seed", "grams"):
            if name in inputs:
                args += [f"--{name}", inputs[name]]
        return shlex.join(args)

    def grams_args(self, wildcards: Any) -> str:
        """The grams stage's settings (``merge.grams``) as one ``--config`` JSON, and its input paths."""
        settings = build(GramsSettings, self.grams, "merge.grams").as_json()
        ms = self.grams_ms(wildcards)
        paths = ["--ckpt", ms, "--task", wildcards.task, "--arrow", self.paths.arrow_dir]
        return shlex.join(["--config", settings, *paths, "--tokenizer", self.paths.tokenizer_dir])


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)
