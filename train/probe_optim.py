"""The probe grid's optimizer: one AdamW parameter group per head, each with its own (lr, wd) and schedule.

Meta's eval builds one AdamW per probe head, every parameter of the head in its one group (weight decay
on biases and norms too), with a warmup-cosine LR and a cosine WD schedule per head
(``evals/video_classification_frozen/eval.py`` ``init_opt`` at commit c2963a4; docs/reference.md
R-vjepa2-8.2). AdamW updates each parameter from its own state, so one optimizer with a group per head
takes exactly the steps of those separate optimizers, and one ``step()`` serves the bank. The paper's
probe configs keep WD constant (``final_wd`` = ``ref_wd``), so the WD schedule is the constant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from typing import Literal

import torch

from models.probe import ProbeBank
from train.schedules import WarmupCosine


@dataclass
class ProbeGrid:
    """The (lr, wd) pairs, one head each (Meta's SSv2/K400/COIN grid: 5 lrs x 4 wds = 20 heads)."""

    lrs: list[float] = field(default_factory=lambda: [5e-3, 3e-3, 1e-3, 3e-4, 1e-4])
    wds: list[float] = field(default_factory=lambda: [0.01, 0.1, 0.4, 0.8])
    warmup_steps: int = 0
    start_lr: float = 0.0  # where a warmup starts (Meta's probes: no warmup)
    final_lr: float = 0.0
    # Which way the heads are numbered, as Meta's configs list them (head i of a Meta probe file is pair i):
    # wd-major (every lr at the first wd, then the next wd) in SSv2 / K400 / COIN / Diving48 / Jester / EK100
    # (configs/eval/vitl/*.yaml at c2963a4), lr-major in IN1K.
    order: Literal["wd_major", "lr_major"] = "wd_major"

    def pairs(self) -> list[tuple[float, float]]:
        """The (lr, wd) of head 0, 1, ... in the grid's ``order``."""
        if self.order == "lr_major":
            return list(product(self.lrs, self.wds))
        return [(lr, wd) for wd, lr in product(self.wds, self.lrs)]


def probe_optimizer(bank: ProbeBank, grid: ProbeGrid) -> torch.optim.AdamW:
    """AdamW over the bank: group i holds head i's parameters at pair i of the grid."""
    pairs = grid.pairs()
    if len(pairs) != len(bank.classifiers):
        raise ValueError(f"the grid has {len(pairs)} (lr, wd) pairs for {len(bank.classifiers)} heads")
    groups = [{"params": list(head.parameters()), "lr": lr, "weight_decay": wd}
              for head, (lr, wd) in zip(bank.classifiers, pairs, strict=True)]
    return torch.optim.AdamW(groups)


def head_schedules(grid: ProbeGrid, total_steps: int) -> list[WarmupCosine]:
    """Each head's LR schedule: warmup ``start_lr`` -> its lr (none by default), cosine to ``final_lr``."""
    return [WarmupCosine(grid.start_lr, lr, grid.final_lr, grid.warmup_steps, total_steps)
            for lr, _ in grid.pairs()]


def set_head_lrs(optimizer: torch.optim.Optimizer, schedules: list[WarmupCosine], step: int) -> list[float]:
    """Set every head's LR for optimizer step ``step``; returns them (for logging)."""
    lrs = [schedule(step) for schedule in schedules]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    return lrs
