"""The anticipation recipe for the generic loop: frozen encoder + predictor, a grid of 3-head probes, focal loss.

It is the probe recipe (eval/probe_recipe.py: one head per (lr, wd) pair under DDP, the frozen networks on
every rank, the head chosen on ``select`` and reported on ``val``) with what anticipation changes
(docs/reference.md R-vjepa2-8.3): each clip comes with its anticipation time ``tau``; the tokens are the
encoder's plus the predictor's future tubelet ``tau`` ahead (``models.anticipation.anticipate``); each head
has verb, noun and action outputs trained with a sigmoid focal loss summed over the three; and the score
is class-mean recall@5 (eval/anticipation_metrics.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import Tensor

from eval.anticipation_config import AnticipationConfig
from eval.anticipation_metrics import AnticipationPredictions, in_top_k, per_class_recall, score
from eval.clip_cache import sample_tokens
from eval.probe_recipe import ProbeRecipe, from_every_rank, probe_shape
from models.anticipation import TASKS, AnticipationBank, anticipate
from models.frozen import build_frozen_encoder
from pipelines.anticipation import AnticipationRows, Vocabulary, anticipation_dataset
from pipelines.labelled import VAL, epoch_requests
from train.fsdp import autocast

LABEL_COLUMN = {"verb": "verb", "noun": "noun", "action": "label"}  # a batch's column of each task's class


def sigmoid_focal_loss(logits: Tensor, labels: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Per-class terms ``[..., B, C]`` of the sigmoid focal loss (RetinaNet's, as Meta's EK100 eval uses it)
    for one-hot targets of ``labels [B]``: ``a_t (1 - p_t)^gamma BCE``, ``a_t`` alpha on the label's class and
    ``1 - alpha`` on the others. Meta's reduction is the sum of these terms."""
    targets = F.one_hot(labels, logits.size(-1)).to(logits.dtype).expand_as(logits)
    p = logits.sigmoid()
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t) ** gamma * F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


def build_frozen_predictor(cfg: AnticipationConfig, device: torch.device) -> torch.nn.Module:
    """The pretrained predictor (key ``predictor`` of the checkpoint), or for a random encoder the random
    predictor ``init-checkpoint --preset P --seed S`` writes beside it; frozen, positions decoded on the
    probe's crop (Meta builds it with ``img_size = resolution``)."""
    from models import hub

    if cfg.encoder.kind == "random":
        predictor = hub.load_model(cfg.encoder.preset, seed=cfg.encoder.seed)[1]
    else:
        predictor = hub.load_predictor(cfg.encoder.preset or None, cfg.predictor.checkpoint or cfg.encoder.checkpoint)
    predictor.encoder_cfg = replace(predictor.encoder_cfg, img_size=cfg.data.crop_size)
    return predictor.requires_grad_(False).eval().to(device)


@dataclass
class AnticipationParts:
    """The three parts' annotated rows, the classes (from the training manifest), and the validation rows
    left out because training never saw their (verb, noun) pair."""

    fit: AnticipationRows
    select: AnticipationRows
    val: AnticipationRows
    vocab: Vocabulary
    val_unseen: int = 0


