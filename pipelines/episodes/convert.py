"""Converting a source's episodes into the schema: the checks and bookkeeping every reader shares.

A reader (DROID, LeRobot) yields one ``(uri, load)`` pair per episode; ``load()`` returns a
:class:`Candidate` or raises :class:`~pipelines.quarantine.SampleError`. :func:`convert` runs the
checks below on each candidate, writes the good ones (steps parquet; the video stays where it is) and
turns every bad one into a reject record with its reason, so a broken episode is counted and listed,
never silently dropped (Meta's loader retries another index instead: docs/reference.md R-robots-1.1)
and never stops the build. The checks:

- ``bad_state``: NaN or inf in a state, a state that never changes (a fill value), a gripper outside
  [0, 1] (beyond :data:`GRIPPER_SLACK`);
- ``video_shorter_than_states``: the video lacks more than one of the frames the steps index; exactly
  one short (DROID's MP4s can be one frame shorter than the h5, docs/reference.md R-robots-2) drops the
  steps past the video's end instead;
- ``episode_too_short``: not more steps than one clip spans (Meta's loader needs more raw frames than
  ``frames x step``);
- the video's own reasons (``missing``, ``unreadable``, ``no_video_stream``, ``decode_error``) from the
  project's decoders, which open each video and decode its first and last frame once per file.

Failure episodes (``success`` False) are kept or filtered by ``keep_failures``; either way they are
counted in the report. The validation split is a hash of the episode id (:func:`is_validation`), so it
holds across rebuilds, machines and subsets of the same dataset.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from core import storage
from pipelines import decode
from pipelines.episodes.schema import (
    EpisodeInfo,
    EpisodeSchemaError,
    EpisodeSteps,
    begin_dataset,
    finish_dataset,
    frame_step,
    read_index,
    read_steps,
    steps_table,
    steps_uri,
    video_path,
    write_episode,
)
from pipelines.quarantine import Quarantine, RejectRecord, SampleError, write_rejects

log = logging.getLogger(__name__)

GRIPPER_SLACK = 0.01  # recorded gripper positions overshoot [0, 1] by sensor noise
REJECTS_FILE = "rejects/rejects.parquet"  # not directly in the dataset dir: the index is its one Parquet part
REPORT_FILE = "build_report.json"


@dataclass
class Candidate:
    """One episode as a reader found it, before the checks. ``time_base`` says where its timestamps came
    from; ``fetched_bytes`` what reading it cost in transfers (an S3 h5 is fetched whole)."""

    info: EpisodeInfo
    steps: EpisodeSteps
    time_base: str
    fetched_bytes: int = 0


Loader = Callable[[], Candidate]


@dataclass(frozen=True)
class ConvertOptions:
    """What every reader shares. ``clip_frames`` at ``clip_fps`` is the clip training samples (Meta's 8
    at 4 fps); an episode must be longer than one clip's raw window to be kept."""

    keep_failures: bool = True  # Meta's loader trains on failure trajectories too
    clip_frames: int = 8
    clip_fps: float = 4.0
    check_videos: bool = True
    decoder: str = "pyav"
    val_fraction: float = 0.0
    split_salt: str = ""


@dataclass
class ConvertReport:
    """What a build did, written next to the index as ``build_report.json`` and printed."""

    out: str
    source: str
    episodes: int = 0
    steps: int = 0
    val_episodes: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    failures_kept: int = 0
    failures_filtered: int = 0
    trimmed_last_frame: int = 0
    time_bases: dict[str, int] = field(default_factory=dict)
    fetched_bytes: int = 0
    rejects: str = ""


def is_validation(episode_id: str, fraction: float, salt: str = "") -> bool:
    """Whether ``episode_id`` is held out: sha256 of ``salt:id`` read as a number in [0, 1) below
    ``fraction``. Not Python's ``hash`` (salted per process), so every worker and rerun agrees."""
    digest = hashlib.sha256(f"{salt}:{episode_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def split_episodes(infos: list[EpisodeInfo], fraction: float, salt: str = "") -> tuple[list[EpisodeInfo],
                                                                                    list[EpisodeInfo]]:
    """``(train, validation)`` by :func:`is_validation`, each in index order."""
    val = [is_validation(i.episode_id, fraction, salt) for i in infos]
    return [i for i, v in zip(infos, val) if not v], [i for i, v in zip(infos, val) if v]


