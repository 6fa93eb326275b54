"""The V-JEPA 2 pretraining recipe for the generic loop: networks, masks, the JEPA step, validation.

The networks are the context encoder, the predictor and the EMA target encoder under one module
(:class:`train.step.JEPA`), sharded per block with FSDP2 (``train/fsdp.py``); AdamW with the
warmup-constant or linear-decay schedules (``train/schedules.py``); masks made per trainer batch by
:class:`train.collate.Collator`. Validation scores the same JEPA loss, without gradients, on a fixed
held-out stream of the mix (``data.holdout_fraction`` of every manifest, ``trainer.eval_samples`` clips
with fixed masks), so successive evaluations are comparable.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import torch
import torch.distributed as dist

from models.checkpoint import load_meta_checkpoint, load_state
from pipelines.dataset import build_train_dataset
from pipelines.sampling import ClipIndex
from train.collate import Collator
from train.config import PretrainConfig
from train.fsdp import autocast, data_parallel_mesh, parallelize
from train.health import CollapseMonitor
from train.optim import build_optimizer
from train.recipe import ConfigRecipe, StepResult
from train.schedules import Schedules, build_schedules
from train.state import check_compatible
from train.step import JEPA, build_jepa, forward_loss, to_device, train_step

log = logging.getLogger(__name__)

VAL_SEED_OFFSET = 0x7A1  # validation masks come from their own stream, never one a training step uses


class PretrainRecipe(ConfigRecipe):
    """V-JEPA 2 pretraining over the VideoMix stream (one :class:`PretrainConfig` describes the run)."""

    model: JEPA
    cfg: PretrainConfig

    # ---- data ----------------------------------------------------------------------------------------
    def train_dataset(self, start_sample: int, stop_sample: int) -> Any:
        return build_train_dataset(self.cfg.data, epoch=0, samples=stop_sample, start_sample=start_sample,
                                   index=ClipIndex.build(self.cfg.data, split="train"))

    def val_dataset(self) -> Any:
        return build_train_dataset(self.cfg.data, epoch=0, samples=self.cfg.trainer.eval_samples,
                                   index=ClipIndex.build(self.cfg.data, split="val"))

    def validates(self) -> bool:
        """Validation is on with ``trainer.eval_every`` > 0 and a held-out share of the manifests."""
        return self.cfg.trainer.eval_every > 0 and self.cfg.data.holdout_fraction > 0

    def collate(self, rows: dict[str, Any], call: int, split: str = "train") -> dict[str, Any]:
        return (self._val_collator if split == "val" else self._collator)(rows, call)

    # ---- networks and steps ---------------------------------------------------------------------------
    def setup(self, world_size: int, rank: int, init_weights: str = "") -> None:
        cfg, trainer = self.cfg, self.cfg.trainer
        self.prepare(world_size)
        jepa = build_jepa(cfg.model)
        if init_weights:
            _load_meta_weights(jepa, init_weights)
        jepa.to(self.device)
        mesh = data_parallel_mesh(self.device)
        for module, blocks, trainable in ((jepa.encoder, jepa.encoder.blocks, True),
                                          (jepa.predictor, jepa.predictor.predictor_blocks, True),
                                          (jepa.target_encoder, jepa.target_encoder.blocks, False)):
            parallelize(module, blocks, trainer, mesh, dtype=self.dtype, trainable=trainable)
        self.model = jepa
        self.optimizer = build_optimizer({"encoder": jepa.encoder, "predictor": jepa.predictor}, cfg.optim)
        self.schedules: Schedules = build_schedules(cfg.optim, self.plan.lr_scale)
        self.collapse = CollapseMonitor(trainer.target_std_floor)
        self.target_std: dict[int, float] = {}
        enc = cfg.model.encoder
        self._collator = Collator(cfg.masks, cfg.data, cfg.run.seed, rank, enc.patch_size, enc.tubelet_size)
        self._val_collator = Collator(cfg.masks, cfg.data, cfg.run.seed + VAL_SEED_OFFSET, rank, enc.patch_size,
                                      enc.tubelet_size)

    def check_compatible(self, record: dict[str, Any], where: str) -> None:
        check_compatible(record["config"]["model"], self.cfg.model, where)

    def step(self, step: int, micro_batches: Iterator[dict[str, Any]]) -> StepResult:
        hp = self.schedules.at(step)
        out = train_step(self.model, self.optimizer, micro_batches, hp, grad_accum=self.plan.grad_accum,
                         device=self.device, dtype=self.dtype, grad_clip=self.cfg.optim.grad_clip)
        metrics = {**{f"loss/mask_{i}": v for i, v in enumerate(out.per_cfg)}, "lr": hp.lr, "wd": hp.weight_decay,
                   "ema": hp.ema, "target_std": out.target_std,
                   "collapse_warning": float(self.collapse.check(step + 1, out.target_std))}
        self.target_std[step + 1] = out.target_std
        return StepResult(out.loss, out.clips, out.tokens, metrics, f"lr {hp.lr:.3g} std {out.target_std:.3f}")

    @torch.no_grad()
    def validate(self, batches: Iterator[dict[str, Any]]) -> dict[str, float]:
        totals = torch.zeros(2, dtype=torch.float64)  # sum of per-clip losses, clips
        for batch in batches:
            clip, masks_enc, masks_pred = to_device(batch, self.device)
            with autocast(self.dtype, self.device):
                loss, _, _ = forward_loss(self.model, clip, masks_enc, masks_pred)
            totals += torch.tensor([float(loss) * clip.size(0), clip.size(0)], dtype=torch.float64)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        return {"val_loss": float(totals[0] / totals[1].clamp(min=1)), "val_clips": float(totals[1])}

    def summary(self) -> dict[str, Any]:
        return {"target_std": self.target_std, "collapsed": self.collapse.collapsed}

    def record(self) -> dict[str, Any]:
        schedules = vars(self.schedules)
        return {"batch_plan": asdict(self.plan),
                "schedules": {k: {"type": type(v).__name__, **asdict(v)} for k, v in schedules.items()}}


def _load_meta_weights(jepa: JEPA, path: str) -> None:
    """A Meta-layout file (ours or a released one): encoder, predictor and target encoder weights."""
    ckpt = load_meta_checkpoint(path)
    load_state(jepa.encoder, ckpt.state("encoder"), "encoder", ckpt.path)
    load_state(jepa.predictor, ckpt.state("predictor"), "predictor", ckpt.path)
    target = ckpt.target_encoder if ckpt.target_encoder is not None else ckpt.state("encoder")
    load_state(jepa.target_encoder, target, "target_encoder", ckpt.path)
    log.info("initialised from %s (Meta layout; fresh optimizer)", ckpt.path)
