"""Typed configs: presets load with reference numbers; bad keys/types fail naming key and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from configs import CONFIG_ROOT, preset_path
from core.config import ConfigError, flatten, load_config, to_dict
from train.config import PretrainConfig

PRESETS = sorted(p.stem for p in (CONFIG_ROOT / "pretrain").glob("*.yaml"))


@pytest.mark.parametrize("name", PRESETS)
def test_every_pretrain_preset_loads(name):
    cfg = load_config(PretrainConfig, preset_path("pretrain", name))
    assert cfg.model.preset in name or name.startswith(cfg.model.preset.split("-")[0])
    assert len(cfg.masks) == 2


def test_reference_numbers_in_presets():
    vitg = load_config(PretrainConfig, preset_path("pretrain", "vitg"))
    assert (vitg.model.encoder.embed_dim, vitg.model.encoder.depth, vitg.model.encoder.num_heads) == (1408, 40, 22)
    assert vitg.model.encoder.mlp_hidden == 6144
    assert vitg.trainer.num_workers * vitg.trainer.batch_size_per_worker == vitg.optim.global_batch == 3072
    assert (vitg.optim.lr, vitg.optim.start_lr, vitg.optim.warmup_steps) == (5.25e-4, 1e-4, 12000)
    assert (vitg.optim.weight_decay, vitg.optim.ema) == (0.04, 0.99925)
    assert [m.num_blocks for m in vitg.masks] == [8, 2]
    assert [m.spatial_scale for m in vitg.masks] == [(0.15, 0.15), (0.7, 0.7)]
    assert vitg.data.sources["yt1b"].weight == 0.188 and vitg.data.sources["imagenet"].kind == "image"

    g384 = load_config(PretrainConfig, preset_path("pretrain", "vitg-384"))
    assert (g384.data.clip.frames_per_clip, g384.data.clip.crop_size, g384.model.encoder.img_size) == (64, 384, 384)
    assert g384.optim.schedule == "linear_decay" and g384.optim.final_lr == 1e-6
    assert g384.trainer.num_workers * g384.trainer.batch_size_per_worker == 3072

    vith = load_config(PretrainConfig, preset_path("pretrain", "vith-cooldown"))
    assert (vith.model.encoder.embed_dim, vith.data.clip.frames_per_clip) == (1280, 64)

    tiny = load_config(PretrainConfig, preset_path("pretrain", "tiny"))
    assert (tiny.data.clip.frames_per_clip, tiny.data.clip.crop_size) == (8, 128)
    assert tiny.trainer.use_gpu is False


def test_overrides_are_typed_and_dotted():
    cfg = load_config(PretrainConfig, preset_path("pretrain", "tiny"),
                      ["trainer.num_workers=4", "data.sources.ssv2.weight=0", "optim.betas=[0.8, 0.9]"])
    assert cfg.trainer.num_workers == 4
    assert cfg.data.sources["ssv2"].weight == 0.0
    assert cfg.optim.betas == (0.8, 0.9)


def test_unknown_key_names_key_and_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  num_wrkers: 4\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*unknown key 'trainer\.num_wrkers'"):
        load_config(PretrainConfig, bad)


def test_wrong_type_names_key_and_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  num_workers: four\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'trainer\.num_workers'.*integer"):
        load_config(PretrainConfig, bad)
    with pytest.raises(ConfigError, match=r"override.*'run\.resume'.*true/false"):
        load_config(PretrainConfig, None, ["run.resume=maybe"])
    with pytest.raises(ConfigError, match="data.decoder"):
        load_config(PretrainConfig, None, ["data.decoder=ffmpeg9"])


def test_base_includes_merge_and_cycles(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("trainer: {num_workers: 2, batch_size_per_worker: 3}\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\ntrainer: {num_workers: 5}\n")
    cfg = load_config(PretrainConfig, tmp_path / "b.yaml")
    assert (cfg.trainer.num_workers, cfg.trainer.batch_size_per_worker) == (5, 3)
    (tmp_path / "c.yaml").write_text("_base_: d.yaml\n")
    (tmp_path / "d.yaml").write_text("_base_: c.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(PretrainConfig, tmp_path / "c.yaml")


def test_missing_file_and_bad_yaml(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(PretrainConfig, tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(PretrainConfig, broken)


def test_resolved_config_flattens_for_logging():
    flat = flatten(to_dict(load_config(PretrainConfig, preset_path("pretrain", "tiny"))))
    assert flat["model.encoder.embed_dim"] == 192
    assert flat["data.sources.imagenet.kind"] == "image"


def test_unknown_preset_lists_known():
    with pytest.raises(FileNotFoundError, match="tiny"):
        preset_path("pretrain", "vitz")
