"""Clip-consistent RandAugment and random erasing (pipelines/video_augment.py): determinism, consistency across
frames, the erase box, the config parser, and the ops against timm's (the last one slow: importing timm takes ~9 s).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from pipelines.video_augment import (
    FILL,
    RAND_INCREASING_OPS,
    RAND_OPS,
    SIGNED_OPS,
    ClipAugmentParams,
    EraseBox,
    RandAugmentOp,
    RandAugmentSpec,
    VideoAugmentConfig,
    apply_params,
    augment_clip,
    op_argument,
    parse_randaugment,
    sample_erase_box,
    sample_params,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
ALL_OPS = tuple(dict.fromkeys(RAND_OPS + RAND_INCREASING_OPS))
EVERY_LAYER = "rand-m7-n4-mstd0.5-inc1-p1"  # Meta's string with every layer applied


def _frame(height: int, width: int, seed: int) -> np.ndarray:
    """A textured uint8 frame whose values do not span 0..255 (so AutoContrast / Equalize change it)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([40 + (xx * 3 + yy) % 150, 60 + (yy * 2 + seed) % 120, 30 + (xx * yy // 7) % 170], axis=-1)
    return np.clip(base + rng.integers(-15, 16, base.shape), 0, 255).astype(np.uint8)


def _clip(frames: int = 4, height: int = 32, width: int = 40, seed: int = 0) -> np.ndarray:
    return np.stack([_frame(height, width, seed + t) for t in range(frames)])


def _all_ops_params(negate: bool, magnitude: float = 7.0) -> ClipAugmentParams:
    return ClipAugmentParams(tuple(RandAugmentOp(n, magnitude, op_argument(n, magnitude, negate)) for n in ALL_OPS))


# --- config ---------------------------------------------------------------------------------------------------


def test_parse_meta_string_and_defaults():
    assert parse_randaugment("rand-m7-n4-mstd0.5-inc1") == RandAugmentSpec(7, 4, 0.5, 0.5, True)
    assert parse_randaugment("rand-inc1-mstd0.5-n4-m7") == RandAugmentSpec(7, 4, 0.5, 0.5, True)
    assert parse_randaugment("rand") == RandAugmentSpec(10, 2, 0.0, 0.5, False)
    assert parse_randaugment("rand-m9-n2-p1-inc0").prob == 1.0
    assert parse_randaugment("") is None
    assert parse_randaugment("rand-inc1").op_names == RAND_INCREASING_OPS
    assert parse_randaugment("rand-inc0").op_names == RAND_OPS
    cfg = VideoAugmentConfig()
    assert (cfg.randaugment, cfg.erase_prob, cfg.interpolation, cfg.fill) == (
        "rand-m7-n4-mstd0.5-inc1", 0.25, "bicubic", FILL)


@pytest.mark.parametrize("spec", ["augmix-m7", "rand-m7-x3", "rand-mfoo", "rand-inc2", "rand-m7.5", "rand-m7-m8",
                                  "rand-p1.5", "rand-m7-w0", "rand-mstd200", "rand-m7-", "rand-m-7", "Rand-m7"])
def test_bad_randaugment_string_raises_naming_it(spec):
    with pytest.raises(ValueError, match=re.escape(repr(spec))):
        VideoAugmentConfig(randaugment=spec)


@pytest.mark.parametrize("kwargs", [{"erase_prob": 1.5}, {"erase_prob": -0.1}, {"interpolation": "lanczos"},
                                    {"erase_min_area": 0.5, "erase_max_area": 0.2}, {"erase_min_area": 0.0},
                                    {"erase_min_aspect": 2.0}, {"fill": (0, 0, 300)}])
def test_bad_config_values_raise(kwargs):
    with pytest.raises(ValueError):
        VideoAugmentConfig(**kwargs)


# --- determinism ----------------------------------------------------------------------------------------------


def test_same_seed_same_clip_different_seed_different_clip():
    frames = _clip()
    cfg = VideoAugmentConfig(erase_prob=1.0)
    outs = [augment_clip(frames, cfg, np.random.default_rng(seed)) for seed in (0, 0, 1, 2)]
    assert np.array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])
    assert not np.array_equal(outs[2], outs[3])
    # the default config too (four coins of RandAugment and one of erasing can all come up empty: try a few seeds)
    default = [augment_clip(frames, VideoAugmentConfig(), np.random.default_rng(s)) for s in range(4)]
    assert np.array_equal(default[0], augment_clip(frames, VideoAugmentConfig(), np.random.default_rng(0)))
    assert len({o.tobytes() for o in default}) > 1


def test_no_global_randomness_used():
    random.seed(5)
    np.random.seed(5)
    py_state, np_state = random.getstate(), np.random.get_state()
    for seed in range(5):
        augment_clip(_clip(), VideoAugmentConfig(randaugment=EVERY_LAYER, erase_prob=1.0), np.random.default_rng(seed))
    assert random.getstate() == py_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state))


