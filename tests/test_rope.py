"""3D RoPE: axis split, position decoding, the tiled-frequency quirk (docs/reference.md R-vjepa2-1.4), HF as oracle."""

from __future__ import annotations

import pytest
import torch
from transformers.models.vjepa2.modeling_vjepa2 import rotate_queries_or_keys

from models.rope import axis_dim, decode_positions, rope_tables, video_rope


@pytest.mark.parametrize(("head_dim", "expected"), [(64, 20), (80, 26), (32, 10), (16, 4)])
def test_axis_dim_matches_reference_table(head_dim: int, expected: int) -> None:
    assert axis_dim(head_dim) == expected


def test_positions_are_t_major_raster_on_a_non_square_grid() -> None:
    grid = (3, 4, 5)
    t, h, w = decode_positions(torch.arange(3 * 4 * 5), grid[1:])
    expected = torch.cartesian_prod(torch.arange(3), torch.arange(4), torch.arange(5))
    assert torch.equal(torch.stack([t, h, w], dim=1), expected)


def _hf_rotate(x: torch.Tensor, ids: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """The transformers implementation, chunk by chunk: the numerical oracle for Meta's RoPE."""
    dim = axis_dim(x.size(-1))
    pos = decode_positions(ids, grid_hw)
    parts = [rotate_queries_or_keys(x[..., i * dim:(i + 1) * dim], pos=p) for i, p in enumerate(pos)]
    return torch.cat([*parts, x[..., 3 * dim:]], dim=-1)


@pytest.mark.parametrize("head_dim", [64, 80, 32])
def test_tiled_rope_equals_transformers_with_masked_positions(head_dim: int) -> None:
    torch.manual_seed(0)
    batch, heads, grid = 2, 3, (4, 6, 5)
    ids = torch.stack([torch.randperm(120)[:40].sort().values for _ in range(batch)])  # true ids, with gaps
    x = torch.randn(batch, heads, 40, head_dim)
    ours = video_rope(ids, grid, head_dim).apply(x)
    theirs = _hf_rotate(x, ids.unsqueeze(1).expand(-1, heads, -1), grid[1:])
    assert torch.equal(ours, theirs)


def test_unrotated_dims_and_axes_are_untouched_bit_exactly() -> None:
    torch.manual_seed(0)
    head_dim = 64  # 3 x 20 rotated, 4 left over
    x = torch.randn(5, head_dim)
    pos = torch.arange(5) + 3
    out = rope_tables((pos, None, None), head_dim).apply(x)
    assert torch.equal(out[:, 20:], x[:, 20:])
    assert not torch.allclose(out[:, :20], x[:, :20])


def test_tiled_layout_breaks_pair_norms_and_interleaved_keeps_them() -> None:
    """docs/reference.md R-vjepa2-1.4: the tiled layout gives pair members different angles (not a rotation);
    the interleaved layout (encoder.rope_interleave) is a true per-pair rotation."""
    torch.manual_seed(0)
    head_dim = 64
    x = torch.randn(1, 1, 64, head_dim)
    ids = torch.arange(64)
    pair_norm = lambda t: t[..., :60].unflatten(-1, (-1, 2)).norm(dim=-1)  # noqa: E731
    tiled = video_rope(ids, (1, 8, 8), head_dim).apply(x)
    interleaved = video_rope(ids, (1, 8, 8), head_dim, interleave=True).apply(x)
    assert torch.allclose(pair_norm(interleaved), pair_norm(x), atol=1e-5)
    assert (pair_norm(tiled) - pair_norm(x)).abs().max() > 1e-2
    assert not torch.allclose(tiled, interleaved)
