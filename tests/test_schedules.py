"""LR / WD / EMA schedules of the recipe (docs/reference.md R-vjepa2-4.2), including Meta's quirks."""

from __future__ import annotations

import pytest

from configs import CONFIG_ROOT
from core.config import ConfigError, load_config
from train.config import OptimConfig, PretrainConfig
from train.schedules import Constant, LinearDecay, WarmupConstant, WarmupStableDecay, build_schedules


def test_warmup_then_constant_counts_from_one_like_meta():
    lr = WarmupConstant(start=1e-4, peak=5.25e-4, warmup_steps=12000)
    # Meta's scheduler increments its counter before computing: step 0 already uses t = 1
    assert lr(0) == pytest.approx(1e-4 + (1 / 12000) * 4.25e-4)
    assert lr(5999) == pytest.approx(1e-4 + 0.5 * 4.25e-4)
    assert lr(11998) < 5.25e-4 == lr(11999) == lr(239_999)


def test_cooldown_stops_short_because_of_ipe_scale():
    sched = build_schedules(OptimConfig(schedule="linear_decay", lr=5.25e-4, final_lr=1e-6, warmup_steps=0,
                                        total_steps=12000, ipe_scale=1.25))
    last = sched.lr(11999)
    assert last == pytest.approx(5.25e-4 + 0.8 * (1e-6 - 5.25e-4))  # docs/reference.md R-vjepa2-4.2: ~1.06e-4, not 1e-6
    assert last == pytest.approx(1.0580e-4, rel=1e-3)
    assert sched.lr(0) < 5.25e-4 and sched.lr(6000) > last
    exact = build_schedules(OptimConfig(schedule="linear_decay", lr=5.25e-4, final_lr=1e-6, warmup_steps=0,
                                        total_steps=12000, ipe_scale=1.0))
    assert exact.lr(11999) == pytest.approx(1e-6)


def test_weight_decay_and_ema_are_constant():
    sched = build_schedules(OptimConfig())
    assert {sched.at(s).weight_decay for s in (0, 100, 239_999)} == {0.04}
    assert {sched.at(s).ema for s in (0, 100, 239_999)} == {0.99925}
    assert sched.weight_decay == Constant(0.04)


def test_lr_rule_scales_every_learning_rate():
    sched = build_schedules(OptimConfig(start_lr=1e-4, lr=5e-4, warmup_steps=10), lr_scale=0.5)
    assert sched.lr == WarmupConstant(0.5e-4, 2.5e-4, 10)
    cool = build_schedules(OptimConfig(schedule="linear_decay", lr=4e-4, final_lr=2e-6, warmup_steps=0,
                                       total_steps=8), lr_scale=0.25)
    assert cool.lr == LinearDecay(1e-4, 0.5e-6, 10.0)


def test_linear_decay_with_warmup_is_refused():
    with pytest.raises(ConfigError, match="warmup_steps"):
        build_schedules(OptimConfig(schedule="linear_decay", warmup_steps=5))


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONFIG_ROOT / "pretrain").glob("*.yaml")))
def test_every_preset_builds_its_schedule(preset):
    cfg = load_config(PretrainConfig, CONFIG_ROOT / "pretrain" / f"{preset}.yaml")
    sched = build_schedules(cfg.optim)
    final = sched.lr(cfg.optim.total_steps - 1)
    if cfg.optim.schedule == "warmup_constant":
        assert final == cfg.optim.lr
    else:
        assert cfg.optim.final_lr < final < cfg.optim.lr


def test_wsd_warms_up_holds_then_anneals_to_final():
    lr = WarmupStableDecay(start=7.5e-5, peak=4.25e-4, final=0.0, warmup_steps=4500, anneal_steps=4500,
                           total_steps=94500)
    assert lr(0) == pytest.approx(7.5e-5 + (4.25e-4 - 7.5e-5) / 4500)  # Meta's counter runs one ahead
    assert lr(4499) == lr(50000) == lr(89999) == 4.25e-4
    assert lr(92249) == pytest.approx(4.25e-4 / 2)
    assert lr(94499) == 0.0


def test_wsd_phases_longer_than_the_run_are_refused():
    with pytest.raises(ConfigError, match="anneal_steps"):
        build_schedules(OptimConfig(schedule="wsd", warmup_steps=10, anneal_steps=10, total_steps=15))
