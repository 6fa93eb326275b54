"""The one robot-episode dataset layout every reader writes and post-training reads.

A dataset is a directory (local or ``s3://``, through :mod:`core.storage`)::

    episodes.parquet            the index: one row per episode (:data:`INDEX_SCHEMA`)
    steps/<episode_id>.parquet  one row per recorded step (:data:`STEPS_SCHEMA`)
    videos/<episode_id>.mp4     the camera video, for episodes this project encodes itself
    _STARTED, _SUCCESS          the completion markers of pipelines/manifest.py

Readers of other layouts (DROID, LeRobot) write no video: their ``video_uri`` points at the original
file, and ``frame_index`` says which of its frames belongs to each step. A ``video_uri`` is absolute
(a local path or ``s3://``) or relative to the dataset directory, so a dataset can be moved whole.

``fps`` is the physical rate of the step rows (Hz), never a container header's rate: raw DROID MP4s
say 60 fps while their frames come one per 15 Hz control step (docs/reference.md R-robots-1.1), and
clip sampling derives its frame step from this column.

The state is 7-D, as in Meta's V-JEPA 2-AC (docs/reference.md R-robots-1.1): x, y, z in metres, the
Euler xyz angles in radians, the gripper from 0 (open) to 1 (closed). Actions are not stored: they
are derived from consecutive sampled states (:mod:`pipelines.episodes.actions`), so they always match
whatever frame step the sampler uses.

A structurally wrong file is a defect of the dataset, not of one episode: :class:`EpisodeSchemaError`
(a :class:`~core.errors.UserError`, exit 2) names the file and the field in one line.
"""

from __future__ import annotations

import io
import math
import tempfile
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core import storage
from core.errors import UserError
from pipelines import manifest

STATE_DIM = 7
EXTRINSICS_DIM = 6
INDEX_FILE = "episodes.parquet"
STEPS_DIR = "steps"
VIDEOS_DIR = "videos"

INDEX_SCHEMA = pa.schema([
    pa.field("episode_id", pa.string(), nullable=False),
    pa.field("source", pa.string()),
    pa.field("task", pa.string()),
    pa.field("success", pa.bool_()),
    pa.field("fps", pa.float64()),
    pa.field("num_steps", pa.int32()),
    pa.field("video_uri", pa.string()),
    pa.field("camera", pa.string()),
])
STATE_TYPE = pa.list_(pa.float32(), STATE_DIM)
EXTRINSICS_TYPE = pa.list_(pa.float32(), EXTRINSICS_DIM)
STEPS_SCHEMA = pa.schema([
    pa.field("frame_index", pa.int32()),
    pa.field("timestamp_s", pa.float64()),
    pa.field("state", STATE_TYPE),
])
OPTIONAL_STEP_FIELDS = {"extrinsics": EXTRINSICS_TYPE}
# Columns that may be null: a source that does not know whether an episode succeeded, or its task text.
NULLABLE_INDEX_FIELDS = ("success", "task", "source", "camera")
# An episode id becomes a file name: keep it to characters every filesystem and S3 key takes as they are.
ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class EpisodeSchemaError(UserError, ValueError):
    """An episode index or steps file that does not follow the schema."""


@dataclass(frozen=True)
class EpisodeInfo:
    """One row of the index. ``success`` is None when the source does not say (simulated play)."""

    episode_id: str
    source: str
    task: str
    success: bool | None
    fps: float
    num_steps: int
    video_uri: str
    camera: str


@dataclass
class EpisodeSteps:
    """The per-step arrays of one episode: ``frame_index`` [T] int32, ``timestamp_s`` [T] float64,
    ``state`` [T, 7] float32, ``extrinsics`` [T, 6] float32 or None."""

    frame_index: np.ndarray
    timestamp_s: np.ndarray
    state: np.ndarray
    extrinsics: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.state.shape[0])


def check_episode_id(episode_id: str, where: str = "episode_id") -> None:
    """Refuse an id that would not make a plain file name (it names ``steps/<id>.parquet``)."""
    if not episode_id or not set(episode_id) <= ID_CHARS or episode_id.startswith((".", "_")):
        raise EpisodeSchemaError(f"{where}: episode id {episode_id!r} must be non-empty letters, digits, "
                                 "'-', '_' or '.', not starting with '.' or '_'")


def safe_id(text: str) -> str:
    """``text`` as an episode id: characters outside :data:`ID_CHARS` become ``-`` (DROID's directory names
    hold ``:``, its uuids ``+``), leading ``.``/``_`` are dropped."""
    return "".join(c if c in ID_CHARS else "-" for c in text).lstrip("._") or "episode"


