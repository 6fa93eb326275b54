"""Stage 1: split pool videos into scenes and drop the short ones (docs/reference.md R-curation-1.2 steps 1-2).

The paper cuts YT1B with PySceneDetect and discards scenes shorter than 4 s. ``detector: fixed`` is
the fallback for footage where shot detection is not wanted (or PySceneDetect is not installed): cut
every ``stride_s`` seconds, the short tail joining the previous scene.

Scenes are frame ranges ``[start_frame, end_frame)``; seconds are derived from the stream's fps.
A video that cannot be fetched, opened or decoded, or has no frames, is recorded in the quarantine
with the data pipeline's reason (pipelines/quarantine.py), as is every dropped short scene
(``scene_too_short``), so the counts always add up.
"""

from __future__ import annotations

import io
from typing import Any

from core import storage
from curation.config import SceneConfig
from curation.frames import probe
from pipelines.quarantine import RejectRecord

STAGE = "scenes"
TOO_SHORT = "scene_too_short"


def fixed_cuts(num_frames: int, fps: float, stride_s: float) -> list[tuple[int, int]]:
    """``[0, s), [s, 2s), ...`` with stride ``s = round(stride_s * fps)``; a tail shorter than the stride
    joins the last full scene (so no sliver is produced only to be dropped)."""
    stride = max(1, round(stride_s * fps))
    starts = list(range(0, num_frames, stride))
    if len(starts) > 1 and num_frames - starts[-1] < stride:
        starts.pop()
    return [(s, e) for s, e in zip(starts, [*starts[1:], num_frames])]


def content_cuts(uri: str, threshold: float) -> list[tuple[int, int]]:
    """PySceneDetect's ContentDetector over the whole video (PyAV backend, so s3:// works via bytes)."""
    from scenedetect import ContentDetector, SceneManager
    from scenedetect.backends.pyav import VideoStreamAv

    source: Any = uri if not storage.is_s3(uri) else io.BytesIO(storage.read_bytes(uri))
    video = VideoStreamAv(source, name=uri.rsplit("/", 1)[-1], suppress_output=True)
    manager = SceneManager()
    manager.add_detector(ContentDetector(threshold=threshold))
    manager.detect_scenes(video=video)
    scenes = manager.get_scene_list(start_in_scene=True)
    return [(start.frame_num, end.frame_num) for start, end in scenes]


def split_video(row: dict[str, Any], cfg: SceneConfig, source: str = "yt1b",
                backend: str = "decord") -> tuple[list[dict[str, Any]], list[RejectRecord]]:
    """Scenes of one pool video (manifest ``row``) and the quarantine records of what was dropped."""
    from pipelines.quarantine import SampleError

    uri = row["uri"]
    try:
        num_frames, fps = probe(uri, backend)
    except SampleError as exc:
        return [], [RejectRecord(uri, source, exc.reason, STAGE, f"{exc.stage}: {exc.detail}")]
    if num_frames <= 0 or fps <= 0:
        return [], [RejectRecord(uri, source, "too_few_frames", STAGE, f"{num_frames} frames at {fps} fps")]
    try:
        cuts = (fixed_cuts(num_frames, fps, cfg.stride_s) if cfg.detector == "fixed"
                else content_cuts(uri, cfg.threshold))
    except Exception as exc:  # PySceneDetect/PyAV failing on a file is data, not a bug: quarantine it
        return [], [RejectRecord(uri, source, "decode_error", STAGE, f"scene detection: {type(exc).__name__}: {exc}")]
    if not cuts:  # PySceneDetect returns [] when it finds no cut: the whole video is one scene
        cuts = [(0, num_frames)]
    scenes, rejects = [], []
    for start, end in cuts:
        end = min(end, num_frames)
        start_s, end_s = start / fps, end / fps
        if end_s - start_s < cfg.min_scene_s:
            rejects.append(RejectRecord(uri, source, TOO_SHORT, STAGE,
                                        f"scene [{start_s:.2f}, {end_s:.2f}) s < {cfg.min_scene_s} s"))
            continue
        scenes.append({
            "uri": uri, "label": row.get("label"), "duration_s": num_frames / fps, "fps": fps,
            "num_frames": num_frames, "bytes": row.get("bytes"),
            "start_frame": start, "end_frame": end, "start_s": start_s, "end_s": end_s,
        })
    return scenes, rejects
