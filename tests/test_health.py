"""Collapse warning, data-wait accounting and throughput summaries (train/health.py)."""

from __future__ import annotations

import logging
import time

import torch

from train.health import CollapseMonitor, StepTiming, Throughput, TimedIterator, target_feature_std
from train.losses import normalize_targets


def test_target_std_is_high_for_diverse_and_zero_for_collapsed_features():
    diverse = normalize_targets(torch.randn(4, 32, 64))
    collapsed = normalize_targets(torch.randn(1, 1, 64).expand(4, 32, 64) + 1e-3 * torch.randn(4, 32, 64))
    assert float(target_feature_std(diverse)) > 0.9
    assert float(target_feature_std(collapsed)) < 0.05


def test_collapse_warns_once_per_episode(caplog):
    monitor = CollapseMonitor(floor=0.1)
    with caplog.at_level(logging.INFO, logger="train.health"):
        flags = [monitor.check(step, std) for step, std in enumerate([0.9, 0.05, 0.04, 0.5, 0.01])]
    assert flags == [False, True, True, False, True]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage().split(":")[0] for r in warnings] == ["step 1", "step 4"]


def test_timed_iterator_counts_only_the_wait():
    def slow():
        for i in range(3):
            time.sleep(0.05)
            yield i

    it = TimedIterator(slow())
    assert list(it) == [0, 1, 2]
    assert 0.14 < it.wait_s < 0.5


def test_throughput_leaves_out_warmup_steps():
    tp = Throughput(warmup=1)
    assert tp.record(StepTiming(10.0, 9.0, 8, 800)) == {"clips_per_s": 0.8, "tokens_per_s": 80.0,
                                                        "data_wait_frac": 0.9}
    tp.record(StepTiming(1.0, 0.0, 8, 800))
    tp.record(StepTiming(1.0, 0.2, 8, 800))
    summary = tp.summary()
    assert summary["clips_per_s"] == 8.0 and summary["data_wait_frac"] == 0.1
    assert summary["steps_per_s"] == 1.0 and summary["steps_measured"] == 2.0
