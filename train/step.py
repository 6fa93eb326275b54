"""The one V-JEPA 2 training step, shared by the Ray Train loop, a plain process, tests and benchmarks.

Per micro-batch (docs/reference.md R-vjepa2-2, R-vjepa2-4.1, R-vjepa2-11.5): the target encoder runs once on the full
clip under no_grad; for each mask config the context encoder runs on the context tokens and the predictor predicts the
target tokens (mask token 0, the fpc-group quirk of docs/reference.md R-vjepa2-2); the loss is the mean of the
per-config L1 losses. Gradients accumulate over ``len(micro_batches)`` micro-batches (FSDP2 reduce-scatters only on
the last), then AdamW steps with this step's LR/WD and the EMA target follows the context encoder.
No GradScaler: bf16 has fp32's exponent range, so loss scaling is not needed (Meta's scaler is a no-op
in practice); no gradient clipping unless ``grad_clip`` > 0 (Meta has none, docs/reference.md R-vjepa2-4.2).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from models.build import build_model
from models.config import ModelConfig
from train.fsdp import autocast, no_gradient_sync
from train.health import target_feature_std
from train.losses import ema_update, normalize_targets, vjepa_loss
from train.optim import set_hyperparams
from train.schedules import Hyperparams

Batch = dict[str, object]


class JEPA(nn.Module):
    """Context encoder, predictor and EMA target encoder under one module tree.

    Only a container: it gives checkpoints one set of fully qualified names (``encoder.*``,
    ``predictor.*``, ``target_encoder.*``) for model and optimizer state alike.
    """

    def __init__(self, encoder: nn.Module, predictor: nn.Module, target_encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor
        self.target_encoder = target_encoder


def build_jepa(cfg: ModelConfig) -> JEPA:
    """Fresh networks; the target encoder starts as a copy of the context encoder (docs/reference.md R-vjepa2-4.1)."""
    encoder, predictor = build_model(cfg)
    target = copy.deepcopy(encoder).requires_grad_(False)
    return JEPA(encoder, predictor, target)


@dataclass
class StepOutput:
    """One optimizer step, averaged over micro-batches and data-parallel ranks."""

    loss: float
    per_cfg: list[float]
    target_std: float
    clips: int  # this rank's clips
    tokens: int  # this rank's encoder input tokens (full grid per clip)


def to_device(batch: Batch, device: torch.device) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """A collated batch's clip and masks on ``device`` (non-blocking copies)."""
    clip = batch["clip"].to(device, non_blocking=True)
    masks_enc = [m.to(device, non_blocking=True) for m in batch["masks_enc"]]
    masks_pred = [m.to(device, non_blocking=True) for m in batch["masks_pred"]]
    return clip, masks_enc, masks_pred


def forward_loss(jepa: JEPA, clip: Tensor, masks_enc: list[Tensor],
                 masks_pred: list[Tensor]) -> tuple[Tensor, list[Tensor], Tensor]:
    """Loss, per-config losses and target-feature std of one micro-batch (call inside autocast)."""
    with torch.no_grad():
        target = jepa.target_encoder(clip)
    grid = jepa.encoder.token_grid(clip)
    preds = []
    for ctx_ids, tgt_ids in zip(masks_enc, masks_pred):
        z = jepa.encoder(clip, ctx_ids)
        # docs/reference.md R-vjepa2-2 quirk: Meta passes the frames-per-clip group index (always 0 here), not the
        # config index
        preds.append(jepa.predictor(z, ctx_ids, tgt_ids, mask_index=0, grid=grid))
    loss, per_cfg = vjepa_loss(preds, target, masks_pred)
    return loss, per_cfg, target_feature_std(normalize_targets(target))


def global_mean(values: Tensor) -> Tensor:
    """The mean of ``values`` over ranks (a copy; ``values`` itself without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values)  # gloo has no AVG: sum, then divide
        values /= dist.get_world_size()
    return values


def train_step(jepa: JEPA, optimizer: torch.optim.Optimizer, micro_batches: Iterable[Batch], hp: Hyperparams,
               *, grad_accum: int, device: torch.device, dtype: torch.dtype, grad_clip: float = 0.0) -> StepOutput:
    """Forward/backward over ``grad_accum`` micro-batches, one AdamW step, one EMA update."""
    totals: Tensor | None = None
    clips = tokens = 0
    batches = iter(micro_batches)
    for i in range(grad_accum):
        clip, masks_enc, masks_pred = to_device(next(batches), device)
        last = i == grad_accum - 1
        with no_gradient_sync(jepa.encoder, jepa.predictor, enabled=not last), autocast(dtype, device):
            loss, per_cfg, std = forward_loss(jepa, clip, masks_enc, masks_pred)
            (loss / grad_accum).backward()
        stats = torch.stack([loss.detach(), *(x.detach() for x in per_cfg), std]).float()
        totals = stats if totals is None else totals + stats
        d, h, w = jepa.encoder.token_grid(clip)
        clips += clip.size(0)
        tokens += clip.size(0) * d * h * w
    if grad_clip > 0:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    set_hyperparams(optimizer, hp.lr, hp.weight_decay)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ema_update(jepa.target_encoder, jepa.encoder, hp.ema)
    means = global_mean(totals / grad_accum).tolist()
    return StepOutput(loss=means[0], per_cfg=means[1:-1], target_std=means[-1], clips=clips, tokens=tokens)
