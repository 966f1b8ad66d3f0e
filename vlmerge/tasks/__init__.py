"""Downstream tasks (docs/tasks.md): data, forward/loss, evaluation rows, metrics and baselines per task.

:data:`TASKS` holds VQAv2, COCO and Flickr30k retrieval and NLVR2 with the paper's fine-tuning
settings. ``python -m vlmerge.finetune`` trains a task with :class:`~vlmerge.finetune.module.FinetuneModule`,
``python -m vlmerge.evaluate`` scores the selected checkpoint.
"""

from vlmerge.tasks.base import Baseline, Rows, Task, split_files
from vlmerge.tasks.errors import TaskError
from vlmerge.tasks.model_init import task_model
from vlmerge.tasks.registry import TASKS, get_task
from vlmerge.tasks.settings import SplitOptions, TaskSettings
from vlmerge.tasks.shards import concat_rows, gather_rows, merge_rows, shard_indices

__all__ = [
    "TASKS",
    "Baseline",
    "Rows",
    "SplitOptions",
    "Task",
    "TaskError",
    "TaskSettings",
    "concat_rows",
    "gather_rows",
    "get_task",
    "merge_rows",
    "shard_indices",
    "split_files",
    "task_model",
]
