"""Media access behind one interface: fetch bytes, open a video with decord, PyAV or torchcodec, read images.

All three video backends index frames the same way: frame ``i`` is the i-th frame in presentation
order (packets sorted by pts), so the same clip indices give the same frames in each (tests check
this on a real file with several keyframes and B-frames). decord is the default, as in Meta's
loader (docs/reference.md R-vjepa2-5.3); PyAV covers platforms without decord wheels; torchcodec is optional and needs
system FFmpeg libraries (``seek_mode="exact"``: the approximate mode returned wrong frames on some files).

A reader is opened per clip and closed after it: with decord, a cached reader serving random clips
was slower here (0.091 vs 0.068 s per clip, docs/reference.md R-environment-7). Every failure becomes a
:class:`~pipelines.quarantine.SampleError` with a reason, never an unhandled exception.

Seeks are verified, not trusted: some valid files make a backend's random access return other frames
than a plain sequential decode (decord on H.264 with periodic intra refresh or open GOPs, here). The
seek check (:func:`check_seeks`) compares the two on a few frames of each file; a file whose seeks
differ is read sequentially from the previous keyframe (:meth:`ForwardReader.read_sequential`) or by
the next backend, and one that no backend reads right either way is quarantined as ``bad_seek``.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import itertools
import logging
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import BinaryIO, Literal, Protocol

import numpy as np
import pyarrow.fs as pafs

from core import storage
from pipelines.config import DataConfig
from pipelines.quarantine import SampleError

log = logging.getLogger(__name__)

BACKENDS = ("decord", "pyav", "torchcodec")
# Meta's jpg, jpeg, png (docs/reference.md R-vjepa2-5.4), plus other still formats PIL reads. Not .gif: an
# animated GIF is a video (read by PyAV); in a `kind: image` source a GIF is read as an image (its first frame).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
Media = str | BinaryIO


def is_image(uri: str) -> bool:
    """Meta's rule (docs/reference.md R-vjepa2-5.4): a path ending in an image suffix is read as an image."""
    return PurePosixPath(str(uri)).suffix.lower() in IMAGE_SUFFIXES


class FetchedBytes(io.BytesIO):
    """An object's bytes that remember its URI: the seek check's verdicts are kept per file."""

    def __init__(self, data: bytes, uri: str):
        super().__init__(data)
        self.uri = uri


def s3_object(uri: str) -> tuple[pafs.FileSystem, str, pafs.FileInfo]:
    """Filesystem, path and info of the ``s3://`` object ``uri``; a missing object or a storage failure is
    a :class:`SampleError` (the sample is quarantined, the run goes on)."""
    fs, path = storage.filesystem_for(uri)
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise SampleError("io_error", "fetch", str(exc)) from exc
    if info.type == pafs.FileType.NotFound:
        raise SampleError("missing", "fetch", uri)
    return fs, path, info


def fetch(uri: str, max_bytes: int = 0) -> Media:
    """A local path stays a path (the decoder reads it); an ``s3://`` object is fetched with one GET."""
    if storage.is_s3(uri):
        fs, path, info = s3_object(uri)
        _check_size(info.size, max_bytes)
        try:
            with fs.open_input_stream(path) as stream:
                return FetchedBytes(stream.read(), uri)
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


