"""The V-JEPA 2 mask-token predictor (docs/reference.md R-vjepa2-2).

Context tokens (encoder outputs at ``masks_x``) are projected to the predictor width, a learned mask token is
placed at every target id (``masks_y``), the joint sequence is sorted by token id so the blocks see a
raster-ordered, partially filled 3D grid, and the target tokens are projected back to the encoder width.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.config import EncoderConfig, PredictorConfig
from models.modules import LN_EPS, init_weights, make_blocks, rescale_residuals
from models.rope import video_rope


class Predictor(nn.Module):
    """``forward(ctx [B,Kc,D_enc], masks_x [B,Kc], masks_y [B,Kt], mask_index=1, grid=None) -> [B,Kt,D_enc]``."""

    def __init__(self, cfg: PredictorConfig, encoder: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder_cfg = encoder
        self.predictor_embed = nn.Linear(encoder.embed_dim, cfg.embed_dim)
        # Meta's key layout: mask_tokens.{i}, each [1, 1, width] (released checkpoints hold 10).
        self.mask_tokens = nn.ParameterList(
            nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) for _ in range(cfg.num_mask_tokens))
        self.predictor_blocks = make_blocks(cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.mlp_hidden)
        self.predictor_norm = nn.LayerNorm(cfg.embed_dim, eps=LN_EPS)
        self.predictor_proj = nn.Linear(cfg.embed_dim, encoder.embed_dim)
        self.init_weights()

    def init_weights(self) -> None:
        """trunc_normal 0.02, residual rescale, mask tokens zero (``zero_init_mask_tokens``, docs/reference.md
        R-vjepa2-2)."""
        init_weights(self)
        rescale_residuals(self.predictor_blocks)
        with torch.no_grad():
            for token in self.mask_tokens:
                token.zero_()

    def _grid_hw(self, grid: tuple[int, int, int] | None) -> tuple[int, int]:
        if self.cfg.square_grid:
            # docs/reference.md R-vjepa2-1.4 quirk: Meta decodes predictor positions on a square img_size/patch grid,
            # whatever the input's real shape; predictor.square_grid=False uses ``grid`` instead.
            side = self.encoder_cfg.img_size // self.encoder_cfg.patch_size
            return side, side
        if grid is None:
            raise ValueError("predictor.square_grid is False: pass the input's token grid (T, H, W)")
        return grid[1], grid[2]

    def forward(self, ctx: Tensor, masks_x: Tensor, masks_y: Tensor, mask_index: int = 1,
                grid: tuple[int, int, int] | None = None) -> Tensor:
        """Predictions for the ``masks_y`` tokens, in the order of ``masks_y``.

        ``mask_index`` picks ``mask_tokens[mask_index % num_mask_tokens]``. docs/reference.md R-vjepa2-2 quirk: Meta's
        pretraining passes the frames-per-clip group index (0 with one group), a direct call defaults to 1.
        """
        batch, num_ctx, _ = ctx.shape
        x = self.predictor_embed(ctx)
        token = self.mask_tokens[mask_index % len(self.mask_tokens)]
        targets = token.to(x.dtype).expand(batch, masks_y.size(1), -1)
        x = torch.cat([x, targets], dim=1)
        ids = torch.cat([masks_x, masks_y], dim=1)
        order = ids.argsort(dim=1)
        x = x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.size(-1)))
        ids = ids.gather(1, order)
        hw = self._grid_hw(grid)
        rope = video_rope(ids, (0, *hw), self.cfg.head_dim, self.encoder_cfg.rope_interleave)
        for block in self.predictor_blocks:
            x = block(x, rope)
        # un-sort and keep the targets (the last Kt entries of the unsorted sequence), then norm and project
        target_slots = order.argsort(dim=1)[:, num_ctx:]
        x = x.gather(1, target_slots.unsqueeze(-1).expand(-1, -1, x.size(-1)))
        return self.predictor_proj(self.predictor_norm(x))
