"""Middle frames: which frame represents a scene, decoding it, and cutting it to the embedder's square.

The paper embeds "the middle frame of each clip" (docs/reference.md R-curation-1.2 step 3); a target video is one
clip spanning the whole video. Frames are resized (shorter side) and centre-cropped to the embedder's
input size on the CPU decode workers, so only small uint8 squares travel to the embedding actors.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from PIL import Image

# Quarantine reason for a scene whose middle frame carries no image (one flat colour, e.g. a fade).
BLANK = "blank_frame"


def middle_frame(start_frame: int, end_frame: int) -> int:
    """Index of the middle frame of ``[start_frame, end_frame)``."""
    return (start_frame + max(end_frame, start_frame + 1) - 1) // 2


def square(frame: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` (antialiased) and centre-crop to ``size x size``."""
    h, w = frame.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    resized = np.asarray(Image.fromarray(frame).resize((nw, nh), Image.BILINEAR))
    top, left = (nh - size) // 2, (nw - size) // 2
    return resized[top : top + size, left : left + size]


def probe(uri: str, backend: str = "decord") -> tuple[int, float]:
    """``(num_frames, fps)`` of a video (local or s3://); raises ``SampleError`` with a reason."""
    from pipelines.decode import fetch, open_video

    reader = open_video(fetch(uri), backend)
    try:
        return reader.num_frames, reader.fps
    finally:
        reader.close()


def read_middle_frames(uris: Sequence[str], indices: Sequence[int], size: int,
                       backend: str = "decord") -> tuple[np.ndarray, list[tuple[str, str] | None]]:
    """Decode frame ``indices[i]`` of ``uris[i]`` for every i, opening each video once.

    Returns ``[N, size, size, 3]`` uint8 (zeros where decoding failed) and, per item, ``None`` or the
    ``(reason, detail)`` that makes it a quarantine record.
    """
    from pipelines.decode import fetch, open_video
    from pipelines.quarantine import SampleError

    out = np.zeros((len(uris), size, size, 3), np.uint8)
    errors: list[tuple[str, str] | None] = [None] * len(uris)
    by_video: dict[str, list[int]] = defaultdict(list)
    for i, uri in enumerate(uris):
        by_video[uri].append(i)
    for uri, items in by_video.items():
        wanted = sorted({int(indices[i]) for i in items})
        try:
            reader = open_video(fetch(uri), backend)
            try:
                frames = reader.get_frames(np.asarray(wanted))
            finally:
                reader.close()
        except SampleError as exc:
            for i in items:
                errors[i] = (exc.reason, f"middle frame, {exc.stage}: {exc.detail}")
            continue
        row_of = {idx: row for row, idx in enumerate(wanted)}
        for i in items:
            frame = frames[row_of[int(indices[i])]]
            if frame.max() == frame.min():
                errors[i] = (BLANK, "middle frame is one flat colour")
                continue
            out[i] = square(frame, size)
    return out, errors
