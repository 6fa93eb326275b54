"""The sample world's labelled probe sets: a motion set and an appearance set (docs/sample_world.md).

Both show one photo cut-out moving over a photo texture (the sample world's SSv2-like ``objects`` look).

- ``motion``: ten classes that differ only in how the object moves: the four directions, rotation
  clockwise and anticlockwise, approach (it grows) and retreat (it shrinks), speeding up and slowing
  down (along a random direction). Object photo and background are drawn at random, independently of
  the class. Every path is centred in time: at the middle frame the position, size and angle have the
  same distribution in every class, so a probe that sees that one frame (:data:`MIDDLE`) is at chance, 10 %.
- ``appearance``: six classes, which photo the object is cut from; the motion is any of the ten above,
  drawn at random, so only what the object looks like tells the classes apart.

Each clip is :data:`FRAMES` frames at :data:`FPS` fps (2 s), :data:`SIZE` px square, H.264; a probe at
4 fps with 8 frames sees the whole clip. Splits: ``train`` and ``val`` clips are drawn from different
seeds; per class the motion set has 60 / 30 clips (600 / 300), the appearance set 100 / 50 (600 /
300), so val holds at least 270 clips and a 95 % interval on val accuracy is at most +-5.7 points.

Layout under ``<world>/probes/<set>/``: ``train.parquet``, ``val.parquet`` (and Meta's
``<path> <label>`` lists ``train.csv``, ``val.csv``), ``labels.json`` (the label map: class names by
label index), the clips in ``clips/<split>/<class>/``. Deterministic per seed.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from pipelines.manifest import write_manifest
from pipelines.sample_world.plan import OBJECTS, SURFACES
from pipelines.sample_world.render import NATIVE, pan_frames, photo, sprite, tinted
from pipelines.sample_world.writers import write_video

PROBES_DIR = "probes"
FRAMES, FPS, SIZE = 16, 8, 128
MIDDLE = FRAMES // 2  # the frame at which every class looks alike (a single-frame probe's frame)
SETS = ("motion", "appearance")
MOTION_CLASSES = ("moves_right", "moves_left", "moves_down", "moves_up", "rotates_clockwise",
                  "rotates_anticlockwise", "approaches", "retreats", "speeds_up", "slows_down")
APPEARANCE_CLASSES = OBJECTS  # the photo the object is cut from
CLASSES = {"motion": MOTION_CLASSES, "appearance": APPEARANCE_CLASSES}
PER_CLASS = {"motion": {"train": 60, "val": 30}, "appearance": {"train": 100, "val": 50}}
SPLIT_SEED = {"train": 0, "val": 1}
_DIRECTIONS = {"moves_right": (1.0, 0.0), "moves_left": (-1.0, 0.0), "moves_down": (0.0, 1.0),
               "moves_up": (0.0, -1.0)}


@dataclass(frozen=True)
class ClipPlan:
    """One clip to render: its class in its set, the motion it shows, what it is made of."""

    set_name: str
    split: str
    label: int
    motion: str
    obj: str
    background: str
    seed: tuple[int, ...]

    @property
    def relpath(self) -> str:
        return f"clips/{self.split}/{CLASSES[self.set_name][self.label]}/{self.seed[-1]:04d}.mp4"


def plan_set(set_name: str, split: str, seed: int, per_class: int | None = None) -> list[ClipPlan]:
    """Every clip of one split of one set (``per_class`` clips of each class, default
    :data:`PER_CLASS`), in label order."""
    rng = np.random.default_rng((seed, SPLIT_SEED[split], SETS.index(set_name)))
    classes = CLASSES[set_name]
    plans, count = [], 0
    for label in range(len(classes)):
        for _ in range(PER_CLASS[set_name][split] if per_class is None else per_class):
            motion = classes[label] if set_name == "motion" else MOTION_CLASSES[int(rng.integers(len(MOTION_CLASSES)))]
            obj = classes[label] if set_name == "appearance" else OBJECTS[int(rng.integers(len(OBJECTS)))]
            background = SURFACES[int(rng.integers(len(SURFACES)))]
            plans.append(ClipPlan(set_name, split, label, motion, obj, background,
                                  (seed, SPLIT_SEED[split], SETS.index(set_name), count)))
            count += 1
    return plans


def motion_path(motion: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Per frame ``(x, y, scale, angle)``: position as a share of the frame, size factor, degrees. Every
    quantity equals, at frame ``n // 2``, a value drawn the same way for every class (:data:`MIDDLE`)."""
    t = (np.arange(n) - n // 2) / (n - 1)  # 0 at frame n // 2, a span of 1 over the clip
    centre = rng.uniform(0.35, 0.65, 2)
    scale, angle = rng.uniform(0.85, 1.15), rng.uniform(0.0, 360.0)
    xy, scales, angles = np.tile(centre, (n, 1)), np.full(n, scale), np.full(n, angle)
    travel = rng.uniform(0.35, 0.5)
    if motion in _DIRECTIONS:
        xy = xy + travel * t[:, None] * np.asarray(_DIRECTIONS[motion])
    elif motion.startswith("rotates"):
        sweep = rng.uniform(120.0, 200.0) * (-1.0 if motion == "rotates_clockwise" else 1.0)  # PIL: + is anticlockwise
        angles = angle + sweep * t
    elif motion in ("approaches", "retreats"):
        scales = scale * np.exp((1.0 if motion == "approaches" else -1.0) * rng.uniform(0.7, 0.9) * t)
    else:  # speeds_up / slows_down: one distance, covered slowly then fast, or fast then slowly
        heading = rng.uniform(0.0, 2 * math.pi)
        u = np.linspace(0.0, 1.0, n)
        progress = u**2 if motion == "speeds_up" else 1.0 - (1.0 - u) ** 2
        xy = xy + travel * (progress - progress[n // 2])[:, None] * np.asarray([math.cos(heading), math.sin(heading)])
    return np.column_stack([xy, scales, angles])


def clip_frames(plan: ClipPlan) -> np.ndarray:
    """The clip's RGB frames ``[FRAMES, SIZE, SIZE, 3]``, before encoding."""
    rng = np.random.default_rng(plan.seed)
    size = (SIZE, SIZE)
    side = int(SIZE * rng.uniform(0.32, 0.42))
    cut, mask = sprite(photo(plan.obj, "all"), rng, side)
    backdrop = next(pan_frames(tinted(photo(plan.background, "all"), rng), size, 1, NATIVE, rng, (0.5, 0.8)))
    return paste_path(backdrop, cut, mask, side, motion_path(plan.motion, FRAMES, rng))


def paste_path(backdrop: np.ndarray, cut: Image.Image, mask: Image.Image, side: int, path: np.ndarray) -> np.ndarray:
    """Frames of the cut-out (alpha ``mask``, ``side`` px at scale 1) over ``backdrop`` along ``path`` (per
    frame ``(x, y, scale, angle)`` as :func:`motion_path` gives; the anticipation set shares it)."""
    height, width_px = backdrop.shape[:2]
    frames = []
    for x, y, scale, angle in path:
        canvas = Image.fromarray(backdrop)
        width = max(4, round(side * scale))
        obj = cut.rotate(angle, Image.Resampling.BILINEAR).resize((width, width))
        alpha = mask.rotate(angle, Image.Resampling.BILINEAR).resize((width, width))
        canvas.paste(obj, (round(x * width_px - width / 2), round(y * height - width / 2)), alpha)
        frames.append(np.asarray(canvas))
    return np.stack(frames)


def render_clip(plan: ClipPlan, out: Path) -> dict:
    """Render and write one clip; its manifest row."""
    target = out / plan.relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    info = write_video(target, clip_frames(plan), (SIZE, SIZE), Fraction(FPS), gop=FRAMES)
    return {"uri": str(target), "label": plan.label, "duration_s": info.duration_s, "fps": info.fps,
            "num_frames": info.num_frames, "bytes": info.bytes, "motion": plan.motion, "object": plan.obj}


def _render_all(args: tuple[list[ClipPlan], str]) -> list[dict]:
    plans, world = args
    return [render_clip(p, Path(world) / PROBES_DIR / p.set_name) for p in plans]


def build_probe_sets(world: Path, seed: int = 0, workers: int = 2,
                     per_class: dict[str, int] | None = None) -> dict:
    """Both sets under ``<world>/probes``; returns their summary (clips per split, classes).
    ``per_class``: clips of each class by split, instead of :data:`PER_CLASS` (small sets for tests).
    One process pool renders every clip of both sets."""
    splits = [(set_name, split) for set_name in SETS for split in ("train", "val")]
    plans = [p for set_name, split in splits for p in plan_set(set_name, split, seed, (per_class or {}).get(split))]
    chunks = [plans[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(min(workers, len(plans))) as pool:
        rendered = [(plan, row) for chunk, rows in zip(chunks, pool.map(_render_all, [(c, str(world)) for c in chunks]))
                    for plan, row in zip(chunk, rows, strict=True)]
    summary: dict = {}
    for set_name, split in splits:
        out = Path(world) / PROBES_DIR / set_name
        chosen = sorted((row for plan, row in rendered if (plan.set_name, plan.split) == (set_name, split)),
                        key=lambda r: r["uri"])
        table = pa.table({k: [r[k] for r in chosen] for k in chosen[0]})
        write_manifest(table, str(out / f"{split}.parquet"))
        write_manifest(table, str(out / f"{split}.csv"))
        (out / "labels.json").write_text(json.dumps(list(CLASSES[set_name]), indent=1) + "\n")
        summary.setdefault(set_name, {"dir": str(out), "classes": len(CLASSES[set_name])})[split] = len(chosen)
    return summary