_CHILD = """
import hashlib, numpy as np
from pipelines.video_augment import VideoAugmentConfig, augment_clip
from tests.test_video_augment import _clip
out = augment_clip(_clip(), VideoAugmentConfig(randaugment="rand-m7-n4-mstd0.5-inc1-p1", erase_prob=1.0),
                   np.random.default_rng(11))
print(hashlib.sha256(out.tobytes()).hexdigest())
"""


def test_same_seed_same_clip_in_another_process():
    cfg = VideoAugmentConfig(randaugment=EVERY_LAYER, erase_prob=1.0)
    here = hashlib.sha256(augment_clip(_clip(), cfg, np.random.default_rng(11)).tobytes()).hexdigest()
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO_ROOT)}
    there = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True, env=env,
                           cwd=REPO_ROOT, timeout=60).stdout.strip()
    assert there == here


# --- clip consistency -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("negate", [False, True])
@pytest.mark.parametrize("name", ALL_OPS)
def test_each_op_keeps_identical_frames_identical(name, negate):
    frames = np.repeat(_frame(24, 28, 3)[None], 3, axis=0)
    op = RandAugmentOp(name, 7.0, op_argument(name, 7.0, negate))
    out = apply_params(frames, ClipAugmentParams((op,)))
    assert out.dtype == np.uint8 and out.shape == frames.shape
    assert all(np.array_equal(out[t], out[0]) for t in range(1, len(out)))


@pytest.mark.parametrize("seed", range(6))
def test_identical_frames_stay_identical(seed):
    frames = np.repeat(_frame(32, 40, seed)[None], 5, axis=0)
    for cfg in (VideoAugmentConfig(randaugment=EVERY_LAYER, erase_prob=0.0),
                VideoAugmentConfig(randaugment="", erase_prob=1.0),
                VideoAugmentConfig(randaugment=EVERY_LAYER, erase_prob=1.0)):
        out = augment_clip(frames, cfg, np.random.default_rng(seed))
        assert not np.array_equal(out, frames)
        assert all(np.array_equal(out[t], out[0]) for t in range(1, len(out)))


def _frame_by_frame(frames: np.ndarray, params: ClipAugmentParams) -> np.ndarray:
    return np.concatenate([apply_params(frames[t:t + 1], params) for t in range(len(frames))])


@pytest.mark.parametrize("seed", range(6))
def test_clip_equals_frame_by_frame_with_the_same_params(seed):
    frames = _clip(frames=4, seed=10 * seed)
    assert not np.array_equal(frames[0], frames[1])
    cfg = VideoAugmentConfig(randaugment=EVERY_LAYER, erase_prob=1.0)
    params = sample_params(cfg, frames.shape[1], frames.shape[2], np.random.default_rng(seed))
    whole = apply_params(frames, params)
    assert np.array_equal(whole, _frame_by_frame(frames, params))
    assert np.array_equal(whole, augment_clip(frames, cfg, np.random.default_rng(seed)))


@pytest.mark.parametrize("negate", [False, True])
def test_every_op_in_one_clip_equals_frame_by_frame(negate):
    frames = _clip(frames=3, height=20, width=26, seed=7)
    params = _all_ops_params(negate)
    box = EraseBox(2, 3, 5, 7, np.full((5, 7, 3), 9, dtype=np.uint8))
    params = ClipAugmentParams(params.ops, box)
    assert np.array_equal(apply_params(frames, params), _frame_by_frame(frames, params))


# --- off switch, shapes, erase box ----------------------------------------------------------------------------


