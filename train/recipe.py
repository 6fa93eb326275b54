"""What a kind of training brings to the generic Ray Train loop (``train/loop.py``).

The loop owns the duties every training run shares: restore or initialise, the data position, the
stop step, checkpoint cadence and keep-last-N, rank-0 tracking, timing, and periodic validation on a
held-out stream. A recipe owns what differs: the networks, the optimizer and schedules, how a batch
of dataset rows becomes model input, one optimizer step, one validation step, and what is exported.
Pretraining is one recipe (``train/pretrain_recipe.py``); post-training and probe training are others.

A recipe is created in the driver with its typed config and pickled to the Ray Train controller
(which builds the datasets) and to every worker (which calls :meth:`Recipe.setup` and trains).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.tracking import TrackingConfig
from train.config import RunSection, TrainerConfig
from train.optim import BatchPlan


@dataclass
class StepResult:
    """One optimizer step as the loop logs it: the loss, the recipe's own metrics and its log line."""

    loss: float
    clips: int  # this rank's clips in the step
    tokens: int  # this rank's encoder input tokens in the step
    metrics: dict[str, float] = field(default_factory=dict)  # logged to MLflow beside loss and throughput
    summary: str = ""  # the recipe's part of the step's log line, e.g. "lr 1e-3 std 0.41"


class Recipe(ABC):
    """A training recipe. Attributes :attr:`model`, :attr:`optimizer` and :attr:`plan` exist after
    :meth:`setup`; ``model`` is the root module whose state (with the optimizer's) is checkpointed."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    plan: BatchPlan

    # ---- what the loop reads from the run config ----------------------------------------------------
    @property
    @abstractmethod
    def run(self) -> RunSection: ...

    @property
    @abstractmethod
    def trainer(self) -> TrainerConfig: ...

    @property
    @abstractmethod
    def tracking(self) -> TrackingConfig: ...

    @property
    @abstractmethod
    def total_steps(self) -> int: ...

    def stop_step(self) -> int:
        """The step this run ends at: ``trainer.stop_after`` (to resume later) or the last one."""
        return min(self.trainer.stop_after or self.total_steps, self.total_steps)

    # ---- data ----------------------------------------------------------------------------------------
    @abstractmethod
    def train_dataset(self, start_sample: int, stop_sample: int) -> Any:
        """The Ray Dataset of samples ``[start_sample, stop_sample)`` of the training stream."""

    def validates(self) -> bool:
        """Whether this run validates (then :meth:`val_dataset` and :meth:`validate` are used)."""
        return False

    def val_dataset(self) -> Any:
        """The held-out Ray Dataset that :meth:`validate` scores."""
        raise NotImplementedError(f"{type(self).__name__} has no held-out stream")

    @abstractmethod
    def collate(self, rows: dict[str, Any], call: int, split: str = "train") -> dict[str, Any]:
        """A batch of dataset rows -> model input. ``call`` counts this rank's calls on ``split`` ("train"
        or "val") and seeds per-batch randomness, so a resumed run collates the same batches."""

    # ---- networks and steps ---------------------------------------------------------------------------
    @abstractmethod
    def setup(self, world_size: int, rank: int, init_weights: str = "") -> None:
        """Seeded networks (the same on every rank), optional Meta-layout ``init_weights``, parallelism,
        optimizer and schedules; sets ``model``, ``optimizer`` and ``plan``."""

    @abstractmethod
    def check_compatible(self, record: dict[str, Any], where: str) -> None:
        """Refuse (raise a UserError) a checkpoint record whose architecture does not fit this run."""

    @abstractmethod
    def step(self, step: int, micro_batches: Iterator[dict[str, Any]]) -> StepResult:
        """Optimizer step ``step`` (0-based) over ``plan.grad_accum`` collated micro-batches."""

    def validate(self, batches: Iterator[dict[str, Any]]) -> dict[str, float]:
        """Metrics over the collated held-out batches, averaged over ranks; must include ``val_loss``."""
        raise NotImplementedError(f"{type(self).__name__} has no validation step")

    def pictures(self, out: Path) -> list[Path]:
        """Rank 0, after each validation: files (plots, GIFs) written under ``out`` that the loop logs as
        MLflow artifacts under ``pictures/`` (their paths relative to ``out``) and copies to
        ``<output_dir>/pictures``. Must not run the model (the other ranks do not join): compute what
        is drawn in :meth:`validate`."""
        return []

    def summary(self) -> dict[str, Any]:
        """What the recipe adds to rank 0's return value (e.g. per-step curves of its own metrics)."""
        return {}

    def record(self) -> dict[str, Any]:
        """What the recipe adds to every checkpoint's ``train_state.json`` (e.g. its schedules)."""
        return {}


class ConfigRecipe(Recipe):
    """A recipe whose one run config (``cfg``: pretraining's, post-training's) has the sections the loop
    reads: ``run``, ``trainer``, ``tracking`` and ``optim.total_steps``."""

    def __init__(self, cfg: Any):
        self.cfg = cfg

    @property
    def run(self) -> RunSection:
        return self.cfg.run

    @property
    def trainer(self) -> TrainerConfig:
        return self.cfg.trainer

    @property
    def tracking(self) -> TrackingConfig:
        return self.cfg.tracking

    @property
    def total_steps(self) -> int:
        return self.cfg.optim.total_steps

    def prepare(self, world_size: int) -> None:
        """What every setup starts with: CPU threads, device, precision and batch plan, then the run's seed,
        so every rank builds identical initial weights before sharding."""
        from train.fsdp import compute_dtype, training_device
        from train.optim import plan_batch

        trainer = self.cfg.trainer
        if not trainer.use_gpu:
            torch.set_num_threads(max(1, int(trainer.cpus_per_worker)))
        self.device = training_device(trainer.use_gpu)
        self.dtype = compute_dtype(trainer.precision, self.device)
        self.plan = plan_batch(self.cfg.optim, trainer, world_size)
        torch.manual_seed(self.cfg.run.seed)
