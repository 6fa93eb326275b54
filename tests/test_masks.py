"""Multiblock 3D mask sampler (docs/reference.md R-vjepa2-3): reference statistics, determinism, structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.config import MaskConfig, default_masks
from train.masks import sample_block_size, sample_masks, seeded_generator, token_grid

GRID = token_grid(16, 256)  # (8, 16, 16): 2048 tokens
N = 8 * 16 * 16


def test_token_grid() -> None:
    assert token_grid(16, 256) == (8, 16, 16)
    assert token_grid(64, 384) == (32, 24, 24)
    assert token_grid(8, 128) == (4, 8, 8)


def test_batch_min_fractions_match_the_reference_simulation() -> None:
    """docs/reference.md R-vjepa2-3.2 (B=24): short-range context ~24% / target ~48%, long-range ~6% / ~70% of the
    tokens."""
    fractions = np.array([[[m.shape[1] / N for m in part] for part in sample_masks(default_masks(), 24, GRID,
                                                                                   step, seed=0, rank=0)]
                          for step in range(30)])  # [step, (ctx, tgt), cfg]
    mean = fractions.mean(axis=0)
    assert mean[0, 0] == pytest.approx(0.24, abs=0.03)
    assert mean[1, 0] == pytest.approx(0.48, abs=0.03)
    assert mean[0, 1] == pytest.approx(0.06, abs=0.02)
    assert mean[1, 1] == pytest.approx(0.70, abs=0.03)


def test_masks_are_sorted_disjoint_and_in_range() -> None:
    ctxs, tgts = sample_masks(default_masks(), 6, GRID, step=5, seed=1, rank=0)
    for ctx, tgt in zip(ctxs, tgts):
        assert ctx.dtype == torch.long and ctx.shape[0] == tgt.shape[0] == 6
        assert (ctx.diff(dim=1) > 0).all() and (tgt.diff(dim=1) > 0).all()
        assert ctx.min() >= 0 and max(ctx.max(), tgt.max()) < N
        for row_c, row_t in zip(ctx, tgt):
            assert not set(row_c.tolist()) & set(row_t.tolist())


def test_same_seed_and_step_give_the_same_masks_and_ranks_differ() -> None:
    def flat(masks: tuple[list[torch.Tensor], list[torch.Tensor]]) -> list[torch.Tensor]:
        return [*masks[0], *masks[1]]

    a = flat(sample_masks(default_masks(), 4, GRID, step=7, seed=3, rank=0))
    assert all(torch.equal(x, y) for x, y in zip(a, flat(sample_masks(default_masks(), 4, GRID, 7, 3, 0))))
    for other in (sample_masks(default_masks(), 4, GRID, 8, 3, 0),   # next step
                  sample_masks(default_masks(), 4, GRID, 7, 3, 1),   # another rank
                  sample_masks(default_masks(), 4, GRID, 7, 4, 0)):  # another seed
        assert any(x.shape != y.shape or not torch.equal(x, y) for x, y in zip(a, flat(other)))


def test_block_size_is_a_full_length_tube_shared_by_seed_and_step() -> None:
    """t spans all time steps with temporal_scale (1, 1); the size depends only on (seed, step)."""
    short, long = default_masks()
    sizes = [sample_block_size(short, GRID, seeded_generator(0, step)) for step in range(20)]
    assert all(t == 8 and 4 <= h <= 8 and 4 <= w <= 8 for t, h, w in sizes)
    assert len(set(sizes)) > 1
    t, h, w = sample_block_size(long, GRID, seeded_generator(0, 3))
    assert t == 8 and h >= 10 and w >= 10
    # every target token appears at all 8 time steps before truncation: check on one unpadded sample
    (ctx,), (tgt,) = sample_masks([short], 1, GRID, step=4, seed=0, rank=0)
    counts = torch.bincount(tgt[0] % 256, minlength=256)
    assert set(counts[counts > 0].tolist()) == {8}
    assert ctx[0].numel() + tgt[0].numel() == N


def test_max_temporal_keep_limits_context_to_the_first_frames() -> None:
    cfg = MaskConfig(max_temporal_keep=0.5)
    (ctx,), _ = sample_masks([cfg], 3, GRID, step=0, seed=0, rank=0)
    assert (ctx // 256).max() == 3


def test_a_config_that_masks_everything_fails_clearly() -> None:
    cfg = MaskConfig(spatial_scale=(1.0, 1.0), aspect_ratio=(1.0, 1.0), num_blocks=1)
    with pytest.raises(ValueError, match="no context"):
        sample_masks([cfg], 2, GRID, step=0, seed=0, rank=0)