# How a display-matrix rotation (a phone held upright) is handled, the same in every backend: applied,
# so frames come out as a player shows them. decord's FFmpeg applies it; PyAV's frames are turned here.
# Flips in the matrix are not applied (neither backend does); torchcodec's handling is not checked here.
ROTATION_RULE = "apply"


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """``image`` turned counter-clockwise by ``degrees`` (PyAV's ``VideoFrame.rotation``), to the nearest
    quarter turn."""
    turns = int(round(degrees / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


class VideoReader(Protocol):
    """An open video: frame count, average fps, and random access by presentation-order index."""

    num_frames: int
    fps: float

    def get_frames(self, indices: np.ndarray) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed) as uint8 ``[T, H, W, 3]`` RGB."""
        ...

    def close(self) -> None: ...


def wanted_frames(indices: np.ndarray, num_frames: int) -> np.ndarray:
    """The distinct ``indices`` in order; indices outside the video are a ``decode_error``."""
    wanted = np.unique(np.asarray(indices, dtype=np.int64))
    if len(wanted) and (wanted[0] < 0 or wanted[-1] >= num_frames):
        raise SampleError("decode_error", "decode", f"indices outside [0, {num_frames})")
    return wanted


class ForwardReader:
    """The sequential read mode every backend shares: one seek to a keyframe (or none), then decode forward.

    A backend provides :meth:`keyframes` (indices; empty when it cannot tell) and :meth:`frames_from`
    (``(index, frame)`` in presentation order from a keyframe on). Reading forward is slower than
    random access for frames far apart, but does not depend on how the backend seeks inside a GOP.
    """

    name = ""
    num_frames: int

    def keyframes(self) -> list[int]:
        return []

    def frames_from(self, start: int) -> Iterator[tuple[int, np.ndarray]]:
        raise NotImplementedError

    def read_sequential(self, indices: np.ndarray, from_start: bool = False) -> np.ndarray:
        """Frames at ``indices``, decoded forward from the last keyframe at or before the first of them
        (from the first frame with ``from_start``, or when keyframes are unknown)."""
        indices = np.asarray(indices, dtype=np.int64)
        wanted = wanted_frames(indices, self.num_frames)
        if not len(wanted):
            raise SampleError("decode_error", "decode", "no frame asked for")
        keys = [] if from_start else [k for k in self.keyframes() if k <= wanted[0]]
        want, last = set(wanted.tolist()), int(wanted[-1])
        frames: dict[int, np.ndarray] = {}
        try:
            for index, frame in self.frames_from(max(keys, default=0)):
                if index in want:
                    frames[index] = frame
                if index >= last:
                    break
        except SampleError:
            raise
        except Exception as exc:  # each backend's own errors, as in get_frames
            raise SampleError("decode_error", "decode", f"{self.name}: {exc}") from exc
        missing = want - frames.keys()
        if missing:
            raise SampleError("decode_error", "decode",
                              f"{self.name}: frame {min(missing)} not reached reading forward")
        return np.stack([frames[i] for i in indices.tolist()])


def import_decord():
    """decord, imported after PyAV: decord loads its bundled FFmpeg 4.1 and libvpx 6.4 with RTLD_GLOBAL.

    Imported first, those global symbols capture PyAV's later-resolved libvpx calls, and PyAV's VP9
    encoder (sample world, renders) fails with EINVAL in any process that decoded with decord before.
    """
    import av  # noqa: F401  (load order only)
    import decord

    return decord


class DecordReader(ForwardReader):
    name = "decord"

    def __init__(self, src: Media, threads: int = 1):
        decord = import_decord()

        try:
            self._vr = decord.VideoReader(src, ctx=decord.cpu(0), num_threads=threads)
            self.num_frames = len(self._vr)
            self.fps = float(self._vr.get_avg_fps())
        except Exception as exc:  # decord raises its own DECORDError/RuntimeError for any bad input
            text = " ".join(str(exc).split())
            if "cannot find video stream" in text:  # its FFmpeg 4.1 has no decoder for the stream (AV1, ...)
                text = f"no video stream its bundled FFmpeg 4.1 can decode (unsupported codec?): {text}"
            raise SampleError("unreadable", "open", f"decord: {text}") from exc

    def get_frames(self, indices: np.ndarray) -> np.ndarray:
        try:
            return self._vr.get_batch(np.asarray(indices).tolist()).asnumpy()
        except Exception as exc:
            raise SampleError("decode_error", "decode", f"decord: {exc}") from exc

    def keyframes(self) -> list[int]:
        return [int(k) for k in self._vr.get_key_indices()]

    def frames_from(self, start: int) -> Iterator[tuple[int, np.ndarray]]:
        self._vr.seek(start)
        for index in range(start, self.num_frames):
            yield index, self._vr.next().asnumpy()

    def close(self) -> None:
        del self._vr


class PyAVReader(ForwardReader):
    """PyAV with exact frame access: a packet index (pts in presentation order, keyframes) built at open.

    A requested frame is reached by seeking to the last keyframe at or before it and decoding forward;
    consecutive requests inside one GOP reuse the running decoder instead of seeking again. The seek
    target is the keyframe's dts (MPEG-TS and MPEG-PS demuxers seek by dts: a pts target landed one
    GOP late there); a seek that still lands past the wanted frame is redone from the stream's start.
    Frames are turned by the stream's display rotation, as decord does (:data:`ROTATION_RULE`).
    """

    name = "pyav"

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
        keys: list[tuple[int, int]] = []  # (pts, dts) of each keyframe
        try:
            for packet in self._container.demux(stream):
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None or packet.size == 0:
                    continue
                pts.append(ts)
                if packet.is_keyframe:
                    keys.append((ts, packet.dts if packet.dts is not None else ts))
        except Exception as exc:
            self._container.close()
            raise SampleError("unreadable", "open", f"pyav: {exc}") from exc
        listed = stream.frames
        if listed and len(pts) < listed:
            self._container.close()
            raise SampleError("unreadable", "open", f"truncated: header lists {listed} frames, {len(pts)} readable")
        self._pts = np.sort(np.asarray(pts, dtype=np.int64))
        keys = sorted(keys) or [(int(self._pts[0]), int(self._pts[0]))] if len(self._pts) else []
        self._keys = np.asarray([k[0] for k in keys], dtype=np.int64)
        self._key_dts = np.asarray([k[1] for k in keys], dtype=np.int64)
        self.num_frames = len(self._pts)
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 0.0

    def _decoder(self, key: int | None):
        """Frames from keyframe ``key`` on (its dts as the seek target), or from the start (None)."""
        if key is None:
            self._container.seek(0, backward=True)  # whole container, AV_TIME_BASE: its beginning
        else:
            self._container.seek(int(self._key_dts[key]), stream=self._stream, backward=True, any_frame=False)
        return self._container.decode(self._stream)

    @staticmethod
    def _rgb(frame) -> np.ndarray:
        return rotate(frame.to_ndarray(format="rgb24"), getattr(frame, "rotation", 0) or 0)

    @classmethod
    def _frame_at(cls, decoder, target: int) -> tuple[np.ndarray | None, int | None]:
        """Decode forward to presentation time ``target``: (its RGB frame, or None if the decoder passed it
        or ran out; the last pts seen)."""
        last = None
        for frame in decoder:
            last = frame.pts
            if frame.pts is None or frame.pts < target:
                continue
            if frame.pts > target:
                return None, last
            return cls._rgb(frame), last
        return None, last

    def keyframes(self) -> list[int]:
        return np.searchsorted(self._pts, self._keys).tolist()

    def frames_from(self, start: int) -> Iterator[tuple[int, np.ndarray]]:
        key = np.flatnonzero(self._keys == self._pts[start])
        for frame in self._decoder(int(key[0]) if start and len(key) else None):
            index = int(np.searchsorted(self._pts, frame.pts)) if frame.pts is not None else -1
            if start <= index < self.num_frames and self._pts[index] == frame.pts:
                yield index, self._rgb(frame)

    def get_frames(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        wanted = wanted_frames(indices, self.num_frames)
        frames: dict[int, np.ndarray] = {}
        decoder = None
        last_pts: int | None = None
        try:
            for index in wanted.tolist():
                target = int(self._pts[index])
                key = max(int(np.searchsorted(self._keys, target, side="right")) - 1, 0)
                if decoder is None or last_pts is None or target <= last_pts or self._keys[key] > last_pts:
                    decoder = self._decoder(key)
                image, last_pts = self._frame_at(decoder, target)
                if image is None:  # the seek landed past the frame (or nothing came): from the start
                    decoder = self._decoder(None)
                    image, last_pts = self._frame_at(decoder, target)
                if image is None:
                    raise SampleError("decode_error", "decode", f"frame {index} (pts {target}) not decodable")
                frames[index] = image
        except SampleError:
            raise
        except Exception as exc:
            raise SampleError("decode_error", "decode", f"pyav: {exc}") from exc
        return np.stack([frames[i] for i in indices.tolist()])

    def close(self) -> None:
        self._container.close()


class TorchcodecReader(ForwardReader):
    name = "torchcodec"
    chunk = 32  # frames per forward-read call

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

    def frames_from(self, start: int) -> Iterator[tuple[int, np.ndarray]]:
        """Consecutive ranges: torchcodec decodes on from where it stopped (its public API lists no
        keyframes, so a sequential read starts at frame 0)."""
        for at in range(start, self.num_frames, self.chunk):
            batch = self._dec.get_frames_in_range(at, min(at + self.chunk, self.num_frames)).data.numpy()
            yield from enumerate(batch, at)

    def close(self) -> None:
        del self._dec


# Open failures that another backend may not have: decord's FFmpeg 4.1 lacks codecs and containers
# (AV1, animated GIF) that PyAV's FFmpeg 8 reads, and PyAV rejects some files decord reads.
FALLBACK_REASONS = ("unreadable", "no_video_stream")
TS_SYNC, TS_PACKET, PS_START = 0x47, 188, b"\x00\x00\x01\xba"  # MPEG-TS sync byte and packet, PS pack start


@functools.cache
def installed(backend: str) -> bool:
    module = {"decord": "decord", "pyav": "av", "torchcodec": "torchcodec"}[backend]
    return importlib.util.find_spec(module) is not None


def is_mpeg_stream(src: Media) -> bool:
    """An MPEG transport stream (sync byte every 188 bytes) or program stream (pack start code).

    decord gives wrong frames for these without an error (frames 12 later on a TS; frame 0 twice and
    every later one shifted on a PS, in test renders), so they go to PyAV first.
    """
    try:
        if isinstance(src, str):
            with open(src, "rb") as f:
                head = f.read(TS_PACKET + 1)
        else:
            head = bytes(src.getbuffer()[:TS_PACKET + 1]) if isinstance(src, io.BytesIO) else b""
    except OSError:
        return False
    transport = len(head) > TS_PACKET and head[0] == TS_SYNC and head[TS_PACKET] == TS_SYNC
    return transport or head.startswith(PS_START)


def fallback_chain(backend: str, src: Media | None = None) -> list[str]:
    """``backend`` first, then the other installed backends in :data:`BACKENDS` order; PyAV first for
    an MPEG-TS/PS file when decord was asked for (:func:`is_mpeg_stream`)."""
    chain = [backend] + [b for b in BACKENDS if b != backend and installed(b)]
    if backend == "decord" and "pyav" in chain and src is not None and is_mpeg_stream(src):
        chain.remove("pyav")
        chain.insert(0, "pyav")
    return chain


def _rewind(src: Media) -> None:
    if not isinstance(src, str):
        src.seek(0)


def _open_first(src: Media, chain: list[str], threads: int) -> tuple[VideoReader, int]:
    """The first backend of ``chain`` that opens ``src``, and its position; if none does, one
    :class:`SampleError` with every backend's message."""
    errors: list[SampleError] = []
    for at, name in enumerate(chain):
        _rewind(src)
        try:
            return _READERS[name](src, threads=threads), at
        except SampleError as err:
            if err.reason not in FALLBACK_REASONS:
                raise
            errors.append(err)
        except RuntimeError:  # an installed fallback that cannot run here (torchcodec without FFmpeg)
            if at == 0:
                raise
    raise SampleError(errors[0].reason, "open", "; ".join(e.detail or e.reason for e in errors))