def test_off_switch_returns_the_input_and_draws_nothing():
    frames = _clip()
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    out = augment_clip(frames, VideoAugmentConfig(randaugment="", erase_prob=0.0), rng)
    assert np.array_equal(out, frames) and out.dtype == np.uint8
    assert rng.bit_generator.state == state
    # layers whose coin failed change nothing either
    skipped = tuple(RandAugmentOp(n, 7.0, op_argument(n, 7.0), applied=False) for n in ALL_OPS)
    assert np.array_equal(apply_params(frames, ClipAugmentParams(skipped)), frames)


@pytest.mark.parametrize("shape", [(1, 17, 23, 3), (5, 48, 64, 3), (3, 64, 36, 3)])
def test_dtype_and_shape_preserved_input_untouched(shape):
    frames = _clip(*shape[:3])
    before = frames.copy()
    for seed in range(3):
        out = augment_clip(frames, VideoAugmentConfig(randaugment=EVERY_LAYER, erase_prob=1.0),
                           np.random.default_rng(seed))
        assert out.dtype == np.uint8 and out.shape == shape
    assert np.array_equal(frames, before)


def test_rejects_frames_that_are_not_uint8_rgb_clips():
    cfg = VideoAugmentConfig()
    for bad in (np.zeros((2, 8, 8, 3), np.float32), np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 8, 4), np.uint8)):
        with pytest.raises(ValueError, match="uint8"):
            augment_clip(bad, cfg, np.random.default_rng(0))


@pytest.mark.parametrize("size", [(224, 224), (64, 48), (30, 200)])
def test_erase_box_in_bounds_with_meta_area_and_one_fill(size):
    height, width = size
    cfg = VideoAugmentConfig(randaugment="", erase_prob=1.0)
    frames = np.repeat(_frame(height, width, 1)[None], 2, axis=0)
    frames[1] = 255 - frames[1]  # distinct frames, so "same fill" is not trivially true
    area = height * width
    for seed in range(40):
        box = sample_erase_box(cfg, height, width, np.random.default_rng(seed))
        assert box is not None
        assert 0 <= box.top and box.top + box.height <= height and 0 < box.height < height
        assert 0 <= box.left and box.left + box.width <= width and 0 < box.width < width
        # the sampled target area is U(0.02, 1/3) of the frame; h and w are rounded, so the realised area is off
        # by at most 0.5 (h* + w*) + 0.25 pixels, h* and w* being the unrounded sides
        tol = (0.5 * (box.height + box.width + 1) + 0.25) / area
        assert 0.02 - tol <= box.height * box.width / area <= 1 / 3 + tol
        assert box.fill.shape == (box.height, box.width, 3) and box.fill.dtype == np.uint8
        out = apply_params(frames, ClipAugmentParams(erase=box))
        rows, cols = slice(box.top, box.top + box.height), slice(box.left, box.left + box.width)
        assert all(np.array_equal(out[t, rows, cols], box.fill) for t in range(len(out)))
        mask = np.ones((height, width), bool)
        mask[rows, cols] = False
        assert np.array_equal(out[:, mask], frames[:, mask])
        assert np.array_equal(augment_clip(frames, cfg, np.random.default_rng(seed)), out)


def test_erase_probability_and_fill_statistics():
    cfg = VideoAugmentConfig(randaugment="", erase_min_area=0.02, erase_max_area=0.02)
    boxes = [sample_erase_box(cfg, 32, 32, np.random.default_rng(seed)) for seed in range(2000)]
    rate = sum(b is not None for b in boxes) / len(boxes)
    assert abs(rate - 0.25) < 0.03
    assert sample_erase_box(VideoAugmentConfig(erase_prob=0.0), 32, 32, np.random.default_rng(0)) is None
    # fill: N(0, 1) in ImageNet-normalised space -> per-channel mean ~ 255 * mean
    big = sample_erase_box(VideoAugmentConfig(erase_prob=1.0, erase_min_area=0.3, erase_max_area=0.33), 256, 256,
                           np.random.default_rng(0))
    assert big is not None
    means = big.fill.reshape(-1, 3).mean(axis=0) / 255.0
    assert np.allclose(means, (0.485, 0.456, 0.406), atol=0.02)


