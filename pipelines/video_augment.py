"""Clip-consistent training augmentation of Meta's V-JEPA 2 frozen-probe recipe: RandAugment and random erasing.

Meta's probe training transform (facebookresearch/vjepa2 at commit c2963a4, ``evals/video_classification_frozen/
eval.py`` ``make_dataloader`` -> ``evals/video_classification_frozen/utils.py`` ``VideoTransform``):

* RandAugment ``rand-m7-n4-mstd0.5-inc1`` with bicubic resampling (``src/datasets/utils/video/transforms.py``
  ``create_random_augment`` -> ``src/datasets/utils/video/randaugment.py``): 4 layers drawn with replacement from the
  15 increasing-severity ops, each applied with probability 0.5 at a magnitude ~ N(7, 0.5) clipped to [0, 10],
  signed ops negated with probability 0.5; geometric ops fill with (128, 128, 128);
* random-resized crop, area scale [0.08, 1], aspect [0.75, 4/3], no horizontal flip (the project's crop code,
  ``pipelines/transforms.py``, not this module);
* random erasing, probability 0.25 (``src/datasets/utils/video/randerase.py``, timm's RandomErasing with
  ``mode="pixel"``, ``max_count=1``): area fraction U(0.02, 1/3), aspect log-uniform in [0.3, 1/0.3], per-pixel
  N(0, 1) fill in normalised space.

Why clip-consistent: a different op sequence, magnitude or erase box on each frame makes the clip flicker and writes
spurious motion into it. Here one set of parameters is sampled per clip (:func:`sample_params`) and applied
identically to every frame (:func:`apply_params`): the same ops with the same arguments, the same erase rectangle
and the same fill noise. Per-frame image statistics still enter where an op is defined by them (AutoContrast,
Equalize and Contrast use each frame's own histogram or mean, as Meta's per-frame PIL calls do).

Compared with Meta's code at c2963a4:

* Meta's RandAugment already samples once per call and applies to the list of frames (``AugmentOp.__call__``), so
  its op choice is clip-consistent too; its randomness comes from Python's global ``random`` and ``np.random``. Here
  every draw comes from the caller's ``numpy.random.Generator``, so a seed gives the same clip in any process.
* Meta's erasing (``_erase_cube``, ``cube=True`` by default) uses one rectangle for all frames (up to 100 tries,
  ``h < H`` and ``w < W``) but redraws the fill noise per frame; here the fill is drawn once, for a static occluder.
* Meta runs RandAugment on the decoded frames before the crop, and erasing on the normalised float clip after it.
  Here both run on the cropped uint8 clip (the project crops in the decode actors first), RandAugment then erasing.
  Geometric magnitudes are relative to the frame (rotation angle, shear factor, translation as a fraction of the
  side), so they are the same fractions of the crop rather than of the source frame.
* Erase fill: uint8 clips are normalised later (``pipelines/transforms.normalize``), so the N(0, 1) noise ``z`` of
  Meta's normalised space is mapped back per channel as ``round(255 * (mean + std * z))`` with ImageNet mean/std,
  clipped to [0, 255]: exact to 0.5/255 except the clipped tails (|z| beyond about 1.8 to 2.6 sigma, per channel).
* Posterize to 0 bits (PosterizeIncreasing at magnitude 10, Posterize below 2.5) gives a black frame, as older PIL
  did; the installed PIL (13) raises on 0 bits in Meta's and timm's ``ImageOps.posterize`` call.

Torch- and timm-free (PIL and numpy only), like the crop code, so decode actors never import torch: the op
functions are PIL calls with the meaning of timm's ``timm.data.auto_augment`` ops (tests compare them with timm).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from pipelines.transforms import IMAGENET_MEAN, IMAGENET_STD

MAX_LEVEL = 10.0  # magnitudes are clipped to [0, MAX_LEVEL]
FILL = (128, 128, 128)  # Meta's fill for geometric ops (its hparams carry no img_mean)
ERASE_TRIES = 100  # Meta's _erase_cube
TRANSLATE_PCT = 0.45  # TranslateXRel / TranslateYRel: up to 45% of the side

# Op names in timm's / Meta's order ("inc0" and "inc1" sets).
RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
RAND_INCREASING_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                       "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                       "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
SIGNED_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel", "ColorIncreasing",
                        "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"})
_ENHANCERS = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
              "Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}
_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC}
_SECTION = re.compile(r"(mstd|m|n|p|inc)(\d+(?:\.\d+)?)")

Interpolation = Literal["nearest", "bilinear", "bicubic"]


@dataclass(frozen=True)
class RandAugmentSpec:
    """A parsed timm-style RandAugment string; defaults are timm's (``rand`` alone: m10, n2, p0.5, mstd0, inc0)."""

    magnitude: int = 10
    num_layers: int = 2
    magnitude_std: float = 0.0
    prob: float = 0.5
    increasing: bool = False

    @property
    def op_names(self) -> tuple[str, ...]:
        return RAND_INCREASING_OPS if self.increasing else RAND_OPS


