"""DROID's raw layout, read as Meta's V-JEPA 2-AC loader reads it (docs/reference.md R-robots-1.1, R-robots-2).

Per trajectory directory (``<lab>/{success,failure}/<date>/<time>/``): the metadata json names the
camera's MP4 (``left_mp4_path``: the left exterior camera, as Meta trains on); ``trajectory.h5`` gives
the state, ``observation/robot_state/cartesian_position`` [T, 6] ++ ``gripper_position`` [T], and the
camera's extrinsics ``observation/camera_extrinsics/<serial>_left`` [T, 6]. One MP4 frame per h5 row,
so ``frame_index`` is 0..T-1 and ``video_uri`` is the original MP4 (nothing is re-encoded).

The frame-rate pitfall: the MP4 headers say 60 fps while their frames come one per 15 Hz control step,
so a sampler that trusts the header strides 15 frames instead of 4 (8 frames span ~7.4 s, not ~1.75 s;
upstream issue #183). Here the header is never read for time. ``timestamp_s`` and ``fps`` come from,
in order, the first source that gives a strictly increasing time per row:

1. ``camera_capture``: the camera's ``observation/timestamp/cameras/<serial>_estimated_capture`` (ms),
   the time each video frame was taken;
2. ``robot_state``: ``observation/timestamp/robot_state/robot_timestamp_{seconds,nanos}``;
3. ``control_rate``: row / ``control_hz`` (15, DROID's ``control_hz``).

``fps`` is the median row rate of that clock (a dropped frame does not change it); the build report
counts the episodes per time base.

S3: h5py reads local files only, so an ``s3://`` ``trajectory.h5`` is fetched whole (one GET) into
``cache_dir`` and opened there; a rerun reuses the cached copy when its size matches. Each episode
costs one h5 transfer plus two small reads (the directory listing and the metadata json); the
report's ``fetched_bytes`` is the measured total.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow.fs as pafs

from core import storage
from core.errors import UserError
from pipelines.decode import s3_object
from pipelines.episodes.convert import Candidate, Loader
from pipelines.episodes.schema import EpisodeInfo, EpisodeSteps, safe_id
from pipelines.quarantine import SampleError

SOURCE = "droid"
H5_FILE = "trajectory.h5"
CONTROL_HZ = 15.0  # DROID's control_hz: one h5 row per step (docs/reference.md R-robots-2)
POSE_KEY = "observation/robot_state/cartesian_position"
GRIPPER_KEY = "observation/robot_state/gripper_position"
EXTRINSICS_KEY = "observation/camera_extrinsics/{serial}_left"
CAMERA_TIME_KEY = "observation/timestamp/cameras/{serial}_estimated_capture"  # milliseconds
ROBOT_TIME_KEYS = ("observation/timestamp/robot_state/robot_timestamp_seconds",
                   "observation/timestamp/robot_state/robot_timestamp_nanos")
MP4_MARKER = "recordings/MP4/"
DEFAULT_CACHE = "~/.cache/vjepa2-ray/droid-h5"


@dataclass(frozen=True)
class DroidOptions:
    """``camera``: the metadata key naming the MP4 (Meta's ``camera_views: [left_mp4_path]``)."""

    camera: str = "left_mp4_path"
    control_hz: float = CONTROL_HZ
    cache_dir: str = DEFAULT_CACHE


def trajectory_dirs(root: str) -> list[str]:
    """The trajectory directories of ``root``: a trajectory list file (Meta's: one directory per line,
    space-delimited, first column, no header; a line may end in ``/trajectory.h5``; relative lines are
    under the list's folder), or a directory searched for every ``trajectory.h5`` (upstream #65)."""
    kind = storage.file_type(root)
    if kind == pafs.FileType.NotFound:
        raise UserError(f"{root}: no DROID trajectory list or directory there")
    if kind == pafs.FileType.File:
        base = str(PurePosixPath(root).parent) if storage.is_s3(root) else str(Path(root).resolve().parent)
        dirs = []
        for line in storage.read_bytes(root).decode("utf-8-sig").splitlines():
            first = line.strip().split(" ")[0] if line.strip() else ""
            if first:
                first = first.removesuffix("/" + H5_FILE)
                relative = not storage.is_s3(first) and not os.path.isabs(first)
                dirs.append(storage.join(base, first) if relative else first)
        return dirs
    with storage.storage_errors(root, "list"):
        fs, path = storage.filesystem_for(root)
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    found = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name == H5_FILE)
    prefix = "s3://" if storage.is_s3(root) else ""
    return [prefix + str(PurePosixPath(p).parent) for p in found]


def episodes(root: str, options: DroidOptions) -> Iterator[tuple[str, Loader]]:
    """One ``(trajectory dir, loader)`` per trajectory of ``root``, for :func:`~pipelines.episodes.convert.convert`.
    The trajectories are listed now, so a wrong root fails before anything is written."""
    return ((traj, partial(load_trajectory, traj, options)) for traj in trajectory_dirs(root))