class FallbackReader:
    """A reader that, when its backend fails to decode the file, hands the same request to the next
    backend of the chain that opens it with the same frame count and rate (so the frame plan holds).

    decord opens some files and then fails on every decode (widths such as 16, 24 or 48 pixels, its
    frame buffer is laid out for another size); PyAV reads them. Whichever backend serves a file, frame
    ``i`` is the i-th frame in presentation order, so the clip is the same.

    With ``checks`` (:class:`SeekChecks`), the first read of a file runs the seek check
    (:func:`check_seeks`) down the chain and reads the file the first way that matches a sequential
    decode; the verdict is kept under ``key`` (the file's URI), so later opens of the file go straight
    to that backend and mode, or refuse it (``bad_seek``) without decoding.
    """

    def __init__(self, src: Media, chain: list[str], threads: int, checks: SeekChecks | None = None,
                 key: str | None = None):
        self._src, self._threads, self._checks, self._key = src, threads, checks, key
        self.verdict = checks.get(key) if checks else None
        if self.verdict and self.verdict.status == "bad_seek":
            raise SampleError("bad_seek", "decode", self.verdict.detail)
        if self.verdict:
            chain = [self.verdict.backend] + [b for b in chain if b != self.verdict.backend]
        self._reader, at = _open_first(src, chain, threads)
        self._rest = chain[at + 1:]
        self._sequential = bool(self.verdict and self.verdict.sequential and self.verdict.backend == chain[at])
        self.num_frames, self.fps = self._reader.num_frames, self._reader.fps

    def _others(self) -> Iterator[ForwardReader]:
        """The later backends of the chain that open the file with the same frame count and rate."""
        for name in self._rest:
            _rewind(self._src)
            try:
                other = _READERS[name](self._src, threads=self._threads)
            except (SampleError, RuntimeError):
                continue
            if (other.num_frames, round(other.fps, 3)) != (self.num_frames, round(self.fps, 3)):
                other.close()
                continue
            yield other

    def _switch(self, reader: ForwardReader, sequential: bool) -> None:
        if reader is not self._reader:
            self._reader.close()
            self._reader = reader
        self._sequential = sequential

    def get_frames(self, indices: np.ndarray) -> np.ndarray:
        if self._checks and self.verdict is None:
            self.verdict = self._check()
        read = self._reader.read_sequential if self._sequential else self._reader.get_frames
        try:
            return read(indices)
        except SampleError as first:
            if first.reason != "decode_error":
                raise
            for other in self._others():
                try:
                    frames = other.get_frames(indices)
                except SampleError:
                    other.close()
                    continue
                self._switch(other, sequential=False)
                return frames
            raise

    def _check(self) -> SeekVerdict:
        """Run the seek check on this backend, then on the later ones, until one reads the file right.

        ``ok``: the first backend that decodes the file seeks right; ``fallback``: a backend's seeks
        differed and the file is read another way that matches (that backend sequentially, or a later
        backend); ``bad_seek``: no backend reads it right. A file no backend can decode at all keeps
        its ``decode_error``, and gets no verdict.
        """
        notes: list[str] = []
        errors: list[SampleError] = []
        for reader in itertools.chain([self._reader], self._others()):
            try:
                how, note = check_seeks(reader, self._checks.frames)
            except SampleError as err:
                how, note = None, ""
                errors.append(err)
            notes += [note] if note else []
            if how is None:  # it differs (a note), or cannot decode the frames (an error)
                if reader is not self._reader:
                    reader.close()
                continue
            sequential = how == "sequential"
            self._switch(reader, sequential)
            if notes:
                notes.append(f"read by {reader.name}" + (" sequentially" if sequential else ""))
            verdict = SeekVerdict("fallback" if notes else "ok", reader.name, sequential, "; ".join(notes))
            break
        else:
            if not notes:
                raise errors[0]
            verdict = SeekVerdict("bad_seek", self._reader.name, False, "; ".join(notes))
        self._checks.put(self._key, verdict)
        if verdict.status != "ok":
            log.warning("seek check %s: %s (%s)", self._key or "<bytes>", verdict.status, verdict.detail)
        if verdict.status == "bad_seek":
            raise SampleError("bad_seek", "decode", verdict.detail)
        return verdict

    def close(self) -> None:
        self._reader.close()


