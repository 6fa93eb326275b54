"""The V-JEPA 2-AC post-training recipe for the generic loop: a frozen encoder, the AC predictor, its loss.

Only the predictor trains (:class:`ACModel`, sharded per block with FSDP2, AdamW over its two groups,
the warmup-stable-decay schedule). Targets are the frozen encoder's frame tokens, encoded on the
trainer's device from uint8 clips (the encoder is built on every rank and never enters the optimizer or
the checkpoint) or, with a feature cache, read from it by the decode pool. Validation scores the same
loss on a fixed held-out stream of episodes and the rollout errors of :func:`train.ac_loss.rollout_errors`
(against copying the last frame and against shuffled actions), so the quality curves come for free.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from core.errors import UserError
from models.ac_predictor import ACPredictor
from models.checkpoint import load_meta_checkpoint, load_state
from models.frozen import FrozenEncoder, build_frozen_encoder
from pipelines.episodes.cache import FeatureCache, clip_tokens, to_float
from pipelines.episodes.clips import EpisodeClipDecoder, EpisodeSet, build_episode_dataset
from pipelines.quarantine import SampleError
from train.ac_loss import ac_loss, next_frame_errors, rollout_errors
from train.fsdp import autocast, data_parallel_mesh, no_gradient_sync, parallelize
from train.optim import build_optimizer, set_hyperparams
from train.posttrain_config import PosttrainConfig
from train.posttrain_pictures import EpisodeTrace, draw
from train.recipe import ConfigRecipe, StepResult
from train.schedules import Schedules, build_schedules
from train.state import check_compatible
from train.step import global_mean

log = logging.getLogger(__name__)

VAL_SEED_OFFSET = 0x7A1  # the held-out stream draws its windows from a seed no training sample uses
VAL_METRICS = ("loss", "loss_teacher_forcing", "loss_rollout", "l1_1step", "l1_2step", "shuffled_l1_1step",
               "shuffled_l1_2step", "copy_l1_1step", "copy_l1_2step")


class ACModel(nn.Module):
    """The trained part of V-JEPA 2-AC under the name Meta's checkpoints use (``predictor``)."""

    def __init__(self, predictor: ACPredictor):
        super().__init__()
        self.predictor = predictor


def quality(metrics: dict[str, float]) -> dict[str, float]:
    """Relative gains: 1 - L1 / baseline L1, for both horizons, against copying the last frame and
    against shuffled actions (> 0: the predictor beats the baseline)."""
    return {f"gain_vs_{base}_{h}": 1.0 - metrics[f"l1_{h}"] / max(metrics[f"{base}_l1_{h}"], 1e-12)
            for base in ("copy", "shuffled") for h in ("1step", "2step")}


