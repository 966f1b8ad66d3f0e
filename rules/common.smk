# Paths and target functions shared by all rule files. Logic lives in workflow/*.py.
from pathlib import Path

from vlmerge.catalog.names import MS_SHARINGS, TASKS
from workflow.paths import Paths, parent_of_output, stage_code
from workflow.ablations import Ablations
from workflow.data import DataStage
from workflow.finetuning import Finetuning
from workflow.merging import Merging
from workflow.pretraining import Pretraining, seed_of
from workflow.reporting import Reporting

paths = Paths(config)
data_stage = DataStage(config, paths)
ablations = Ablations(config)
pretraining = Pretraining(config, paths)
merging = Merging(config, paths, ablations)
finetuning = Finetuning(config, paths, merging, ablations)
reporting = Reporting(config, paths, finetuning, ablations)
ENV = "../workflow/envs/vlmerge.yaml"


def data_targets():
    """Everything the data stage produces for the configured datasets."""
    return [paths.manifest(d) for d in config["data"]["datasets"]] + [paths.tokenizer_dir]


def pretrain_targets():
    """The three pre-trained models of the paper: seed, MS (from the seed) and the MA baseline."""
    ms = f"ms_{config['pretrain']['runs']['ms']['sharing']}"
    return [paths.checkpoint(run) for run in ("seed", ms, "ma")]


def merge_targets():
    """Every configured merge (per task where it depends on the task) and the MS model's distances."""
    merges = {merging.merged(name, task) for name in merging.methods for task in TASKS}
    return sorted(merges) + [paths.distance(merging.ms_run)]


def result_targets():
    """results/<task>/<method>.json for every configured task and method."""
    return [paths.result(task, method) for task in config["finetune"]["tasks"] for method in finetuning.methods]


def report_targets():
    """The tables and plots of the report stage (results/tables/, results/plots/)."""
    return reporting.tables() + reporting.plots()


def ablation_targets():
    """results/<task>/<name>@<variant>.json of every ablation lineage (none unless report.ablations asks)."""
    return [paths.result(task, method) for task in ablations.tasks for method in ablations.names()]
