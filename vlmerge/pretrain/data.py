"""Pre-training data: image-caption pairs of the configured corpora, keyed, sharded and resumable (docs/objectives.md).

Training pairs come from COCO Karpathy train + restval (train only with ``coco_restval=False``, as
upstream), VG, every SBU shard and every GCC train shard (whichever of them are configured), with
the training transform (random-resized-crop 0.5–1, flip, RandAugment) and whole-word masking
(``mlm_masking``; text padded to the batch's longest, or to ``max_text_len`` with ``pad_text_to_max``);
validation uses COCO Karpathy val with the evaluation transform. Lightning restores the training
state before it asks for the train dataloader (``Trainer._run`` restores, then ``FitLoop.run``
builds the loaders), so ``trainer.global_step`` here already counts the steps of a resumed run, and
the sampler starts after the ``global_step × accumulation`` batches this rank has consumed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from vlmerge.catalog.names import PRETRAIN_DATASETS
from vlmerge.data.collate import MaskingMode
from vlmerge.data.readers import CaptionPairs
from vlmerge.data.schema import FILES
from vlmerge.data.tokenizer import MAX_TEXT_LEN, load_tokenizer
from vlmerge.data.transforms import eval_transform, train_transform
from vlmerge.train.batches import KeyedSamples, SeededBatchCollator
from vlmerge.train.errors import TrainConfigError
from vlmerge.train.sampler import ResumableSampler, evaluation_keys

_TRAIN_SPLITS = {"coco": ("train", "restval"), "vg": ("train",), "sbu": ("train",), "gcc": ("train",)}


@dataclass(frozen=True)
class PretrainDataConfig:
    arrow: Path
    tokenizer: Path
    datasets: tuple[str, ...] = PRETRAIN_DATASETS
    image_size: int = 224
    batch_size: int = 32  # per device
    num_workers: int = 0
    seed: int = 0
    mlm_prob: float = 0.25
    max_text_len: int = MAX_TEXT_LEN
    validate: bool = True
    # False: training images get the evaluation transform (no crop, flip or RandAugment), for corpora whose
    # captions a crop or flip would make false, like the embedded synthetic scenes.
    augment: bool = True
    coco_restval: bool = True  # False: COCO Karpathy train only (upstream's pre-training corpus)
    dedup_captions: bool = False  # True: an image's repeated captions once each, first kept (upstream)
    mlm_masking: MaskingMode = "bernoulli_words"  # upstream_fixed_budget: the released code's whole-word draw
    pad_text_to_max: bool = False  # True: every text padded to max_text_len (upstream), not to the batch's longest


def _shards(arrow: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern`` (``{shard}`` = 0, 1, …) in shard order, which must have no gap."""
    regex = re.compile(re.escape(pattern).replace(re.escape("{shard}"), r"(\d+)"))
    found = sorted((int(m.group(1)), p) for p in arrow.iterdir() if (m := regex.fullmatch(p.name)))
    shards = [n for n, _ in found]
    if shards != list(range(len(shards))):
        raise TrainConfigError(f"{arrow}: shards of {pattern} are {shards or 'missing'}, expected 0, 1, … without gaps")
    return [p for _, p in found]


def dataset_files(arrow: Path, dataset: str, splits: tuple[str, ...]) -> list[Path]:
    """The arrow files of ``dataset``'s ``splits`` in ``arrow``, checked to exist."""
    files: list[Path] = []
    for split in splits:
        pattern = FILES[dataset][split]
        if "{shard}" in pattern:
            files += _shards(arrow, pattern)
        elif not (arrow / pattern).is_file():
            raise TrainConfigError(f"missing pre-training table {arrow / pattern}")
        else:
            files.append(arrow / pattern)
    return files


def pretrain_files(arrow: Path, datasets: tuple[str, ...], coco_restval: bool = True) -> list[Path]:
    """Training tables of ``datasets`` in the canonical dataset order (COCO's restval only with ``coco_restval``)."""
    unknown = sorted(set(datasets) - set(PRETRAIN_DATASETS))
    if unknown or not datasets:
        raise TrainConfigError(f"pre-training datasets {unknown or '(none)'}: choose from {PRETRAIN_DATASETS}")
    if not arrow.is_dir():
        raise TrainConfigError(f"arrow folder {arrow} does not exist")
    splits = dict(_TRAIN_SPLITS) | ({} if coco_restval else {"coco": ("train",)})
    return [f for d in PRETRAIN_DATASETS if d in datasets for f in dataset_files(arrow, d, splits[d])]


def validation_files(arrow: Path) -> list[Path]:
    return dataset_files(arrow, "coco", ("val",))


class PretrainData(pl.LightningDataModule):
    """Train and validation loaders of :class:`PretrainDataConfig`; files are checked on construction."""

    def __init__(self, config: PretrainDataConfig) -> None:
        super().__init__()
        self.config = config
        self.train_files = pretrain_files(config.arrow, config.datasets, config.coco_restval)
        self.val_files = validation_files(config.arrow) if config.validate else []
        self.tokenizer = load_tokenizer(config.tokenizer, config.max_text_len)
        self.collate = SeededBatchCollator(
            self.tokenizer, config.max_text_len, config.mlm_prob, config.mlm_masking, config.pad_text_to_max
        )

    def setup(self, stage: str | None = None) -> None:
        size = self.config.image_size
        transform = train_transform(size) if self.config.augment else eval_transform(size)
        self.train = CaptionPairs(self.train_files, transform, dedup=self.config.dedup_captions)
        self.val = CaptionPairs(self.val_files, eval_transform(size)) if self.val_files else None

    def _loader(self, dataset: CaptionPairs, sampler: object) -> DataLoader:
        return DataLoader(
            KeyedSamples(dataset),
            batch_size=self.config.batch_size,
            sampler=sampler,  # type: ignore[arg-type]  # keys, not ints
            collate_fn=self.collate,
            num_workers=self.config.num_workers,
            drop_last=True,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(self.config.seed),
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        assert trainer is not None, "the train loader is built by a Trainer"
        start = trainer.global_step * trainer.accumulate_grad_batches
        sampler = ResumableSampler(
            len(self.train),
            self.config.batch_size,
            self.config.seed,
            trainer.global_rank,
            trainer.world_size,
            start_batch=start,
        )
        return self._loader(self.train, sampler)

    def val_dataloader(self) -> DataLoader | list:
        if self.val is None:
            return []
        trainer = self.trainer
        assert trainer is not None, "the validation loader is built by a Trainer"
        keys = evaluation_keys(
            len(self.val), self.config.batch_size, self.config.seed, trainer.global_rank, trainer.world_size
        )
        return self._loader(self.val, keys)
