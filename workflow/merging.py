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
from workflow.config import experiment_args
from workflow.paths import Paths, stage_code
from workflow.released import Released

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
        self.experiment = experiment_args(config)
        self.defaults: Defaults = ablations.defaults
        self.ms_run = ms_run(None, self.defaults)
        # Released checkpoints (config ``released:``): their MS models merge too (workflow/released.py).
        self.released = Released(config, paths)
        # Every merge the workflow can make: the configured entries, their ablation and released lineages.
        self.names = [*self.methods, *ablations.names(merges_only=True), *self.released.merge_names()]

    def lineage_runs(self, variant: str | None) -> tuple[str, str]:
        """The MS and seed runs a lineage variant merges from (None: the main lineage)."""
        return ms_run(variant, self.defaults), seed_run(resolve(variant, self.defaults).seed_steps, self.defaults)

    def entry(self, name: str) -> dict[str, Any]:
        """The ``merge.methods`` entry a merge applies, on the main, an ablation or a released lineage."""
        released = self.released.lineage(name)
        return self.methods[released[1] if released and released[1] else split_method(name)[0]]

    def per_task(self, name: str) -> bool:
        """A merge that depends on the downstream task: grams of its data, or its used experts."""
        spec = self.entry(name)
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
        variant, task = split_method(wildcards.name)[1], getattr(wildcards, "task", None)
        info = method_info(self.entry(wildcards.name)["method"])
        if self.released.lineage(wildcards.name):
            entry = self.released.merge_source(wildcards.name)  # refuses a method that needs the seed
            ms, seed, variant = self.paths.released(entry), None, self.released.variant(entry)
        else:
            ms_name, seed_name = self.lineage_runs(variant)
            ms, seed = self.paths.checkpoint(ms_name), self.paths.checkpoint(seed_name)
        inputs: dict[str, Any] = {"ms": ms, "code": stage_code("merge")}
        if info.needs_seed:
            inputs["seed"] = seed
        if info.needs_grams:
            if task is None:  # a grams merge is per task (per_task), so only task rules reach here
                raise ValueError(f"merge {wildcards.name!r} needs grams, which exist per task, but has no task")
            inputs["grams"] = self.paths.grams(task, variant)
        return inputs

    def grams_ms(self, wildcards: Any) -> str:
        """The MS checkpoint whose grams the grams rules collect (``variant``: an ablation or released lineage)."""
        variant = getattr(wildcards, "variant", None)
        entry = self.released.entry_of_variant(variant)
        if entry is not None:
            return self.paths.released(entry)
        return self.paths.checkpoint(self.lineage_runs(variant)[0])

    # The argument builders below take only ``wildcards``: Snakemake records (and compares on rerun) the
    # params whose functions do not ask for input/output/threads/resources; an ``input`` argument would
    # hide every hyper-parameter from the params trigger. Paths come from the same input functions.
    # Every value is shell-quoted: config values are data, never shell code.
    def args(self, wildcards: Any) -> str:
        spec = self.entry(wildcards.name)
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
        return shlex.join(args + self.experiment)

    def grams_args(self, wildcards: Any) -> str:
        """The grams stage's settings (``merge.grams``) as one ``--config`` JSON, and its input paths."""
        settings = build(GramsSettings, self.grams, "merge.grams").as_json()
        ms = self.grams_ms(wildcards)
        paths = ["--ckpt", ms, "--task", wildcards.task, "--arrow", self.paths.arrow_dir]
        return shlex.join(["--config", settings, *paths, "--tokenizer", self.paths.tokenizer_dir, *self.experiment])


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)