class AnticipationRecipe(ProbeRecipe):
    """3-head attentive probes over frozen encoder (+ predictor) tokens (one :class:`AnticipationConfig`)."""

    model: AnticipationBank
    cfg: AnticipationConfig  # type: ignore[assignment]
    parts: AnticipationParts  # type: ignore[assignment]

    # ---- data ----------------------------------------------------------------------------------------
    def train_dataset(self, start_sample: int, stop_sample: int) -> Any:
        fit = self.parts.fit
        requests = fit.annotate(epoch_requests(fit.rows, self.cfg.data.seed, start_sample, stop_sample))
        return anticipation_dataset(requests, self.cfg.data, train=True, fit=fit)

    def eval_requests(self) -> pa.Table:
        """``select`` then ``val``, every row once, with their annotations."""
        select, val = self.parts.select, self.parts.val
        first = select.annotate(select.rows.all_requests())
        return pa.concat_tables([first, val.annotate(val.rows.all_requests(first_sample=first.num_rows))])

    def val_dataset(self) -> Any:
        return anticipation_dataset(self.eval_requests(), self.cfg.data, train=False)

    # ---- networks and steps ---------------------------------------------------------------------------
    def setup(self, world_size: int, rank: int, init_weights: str = "") -> None:
        cfg = self.cfg
        self.prepare(world_size)
        self.encoder = build_frozen_encoder(cfg.encoder, self.device)
        self.predictor = build_frozen_predictor(cfg, self.device) if cfg.predictor.enabled else None
        classes = self.parts.vocab.sizes
        self.shape = {**probe_shape(cfg, self.encoder.embed_dim, 0), "classes": classes}  # type: ignore[arg-type]
        self.train_bank(AnticipationBank(self.shape["heads"], self.encoder.embed_dim, cfg.probe.num_heads, classes,
                                         cfg.probe.depth), world_size)

    def tokens(self, batch: dict[str, Tensor], views: int = 1) -> Tensor:
        """``[B, N (+ future), D]``: the context clip's tokens, then the predicted tubelet ``tau`` ahead."""
        clips = batch["clip"].to(self.device)
        tokens = sample_tokens(self.encoder, clips, 1)[:, 0]
        if self.predictor is None:
            return tokens
        tubelet = self.encoder.cfg.tubelet_size
        grid = self.encoder.grid(*clips.shape[2:5])
        tubelets = max(self.cfg.predictor.num_output_frames, tubelet) // tubelet
        with autocast(self.dtype, self.device):
            return anticipate(self.predictor, tokens, grid, batch["tau"], self.cfg.data.fps, tubelet, tubelets,
                              self.cfg.predictor.mask_index).float()

    def losses(self, logits: dict[str, Tensor], batch: dict[str, Tensor]) -> Tensor:
        """Focal loss per head and clip ``[heads, B]``, summed over classes and the three tasks."""
        cfg = self.cfg
        return sum(sigmoid_focal_loss(logits[task].float(), batch[LABEL_COLUMN[task]].to(self.device),
                                      cfg.focal_alpha, cfg.focal_gamma).sum(-1) for task in TASKS)

    LOSS_NOTE = "focal per clip: min head"

    def train_tokens(self, batch: dict[str, Tensor]) -> Tensor:
        return self.tokens(batch)

    def head_losses(self, tokens: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Meta's objective sums the focal loss over the clips too; the log shows it per clip."""
        losses = self.losses(self.ddp(tokens), batch).sum(-1)
        return losses, losses / max(tokens.size(0), 1)

    @torch.no_grad()
    def predictions(self, batches: Iterator[dict[str, Any]]) -> AnticipationPredictions:  # type: ignore[override]
        """Every head's top-5 hits of every task and focal loss for this rank's clips, from every rank."""
        parts: list[AnticipationPredictions] = []
        for batch in batches:
            with autocast(self.dtype, self.device):
                logits = self.model(self.tokens(batch))
            labels = np.stack([batch[LABEL_COLUMN[t]].numpy() for t in TASKS], axis=1)
            hits = np.stack([in_top_k(logits[t].float().sigmoid().cpu().numpy(), labels[:, i])
                             for i, t in enumerate(TASKS)], axis=-1)  # [heads, B, 3]
            parts.append(AnticipationPredictions(batch["sample_id"].numpy(), batch["part"].numpy(), labels,
                                                 hits.transpose(1, 0, 2), self.losses(logits, batch).T.cpu().numpy()))
        heads = self.shape["heads"]
        ints = np.zeros(0, np.int64)
        mine = AnticipationPredictions.concat(parts) if parts else AnticipationPredictions(
            ints, ints, np.zeros((0, 3), np.int64), np.zeros((0, heads, 3), bool), np.zeros((0, heads)))
        return from_every_rank(mine, AnticipationPredictions.concat)

    def validate(self, batches: Iterator[dict[str, Any]]) -> dict[str, float]:
        pred = self.predictions(batches)
        metrics = score(pred)
        metrics["select_missing"] = float(len(self.parts.select) - metrics["select_clips"])
        metrics["val_missing"] = float(len(self.parts.val) - metrics["val_clips"])
        metrics["val_unseen"] = float(self.parts.val_unseen)
        head, val = int(metrics["best_head"]), pred.where(VAL)
        sizes = self.parts.vocab.sizes
        order = np.argsort(val.sample, kind="stable")
        self.last = {"per_class": {t: per_class_recall(val, head, i, sizes[t]) for i, t in enumerate(TASKS)},
                     "val_action_hits": "".join(map(str, val.hits[order, head, 2].astype(int).tolist()))}
        self.history[self.steps_done] = metrics
        return metrics

    def pictures(self, out: Path) -> list[Path]:
        """None: the probe's confusion matrix means nothing over thousands of actions; result.json has the
        per-class recall."""
        return []

    def summary(self) -> dict[str, Any]:
        return {"validations": self.history, **self.last}
