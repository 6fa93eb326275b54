"""V-JEPA 2-AC predictor (docs/reference.md R-vjepa2-6.1, R-vjepa2-6.2): causality, token layout and RoPE against a
literal re-statement
of Meta's ACRoPEAttention (HF's rotate function as the rotation oracle), frame encoding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.models.vjepa2.modeling_vjepa2 import rotate_queries_or_keys

from models.ac_predictor import ACPredictor, ac_rope, block_causal_mask, encode_frames
from models.build import build_encoder, build_predictor, load_model_preset
from models.modules import Attention
from models.rope import axis_dim, decode_positions

TOKENS_PER_FRAME = 64  # tiny: 128 px / 16


@pytest.fixture(scope="module")
def ac() -> ACPredictor:
    torch.manual_seed(0)
    return build_predictor(load_model_preset("tiny-ac")).eval()


def _inputs(steps: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(2, steps * TOKENS_PER_FRAME, 192, generator=gen),
            torch.randn(2, steps, 7, generator=gen), torch.randn(2, steps, 7, generator=gen))


def test_output_shape(ac: ACPredictor) -> None:
    x, actions, states = _inputs()
    with torch.no_grad():
        assert ac(x, actions, states).shape == (2, 4 * TOKENS_PER_FRAME, 192)
    with pytest.raises(ValueError, match="actions"):
        ac(x, actions[:, :2], states)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_changing_step_k_and_later_leaves_earlier_outputs_bit_identical(ac: ACPredictor, k: int) -> None:
    x, actions, states = _inputs()
    x2, actions2, states2 = x.clone(), actions.clone(), states.clone()
    x2[:, k * TOKENS_PER_FRAME:] += 1.0
    actions2[:, k:] = torch.randn_like(actions2[:, k:])
    states2[:, k:] -= 0.5
    with torch.no_grad():
        before, after = ac(x, actions, states), ac(x2, actions2, states2)
    cut = k * TOKENS_PER_FRAME
    assert torch.equal(before[:, :cut], after[:, :cut])
    assert not torch.allclose(before[:, cut:], after[:, cut:])


def test_block_causal_mask_structure() -> None:
    mask = block_causal_mask(3, 2)
    want = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0],
                         [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, want)


def _meta_style_attention(attn: Attention, x: torch.Tensor, steps: int, side: int, cond: int) -> torch.Tensor:
    """Meta's ACRoPEAttention, restated literally: cond tokens split out and rotated on the t chunk only
    (pos = arange(T)), frame tokens rotated t/h/w chunk by chunk, merged back per step, block-causal SDPA."""
    batch, _, width = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    dim = axis_dim(head_dim)
    per_frame = side * side
    x = x.view(batch, steps, cond + per_frame, width)

    def qkv(tokens: torch.Tensor) -> torch.Tensor:
        return attn.qkv(tokens).unflatten(-1, (3, heads, head_dim)).permute(2, 0, 3, 1, 4)

    t_pos = torch.arange(steps)
    cond_qkv = []
    for i in range(cond):
        q, k, v = qkv(x[:, :, i])  # [B, heads, T, hd]
        q = torch.cat([rotate_queries_or_keys(q[..., :dim], pos=t_pos), q[..., dim:]], dim=-1)
        k = torch.cat([rotate_queries_or_keys(k[..., :dim], pos=t_pos), k[..., dim:]], dim=-1)
        cond_qkv.append((q, k, v))
    q, k, v = qkv(x[:, :, cond:].flatten(1, 2))
    pos = decode_positions(torch.arange(steps * per_frame), (side, side))

    def rotate(t: torch.Tensor) -> torch.Tensor:
        parts = [rotate_queries_or_keys(t[..., i * dim:(i + 1) * dim], pos=p) for i, p in enumerate(pos)]
        return torch.cat([*parts, t[..., 3 * dim:]], dim=-1)

    q, k = rotate(q), rotate(k)

    def merge(frames: torch.Tensor, j: int) -> torch.Tensor:
        frames = frames.view(batch, heads, steps, per_frame, head_dim)
        conds = torch.stack([c[j] for c in cond_qkv], dim=3)  # [B, heads, T, cond, hd]
        return torch.cat([conds, frames], dim=3).flatten(2, 3)

    mask = block_causal_mask(steps, cond + per_frame)
    out = F.scaled_dot_product_attention(merge(q, 0), merge(k, 1), merge(v, 2), attn_mask=mask)
    return attn.proj(out.transpose(1, 2).reshape(batch, -1, width))


def test_token_layout_and_rope_match_meta_ac_attention(ac: ACPredictor) -> None:
    steps, cond = 3, 2
    x = torch.randn(2, steps * (cond + TOKENS_PER_FRAME), 96)
    attn = ac.predictor_blocks[0].attn
    rope = ac_rope(steps, cond, (8, 8), attn.head_dim)
    with torch.no_grad():
        ours = attn(x, rope, block_causal_mask(steps, cond + TOKENS_PER_FRAME))
        theirs = _meta_style_attention(attn, x, steps, 8, cond)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_encode_frames_encodes_each_duplicated_frame_and_layer_norms() -> None:
    torch.manual_seed(0)
    encoder = build_encoder(load_model_preset("tiny").encoder).eval()
    clip = torch.randn(2, 3, 3, 128, 128)
    with torch.no_grad():
        z = encode_frames(encoder, clip)
        assert z.shape == (2, 3 * TOKENS_PER_FRAME, 192)
        frame1 = encoder(clip[1:2, :, 1:2].repeat(1, 1, 2, 1, 1))
        assert torch.allclose(z[1, TOKENS_PER_FRAME:2 * TOKENS_PER_FRAME], F.layer_norm(frame1[0], (192,)),
                              atol=1e-5)
    assert torch.allclose(z.mean(-1), torch.zeros(2, 3 * TOKENS_PER_FRAME), atol=1e-5)