def check_states(state: np.ndarray) -> None:
    """``bad_state`` for states no pose can be derived from (see the module docstring)."""
    bad_rows = np.flatnonzero(~np.isfinite(state).all(axis=1))
    if len(bad_rows):
        raise SampleError("bad_state", "sample", f"NaN or inf in {len(bad_rows)} state row(s), first {bad_rows[0]}")
    if len(state) > 1 and np.ptp(state, axis=0).max() == 0:
        raise SampleError("bad_state", "sample", f"the state never changes over {len(state)} steps: "
                                                 f"{state[0].round(4).tolist()}")
    grip = state[:, 6]
    if grip.min() < -GRIPPER_SLACK or grip.max() > 1 + GRIPPER_SLACK:
        raise SampleError("bad_state", "sample", f"gripper spans [{grip.min():.3g}, {grip.max():.3g}], "
                                                 "not [0, 1] (0 open, 1 closed): map the source's range")


def check_rows(steps: EpisodeSteps, uri: str) -> None:
    """``bad_state`` for rows the schema refuses (shapes, times not increasing, frames going back): one
    episode's defect, so a quarantine, where the same defect in a written file is the dataset's error."""
    try:
        steps_table(steps, uri)
    except EpisodeSchemaError as exc:
        raise SampleError("bad_state", "sample", str(exc)) from exc


def check_length(steps: int, fps: float, options: ConvertOptions) -> None:
    """``episode_too_short`` unless the episode holds more raw steps than one clip's window."""
    window = options.clip_frames * frame_step(fps, options.clip_fps)
    if steps <= window:
        raise SampleError("episode_too_short", "sample",
                          f"{steps} steps at {fps:g} Hz; a clip of {options.clip_frames} frames at "
                          f"{options.clip_fps:g} fps spans {window}, so more than {window} are needed")


class VideoChecks:
    """Each video file opened once per build (a LeRobot v3 file holds many episodes): its frame count,
    or the :class:`SampleError` it gave."""

    def __init__(self, decoder: str):
        self.decoder = decoder
        self._seen: dict[str, int | SampleError] = {}
        self.fetched_bytes = 0

    def frames(self, uri: str) -> int:
        if uri not in self._seen:
            try:
                self._seen[uri] = self._probe(uri)
            except SampleError as err:
                self._seen[uri] = err
        seen = self._seen[uri]
        if isinstance(seen, SampleError):
            raise seen
        return seen

    def _probe(self, uri: str) -> int:
        src = decode.fetch(uri)
        if isinstance(src, decode.FetchedBytes):
            self.fetched_bytes += len(src.getbuffer())
        reader = decode.open_video(src, backend=self.decoder)
        try:
            if reader.num_frames < 1:
                raise SampleError("decode_error", "decode", "no frames")
            reader.get_frames(np.array([0, reader.num_frames - 1]))
            return reader.num_frames
        finally:
            reader.close()


def fit_to_video(steps: EpisodeSteps, video_frames: int) -> tuple[EpisodeSteps, bool]:
    """The steps whose frames the video has, and whether one frame was missing (then the steps on it are
    dropped); more than one missing is ``video_shorter_than_states``."""
    needed = int(steps.frame_index.max()) + 1
    if video_frames >= needed:
        return steps, False
    if video_frames < needed - 1:
        raise SampleError("video_shorter_than_states", "sample",
                          f"the steps index frames up to {needed - 1}, the video has {video_frames}")
    keep = steps.frame_index < video_frames
    ext = steps.extrinsics[keep] if steps.extrinsics is not None else None
    return EpisodeSteps(steps.frame_index[keep], steps.timestamp_s[keep], steps.state[keep], ext), True


