"""Clip transforms: pretraining augmentation (docs/reference.md R-vjepa2-5.5: one random-resized-crop per clip,
horizontal
flip, ImageNet norm) and the deterministic eval preprocessing that evaluation and planning share.

The crop and flip run in the decode actors and return uint8, so clips cross the object store at a
quarter of the float size; normalisation to float happens per trainer batch (train/collate.py).
All randomness comes from the per-sample generator, so a sample is the same wherever it is decoded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pipelines.config import ClipConfig

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RRC_TRIES = 10


@dataclass(frozen=True)
class CropBox:
    top: int
    left: int
    height: int
    width: int


def random_resized_crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                            rng: np.random.Generator) -> CropBox:
    """Inception-style crop: area U(scale), aspect log-uniform in ratio, 10 tries, then a center crop."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(RRC_TRIES):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return CropBox(top, left, h, w)
    return center_crop_box(height, width, ratio)


def center_crop_box(height: int, width: int, ratio: tuple[float, float]) -> CropBox:
    """The random-resized crop's fallback: the whole frame if its aspect lies in ``ratio``, else the
    largest centred box at the nearest bound. It is also V-JEPA 2-AC's deterministic crop: Meta's DROID
    config asks for an area scale of 1.777, which no try can meet, so every clip gets this box
    (docs/reference.md R-vjepa2-6.4; 1280 x 720 DROID frames -> a centred 972 x 720 box)."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return CropBox((height - h) // 2, (width - w) // 2, h, w)


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of bilinear resampling with ``align_corners=False`` (torch's rule)."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    return low, high, (src - low).astype(np.float32)


def _lerp(low: np.ndarray, high: np.ndarray, weight: np.ndarray) -> np.ndarray:
    high -= low
    high *= weight
    high += low
    return high


def resize_bilinear(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 [T, H, W, C] -> float32 [T, size, size, C]; equal to ``F.interpolate(bilinear, align_corners=False)``.

    Plain numpy, so decode actors never import torch (+2 s start-up and ~450 MB per process here).
    """
    low, high, w = _axis_weights(frames.shape[1], size)
    rows = _lerp(frames[:, low].astype(np.float32), frames[:, high].astype(np.float32), w[None, :, None, None])
    low, high, w = _axis_weights(frames.shape[2], size)
    return _lerp(rows[:, :, low], rows[:, :, high], w[None, None, :, None])


def resized_crop(frames: np.ndarray, box: CropBox, size: int, flip: bool, out: np.ndarray | None = None) -> np.ndarray:
    """Crop ``frames`` (uint8 [T, H, W, 3]) to ``box``, resize to size x size, optionally mirror; uint8 out.

    Bilinear with ``align_corners=False`` as Meta's video transform (docs/reference.md R-vjepa2-5.5); the result is
    rounded back to uint8 (at most 0.5/255 from Meta's float path). ``out``: write there (a row of the
    decode batch) instead of allocating.
    """
    crop = frames[:, box.top:box.top + box.height, box.left:box.left + box.width]
    resized = resize_bilinear(crop, size)
    np.rint(resized, out=resized)
    np.clip(resized, 0, 255, out=resized)
    if flip:
        resized = resized[:, :, ::-1]
    if out is None:
        return resized.astype(np.uint8)
    np.copyto(out, resized, casting="unsafe")
    return out


def augment(frames: np.ndarray, cfg: ClipConfig, rng: np.random.Generator, out: np.ndarray | None = None) -> np.ndarray:
    """One crop box and one flip decision for the whole clip (docs/reference.md R-vjepa2-5.5)."""
    box = random_resized_crop_box(frames.shape[1], frames.shape[2], cfg.rrc_scale, cfg.rrc_ratio, rng)
    flip = bool(cfg.horizontal_flip and rng.random() < 0.5)
    return resized_crop(frames, box, cfg.crop_size, flip, out)


def normalize(clips: torch.Tensor) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> float32 [B, 3, T, H, W] with ImageNet mean/std (on the 0-255 scale)."""
    import torch  # here, not at module level: decode actors import this module and stay torch-free

    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=clips.device) * 255.0
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=clips.device) * 255.0
    x = (clips.float() - mean) / std
    return x.permute(0, 4, 1, 2, 3).contiguous()


def eval_preprocess(frames: np.ndarray, crop_size: int) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> float ``[3, T, crop, crop]``: short side to int(crop*256/224) (bilinear,
    antialiased), center crop, ImageNet mean/std (Meta's hub preprocessor, docs/reference.md R-vjepa2-8.2). Shared by
    evaluation and planning: deterministic, no augmentation."""
    import torch
    import torch.nn.functional as F

    video = torch.from_numpy(np.array(frames, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 255.0  # [T,3,H,W]
    height, width = video.shape[-2:]
    short = int(crop_size * 256 / 224)
    scale = short / min(height, width)
    size = (max(short, round(height * scale)), max(short, round(width * scale)))
    video = F.interpolate(video, size=size, mode="bilinear", align_corners=False, antialias=True)
    top = int(round((size[0] - crop_size) / 2.0))
    left = int(round((size[1] - crop_size) / 2.0))
    video = video[..., top:top + crop_size, left:left + crop_size]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((video - mean) / std).permute(1, 0, 2, 3).contiguous()
