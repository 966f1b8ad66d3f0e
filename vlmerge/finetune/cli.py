"""Stage ``finetune``: fine-tune a checkpoint on one downstream task, select it on validation (docs/tasks.md).

    python -m vlmerge.finetune --init merged.safetensors --arrow data/arrow --tokenizer data/arrow/tokenizer \\
        --out vqa.safetensors --work-dir work/vqa [--config JSON] --task vqa [--epochs N | --steps N] …

The hyper-parameters are the fields of :class:`~vlmerge.finetune.config.FinetuneSettings`: given as one
JSON object (``--config``, what the workflow passes) or one flag each, a flag overriding its key; a key
left ``None`` takes the task's paper value. Paths are flags of their own.

The sharing layout is the init checkpoint's (a merged checkpoint is MA-shaped and fine-tunes as
MA; an MS checkpoint fine-tunes as MS). The selection split is evaluated every ``val_every``
steps (default: every epoch) and after the last step; the weights of the best validation are
written (by global rank zero) as safetensors + sidecar recording the task, the init checkpoint's
checksum, the selection metric and step, and the init checkpoint's lineage. The work directory
keeps Lightning checkpoints and candidate weights; rerunning the same command resumes. Bad input
ends with a one-line error and exit code 2; a run stopped before its last step writes nothing
and exits 1.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from vlmerge.finetune.config import FinetuneSettings
from vlmerge.runtime import provenance
from vlmerge.runtime.outputs import check_outputs, with_sidecar
from vlmerge.runtime.settings import add_settings_arguments, settings_from_args
from vlmerge.runtime.stage import run_stage
from vlmerge.train.settings import add_run_arguments

# torch, Lightning, the model and the tasks are imported by the functions that run: ``--help`` builds its
# parser from the torch-free settings alone.
if TYPE_CHECKING:
    from vlmerge.finetune.run import FinetuneRun

log = logging.getLogger(__name__)


def run(config: FinetuneRun) -> Path | None:
    """Train and select, then write ``config.out`` on global rank zero; returns it there (None elsewhere)."""
    import torch
    from lightning.pytorch.utilities import rank_zero_only

    from vlmerge.data.tokenizer import vocabulary_file
    from vlmerge.finetune.datamodule import FinetuneData
    from vlmerge.finetune.module import FinetuneModule
    from vlmerge.model.checkpoint import checkpoint_meta, save_checkpoint
    from vlmerge.tasks.errors import TaskError
    from vlmerge.tasks.lineage import lineage, weights_sha256
    from vlmerge.tasks.model_init import task_model
    from vlmerge.tasks.registry import get_task
    from vlmerge.train.errors import require_finished
    from vlmerge.train.trainer import build_trainer, resume_checkpoint
    from vlmerge.train.work_dir import check_resume_checkpoint, claim_work_dir

    record = provenance("finetune", config.resolved())
    task = get_task(config.task)
    data = FinetuneData(task, config.data)  # checks the tables and the tokenizer before any model is built
    torch.manual_seed(config.module.seed)  # fresh task heads
    model, init_meta = task_model(
        config.init, task.heads(config.data.arrow), config.image_size, config.drop_path, config.embed_dropout
    )
    if len(data.tokenizer) != model.config.vocab_size:
        raise TaskError(
            f"tokenizer {config.data.tokenizer} has {len(data.tokenizer)} tokens but {config.init} "
            f"was trained with {model.config.vocab_size}"
        )
    log.info(
        "fine-tuning %s (%s) on %s: %d samples, %d steps (%d per epoch)",
        config.init.name,
        model.sharing.value,
        task.name,
        config.train_samples,
        config.module.max_steps,
        config.steps_per_epoch,
    )
    work_dir = config.trainer.work_dir
    run_id = hashlib.sha256(f"{config.config_hash()} {weights_sha256(config.init)}".encode()).hexdigest()
    # ``rank`` is set on the decorator function at runtime; its type does not declare it.
    writer = rank_zero_only.rank == 0  # type: ignore[attr-defined]
    claim_work_dir(work_dir, {"run_id": run_id}, writer=writer, restart_stale=config.restart_stale)
    module = FinetuneModule(
        model, task, data.val_sides, config.module, work_dir / "selection", run_id, speed=config.speed
    )
    trainer = build_trainer(config.trainer)
    trainer.fit(module, datamodule=data, ckpt_path=check_resume_checkpoint(resume_checkpoint(work_dir)))
    require_finished(trainer.global_step, config.trainer.max_steps, work_dir)
    if config.trainer.max_steps not in module.selection.steps:
        trainer.validate(module, datamodule=data, verbose=False)
    best = module.selection.best
    if best is None:
        raise TaskError(f"no validation of {config.data.select_split} gave a finite {module.selection.metric}")
    if not trainer.is_global_zero:
        return None
    selection = {
        "metric": module.selection.metric,
        "value": best["metrics"][module.selection.metric],
        "step": best["step"],
        "split": config.data.select_split,
        "history": module.selection.history,
    }
    extra = {
        "stage": "finetune",
        "task": task.name,
        "init": str(config.init),
        "selection": selection,
        "finetune_config_hash": config.config_hash(),
        "lineage": lineage(config.init, init_meta),
        "provenance": record,
    }
    inputs = {"init": config.init, "tokenizer": vocabulary_file(config.data.tokenizer)}
    meta = checkpoint_meta(model, steps=best["step"], inputs=inputs, extra=extra)
    save_checkpoint(config.out, module.best_weights.load(best["step"]), meta)
    log.info(
        "wrote %s: step %d, %s %s = %.4f",
        config.out,
        best["step"],
        config.data.select_split,
        module.selection.metric,
        selection["value"],
    )
    return config.out


def _parser() -> argparse.ArgumentParser:
    """Paths and switches of this invocation, then every field of :class:`FinetuneSettings` as ``--config`` + flags."""
    p = argparse.ArgumentParser(
        prog="python -m vlmerge.finetune", description="Fine-tune a checkpoint on VQAv2, COCO, Flickr30k or NLVR2."
    )
    p.add_argument("--init", required=True, type=Path, help="checkpoint to start from, PATH.safetensors (+ PATH.json)")
    add_run_arguments(
        p,
        out="selected weights, PATH.safetensors (+ PATH.json)",
        work_dir="Lightning checkpoints, logs and candidate best weights; reruns resume from here "
        "(not a Snakemake output)",
    )
    add_settings_arguments(p, FinetuneSettings)
    return p


def _resolve(args: argparse.Namespace) -> FinetuneRun:
    """The run the parsed command line asks for; raises an InputError (a one-line message) on bad input."""
    from vlmerge.finetune.run import FinetunePaths, resolve_run

    check_outputs(with_sidecar("--out", args.out), with_sidecar("--init", args.init))
    paths = FinetunePaths(
        init=args.init, arrow=args.arrow, tokenizer=args.tokenizer, out=args.out, work_dir=args.work_dir
    )
    return resolve_run(
        settings_from_args(args, FinetuneSettings),
        paths,
        verbose=args.verbose,
        restart_stale=args.restart_stale_work_dir,
    )


def main(argv: list[str] | None = None) -> int:
    """Exit code 0 when the weights are written, 2 for bad input, 1 for a run stopped before its end."""
    args = _parser().parse_args(argv)
    return run_stage("finetune", lambda: run(_resolve(args)), verbose=args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
