"""The probe recipe for the generic loop: a frozen encoder, a grid of attentive probes, cross-entropy.

Only the probes train (:class:`models.probe.ProbeBank`, one head per (lr, wd) pair of the grid, under
DDP across workers: they are small, so every rank holds all of them); the encoder is built on every
rank, runs once per batch for all heads under ``no_grad`` (``models/frozen.py``), and never enters the
optimizer or the checkpoint. With a clip feature cache (eval/clip_cache.py) the batches carry the
tokens instead of pixels and no encoder is built. Validation scores every head on the ``select`` and
``val`` parts of one fixed stream (softmax averaged over views) and picks the reported head on
``select`` (eval/probe_metrics.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from core.errors import UserError
from eval.clip_cache import cached_dataset, sample_tokens
from eval.probe_config import ProbeConfig
from eval.probe_metrics import Predictions, confusion, correct, score
from models.checkpoint import load_probe_checkpoint
from models.frozen import build_frozen_encoder
from models.probe import ProbeBank
from pipelines.episodes.cache import to_float
from pipelines.labelled import VAL, LabelledRows, epoch_requests, labelled_dataset
from train.fsdp import autocast
from train.probe_optim import head_schedules, probe_optimizer, set_head_lrs
from train.recipe import ConfigRecipe, StepResult
from train.step import global_mean

log = logging.getLogger(__name__)


@dataclass
class ProbeParts:
    """The rows of the three parts (pipelines/labelled.py), the label names, and which parts the clip
    cache holds (their tokens' width ``token_dim`` then comes from the cache)."""

    fit: LabelledRows
    select: LabelledRows
    val: LabelledRows
    class_names: list[str]
    cached: tuple[str, ...] = ()
    token_dim: int = 0
    best_head: int = 0  # the head reported without select rows (eval-only: the one the probe file names)


def probe_shape(cfg: ProbeConfig, dim: int, classes: int) -> dict[str, int]:
    """What a probe checkpoint must match to be resumed or loaded."""
    return {"heads": len(cfg.probe.grid.pairs()), "depth": cfg.probe.depth, "num_heads": cfg.probe.num_heads,
            "dim": dim, "classes": classes}


def from_every_rank(mine: Any, concat: Callable[[list[Any]], Any]) -> Any:
    """Every rank's predictions (``concat`` of the gathered objects) under DDP; ``mine`` alone otherwise."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
        return concat(gathered)
    return mine


class ProbeRecipe(ConfigRecipe):
    """Attentive probes over a frozen encoder (one :class:`ProbeConfig` describes the run)."""

    model: ProbeBank
    cfg: ProbeConfig

    def __init__(self, cfg: ProbeConfig, parts: ProbeParts):
        super().__init__(cfg)
        self.parts = parts
        self.history: dict[int, dict[str, float]] = {}
        self.last: dict[str, Any] = {}
        self.steps_done = 0

    # ---- data ----------------------------------------------------------------------------------------
    def train_dataset(self, start_sample: int, stop_sample: int) -> Any:
        data = self.cfg.data
        requests = epoch_requests(self.parts.fit, data.seed, start_sample, stop_sample)
        if "fit" in self.parts.cached:
            return cached_dataset(requests, data.cache_dir, data.decode_batch_size, self.parts.fit, data.seed,
                                  data.preserve_order)
        return labelled_dataset(requests, data, train=True, views=1, fit=self.parts.fit)

    def eval_requests(self) -> pa.Table:
        """``select`` then ``val``, every row once."""
        select = self.parts.select.all_requests()
        return pa.concat_tables([select, self.parts.val.all_requests(first_sample=select.num_rows)])

    def validates(self) -> bool:
        return self.cfg.trainer.eval_every > 0

    def val_dataset(self) -> Any:
        data, requests = self.cfg.data, self.eval_requests()
        if "val" in self.parts.cached:
            return cached_dataset(requests, data.cache_dir, data.decode_batch_size, preserve_order=data.preserve_order)
        return labelled_dataset(requests, data, train=False, views=data.num_views)

    def collate(self, rows: dict[str, Any], call: int, split: str = "train") -> dict[str, Any]:
        return {k: torch.from_numpy(np.array(v)) for k, v in rows.items()}  # a copy: Ray's arrays are read-only

    # ---- networks and steps ---------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.parts.class_names)

    def setup(self, world_size: int, rank: int, init_weights: str = "") -> None:
        cfg = self.cfg
        self.prepare(world_size)
        uncached = {"fit", "val"} - set(self.parts.cached)
        self.encoder = build_frozen_encoder(cfg.encoder, self.device) if uncached else None
        dim = self.encoder.embed_dim if self.encoder is not None else self.parts.token_dim
        self.shape = probe_shape(cfg, dim, self.num_classes)
        self.train_bank(ProbeBank(self.shape["heads"], dim, cfg.probe.num_heads, self.num_classes, cfg.probe.depth),
                        world_size)

    def train_bank(self, bank: Any, world_size: int) -> None:
        """The heads to train: started from ``probe.checkpoint`` if given, on the device, under DDP across
        ranks, with one optimizer group and LR schedule per head."""
        grid = self.cfg.probe.grid
        if self.cfg.probe.checkpoint:
            load_probe_checkpoint(self.cfg.probe.checkpoint, list(bank.classifiers))
        self.model = bank.to(self.device)
        distributed = dist.is_available() and dist.is_initialized() and world_size > 1
        self.ddp = torch.nn.parallel.DistributedDataParallel(bank) if distributed else bank
        self.optimizer = probe_optimizer(bank, grid)
        self.schedules = head_schedules(grid, self.total_steps)

    def check_compatible(self, record: dict[str, Any], where: str) -> None:
        saved = record.get("probe_shape")
        if saved != self.shape:
            raise UserError(f"{where}: a probe of shape {saved} cannot continue as {self.shape} (another grid, "
                            "depth, encoder width or label map)")

    def tokens(self, batch: dict[str, Tensor], views: int) -> Tensor:
        """``[B, views, N, D]`` float32 on the device: cached, or encoded from the batch's clips."""
        if "tokens" in batch:
            return to_float(batch["tokens"], self.cfg.cache.dtype).to(self.device)
        return sample_tokens(self.encoder, batch["clip"].to(self.device), views)

    LOSS_NOTE = "min head"  # how the step line names the per-head loss it shows

    def train_tokens(self, batch: dict[str, Tensor]) -> Tensor:
        """``[B, N, D]``: a training batch's tokens (one view)."""
        return self.tokens(batch, 1)[:, 0]

    def head_losses(self, tokens: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(the objective per head ``[heads]``, the loss per head and clip for the log): cross-entropy,
        averaged over the clips."""
        labels = batch["label"].to(self.device)
        logits = self.ddp(tokens)  # [heads, B, classes]
        losses = F.cross_entropy(logits.flatten(0, 1).float(), labels.repeat(logits.size(0)),
                                 reduction="none").view(logits.size(0), -1).mean(dim=1)
        return losses, losses

    def step(self, step: int, micro_batches: Iterator[dict[str, Any]]) -> StepResult:
        lrs = set_head_lrs(self.optimizer, self.schedules, step)
        accum = self.plan.grad_accum
        per_head = torch.zeros(self.shape["heads"], dtype=torch.float64)
        clips = tokens_seen = 0
        for micro in range(accum):
            batch = next(micro_batches)
            tokens = self.train_tokens(batch)
            sync = contextlib.nullcontext() if micro == accum - 1 or self.ddp is self.model else self.ddp.no_sync()
            with sync, autocast(self.dtype, self.device):
                objective, per_clip = self.head_losses(tokens, batch)
                (objective.sum() / accum).backward()
            per_head += per_clip.detach().double().cpu()
            clips += tokens.size(0)
            tokens_seen += tokens.size(0) * tokens.size(1)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        per_head = global_mean(per_head / accum)
        self.steps_done = step + 1
        best = int(per_head.argmin())
        metrics = {"loss/min_head": float(per_head[best]), "lr/max": max(lrs)}
        return StepResult(float(per_head.mean()), clips, tokens_seen, metrics,
                          f"{self.LOSS_NOTE} {float(per_head[best]):.4f} (head {best}) lr {max(lrs):.3g}")

    @torch.no_grad()
    def predictions(self, batches: Iterator[dict[str, Any]]) -> Predictions:
        """Every head's view-averaged predictions for this rank's clips, gathered from every rank."""
        views, heads = self.cfg.data.num_views, self.shape["heads"]
        parts: list[Predictions] = []
        for batch in batches:
            tokens = self.tokens(batch, views)
            labels = batch["label"].to(self.device)
            with autocast(self.dtype, self.device):
                logits = self.model(tokens.flatten(0, 1))  # [heads, B x views, classes]
            probs = logits.float().softmax(-1).view(heads, -1, views, self.num_classes).mean(dim=2)
            top5 = probs.topk(min(5, self.num_classes), dim=-1).indices
            picked = probs.gather(-1, labels.view(1, -1, 1).expand(heads, -1, 1)).squeeze(-1)
            parts.append(Predictions(batch["sample_id"].numpy(), batch["part"].numpy(), labels.cpu().numpy(),
                                     probs.argmax(-1).T.cpu().numpy(),
                                     (top5 == labels.view(1, -1, 1)).any(-1).T.cpu().numpy(),
                                     (-picked.clamp_min(1e-12).log()).T.cpu().numpy()))
        ints = np.zeros(0, np.int64)
        empty = Predictions(ints, ints, ints, np.zeros((0, heads), np.int64), np.zeros((0, heads), bool),
                            np.zeros((0, heads)))
        return from_every_rank(Predictions.concat(parts) if parts else empty, Predictions.concat)

    def validate(self, batches: Iterator[dict[str, Any]]) -> dict[str, float]:
        pred = self.predictions(batches)
        metrics = score(pred, self.num_classes, self.parts.best_head)
        metrics["select_missing"] = float(len(self.parts.select) - metrics["select_clips"])
        metrics["val_missing"] = float(len(self.parts.val) - metrics["val_clips"])
        head = int(metrics["best_head"])
        val = pred.where(VAL)
        self.last = {"metrics": metrics, "confusion": confusion(val, head, self.num_classes),
                     "val_correct": correct(val, head)}
        self.history[self.steps_done] = metrics
        return metrics

    def pictures(self, out: Path) -> list[Path]:
        from eval.probe_pictures import draw

        return draw(self.history, self.last["confusion"], self.parts.class_names, out)

    def summary(self) -> dict[str, Any]:
        return {"validations": self.history, "confusion": self.last.get("confusion"),
                "val_correct": self.last.get("val_correct")}

    def record(self) -> dict[str, Any]:
        return {"batch_plan": asdict(self.plan), "probe_shape": self.shape, "grid": asdict(self.cfg.probe.grid)}
