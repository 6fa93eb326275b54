"""DROID and LeRobot readers on fixtures the tests write: schema, frame-rate fix, quarantine, CLI."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from episode_fixtures import CAMERA, DROID_HZ, LEROBOT_FPS, SERIAL, droid_trajectory, lerobot_v21, lerobot_v30, poses
from fixtures_media import frame_number
from fixtures_s3 import BUCKET, s3_server_fixture  # noqa: F401  (pytest fixture)

from core import storage
from core.errors import UserError
from pipelines import decode
from pipelines.episodes import build, droid, lerobot
from pipelines.episodes.actions import actions_from_states
from pipelines.episodes.convert import ConvertOptions, convert
from pipelines.episodes.schema import frame_step, read_index, read_steps, video_path
from pipelines.quarantine import read_rejects

REPO = Path(__file__).resolve().parents[1]
# 4-frame clips at 4 fps: a 15 Hz episode needs more than 16 steps; at the header's 60 fps it would need 60
OPTIONS = ConvertOptions(clip_frames=4, clip_fps=4.0)


def rejects_by_name(out: Path) -> dict[str, str]:
    table = read_rejects(str(out / "rejects" / "rejects.parquet")).to_pylist()
    return {Path(r["uri"].split("#")[0]).name: r["reason"] for r in table}


@pytest.fixture(scope="module")
def droid_build(tmp_path_factory) -> tuple[Path, Path, object]:
    """One DROID tree with a good trajectory of each clock, a failure, and one of every bad kind."""
    raw = tmp_path_factory.mktemp("droid_raw")
    good = droid_trajectory(raw, "Sat_Nov_18_18:57:20_2023")
    droid_trajectory(raw, "robot_clock", clock="robot")
    droid_trajectory(raw, "no_clock", clock="none")
    droid_trajectory(raw, "one_short", video_frames=29)
    droid_trajectory(raw, "failed", outcome="failure")
    droid_trajectory(raw, "no_gripper", drop=("observation/robot_state/gripper_position",))
    droid_trajectory(raw, "short_video", video_frames=25)
    nan_state = poses(30)
    nan_state[7, 2] = np.nan
    droid_trajectory(raw, "nan_state", state=nan_state)
    droid_trajectory(raw, "constant_state", state=np.tile(poses(1), (30, 1)))
    droid_trajectory(raw, "too_short", steps=12)
    droid_trajectory(raw, "garbage_video", video_bytes=b"not a video at all" * 50)
    droid_trajectory(raw, "no_metadata", metadata=False)
    # Meta's list format: one directory per line, first space-delimited column; one entry relative
    listing = raw / "trajectories.txt"
    dirs = sorted(p.parent for p in raw.rglob("trajectory.h5"))
    listing.write_text("".join(f"{d.relative_to(raw) if d == good else d} extra-column\n" for d in dirs)
                       + f"{raw / 'LAB/success/2023-11-18/gone'}\n")
    out = tmp_path_factory.mktemp("droid_out")
    report = convert(droid.episodes(str(listing), droid.DroidOptions()), str(out), "droid", OPTIONS)
    return raw, out, report


def test_droid_schema_and_frame_rate_fix(droid_build):
    raw, out, report = droid_build
    infos = {i.episode_id: i for i in read_index(str(out))}
    info = infos["LAB-Sat_Nov_18_18-57-20_2023-2023-11-18"]
    assert info.source == "droid" and info.task == "put the cup away" and info.success is True
    assert info.camera == SERIAL and Path(info.video_uri) == raw / "LAB/success/2023-11-18/Sat_Nov_18_18:57:20_2023" \
        / "recordings/MP4" / f"{SERIAL}.mp4"
    # the pitfall: the header says 60 fps; the episode's rate comes from the camera clock (15 Hz)
    with av.open(info.video_uri) as container:
        assert float(container.streams.video[0].average_rate) == 60
    assert info.fps == pytest.approx(DROID_HZ, rel=0.01) and frame_step(info.fps, 4.0) == 4
    assert frame_step(60.0, 4.0) == 15  # what trusting the header would give
    steps = read_steps(str(out), info.episode_id, info.num_steps)
    assert len(steps) == info.num_steps == 30
    assert steps.timestamp_s[0] == 0 and steps.timestamp_s[-1] == pytest.approx(29 / DROID_HZ, abs=3e-3)
    np.testing.assert_array_equal(steps.frame_index, np.arange(30))
    np.testing.assert_allclose(steps.state, poses(30), atol=1e-6)
    np.testing.assert_allclose(steps.extrinsics[0], [0.1, 0.5, 0.3, -2.0, 0.0, -1.0], atol=1e-6)
    # frame_index i is the i-th video frame: one MP4 frame per h5 row
    reader = decode.open_video(decode.fetch(video_path(str(out), info)), backend="pyav")
    assert [frame_number(f) for f in reader.get_frames(steps.frame_index[[0, 13, 29]])] == [0, 13, 29]
    reader.close()
    assert actions_from_states(steps.state[::4]).shape == (7, 7)
    assert report.time_bases == {"camera_capture": 3, "control_rate": 1, "robot_state": 1}
    robot = infos["LAB-robot_clock-2023-11-18"]
    assert robot.fps == pytest.approx(DROID_HZ, rel=1e-6)
    assert infos["LAB-no_clock-2023-11-18"].fps == DROID_HZ


def test_droid_quarantine_reasons_and_failures(droid_build):
    _, out, report = droid_build
    assert rejects_by_name(out) == {
        "no_gripper": "missing_h5_key", "short_video": "video_shorter_than_states", "nan_state": "bad_state",
        "constant_state": "bad_state", "too_short": "episode_too_short", "garbage_video": "unreadable",
        "no_metadata": "bad_metadata", "gone": "missing"}
    assert report.rejected == {"bad_metadata": 1, "bad_state": 2, "episode_too_short": 1, "missing": 1,
                               "missing_h5_key": 1, "unreadable": 1, "video_shorter_than_states": 1}
    infos = {i.episode_id: i for i in read_index(str(out))}
    assert len(infos) == report.episodes == 5
    # one frame short (droid#54): kept, without the step the video lacks
    assert infos["LAB-one_short-2023-11-18"].num_steps == 29 and report.trimmed_last_frame == 1
    assert infos["LAB-failed-2023-11-18"].success is False and report.failures_kept == 1
    written = json.loads((out / "build_report.json").read_text())
    assert written["episodes"] == 5 and written["rejected"] == report.rejected


def test_droid_failures_filtered_and_counted(droid_build, tmp_path):
    raw, _, _ = droid_build
    report = convert(droid.episodes(str(raw / "LAB" / "failure"), droid.DroidOptions()), str(tmp_path), "droid",
                     ConvertOptions(clip_frames=4, keep_failures=False))
    assert report.episodes == 0 and report.failures_filtered == 1 and read_index(str(tmp_path)) == []


def test_droid_directory_scan_finds_every_trajectory(droid_build):
    raw, _, _ = droid_build
    assert len(droid.trajectory_dirs(str(raw))) == 12
    with pytest.raises(UserError, match="no DROID trajectory"):
        droid.episodes(str(raw / "nowhere"), droid.DroidOptions())


def test_lerobot_v21(tmp_path):
    bad = poses(24, 1)
    bad[3:, :] = np.inf
    root = lerobot_v21(tmp_path / "so100", lengths=(30, 24, 8), states={1: bad})
    out = tmp_path / "out"
    report = convert(lerobot.episodes(str(root), lerobot.LeRobotOptions(camera=CAMERA)), str(out), "lerobot",
                     ConvertOptions(clip_frames=4, clip_fps=5.0))
    [info] = read_index(str(out))
    assert (info.episode_id, info.fps, info.num_steps, info.camera, info.task) == (
        "so100-000000", LEROBOT_FPS, 30, CAMERA, "push the block")
    assert info.video_uri.endswith(f"videos/chunk-000/{CAMERA}/episode_000000.mp4")
    steps = read_steps(str(out), info.episode_id)
    np.testing.assert_allclose(steps.state, poses(30, 0), atol=1e-6)
    np.testing.assert_array_equal(steps.frame_index, np.arange(30))
    assert rejects_by_name(out) == {"episode_000001.parquet": "bad_state", "episode_000002.parquet":
                                    "episode_too_short"}
    assert report.rejected == {"bad_state": 1, "episode_too_short": 1}


def test_lerobot_v30_packed_episodes(tmp_path):
    root = lerobot_v30(tmp_path / "droid_lr", lengths=(20, 16))
    out = tmp_path / "out"
    options = lerobot.LeRobotOptions(success="is_episode_successful", id_prefix="lr")
    report = convert(lerobot.episodes(str(root), options), str(out), "lerobot", ConvertOptions(clip_frames=4))
    first, second = read_index(str(out))
    assert first.camera == "observation.images.wrist"  # the first video feature when none is named
    assert (first.success, second.success) == (True, False) and report.failures_kept == 1
    assert first.video_uri == second.video_uri and first.task == "stack; cups"
    steps = read_steps(str(out), second.episode_id)
    # episode 1 starts at from_timestamp = 2.0 s in the shared file: video frame 20
    np.testing.assert_array_equal(steps.frame_index, 20 + np.arange(16))
    reader = decode.open_video(decode.fetch(second.video_uri), backend="pyav")
    assert frame_number(reader.get_frames(steps.frame_index[:1])[0]) == 20
    reader.close()
    np.testing.assert_allclose(steps.timestamp_s, np.arange(16) / LEROBOT_FPS, atol=1e-6)


def test_lerobot_mapping_errors_are_one_line(tmp_path):
    root = lerobot_v21(tmp_path / "ds", lengths=(20,))
    with pytest.raises(UserError, match="camera 'observation.images.top' is not a video feature"):
        lerobot.episodes(str(root), lerobot.LeRobotOptions(camera="observation.images.top"))
    with pytest.raises(UserError, match=r"state column\(s\) \['joints'\] are not features"):
        lerobot.episodes(str(root), lerobot.LeRobotOptions(state=("joints",)))
    with pytest.raises(UserError, match="give 6 dims, need 7"):
        lerobot.episodes(str(root), lerobot.LeRobotOptions(gripper=""))


def test_build_entry(droid_build, tmp_path, capsys):
    raw, _, _ = droid_build
    parser = argparse.ArgumentParser()
    build.add_arguments(parser)
    out = tmp_path / "built"
    args = parser.parse_args(["--format", "droid", "--root", str(raw / "LAB" / "success"), "--out", str(out),
                              "--clip-frames", "4", "--limit", "2", "--val-fraction", "0.5"])
    assert build.run(args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    report = json.loads((out / "build_report.json").read_text())
    # the first two in path order: the good trajectory ("S" sorts first) and constant_state
    assert (len(read_index(str(out))), report["rejected"]) == (1, {"bad_state": 1})


def test_build_help_imports_no_readers():
    code = ("import sys, argparse; import pipelines.episodes.build as b; b.add_arguments(argparse.ArgumentParser()); "
            "print(sorted(m for m in ('h5py', 'av', 'torch', 'ray', 'pyarrow') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_droid_from_s3_fetches_h5_once(s3_server, tmp_path):
    """h5py cannot read S3: the h5 is fetched whole into the cache, once; the dataset is written to S3."""
    local = tmp_path / "raw"
    traj = droid_trajectory(local, "s3_episode")
    for path in traj.rglob("*"):
        if path.is_file():
            storage.write_bytes(f"s3://{BUCKET}/raw/{path.relative_to(local)}", path.read_bytes())
    options = droid.DroidOptions(cache_dir=str(tmp_path / "cache"))
    h5_size = (traj / "trajectory.h5").stat().st_size
    mp4_size = (traj / "recordings/MP4" / f"{SERIAL}.mp4").stat().st_size
    out = f"s3://{BUCKET}/episodes"
    first = convert(droid.episodes(f"s3://{BUCKET}/raw", options), out, "droid", OPTIONS)
    assert (first.episodes, first.fetched_bytes) == (1, h5_size + mp4_size)
    again = convert(droid.episodes(f"s3://{BUCKET}/raw", options), out, "droid", OPTIONS)
    assert again.fetched_bytes == mp4_size  # the cached h5 is reused
    [info] = read_index(out)
    assert info.video_uri == f"s3://{BUCKET}/raw/LAB/success/2023-11-18/s3_episode/recordings/MP4/{SERIAL}.mp4"
    assert len(read_steps(out, info.episode_id, info.num_steps)) == 30