def check_episode(info: EpisodeInfo, steps: EpisodeSteps, dataset_dir: str, videos: VideoChecks,
                  options: ConvertOptions, where: str) -> tuple[EpisodeSteps, bool]:
    """Every check of the module docstring on one episode (``where`` names it in errors): the steps to
    keep, and whether the video's missing last frame trimmed them; a failed check raises its
    :class:`SampleError`."""
    check_states(steps.state)
    check_rows(steps, where)
    trimmed = False
    if options.check_videos:
        steps, trimmed = fit_to_video(steps, videos.frames(video_path(dataset_dir, info)))
    check_length(len(steps), info.fps, options)
    return steps, trimmed


def validate_dataset(dataset_dir: str, rejects_out: str, options: ConvertOptions) -> tuple[int, Quarantine, int]:
    """``vjepa2-ray validate-data --episodes``: every episode of a written dataset through the checks a
    build applies, plus its steps file being readable (``missing``, ``bad_state``). Returns (episodes,
    the quarantine with the rejects, episodes whose video is one frame short). An unreadable index is
    the dataset's error (:class:`EpisodeSchemaError`, exit 2), as an unreadable manifest is."""
    infos = read_index(dataset_dir)
    write_rejects([], rejects_out)  # an unwritable --rejects fails now, not after every video was opened
    quarantine = Quarantine(rejects_out, single_file=True)
    videos = VideoChecks(options.decoder)
    trimmed = 0
    for row, info in enumerate(infos):
        uri = steps_uri(dataset_dir, info.episode_id)
        try:
            if not storage.exists(uri):
                raise SampleError("missing", "open", f"steps file of episode {info.episode_id!r} not found")
            try:
                steps = read_steps(dataset_dir, info.episode_id, info.num_steps)
            except EpisodeSchemaError as exc:
                raise SampleError("bad_state", "open", str(exc)) from exc
            trimmed += check_episode(info, steps, dataset_dir, videos, options, uri)[1]
        except SampleError as err:
            quarantine.add(RejectRecord.from_error(err, uri, info.source or "", sample_id=row))
    quarantine.flush()
    return len(infos), quarantine, trimmed


def convert(episodes: Iterable[tuple[str, Loader]], out: str, source: str, options: ConvertOptions) -> ConvertReport:
    """Check and write every episode of ``episodes`` under ``out``; return (and write) the report."""
    storage.check_writable(out)
    begin_dataset(out)
    report = ConvertReport(out=out, source=source, rejects=storage.join(out, REJECTS_FILE))
    quarantine = Quarantine(report.rejects, single_file=True)
    videos = VideoChecks(options.decoder)
    time_bases: Counter[str] = Counter()
    infos: list[EpisodeInfo] = []
    seen: set[str] = set()
    for uri, load in episodes:
        try:
            cand = load()
            report.fetched_bytes += cand.fetched_bytes
            info, steps = cand.info, cand.steps
            if info.episode_id in seen:
                raise SampleError("duplicate_episode", "sample", info.episode_id)
            if info.success is False and not options.keep_failures:
                report.failures_filtered += 1
                continue
            steps, trimmed = check_episode(info, steps, out, videos, options, uri)
            if trimmed:
                log.info("%s: the video is one frame short of the steps; its last step is dropped", uri)
                report.trimmed_last_frame += 1
        except SampleError as err:
            quarantine.add(RejectRecord.from_error(err, uri, source))
            continue
        seen.add(info.episode_id)
        report.failures_kept += info.success is False
        time_bases[cand.time_base] += 1
        infos.append(write_episode(out, info, steps.state, steps.timestamp_s, info.video_uri,
                                   frame_index=steps.frame_index, extrinsics=steps.extrinsics))
    # an empty rejects table too: a rerun must not leave the previous build's rejects behind
    if quarantine.flush() is None:
        write_rejects([], report.rejects)
    finish_dataset(out, infos)
    report.fetched_bytes += videos.fetched_bytes
    report.episodes = len(infos)
    report.steps = sum(i.num_steps for i in infos)
    report.val_episodes = len(split_episodes(infos, options.val_fraction, options.split_salt)[1])
    report.rejected = dict(sorted(quarantine.by_reason().items()))
    report.time_bases = dict(sorted(time_bases.items()))
    storage.write_bytes(storage.join(out, REPORT_FILE), (json.dumps(asdict(report), indent=1) + "\n").encode())
    return report
