"""Writing the sample world: video encoding (byte-reproducible), manifests and ``world.json``."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import av
import numpy as np
import pyarrow as pa

from pipelines.manifest import write_manifest

if TYPE_CHECKING:
    from pipelines.sample_world.plan import Spec

MANIFESTS = ("manifest.parquet", "manifest.csv")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoInfo:
    """What a manifest row needs to know about a written video."""

    num_frames: int
    fps: float
    duration_s: float
    bytes: int


# ---------------------------------------------------------------------------- encoding

Codec = Literal["h264", "vp9"]


def write_video(path: Path, frames: Iterable[np.ndarray], size: tuple[int, int], fps: Fraction,
                codec: Codec = "h264", gop: int = 48, bframes: int = 2, crf: int = 28) -> VideoInfo:
    """Encode RGB frames to MP4/H.264 or WebM/VP9, byte-for-byte reproducibly.

    Reproducible: one encoder thread, ``+bitexact`` muxing (no random WebM segment id, no muxer
    version tag) and no creation time. H.264 keeps x264's scene-cut keyframes, so a hard cut usually
    starts a GOP, as in real uploads.
    """
    container = av.open(str(path), "w", options={"fflags": "+bitexact"})
    stream = container.add_stream("libx264" if codec == "h264" else "libvpx-vp9", rate=fps)
    stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
    stream.codec_context.thread_count = 1
    stream.codec_context.gop_size = gop
    if codec == "h264":
        stream.codec_context.max_b_frames = bframes
        stream.options = {"preset": "superfast", "crf": str(crf)}
    else:
        stream.options = {"deadline": "realtime", "cpu-used": "8", "crf": str(crf), "b": "0", "row-mt": "0"}
    count = 0
    with container:
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            count += 1
        container.mux(stream.encode())
    return VideoInfo(count, float(fps), count / float(fps), path.stat().st_size)


def probe_video(path: Path) -> VideoInfo:
    """Frame count (from the packets), fps and size of an existing video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for packet in container.demux(stream) if packet.size)
        fps = float(stream.average_rate)
    return VideoInfo(count, fps, count / fps, path.stat().st_size)


@dataclass
class Built:
    """What was written for one spec: manifest fields, scenes and content provenance."""

    spec: Spec
    info: VideoInfo
    scenes: list[tuple[float, float, bool]]
    content: list[str]


# ---------------------------------------------------------------------------- manifests and ground truth


def write_manifests(out: Path, built: list[Built]) -> dict[str, int]:
    """Both manifest formats per folder; returns the row count per folder."""
    folders: dict[str, list[Built]] = {}
    for item in built:
        folders.setdefault(manifest_folder(item.spec.folder), []).append(item)
    for folder, items in folders.items():
        table = pa.table({
            "uri": [str(out / b.spec.relpath) for b in items],
            "label": [b.spec.label for b in items],
            "duration_s": [b.info.duration_s for b in items],
            "fps": [b.info.fps for b in items],
            "num_frames": [b.info.num_frames for b in items],
            "bytes": [b.info.bytes for b in items],
        })
        for name in MANIFESTS:
            write_manifest(table, str(out / folder / name))
    return {folder: len(items) for folder, items in sorted(folders.items())}


def manifest_folder(folder: str) -> str:
    """ImageNet keeps one manifest for all its class folders, as Meta's lists do."""
    return "sources/imagenet" if folder.startswith("sources/imagenet") else folder