def parse_randaugment(spec: str) -> RandAugmentSpec | None:
    """``"rand-m7-n4-mstd0.5-inc1"`` -> :class:`RandAugmentSpec`; ``""`` -> None (off).

    Sections after ``rand``, in any order, each at most once: ``m`` (int magnitude), ``n`` (int layers), ``mstd``
    (float magnitude noise, <= 100: timm reads larger values as uniform sampling, which is not supported), ``p``
    (float apply probability of each layer, in [0, 1]), ``inc`` (0 or 1). Anything else raises ValueError naming the
    string (Meta's parser ignores unknown sections silently; timm's asserts).
    """
    if spec == "":
        return None
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"bad RandAugment config {spec!r}: it must start with 'rand'")
    values: dict[str, str] = {}
    for section in parts[1:]:
        match = _SECTION.fullmatch(section)
        if match is None:
            raise ValueError(f"bad RandAugment config {spec!r}: unknown section {section!r} "
                             "(known: m<int>, n<int>, mstd<float>, p<float>, inc<0|1>)")
        key, val = match.groups()
        if key in values:
            raise ValueError(f"bad RandAugment config {spec!r}: section {key!r} given twice")
        values[key] = val
    try:
        parsed = RandAugmentSpec(
            magnitude=int(values.get("m", "10")),
            num_layers=int(values.get("n", "2")),
            magnitude_std=float(values.get("mstd", "0")),
            prob=float(values.get("p", "0.5")),
            increasing={"0": False, "1": True}[values.get("inc", "0")],
        )
    except (KeyError, ValueError) as err:  # "m7.5" / "n2.0" (ints expected) or "inc2"
        raise ValueError(f"bad RandAugment config {spec!r}: m and n take integers, inc takes 0 or 1") from err
    if not 0.0 <= parsed.prob <= 1.0:
        raise ValueError(f"bad RandAugment config {spec!r}: p must lie in [0, 1]")
    if parsed.magnitude_std > 100:
        raise ValueError(f"bad RandAugment config {spec!r}: mstd > 100 (timm's uniform sampling) is not supported")
    return parsed


@dataclass(frozen=True)
class VideoAugmentConfig:
    """Meta's frozen-probe training augmentation (module docstring). ``randaugment=""``: no RandAugment;
    ``erase_prob=0``: no erasing. Invalid values raise ValueError at construction."""

    randaugment: str = "rand-m7-n4-mstd0.5-inc1"
    interpolation: Interpolation = "bicubic"  # resampling of the geometric ops
    fill: tuple[int, int, int] = FILL  # colour that geometric ops move into the frame
    erase_prob: float = 0.25
    erase_min_area: float = 0.02  # fractions of the frame area
    erase_max_area: float = 1 / 3
    erase_min_aspect: float = 0.3  # aspect log-uniform in [min, 1 / min]

    def __post_init__(self) -> None:
        parse_randaugment(self.randaugment)
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation {self.interpolation!r} is not one of {sorted(_RESAMPLE)}")
        if len(self.fill) != 3 or not all(0 <= int(c) <= 255 for c in self.fill):
            raise ValueError(f"fill {self.fill!r} must be three values in [0, 255]")
        if not 0.0 <= self.erase_prob <= 1.0:
            raise ValueError(f"erase_prob {self.erase_prob!r} must lie in [0, 1]")
        if not 0.0 < self.erase_min_area <= self.erase_max_area <= 1.0:
            raise ValueError(f"erase areas {self.erase_min_area!r}..{self.erase_max_area!r} must satisfy "
                             "0 < min <= max <= 1")
        if not 0.0 < self.erase_min_aspect <= 1.0:
            raise ValueError(f"erase_min_aspect {self.erase_min_aspect!r} must lie in (0, 1]")


