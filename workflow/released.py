"""Released vl-merging checkpoints (config ``released:``) as lineages of the workflow (docs/released.md).

Each entry ``released.<name>`` is imported once into ``results/released/<name>.safetensors``. What the file
holds decides what ``results/<task>/released_<name>.json`` means:

- fine-tuned (its task's head present): evaluated as is, on that task only;
- pre-trained (MS, MA or merged): fine-tuned like every other method, then evaluated;
- pre-trained MS: also ``released_<name>_<merge>`` for each ``merge.methods`` entry, merged from the
  imported model (RegMean with grams collected from it), fine-tuned as MA and evaluated. A method that
  needs the seed (arithmetic, task arithmetic, TIES, DARE) is refused: the seed was not released.

What a file holds is read from its keys, with the import stage's own detection, the first time a job of
its lineage is planned (never for a DAG without one, so planning the other targets does not need torch).
Every refusal is a :class:`~vlmerge.errors.ConfigError` naming the entry, raised while the DAG is built.
"""

from __future__ import annotations

import importlib
import re
import shlex
from dataclasses import dataclass
from typing import Any

from vlmerge.catalog.methods import method_info
from vlmerge.errors import ConfigError
from vlmerge.runtime.settings import build
from workflow.paths import Paths, stage_code

PREFIX = "released_"
RETRIEVAL = ("coco", "f30k")
ImportSettings = importlib.import_module("vlmerge.import.config").ImportSettings


@dataclass(frozen=True)
class Kind:
    """What a released file holds: its architecture (MA, MS, MS-<sharing>) and the task it was fine-tuned
    for (None: pre-trained)."""

    architecture: str
    task: str | None

    @property
    def ms(self) -> bool:
        return self.architecture != "MA"

    def describe(self) -> str:
        return f"fine-tuned for {self.task}" if self.task else f"pre-trained {self.architecture}"


def kind_of(heads: Any, architecture: str, task: str | None, where: str) -> Kind:
    """The kind of a file with ``heads`` (:class:`~vlmerge.model.heads.Heads`), checked against the entry's
    ``task`` (needed for a retrieval checkpoint: COCO and Flickr30k heads look alike)."""
    found = [t for t, present in (("vqa", heads.vqa_answers > 0), ("nlvr2", heads.nlvr2)) if present]
    if not found and heads.itc and not (heads.mlm or heads.itm):
        found = [task] if task in RETRIEVAL else []
        if not found:
            raise ConfigError(
                f"{where}: the file carries a retrieval head only (fine-tuned for coco or f30k); "
                f"set {where}.task to the one it was fine-tuned for"
            )
    if len(found) > 1:
        raise ConfigError(f"{where}: the file carries the heads of {found}; a fine-tuned checkpoint has one task")
    fine_tuned = found[0] if found else None
    if task is not None and task != fine_tuned:
        what = f"fine-tuned for {fine_tuned}" if fine_tuned else "pre-trained (no task head)"
        raise ConfigError(f"{where}.task is {task}, but the file is {what}")
    return Kind(architecture, fine_tuned)


def detect(path: str, task: str | None, where: str) -> Kind:
    """Read ``path``'s keys the way ``python -m vlmerge.import`` does (weights-only unpickling)."""
    from vlmerge.model.errors import CheckpointError
    from vlmerge.model.import_vlmerging import Detected, heads_in, upstream_state
    from vlmerge.model.layout import detect_sharing
    from vlmerge.model.pickles import load_pickled_weights

    try:
        state = upstream_state(load_pickled_weights(path), path)
        sharing = detect_sharing(state)
    except CheckpointError as err:
        raise ConfigError(f"{where}: {err}") from None
    heads = heads_in({("itc_" + k[4:] if k.startswith("ifm_") else k): v for k, v in state.items()})
    architecture = Detected(sharing, heads, 0, 0, 0).architecture
    return kind_of(heads, architecture, task, where)


