"""The ablation lineages asked for in ``report.ablations`` (naming: :mod:`vlmerge.catalog.lineages`).

Each configured sharing layout or seed length other than the main run's adds one lineage; on each,
the listed methods (``merge.methods`` entries or ``ms``) are merged, fine-tuned and evaluated on
the listed tasks as ``results/<task>/<name>@<variant>.json``. With empty lists (the default) the
workflow plans nothing more.
"""

from __future__ import annotations

from typing import Any

from vlmerge.catalog.lineages import Defaults, seed_variant, sharing_variant


class Ablations:
    def __init__(self, config: dict[str, Any]) -> None:
        runs = config["pretrain"]["runs"]
        self.defaults = Defaults(runs["ms"]["sharing"], runs["seed"]["steps"])
        spec = config.get("report", {}).get("ablations", {})
        self.sharing = [s for s in spec.get("sharing", []) if s != self.defaults.sharing]
        self.seed_steps = [n for n in spec.get("seed_steps", []) if n != self.defaults.seed_steps]
        self.methods: list[str] = spec.get("methods", ["interpolation"])
        self.tasks: list[str] = spec.get("tasks", ["vqa"])
        unknown = [m for m in self.methods if m != "ms" and m not in config["merge"]["methods"]]
        if unknown:
            raise ValueError(f"report.ablations.methods: {unknown} are neither merge.methods entries nor 'ms'")

    @property
    def variants(self) -> list[str]:
        return [sharing_variant(s) for s in self.sharing] + [seed_variant(n) for n in self.seed_steps]

    def names(self, merges_only: bool = False) -> list[str]:
        """Method names of the ablation results (``interpolation@ms_attn``, ``ms@seed50``, ...)."""
        methods = [m for m in self.methods if not (merges_only and m == "ms")]
        return [f"{m}@{v}" for m in methods for v in self.variants]
