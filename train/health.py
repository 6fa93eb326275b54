"""Run health: representation collapse, throughput, and how much of a step is spent waiting for data.

Collapse: with an EMA target and a stop-gradient, the loss alone cannot show collapse (docs/reference.md R-vjepa2-10,
issue theme 3: "the loss is only a proxy"); a collapsed encoder maps every token to the same vector and
the loss goes *down*. The standard deviation of the (layer-normed) target features across tokens and
clips, averaged over channels, shows it: ~1 for diverse features, falling towards 0 on collapse.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import Tensor

log = logging.getLogger(__name__)
T = TypeVar("T")


@torch.no_grad()
def target_feature_std(h: Tensor) -> Tensor:
    """Mean over channels of the std over every token of every clip; ``h`` is ``[B, N, D]``."""
    return h.detach().float().reshape(-1, h.size(-1)).std(dim=0).mean()


@dataclass
class CollapseMonitor:
    """Warns (once per episode below the floor) when the target-feature std drops under ``floor``."""

    floor: float
    collapsed: bool = False

    def check(self, step: int, std: float) -> bool:
        """True while ``std`` is below the floor; logs a warning when it first drops there."""
        below = std < self.floor
        if below and not self.collapsed:
            log.warning("step %d: target-feature std %.4f fell below %.4f; the representation may be "
                        "collapsing (check LR and EMA)", step, std, self.floor)
        elif self.collapsed and not below:
            log.info("step %d: target-feature std recovered to %.4f", step, std)
        self.collapsed = below
        return below


class TimedIterator(Iterator[T]):
    """Wraps a batch iterator and adds the time spent in ``next()`` (waiting for data) to ``wait_s``."""

    def __init__(self, inner: Iterator[T]):
        self._inner = inner
        self.wait_s = 0.0

    def __next__(self) -> T:
        start = time.perf_counter()
        try:
            return next(self._inner)
        finally:
            self.wait_s += time.perf_counter() - start


@dataclass
class StepTiming:
    seconds: float
    data_wait_s: float
    clips: int
    tokens: int

    def metrics(self) -> dict[str, float]:
        return {
            "clips_per_s": self.clips / self.seconds,
            "tokens_per_s": self.tokens / self.seconds,
            "data_wait_frac": self.data_wait_s / self.seconds,
        }


@dataclass
class Throughput:
    """Per-step timings, and a summary that leaves out the first ``warmup`` steps (startup, compile)."""

    warmup: int = 2
    steps: list[StepTiming] = field(default_factory=list)

    def record(self, timing: StepTiming) -> dict[str, float]:
        self.steps.append(timing)
        return timing.metrics()

    def summary(self) -> dict[str, float]:
        warm = self.steps[self.warmup:] or self.steps
        if not warm:
            return {}
        total = StepTiming(seconds=sum(s.seconds for s in warm), data_wait_s=sum(s.data_wait_s for s in warm),
                           clips=sum(s.clips for s in warm), tokens=sum(s.tokens for s in warm))
        return {**total.metrics(), "steps_per_s": len(warm) / total.seconds, "steps_measured": float(len(warm))}
