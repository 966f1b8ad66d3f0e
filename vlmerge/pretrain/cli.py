"""Stage ``pretrain``: pre-train a shared (MA) or modality-specific model with MLM + ITC + ITM (docs/objectives.md).

    python -m vlmerge.pretrain --arrow data/arrow --tokenizer data/arrow/tokenizer --out seed.safetensors \\
        --work-dir work/seed [--config JSON] [--preset tiny] [--sharing shared] [--init scratch|beit:PATH|seed:PATH] …

The hyper-parameters are the fields of :class:`~vlmerge.pretrain.config.PretrainSettings`: given as one
JSON object (``--config``, what the workflow passes) or one flag each, a flag overriding its key.

``--init seed:PATH`` starts from an MA checkpoint; for a non-shared ``--sharing`` its block weights
are copied into every expert (the paper's W⁰). The work directory keeps Lightning checkpoints and
logs; rerunning the same command resumes from the newest one. The final weights are written
(by global rank zero only) as safetensors + JSON sidecar. Bad input ends with a one-line error and
exit code 2; a run stopped before ``--steps`` (SLURM requeue, SIGTERM) writes nothing and exits 1.
Under SLURM submit with ``--signal=SIGUSR1@90`` so that a job near its time limit saves a checkpoint
and requeues itself (``vlmerge.train.trainer``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from vlmerge.pretrain.config import PretrainSettings
from vlmerge.runtime import provenance, sha256_file
from vlmerge.runtime.outputs import check_outputs, with_sidecar
from vlmerge.runtime.settings import add_settings_arguments, settings_from_args
from vlmerge.runtime.stage import run_stage
from vlmerge.train.settings import add_run_arguments

# torch, Lightning and the model are imported by the functions that run: ``--help`` builds its parser from the
# torch-free settings alone.
if TYPE_CHECKING:
    from vlmerge.pretrain.run import PretrainRun

log = logging.getLogger(__name__)


def _inputs(config: PretrainRun) -> dict[str, Path]:
    """Files whose checksums the sidecar records and the work directory's identity includes."""
    from vlmerge.data.tokenizer import vocabulary_file

    tokenizer = {"tokenizer": vocabulary_file(config.data.tokenizer)}
    return tokenizer | ({"init": config.init.path} if config.init.path is not None else {})


def train(config: PretrainRun) -> Path | None:
    """Train, then write ``config.out`` on global rank zero; returns it there (None on other ranks)."""
    import torch
    from lightning.pytorch.utilities import rank_zero_only

    from vlmerge.model import Heads
    from vlmerge.model.checkpoint import checkpoint_meta, save_checkpoint
    from vlmerge.pretrain.data import PretrainData
    from vlmerge.pretrain.init_weights import initial_model
    from vlmerge.pretrain.module import PretrainModule
    from vlmerge.train.errors import require_finished
    from vlmerge.train.trainer import build_trainer, resume_checkpoint
    from vlmerge.train.work_dir import check_resume_checkpoint, claim_work_dir

    record = provenance("pretrain", config.resolved())
    data = PretrainData(config.data)  # checks the tables and the tokenizer before any model is built
    torch.manual_seed(config.module.seed)
    model = initial_model(
        config.init,
        config.preset,
        config.sharing,
        Heads.pretraining(),
        **config.model_overrides,
        vocab_size=len(data.tokenizer),
    )
    trainer = build_trainer(config.trainer)
    log.info(
        "world size %d = %d node(s) x %d device(s); global rank %d on node rank %d",
        trainer.world_size,
        trainer.num_nodes,
        trainer.num_devices,
        trainer.global_rank,
        trainer.node_rank,
    )
    inputs = _inputs(config)  # claimed once everything above is known to be valid
    identity = config.identity(
        {k: sha256_file(p) for k, p in inputs.items()}, {p.name: p.stat().st_size for p in data.train_files}
    )
    # ``rank`` is set on the decorator function at runtime; its type does not declare it.
    writer = rank_zero_only.rank == 0  # type: ignore[attr-defined]
    claim_work_dir(config.trainer.work_dir, identity, writer=writer, restart_stale=config.restart_stale)
    trainer.fit(
        PretrainModule(model, config.module, config.speed),
        datamodule=data,
        ckpt_path=check_resume_checkpoint(resume_checkpoint(config.trainer.work_dir)),
    )
    require_finished(trainer.global_step, config.trainer.max_steps, config.trainer.work_dir)
    state = trainer.strategy.lightning_module_state_dict()  # a collective under FSDP: every rank calls it
    if not trainer.is_global_zero:
        return None
    extra = {
        "stage": "pretrain",
        "init": config.init.describe(),
        "datasets": list(config.data.datasets),
        "train_files": [p.name for p in data.train_files],
        "provenance": record,
    }
    weights = {k.removeprefix("model."): v for k, v in state.items()}
    save_checkpoint(config.out, weights, checkpoint_meta(model, steps=trainer.global_step, inputs=inputs, extra=extra))
    log.info("wrote %s after %d steps", config.out, trainer.global_step)
    return config.out


def _parser() -> argparse.ArgumentParser:
    """Paths and switches of this invocation, then every field of :class:`PretrainSettings` as ``--config`` + flags."""
    p = argparse.ArgumentParser(
        prog="python -m vlmerge.pretrain", description="Pre-train a vision-language model with MLM + ITC + ITM."
    )
    add_run_arguments(
        p,
        out="final weights, PATH.safetensors (+ PATH.json)",
        work_dir="Lightning checkpoints and logs; reruns resume from here (not a Snakemake output)",
    )
    add_settings_arguments(p, PretrainSettings)
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit code 0 when the weights are written, 2 for bad input, 1 for a run stopped before its end."""
    args = _parser().parse_args(argv)

    def body() -> None:
        from vlmerge.pretrain.run import RunPaths, resolve_run

        settings = settings_from_args(args, PretrainSettings)
        init = settings.init.partition(":")[2]  # scratch, or the beit:/seed: file
        check_outputs(with_sidecar("--out", args.out), with_sidecar("--init", init) if init else [])
        paths = RunPaths(arrow=args.arrow, tokenizer=args.tokenizer, out=args.out, work_dir=args.work_dir)
        train(resolve_run(settings, paths, args.restart_stale_work_dir))

    return run_stage("pretrain", body, verbose=args.verbose)


if __name__ == "__main__":
    raise SystemExit(main())
