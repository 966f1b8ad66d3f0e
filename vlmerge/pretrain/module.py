"""The pre-training LightningModule: composes a built model, the objectives and the optimiser (docs/objectives.md).

It receives a model whose weights are already initialised (scratch, BEiT or an expanded seed);
it never loads or creates weights. loss = w_mlm·MLM + w_itc·ITC + w_itm·ITM.

Determinism: before each training batch torch is seeded from (seed, rank, batch index), and hard
negatives use a generator seeded the same way, so a run resumed from a checkpoint draws the same
dropout masks and negatives as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig

from vlmerge.model import VLModel
from vlmerge.objectives import MAX_LOGIT_SCALE, ITCGather
from vlmerge.pretrain.step import itc_terms, itm_term, mlm_term
from vlmerge.train.optim import OptimConfig, SpeedOptions, build_optimizer, loss_scaled, warmup_linear_schedule
from vlmerge.train.seeds import Stream, derive_seed


@dataclass(frozen=True)
class LossWeights:
    mlm: float = 1.0
    itc: float = 1.0
    itm: float = 1.0

    @property
    def uses_every_head(self) -> bool:
        """False when a zero weight leaves a head (and DDP's gradient hooks) without a gradient."""
        return self.mlm > 0 and self.itc > 0 and self.itm > 0


@dataclass(frozen=True)
class PretrainConfig:
    max_steps: int
    warmup_steps: int
    optim: OptimConfig = field(default_factory=OptimConfig)
    weights: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    itc_gather: ITCGather = "exact"  # "upstream": the released code's gather (see contrastive_loss)
    logit_scale_max: float | None = MAX_LOGIT_SCALE  # None: no cap on the ITC temperature, as upstream


class PretrainModule(pl.LightningModule):
    """MLM + ITC + ITM on a built :class:`VLModel` (``self.model``); logs ``train/*`` and ``val/*``.

    ``speed`` (attention kernel, compiled blocks, AdamW implementation) is applied to ``model`` here, in place.
    The step reads no value back to the host: every logged value stays a tensor, which Lightning turns into
    a number only every ``log_every`` steps.
    """

    def __init__(self, model: VLModel, config: PretrainConfig, speed: SpeedOptions | None = None) -> None:
        super().__init__()
        self.model, self.config, self.speed = model, config, speed or SpeedOptions()
        self.speed.apply(model)

    def step_generator(self, stream: Stream, batch_idx: int, stage: int) -> torch.Generator:
        """A generator on the module's device seeded from (seed, stream, stage, rank, batch index)."""
        seed = derive_seed(self.config.seed, stream, stage, self.global_rank, batch_idx)
        return torch.Generator(device=self.device).manual_seed(seed)

    def losses(self, batch: dict[str, Any], generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """Weighted total ``"loss"`` and every term and accuracy of one batch (see ``pretrain_step``)."""
        w, model = self.config.weights, self.model
        images, ids, mask = batch["image"], batch["text_ids"], batch["text_mask"]
        out: dict[str, torch.Tensor] = {}
        total = images.new_zeros(())
        if w.mlm > 0:
            mlm = mlm_term(model, images, batch["mlm_ids"], mask, batch["mlm_labels"])
            total = total + w.mlm * mlm.loss
            out |= {"mlm_loss": mlm.loss, "mlm_acc": mlm.accuracy}
        if w.itc > 0 or w.itm > 0:  # ITM draws its negatives from ITC term (a)
            itc = itc_terms(model, images, ids, mask, self.config.itc_gather, self.config.logit_scale_max)
            itc_loss = (itc.unimodal.loss + itc.fused.loss) / 2
            total = total + w.itc * itc_loss
            out |= {
                "itc_loss": itc_loss,
                "itc_i2t_r1": itc.unimodal.i2t_acc,
                "itc_t2i_r1": itc.unimodal.t2i_acc,
                "itc_vl_i2t_r1": itc.fused.i2t_acc,
                "itc_vl_t2i_r1": itc.fused.t2i_acc,
                "itc_scale": model.logit_scale.detach().exp(),
            }
        if w.itm > 0:
            itm = itm_term(model, images, ids, mask, itc.unimodal, generator)
            total = total + w.itm * itm.result.loss
            out |= {"itm_loss": itm.result.loss, "itm_acc": itm.result.accuracy}
        return {"loss": total} | out

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Dropout and stochastic depth of this batch, whatever ran before it in this process.
        torch.manual_seed(derive_seed(self.config.seed, Stream.STEP, 0, self.global_rank, batch_idx))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.losses(batch, self.step_generator(Stream.ITM, batch_idx, stage=0))
        batch_size = batch["image"].shape[0]
        for name, value in out.items():
            self.log(f"train/{name}", value.detach(), batch_size=batch_size, prog_bar=name == "loss")
        return out["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.losses(batch, self.step_generator(Stream.ITM, batch_idx, stage=1))
        batch_size = batch["image"].shape[0]
        for name, value in out.items():
            self.log(f"val/{name}", value, batch_size=batch_size, on_epoch=True, sync_dist=True)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        optimizer = build_optimizer(self.model, self.config.optim, self.speed.optimizer, loss_scaled(self))
        schedule = warmup_linear_schedule(optimizer, self.config.warmup_steps, self.config.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