@dataclass(frozen=True)
class RandAugmentOp:
    """One sampled RandAugment layer: ``arg`` is the op's argument for this clip (None for argument-free ops):
    degrees (Rotate), shear factor, translation as a fraction of the side, kept bits (Posterize*), threshold
    (Solarize*), added value (SolarizeAdd) or enhancement factor (Color/Contrast/Brightness/Sharpness*).
    ``applied`` is the layer's coin (probability ``p``); a layer that is not applied leaves the clip as it is."""

    name: str
    magnitude: float
    arg: float | int | None
    applied: bool = True


@dataclass(frozen=True, eq=False)
class EraseBox:
    """The erase rectangle of a clip and its fill, uint8 ``[height, width, 3]``, the same on every frame."""

    top: int
    left: int
    height: int
    width: int
    fill: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class ClipAugmentParams:
    """Everything random about one clip's augmentation; :func:`apply_params` is deterministic given it."""

    ops: tuple[RandAugmentOp, ...] = ()
    erase: EraseBox | None = None
    interpolation: Interpolation = "bicubic"
    fill: tuple[int, int, int] = FILL


def op_argument(name: str, magnitude: float, negate: bool = False) -> float | int | None:
    """The argument of op ``name`` at ``magnitude`` in [0, 10] (timm's level-to-argument rules; ``negate`` is the
    random sign of the signed ops and is ignored by the others)."""
    level = magnitude / MAX_LEVEL
    sign = -1.0 if negate else 1.0
    base = name.removesuffix("Increasing")
    if name in ("AutoContrast", "Equalize", "Invert"):
        return None
    if name == "Rotate":
        return sign * level * 30.0
    if name in ("ShearX", "ShearY"):
        return sign * level * 0.3
    if name in ("TranslateXRel", "TranslateYRel"):
        return sign * level * TRANSLATE_PCT
    if name == "Posterize":
        return int(level * 4)  # bits kept: 0..4, milder with magnitude; 0 bits: black (module docstring)
    if name == "PosterizeIncreasing":
        return 4 - int(level * 4)  # 4..0, harsher with magnitude
    if name == "Solarize":
        return int(level * 256)  # threshold: 0..256, milder with magnitude
    if name == "SolarizeIncreasing":
        return 256 - int(level * 256)
    if name == "SolarizeAdd":
        return int(level * 110)
    if base in _ENHANCERS:
        if name.endswith("Increasing"):
            return 1.0 + sign * level * 0.9  # 1 is identity; 0.1..1.9
        return level * 1.8 + 0.1
    raise ValueError(f"unknown RandAugment op {name!r}")


def _sample_ops(spec: RandAugmentSpec, rng: np.random.Generator) -> tuple[RandAugmentOp, ...]:
    """``num_layers`` ops drawn with replacement (as Meta's ``np.random.choice``), then per layer: the apply coin,
    the magnitude noise and the sign, always all three so the generator's stream does not depend on outcomes."""
    names = spec.op_names
    picks = rng.integers(0, len(names), size=spec.num_layers)
    ops = []
    for index in picks:
        coin = float(rng.random())
        applied = spec.prob >= 1.0 or coin < spec.prob
        magnitude = spec.magnitude + spec.magnitude_std * float(rng.standard_normal())
        magnitude = min(MAX_LEVEL, max(0.0, magnitude))
        negate = float(rng.random()) < 0.5
        name = names[int(index)]
        ops.append(RandAugmentOp(name, magnitude, op_argument(name, magnitude, negate), applied))
    return tuple(ops)


