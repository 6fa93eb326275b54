"""LeRobot datasets, layouts v2.1 and v3.0, read with pyarrow and the project's decoders (never the
``lerobot`` package: it needs Python 3.12 and a torch range of its own; docs/reference.md R-robots-3).

Both layouts keep ``meta/info.json`` (``codebase_version``, ``fps``, ``features``, the ``data_path``
and ``video_path`` templates) and per-frame Parquet rows (``timestamp``, ``frame_index``,
``episode_index``, the feature columns); video frames live in MP4s, one per camera:

- v2.1: ``meta/episodes.jsonl`` lists the episodes; one data file and one video per episode and camera
  (chunk = episode // ``chunks_size``); a step's video time is its ``timestamp``.
- v3.0: ``meta/episodes/chunk-*/file-*.parquet`` lists them, with each episode's data file and, per
  camera, its video file and ``from_timestamp``; a file packs many episodes, so a step's video time is
  ``from_timestamp + timestamp`` (read, never recomputed: LeRobot accumulates it from container
  durations).

A step's ``frame_index`` in the schema is that video time times the camera's rate (its feature's
``video.fps``, else ``fps``), rounded; ``fps`` and ``timestamp_s`` are the data rows' own (``fps`` of
info.json, the ``timestamp`` column). Which columns make the 7-D state is configuration
(:class:`LeRobotOptions`), checked against ``features`` before any episode is read: a wrong name is a
one-line error listing the features, not a quarantine of every episode.

S3: the Parquet files are read by pyarrow with ranged GETs (only the columns used); each MP4 is fetched
whole once per build by the video check (a v3 file once for all its episodes).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from core import storage
from core.errors import UserError
from pipelines.episodes.convert import Candidate, Loader
from pipelines.episodes.schema import STATE_DIM, EpisodeInfo, EpisodeSteps, safe_id
from pipelines.quarantine import SampleError

SOURCE = "lerobot"
V2_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V2_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V3_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
POSE_DIM = 6


@dataclass(frozen=True)
class LeRobotOptions:
    """Which columns are the state: ``state`` (concatenated in order) gives the 6-D pose, or all 7
    dimensions when ``gripper`` is ""; ``gripper`` is one column mapped linearly from
    ``gripper_open``..``gripper_closed`` to 0..1. The defaults fit ``lerobot/droid_1.0.1``.
    ``camera``: the video feature ("" = the first one in info.json). ``success``: a bool column of the
    episodes table or the data rows ("" = unknown). ``id_prefix``: episode ids are
    ``<prefix>-<episode_index>`` ("" = the dataset folder's name)."""

    state: tuple[str, ...] = ("observation.state.cartesian_position",)
    gripper: str = "observation.state.gripper_position"
    camera: str = ""
    success: str = ""
    gripper_open: float = 0.0
    gripper_closed: float = 1.0
    id_prefix: str = ""


@dataclass(frozen=True)
class Layout:
    """What info.json says, checked against the options: the version, rates, templates and camera."""

    root: str
    version: str
    fps: float
    video_fps: float
    camera: str
    chunks_size: int
    data_path: str
    video_path: str
    prefix: str


def _json(uri: str) -> dict:
    try:
        return json.loads(storage.read_bytes(uri))
    except ValueError as exc:
        raise UserError(f"{uri}: not valid json: {exc}") from exc


def read_layout(root: str, options: LeRobotOptions) -> Layout:
    """``root``'s layout from ``meta/info.json``, or a one-line :class:`UserError` (no such file, an
    unknown version, a mapped column or camera that is not a feature)."""
    if not storage.is_s3(root):  # video_uri must be absolute: a relative one means "inside the output"
        root = str(Path(root).expanduser().resolve())
    uri = storage.join(root, "meta", "info.json")
    if not storage.exists(uri):
        raise UserError(f"{uri}: not found; a LeRobot dataset has meta/info.json")
    info = _json(uri)
    version = str(info.get("codebase_version", ""))
    if not version.startswith(("v2", "v3")):
        raise UserError(f"{uri}: codebase_version {version!r}; this reader knows v2.x and v3.0")
    features: dict = info.get("features") or {}
    videos = [k for k, f in features.items() if f.get("dtype") == "video"]
    camera = options.camera or (videos[0] if videos else "")
    if camera not in videos:
        raise UserError(f"{uri}: camera {camera!r} is not a video feature; video features: {videos}")
    wanted = [*options.state, *([options.gripper] if options.gripper else [])]
    absent = [c for c in wanted if c not in features]
    if absent:
        raise UserError(f"{uri}: state column(s) {absent} are not features; features: {sorted(features)}")
    dims = sum(int(np.prod(features[c].get("shape") or [1])) for c in options.state)
    need = POSE_DIM if options.gripper else STATE_DIM
    if dims != need:
        raise UserError(f"{uri}: state columns {list(options.state)} give {dims} dims, need {need} "
                        f"({'xyz + Euler xyz' if options.gripper else 'xyz + Euler xyz + gripper'})")
    fps = float(info.get("fps") or 0)
    if fps <= 0:
        raise UserError(f"{uri}: no positive 'fps'")
    v3 = version.startswith("v3")
    cam_info = features[camera].get("info") or {}
    return Layout(
        root=root, version=version, fps=fps, video_fps=float(cam_info.get("video.fps") or fps), camera=camera,
        chunks_size=int(info.get("chunks_size") or 1000),
        data_path=info.get("data_path") or (V3_DATA if v3 else V2_DATA),
        video_path=info.get("video_path") or (V3_VIDEO if v3 else V2_VIDEO),
        prefix=options.id_prefix or PurePosixPath(root.rstrip("/")).name,
    )


def episode_rows(layout: Layout) -> list[dict]:
    """The episodes table as dicts: ``meta/episodes.jsonl`` (v2.x) or every ``meta/episodes`` part (v3)."""
    if layout.version.startswith("v2"):
        uri = storage.join(layout.root, "meta", "episodes.jsonl")
        lines = storage.read_bytes(uri).decode().splitlines()
        try:
            return [json.loads(line) for line in lines if line.strip()]
        except ValueError as exc:
            raise UserError(f"{uri}: not json lines: {exc}") from exc
    directory = storage.join(layout.root, "meta", "episodes")
    with storage.storage_errors(directory, "list"):
        fs, path = storage.filesystem_for(directory)
        parts = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                       if i.path.endswith(".parquet"))
    if not parts:
        raise UserError(f"{directory}: no episodes parquet files")
    return pa.concat_tables([pq.read_table(p, filesystem=fs) for p in parts]).to_pylist()


