"""The model CLIs: init-checkpoint, embed (npy, image, video), convert (Meta <-> HF), and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_media import render_video
from PIL import Image

from cluster.cli import main
from models.checkpoint import ARCH_KEY, load_encoder
from models.hf import CARD_FILE, PROCESSOR_FILE
from pipelines.clips import eval_clip_indices
from pipelines.decode import open_video
from pipelines.transforms import eval_preprocess


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    assert main(["init-checkpoint", "--preset", "tiny", "--seed", "3", "--out", str(path)]) == 0
    return path


def test_init_checkpoint_is_meta_layout_seeded_and_self_describing(tiny_ckpt: Path, tmp_path: Path) -> None:
    raw = torch.load(tiny_ckpt, weights_only=True)
    assert {"encoder", "target_encoder", "predictor", ARCH_KEY} <= set(raw)
    assert all(torch.equal(raw["encoder"][k], raw["target_encoder"][k]) for k in raw["encoder"])
    assert raw[ARCH_KEY]["model_cfg"]["preset"] == "tiny"
    assert main(["init-checkpoint", "--preset", "tiny", "--seed", "3", "--out", str(tmp_path / "b.pt")]) == 0
    assert main(["init-checkpoint", "--preset", "tiny", "--seed", "4", "--out", str(tmp_path / "c.pt")]) == 0
    same, other = (torch.load(tmp_path / n, weights_only=True)["encoder"] for n in ("b.pt", "c.pt"))
    key = "blocks.0.attn.qkv.weight"
    assert torch.equal(same[key], raw["encoder"][key]) and not torch.equal(other[key], raw["encoder"][key])


def test_embed_npy_is_fed_as_is(tiny_ckpt: Path, tmp_path: Path) -> None:
    clip = np.random.default_rng(0).standard_normal((3, 8, 128, 96)).astype(np.float32)
    np.save(tmp_path / "clip.npy", clip)
    out = tmp_path / "feats.npy"
    assert main(["embed", "--checkpoint", str(tiny_ckpt), "--input", str(tmp_path / "clip.npy"),
                 "--out", str(out), "--key", "target_encoder"]) == 0
    feats = np.load(out)
    assert feats.shape == (4 * 8 * 6, 192) and feats.dtype == np.float32
    encoder, _ = load_encoder(tiny_ckpt, key="target_encoder")
    with torch.no_grad():
        direct = encoder(torch.from_numpy(clip)[None])[0].numpy()
    np.testing.assert_allclose(feats, direct, atol=1e-6)
    assert main(["embed", "--checkpoint", str(tiny_ckpt), "--input", str(tmp_path / "clip.npy"),
                 "--out", str(out), "--pool", "mean"]) == 0
    np.testing.assert_allclose(np.load(out), direct.mean(axis=0), atol=1e-6)


def test_embed_image_repeats_it_to_a_clip(tiny_ckpt: Path, tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    out = tmp_path / "img.npy"
    assert main(["embed", "--checkpoint", str(tiny_ckpt), "--input", str(tmp_path / "photo.png"),
                 "--out", str(out)]) == 0
    feats = np.load(out)
    assert feats.shape == (4 * 8 * 8, 192)  # tiny preset: 8 frames at 128 px
    # a static clip: every tubelet of the same place sees the same pixels, so t only enters through RoPE
    assert not np.allclose(feats[:64], feats[64:128])


def test_embed_video_samples_the_middle_at_4_fps(tiny_ckpt: Path, tmp_path: Path) -> None:
    video = render_video(tmp_path / "clip.mp4", frames=96, width=160, height=96, fps=24)
    # 4 s video, 8 frames at 4 fps = 2 s, centred: 1.0 s .. 2.75 s -> frames 24, 30, ..., 66
    indices = eval_clip_indices(96, 24.0, 8, 4.0)
    assert indices.tolist() == list(range(24, 67, 6))
    out = tmp_path / "video.npy"
    assert main(["embed", "--checkpoint", str(tiny_ckpt), "--input", str(video), "--out", str(out)]) == 0
    reader = open_video(str(video))
    frames = reader.get_frames(indices)
    reader.close()
    encoder, _ = load_encoder(tiny_ckpt)
    with torch.no_grad():
        want = encoder(eval_preprocess(frames, 128)[None])[0].numpy()
    np.testing.assert_allclose(np.load(out), want, atol=1e-5)
    assert eval_clip_indices(10, 24.0, 8, 4.0, start=0.0).tolist() == [0, 6, 9, 9, 9, 9, 9, 9]  # short: last repeats


def test_preprocess_resizes_short_side_center_crops_and_normalises() -> None:
    mean = np.array([0.485, 0.456, 0.406]) * 255
    frames = np.broadcast_to(mean.round().astype(np.uint8), (2, 100, 300, 3))
    clip = eval_preprocess(frames, 128)
    assert clip.shape == (3, 2, 128, 128)
    assert clip.abs().max() < 0.01  # ImageNet mean maps to ~0


def test_convert_meta_hf_meta_round_trip_is_bit_exact(tiny_ckpt: Path, tmp_path: Path) -> None:
    assert main(["convert", str(tiny_ckpt), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file() and (tmp_path / "hf" / "config.json").is_file()
    assert (tmp_path / "hf" / PROCESSOR_FILE).is_file() and (tmp_path / "hf" / CARD_FILE).is_file()
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back.pt"), "--to", "meta"]) == 0
    src, back = (torch.load(p, weights_only=True) for p in (tiny_ckpt, tmp_path / "back.pt"))
    for key in ("encoder", "predictor"):
        assert src[key].keys() == back[key].keys()
        assert all(torch.equal(src[key][k], back[key][k]) for k in src[key])
    assert "target_encoder" not in back  # HF holds one encoder


def test_convert_meta_to_meta_keeps_or_drops_extras(tiny_ckpt: Path, tmp_path: Path) -> None:
    assert main(["convert", str(tiny_ckpt), str(tmp_path / "kept.pt"), "--to", "meta"]) == 0
    assert torch.load(tmp_path / "kept.pt", weights_only=True)["epoch"] == 0
    assert main(["convert", str(tiny_ckpt), str(tmp_path / "lean.pt"), "--to", "meta", "--drop-extras"]) == 0
    lean = torch.load(tmp_path / "lean.pt", weights_only=True)
    assert "epoch" not in lean and "target_encoder" in lean


def test_bad_inputs_exit_2_with_one_line_naming_the_file(tiny_ckpt: Path, tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "ints.npy", np.zeros((3, 8, 64, 64), dtype=np.int64))
    assert main(["embed", "--checkpoint", str(tiny_ckpt), "--input", str(tmp_path / "ints.npy"),
                 "--out", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ints.npy" in err and "float array" in err
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 2000)
    assert main(["embed", "--checkpoint", str(tiny_ckpt), "--input", str(tmp_path / "broken.mp4"),
                 "--out", str(tmp_path / "x.npy")]) == 2
    assert "broken.mp4" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "ints.npy"), str(tmp_path / "o"), "--to", "hf"]) == 2
    assert "not a PyTorch checkpoint" in capsys.readouterr().err
