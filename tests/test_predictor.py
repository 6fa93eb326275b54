"""Mask-token predictor: shapes, target order, mask-token index quirk, square-grid switch (docs/reference.md
R-vjepa2-2, R-vjepa2-1.4)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.build import build_predictor, load_model_preset
from models.config import ModelConfig
from models.predictor import Predictor

N_TOKENS = 4 * 8 * 8  # tiny: 8 frames x 128 px


def _predictor(cfg: ModelConfig) -> Predictor:
    torch.manual_seed(0)
    pred = build_predictor(cfg).eval()
    with torch.no_grad():  # zero-initialised in training; distinct here so the index matters
        for token in pred.mask_tokens:
            token.normal_()
    return pred


@pytest.fixture(scope="module")
def tiny_cfg() -> ModelConfig:
    return load_model_preset("tiny")


def _masks(batch: int = 2, ctx: int = 60, tgt: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.stack([torch.randperm(N_TOKENS) for _ in range(batch)])
    return perm[:, :ctx].sort(dim=1).values, perm[:, ctx:ctx + tgt].sort(dim=1).values


def test_mask_tokens_start_at_zero(tiny_cfg: ModelConfig) -> None:
    pred = build_predictor(tiny_cfg)
    assert len(pred.mask_tokens) == 10
    assert all(torch.equal(t, torch.zeros(1, 1, 96)) for t in pred.mask_tokens)


def test_output_shape_and_width(tiny_cfg: ModelConfig) -> None:
    pred = _predictor(tiny_cfg)
    masks_x, masks_y = _masks()
    with torch.no_grad():
        out = pred(torch.randn(2, 60, 192), masks_x, masks_y)
    assert out.shape == (2, 40, 192)


def test_outputs_follow_the_order_of_masks_y(tiny_cfg: ModelConfig) -> None:
    """Sort, run, un-sort: permuting the target ids permutes the predictions the same way."""
    pred = _predictor(tiny_cfg)
    masks_x, masks_y = _masks()
    ctx = torch.randn(2, 60, 192)
    perm = torch.randperm(40)
    with torch.no_grad():
        ordered = pred(ctx, masks_x, masks_y)
        shuffled = pred(ctx, masks_x, masks_y[:, perm])
    assert torch.allclose(shuffled, ordered[:, perm], atol=1e-6)


def test_mask_index_picks_token_modulo_count(tiny_cfg: ModelConfig) -> None:
    pred = _predictor(tiny_cfg)
    masks_x, masks_y = _masks()
    ctx = torch.randn(2, 60, 192)
    with torch.no_grad():
        default = pred(ctx, masks_x, masks_y)
        assert torch.equal(default, pred(ctx, masks_x, masks_y, mask_index=1))
        assert torch.equal(default, pred(ctx, masks_x, masks_y, mask_index=11))
        assert not torch.allclose(default, pred(ctx, masks_x, masks_y, mask_index=0))


def test_square_grid_quirk_and_switch(tiny_cfg: ModelConfig) -> None:
    """Meta decodes predictor positions on the img_size/patch grid (8x8 here) even for a 6x10 input."""
    square = _predictor(tiny_cfg)
    real_cfg = dataclasses.replace(tiny_cfg, predictor=dataclasses.replace(tiny_cfg.predictor, square_grid=False))
    real = _predictor(real_cfg)
    assert torch.equal(square.state_dict()["predictor_proj.weight"], real.state_dict()["predictor_proj.weight"])
    ctx_ids = torch.arange(0, 240, 4).expand(1, -1)
    tgt_ids = torch.arange(1, 240, 6).expand(1, -1)
    ctx = torch.randn(1, ctx_ids.size(1), 192)
    with torch.no_grad():
        out_square = square(ctx, ctx_ids, tgt_ids, grid=(4, 6, 10))
        assert torch.equal(out_square, real(ctx, ctx_ids, tgt_ids, grid=(4, 8, 8)))
        assert not torch.allclose(out_square, real(ctx, ctx_ids, tgt_ids, grid=(4, 6, 10)))
    with pytest.raises(ValueError, match="square_grid"):
        real(ctx, ctx_ids, tgt_ids)
