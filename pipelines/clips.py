"""From one clip request (a manifest row plus a window seed) to one augmented uint8 clip.

Frame sampling follows Meta's loader (docs/reference.md R-vjepa2-5.3): the frame step comes from the video's average
fps, a random window of ``frames_per_clip x step`` source frames is drawn, and short videos are padded
with their last frame. Rows with scene bounds (``start_s``/``end_s``) sample inside the scene only.
Images are repeated to fill the clip (docs/reference.md R-vjepa2-5.4). Every random choice (window, crop, flip) comes
from ``np.random.default_rng(window_seed)``, so a request decodes to the same clip on any worker and
with any backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipelines import decode, transforms
from pipelines.config import ClipConfig, DataConfig
from pipelines.quarantine import SampleError


@dataclass(frozen=True)
class ClipRequest:
    uri: str
    window_seed: int
    kind: str = "video"  # video | image (a video source's image files are read as images too)
    start_s: float | None = None
    end_s: float | None = None


def frame_step(video_fps: float, target_fps: float) -> int:
    """docs/reference.md R-vjepa2-5.3: step = ceil(avg_fps) / fps, truncated (7 for 30 fps at 4 fps); at least 1."""
    if video_fps <= 0 or target_fps <= 0:
        return 1
    # round first: torchcodec reports e.g. 15.000000000000002, which ceil would turn into 16
    return max(1, int(math.ceil(round(video_fps, 3)) / target_fps))


def scene_frames(num_frames: int, fps: float, start_s: float | None, end_s: float | None) -> tuple[int, int]:
    """The frame range [start, stop) of a row's scene bounds (the whole video without bounds)."""
    start = 0 if start_s is None or math.isnan(start_s) else max(0, int(math.floor(start_s * fps)))
    stop = num_frames if end_s is None or math.isnan(end_s) else min(num_frames, int(math.ceil(end_s * fps)))
    if stop <= start:
        raise SampleError("empty_window", "sample",
                          f"scene [{start_s}, {end_s}] s holds no frame of {num_frames} at {fps} fps")
    return start, stop


def clip_indices(start: int, stop: int, step: int, frames_per_clip: int, rng: np.random.Generator) -> np.ndarray:
    """``frames_per_clip`` frame indices inside [start, stop), Meta's random-window rule (docs/reference.md
    R-vjepa2-5.3)."""
    length = stop - start
    clip_len = frames_per_clip * step
    if length > clip_len:
        end = int(rng.integers(clip_len, length))  # end ~ U[clip_len, len)
        begin = end - clip_len
        indices = np.clip(np.linspace(begin, end, num=frames_per_clip), begin, end - 1)
    else:
        # Short video: linspace(0, len, len // step) padded with the last frame (docs/reference.md R-vjepa2-5.3).
        have = length // step
        indices = np.concatenate([np.linspace(0, length, num=have), np.full(frames_per_clip - have, length)])
        indices = np.clip(indices, 0, length - 1)
    return indices.astype(np.int64) + start


def plan(reader: decode.VideoReader, request: ClipRequest, clip: ClipConfig, min_frames: int,
         rng: np.random.Generator) -> np.ndarray:
    if reader.num_frames < min_frames:
        raise SampleError("too_few_frames", "open", f"{reader.num_frames} frame(s) < {min_frames}")
    start, stop = scene_frames(reader.num_frames, reader.fps, request.start_s, request.end_s)
    return clip_indices(start, stop, frame_step(reader.fps, clip.fps), clip.frames_per_clip, rng)


def make_clip(request: ClipRequest, cfg: DataConfig, out: np.ndarray | None = None) -> np.ndarray:
    """Fetch, decode and augment one request: uint8 [frames_per_clip, crop, crop, 3] (into ``out`` if given)."""
    rng = np.random.default_rng(request.window_seed)
    media = decode.fetch(request.uri, cfg.max_video_bytes)
    if request.kind == "image" or decode.is_image(request.uri):
        one = transforms.augment(decode.read_image(media, cfg.max_image_pixels)[None], cfg.clip, rng)
        if out is None:
            return np.repeat(one, cfg.clip.frames_per_clip, axis=0)
        out[...] = one
        return out
    reader = decode.open_video(media, cfg.decoder, cfg.decoder_threads)
    try:
        frames = reader.get_frames(plan(reader, request, cfg.clip, cfg.min_frames, rng))
    finally:
        reader.close()
    return transforms.augment(frames, cfg.clip, rng, out)


def eval_clip_indices(video_frames: int, video_fps: float, frames: int, fps: float,
                 start: float | None = None) -> np.ndarray:
    """Frame ids of ``frames`` frames at ``fps`` from ``start`` seconds (None: centred in the video);
    ids past the end repeat the last frame (Meta pads short videos the same way, docs/reference.md R-vjepa2-5.3)."""
    if video_frames <= 0 or video_fps <= 0:
        raise ValueError(f"video reports {video_frames} frames at {video_fps} fps")
    duration = video_frames / video_fps
    if start is None:
        start = max(0.0, (duration - frames / fps) / 2.0)
    times = start + np.arange(frames) / fps
    return np.clip(np.floor(times * video_fps).astype(np.int64), 0, video_frames - 1)
