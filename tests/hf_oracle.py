"""Helpers shared by the transformers parity tests (CPU slices and the full-depth GPU runs)."""

from __future__ import annotations

import dataclasses

import torch
from transformers import VJEPA2Config, VJEPA2Model

from models.build import build_model
from models.config import ModelConfig
from models.encoder import VisionTransformer
from models.hf import hf_config, meta_to_hf
from models.predictor import Predictor


def random_model(cfg: ModelConfig, seed: int = 0) -> tuple[VisionTransformer, Predictor]:
    """Our model with random weights everywhere (non-zero biases, LN affine, distinct mask tokens)."""
    torch.manual_seed(seed)
    encoder, predictor = build_model(cfg)
    with torch.no_grad():
        for module in (encoder, predictor):
            for name, param in module.named_parameters():
                if param.dim() == 1 or "mask_tokens" in name:
                    param.add_(0.1 * torch.randn_like(param))
    return encoder.eval(), predictor.eval()


def hf_model(cfg: ModelConfig, encoder: VisionTransformer, predictor: Predictor, crop: int) -> VJEPA2Model:
    """transformers' model holding our weights (through models/hf.py's mapping); crop_size = the input
    resolution, since HF decodes positions on that square grid (docs/reference.md R-peers-1.5)."""
    config = hf_config(dataclasses.replace(cfg, encoder=dataclasses.replace(cfg.encoder, img_size=crop)))
    for key in ("model_type", "architectures", "vjepa2_ray"):
        config.pop(key)
    with torch.device("meta"):
        model = VJEPA2Model(VJEPA2Config(**config))
    model.load_state_dict(meta_to_hf(encoder.state_dict(), predictor.state_dict()), strict=True, assign=True)
    return model.eval()


def disjoint_masks(batch: int, tokens: int, ctx: int, tgt: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample random context ids (sorted) and disjoint target ids (random order)."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.stack([torch.randperm(tokens, generator=gen) for _ in range(batch)])
    return perm[:, :ctx].sort(dim=1).values, perm[:, ctx:ctx + tgt]


def gather(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return x.gather(1, ids.unsqueeze(-1).expand(-1, -1, x.size(-1)))


@torch.no_grad()
def max_diffs(cfg: ModelConfig, encoder: VisionTransformer, predictor: Predictor, frames: int, res: int,
              device: str = "cpu", batch: int = 2) -> tuple[float, float]:
    """Max |ours - HF| of the full-clip encoder output and of the predictor (mask token 1) on a random clip."""
    hf = hf_model(cfg, encoder, predictor, crop=res).to(device)
    at_res = Predictor(cfg.predictor, dataclasses.replace(cfg.encoder, img_size=res))
    at_res.load_state_dict(predictor.state_dict())
    encoder, at_res = encoder.to(device), at_res.eval().to(device)
    x = torch.randn(batch, 3, frames, res, res, generator=torch.Generator().manual_seed(res)).to(device)
    tokens = frames // cfg.encoder.tubelet_size * (res // cfg.encoder.patch_size) ** 2
    ctx_ids, tgt_ids = (m.to(device) for m in disjoint_masks(batch, tokens, tokens // 3, tokens // 4, seed=res))
    out = hf(x.permute(0, 2, 1, 3, 4), context_mask=[ctx_ids], target_mask=[tgt_ids])
    enc = encoder(x)
    # our predictor decodes positions on its img_size grid (the square-grid quirk), like HF's crop_size
    pred = at_res(gather(enc, ctx_ids), ctx_ids, tgt_ids, mask_index=1)
    return ((enc - out.last_hidden_state).abs().max().item(),
            (pred - out.predictor_output.last_hidden_state).abs().max().item())