# The seek check. Most files seek right; the ones that do not return other frames (or garbage) without
# an error, so random access is compared with a plain decode from the first frame on a few frames.
PIXEL_TOLERANCE = 2  # max |difference| of a sample, as between backends in tests/test_decode.py
SEEK_CHECK_POINTS = 5  # frames compared (after frame 0) when no keyframe after the first is known
SeekStatus = Literal["ok", "fallback", "bad_seek"]


@dataclass(frozen=True)
class SeekVerdict:
    """A file's seek check: its status, the backend that reads it, in sequential mode or not, and why."""

    status: SeekStatus
    backend: str
    sequential: bool
    detail: str = ""


def check_points(keyframes: list[int], num_frames: int, limit: int) -> np.ndarray:
    """The frames the seek check compares, all before ``limit`` (which bounds the decode from the start).

    Around the first keyframe after frame 0 (the first seek that lands anywhere but the start; open
    GOPs and intra refresh go wrong there), the middle of that GOP, and the next keyframe; evenly
    spaced when no such keyframe is known.
    """
    end = min(num_frames, limit)
    if end < 2:
        return np.empty(0, np.int64)
    keys = sorted(k for k in set(keyframes) if 0 < k < end)
    if keys:
        after = keys[1] if len(keys) > 1 else end - 1
        points = np.asarray([keys[0] - 1, keys[0], keys[0] + 1, (keys[0] + after) // 2, after])
    else:
        points = np.linspace(0, end - 1, SEEK_CHECK_POINTS + 1)[1:]
    return np.unique(np.clip(points.astype(np.int64), 0, end - 1))


def frames_differ(frames: np.ndarray, reference: np.ndarray, points: np.ndarray) -> str:
    """'' when ``frames`` match ``reference`` within :data:`PIXEL_TOLERANCE`, else where and by how much."""
    if frames.shape != reference.shape:
        return f"shape {frames.shape[1:]} instead of {reference.shape[1:]}"
    diff = np.abs(frames.astype(np.int16) - reference).reshape(len(points), -1).max(axis=1)
    bad = np.flatnonzero(diff > PIXEL_TOLERANCE)
    return f"frame {points[bad[0]]} differs by up to {diff[bad[0]]}" if len(bad) else ""


def check_seeks(reader: ForwardReader, limit: int) -> tuple[Literal["seek", "sequential"] | None, str]:
    """How ``reader`` reads right: by seeking, by reading forward from the previous keyframe, or neither
    (None); with a note saying what differed. The truth is a forward decode from the first frame."""
    points = check_points(reader.keyframes(), reader.num_frames, limit)
    if not len(points):
        return "seek", ""
    truth = reader.read_sequential(points, from_start=True)
    sought = reader.get_frames(points[::-1])[::-1]  # backwards: every frame is a seek, as in a random clip
    seek_note = frames_differ(sought, truth, points)
    if not seek_note:
        return "seek", ""
    # one read per frame, each from its own previous keyframe: as a clip anywhere in the file would be read
    keyed = np.concatenate([reader.read_sequential(points[i:i + 1]) for i in range(len(points))])
    keyed_note = frames_differ(keyed, truth, points)
    note = f"{reader.name} seeks: {seek_note}"
    if not keyed_note:
        return "sequential", note
    return None, f"{note}; {reader.name} reading from the previous keyframe: {keyed_note}"


class SeekChecks:
    """The seek check's setting and this process's verdicts by file URI.

    Non-ok verdicts (rare) are all kept; ok ones in a bounded LRU (:attr:`kept`), so a worker over a
    dataset larger than that re-checks a file it has not seen for a while instead of growing without
    bound.
    """

    kept = 1 << 16

    def __init__(self, frames: int = 0):
        self.frames = frames  # 0: no check; else the check decodes at most this many frames from the start
        self._ok: OrderedDict[str, SeekVerdict] = OrderedDict()
        self._other: dict[str, SeekVerdict] = {}

    def get(self, key: str | None) -> SeekVerdict | None:
        if key is None:
            return None
        if key in self._ok:
            self._ok.move_to_end(key)
            return self._ok[key]
        return self._other.get(key)

    def put(self, key: str | None, verdict: SeekVerdict) -> None:
        if key is None:
            return
        if verdict.status != "ok":
            self._other[key] = verdict
            return
        self._ok[key] = verdict
        if len(self._ok) > self.kept:
            self._ok.popitem(last=False)


# One per process: pipelines.clips.make_clip opens videos with open_video(src, backend, threads), so the
# setting reaches it here; the decode actors and validate-data set it from data.seek_check_frames.
_seek_checks = SeekChecks()


def configure_seek_check(frames: int) -> SeekChecks:
    """Check seeks on every file :func:`open_video` reads in this process (``frames`` 0: no check); the
    verdicts are kept while the setting stays the same."""
    global _seek_checks
    if frames != _seek_checks.frames:
        _seek_checks = SeekChecks(frames)
    return _seek_checks


def seek_verdict(uri: str) -> SeekVerdict | None:
    """This process's seek verdict for ``uri``, if the file was checked."""
    return _seek_checks.get(uri)


def media_key(src: Media) -> str | None:
    """The URI a verdict is kept under: a local path, or the URI of fetched bytes."""
    return src if isinstance(src, str) else getattr(src, "uri", None)


_READERS = {"decord": DecordReader, "pyav": PyAVReader, "torchcodec": TorchcodecReader}


def open_video(src: Media, backend: str = "decord", threads: int = 1, fallback: bool = True) -> VideoReader:
    """Open ``src`` (a local path or an in-memory file) with ``backend``, falling back to the other
    installed backends when it cannot open or decode the file, or seeks wrong in it (the seek check, when
    :func:`configure_seek_check` turned it on); ``fallback=False``: that backend only, no check."""
    if backend not in _READERS:
        raise ValueError(f"unknown decoder {backend!r}; choose one of {list(BACKENDS)}")
    if not fallback:
        return _READERS[backend](src, threads=threads)
    checks = _seek_checks if _seek_checks.frames else None
    return FallbackReader(src, fallback_chain(backend, src), threads, checks, media_key(src))


# PIL's own bomb limit raises at twice Image.MAX_IMAGE_PIXELS (178,956,970 pixels in Pillow 13); the
# project's default limit (data.max_image_pixels) is that same number, checked on the header's size.
DEFAULT_MAX_IMAGE_PIXELS = DataConfig.max_image_pixels
# Modes whose samples are wider than 8 bits: PIL's convert("RGB") clips them at 255 (a 16-bit PNG comes
# out all white), so they are scaled to 8 bits here instead.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# Ranges a wide image's samples are taken to span, smallest first: the first that holds every sample
# is scaled to 0-255 (an "I" or "F" image does not say its bit depth; 0-1 is for "F" only; the I;16
# modes are always 0-65535).
SAMPLE_RANGES = (1.0, 255.0, 65535.0)


def _allow_pixels(max_pixels: int) -> None:
    """Let PIL open what ``data.max_image_pixels`` allows: its own global bomb check would refuse more.

    Only ever raised (never lowered), so concurrent readers with other limits stay safe; 0 lifts PIL's.
    """
    from PIL import Image

    current = Image.MAX_IMAGE_PIXELS
    if current is None:
        return
    if max_pixels <= 0:
        Image.MAX_IMAGE_PIXELS = None
    elif max_pixels > 2 * current:
        Image.MAX_IMAGE_PIXELS = max_pixels // 2 + 1


def wide_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale a high-bit-depth grayscale image to uint8 by the range its mode (or its samples) implies."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    ranges = (65535.0,) if mode.startswith("I;16") else SAMPLE_RANGES if mode == "F" else SAMPLE_RANGES[1:]
    top = next((r for r in ranges if low >= 0 and high <= r), 0.0)
    if top:
        scaled = values * (255.0 / top)
    else:  # negative or beyond 16 bits: stretch what is there
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def image_to_rgb(img) -> np.ndarray:
    """A PIL image of any mode as uint8 ``[H, W, 3]``: wide grayscale scaled, alpha dropped (as Meta's
    ``convert("RGB")`` does), premultiplied modes un-premultiplied by PIL first."""
    if img.mode in WIDE_MODES:
        gray = wide_to_uint8(np.asarray(img), img.mode)
        return np.repeat(gray[..., None], 3, axis=-1)
    if img.mode == "La":  # PIL has no La -> RGB conversion
        img = img.convert("LA")
    return np.asarray(img.convert("RGB"))


def read_image(src: Media, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """An image as uint8 ``[H, W, 3]`` RGB, from any file PIL can open (the first frame of an animation).

    An image over ``max_pixels`` (``data.max_image_pixels``; 0: no limit) is refused from its header,
    before any pixel is decoded (reason ``too_large``); anything PIL cannot decode is ``bad_image``.
    """
    from PIL import Image

    _allow_pixels(max_pixels)
    try:
        with warnings.catch_warnings():
            # DecompressionBombWarning and palette-transparency notes: the limit is checked below.
            warnings.simplefilter("ignore")
            with Image.open(src) as img:
                width, height = img.size
                if max_pixels > 0 and width * height > max_pixels:
                    raise SampleError("too_large", "open", f"{width}x{height} = {width * height} pixels > "
                                                           f"data.max_image_pixels {max_pixels}")
                return image_to_rgb(img)
    except SampleError:
        raise
    except (Image.DecompressionBombError, MemoryError) as exc:
        raise SampleError("too_large", "open", f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # PIL's plugins raise OSError, ValueError, SyntaxError, struct.error, ...
        raise SampleError("bad_image", "open", f"{type(exc).__name__}: {exc}") from exc
