"""The V-JEPA 2 video ViT encoder (docs/reference.md R-vjepa2-1.1, R-vjepa2-1.2, R-vjepa2-1.3, R-vjepa2-1.4,
R-vjepa2-1.5).

Conv3d tubelet embedding (2x16x16) -> optional token dropping (keep the given ids) -> pre-LN RoPE blocks ->
final LayerNorm. No CLS token, no absolute position embedding. Positions come from the real input grid,
so non-square inputs and resolutions other than the preset's work (Meta's ``handle_nonsquare_inputs``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.config import EncoderConfig
from models.modules import LN_EPS, init_weights, make_blocks, rescale_residuals
from models.rope import video_rope


class PatchEmbed3D(nn.Module):
    """Conv3d with kernel = stride = (tubelet, patch, patch); tokens t-major, then h, then w (docs/reference.md
    R-vjepa2-1.2)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int, tubelet_size: int) -> None:
        super().__init__()
        size = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=size, stride=size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def gather_tokens(x: Tensor, masks: Tensor | Sequence[Tensor]) -> Tensor:
    """Keep ``x[b, m[b, k]]`` for each mask ``[B, K]``; several masks are stacked along the batch (apply_masks)."""
    masks = [masks] if isinstance(masks, Tensor) else list(masks)
    return torch.cat([x.gather(1, m.unsqueeze(-1).expand(-1, -1, x.size(-1))) for m in masks], dim=0)


class VisionTransformer(nn.Module):
    """Video ViT; ``forward(x [B,C,T,H,W], masks=None, out_layers=None)``.

    ``masks`` hold the token ids to keep (``[B, K]`` or a list of them, concatenated along the batch);
    attention then only sees those tokens, each at its true (t, h, w) position (docs/reference.md R-vjepa2-1.5).
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed3D(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.tubelet_size)
        self.blocks = make_blocks(cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.mlp_hidden, cfg.qkv_bias)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=LN_EPS)
        self.init_weights()

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def init_weights(self) -> None:
        """docs/reference.md R-vjepa2-1.3 init; callable again after ``to_empty()`` for meta-device construction."""
        init_weights(self)
        rescale_residuals(self.blocks)

    def token_grid(self, x: Tensor) -> tuple[int, int, int]:
        """(T, H, W) in tubelets/patches; a remainder is cut off by the strided conv, as in Meta's code."""
        _, _, frames, height, width = x.shape
        return frames // self.cfg.tubelet_size, height // self.cfg.patch_size, width // self.cfg.patch_size

    def forward(self, x: Tensor, masks: Tensor | Sequence[Tensor] | None = None,
                out_layers: Sequence[int] | None = None) -> Tensor | list[Tensor]:
        """Tokens ``[B', K, D]`` after the final norm (B' = B x number of masks), or with ``out_layers``
        the listed layers' outputs, each through the final norm (multilevel probes, docs/reference.md R-vjepa2-1.1)."""
        if x.dim() != 5:
            raise ValueError(f"expected a video [B, C, T, H, W], got shape {tuple(x.shape)}")
        grid = self.token_grid(x)
        x = self.patch_embed(x)
        ids = None
        if masks is not None:
            x = gather_tokens(x, masks)
            ids = masks if isinstance(masks, Tensor) else torch.cat(list(masks), dim=0)
        rope = video_rope(ids, grid, self.cfg.head_dim, self.cfg.rope_interleave, device=x.device)
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x, rope)
            if out_layers is not None and i in out_layers:
                outs.append(self.norm(x))
        return outs if out_layers is not None else self.norm(x)