class PosttrainRecipe(ConfigRecipe):
    """V-JEPA 2-AC post-training over robot episodes (one :class:`PosttrainConfig` describes the run)."""

    model: ACModel
    cfg: PosttrainConfig

    # ---- data ----------------------------------------------------------------------------------------
    def episodes(self, split: str) -> EpisodeSet:
        data = self.cfg.data
        only = set(FeatureCache.open(data.cache_dir).episodes) if data.cache_dir else None
        seed = data.seed + VAL_SEED_OFFSET if split == "val" else data.seed
        return EpisodeSet.build(data, split, seed=seed, only=only)

    def train_dataset(self, start_sample: int, stop_sample: int) -> Any:
        return build_episode_dataset(self.cfg.data, self.episodes("train"), start_sample, stop_sample)

    def val_dataset(self) -> Any:
        return build_episode_dataset(self.cfg.data, self.episodes("val"), 0, self.cfg.trainer.eval_samples)

    def validates(self) -> bool:
        """Validation is on with ``trainer.eval_every`` > 0 and held-out episodes (``data.val_fraction``)."""
        return self.cfg.trainer.eval_every > 0 and self.cfg.data.val_fraction > 0

    def collate(self, rows: dict[str, Any], call: int, split: str = "train") -> dict[str, Any]:
        """Rows -> CPU tensors; clips stay uint8 until they reach the device (a quarter of the bytes). Ray
        hands read-only arrays, which torch will not wrap: the tensors are copies."""
        return {name: torch.tensor(rows[name]) for name in ("clip", "tokens", "states", "actions", "sample_id")
                if name in rows}

    # ---- networks and steps ---------------------------------------------------------------------------
    def setup(self, world_size: int, rank: int, init_weights: str = "") -> None:
        cfg, trainer = self.cfg, self.cfg.trainer
        self.prepare(world_size)
        model = ACModel(ACPredictor(cfg.model.ac_predictor, cfg.model.encoder))
        if init_weights:
            ckpt = load_meta_checkpoint(init_weights)
            load_state(model.predictor, ckpt.state("predictor"), "predictor", ckpt.path)
            log.info("initialised the AC predictor from %s (Meta layout; fresh optimizer)", ckpt.path)
        model.to(self.device)
        # The predictor is the FSDP2 root, not the ACModel around it: the loss calls the predictor (and
        # rollouts call it repeatedly), and a root's unshard hooks run only when the root itself is called.
        parallelize(model.predictor, model.predictor.predictor_blocks, trainer, data_parallel_mesh(self.device),
                    dtype=self.dtype)
        self.model = model
        self.optimizer = build_optimizer({"predictor": model.predictor}, cfg.optim)
        self.schedules: Schedules = build_schedules(cfg.optim, self.plan.lr_scale)
        cache = FeatureCache.open(cfg.data.cache_dir) if cfg.data.cache_dir else None
        self.cache_dtype = cache.dtype if cache is not None else ""
        # With a cache the trainers never run the encoder: they do not even hold it.
        self.encoder: FrozenEncoder | None = None if cache else build_frozen_encoder(cfg.encoder, self.device)
        enc = cfg.model.encoder
        self.token_shape = ((enc.img_size // enc.patch_size) ** 2, enc.embed_dim)
        self.history: dict[int, dict[str, float]] = {}  # validation metrics by the step they follow
        self.traces: list[EpisodeTrace] = []  # the last validation's pictured episodes
        self._pictured: list[dict[str, Any]] | None = None  # their decoded samples (pictured_episodes)
        self.steps_done = 0

    def check_compatible(self, record: dict[str, Any], where: str) -> None:
        check_compatible(record["config"]["model"], self.cfg.model, where)

    def targets(self, batch: dict[str, Tensor]) -> Tensor:
        """Frame tokens ``[B, T, n, D]`` of a collated batch, on the device: from the cache, or encoded."""
        if "tokens" in batch:
            z = to_float(batch["tokens"].to(self.device, non_blocking=True), self.cache_dtype)
        else:
            z = clip_tokens(self.encoder, batch["clip"].to(self.device, non_blocking=True))
        if tuple(z.shape[2:]) != self.token_shape:
            raise UserError(f"frozen encoder gives {tuple(z.shape[2:])} tokens x dims per frame, but the AC predictor "
                            f"is built for {self.token_shape} (model.encoder: img_size / patch_size, embed_dim)")
        return z

    def inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        return (self.targets(batch), batch["actions"].to(self.device, non_blocking=True),
                batch["states"].to(self.device, non_blocking=True))

    def step(self, step: int, micro_batches: Iterator[dict[str, Any]]) -> StepResult:
        hp = self.schedules.at(step)
        self.steps_done = step + 1
        totals = torch.zeros(3, dtype=torch.float64)
        clips = tokens = 0
        accum = self.plan.grad_accum
        for i in range(accum):
            z, actions, states = self.inputs(next(micro_batches))
            with no_gradient_sync(self.model.predictor, enabled=i < accum - 1), autocast(self.dtype, self.device):
                forced, rolled = ac_loss(self.model.predictor, z, actions, states, self.cfg.loss)
                ((forced + rolled) / accum).backward()
            totals += torch.stack([forced + rolled, forced, rolled]).detach().double().cpu()
            clips += z.size(0)
            tokens += z.size(0) * z.size(1) * z.size(2)
        set_hyperparams(self.optimizer, hp.lr, hp.weight_decay)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss, forced, rolled = global_mean(totals / accum).tolist()
        metrics = {"loss/teacher_forcing": forced, "loss/rollout": rolled, "lr": hp.lr, "wd": hp.weight_decay}
        return StepResult(loss, clips, tokens, metrics, f"tf {forced:.4f} ro {rolled:.4f} lr {hp.lr:.3g}")

    @torch.no_grad()
    def validate(self, batches: Iterator[dict[str, Any]]) -> dict[str, float]:
        sums = torch.zeros(len(VAL_METRICS) + 1, dtype=torch.float64)  # per-metric sums weighted by clips, clips
        for batch in batches:
            z, actions, states = self.inputs(batch)
            with autocast(self.dtype, self.device):
                forced, rolled = ac_loss(self.model.predictor, z, actions, states, self.cfg.loss)
                errors = rollout_errors(self.model.predictor, z, actions, states)
            values = {"loss": forced + rolled, "loss_teacher_forcing": forced, "loss_rollout": rolled, **errors}
            sums += torch.tensor([float(values[k]) * z.size(0) for k in VAL_METRICS] + [z.size(0)], dtype=torch.float64)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        clips = float(sums[-1])
        means = {k: float(sums[i]) / max(clips, 1.0) for i, k in enumerate(VAL_METRICS)}
        metrics = {f"val_{k}": v for k, v in {**means, **quality(means)}.items()}
        metrics["val_clips"] = clips
        self.history[self.steps_done] = metrics
        self.traces = self.trace_episodes()
        return metrics

    @torch.no_grad()
    def trace_episodes(self) -> list[EpisodeTrace]:
        """The first ``quality.gif_episodes`` held-out episodes from their start, with the per-frame 1-step
        L1 of the predictor, of copying the last frame and of the predictor fed the next episode's actions.
        Every rank runs it (a sharded predictor needs all ranks in each forward); rank 0 draws. A broken
        episode is left out of the pictures (validation quarantines it)."""
        samples = self.pictured_episodes()
        traces = []
        for i, sample in enumerate(samples):
            batch = {name: torch.as_tensor(sample[name])[None] for name in ("clip", "tokens", "states", "actions")
                     if name in sample}
            z, actions, states = self.inputs(batch)
            others = samples[(i + 1) % len(samples)]["actions"]
            shuffled = torch.as_tensor(np.resize(others, sample["actions"].shape))[None].to(self.device)
            context = self.cfg.data.frames - 1
            with autocast(self.dtype, self.device):
                errors = {"predictor": next_frame_errors(self.model.predictor, z, actions, states, context),
                          "copy": (z[:, :-1] - z[:, 1:]).abs().mean((0, 2, 3))}
                if len(samples) > 1:
                    errors["shuffled"] = next_frame_errors(self.model.predictor, z, shuffled, states, context)
            traces.append(EpisodeTrace(sample["episode_id"], sample["pixels"], sample["states"], sample["actions"],
                                       {k: v.float().cpu().numpy() for k, v in errors.items()}))
        return traces

    def pictured_episodes(self) -> list[dict[str, Any]]:
        """The decoded samples :meth:`trace_episodes` scores, read once per run: they never change, only
        the predictor does (and the held-out split is built, and its too-short episodes quarantined, once)."""
        if self._pictured is not None:
            return self._pictured
        self._pictured = []
        count, frames = self.cfg.quality.gif_episodes, self.cfg.quality.gif_frames
        if count <= 0:
            return self._pictured
        decoder = EpisodeClipDecoder(self.cfg.data, self.episodes("val"))
        for index in range(min(count, len(decoder.set))):
            try:
                self._pictured.append(decoder.episode_start(index, frames))
            except SampleError as err:
                log.warning("pictures: held-out episode %s left out: %s", decoder.set.episodes[index].episode_id, err)
        return self._pictured

    def pictures(self, out: Path) -> list[Path]:
        return draw(self.history, self.traces, self.steps_done, out)

    def summary(self) -> dict[str, Any]:
        return {"validations": self.history}

    def record(self) -> dict[str, Any]:
        return {"batch_plan": asdict(self.plan),
                "schedules": {k: {"type": type(v).__name__, **asdict(v)} for k, v in vars(self.schedules).items()}}
