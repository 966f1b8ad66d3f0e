"""Stage ``finetune``: fine-tune a checkpoint on one downstream task, select it on validation (SPEC §6).

    python -m vlmerge.finetune --task vqa --init merged.safetensors --arrow data/arrow \\
        --tokenizer data/arrow/tokenizer --out vqa.safetensors --work-dir work/vqa [--epochs N | --steps N] …

The sharing layout is the init checkpoint's (a merged checkpoint is MA-shaped and fine-tunes as
MA; an MS checkpoint fine-tunes as MS). The selection split is evaluated every ``--val-every``
steps (default: every epoch) and after the last step; the weights of the best validation are
written (by global rank zero) as safetensors + sidecar recording the task, the init checkpoint's
checksum, the selection metric and step, and the init checkpoint's lineage. The work directory
keeps Lightning checkpoints and candidate weights; rerunning the same command resumes. Bad input
ends with a one-line error and exit code 2; a run stopped before its last step writes nothing
and exits 1.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_only

from vlmerge.data.readers import ReaderError
from vlmerge.data.tokenizer import TokenizerError, vocabulary_file
from vlmerge.model import CheckpointError, ModelConfigError
from vlmerge.model.checkpoint import checkpoint_meta, save_checkpoint
from vlmerge.runtime import provenance, setup_logging
from vlmerge.finetune.datamodule import FinetuneData
from vlmerge.tasks.errors import TaskError
from vlmerge.finetune.args import parse_args
from vlmerge.finetune.run import FinetuneRun
from vlmerge.tasks.lineage import lineage, weights_sha256
from vlmerge.tasks.model_init import task_model
from vlmerge.tasks.registry import get_task
from vlmerge.train.errors import TrainConfigError, TrainingIncomplete, require_finished
from vlmerge.finetune.module import FinetuneModule
from vlmerge.train.trainer import build_trainer, resume_checkpoint
from vlmerge.train.work_dir import claim_work_dir

log = logging.getLogger(__name__)
BAD_INPUT = (TaskError, TrainConfigError, ModelConfigError, CheckpointError, ReaderError, TokenizerError)


def run(config: FinetuneRun) -> Path | None:
    """Train and select, then write ``config.out`` on global rank zero; returns it there (None elsewhere)."""
    record = provenance("finetune", config.resolved())
    task = get_task(config.task)
    data = FinetuneData(task, config.data)  # checks the tables and the tokenizer before any model is built
    torch.manual_seed(config.module.seed)  # fresh task heads
    model, init_meta = task_model(config.init, task.heads(config.data.arrow), config.image_size, config.drop_path)
    if len(data.tokenizer) != model.config.vocab_size:
        raise TaskError(f"tokenizer {config.data.tokenizer} has {len(data.tokenizer)} tokens but {config.init} "
                        f"was trained with {model.config.vocab_size}")
    log.info("fine-tuning %s (%s) on %s: %d samples, %d steps (%d per epoch)", config.init.name,
             model.sharing.value, task.name, config.train_samples, config.module.max_steps, config.steps_per_epoch)
    work_dir = config.trainer.work_dir
    run_id = hashlib.sha256(f"{config.config_hash()} {weights_sha256(config.init)}".encode()).hexdigest()
    claim_work_dir(work_dir, {"run_id": run_id}, writer=rank_zero_only.rank == 0, restart_stale=config.restart_stale)
    module = FinetuneModule(model, task, data.val_sides, config.module, work_dir / "selection", run_id)
    trainer = build_trainer(config.trainer)
    trainer.fit(module, datamodule=data, ckpt_path=resume_checkpoint(work_dir))
    require_finished(trainer.global_step, config.trainer.max_steps, work_dir)
    if config.trainer.max_steps not in module.selection.steps:
        trainer.validate(module, datamodule=data, verbose=False)
    best = module.selection.best
    if best is None:
        raise TaskError(f"no validation of {config.data.select_split} gave a finite {module.selection.metric}")
    if not trainer.is_global_zero:
        return None
    selection = {"metric": module.selection.metric, "value": best["metrics"][module.selection.metric],
                 "step": best["step"], "split": config.data.select_split, "history": module.selection.history}
    extra = {"stage": "finetune", "task": task.name, "init": str(config.init), "selection": selection,
             "finetune_config_hash": config.config_hash(), "lineage": lineage(config.init, init_meta),
             "provenance": record}
    inputs = {"init": config.init, "tokenizer": vocabulary_file(config.data.tokenizer)}
    meta = checkpoint_meta(model, steps=best["step"], inputs=inputs, extra=extra)
    save_checkpoint(config.out, module.best_weights.load(best["step"]), meta)
    log.info("wrote %s: step %d, %s %s = %.4f", config.out, best["step"], config.data.select_split,
             module.selection.metric, selection["value"])
    return config.out


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(argv)
    except BAD_INPUT as err:
        print(f"vlmerge.finetune: error: {err}", file=sys.stderr)
        return 2
    setup_logging(config.verbose)
    try:
        run(config)
    except BAD_INPUT as err:
        print(f"vlmerge.finetune: error: {err}", file=sys.stderr)
        return 2
    except TrainingIncomplete as err:
        print(f"vlmerge.finetune: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
