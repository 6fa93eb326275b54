"""Learning-rate, weight-decay and EMA schedules of the V-JEPA 2 recipe (docs/reference.md R-vjepa2-4.2).

Every schedule is a pure function of the optimizer step, so resuming needs only the step counter: a
resumed run recomputes the same values, there is no scheduler state to save beyond the step and the
config that produced it (both recorded in the checkpoint).

Meta's schedulers advance their counter *before* computing the value (``self._step += 1`` then compute),
so optimizer step ``s`` (0-based) uses the value at ``t = s + 1``; the first step of a warmup already
runs slightly above ``start_lr``. We reproduce that, so LR curves line up with Meta's logs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from core.config import ConfigError
from train.config import OptimConfig


def _warmup(start: float, peak: float, t: int, warmup_steps: int) -> float:
    """The linear warmup every warmup schedule shares, at counter ``t < warmup_steps``."""
    return start + (t / warmup_steps) * (peak - start)


class Schedule(Protocol):
    def __call__(self, step: int) -> float: ...


@dataclass(frozen=True)
class Constant:
    """The same value at every step: V-JEPA 2's weight decay (0.04) and EMA momentum (0.99925)."""

    value: float

    def __call__(self, step: int) -> float:
        return self.value


@dataclass(frozen=True)
class WarmupConstant:
    """Linear warmup ``start -> peak`` over ``warmup_steps``, then ``peak`` (the main phase, docs/reference.md
    R-vjepa2-4.2).

    Meta runs a warmup-cosine schedule whose final value equals its peak, which is exactly this.
    """

    start: float
    peak: float
    warmup_steps: int

    def __call__(self, step: int) -> float:
        t = step + 1
        if t < self.warmup_steps:
            return _warmup(self.start, self.peak, t, self.warmup_steps)
        return self.peak


@dataclass(frozen=True)
class LinearDecay:
    """Linear decay ``start -> final`` over ``t_max`` steps (the cooldown, docs/reference.md R-vjepa2-4.2).

    Meta passes ``t_max = total_steps * ipe_scale`` (1.25), so a 12k-step cooldown stops at 80 % of the
    way: 5.25e-4 -> ~1.06e-4 instead of 1e-6. Set ``optim.ipe_scale: 1.0`` to reach ``final``.
    """

    start: float
    final: float
    t_max: float

    def __call__(self, step: int) -> float:
        progress = min(1.0, (step + 1) / max(1.0, self.t_max))
        return self.start + progress * (self.final - self.start)


@dataclass(frozen=True)
class WarmupStableDecay:
    """Linear warmup ``start -> peak``, constant ``peak``, then linear ``peak -> final`` over the last
    ``anneal_steps`` of ``total_steps`` (V-JEPA 2-AC, docs/reference.md R-vjepa2-6.5: 7.5e-5 -> 4.25e-4 over
    4.5k steps, constant, 0 at the end of the last 4.5k). Same counter convention as the others."""

    start: float
    peak: float
    final: float
    warmup_steps: int
    anneal_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        t = step + 1
        anneal_from = self.total_steps - self.anneal_steps
        if t < self.warmup_steps:
            return _warmup(self.start, self.peak, t, self.warmup_steps)
        if t > anneal_from:
            progress = min(1.0, (t - anneal_from) / max(1, self.anneal_steps))
            return self.peak + progress * (self.final - self.peak)
        return self.peak


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warmup ``start -> peak`` over ``warmup_steps``, then a half cosine ``peak -> final`` over the
    remaining ``t_max - warmup_steps`` steps, then ``final`` (never below it): the probes' LR (Meta's
    ``evals/video_classification_frozen/eval.py`` ``WarmupCosineLRSchedule`` at commit c2963a4; its
    probe configs use no warmup and ``final`` 0). Same counter convention as the others."""

    start: float
    peak: float
    final: float
    warmup_steps: int
    t_max: int

    def __call__(self, step: int) -> float:
        t = step + 1
        if t < self.warmup_steps:
            return _warmup(self.start, self.peak, t, self.warmup_steps)
        progress = min(1.0, (t - self.warmup_steps) / max(1, self.t_max - self.warmup_steps))
        return max(self.final, self.final + (self.peak - self.final) * 0.5 * (1.0 + math.cos(math.pi * progress)))


@dataclass(frozen=True)
class Hyperparams:
    """What one optimizer step uses."""

    lr: float
    weight_decay: float
    ema: float


@dataclass(frozen=True)
class Schedules:
    lr: Schedule
    weight_decay: Schedule
    ema: Schedule

    def at(self, step: int) -> Hyperparams:
        return Hyperparams(lr=self.lr(step), weight_decay=self.weight_decay(step), ema=self.ema(step))


def build_schedules(cfg: OptimConfig, lr_scale: float = 1.0) -> Schedules:
    """The recipe's schedules; ``lr_scale`` is the global-batch LR rule (train.optim.plan_batch)."""
    if cfg.schedule == "warmup_constant":
        lr: Schedule = WarmupConstant(cfg.start_lr * lr_scale, cfg.lr * lr_scale, cfg.warmup_steps)
    elif cfg.schedule == "wsd":
        if cfg.warmup_steps + cfg.anneal_steps > cfg.total_steps:
            raise ConfigError(f"optim.warmup_steps {cfg.warmup_steps} + optim.anneal_steps {cfg.anneal_steps} "
                              f"exceed optim.total_steps {cfg.total_steps}")
        lr = WarmupStableDecay(cfg.start_lr * lr_scale, cfg.lr * lr_scale, cfg.final_lr * lr_scale,
                               cfg.warmup_steps, cfg.anneal_steps, cfg.total_steps)
    else:
        if cfg.warmup_steps:
            raise ConfigError(f"optim.warmup_steps={cfg.warmup_steps}: the linear_decay (cooldown) schedule "
                              "has no warmup; set it to 0")
        # docs/reference.md R-vjepa2-4.2 quirk: T_max is stretched by ipe_scale (1.25), so the decay stops short of
        # final_lr.
        lr = LinearDecay(cfg.lr * lr_scale, cfg.final_lr * lr_scale, cfg.total_steps * cfg.ipe_scale)
    # docs/reference.md R-vjepa2-4.2: WD 0.04 -> 0.04 and EMA [0.99925, 0.99925] make both schedules constants.
    return Schedules(lr=lr, weight_decay=Constant(cfg.weight_decay), ema=Constant(cfg.ema))
