"""Where every workflow file lives, derived from the validated config in one place.

Rules ask this object for paths instead of formatting strings themselves, so the layout can change
without touching the rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmerge.catalog.names import DATASETS
from workflow.imports import stage_code  # re-exported: rules declare a stage's code as inputs

__all__ = ["Paths", "parent_of_output", "stage_code"]


def parent_of_output(wildcards: Any, output: Any) -> str:
    """The folder of a rule's first output (a params function, so paths follow the outputs)."""
    return str(Path(output[0]).parent)


class Paths:
    all_datasets = DATASETS

    def __init__(self, config: dict[str, Any]) -> None:
        self.data = config["data"]
        root = Path(self.data["dir"])
        self.synth_record = str(root / "raw" / "synthetic" / "synth.json")
        self.arrow_dir = str(root / "arrow")
        self.tokenizer_dir = str(root / "arrow" / "tokenizer")

    def log(self, name: str) -> str:
        return str(Path("logs") / name)

    def work(self, name: str) -> str:
        """Scratch state of a long job (resumable checkpoints): never a declared output."""
        return str(Path("work") / name)

    def checkpoint(self, run: str) -> str:
        return str(Path("results") / "pretrain" / f"{run}.safetensors")

    def sidecar(self, run: str) -> str:
        return str(Path("results") / "pretrain" / f"{run}.json")

    def grams(self, task: str, variant: str | None = None) -> str:
        """Grams of the MS model on a task's data; an ablation lineage's MS model adds ``@<variant>``."""
        name = f"{task}@{variant}" if variant else task
        return str(Path("results") / "grams" / f"{name}.safetensors")

    def merged(self, name: str, task: str | None = None) -> str:
        """A merged checkpoint; task-dependent merges (grams, used experts) live under the task."""
        folder = Path("results") / "merged"
        return str((folder / task if task else folder) / f"{name}.safetensors")

    def finetuned(self, task: str, method: str) -> str:
        return str(Path("results") / "finetune" / task / f"{method}.safetensors")

    def result(self, task: str, method: str) -> str:
        """The unit users ask for: ``results/<task>/<method>.json``."""
        return str(Path("results") / task / f"{method}.json")

    def released(self, name: str) -> str:
        """A released vl-merging checkpoint (config ``released.<name>``) imported as a vlmerge one."""
        return str(Path("results") / "released" / f"{name}.safetensors")

    def distance(self, run: str) -> str:
        return str(Path("results") / "distance" / f"{run}.json")

    table_dir = str(Path("results") / "tables")
    plot_dir = str(Path("results") / "plots")

    def table(self, stem: str, suffix: str) -> str:
        return str(Path(self.table_dir) / f"{stem}{suffix}")

    def plot(self, stem: str, suffix: str) -> str:
        return str(Path(self.plot_dir) / f"{stem}{suffix}")

    def manifest(self, dataset: str) -> str:
        return str(Path(self.arrow_dir) / f"{dataset}.manifest.json")

    def synthetic_datasets(self) -> list[str]:
        """Configured datasets without a real root: the synthetic generator stands in for them."""
        return [d for d in self.data["datasets"] if not self.data["raw"].get(d)]

    def raw_root(self, wildcards: Any, input: Any) -> str:
        """A real dataset's configured root, or its folder beside the generator's record."""
        real = self.data["raw"].get(wildcards.dataset)
        return real if real else str(Path(input.raw[0]).parent / wildcards.dataset)

    def vqa_val_annotations(self) -> str:
        """The official VQAv2 val annotations (ten human answers per question) of the configured VQA root."""
        root = self.data["raw"].get("vqa") or str(Path(self.synth_record).parent / "vqa")
        return str(Path(root) / "v2_mscoco_val2014_annotations.json")

    def raw_input(self, wildcards: Any) -> list[str]:
        """A synthetic dataset depends on the generator's record; a real root is outside the DAG."""
        return [] if self.data["raw"].get(wildcards.dataset) else [self.synth_record]
