"""Attentive probe on frozen encoder tokens (docs/reference.md R-vjepa2-8.1, R-peers-1.7).

``depth - 1`` self-attention blocks over the tokens (no RoPE), then one cross-attention block where
``num_queries`` learned queries attend to LN(tokens). Key names follow Meta's ``attentive_pooler.py``
(``pooler.query_tokens``, ``pooler.blocks.*``, ``pooler.cross_attention_block.xattn.{q,kv}``, ``linear``) so
released probe weights load as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.modules import INIT_STD, MLP, init_weights, make_blocks, rescale_residuals

# docs/reference.md R-vjepa2-8.1 / R-peers-1.7: Meta's pooler uses nn.LayerNorm's default eps, unlike the encoder's
# 1e-6.
POOLER_LN_EPS = 1e-5


class CrossAttention(nn.Module):
    """Queries attend to tokens: separate ``q`` and fused ``kv`` projections and no output projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)

    def forward(self, queries: Tensor, tokens: Tensor) -> Tensor:
        batch, num_q, dim = queries.shape
        head_dim = dim // self.num_heads
        q = self.q(queries).view(batch, num_q, self.num_heads, head_dim).transpose(1, 2)
        k, v = self.kv(tokens).view(batch, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(batch, num_q, dim)


class CrossAttentionBlock(nn.Module):
    """``q = q + xattn(q, LN1(x)); q = q + mlp(LN2(q))`` (the queries themselves are not normalised)."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=POOLER_LN_EPS)
        self.xattn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=POOLER_LN_EPS)
        self.mlp = MLP(dim, mlp_hidden)

    def forward(self, queries: Tensor, tokens: Tensor) -> Tensor:
        queries = queries + self.xattn(queries, self.norm1(tokens))
        return queries + self.mlp(self.norm2(queries))


class AttentivePooler(nn.Module):
    """``[B, N, D]`` tokens -> ``[B, num_queries, D]``; Meta's classifier uses depth 4, EK100 3 queries."""

    def __init__(self, embed_dim: int, num_heads: int, depth: int = 4, num_queries: int = 1,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = round(embed_dim * mlp_ratio)
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, embed_dim))
        self.blocks = make_blocks(depth - 1, embed_dim, num_heads, hidden, eps=POOLER_LN_EPS)
        self.cross_attention_block = CrossAttentionBlock(embed_dim, num_heads, hidden)
        self.init_weights()

    def init_weights(self) -> None:
        """docs/reference.md R-vjepa2-8.1: block l's proj/fc2 / sqrt(2l); the cross block's fc2 / sqrt(2 * last block
        index)."""
        init_weights(self)
        nn.init.trunc_normal_(self.query_tokens, std=INIT_STD, a=-2.0, b=2.0)
        rescale_residuals(self.blocks)
        with torch.no_grad():
            self.cross_attention_block.mlp.fc2.weight.div_(math.sqrt(2.0 * max(len(self.blocks), 1)))

    def forward(self, tokens: Tensor) -> Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        queries = self.query_tokens.expand(tokens.size(0), -1, -1)
        return self.cross_attention_block(queries, tokens)


class AttentiveClassifier(nn.Module):
    """Pooler (one query) + ``linear`` head: ``[B, N, D]`` -> logits ``[B, num_classes]``."""

    def __init__(self, embed_dim: int, num_heads: int, num_classes: int, depth: int = 4,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.pooler = AttentivePooler(embed_dim, num_heads, depth, num_queries=1, mlp_ratio=mlp_ratio)
        self.linear = nn.Linear(embed_dim, num_classes)
        init_weights(self.linear)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.linear(self.pooler(tokens).squeeze(1))


class ProbeBank(nn.Module):
    """``count`` attentive classifiers over the same frozen tokens: ``[B, N, D]`` -> logits
    ``[count, B, num_classes]``. Meta's eval trains one probe per (lr, wd) pair of a grid (20) at once, so
    one encoder forward per batch serves them all (docs/reference.md R-vjepa2-8.2). The heads are
    independent (own init, own optimizer group); ``classifiers`` is the list Meta's probe files store."""

    def __init__(self, count: int, embed_dim: int, num_heads: int, num_classes: int, depth: int = 4,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if count < 1:
            raise ValueError(f"a probe bank needs at least one head, got {count}")
        self.classifiers = nn.ModuleList(
            AttentiveClassifier(embed_dim, num_heads, num_classes, depth, mlp_ratio) for _ in range(count))

    def forward(self, tokens: Tensor) -> Tensor:
        return torch.stack([head(tokens) for head in self.classifiers])
