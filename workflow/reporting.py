"""Inputs, outputs and arguments of the report rule, derived from the validated config.

The file names come from :mod:`vlmerge.report.outputs`, the sweeps from
:func:`vlmerge.report.sweeps.find_sweeps` over ``merge.methods``: the stage and the rule agree by
construction.
"""

from __future__ import annotations

import shlex
from typing import Any

from vlmerge.catalog.lineages import ms_run
from vlmerge.report import outputs
from vlmerge.report.sweeps import find_sweeps
from workflow.ablations import Ablations
from workflow.finetuning import Finetuning
from workflow.paths import Paths
from workflow.zeroshot import Zeroshot


class Reporting:
    def __init__(self, config: dict[str, Any], paths: Paths, finetuning: Finetuning, ablations: Ablations) -> None:
        self.paths, self.ablations = paths, ablations
        self.tasks, self.methods = config["finetune"]["tasks"], finetuning.methods
        self.sweeps = find_sweeps(config["merge"]["methods"])
        self.zeroshot = Zeroshot(config, paths, finetuning.merging)
        self.flags = {
            "sharing": bool(ablations.sharing),
            "seed": bool(ablations.seed_steps),
            "zeroshot": self.zeroshot.enabled,
        }

    def results(self) -> list[str]:
        """The main comparison's result JSONs, then the ablation lineages' ones."""
        main = [self.paths.result(t, m) for t in self.tasks for m in self.methods]
        return main + [self.paths.result(t, m) for t in self.ablations.tasks for m in self.ablations.names()]

    def zeroshot_results(self) -> list[str]:
        """Every method's zero-shot retrieval JSON (none when ``report.zeroshot`` is off)."""
        return self.zeroshot.results()

    def distances(self) -> list[str]:
        """Weight distances of every lineage's MS model, when there are ablation lineages to correlate."""
        variants = self.ablations.variants
        return [self.paths.distance(ms_run(v, self.ablations.defaults)) for v in [None, *variants]] if variants else []

    def tables(self, stem: str | None = None) -> list[str]:
        """Every table file, or those of one ``stem`` (``main``, ``zeroshot``, ``sweep_<name>``, ``sharing``, ...)."""
        stems = outputs.table_stems(self.sweeps, **self.flags)
        return [self.paths.table(s, x) for s in stems if stem in (None, s) for x in outputs.TABLE_SUFFIXES]

    def plots(self) -> list[str]:
        return [
            self.paths.plot(s, x) for s in outputs.plot_stems(self.sweeps, **self.flags) for x in outputs.PLOT_SUFFIXES
        ]

    def args(self, wildcards: Any, input: Any) -> str:
        """The report stage's arguments, every value shell-quoted (result paths may hold spaces)."""
        defaults = self.ablations.defaults
        args = ["--results", *input.results, "--sharing", defaults.sharing, "--seed-steps", str(defaults.seed_steps)]
        args += ["--tables", self.paths.table_dir, "--plots", self.paths.plot_dir]
        if input.distances:
            args += ["--distances", *input.distances]
        if getattr(input, "zeroshot", None):
            args += ["--zeroshot", *input.zeroshot]
        for sweep in self.sweeps:
            args += ["--sweep", sweep.arg()]
        return shlex.join(args)
