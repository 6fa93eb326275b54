"""The paper's probe presets (configs/eval/{ssv2,k400,coin,diving48,jester,in1k}.yaml): each loads, keeps Meta's
recipe (docs/reference.md R-vjepa2-8.2; Meta's configs/eval/vitl/<task>.yaml at c2963a4), and passes the probe
stage's dry run once its placeholder paths point at a tiny labelled manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.cli import main
from configs import preset_path
from core.config import load_config
from eval.probe_config import ProbeConfig
from pipelines.video_augment import VideoAugmentConfig
from train.optim import plan_batch

# task: frames, step, segments, views, crop, epochs, heads in the grid, out_layers, global batch
RECIPES = {
    "ssv2": (16, 4, 2, 3, 256, 20, 20, [], 256),
    "k400": (16, 4, 8, 3, 256, 20, 20, [], 256),
    "coin": (16, 4, 8, 3, 256, 20, 20, [], 128),
    "diving48": (32, 2, 4, 3, 256, 100, 3, [17, 19, 21, 23], 128),
    "jester": (32, 2, 4, 3, 256, 100, 3, [17, 19, 21, 23], 128),
    "in1k": (16, 1, 1, 1, 256, 20, 20, [], 1024),
}


@pytest.mark.parametrize("task", sorted(RECIPES))
def test_each_preset_keeps_metas_recipe(task):
    frames, step, segments, views, crop, epochs, heads, out_layers, global_batch = RECIPES[task]
    cfg = load_config(ProbeConfig, preset_path("eval", task))
    data = cfg.data
    assert (data.frames_per_clip, data.frame_step, data.num_segments, data.num_views, data.crop_size) == (
        frames, step, segments, views, crop)
    assert cfg.optim.epochs == epochs and len(cfg.probe.grid.pairs()) == heads
    assert cfg.encoder.out_layers == out_layers
    assert (cfg.encoder.kind, cfg.encoder.key, cfg.probe.depth, cfg.probe.num_heads) == (
        "vjepa2", "target_encoder", 4, 16)
    # 8 GPUs per node x Meta's nodes x per-GPU batch, reached without gradient accumulation
    plan = plan_batch(cfg.optim, cfg.trainer)
    assert cfg.optim.global_batch == plan.global_batch == global_batch and plan.grad_accum == 1
    assert (data.augment, data.rrc_scale, data.erase_prob) == (True, (0.08, 1.0), 0.25)
    assert data.rrc_ratio == pytest.approx((3 / 4, 4 / 3))
    assert data.randaugment == "rand-m7-n4-mstd0.5-inc1"
    VideoAugmentConfig(randaugment=data.randaugment, erase_prob=data.erase_prob)  # parses (raises otherwise)
    assert data.train == f"data/{task}/train.parquet" and data.val == f"data/{task}/val.parquet"


def test_in1k_grid_is_metas_lr_by_wd_grid_with_its_warmup():
    grid = load_config(ProbeConfig, preset_path("eval", "in1k")).probe.grid
    assert grid.lrs == [5e-4, 1e-3, 1.5e-3, 2e-3] and grid.wds == [8e-3, 4e-3, 2e-3, 1e-3, 5e-4]
    assert (grid.start_lr, grid.final_lr) == (2e-4, 0.0) and grid.warmup_steps == 5 * 1001


@pytest.fixture(scope="module")
def tiny_labelled(tmp_path_factory) -> Path:
    """Two classes, two training rows and one validation row (Meta's ``<path> <label>`` lists); the dry run
    reads the manifests and the label map, never the media."""
    root = tmp_path_factory.mktemp("tiny_labelled")
    (root / "train.csv").write_text("a0.mp4 0\na1.mp4 1\n")
    (root / "val.csv").write_text("b0.mp4 1\n")
    (root / "labels.json").write_text(json.dumps(["left", "right"]))
    return root


@pytest.mark.parametrize("task", sorted(RECIPES))
def test_each_preset_passes_the_dry_run_on_a_tiny_manifest(task, tiny_labelled, tmp_path, capsys):
    args = [f"data.train={tiny_labelled / 'train.csv'}", f"data.val={tiny_labelled / 'val.csv'}",
            f"encoder.checkpoint={tmp_path / 'vitl.pt'}", f"run.output_dir={tmp_path / 'out'}",
            "tracking.enabled=false"]
    code = main(["probe", "--config", f"eval/{task}", "--dry-run", *args])
    assert code == 0, capsys.readouterr().err
    assert "dry run: eval/" in capsys.readouterr().out
