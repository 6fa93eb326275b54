"""Media access behind one interface: fetch bytes, open a video with decord, PyAV or torchcodec, read images.

All three video backends index frames the same way: frame ``i`` is the i-th frame in presentation
order (packets sorted by pts), so the same clip indices give the same frames in each (tests check
this on a real file with several keyframes and B-frames). decord is the default, as in Meta's
loader (docs/reference.md R-vjepa2-5.3); PyAV covers platforms without decord wheels; torchcodec is optional and needs
system FFmpeg libraries (``seek_mode="exact"``: the approximate mode returned wrong frames on some files).

A reader is opened per clip and closed after it: with decord, a cached reader serving random clips
was slower here (0.091 vs 0.068 s per clip, docs/reference.md R-environment-7). Every failure becomes a
:class:`~pipelines.quarantine.SampleError` with a reason, never an unhandled exception.
"""

from __future__ import annotations

import io
import os
from pathlib import PurePosixPath
from typing import BinaryIO, Protocol

import numpy as np
import pyarrow.fs as pafs

from core import storage
from pipelines.quarantine import SampleError

BACKENDS = ("decord", "pyav", "torchcodec")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
Media = str | BinaryIO


def is_image(uri: str) -> bool:
    """Meta's rule (docs/reference.md R-vjepa2-5.4): a path ending in an image suffix is read as an image."""
    return PurePosixPath(str(uri)).suffix.lower() in IMAGE_SUFFIXES


def fetch(uri: str, max_bytes: int = 0) -> Media:
    """A local path stays a path (the decoder reads it); an ``s3://`` object is fetched with one GET."""
    if storage.is_s3(uri):
        fs, path = storage.filesystem_for(uri)
        try:
            info = fs.get_file_info(path)
        except OSError as exc:
            raise SampleError("io_error", "fetch", str(exc)) from exc
        if info.type == pafs.FileType.NotFound:
            raise SampleError("missing", "fetch", uri)
        _check_size(info.size, max_bytes)
        try:
            with fs.open_input_stream(path) as stream:
                return io.BytesIO(stream.read())
        except OSError as exc:
            raise SampleError("io_error", "fetch", str(exc)) from exc
    try:
        size = os.stat(uri).st_size
    except FileNotFoundError as exc:
        raise SampleError("missing", "fetch", uri) from exc
    except OSError as exc:
        raise SampleError("io_error", "fetch", str(exc)) from exc
    _check_size(size, max_bytes)
    return uri


def _check_size(size: int | None, max_bytes: int) -> None:
    if size == 0:
        raise SampleError("empty", "fetch", "0 bytes")
    if max_bytes and size and size > max_bytes:
        # docs/reference.md R-vjepa2-5.3: Meta's filter_long_videos skips files above a size limit.
        raise SampleError("too_large", "fetch", f"{size} bytes > {max_bytes}")


