"""Multiblock 3D masks of V-JEPA 2 pretraining (docs/reference.md R-vjepa2-3, Meta's ``multiseq_multiblock3d.py``).

Per mask config and batch: one block size ``(t, h, w)`` shared by the whole batch, drawn from a generator
seeded by ``(seed, step)``; per sample, ``num_blocks`` block positions from a generator seeded by
``(seed, step, rank)``. The union of the blocks is the prediction target, the rest is the context. Every
sample's id lists are truncated to the batch minimum so they stack into ``[B, K]`` tensors.

Meta seeds the block size with a shared step counter and draws positions from the global RNG; seeding
positions by ``(seed, step, rank)`` instead makes a batch reproducible from the step alone, so masks
survive a resume (the caller passes the restored step) and differ across data-parallel ranks.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from train.config import MaskConfig

Grid = tuple[int, int, int]
MAX_RESAMPLES = 100  # Meta retries forever; a config that masks everything would hang


def token_grid(num_frames: int, crop_size: int, patch: int = 16, tubelet: int = 2) -> Grid:
    """(D, H, W) in tubelets and patches: 16 frames at 256 px -> (8, 16, 16)."""
    return num_frames // tubelet, crop_size // patch, crop_size // patch


def seeded_generator(*key: int) -> torch.Generator:
    """A torch generator for an integer key; SeedSequence mixes it, so (seed, step) and
    (seed, step, rank) give unrelated streams."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _uniform(low_high: tuple[float, float], gen: torch.Generator) -> float:
    low, high = low_high
    return low + torch.rand(1, generator=gen).item() * (high - low)


def sample_block_size(cfg: MaskConfig, grid: Grid, gen: torch.Generator) -> tuple[int, int, int]:
    """docs/reference.md R-vjepa2-3.2: t = max(1, int(D*scale_t)); keep = int(H*W*scale_s); h, w from the aspect
    ratio."""
    depth, height, width = grid
    t = max(1, int(depth * _uniform(cfg.temporal_scale, gen)))
    keep = int(height * width * _uniform(cfg.spatial_scale, gen))
    aspect = _uniform(cfg.aspect_ratio, gen)
    h = min(int(round(math.sqrt(keep * aspect))), height)
    w = min(int(round(math.sqrt(keep / aspect))), width)
    return t, h, w


def _masked_grids(count: int, cfg: MaskConfig, grid: Grid, size: tuple[int, int, int],
                  gen: torch.Generator) -> Tensor:
    """``[count, D*H*W]`` bool, True where a token lies in any of the ``num_blocks`` blocks."""
    depth, height, width = grid
    t, h, w = size
    shape = (count, cfg.num_blocks, 1, 1, 1)
    top = torch.randint(0, height - h + 1, shape, generator=gen)
    left = torch.randint(0, width - w + 1, shape, generator=gen)
    start = torch.randint(0, depth - t + 1, shape, generator=gen)
    d_idx = torch.arange(depth).view(-1, 1, 1)
    h_idx = torch.arange(height).view(1, -1, 1)
    w_idx = torch.arange(width).view(1, 1, -1)
    inside = ((d_idx >= start) & (d_idx < start + t) & (h_idx >= top) & (h_idx < top + h)
              & (w_idx >= left) & (w_idx < left + w))
    masked = inside.any(dim=1)
    keep_frames = max(1, int(depth * cfg.max_temporal_keep))
    masked[:, keep_frames:] = True  # docs/reference.md R-vjepa2-3.2: context limited to the first frames (1.0: unused)
    return masked.flatten(1)


def _sample_one_config(cfg: MaskConfig, batch_size: int, grid: Grid, size: tuple[int, int, int],
                       gen: torch.Generator) -> tuple[Tensor, Tensor]:
    masked = _masked_grids(batch_size, cfg, grid, size, gen)
    for _ in range(MAX_RESAMPLES):  # docs/reference.md R-vjepa2-3.2: resample a sample whose context is empty
        empty = masked.all(dim=1)
        if not empty.any():
            break
        masked[empty] = _masked_grids(int(empty.sum()), cfg, grid, size, gen)
    else:
        raise ValueError(f"mask config {cfg} with block size {size} on grid {grid} leaves no context token")
    num_ctx = masked.size(1) - masked.sum(dim=1)
    keep_ctx = int(num_ctx.min())
    keep_tgt = int((masked.size(1) - num_ctx).min())
    # a stable sort lists each row's context ids (False) then its target ids (True), each ascending;
    # keeping the first ones drops the highest ids (the latest tokens), as Meta's collator truncates
    order = torch.sort(masked.to(torch.uint8), dim=1, stable=True).indices
    tgt_slots = num_ctx.unsqueeze(1) + torch.arange(keep_tgt)
    return order[:, :keep_ctx], order.gather(1, tgt_slots)


def sample_masks(cfgs: list[MaskConfig], batch_size: int, grid: Grid, step: int, seed: int,
                 rank: int) -> tuple[list[Tensor], list[Tensor]]:
    """Context and target ids, one ``LongTensor [B, K]`` per mask config, ascending within each row."""
    size_gen = seeded_generator(seed, step)
    pos_gen = seeded_generator(seed, step, rank)
    contexts, targets = [], []
    for cfg in cfgs:
        size = sample_block_size(cfg, grid, size_gen)
        ctx, tgt = _sample_one_config(cfg, batch_size, grid, size, pos_gen)
        contexts.append(ctx)
        targets.append(tgt)
    return contexts, targets
