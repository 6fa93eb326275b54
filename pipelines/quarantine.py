"""Quarantine: a bad sample becomes a record and a counter, never a crash and never a silent drop.

Every stage that touches media (fetch, open, decode) raises :class:`SampleError` with a reason from
:data:`REASONS`. Callers turn it into a :class:`RejectRecord` (uri, source, reason, stage, detail) kept
by a :class:`Quarantine`, which counts per (source, reason) and writes the records as Parquet: one
file for ``validate-data``, or one part file per writer under a ``rejects/`` directory (local or
``s3://``) when many decode actors write at once. :func:`read_rejects` reads either back as one table.
"""

from __future__ import annotations

import io
import logging
import os
import uuid
from collections import Counter
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from core import storage

log = logging.getLogger(__name__)

# reason -> what it means; the stage says where in the pipeline it was found.
REASONS: dict[str, str] = {
    "missing": "file or object does not exist",
    "empty": "zero bytes",
    "too_large": "larger than data.max_video_bytes, or an image over data.max_image_pixels",
    "io_error": "storage error while reading (permissions, network, S3)",
    "unreadable": "not a readable container (non-video bytes, truncated header, corrupt)",
    "no_video_stream": "the container holds no video stream",
    "too_few_frames": "fewer frames than data.min_frames",
    "empty_window": "the row's start_s/end_s scene bounds hold no frame",
    "decode_error": "frames could not be decoded (truncated or corrupt stream)",
    "bad_seek": "seeking gives other frames than a sequential decode, and no backend reads it right either way",
    "bad_image": "the image cannot be decoded",
    "redraws_exhausted": "every redraw from this source failed too; the sample was skipped",
    # robot episodes (pipelines/episodes): a whole episode is the sample
    "missing_h5_key": "trajectory.h5 lacks a dataset the reader needs (pose, gripper, the camera's extrinsics)",
    "bad_metadata": "the episode's metadata (DROID json, LeRobot episode row or columns) is missing or unusable",
    "video_shorter_than_states": "the video lacks more than one of the frames the steps index (one: trimmed)",
    "bad_state": "states hold NaN or inf, never change (a fill value), have a gripper outside [0, 1], or rows "
                 "out of order (timestamps not increasing, frame indices decreasing)",
    "episode_too_short": "fewer steps than one clip needs (clip frames x frame step, plus one)",
    "not_cached": "the feature cache holds no tokens for this episode (its pre-pass could not read it)",
    "duplicate_episode": "an episode id already converted in this build (the first one is kept)",
}
STAGES = ("fetch", "open", "decode", "sample")

REJECT_SCHEMA = pa.schema([
    pa.field("uri", pa.string()),
    pa.field("source", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("stage", pa.string()),
    pa.field("detail", pa.string()),
    pa.field("sample_id", pa.int64()),
])
DETAIL_MAX_CHARS = 500


class SampleError(Exception):
    """One sample cannot be used; ``reason`` is a key of :data:`REASONS`, ``stage`` one of :data:`STAGES`."""

    def __init__(self, reason: str, stage: str, detail: str = ""):
        if reason not in REASONS or stage not in STAGES:
            raise ValueError(f"unknown reject reason/stage {reason!r}/{stage!r}")
        super().__init__(f"{reason} at {stage}: {detail}" if detail else f"{reason} at {stage}")
        self.reason = reason
        self.stage = stage
        self.detail = detail


@dataclass(frozen=True)
class RejectRecord:
    uri: str
    source: str
    reason: str
    stage: str
    detail: str = ""
    sample_id: int = -1

    @classmethod
    def from_error(cls, err: SampleError, uri: str, source: str, sample_id: int = -1) -> RejectRecord:
        return cls(uri, source, err.reason, err.stage, err.detail[:DETAIL_MAX_CHARS], sample_id)


class Quarantine:
    """Collects reject records and counts them; ``flush`` appends them to the rejects table.

    ``out`` is either a ``.parquet`` file (written whole at every flush: validate-data) or a directory
    that receives one uniquely named part file per flush (decode actors, many writers at once);
    ``single_file`` decides instead of the suffix when given.
    """

    def __init__(self, out: str | None = None, single_file: bool | None = None):
        self.out = out or None
        self.single_file = str(out).endswith(".parquet") if single_file is None else single_file
        self.counts: Counter[tuple[str, str]] = Counter()
        self.records: list[RejectRecord] = []
        self._written: list[RejectRecord] = []
        self._writer_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._parts = 0

    def add(self, record: RejectRecord) -> None:
        self.counts[(record.source, record.reason)] += 1
        self.records.append(record)
        log.warning("quarantined %s (source %s): %s at %s %s", record.uri, record.source, record.reason,
                    record.stage, record.detail[:120])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def by_reason(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for (_, reason), n in self.counts.items():
            out[reason] += n
        return out

    def flush(self) -> str | None:
        """Write pending records; return the URI written, or None when nothing was pending."""
        if not self.out or not self.records:
            return None
        if self.single_file:
            self._written.extend(self.records)
            target, rows = self.out, self._written
        else:
            target = storage.join(self.out, f"part-{self._writer_id}-{self._parts:05d}.parquet")
            self._parts += 1
            rows = self.records
        write_rejects(rows, target)
        self.records = []
        return target


def rejects_table(records: list[RejectRecord]) -> pa.Table:
    return pa.Table.from_pylist([asdict(r) for r in records], schema=REJECT_SCHEMA)


def write_rejects(records: list[RejectRecord], uri: str) -> None:
    sink = io.BytesIO()
    pq.write_table(rejects_table(records), sink)
    storage.write_bytes(uri, sink.getvalue())


def read_rejects(uri: str) -> pa.Table:
    """The rejects table at ``uri``: one Parquet file, or every part file of a rejects directory."""
    fs, path = storage.filesystem_for(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return REJECT_SCHEMA.empty_table()
    if info.type == pafs.FileType.File:
        return pq.read_table(path, filesystem=fs, schema=REJECT_SCHEMA)
    parts = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=False))
                   if i.path.endswith(".parquet"))
    tables = [pq.read_table(p, filesystem=fs, schema=REJECT_SCHEMA) for p in parts]
    return pa.concat_tables(tables) if tables else REJECT_SCHEMA.empty_table()