class VideoReader(Protocol):
    """An open video: frame count, average fps, and random access by presentation-order index."""

    num_frames: int
    fps: float

    def get_frames(self, indices: np.ndarray) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 ``[T, H, W, 3]`` RGB."""
        ...

    def close(self) -> None: ...


def import_decord():
    """decord, imported after PyAV: decord loads its bundled FFmpeg 4.1 and libvpx 6.4 with RTLD_GLOBAL.

    Imported first, those global symbols capture PyAV's later-resolved libvpx calls, and PyAV's VP9
    encoder (sample world, renders) fails with EINVAL in any process that decoded with decord before.
    """
    import av  # noqa: F401  (load order only)
    import decord

    return decord


class DecordReader:
    def __init__(self, src: Media, threads: int = 1):
        decord = import_decord()

        try:
            self._vr = decord.VideoReader(src, ctx=decord.cpu(0), num_threads=threads)
            self.num_frames = len(self._vr)
            self.fps = float(self._vr.get_avg_fps())
        except Exception as exc:  # decord raises its own DECORDError/RuntimeError for any bad input
            raise SampleError("unreadable", "open", f"decord: {exc}") from exc

    def get_frames(self, indices: np.ndarray) -> np.ndarray:
        try:
            return self._vr.get_batch(np.asarray(indices).tolist()).asnumpy()
        except Exception as exc:
            raise SampleError("decode_error", "decode", f"decord: {exc}") from exc

    def close(self) -> None:
        del self._vr


class PyAVReader:
    """PyAV with exact frame access: a packet index (pts in presentation order, keyframes) built at open.

    A requested frame is reached by seeking to the last keyframe at or before it and decoding forward;
    consecutive requests inside one GOP reuse the running decoder instead of seeking again.
    """

    def __init__(self, src: Media, threads: int = 1):
        import av

        try:
            self._container = av.open(src, mode="r")
        except Exception as exc:
            raise SampleError("unreadable", "open", f"pyav: {exc}") from exc
        if not self._container.streams.video:
            self._container.close()
            raise SampleError("no_video_stream", "open")
        self._stream = stream = self._container.streams.video[0]
        stream.codec_context.thread_count = threads
        if threads != 1:
            stream.thread_type = "AUTO"
        pts: list[int] = []
        keys: list[int] = []
        try:
            for packet in self._container.demux(stream):
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None or packet.size == 0:
                    continue
                pts.append(ts)
                if packet.is_keyframe:
                    keys.append(ts)
        except Exception as exc:
            self._container.close()
            raise SampleError("unreadable", "open", f"pyav: {exc}") from exc
        listed = stream.frames
        if listed and len(pts) < listed:
            self._container.close()
            raise SampleError("unreadable", "open", f"truncated: header lists {listed} frames, {len(pts)} readable")
        self._pts = np.sort(np.asarray(pts, dtype=np.int64))
        self._keys = np.sort(np.asarray(keys or pts[:1], dtype=np.int64))
        self.num_frames = len(self._pts)
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 0.0

    def get_frames(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        wanted = np.unique(indices)
        if len(wanted) and (wanted[0] < 0 or wanted[-1] >= self.num_frames):
            raise SampleError("decode_error", "decode", f"indices outside [0, {self.num_frames})")
        frames: dict[int, np.ndarray] = {}
        decoder = None
        last_pts: int | None = None
        try:
            for index in wanted.tolist():
                target = int(self._pts[index])
                key = int(self._keys[max(np.searchsorted(self._keys, target, side="right") - 1, 0)])
                if decoder is None or last_pts is None or target <= last_pts or key > last_pts:
                    self._container.seek(key, stream=self._stream, backward=True, any_frame=False)
                    decoder = self._container.decode(self._stream)
                for frame in decoder:
                    last_pts = frame.pts
                    if frame.pts is None or frame.pts < target:
                        continue
                    if frame.pts > target:
                        raise SampleError("decode_error", "decode", f"frame {index} (pts {target}) not decodable")
                    frames[index] = frame.to_ndarray(format="rgb24")
                    break
                else:
                    raise SampleError("decode_error", "decode", f"stream ended before frame {index}")
        except SampleError:
            raise
        except Exception as exc:
            raise SampleError("decode_error", "decode", f"pyav: {exc}") from exc
        return np.stack([frames[i] for i in indices.tolist()])

    def close(self) -> None:
        self._container.close()


class TorchcodecReader:
    def __init__(self, src: Media, threads: int = 1):
        try:
            from torchcodec.decoders import VideoDecoder
        except (ImportError, RuntimeError, OSError) as exc:
            raise RuntimeError(
                "decoder 'torchcodec' is not usable here: pip install torchcodec, and install system FFmpeg "
                f"libraries (e.g. apt-get install ffmpeg); or use data.decoder=decord|pyav ({exc})"
            ) from exc
        if not isinstance(src, str):
            src = src.read()
        try:
            self._dec = VideoDecoder(src, seek_mode="exact", num_ffmpeg_threads=threads, dimension_order="NHWC")
            meta = self._dec.metadata
            self.num_frames = int(meta.num_frames or 0)
            self.fps = float(meta.average_fps or 0.0)
        except Exception as exc:
            raise SampleError("unreadable", "open", f"torchcodec: {exc}") from exc

    def get_frames(self, indices: np.ndarray) -> np.ndarray:
        try:
            return self._dec.get_frames_at(indices=np.asarray(indices).tolist()).data.numpy()
        except Exception as exc:
            raise SampleError("decode_error", "decode", f"torchcodec: {exc}") from exc

    def close(self) -> None:
        del self._dec


_READERS = {"decord": DecordReader, "pyav": PyAVReader, "torchcodec": TorchcodecReader}


def open_video(src: Media, backend: str = "decord", threads: int = 1) -> VideoReader:
    """Open ``src`` (a local path or an in-memory file) with ``backend``."""
    if backend not in _READERS:
        raise ValueError(f"unknown decoder {backend!r}; choose one of {list(BACKENDS)}")
    return _READERS[backend](src, threads=threads)


def read_image(src: Media) -> np.ndarray:
    """An image as uint8 ``[H, W, 3]`` RGB; grayscale, palette, RGBA and CMYK are converted."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(src) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise SampleError("bad_image", "open", str(exc)) from exc