def frame_step(fps: float, sample_fps: float) -> int:
    """Raw steps between two sampled frames: Meta's ``ceil(fps / sample_fps)`` (4 for 15 Hz DROID at 4 fps,
    docs/reference.md R-robots-1.1), on the physical step rate, never the container's header rate. The
    ratio is rounded first, so 15.999999 Hz measured from timestamps does not become a step of 5."""
    return max(1, math.ceil(round(fps / sample_fps, 6)))


def steps_uri(dataset_dir: str, episode_id: str) -> str:
    return storage.join(dataset_dir, STEPS_DIR, f"{episode_id}.parquet")


def video_path(dataset_dir: str, info: EpisodeInfo) -> str:
    """The episode's video as an absolute local path or ``s3://`` URI (relative ones are under the dataset)."""
    uri = info.video_uri
    if storage.is_s3(uri) or Path(uri).is_absolute():
        return uri
    return storage.join(dataset_dir, uri)


# ---------------------------------------------------------------------------- steps

def steps_table(steps: EpisodeSteps, where: str = "<steps>") -> pa.Table:
    """The steps parquet table of ``steps``, after checking shapes (a wrong shape names ``where``)."""
    state = np.asarray(steps.state, dtype=np.float32)
    n = len(state)
    if state.ndim != 2 or state.shape[1] != STATE_DIM:
        raise EpisodeSchemaError(f"{where}: field 'state' must be [T, {STATE_DIM}], got {list(state.shape)}")
    frame_index = np.asarray(steps.frame_index, dtype=np.int32)
    timestamp_s = np.asarray(steps.timestamp_s, dtype=np.float64)
    for name, arr in (("frame_index", frame_index), ("timestamp_s", timestamp_s)):
        if arr.shape != (n,):
            raise EpisodeSchemaError(f"{where}: field '{name}' must be [{n}] like 'state', got {list(arr.shape)}")
    columns = {
        "frame_index": pa.array(frame_index, pa.int32()),
        "timestamp_s": pa.array(timestamp_s, pa.float64()),
        "state": pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1), pa.float32()), STATE_DIM),
    }
    if steps.extrinsics is not None:
        ext = np.asarray(steps.extrinsics, dtype=np.float32)
        if ext.shape != (n, EXTRINSICS_DIM):
            raise EpisodeSchemaError(f"{where}: field 'extrinsics' must be [{n}, {EXTRINSICS_DIM}], "
                                     f"got {list(ext.shape)}")
        columns["extrinsics"] = pa.FixedSizeListArray.from_arrays(pa.array(ext.reshape(-1), pa.float32()),
                                                                  EXTRINSICS_DIM)
    table = pa.table(columns)
    check_steps_table(table, where)
    return table


def _cast(column: pa.ChunkedArray, want: pa.DataType, where: str, name: str) -> pa.ChunkedArray:
    try:
        return manifest.cast_column(column, want, where, name)
    except manifest.ManifestError as exc:
        raise EpisodeSchemaError(str(exc)) from exc
    except pa.ArrowTypeError as exc:  # a list of another length: not a value error, a type that cannot cast
        raise EpisodeSchemaError(f"{where}: column '{name}' must be {want}, got {column.type}") from exc


def check_steps_table(table: pa.Table, where: str, num_steps: int | None = None) -> pa.Table:
    """``table`` cast to the steps schema, or an :class:`EpisodeSchemaError` naming ``where`` and the field.

    Structure only (columns, types, lengths, order of frames and times); whether the states make sense is
    the readers' quarantine check (``bad_state``), since one bad episode must not stop a run.
    """
    wanted = {f.name: f.type for f in STEPS_SCHEMA} | {
        name: tp for name, tp in OPTIONAL_STEP_FIELDS.items() if name in table.column_names}
    missing = [name for name in STEPS_SCHEMA.names if name not in table.column_names]
    if missing:
        raise EpisodeSchemaError(f"{where}: missing field(s) {missing}; a steps file needs {STEPS_SCHEMA.names}")
    columns = {name: _cast(table[name], tp, where, name) for name, tp in wanted.items()}
    for name, column in columns.items():
        if column.null_count:
            raise EpisodeSchemaError(f"{where}: field '{name}' has {column.null_count} null row(s)")
    if num_steps is not None and table.num_rows != num_steps:
        raise EpisodeSchemaError(f"{where}: {table.num_rows} step row(s), the index says num_steps {num_steps}")
    frames = columns["frame_index"].to_numpy()
    times = columns["timestamp_s"].to_numpy()
    if len(frames) and frames.min() < 0:
        raise EpisodeSchemaError(f"{where}: field 'frame_index' has negative values")
    if np.any(np.diff(frames) < 0):
        raise EpisodeSchemaError(f"{where}: field 'frame_index' must not decrease")
    if not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0):
        raise EpisodeSchemaError(f"{where}: field 'timestamp_s' must be finite and strictly increasing")
    return pa.table(columns)


