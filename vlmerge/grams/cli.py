"""Stage ``grams``: gram statistics of an MS model's per-expert linear inputs over a task's data.

    python -m vlmerge.grams --ckpt MS.safetensors --task vqa --arrow data/arrow --tokenizer data/arrow/tokenizer \\
        --out grams.safetensors [--split train|val] [--image-size N] [--max-samples N] [--batch-size N] \\
        [--include-pad] [--shard I/N]
    python -m vlmerge.grams --reduce shard0.safetensors shard1.safetensors --out grams.safetensors

Writes XᵀX, Σx and token counts (float64) per hooked module plus a JSON sidecar (task, split,
samples, image size, sha256 of the model checkpoint). ``--shard I/N`` collects every N-th sample
from the I-th; ``--reduce`` sums shards into exactly the statistics of their union. Bad input ends
with a one-line error naming the file and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sized
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from vlmerge.catalog.names import TASKS
from vlmerge.grams.config import GramsSettings
from vlmerge.runtime import jsonable, provenance, sha256_file
from vlmerge.runtime.outputs import check_outputs, with_sidecar
from vlmerge.runtime.settings import add_settings_arguments, settings_from_args
from vlmerge.runtime.stage import run_stage

if TYPE_CHECKING:  # torch and the model come with the run alone: ``--help`` stays light
    from vlmerge.model import VLModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CollectConfig:
    ckpt: Path
    task: str
    arrow: Path
    tokenizer: Path
    out: Path
    settings: GramsSettings
    shard: tuple[int, int] = (0, 1)
    workers: int = 0
    device: str = "cpu"

    def resolved(self) -> dict[str, Any]:
        return jsonable({**asdict(self), "settings": self.settings})


@dataclass(frozen=True)
class ReduceConfig:
    shards: tuple[Path, ...]
    out: Path


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return int(index), int(count)


def parse_args(argv: list[str] | None) -> CollectConfig | ReduceConfig:
    parser = argparse.ArgumentParser(prog="python -m vlmerge.grams", description=__doc__.split("\n")[0])
    parser.add_argument("--reduce", nargs="+", type=Path, metavar="SHARD", help="sum these gram shards instead")
    parser.add_argument("--ckpt", type=Path, help="the modality-specific (MS) checkpoint")
    parser.add_argument("--task", choices=TASKS)
    parser.add_argument("--arrow", type=Path, help="folder of the ViLT arrow tables")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder or vocab.txt")
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors (sidecar .json beside it)")
    parser.add_argument("--shard", type=_shard, default=(0, 1), help="I/N: collect every N-th sample from the I-th")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", help="torch device (default: cuda where available, else cpu)")
    add_settings_arguments(parser, GramsSettings)
    args = parser.parse_args(argv)
    if args.reduce:
        return ReduceConfig(tuple(args.reduce), args.out)
    missing = [f"--{n}" for n in ("ckpt", "task", "arrow", "tokenizer") if getattr(args, n) is None]
    if missing:
        parser.error(f"collecting grams needs {', '.join(missing)} (or --reduce SHARD ...)")
    return CollectConfig(
        ckpt=args.ckpt,
        task=args.task,
        arrow=args.arrow,
        tokenizer=args.tokenizer,
        out=args.out,
        settings=settings_from_args(args, GramsSettings),
        shard=args.shard,
        workers=args.workers,
        device=args.device or _default_device(),
    )


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _prepare_model(config: CollectConfig) -> VLModel:
    from vlmerge.merging.errors import GramsError
    from vlmerge.model import Sharing
    from vlmerge.model.checkpoint import load_model

    model, _ = load_model(config.ckpt, config.device)
    if model.sharing is Sharing.SHARED:
        raise GramsError(f"{config.ckpt} is a modality-agnostic (MA) checkpoint; grams come from the MS model")
    size = config.settings.image_size or model.config.image_size
    if size % model.config.patch_size:
        raise GramsError(f"--image-size {size} is not a multiple of the patch size {model.config.patch_size}")
    if size != model.config.image_size:
        model.resize_image_relpos(size // model.config.patch_size)
    if config.task == "nlvr2":
        model.grow_token_types(max(3, model.token_type_embeddings.num_embeddings))
    return model.to(config.device)


def collect(config: CollectConfig) -> None:
    from torch.utils.data import DataLoader, Subset

    from vlmerge.data.collate import BatchCollator
    from vlmerge.data.tokenizer import load_text_tokenizer
    from vlmerge.files.grams import save_grams
    from vlmerge.grams.collect import SPLITS, collect_grams, sample_indices, task_dataset

    check_outputs(with_sidecar("--out", config.out), with_sidecar("--ckpt", config.ckpt))
    model = _prepare_model(config)
    tokenizer = load_text_tokenizer(config.tokenizer, max_length=model.config.max_text_len)
    data = task_dataset(config.task, config.settings.split, config.arrow, model.config.image_size)
    indices = sample_indices(len(cast(Sized, data)), config.settings.max_samples, config.shard)
    loader = DataLoader(
        Subset(data, indices),
        batch_size=config.settings.batch_size,
        shuffle=False,
        num_workers=config.workers,
        # With pads counted (upstream), texts are padded to the full text length as upstream pads them.
        collate_fn=BatchCollator(tokenizer, model.config.max_text_len, pad_to_max=config.settings.include_pad),
    )
    log.info(
        "%s %s (%s table): %d samples, shard %d/%d",
        config.task,
        config.settings.split,
        SPLITS[config.task][config.settings.split],
        len(indices),
        *config.shard,
    )
    grams = collect_grams(
        model, loader, config.task, config.settings.include_pad, total=len(loader), products=config.settings.products
    )
    layout = model.expert_layout()
    record = {
        "task": config.task,
        "split": config.settings.split,
        "samples": len(indices),
        "image_size": model.config.image_size,
        "include_pad": config.settings.include_pad,
        "checkpoint_sha256": sha256_file(config.ckpt),
        "shard": list(config.shard),
        "layout": {
            "num_layers": layout.num_layers,
            "fusion_start": layout.fusion_start,
            "sharing": layout.sharing.value,
            "dim": model.config.dim,
        },
        "provenance": provenance("grams", config.resolved()),
    }
    save_grams(config.out, grams, record)
    log.info("wrote %s: %d modules", config.out, len(grams.names))


def reduce(config: ReduceConfig) -> None:
    from vlmerge.files.grams import reduce_files, save_grams

    check_outputs(with_sidecar("--out", config.out), [f for p in config.shards for f in with_sidecar("--reduce", p)])
    grams, record = reduce_files(config.shards)
    record["provenance"] = provenance("grams", {"reduce": [str(p) for p in config.shards], "out": str(config.out)})
    save_grams(config.out, grams, record)
    log.info("reduced %d shards into %s (%d samples)", len(config.shards), config.out, record["samples"])


def main(argv: list[str] | None = None) -> int:
    def body() -> None:
        config = parse_args(argv)
        collect(config) if isinstance(config, CollectConfig) else reduce(config)

    return run_stage("grams", body)


if __name__ == "__main__":
    raise SystemExit(main())
