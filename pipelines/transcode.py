"""Re-encode a manifest's videos with a short GOP at training resolution (optional, for pre-sharded data).

``vjepa2-ray transcode --manifest IN --out DIR [--gop 16] [--short-side 256] [--out-manifest URI]``

Random-clip decoding is dominated by keyframe spacing: every clip decodes from the keyframe before
its first frame (docs/reference.md R-environment-3: 6.0 -> 9.6 clips/s with decord on a GOP-122 clip re-encoded with
``-g 16 -bf 0``). This writes H.264 copies with a keyframe every ``--gop`` frames, no B-frames, and
the short side scaled to ``--short-side`` (never upscaled), keeping fps and frame count, so labels,
scene bounds and every other manifest column stay valid. The new manifest points at the copies.
Outputs are named by a hash of the source URI, so a rerun skips finished files; rows that cannot be
decoded are quarantined (``--rejects``) and left out of the new manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import tempfile
import time
from fractions import Fraction
from pathlib import PurePosixPath

import pyarrow as pa

from core import storage
from core.entry import module_main
from pipelines import decode
from pipelines.manifest import read_manifest, write_manifest
from pipelines.quarantine import Quarantine, RejectRecord, SampleError

log = logging.getLogger(__name__)


def output_name(uri: str) -> str:
    """``<stem>-<hash of the source uri>.mp4``: unique per source file, stable across reruns."""
    digest = hashlib.sha1(uri.encode()).hexdigest()[:12]
    return f"{PurePosixPath(uri).stem}-{digest}.mp4"


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Short side to ``short_side`` (no upscaling), both sides even as yuv420p needs."""
    scale = min(1.0, short_side / min(width, height)) if short_side else 1.0
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def transcode_file(src: decode.Media, dst: str, gop: int, short_side: int, crf: int,
                   preset: str) -> tuple[int, float]:
    """Decode ``src`` sequentially and write ``dst`` (a local path); returns (frames, fps)."""
    import av

    try:
        container = av.open(src)
    except Exception as exc:
        raise SampleError("unreadable", "open", f"pyav: {exc}") from exc
    with container:
        if not container.streams.video:
            raise SampleError("no_video_stream", "open")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        width, height = scaled_size(stream.codec_context.width, stream.codec_context.height, short_side)
        frames = 0
        try:
            with av.open(dst, "w") as out:
                video = out.add_stream("libx264", rate=rate)
                video.width, video.height, video.pix_fmt = width, height, "yuv420p"
                video.gop_size = gop
                video.options = {"crf": str(crf), "preset": preset,
                                 "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"}
                for frame in container.decode(stream):
                    image = frame.reformat(width=width, height=height, format="yuv420p")
                    image.pts, image.time_base = frames, 1 / Fraction(rate)  # constant frame rate
                    out.mux(video.encode(image))
                    frames += 1
                out.mux(video.encode())
        except SampleError:
            raise
        except Exception as exc:
            raise SampleError("decode_error", "decode", f"pyav: {exc}") from exc
    if frames == 0:
        raise SampleError("too_few_frames", "decode", "no frame decoded")
    return frames, float(rate)


MEDIA_COLUMNS = ("uri", "fps", "num_frames", "duration_s", "bytes")


def transcode(manifest: str, out_dir: str, out_manifest: str, *, gop: int = 16, short_side: int = 256,
              crf: int = 23, preset: str = "veryfast", rejects: str | None = None) -> tuple[pa.Table, Quarantine]:
    """Transcode every video row (image rows are kept as they are); returns the new manifest and the rejects."""
    table = read_manifest(manifest)
    quarantine = Quarantine(rejects)
    columns = {name: table.column(name).to_pylist() for name in MEDIA_COLUMNS}
    keep = []
    source = PurePosixPath(manifest).parent.name
    t0 = time.perf_counter()
    for row, uri in enumerate(columns["uri"]):
        if decode.is_image(uri):
            keep.append(row)
            continue
        target = storage.join(out_dir, output_name(uri))
        try:
            frames, fps = _transcode_one(uri, target, gop, short_side, crf, preset)
        except SampleError as err:
            quarantine.add(RejectRecord.from_error(err, uri, source, sample_id=row))
            continue
        fs, path = storage.filesystem_for(target)
        for name, value in zip(MEDIA_COLUMNS, (target, fps, frames, frames / fps, fs.get_file_info(path).size)):
            columns[name][row] = value
        keep.append(row)
        log.info("transcode %d/%d: %s -> %s (%d frames, %.1f s elapsed)", row + 1, table.num_rows, uri, target,
                 frames, time.perf_counter() - t0)
    for name in MEDIA_COLUMNS:
        table = table.set_column(table.schema.get_field_index(name), name,
                                 pa.array(columns[name], table.schema.field(name).type))
    result = table.take(pa.array(keep, pa.int64()))
    write_manifest(result, out_manifest)
    quarantine.flush()
    return result, quarantine


def _transcode_one(uri: str, target: str, gop: int, short_side: int, crf: int, preset: str) -> tuple[int, float]:
    if storage.exists(target):  # finished by an earlier run
        reader = decode.open_video(decode.fetch(target), "pyav")
        reader.close()
        return reader.num_frames, reader.fps
    media = decode.fetch(uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "out.mp4")
        frames, fps = transcode_file(media, local, gop, short_side, crf, preset)
        with open(local, "rb") as f:
            storage.write_bytes(target, f.read())
    return frames, fps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="input manifest (Parquet or Meta CSV)")
    parser.add_argument("--out", required=True, help="output folder for the copies (local or s3://)")
    parser.add_argument("--out-manifest", default="", help="default: <out>/manifest.parquet")
    parser.add_argument("--gop", type=int, default=16, help="keyframe interval in frames")
    parser.add_argument("--short-side", type=int, default=256, help="0 keeps the resolution")
    parser.add_argument("--crf", type=int, default=23, help="x264 constant rate factor (lower: better, larger)")
    parser.add_argument("--x264-preset", dest="preset", default="veryfast",
                        help="x264 speed/size preset (ultrafast ... veryslow); not a model preset")
    parser.add_argument("--rejects", default="", help="rejects table (.parquet) for rows that fail")


def run(args: argparse.Namespace) -> int:
    out_manifest = args.out_manifest or storage.join(args.out, "manifest.parquet")
    result, quarantine = transcode(args.manifest, args.out, out_manifest, gop=args.gop, short_side=args.short_side,
                                   crf=args.crf, preset=args.preset, rejects=args.rejects or None)
    print(f"transcode: {result.num_rows} videos -> {out_manifest}; {quarantine.total} rejected"
          + (f" ({args.rejects})" if args.rejects and quarantine.total else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(module_main(__name__))
