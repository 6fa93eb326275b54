"""Check a manifest before spending GPU hours: open and decode one clip per row, report bad rows by reason.

``vjepa2-ray validate-data --manifest URI [--source NAME] --rejects OUT.parquet``
``vjepa2-ray validate-data --episodes DIR --rejects OUT.parquet`` (robot episodes)

Every row goes through the training path (fetch, open, frame plan, decode, crop) with its own
window seed; a failing row becomes a reject record (uri, source, reason, stage) in OUT.parquet.
Every video also gets training's seek check (``data.seek_check_frames``, ``--seek-check-frames``): the
summary counts the rows whose file seeks right, the ones read another way (listed, with how), and the
``bad_seek`` ones (rejects).
Prints good/bad counts per reason and exits 0 whatever the media look like; only a manifest that
cannot be read or parsed, or breaks a row rule training enforces (a null ``uri``, a non-integer
``label``, a negative or non-finite ``weight``), is an error (exit 2, naming the file and line or row),
and so is storage that cannot be reached or written (naming the URI). The manifest is
read one row group at a time, so a 100M-row manifest validates in bounded memory.

With ``--episodes`` the rows are a robot dataset's episodes, and each goes through the checks a build
applies (pipelines/episodes/convert.py: its steps file, ``bad_state``, ``video_shorter_than_states``,
``episode_too_short`` for a clip of ``--frames`` at ``--fps``, the video's own reasons).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import repeat
from pathlib import PurePosixPath

from core.entry import module_main
from pipelines import decode
from pipelines.clips import ClipRequest, make_clip
from pipelines.config import ClipConfig, DataConfig
from pipelines.episodes.clips import EpisodeDataConfig
from pipelines.episodes.convert import ConvertOptions, validate_dataset
from pipelines.quarantine import Quarantine, RejectRecord, SampleError, write_rejects
from pipelines.sources import ManifestRows

log = logging.getLogger(__name__)

ROWS_PER_TASK = 32
PROGRESS_EVERY_S = 10.0
FALLBACKS_LISTED = 20  # files read another way, named in the report (all of them are in the log)
Row = tuple[int, str, float | None, float | None]


@dataclass
class Checked:
    """What a batch of rows (or the whole manifest) gave: reject records, and the seek check's
    verdicts (rows per status; how each file read another way is read)."""

    rejects: list[RejectRecord] = field(default_factory=list)
    seeks: Counter[str] = field(default_factory=Counter)
    fallbacks: dict[str, str] = field(default_factory=dict)

    def add(self, other: Checked) -> None:
        self.seeks += other.seeks
        for uri, how in other.fallbacks.items():
            if len(self.fallbacks) < FALLBACKS_LISTED:
                self.fallbacks.setdefault(uri, how)


def check_rows(rows: list[Row], cfg: DataConfig, kind: str, source: str) -> Checked:
    """Decode one clip per row, with the seek check on; the reject records of the rows that fail, and
    each video row's seek verdict."""
    decode.configure_seek_check(cfg.seek_check_frames)  # this process's, as in a decode actor
    checked = Checked()
    for row, uri, start_s, end_s in rows:
        request = ClipRequest(uri, window_seed=row, kind=kind, start_s=start_s, end_s=end_s)
        try:
            make_clip(request, cfg)
        except SampleError as err:
            checked.rejects.append(RejectRecord.from_error(err, uri, source, sample_id=row))
        verdict = decode.seek_verdict(uri)
        if verdict:
            checked.seeks[verdict.status] += 1
            if verdict.status == "fallback":
                checked.fallbacks[uri] = verdict.detail
    return checked


def iter_rows(rows: ManifestRows) -> Iterator[list[Row]]:
    """The manifest's rows in task-sized chunks, one row group at a time."""
    for group in range(len(rows.group_rows)):
        table = rows.read_group(group, ["uri", "start_s", "end_s"])
        first = int(rows.group_offsets[group])
        uris = table.column("uri").to_pylist()
        starts = table.column("start_s").to_pylist()
        ends = table.column("end_s").to_pylist()
        for at in range(0, len(uris), ROWS_PER_TASK):
            yield [(first + i, uris[i], starts[i], ends[i]) for i in range(at, min(at + ROWS_PER_TASK, len(uris)))]


def validate(manifest: str, rejects_out: str, *, source: str = "", cfg: DataConfig | None = None,
             kind: str = "video", workers: int = 1) -> tuple[int, Quarantine, Checked]:
    """Validate every row of ``manifest``; returns (rows checked, quarantine with the rejects and counts,
    the seek check's counts and the first files read another way)."""
    cfg = cfg or DataConfig()
    source = source or PurePosixPath(manifest).parent.name
    rows = ManifestRows(manifest)  # a ManifestError (unreadable manifest) propagates: exit 2
    rows.check()  # the row rules training applies (uri, label, weight), before any file is decoded
    write_rejects([], rejects_out)  # an unwritable --rejects (no bucket, a directory) fails now, not at the end
    quarantine = Quarantine(rejects_out, single_file=True)
    summary = Checked()
    done, last = 0, time.perf_counter()
    # spawn, not fork: a forked child must not inherit the parent's S3 client threads
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 else None
    try:
        chunks = iter_rows(rows)
        results = (pool.map(check_rows, chunks, repeat(cfg), repeat(kind), repeat(source)) if pool
                   else (check_rows(chunk, cfg, kind, source) for chunk in chunks))
        for checked in results:
            for record in checked.rejects:
                quarantine.add(record)
            summary.add(checked)
            done = min(done + ROWS_PER_TASK, rows.num_rows)
            if time.perf_counter() - last > PROGRESS_EVERY_S:
                last = time.perf_counter()
                log.info("validate-data: %d/%d rows, %d bad", done, rows.num_rows, quarantine.total)
    finally:
        if pool:
            pool.shutdown()
    quarantine.flush()  # nothing bad: the empty table written above says "checked, nothing bad"
    return rows.num_rows, quarantine, summary