def read_metadata(traj: str) -> dict:
    """The trajectory's metadata json: ``metadata_*.json`` (DROID has one), else the first json there."""
    if not storage.exists(traj):
        raise SampleError("missing", "fetch", traj)
    try:
        names = storage.list_files(traj, ".json")
    except storage.StorageError as exc:
        raise SampleError("io_error", "open", str(exc)) from exc
    names.sort(key=lambda p: (not PurePosixPath(p).name.startswith("metadata_"), p))
    if not names:
        raise SampleError("bad_metadata", "open", f"no metadata json in {traj}")
    try:
        meta = json.loads(storage.read_bytes(names[0]))
    except (ValueError, OSError) as exc:
        raise SampleError("bad_metadata", "open", f"{names[0]}: {exc}") from exc
    if not isinstance(meta, dict):
        raise SampleError("bad_metadata", "open", f"{names[0]}: not a json object")
    return meta


def local_h5(uri: str, cache_dir: str) -> tuple[str, int]:
    """A local path to ``uri``'s h5 and the bytes fetched for it: a local file as it is; an S3 object
    copied whole into ``cache_dir`` (h5py cannot read S3), reused when the cached size matches."""
    if not storage.is_s3(uri):
        if not os.path.exists(uri):
            raise SampleError("missing", "fetch", uri)
        return uri, 0
    fs, path, info = s3_object(uri)
    cached = Path(cache_dir).expanduser() / f"{hashlib.sha256(uri.encode()).hexdigest()[:24]}.h5"
    if cached.exists() and cached.stat().st_size == info.size:
        return str(cached), 0
    try:
        data = storage.read_bytes(uri)
        storage.write_bytes(str(cached), data)
    except storage.StorageError as exc:
        raise SampleError("io_error", "fetch", str(exc)) from exc
    return str(cached), len(data)


def _dataset(h5, key: str) -> np.ndarray:
    if key not in h5:
        raise SampleError("missing_h5_key", "open", key)
    return np.asarray(h5[key][()])


def strictly_increasing(t: np.ndarray | None, rows: int) -> bool:
    return t is not None and t.shape == (rows,) and bool(np.all(np.isfinite(t))) and bool(np.all(np.diff(t) > 0))


def time_base(h5, serial: str, rows: int, control_hz: float) -> tuple[np.ndarray, float, str]:
    """``(timestamp_s from 0, fps, name)`` from the first clock of the module docstring that works."""
    key = CAMERA_TIME_KEY.format(serial=serial)
    clocks: list[tuple[str, np.ndarray | None]] = [
        ("camera_capture", np.asarray(h5[key][()], np.float64) / 1e3 if key in h5 else None)]
    if all(k in h5 for k in ROBOT_TIME_KEYS):
        sec, nanos = (np.asarray(h5[k][()], np.float64) for k in ROBOT_TIME_KEYS)
        clocks.append(("robot_state", sec + nanos * 1e-9))
    for name, t in clocks:
        if strictly_increasing(t, rows):
            return t - t[0], float(1.0 / np.median(np.diff(t))) if rows > 1 else control_hz, name
    return np.arange(rows, dtype=np.float64) / control_hz, control_hz, "control_rate"


def success_of(meta: dict, traj: str) -> bool | None:
    """The metadata's ``success``, else the ``success``/``failure`` folder the trajectory sits in."""
    if isinstance(meta.get("success"), bool):
        return meta["success"]
    parts = PurePosixPath(traj).parts
    return True if "success" in parts else False if "failure" in parts else None


def load_trajectory(traj: str, options: DroidOptions) -> Candidate:
    """One DROID trajectory directory as an episode (steps and index row; the checks come later)."""
    import h5py

    meta = read_metadata(traj)
    mp4 = meta.get(options.camera)
    if not isinstance(mp4, str) or not mp4:
        raise SampleError("bad_metadata", "open", f"metadata has no {options.camera!r}")
    name = mp4.split(MP4_MARKER)[-1]  # Meta's rule: the file name under recordings/MP4/
    serial = PurePosixPath(name).stem
    h5_path, fetched = local_h5(storage.join(traj, H5_FILE), options.cache_dir)
    try:
        with h5py.File(h5_path, "r") as h5:
            pose = _dataset(h5, POSE_KEY).astype(np.float64)
            grip = _dataset(h5, GRIPPER_KEY).astype(np.float64).reshape(-1)  # [T] or [T, 1]
            ext = _dataset(h5, EXTRINSICS_KEY.format(serial=serial)).astype(np.float64)
            rows = len(pose)
            if pose.shape != (rows, 6) or grip.shape != (rows,) or ext.shape != (rows, 6):
                raise SampleError("bad_state", "open", f"shapes pose {pose.shape}, gripper {grip.shape}, "
                                                       f"extrinsics {ext.shape}; want [T, 6], [T], [T, 6]")
            timestamps, fps, base = time_base(h5, serial, rows, options.control_hz)
    except SampleError:
        raise
    except (OSError, ValueError) as exc:  # not an HDF5 file, truncated
        raise SampleError("unreadable", "open", f"{H5_FILE}: {exc}") from exc
    info = EpisodeInfo(
        episode_id=safe_id(str(meta.get("uuid") or PurePosixPath(traj).name)),
        source=SOURCE,
        task=str(meta.get("current_task") or ""),
        success=success_of(meta, traj),
        fps=fps,
        num_steps=rows,
        video_uri=storage.join(traj, MP4_MARKER.rstrip("/"), name),
        camera=serial,
    )
    state = np.concatenate([pose, grip[:, None]], axis=1)
    steps = EpisodeSteps(np.arange(rows, dtype=np.int32), timestamps, state, ext)
    return Candidate(info, steps, base, fetched)