def _read_table(uri: str, what: str, missing: str) -> pa.Table:
    """A Parquet file of the dataset; a missing or unreadable one is one line naming it."""
    if not storage.exists(uri):
        raise EpisodeSchemaError(f"{uri}: {missing}")
    try:
        return pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    except pa.ArrowException as exc:
        raise EpisodeSchemaError(f"{uri}: unreadable {what}: {exc}") from exc


def read_steps(dataset_dir: str, episode_id: str, num_steps: int | None = None) -> EpisodeSteps:
    """The steps of one episode, checked against the schema (and ``num_steps`` from the index when given)."""
    uri = steps_uri(dataset_dir, episode_id)
    table = _read_table(uri, "steps file", f"steps file not found (episode {episode_id!r} is in the index)")
    table = check_steps_table(table, uri, num_steps)

    def matrix(name: str, dim: int) -> np.ndarray:
        return table[name].combine_chunks().flatten().to_numpy().reshape(-1, dim)

    return EpisodeSteps(
        frame_index=table["frame_index"].to_numpy(),
        timestamp_s=table["timestamp_s"].to_numpy(),
        state=matrix("state", STATE_DIM),
        extrinsics=matrix("extrinsics", EXTRINSICS_DIM) if "extrinsics" in table.column_names else None,
    )


def write_steps(dataset_dir: str, episode_id: str, steps: EpisodeSteps) -> str:
    check_episode_id(episode_id)
    uri = steps_uri(dataset_dir, episode_id)
    sink = io.BytesIO()
    pq.write_table(steps_table(steps, uri), sink)
    storage.write_bytes(uri, sink.getvalue())
    return uri


# ---------------------------------------------------------------------------- episodes

def encode_video(uri: str, frames: np.ndarray, fps: float) -> None:
    """Encode uint8 ``frames`` [T, H, W, 3] as H.264 MP4 at ``fps`` (the step rate: one frame per step)
    with the sample world's reproducible encoder; an ``s3://`` target is encoded locally, then uploaded."""
    from pipelines.sample_world.writers import write_video

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise EpisodeSchemaError(f"{uri}: frames must be uint8 [T, H, W, 3], got {frames.dtype} "
                                 f"{list(frames.shape)}")
    height, width = frames.shape[1:3]
    rate = Fraction(fps).limit_denominator(1001)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp, "episode.mp4")
        # gop 8: a clip's random window starts near a keyframe, so seeks stay cheap on short episodes.
        write_video(local, iter(frames), (width, height), rate, gop=8, bframes=0)
        storage.write_bytes(uri, local.read_bytes())


def write_episode(dataset_dir: str, info: EpisodeInfo, states: np.ndarray, timestamps: np.ndarray,
                  frames_or_video_path: np.ndarray | str, frame_index: np.ndarray | None = None,
                  extrinsics: np.ndarray | None = None) -> EpisodeInfo:
    """Write one episode's steps (and its video when given frames); return its index row.

    ``frames_or_video_path``: uint8 frames [T, H, W, 3] (one per step) are encoded to
    ``videos/<episode_id>.mp4`` at ``info.fps``; a string is an existing video (absolute, or relative
    to the dataset) that ``frame_index`` (default 0..T-1) indexes into. The returned row has
    ``num_steps`` and ``video_uri`` filled from what was written; pass the rows to :func:`finish_dataset`.
    """
    check_episode_id(info.episode_id)
    states = np.asarray(states)
    n = len(states)
    if frame_index is None:
        frame_index = np.arange(n, dtype=np.int32)
    if isinstance(frames_or_video_path, str):
        video_uri = frames_or_video_path
    else:
        if len(frames_or_video_path) != n:
            raise EpisodeSchemaError(f"episode {info.episode_id}: {len(frames_or_video_path)} frames for {n} "
                                     "states; written episodes have one frame per step")
        video_uri = f"{VIDEOS_DIR}/{info.episode_id}.mp4"
        encode_video(storage.join(dataset_dir, video_uri), frames_or_video_path, info.fps)
    row = EpisodeInfo(**{**asdict(info), "num_steps": n, "video_uri": video_uri})
    check_info(row, f"episode {info.episode_id}")
    write_steps(dataset_dir, info.episode_id, EpisodeSteps(frame_index, timestamps, states, extrinsics))
    return row


