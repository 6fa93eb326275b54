"""AdamW with V-JEPA 2's four parameter groups, and the global-batch plan with its LR rule (docs/reference.md
R-vjepa2-4.2).

Groups: {encoder, predictor} x {weights; biases and 1-D parameters} (post-training: the AC predictor's
two). The second kind never gets weight decay. The predictor's mask tokens are ``[1, 1, D]`` (3-D), so
they *do* get weight decay, as in Meta's code. Build the optimizer after FSDP2 sharding: it must hold
the sharded (DTensor) parameters.

LR rule: the recipe's learning rates are for a global batch of ``optim.reference_global_batch`` (3072).
A cluster that is too small for the global batch reaches it with gradient accumulation; when the global
batch cannot be hit exactly (it is not a multiple of workers x per-worker batch), accumulation rounds up
and every learning rate is scaled linearly by ``achieved_global_batch / reference_global_batch``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from core.config import ConfigError
from train.config import OptimConfig, TrainerConfig

log = logging.getLogger(__name__)

NO_WD_KEY = "wd_exempt"


def _no_weight_decay(name: str, param: nn.Parameter) -> bool:
    return name.endswith(".bias") or param.ndim == 1


def param_groups(modules: dict[str, nn.Module]) -> list[dict]:
    """Two AdamW groups per trained module (pretraining: encoder and predictor; post-training: the AC
    predictor alone); each carries ``name`` and ``wd_exempt`` so schedules know what to decay."""
    groups = []
    for prefix, module in modules.items():
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        decay = [p for n, p in named if not _no_weight_decay(n, p)]
        exempt = [p for n, p in named if _no_weight_decay(n, p)]
        groups.append({"params": decay, "name": f"{prefix}.decay", NO_WD_KEY: False})
        groups.append({"params": exempt, "name": f"{prefix}.no_decay", NO_WD_KEY: True, "weight_decay": 0.0})
    return groups


def build_optimizer(modules: dict[str, nn.Module], cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW(betas, eps) over :func:`param_groups`; LR and WD are set every step by :func:`set_hyperparams`."""
    return torch.optim.AdamW(param_groups(modules), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                             weight_decay=cfg.weight_decay)


def set_hyperparams(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Apply this step's LR to every group and its WD to the groups that are not exempt."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        if not group.get(NO_WD_KEY, False):
            group["weight_decay"] = weight_decay


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's global batch is split over workers and micro-batches."""

    num_workers: int
    batch_per_worker: int
    grad_accum: int
    requested_global_batch: int
    reference_global_batch: int

    @property
    def global_batch(self) -> int:
        return self.num_workers * self.batch_per_worker * self.grad_accum

    @property
    def lr_scale(self) -> float:
        """Linear LR rule: learning rates scale with the achieved global batch over the reference batch."""
        return self.global_batch / self.reference_global_batch


def plan_batch(optim: OptimConfig, trainer: TrainerConfig, num_workers: int | None = None) -> BatchPlan:
    """Gradient accumulation that reaches ``optim.global_batch`` with ``num_workers`` x per-worker batch.

    ``trainer.grad_accum_steps`` > 0 fixes accumulation instead (the global batch then follows from it).
    Local mode (``num_workers`` 0) counts as one worker.
    """
    workers = max(1, trainer.num_workers if num_workers is None else num_workers)
    per_worker = trainer.batch_size_per_worker
    if per_worker < 1:
        raise ConfigError(f"trainer.batch_size_per_worker must be >= 1, got {per_worker}")
    if optim.global_batch < 1 or optim.reference_global_batch < 1:
        raise ConfigError("optim.global_batch and optim.reference_global_batch must be >= 1")
    accum = trainer.grad_accum_steps or math.ceil(optim.global_batch / (workers * per_worker))
    plan = BatchPlan(workers, per_worker, accum, optim.global_batch, optim.reference_global_batch)
    if plan.global_batch != optim.global_batch:
        log.warning("global batch %d (= %d workers x %d x %d accumulation) differs from optim.global_batch %d; "
                    "the LR rule uses the achieved batch (scale %.4g)", plan.global_batch, workers, per_worker,
                    accum, optim.global_batch, plan.lr_scale)
    return plan
