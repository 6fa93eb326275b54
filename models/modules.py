"""Transformer building blocks shared by the encoder, both predictors and the probe (docs/reference.md R-vjepa2-1.1,
R-vjepa2-1.3).

Parameter names follow Meta's checkpoints (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``,
``mlp.fc2``), so released state dicts load without renaming. Attention runs through
``F.scaled_dot_product_attention`` with its default ``1/sqrt(head_dim)`` scale; dropout and drop-path are 0
in every V-JEPA 2 config and are therefore not implemented.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.rope import RopeTables

INIT_STD = 0.02
LN_EPS = 1e-6  # docs/reference.md R-vjepa2-1.1: every LayerNorm of the encoder and predictors


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection and optional RoPE on q and k."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: RopeTables | None = None, attn_mask: Tensor | None = None) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is None:
            q, k = qkv[0], qkv[1]
        else:  # docs/reference.md R-vjepa2-1.4: RoPE on q and k only, v untouched
            q, k = rope.apply(qkv[:2]).unbind(0)
        out = F.scaled_dot_product_attention(q, k, qkv[2], attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class MLP(nn.Module):
    """fc1 -> exact (erf) GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block: ``x += attn(LN1(x)); x += mlp(LN2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, qkv_bias: bool = True,
                 eps: float = LN_EPS) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_hidden)

    def forward(self, x: Tensor, rope: RopeTables | None = None, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), rope, attn_mask)
        return x + self.mlp(self.norm2(x))


def make_blocks(depth: int, dim: int, num_heads: int, mlp_hidden: int, qkv_bias: bool = True,
                eps: float = LN_EPS) -> nn.ModuleList:
    return nn.ModuleList(Block(dim, num_heads, mlp_hidden, qkv_bias, eps) for _ in range(depth))


@torch.no_grad()
def init_weights(module: nn.Module, std: float = INIT_STD) -> None:
    """docs/reference.md R-vjepa2-1.3: Linear/Conv weights trunc_normal(std, cut at absolute +-2), biases 0, LayerNorm
    1/0."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            nn.init.trunc_normal_(m.weight, std=std, a=-2.0, b=2.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def rescale_residuals(blocks: Iterable[Block]) -> None:
    """docs/reference.md R-vjepa2-1.3: divide block l's ``attn.proj`` and ``mlp.fc2`` weights by sqrt(2*l), l
    1-based."""
    for layer, block in enumerate(blocks, start=1):
        block.attn.proj.weight.div_(math.sqrt(2.0 * layer))
        block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))