def episodes(root: str, options: LeRobotOptions) -> Iterator[tuple[str, Loader]]:
    """One ``(data file#episode, loader)`` per episode of ``root``, for
    :func:`~pipelines.episodes.convert.convert`; a v3 data file is read once for its episodes. The
    layout, the mapping and the episodes table are checked now, before anything is written."""
    layout = read_layout(root, options)
    cache: dict[str, pa.Table] = {}
    found = []
    for row in episode_rows(layout):
        try:
            found.append((row, *locate(layout, row)))
        except KeyError as exc:  # the whole table lacks it: the dataset's defect, not one episode's
            raise UserError(f"{root}: episodes table has no field {exc} (codebase_version {layout.version})") from exc
    return ((f"{data}#{row['episode_index']}", partial(load_episode, layout, options, row, data, video, start, cache))
            for row, data, video, start in found)


def locate(layout: Layout, row: dict) -> tuple[str, str, float]:
    """The episode's data file, video file and video start time (0 in v2.x), from its episodes row."""
    index = int(row["episode_index"])
    if layout.version.startswith("v2"):
        fields = {"episode_chunk": index // layout.chunks_size, "episode_index": index}
        data = layout.data_path.format(**fields)
        video = layout.video_path.format(video_key=layout.camera, **fields)
        start = 0.0
    else:
        key = f"videos/{layout.camera}/"
        data = layout.data_path.format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
        video = layout.video_path.format(video_key=layout.camera, chunk_index=row[key + "chunk_index"],
                                         file_index=row[key + "file_index"])
        start = float(row[key + "from_timestamp"])
    return storage.join(layout.root, data), storage.join(layout.root, video), start


def _data_table(uri: str, cache: dict[str, pa.Table]) -> pa.Table:
    """The data file at ``uri``, kept while its episodes are read (v3: many per file, listed in order)."""
    if uri not in cache:
        cache.clear()
        if not storage.exists(uri):
            raise SampleError("missing", "fetch", uri)
        fs, path = storage.filesystem_for(uri)
        try:
            cache[uri] = pq.read_table(path, filesystem=fs)
        except (OSError, pa.ArrowException) as exc:
            raise SampleError("unreadable", "open", f"{uri}: {exc}") from exc
    return cache[uri]


def column_matrix(table: pa.Table, name: str) -> np.ndarray:
    """A data column as float64 [T, d]: a list column's values per row, a scalar column as d = 1."""
    if name not in table.column_names:
        raise SampleError("bad_metadata", "open", f"data has no column {name!r}")
    column = table[name].combine_chunks()
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type) or \
            pa.types.is_fixed_size_list(column.type):
        values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
        if len(column) and values.size % len(column):
            raise SampleError("bad_state", "open", f"column {name!r} has rows of different lengths")
        return values.reshape(len(column), -1)
    return column.to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, 1)


def load_episode(layout: Layout, options: LeRobotOptions, row: dict, data: str, video: str, start: float,
                 cache: dict[str, pa.Table]) -> Candidate:
    """One LeRobot episode as a schema episode (steps and index row; the checks come later)."""
    index = int(row["episode_index"])
    table = _data_table(data, cache)
    if "episode_index" in table.column_names:
        table = table.filter(pc.equal(table["episode_index"], index))
    if "frame_index" in table.column_names:
        table = table.sort_by("frame_index")
    if table.num_rows == 0:
        raise SampleError("bad_metadata", "open", f"{data}: no rows of episode {index}")
    state = np.concatenate([column_matrix(table, c) for c in options.state], axis=1)
    if options.gripper:
        grip = column_matrix(table, options.gripper)[:, :1]
        state = np.concatenate([state, (grip - options.gripper_open) / (options.gripper_closed - options.gripper_open)],
                               axis=1)
    timestamps = column_matrix(table, "timestamp")[:, 0]
    frames = np.rint((start + timestamps) * layout.video_fps).astype(np.int64)
    success = row.get(options.success) if options.success else None
    if options.success and success is None and options.success in table.column_names:
        success = table[options.success][0].as_py()
    tasks = row.get("tasks") or []
    info = EpisodeInfo(
        episode_id=safe_id(f"{layout.prefix}-{index:06d}"),
        source=SOURCE,
        task="; ".join(tasks) if isinstance(tasks, list) else str(tasks),
        success=None if success is None else bool(success),
        fps=layout.fps,
        num_steps=table.num_rows,
        video_uri=video,
        camera=layout.camera,
    )
    return Candidate(info, EpisodeSteps(frames.astype(np.int32), timestamps, state), "timestamp_column")