class Released:
    """The released entries, the method names they add, and where each lineage's files are."""

    def __init__(self, config: dict[str, Any], paths: Paths) -> None:
        self.entries: dict[str, dict[str, Any]] = config.get("released") or {}
        self.merges: dict[str, dict[str, Any]] = config["merge"]["methods"]
        self.tasks: list[str] = config["finetune"]["tasks"]
        self.paths = paths
        # method name -> (entry, merge.methods entry or None)
        self.lineages: dict[str, tuple[str, str | None]] = {f"{PREFIX}{n}": (n, None) for n in self.entries}
        self.lineages |= {f"{PREFIX}{n}_{m}": (n, m) for n in self.entries for m in self.merges}
        self._kinds: dict[str, Kind] = {}

    # ---------------------------------------------------------------------------------------- names
    def methods(self) -> list[str]:
        """Every method name a released entry adds (whether or not its lineage exists)."""
        return list(self.lineages)

    def merge_names(self) -> list[str]:
        """``released_<name>_<merge>`` for every entry and ``merge.methods`` entry."""
        return [method for method, (_, merge) in self.lineages.items() if merge is not None]

    def lineage(self, method: str) -> tuple[str, str | None] | None:
        """(entry, merge.methods entry or None) of a released method name; None for any other name."""
        return self.lineages.get(method)

    @property
    def entry_pattern(self) -> str:
        return "|".join(re.escape(n) for n in self.entries) or "^$"

    def variant(self, entry: str) -> str:
        """The grams of an entry's model: ``results/grams/<task>@released_<entry>``."""
        return f"{PREFIX}{entry}"

    @property
    def variant_pattern(self) -> str:
        return "|".join(re.escape(self.variant(n)) for n in self.entries) or "^$"

    def entry_of_variant(self, variant: str | None) -> str | None:
        entry = variant.removeprefix(PREFIX) if variant and variant.startswith(PREFIX) else None
        return entry if entry in self.entries else None

    # ---------------------------------------------------------------------------------------- kinds
    def kind(self, entry: str) -> Kind:
        """What ``released.<entry>`` holds, read once per planning process."""
        if entry not in self._kinds:
            spec = self.entries[entry]
            self._kinds[entry] = detect(spec["path"], spec.get("task"), f"released.{entry}")
        return self._kinds[entry]

    def merge_source(self, method: str) -> str:
        """The entry a released merge starts from, or a :class:`ConfigError` saying why there is none."""
        entry, merge = self.lineages[method]
        assert merge is not None, method
        info = method_info(self.merges[merge]["method"])
        if info.needs_seed:
            raise ConfigError(
                f"{method}: merge.methods.{merge} ({info.name}) needs the seed model the MS model was "
                f"pre-trained from, which was not released; released MS models merge only by methods "
                f"without a seed (interpolation, RegMean)"
            )
        kind = self.kind(entry)
        if kind.task is not None or not kind.ms:
            raise ConfigError(
                f"{method}: merges start from a pre-trained MS model, but released.{entry} "
                f"({self.entries[entry]['path']}) is {kind.describe()}"
            )
        return entry

    def finetune_init(self, task: str, method: str) -> str | None:
        """The checkpoint a released lineage's fine-tune starts from: the imported pre-trained model, or
        None for a merge (the caller asks the merges where it lives)."""
        entry, merge = self.lineages[method]
        if merge is not None:
            self.merge_source(method)
            return None
        kind = self.kind(entry)
        if kind.task is not None:
            raise ConfigError(
                f"results/finetune/{task}/{method}: released.{entry} is {kind.describe()} already; "
                f"results/{kind.task}/{method}.json evaluates it as it is"
            )
        return self.paths.released(entry)

    def evaluated(self, task: str, method: str) -> str | None:
        """The imported file ``results/<task>/<method>.json`` scores when it is a fine-tuned release;
        None when the lineage is fine-tuned here first."""
        entry, merge = self.lineages[method]
        if merge is not None:
            return None
        kind = self.kind(entry)
        if kind.task is None:
            return None
        if kind.task != task:
            raise ConfigError(
                f"results/{task}/{method}.json: released.{entry} ({self.entries[entry]['path']}) is "
                f"{kind.describe()}; it is evaluated on {kind.task} only (results/{kind.task}/{method}.json)"
            )
        return self.paths.released(entry)

    def targets(self) -> list[str]:
        """Every result the entries make: a fine-tuned file on its task; a pre-trained one on every configured
        task, and a pre-trained MS one also merged by each ``merge.methods`` entry that needs no seed."""
        results = []
        for entry in self.entries:
            kind = self.kind(entry)
            if kind.task is not None:
                results.append(self.paths.result(kind.task, f"{PREFIX}{entry}"))
                continue
            methods = [f"{PREFIX}{entry}"]
            if kind.ms:
                methods += [
                    f"{PREFIX}{entry}_{m}"
                    for m, spec in self.merges.items()
                    if not method_info(spec["method"]).needs_seed
                ]
            results += [self.paths.result(task, method) for task in self.tasks for method in methods]
        return results

    # ---------------------------------------------------------------------------------------- import rule
    def import_inputs(self, wildcards: Any) -> dict[str, Any]:
        """The released file (outside the workflow: a newer one reruns its import) and the stage's code."""
        spec = self.entries[wildcards.name]
        inputs = {"ckpt": spec["path"], "code": stage_code("import")}
        if spec.get("vqa_answers"):
            inputs["vqa_answers"] = spec["vqa_answers"]
        return inputs

    def import_args(self, wildcards: Any) -> str:
        """The import stage's settings as one ``--config`` JSON and its input paths, shell-quoted (from
        ``wildcards`` alone, so that Snakemake's params trigger compares them)."""
        spec = self.entries[wildcards.name]
        settings = build(ImportSettings, {k: spec[k] for k in ("preset", "overrides")}, f"released.{wildcards.name}")
        args = ["--config", settings.as_json(), "--ckpt", spec["path"]]
        if spec.get("vqa_answers"):
            args += ["--vqa-answers", spec["vqa_answers"]]
        return shlex.join(args)