def report(manifest: str, total: int, quarantine: Quarantine, rejects_out: str, checked: Checked,
           unit: str = "rows", extra: list[str] | None = None) -> str:
    bad = quarantine.total
    lines = [f"{manifest}: {total} {unit}, {total - bad} good, {bad} bad"]
    width = max((len(r) for r in quarantine.by_reason()), default=0)
    lines += [f"  {reason:<{width}}  {n}" for reason, n in sorted(quarantine.by_reason().items())]
    if checked.seeks:
        seeks = checked.seeks
        lines.append(f"seek check (video rows): {seeks['ok']} seek ok, {seeks['fallback']} fallback (kept, read "
                     f"sequentially or by another backend), {seeks['bad_seek']} bad_seek")
        lines += [f"  fallback  {uri}: {how}" for uri, how in checked.fallbacks.items()]
        if seeks["fallback"] > len(checked.fallbacks):
            lines.append(f"  ... {seeks['fallback'] - len(checked.fallbacks)} more fallback rows (see the log)")
    lines += extra or []
    lines.append(f"rejects: {rejects_out}")
    return "\n".join(lines)


def validate_episodes(args: argparse.Namespace) -> str:
    """``--episodes DIR``: the report of every episode of a robot dataset through the build's checks."""
    options = ConvertOptions(clip_frames=args.frames or EpisodeDataConfig().frames,
                             clip_fps=args.fps or EpisodeDataConfig().fps, decoder=args.decoder)
    total, quarantine, trimmed = validate_dataset(args.episodes, args.rejects, options)
    return report(args.episodes, total, quarantine, args.rejects, Checked(), unit="episodes",
                  extra=[f"video one frame short of the steps (the last step is dropped): {trimmed}"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    clip = ClipConfig()
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--manifest", help="manifest (Parquet or Meta CSV), local or s3://")
    inputs.add_argument("--episodes", help="robot episode dataset (a directory with episodes.parquet), local or s3://: "
                                           "every episode's steps, states, length and video are checked")
    parser.add_argument("--rejects", required=True, help="rejects table to write (.parquet, local or s3://)")
    parser.add_argument("--source", default="", help="source name for the records (default: manifest's folder)")
    parser.add_argument("--kind", choices=("video", "image"), default="video",
                        help="image: every row is an image (image suffixes always are, as in Meta's loader)")
    parser.add_argument("--decoder", choices=decode.BACKENDS, default="decord",
                        help="first backend tried (the others follow if it cannot read a file)")
    parser.add_argument("--frames", type=int, default=0,
                        help=f"frames in the test clip (default {clip.frames_per_clip}; --episodes: the clip an "
                             f"episode must hold, default {EpisodeDataConfig().frames})")
    parser.add_argument("--fps", type=float, default=0.0,
                        help=f"frame rate the test clip is sampled at (default {clip.fps:g}; --episodes "
                             f"{EpisodeDataConfig().fps:g})")
    parser.add_argument("--crop", type=int, default=64, help="crop size of the test clip (small: faster)")
    parser.add_argument("--min-frames", type=int, default=DataConfig().min_frames,
                        help="videos with fewer frames are rejected as too_few_frames")
    parser.add_argument("--max-image-pixels", type=int, default=DataConfig().max_image_pixels,
                        help="larger images are rejected as too_large (0: no limit)")
    parser.add_argument("--seek-check-frames", type=int, default=DataConfig().seek_check_frames,
                        help="the seek check decodes at most this many frames of each video from the start (0: off)")
    parser.add_argument("--workers", type=int, default=1, help="processes decoding in parallel")


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if args.episodes:
        print(validate_episodes(args))
        log.info("validate-data: %s in %.1f s", args.episodes, time.perf_counter() - t0)
        return 0
    base = DataConfig()
    cfg = replace(base, decoder=args.decoder, min_frames=args.min_frames, max_image_pixels=args.max_image_pixels,
                  seek_check_frames=args.seek_check_frames,
                  clip=replace(base.clip, frames_per_clip=args.frames or base.clip.frames_per_clip,
                               fps=args.fps or base.clip.fps, crop_size=args.crop))
    total, quarantine, checked = validate(args.manifest, args.rejects, source=args.source, cfg=cfg,
                                          kind=args.kind, workers=args.workers)
    print(report(args.manifest, total, quarantine, args.rejects, checked))
    log.info("validate-data: %d rows in %.1f s", total, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(module_main(__name__))
