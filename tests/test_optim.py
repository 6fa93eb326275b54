"""AdamW parameter groups (docs/reference.md R-vjepa2-4.2) and the global-batch plan with its LR rule."""

from __future__ import annotations

import pytest
import torch

from configs import preset_path
from core.config import load_config
from train.config import OptimConfig, PretrainConfig, TrainerConfig
from train.optim import build_optimizer, param_groups, plan_batch, set_hyperparams
from train.step import build_jepa


@pytest.fixture(scope="module")
def jepa():
    cfg = load_config(PretrainConfig, preset_path("pretrain", "tiny"))
    return build_jepa(cfg.model)


def _names(module: torch.nn.Module, params: list[torch.nn.Parameter]) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in module.named_parameters() if id(p) in ids}


def test_four_groups_exempt_biases_and_1d_but_not_mask_tokens(jepa):
    groups = {g["name"]: g for g in param_groups({"encoder": jepa.encoder, "predictor": jepa.predictor})}
    assert list(groups) == ["encoder.decay", "encoder.no_decay", "predictor.decay", "predictor.no_decay"]
    enc_exempt = _names(jepa.encoder, groups["encoder.no_decay"]["params"])
    assert "blocks.0.attn.qkv.bias" in enc_exempt and "norm.weight" in enc_exempt  # bias; LayerNorm is 1-D
    assert all(n.endswith(".bias") or jepa.encoder.get_parameter(n).ndim == 1 for n in enc_exempt)
    pred_decay = _names(jepa.predictor, groups["predictor.decay"]["params"])
    assert "mask_tokens.0" in pred_decay  # [1, 1, D]: 3-D, so Meta's rule decays it
    assert "predictor_embed.weight" in pred_decay
    n_trainable = sum(1 for p in [*jepa.encoder.parameters(), *jepa.predictor.parameters()] if p.requires_grad)
    assert sum(len(g["params"]) for g in groups.values()) == n_trainable
    assert not any(p is q for q in jepa.target_encoder.parameters() for g in groups.values() for p in g["params"])


def test_set_hyperparams_never_decays_exempt_groups(jepa):
    opt = build_optimizer({"encoder": jepa.encoder, "predictor": jepa.predictor}, OptimConfig())
    set_hyperparams(opt, lr=3e-4, weight_decay=0.5)
    for group in opt.param_groups:
        assert group["lr"] == 3e-4
        assert group["weight_decay"] == (0.0 if group["name"].endswith("no_decay") else 0.5)
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8


def test_a_zero_gradient_step_shrinks_only_decayed_weights():
    lin = torch.nn.Linear(4, 4)
    pred = torch.nn.Linear(4, 4)
    opt = build_optimizer({"encoder": lin, "predictor": pred}, OptimConfig(weight_decay=0.1))
    set_hyperparams(opt, lr=0.1, weight_decay=0.1)
    before_w, before_b = lin.weight.detach().clone(), lin.bias.detach().clone()
    for p in [*lin.parameters(), *pred.parameters()]:
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(lin.weight, before_w * (1 - 0.1 * 0.1))
    torch.testing.assert_close(lin.bias, before_b)


def test_tiny_preset_accumulates_two_micro_batches():
    cfg = load_config(PretrainConfig, preset_path("pretrain", "tiny"))
    plan = plan_batch(cfg.optim, cfg.trainer)
    assert (plan.num_workers, plan.batch_per_worker, plan.grad_accum, plan.global_batch) == (1, 4, 2, 8)
    assert plan.lr_scale == 1.0
    assert plan_batch(cfg.optim, cfg.trainer, num_workers=2).grad_accum == 1
    assert plan_batch(cfg.optim, cfg.trainer, num_workers=0).grad_accum == 2  # local mode counts as 1 worker


def test_small_cluster_reaches_3072_by_accumulation_and_scales_lr_by_achieved_batch():
    optim = OptimConfig()
    assert plan_batch(optim, TrainerConfig(num_workers=128, batch_size_per_worker=24)).grad_accum == 1
    plan = plan_batch(optim, TrainerConfig(num_workers=8, batch_size_per_worker=24))
    assert plan.grad_accum == 16 and plan.global_batch == 3072 and plan.lr_scale == 1.0
    odd = plan_batch(optim, TrainerConfig(num_workers=6, batch_size_per_worker=24))
    assert odd.grad_accum == 22 and odd.global_batch == 3168 and odd.lr_scale == pytest.approx(3168 / 3072)
    fixed = plan_batch(optim, TrainerConfig(num_workers=8, batch_size_per_worker=24, grad_accum_steps=4))
    assert fixed.global_batch == 768 and fixed.lr_scale == 0.25