def test_randaugment_sampling_statistics():
    cfg = VideoAugmentConfig(erase_prob=0.0)
    ops = [op for seed in range(3000) for op in sample_params(cfg, 16, 16, np.random.default_rng(seed)).ops]
    assert len(ops) == 4 * 3000
    assert {op.name for op in ops} == set(RAND_INCREASING_OPS)
    assert abs(np.mean([op.applied for op in ops]) - 0.5) < 0.02
    mags = np.array([op.magnitude for op in ops])
    assert mags.min() >= 0.0 and mags.max() <= 10.0
    assert abs(mags.mean() - 7.0) < 0.03 and abs(mags.std() - 0.5) < 0.03
    rotations = [op.arg for op in ops if op.name == "Rotate"]
    assert abs(np.mean([a < 0 for a in rotations]) - 0.5) < 0.06
    assert all(abs(a) <= 30.0 for a in rotations)
    for name in ALL_OPS:  # the random sign only reaches the signed ops
        assert (op_argument(name, 7.0) != op_argument(name, 7.0, negate=True)) == (name in SIGNED_OPS)


def test_op_arguments_follow_timm_levels():
    assert op_argument("Rotate", 10.0) == 30.0 and op_argument("Rotate", 10.0, negate=True) == -30.0
    assert op_argument("ShearX", 7.0) == pytest.approx(0.21)
    assert op_argument("TranslateYRel", 10.0, negate=True) == pytest.approx(-0.45)
    assert op_argument("PosterizeIncreasing", 7.0) == 2 and op_argument("Posterize", 7.0) == 2
    assert op_argument("SolarizeIncreasing", 7.0) == 256 - 179 and op_argument("Solarize", 7.0) == 179
    assert op_argument("SolarizeAdd", 7.0) == 77
    assert op_argument("ColorIncreasing", 7.0, negate=True) == pytest.approx(1 - 0.63)
    assert op_argument("Contrast", 7.0) == pytest.approx(1.36)
    assert op_argument("Equalize", 7.0) is None and op_argument("Invert", 3.0, negate=True) is None
    with pytest.raises(ValueError, match="Blur"):
        op_argument("Blur", 5.0)


def test_pointwise_ops_equal_pil():
    frame = _frame(16, 20, 4)
    pil = Image.fromarray(frame)
    one = frame[None]

    def run(name, arg):
        return apply_params(one, ClipAugmentParams((RandAugmentOp(name, 0.0, arg),)))[0]

    assert np.array_equal(run("Invert", None), 255 - frame)
    for bits in (1, 2, 3, 4, 8):
        assert np.array_equal(run("Posterize", bits), np.asarray(ImageOps.posterize(pil, bits)))
    assert not run("PosterizeIncreasing", 0).any()  # 0 bits: black (PIL 13 refuses 0 bits)
    for thresh in (0, 77, 179, 256):
        assert np.array_equal(run("SolarizeIncreasing", thresh), np.asarray(ImageOps.solarize(pil, thresh)))


@pytest.mark.slow
def test_ops_equal_timm_ops_and_levels(monkeypatch):
    """Every op at several magnitudes and both signs equals timm's op function with timm's level argument."""
    aa = pytest.importorskip("timm.data.auto_augment")
    frame = _frame(40, 52, 9)
    for name in ALL_OPS:
        for magnitude in (0.0, 2.6, 6.8, 7.0, 7.49, 9.99, 10.0):
            for negate in (False, True):
                monkeypatch.setattr(aa.random, "random", lambda n=negate: 0.9 if n else 0.1)  # > 0.5: negated
                level_fn = aa.LEVEL_TO_ARG[name]
                args = level_fn(magnitude, {"translate_const": 100}) if level_fn else ()
                monkeypatch.undo()
                arg = op_argument(name, magnitude, negate)
                # Meta's level rules; timm 1.0.31 adds max(0.1, .) to the *Increasing enhancers, which differs at
                # magnitude 10 only by a rounding (0.1 vs 0.09999999999999998)
                assert args == pytest.approx(() if arg is None else (arg,), abs=1e-12), (name, magnitude, negate)
                if name.startswith("Posterize") and arg == 0:
                    continue  # PIL 13 raises on 0 bits inside timm; ours is black (test_pointwise_ops_equal_pil)
                ref = aa.NAME_TO_OP[name](Image.fromarray(frame), *args, fillcolor=FILL,
                                          resample=Image.Resampling.BICUBIC)
                out = apply_params(frame[None], ClipAugmentParams((RandAugmentOp(name, magnitude, arg),)))[0]
                assert np.array_equal(out, np.asarray(ref)), (name, magnitude, negate)
