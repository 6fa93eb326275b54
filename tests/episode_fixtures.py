"""Tiny robot datasets in DROID's raw layout and LeRobot's v2.1 / v3.0 layouts, written by the tests.

Videos are the coded frames of ``fixtures_media`` (each frame carries its index), 64 x 32, so a test
reads back which video frame a step points at. DROID videos get a 60 fps header while their frames
are one per 15 Hz step, as the real files do (docs/reference.md R-robots-1.1).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fixtures_media import render_video

WIDTH, HEIGHT = 64, 32
SERIAL = "22008760"
DROID_HZ = 15.0


def poses(steps: int, seed: int = 0) -> np.ndarray:
    """A smooth made-up end-effector path [T, 7]: xyz (m), Euler xyz (rad), gripper in [0, 1]."""
    t = np.arange(steps, dtype=np.float64)
    rng = np.random.default_rng(seed)
    xyz = 0.4 + 0.01 * np.stack([t, np.sin(t / 5), np.cos(t / 7)], 1) + rng.normal(0, 1e-4, (steps, 3))
    euler = np.stack([np.pi - 0.02 * t, 0.1 * np.sin(t / 4), 0.05 * t], 1)
    grip = (0.5 - 0.5 * np.cos(t / 6))[:, None]
    return np.concatenate([xyz, euler, grip], 1)


def droid_trajectory(root: Path, name: str, steps: int = 30, video_frames: int | None = None,
                     outcome: str = "success", drop: tuple[str, ...] = (), clock: str = "camera",
                     state: np.ndarray | None = None, video_bytes: bytes | None = None,
                     metadata: bool = True) -> Path:
    """One DROID trajectory directory under ``root/LAB/<outcome>/2023-11-18/<name>``.

    ``video_frames`` (default ``steps``) frames in the MP4; ``drop`` h5 keys to leave out; ``clock``:
    ``camera`` (estimated capture, ms), ``robot`` (robot timestamps) or ``none``; ``video_bytes``
    replaces the MP4 with those bytes.
    """
    traj = root / "LAB" / outcome / "2023-11-18" / name
    mp4 = traj / "recordings" / "MP4" / f"{SERIAL}.mp4"
    if video_bytes is None:
        render_video(mp4, frames=video_frames or steps, width=WIDTH, height=HEIGHT, fps=60, gop=10, bframes=0)
    else:
        mp4.parent.mkdir(parents=True, exist_ok=True)
        mp4.write_bytes(video_bytes)
    if metadata:
        meta = {"uuid": f"LAB+{name}+2023-11-18", "success": outcome == "success", "current_task": "put the cup away",
                "left_mp4_path": f"LAB/{outcome}/2023-11-18/{name}/recordings/MP4/{SERIAL}.mp4",
                "ext1_cam_serial": SERIAL, "trajectory_length": steps}
        (traj / f"metadata_{name}.json").write_text(json.dumps(meta))
    state = poses(steps) if state is None else state
    capture_ms = 1.7e12 + 1000.0 * np.arange(steps) / DROID_HZ + np.random.default_rng(1).uniform(0, 2, steps)
    datasets = {
        "observation/robot_state/cartesian_position": state[:, :6],
        "observation/robot_state/gripper_position": state[:, 6],
        f"observation/camera_extrinsics/{SERIAL}_left": np.tile([0.1, 0.5, 0.3, -2.0, 0.0, -1.0], (steps, 1)),
        "observation/robot_state/joint_positions": np.zeros((steps, 7)),
    }
    if clock == "camera":
        datasets[f"observation/timestamp/cameras/{SERIAL}_estimated_capture"] = capture_ms
    if clock in ("camera", "robot"):
        seconds = 1.7e9 + np.arange(steps) / DROID_HZ
        datasets["observation/timestamp/robot_state/robot_timestamp_seconds"] = np.floor(seconds)
        datasets["observation/timestamp/robot_state/robot_timestamp_nanos"] = (seconds % 1) * 1e9
    import h5py

    with h5py.File(traj / "trajectory.h5", "w") as h5:
        for key, value in datasets.items():
            if key not in drop:
                h5.create_dataset(key, data=value)
    return traj


# ---------------------------------------------------------------------------- LeRobot

LEROBOT_FPS = 10
CAMERA = "observation.images.front"


def _features(video_fps: int) -> dict:
    return {
        "observation.state.cartesian_position": {"dtype": "float32", "shape": [6], "names": None},
        "observation.state.gripper_position": {"dtype": "float32", "shape": [1], "names": None},
        "observation.images.wrist": {"dtype": "video", "shape": [HEIGHT, WIDTH, 3], "names": None,
                                     "info": {"video.fps": video_fps}},
        CAMERA: {"dtype": "video", "shape": [HEIGHT, WIDTH, 3], "names": None, "info": {"video.fps": video_fps}},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "is_episode_successful": {"dtype": "bool", "shape": [1], "names": None},
    }


def _data_rows(episode: int, steps: int, state: np.ndarray, success: bool, first_index: int) -> pa.Table:
    return pa.table({
        "observation.state.cartesian_position": pa.FixedSizeListArray.from_arrays(
            pa.array(state[:, :6].astype(np.float32).reshape(-1)), 6),
        "observation.state.gripper_position": pa.FixedSizeListArray.from_arrays(
            pa.array(state[:, 6].astype(np.float32)), 1),
        "timestamp": pa.array((np.arange(steps) / LEROBOT_FPS).astype(np.float32)),
        "frame_index": pa.array(np.arange(steps), pa.int64()),
        "episode_index": pa.array(np.full(steps, episode), pa.int64()),
        "index": pa.array(first_index + np.arange(steps), pa.int64()),
        "task_index": pa.array(np.zeros(steps), pa.int64()),
        "is_episode_successful": pa.array(np.full(steps, success)),
    })


def lerobot_v21(root: Path, lengths: tuple[int, ...] = (30, 24), states: dict[int, np.ndarray] | None = None) -> Path:
    """A v2.1 dataset: one data file and one video per episode and camera."""
    states = states or {}
    (root / "meta").mkdir(parents=True)
    info = {"codebase_version": "v2.1", "fps": LEROBOT_FPS, "chunks_size": 1000, "total_episodes": len(lengths),
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": _features(LEROBOT_FPS)}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    lines, first = [], 0
    for ep, steps in enumerate(lengths):
        lines.append(json.dumps({"episode_index": ep, "tasks": ["push the block"], "length": steps}))
        data = root / "data" / "chunk-000" / f"episode_{ep:06d}.parquet"
        data.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_data_rows(ep, steps, states.get(ep, poses(steps, ep)), True, first), data)
        for key in (CAMERA, "observation.images.wrist"):
            render_video(root / "videos" / "chunk-000" / key / f"episode_{ep:06d}.mp4", frames=steps,
                         width=WIDTH, height=HEIGHT, fps=LEROBOT_FPS, gop=10, bframes=0)
        first += steps
    (root / "meta" / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    return root


def lerobot_v30(root: Path, lengths: tuple[int, ...] = (20, 16)) -> Path:
    """A v3.0 dataset: every episode in one data file and one video file per camera, located by
    ``dataset_from_index`` and ``videos/<key>/from_timestamp``; episode 1 failed."""
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    info = {"codebase_version": "v3.0", "fps": LEROBOT_FPS, "chunks_size": 1000, "total_episodes": len(lengths),
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": _features(LEROBOT_FPS)}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    tables, rows, first = [], [], 0
    for ep, steps in enumerate(lengths):
        tables.append(_data_rows(ep, steps, poses(steps, ep), ep != 1, first))
        row = {"episode_index": ep, "tasks": ["stack", "cups"], "length": steps, "dataset_from_index": first,
               "dataset_to_index": first + steps, "data/chunk_index": 0, "data/file_index": 0}
        for key in (CAMERA, "observation.images.wrist"):
            row |= {f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": 0,
                    f"videos/{key}/from_timestamp": first / LEROBOT_FPS,
                    f"videos/{key}/to_timestamp": (first + steps) / LEROBOT_FPS}
        rows.append(row)
        first += steps
    data = root / "data" / "chunk-000" / "file-000.parquet"
    data.parent.mkdir(parents=True)
    pq.write_table(pa.concat_tables(tables), data)
    pq.write_table(pa.Table.from_pylist(rows), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    for key in (CAMERA, "observation.images.wrist"):
        render_video(root / "videos" / key / "chunk-000" / "file-000.mp4", frames=first, width=WIDTH,
                     height=HEIGHT, fps=LEROBOT_FPS, gop=10, bframes=0)
    return root