def _erase_fill(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Per-pixel N(0, 1) noise in ImageNet-normalised space, mapped to uint8 (module docstring)."""
    z = rng.standard_normal((height, width, 3))
    pixels = (np.asarray(IMAGENET_MEAN) + np.asarray(IMAGENET_STD) * z) * 255.0
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def sample_erase_box(cfg: VideoAugmentConfig, height: int, width: int, rng: np.random.Generator) -> EraseBox | None:
    """Meta's cube erase: with probability ``erase_prob``, up to 100 tries of area U(min, max) x frame area and
    aspect log-uniform; a try fits when 0 < h < height and 0 < w < width. None: no erasing (coin or no fitting try)."""
    if float(rng.random()) >= cfg.erase_prob:
        return None
    area = height * width
    log_aspect = (math.log(cfg.erase_min_aspect), -math.log(cfg.erase_min_aspect))
    for _ in range(ERASE_TRIES):
        target_area = float(rng.uniform(cfg.erase_min_area, cfg.erase_max_area)) * area
        aspect = math.exp(float(rng.uniform(*log_aspect)))
        h = int(round(math.sqrt(target_area * aspect)))
        w = int(round(math.sqrt(target_area / aspect)))
        if 0 < h < height and 0 < w < width:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return EraseBox(top, left, h, w, _erase_fill(h, w, rng))
    return None


def sample_params(cfg: VideoAugmentConfig, height: int, width: int, rng: np.random.Generator) -> ClipAugmentParams:
    """All random choices for one ``height x width`` clip, from ``rng`` only: RandAugment layers, then erasing."""
    spec = parse_randaugment(cfg.randaugment)
    ops = _sample_ops(spec, rng) if spec is not None else ()
    erase = sample_erase_box(cfg, height, width, rng) if cfg.erase_prob > 0 else None
    return ClipAugmentParams(ops, erase, cfg.interpolation, tuple(int(c) for c in cfg.fill))


def _lut(name: str, arg: float | int | None) -> np.ndarray | None:
    """The 256-entry table of a pointwise op (the same table as PIL's ImageOps), or None for ops that need PIL."""
    x = np.arange(256, dtype=np.int32)
    if name == "Invert":
        return (255 - x).astype(np.uint8)
    if arg is None:
        return None
    if name in ("Posterize", "PosterizeIncreasing"):
        bits = int(arg)
        return (x & ((0xFF << (8 - bits)) & 0xFF)).astype(np.uint8) if bits < 8 else x.astype(np.uint8)
    if name in ("Solarize", "SolarizeIncreasing"):
        return np.where(x < int(arg), x, 255 - x).astype(np.uint8)
    if name == "SolarizeAdd":
        return np.where(x < 128, np.minimum(255, x + int(arg)), x).astype(np.uint8)
    return None


def _pil_op(img: Image.Image, op: RandAugmentOp, resample: Image.Resampling, fill: tuple[int, int, int]) -> Image.Image:
    """One frame through one non-pointwise op."""
    name, arg = op.name, op.arg
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    assert arg is not None
    if name == "Rotate":
        return img.rotate(arg, resample=resample, fillcolor=fill)
    affine = {"ShearX": (1, arg, 0, 0, 1, 0), "ShearY": (1, 0, 0, arg, 1, 0),
              "TranslateXRel": (1, 0, arg * img.size[0], 0, 1, 0),
              "TranslateYRel": (1, 0, 0, 0, 1, arg * img.size[1])}.get(name)
    if affine is not None:
        return img.transform(img.size, Image.Transform.AFFINE, affine, resample=resample, fillcolor=fill)
    return _ENHANCERS[name.removesuffix("Increasing")](img).enhance(arg)


def apply_params(frames: np.ndarray, params: ClipAugmentParams) -> np.ndarray:
    """Apply one clip's sampled parameters to every frame of uint8 ``[T, H, W, 3]``; a new uint8 array."""
    _check_frames(frames)
    out = np.array(frames, dtype=np.uint8, copy=True, order="C")
    resample = _RESAMPLE[params.interpolation]
    for op in params.ops:
        if not op.applied:
            continue
        lut = _lut(op.name, op.arg)
        if lut is not None:
            out = lut[out]
            continue
        for t in range(out.shape[0]):
            out[t] = np.asarray(_pil_op(Image.fromarray(out[t]), op, resample, params.fill))
    box = params.erase
    if box is not None:
        out[:, box.top:box.top + box.height, box.left:box.left + box.width] = box.fill
    return out


def augment_clip(frames: np.ndarray, cfg: VideoAugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` (already cropped) -> uint8 ``[T, H, W, 3]``: one RandAugment draw and one erase box
    for the whole clip; all randomness from ``rng``. Equals ``apply_params(frames, sample_params(cfg, H, W, rng))``.
    """
    _check_frames(frames)
    return apply_params(frames, sample_params(cfg, frames.shape[1], frames.shape[2], rng))


def _check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
