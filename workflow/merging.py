"""Inputs and arguments of the grams, merge and distance rules, derived from the validated config.

Which methods need the seed or grams is written down here rather than imported from
``vlmerge.merging`` (that would import torch into every Snakemake start-up); a test checks that the
two agree.
"""

from __future__ import annotations

import re
from typing import Any

from vlmerge.catalog.lineages import Defaults, ms_run, resolve, seed_run, split_method
from workflow.ablations import Ablations
from workflow.paths import Paths, stage_code

NEEDS_SEED = frozenset({"arithmetic", "task_arithmetic", "ties", "dare"})
NEEDS_GRAMS = frozenset({"regmean", "regmean_exact_bias"})
TASKS = ("vqa", "coco", "f30k", "nlvr2")


class Merging:
    def __init__(self, config: dict[str, Any], paths: Paths, ablations: Ablations) -> None:
        self.methods: dict[str, dict[str, Any]] = config["merge"]["methods"]
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
        return spec["method"] in NEEDS_GRAMS or spec.get("params", {}).get("used_experts_only") is not None

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
        method = self.methods[base]["method"]
        ms, seed = self.lineage_runs(variant)
        inputs: dict[str, Any] = {"ms": self.paths.checkpoint(ms), "code": stage_code("merge")}
        if method in NEEDS_SEED:
            inputs["seed"] = self.paths.checkpoint(seed)
        if method in NEEDS_GRAMS:
            inputs["grams"] = self.paths.grams(task, variant)
        return inputs

    def grams_ms(self, wildcards: Any) -> str:
        """The MS checkpoint whose grams the grams rules collect (``variant``: an ablation lineage)."""
        return self.paths.checkpoint(self.lineage_runs(getattr(wildcards, "variant", None))[0])

    # The argument builders below take only ``wildcards``: Snakemake records (and compares on rerun) the
    # params whose functions do not ask for input/output/threads/resources; an ``input`` argument would
    # hide every hyper-parameter from the params trigger. Paths come from the same input functions.
    def args(self, wildcards: Any) -> str:
        spec = self.methods[split_method(wildcards.name)[0]]
        params = {k: v for k, v in spec.get("params", {}).items() if v is not None}
        if params.get("used_experts_only") == "task":
            params["used_experts_only"] = wildcards.task
        inputs = self.inputs(wildcards)
        args = [f"--method {spec['method']}", f"--ms {inputs['ms']}"]
        args += [f"--param {k}={_text(v)}" for k, v in sorted(params.items())]
        if "seed" in inputs:
            args.append(f"--seed {inputs['seed']}")
        if "grams" in inputs:
            args.append(f"--grams {inputs['grams']}")
        return " ".join(args)

    def grams_args(self, wildcards: Any) -> str:
        g = self.grams
        args = [f"--ckpt {self.grams_ms(wildcards)}", f"--task {wildcards.task}", f"--arrow {self.paths.arrow_dir}",
                f"--tokenizer {self.paths.tokenizer_dir}", f"--split {g['split']}", f"--batch-size {g['batch_size']}"]
        if g["max_samples"]:
            args.append(f"--max-samples {g['max_samples']}")
        if g["include_pad"]:
            args.append("--include-pad")
        return " ".join(args)


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