def check_info(info: EpisodeInfo, where: str) -> None:
    """One index row's values: a usable id, a positive rate, a video, at least one step."""
    check_episode_id(info.episode_id, where)
    if not (info.fps > 0 and np.isfinite(info.fps)):
        raise EpisodeSchemaError(f"{where}: field 'fps' must be a positive rate in Hz, got {info.fps}")
    if info.num_steps < 1:
        raise EpisodeSchemaError(f"{where}: field 'num_steps' must be at least 1, got {info.num_steps}")
    if not info.video_uri:
        raise EpisodeSchemaError(f"{where}: field 'video_uri' is empty")


def begin_dataset(dataset_dir: str) -> None:
    """Mark ``dataset_dir`` as being written: readers refuse it until :func:`finish_dataset` (a killed
    writer leaves a dataset nobody trains on by mistake). Call it before the first episode."""
    manifest.begin_manifest_parts(dataset_dir)


def index_table(infos: list[EpisodeInfo]) -> pa.Table:
    return pa.Table.from_pylist([asdict(i) for i in infos], schema=INDEX_SCHEMA)


def finish_dataset(dataset_dir: str, infos: list[EpisodeInfo]) -> dict[str, int]:
    """Write the index of ``infos`` and the ``_SUCCESS`` marker (part and row counts, as manifest part
    directories have: the index is the directory's one Parquet part). Returns the counts."""
    seen: set[str] = set()
    for info in infos:
        check_info(info, f"{storage.join(dataset_dir, INDEX_FILE)}: episode {info.episode_id}")
        if info.episode_id in seen:
            raise EpisodeSchemaError(f"{dataset_dir}: episode id {info.episode_id!r} given twice")
        seen.add(info.episode_id)
    sink = io.BytesIO()
    pq.write_table(index_table(infos), sink)
    storage.write_bytes(storage.join(dataset_dir, INDEX_FILE), sink.getvalue())
    return manifest.finish_manifest_parts(dataset_dir)


def check_index_table(table: pa.Table, where: str) -> pa.Table:
    """``table`` cast to :data:`INDEX_SCHEMA` with its values checked, or one line naming the field."""
    missing = [name for name in INDEX_SCHEMA.names if name not in table.column_names]
    if missing:
        raise EpisodeSchemaError(f"{where}: missing field(s) {missing}; an episode index needs {INDEX_SCHEMA.names}")
    columns = {f.name: _cast(table[f.name], f.type, where, f.name) for f in INDEX_SCHEMA}
    for name, column in columns.items():
        if name not in NULLABLE_INDEX_FIELDS and column.null_count:
            rows = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))
            shown = rows[:manifest.MAX_LINES_IN_ERROR].tolist()
            raise EpisodeSchemaError(f"{where}: field '{name}' is null at {len(rows)} row(s), first {shown}")
    ids = columns["episode_id"]
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids).to_pylist()
        dupes = [c["values"] for c in counts if c["counts"] > 1][:manifest.MAX_LINES_IN_ERROR]
        raise EpisodeSchemaError(f"{where}: field 'episode_id' repeats {dupes}")
    for row, values in enumerate(pa.table(columns).to_pylist()):
        check_info(EpisodeInfo(**values), f"{where}: row {row}")
    return pa.table(columns)


def read_index(dataset_dir: str) -> list[EpisodeInfo]:
    """The episodes of a dataset, checked: a dataset whose writer began and never finished is refused."""
    uri = storage.join(dataset_dir, INDEX_FILE)
    table = _read_table(uri, "episode index",
                        "episode index not found; build one with `vjepa2-ray build-episodes`")
    table = check_index_table(table, uri)
    try:
        manifest.check_complete(dataset_dir, storage.list_files(dataset_dir, ".parquet"), table.num_rows)
    except manifest.ManifestError as exc:
        raise EpisodeSchemaError(str(exc).replace("manifest", "episode dataset")) from exc
    return [EpisodeInfo(**row) for row in table.to_pylist()]
