"""3D rotary position embedding of V-JEPA 2 (docs/reference.md R-vjepa2-1.4, R-peers-1.5).

Each attention head splits its ``head_dim`` into ``[t | h | w | rest]`` chunks of ``axis_dim(head_dim)``
dims each; the rest is not rotated. Positions are integer token coordinates decoded from flat token ids
(t-major, then row, then column), so masked-out tokens leave gaps and every kept token keeps its true place.

Meta recomputes the angles inside every attention layer and rotates q and k chunk by chunk. Here the
cos/sin tables for the whole head dim are built once per forward (:func:`rope_tables`) and shared by all
blocks; an unrotated dim simply gets angle 0 (cos 1, sin 0), which is bit-exact with leaving it alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

THETA = 10000.0


def axis_dim(head_dim: int) -> int:
    """Dims rotated per axis: ``2*((head_dim//3)//2)``, e.g. 20 for head dim 64, 26 for 80, 10 for 32."""
    return 2 * ((head_dim // 3) // 2)


def decode_positions(ids: Tensor, grid_hw: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """(t, h, w) of flat token ids on a grid of ``H x W`` tokens per frame (t-major, raster within a frame)."""
    height, width = grid_hw
    per_frame = height * width
    t = ids // per_frame
    in_frame = ids - t * per_frame
    h = in_frame // width
    return t, h, in_frame - h * width


class RopeTables(NamedTuple):
    """cos and sign-folded sin, ``[N, head_dim]`` or ``[B, 1, N, head_dim]`` (broadcast over heads)."""

    cos: Tensor
    sin: Tensor

    def apply(self, x: Tensor) -> Tensor:
        """Rotate ``x [..., N, head_dim]``: ``x*cos + y*sin`` with ``y[2i] = -x[2i+1], y[2i+1] = x[2i]``.

        The ``-`` of the partner is folded into ``sin`` (exact: negation commutes with rounding).
        """
        swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
        return x * self.cos.to(x.dtype) + swapped * self.sin.to(x.dtype)


def _axis_angles(pos: Tensor, dim: int, interleave: bool) -> Tensor:
    """Angles ``[..., dim]`` of one axis chunk; ``omega_k = theta^(-k/(dim/2))``, computed in fp32."""
    omega = torch.arange(dim // 2, dtype=torch.float32, device=pos.device) / (dim / 2.0)
    omega = 1.0 / THETA**omega
    freq = pos.to(torch.float32).unsqueeze(-1) * omega
    if interleave:  # the corrected layout: both members of a pair share one frequency
        return freq.repeat_interleave(2, dim=-1)
    # docs/reference.md R-vjepa2-1.4 quirk (PR #15): Meta tiles [f_0..f_{a/2-1}, f_0..f_{a/2-1}] across adjacent pairs.
    return torch.cat([freq, freq], dim=-1)


def rope_tables(positions: Sequence[Tensor | None], head_dim: int, interleave: bool = False) -> RopeTables:
    """Tables for per-axis positions ``(t, h, w)``, each ``[N]`` or ``[B, N]`` (or None: axis not rotated).

    The axes fill consecutive ``axis_dim(head_dim)`` chunks from dim 0; the remaining dims stay unrotated.
    """
    dim = axis_dim(head_dim)
    shapes = [p.shape for p in positions if p is not None]
    if not shapes:
        raise ValueError("rope_tables needs at least one axis with positions")
    shape = torch.broadcast_shapes(*shapes)
    device = next(p for p in positions if p is not None).device
    chunks = []
    for pos in positions:
        if pos is None:
            chunks.append(torch.zeros(*shape, dim, device=device))
        else:
            chunks.append(_axis_angles(pos, dim, interleave).expand(*shape, dim))
    rest = head_dim - dim * len(positions)
    if rest < 0:
        raise ValueError(f"head_dim {head_dim} too small for {len(positions)} rotated axes")
    chunks.append(torch.zeros(*shape, rest, device=device))
    angles = torch.cat(chunks, dim=-1)
    sign = torch.tensor([-1.0, 1.0], device=device).repeat(head_dim // 2)
    cos, sin = angles.cos(), angles.sin() * sign
    if angles.dim() == 3:  # per-sample positions [B, N, hd] -> [B, 1, N, hd] to broadcast over heads
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return RopeTables(cos, sin)


def video_rope(ids: Tensor | None, grid: tuple[int, int, int], head_dim: int,
               interleave: bool = False, device: torch.device | None = None) -> RopeTables:
    """Tables for tokens of a ``(T, H, W)`` token grid: all of them (``ids=None``) or the ids ``[B, K]``."""
    if ids is None:
        ids = torch.arange(grid[0] * grid[1] * grid[2], device=device)
    return rope_tables(decode_positions(ids, grid[1:]), head_dim, interleave)
