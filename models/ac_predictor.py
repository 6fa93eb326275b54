"""The V-JEPA 2-AC action-conditioned predictor and its frame encoding (docs/reference.md R-vjepa2-6.1, R-vjepa2-6.2).

Per time step t the sequence holds ``[a_t, s_t, (e_t,) patch tokens of frame t]``; attention is
block-causal over steps (bidirectional within a step). Frame tokens get the full 3D RoPE, the action/state
tokens only the temporal chunk (the first ``axis_dim`` dims of each head, pos = t). The output at step t
predicts the frame at t+1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import ACPredictorConfig, EncoderConfig
from models.modules import LN_EPS, init_weights, make_blocks, rescale_residuals
from models.rope import RopeTables, rope_tables


def block_causal_mask(steps: int, tokens_per_step: int, device: torch.device | None = None) -> Tensor:
    """Boolean ``[N, N]`` (True = may attend): token i of step t1 sees every token of steps t2 <= t1."""
    step = torch.arange(steps, device=device).repeat_interleave(tokens_per_step)
    return step.unsqueeze(0) <= step.unsqueeze(1)


def ac_rope(steps: int, cond_tokens: int, grid_hw: tuple[int, int], head_dim: int,
            interleave: bool = False, device: torch.device | None = None) -> RopeTables:
    """Tables for the AC token layout: per step ``cond_tokens`` temporal-only tokens, then H*W frame tokens.

    docs/reference.md R-vjepa2-6.1: the cond tokens rotate only the t chunk (pos = t). Giving them h = w = 0 does
    exactly that: angle 0 is cos 1 / sin 0, bit-identical to not rotating. Meta also scales the frame tokens' h, w
    by grid_size/H_p (docs/reference.md R-vjepa2-1.4); the AC grid is always the predictor's own grid, so that factor
    is 1.
    """
    _, width = grid_hw
    per_step = cond_tokens + grid_hw[0] * width
    index = torch.arange(steps * per_step, device=device)
    patch = (index % per_step - cond_tokens).clamp(min=0)
    return rope_tables((index // per_step, patch // width, patch % width), head_dim, interleave)


class ACPredictor(nn.Module):
    """``forward(x [B, T*H*W, D_enc], actions [B,T,A], states [B,T,S], extrinsics=None) -> [B, T*H*W, D_enc]``."""

    def __init__(self, cfg: ACPredictorConfig, encoder: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder_cfg = encoder
        side = encoder.img_size // encoder.patch_size
        self.grid_hw = (side, side)
        self.predictor_embed = nn.Linear(encoder.embed_dim, cfg.embed_dim)
        self.action_encoder = nn.Linear(cfg.action_dim, cfg.embed_dim)
        self.state_encoder = nn.Linear(cfg.state_dim, cfg.embed_dim)
        self.extrinsics_encoder = nn.Linear(cfg.extrinsics_dim, cfg.embed_dim)
        self.predictor_blocks = make_blocks(cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.mlp_hidden)
        self.predictor_norm = nn.LayerNorm(cfg.embed_dim, eps=LN_EPS)
        self.predictor_proj = nn.Linear(cfg.embed_dim, encoder.embed_dim)
        self.init_weights()

    @property
    def tokens_per_frame(self) -> int:
        return self.grid_hw[0] * self.grid_hw[1]

    def init_weights(self) -> None:
        """trunc_normal 0.02 and the residual rescale (docs/reference.md R-vjepa2-6.1); no mask tokens."""
        init_weights(self)
        rescale_residuals(self.predictor_blocks)

    def forward(self, x: Tensor, actions: Tensor, states: Tensor, extrinsics: Tensor | None = None) -> Tensor:
        batch, tokens, _ = x.shape
        per_frame = self.tokens_per_frame
        if tokens % per_frame:
            raise ValueError(f"{tokens} frame tokens is not a multiple of {per_frame} tokens per frame")
        steps = tokens // per_frame
        cond = [self.action_encoder(actions), self.state_encoder(states)]
        if self.cfg.use_extrinsics:
            if extrinsics is None:
                raise ValueError("ac_predictor.use_extrinsics is set: pass extrinsics [B, T, E]")
            cond.append(self.extrinsics_encoder(extrinsics))
        for c, name in zip(cond, ("actions", "states", "extrinsics")):
            if c.shape[:2] != (batch, steps):
                raise ValueError(f"{name}: expected [B={batch}, T={steps}, ...], got {tuple(c.shape)}")
        x = self.predictor_embed(x).view(batch, steps, per_frame, -1)
        x = torch.cat([torch.stack(cond, dim=2).to(x.dtype), x], dim=2).flatten(1, 2)
        rope = ac_rope(steps, len(cond), self.grid_hw, self.cfg.head_dim,
                       self.encoder_cfg.rope_interleave, device=x.device)
        mask = block_causal_mask(steps, len(cond) + per_frame, device=x.device)
        for block in self.predictor_blocks:
            x = block(x, rope, mask)
        x = x.view(batch, steps, len(cond) + per_frame, -1)[:, :, len(cond):].flatten(1, 2)
        return self.predictor_proj(self.predictor_norm(x))


def encode_frames(encoder: Callable[[Tensor], Tensor], clip: Tensor, repeats: int | None = None,
                  normalize: bool = True) -> Tensor:
    """docs/reference.md R-vjepa2-6.2: encode each frame of ``[B, C, T, H, W]`` alone, duplicated ``repeats``
    times to fill the tubelet (default: a V-JEPA 2 encoder's ``cfg.tubelet_size``), giving ``[B, T*n, D]``
    for ``n`` tokens per frame; ``normalize`` applies the parameter-free layer norm (``normalize_reps``).
    ``encoder`` is any clip-to-tokens callable, so every frozen encoder kind is encoded the same way."""
    batch, chans, frames, height, width = clip.shape
    repeats = encoder.cfg.tubelet_size if repeats is None else repeats
    single = clip.permute(0, 2, 1, 3, 4).reshape(batch * frames, chans, 1, height, width)
    tokens = encoder(single.repeat(1, 1, repeats, 1, 1))
    tokens = tokens.reshape(batch, frames * tokens.size(1), tokens.size(2))
    return F.layer_norm(tokens, (tokens.size(-1),)) if normalize else tokens
