"""Encoder: shapes, token dropping, out_layers, init (docs/reference.md R-vjepa2-1.3), meta-device parameter counts."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from models.build import build_encoder, count_params, load_model_preset
from models.encoder import VisionTransformer


@pytest.fixture(scope="module")
def tiny() -> VisionTransformer:
    torch.manual_seed(0)
    return build_encoder(load_model_preset("tiny").encoder).eval()


def test_full_clip_and_masked_shapes(tiny: VisionTransformer) -> None:
    x = torch.randn(2, 3, 8, 128, 128)
    with torch.no_grad():
        assert tiny(x).shape == (2, 4 * 8 * 8, 192)
        keep = torch.tensor([[0, 5, 9], [1, 2, 200]])
        assert tiny(x, masks=keep).shape == (2, 3, 192)
        assert tiny(x, masks=[keep, keep.flip(0)]).shape == (4, 3, 192)


def test_keeping_every_token_equals_no_mask(tiny: VisionTransformer) -> None:
    x = torch.randn(2, 3, 8, 128, 128)
    all_ids = torch.arange(256).expand(2, -1)
    with torch.no_grad():
        assert torch.equal(tiny(x, masks=all_ids), tiny(x))


def test_mask_list_concatenates_along_batch(tiny: VisionTransformer) -> None:
    x = torch.randn(2, 3, 8, 128, 128)
    a = torch.stack([torch.randperm(256)[:50].sort().values for _ in range(2)])
    b = torch.stack([torch.randperm(256)[:50].sort().values for _ in range(2)])
    with torch.no_grad():
        both = tiny(x, masks=[a, b])
        assert torch.allclose(both[:2], tiny(x, masks=a), atol=1e-6)
        assert torch.allclose(both[2:], tiny(x, masks=b), atol=1e-6)


def test_non_square_and_other_resolutions_use_the_real_grid(tiny: VisionTransformer) -> None:
    with torch.no_grad():
        assert tiny(torch.randn(1, 3, 8, 96, 160)).shape == (1, 4 * 6 * 10, 192)
        assert tiny(torch.randn(1, 3, 4, 256, 256)).shape == (1, 2 * 16 * 16, 192)
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        tiny(torch.randn(3, 128, 128))


def test_out_layers_are_normed_intermediate_outputs(tiny: VisionTransformer) -> None:
    x = torch.randn(1, 3, 8, 128, 128)
    with torch.no_grad():
        outs = tiny(x, out_layers=[1, 3])
        assert len(outs) == 2
        assert torch.equal(outs[1], tiny(x))  # layer 3 is the last of 4
        assert not torch.allclose(outs[0], outs[1])
        assert torch.allclose(outs[0].mean(-1), torch.zeros(1), atol=1e-5)  # went through the final LN


def test_init_follows_reference() -> None:
    """trunc_normal 0.02, zero biases, LN 1/0, and proj/fc2 of block l divided by sqrt(2l) (docs/reference.md
    R-vjepa2-1.3)."""
    torch.manual_seed(0)
    enc = build_encoder(dataclasses.replace(load_model_preset("tiny").encoder, embed_dim=384, num_heads=12))
    assert abs(enc.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.0005
    assert abs(enc.patch_embed.proj.weight.std().item() - 0.02) < 0.0005
    for layer, block in enumerate(enc.blocks, start=1):
        want = 0.02 / math.sqrt(2 * layer)
        assert abs(block.attn.proj.weight.std().item() / want - 1) < 0.03
        assert abs(block.mlp.fc2.weight.std().item() / want - 1) < 0.03
        assert torch.equal(block.attn.qkv.bias, torch.zeros_like(block.attn.qkv.bias))
        assert torch.equal(block.norm1.weight, torch.ones_like(block.norm1.weight))
        assert block.norm1.eps == 1e-6


@pytest.mark.parametrize(("preset", "encoder_m", "predictor_m"), [
    ("vitl", (300, 308), (21, 23)), ("vith", (625, 635), (21, 23)), ("vitg", (1005, 1020), (21, 23)),
    ("vitg-ac", (1005, 1020), (295, 310)),
])
def test_meta_device_parameter_counts(preset: str, encoder_m: tuple[int, int],
                                      predictor_m: tuple[int, int]) -> None:
    """ViT-L ~304M, ViT-H ~630M, ViT-g ~1.01B, predictor ~22M, AC predictor ~300M (docs/reference.md R-vjepa2-1.1,
    R-vjepa2-2, R-vjepa2-6.1)."""
    counts = count_params(load_model_preset(preset))
    assert encoder_m[0] * 1e6 <= counts["encoder"] <= encoder_m[1] * 1e6
    assert predictor_m[0] * 1e6 <= counts["predictor"] <= predictor_m[1] * 1e6


def test_meta_device_build_then_materialise() -> None:
    """The FSDP2 pattern: build on meta, to_empty(), init_weights()."""
    cfg = load_model_preset("tiny").encoder
    with torch.device("meta"):
        enc = build_encoder(cfg)
    assert enc.blocks[0].attn.qkv.weight.is_meta
    enc.to_empty(device="cpu")
    enc.init_weights()
    with torch.no_grad():
        assert torch.isfinite(enc(torch.randn(1, 3, 2, 32, 32))).all()
