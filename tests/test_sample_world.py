"""The sample world: layout, both manifest formats, decodability, ground truth, determinism, CLI.

Read-only checks use the session's ``sample_world`` (seed 0); one test builds a second world through
the CLI and compares it byte for byte.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import decord
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.manifest import REQUIRED_COLUMNS, read_manifest
from pipelines.sample_world import MIN_SCENE_S, SOURCES, TARGETS, plan_world, prepare_out

REPO_ROOT = Path(__file__).resolve().parents[1]
FOLDERS = [f"sources/{s}" for s in SOURCES] + [f"targets/{t}/{split}" for t in TARGETS
                                                for split in ("train", "val")]
VP9_FOLDERS = ("sources/ssv2", "targets/ssv2/train", "targets/ssv2/val")


@pytest.fixture(scope="module")
def world(sample_world: Path) -> dict:
    return json.loads((sample_world / "world.json").read_text())


@pytest.fixture(scope="module")
def rows(sample_world: Path) -> dict[str, list[dict]]:
    """Manifest rows (Parquet) per folder."""
    return {f: read_manifest(str(sample_world / f / "manifest.parquet")).to_pylist() for f in FOLDERS}


def video_rows(rows: dict[str, list[dict]]) -> list[dict]:
    return [r for folder, rs in rows.items() if folder != "sources/imagenet" for r in rs]


def gray_frames(uri: str, size: tuple[int, int] = (32, 24)) -> tuple[np.ndarray, float]:
    with av.open(uri) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="gray", width=size[0], height=size[1]).astype(np.float32)
                  for f in container.decode(stream)]
        return np.stack(frames), float(stream.average_rate)


def test_every_folder_has_both_manifest_formats(sample_world: Path, world: dict,
                                                rows: dict[str, list[dict]]) -> None:
    for folder in FOLDERS:
        parquet = rows[folder]
        csv = read_manifest(str(sample_world / folder / "manifest.csv")).to_pylist()
        assert [(r["uri"], r["label"]) for r in csv] == [(r["uri"], r["label"]) for r in parquet], folder
        assert len(parquet) == world["counts"][folder] > 0
        # ground truth stays out of the manifests: exactly the schema's columns
        assert pq.read_schema(sample_world / folder / "manifest.parquet").names == list(REQUIRED_COLUMNS)
        for row in parquet:
            path = Path(row["uri"])
            assert path.is_absolute() and path.is_relative_to(sample_world / folder), row["uri"]
            assert path.stat().st_size == row["bytes"]
    labels = {r["label"] for f in FOLDERS if f != "sources/imagenet" for r in rows[f]}
    assert labels <= set(range(len(world["labels"]["video"]))) and len(labels) >= 5
    assert {r["label"] for r in rows["sources/imagenet"]} == set(range(len(world["labels"]["imagenet"])))


def test_formats_and_variety_like_the_real_datasets(rows: dict[str, list[dict]]) -> None:
    for folder, folder_rows in rows.items():
        suffix = ".JPEG" if folder == "sources/imagenet" else ".webm" if folder in VP9_FOLDERS else ".mp4"
        assert {Path(r["uri"]).suffix for r in folder_rows} == {suffix}, folder
    with av.open(rows["sources/ssv2"][0]["uri"]) as c:
        assert c.streams.video[0].codec_context.name == "vp9"
    with av.open(rows["sources/yt1b"][0]["uri"]) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    modes = {Image.open(r["uri"]).mode for r in rows["sources/imagenet"]}
    assert modes == {"RGB", "L", "CMYK"}
    videos = video_rows(rows)
    fps = [r["fps"] for r in videos]
    durations = [r["duration_s"] for r in videos]
    assert min(fps) <= 12 and max(fps) >= 50
    assert min(durations) < 2 and max(durations) >= 20
    sizes = set()
    for r in videos[::3]:
        with av.open(r["uri"]) as c:
            sizes.add((c.streams.video[0].width, c.streams.video[0].height))
    assert any(h > w for w, h in sizes) and any(w % 16 or h % 16 for w, h in sizes)


def test_every_video_decodes_with_decord_and_pyav(rows: dict[str, list[dict]]) -> None:
    videos = video_rows(rows)
    assert len(videos) > 90
    for row in videos:
        reader = decord.VideoReader(row["uri"], num_threads=1)
        assert abs(len(reader) - row["num_frames"]) <= 1, row["uri"]
        assert reader.get_avg_fps() == pytest.approx(row["fps"], abs=0.01)
        assert reader.get_batch([0, len(reader) // 2, len(reader) - 1]).shape[0] == 3
        with av.open(row["uri"]) as container:
            decoded = sum(1 for _ in container.decode(video=0))
        assert abs(decoded - row["num_frames"]) <= 1, row["uri"]


def test_yt1b_ground_truth_matches_the_pool(world: dict, rows: dict[str, list[dict]]) -> None:
    pool = {r["uri"]: r for r in rows["sources/yt1b"]}
    assert [v["uri"] for v in world["yt1b"]] == list(pool)
    long_scenes = {True: 0, False: 0}
    for video in world["yt1b"]:
        scenes = video["scenes"]
        assert scenes[0]["start_s"] == 0
        assert all(a["end_s"] == b["start_s"] for a, b in zip(scenes, scenes[1:]))
        assert scenes[-1]["end_s"] == pytest.approx(pool[video["uri"]]["duration_s"], abs=1e-3)
        assert video["on_target"] == all(s["on_target"] for s in scenes)
        for s in scenes:
            long_scenes[s["on_target"]] += s["end_s"] - s["start_s"] >= MIN_SCENE_S
    assert long_scenes[True] >= 20 and long_scenes[False] >= 10
    mixed = [v for v in world["yt1b"] if len({s["on_target"] for s in v["scenes"]}) == 2]
    assert len(mixed) >= 2
    assert all(s["end_s"] - s["start_s"] >= MIN_SCENE_S for v in mixed for s in v["scenes"])


def test_scene_bounds_are_the_hard_cuts(world: dict) -> None:
    """Across every recorded bound the picture changes more than anywhere inside a scene."""
    edits = [v for v in world["yt1b"] if len(v["scenes"]) > 1]
    assert len(edits) >= 4
    for video in edits:
        frames, fps = gray_frames(video["uri"])
        change = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2))
        cuts = [round(s["start_s"] * fps) - 1 for s in video["scenes"][1:]]
        within = np.delete(change, cuts)
        assert change[cuts].min() > within.max(), video["uri"]


def _middle_thumb(uri: str, start_s: float, end_s: float) -> np.ndarray:
    frames, fps = gray_frames(uri, (16, 16))
    x = frames[min(len(frames) - 1, int((start_s + end_s) / 2 * fps))].ravel()
    return (x - x.mean()) / (x.std() + 1e-6)


def test_planted_duplicates_look_like_their_val_clip(world: dict, rows: dict[str, list[dict]]) -> None:
    val = [r for t in TARGETS for r in rows[f"targets/{t}/val"]]
    val_thumbs = {r["uri"]: _middle_thumb(r["uri"], 0.0, r["duration_s"]) for r in val}
    assert {d["kind"] for d in world["near_duplicates"]} >= {"distorted copy", "cropped re-encode", "scene"}
    for dup in world["near_duplicates"]:
        assert dup["uri"] in {v["uri"] for v in world["yt1b"]} and dup["target_uri"] in val_thumbs
        thumb = _middle_thumb(dup["uri"], dup["start_s"], dup["end_s"])
        similarity = {uri: float(thumb @ t) / thumb.size for uri, t in val_thumbs.items()}
        assert max(similarity, key=similarity.get) == dup["target_uri"], dup
        assert similarity[dup["target_uri"]] > 0.85


def test_val_content_reaches_training_data_only_through_planted_duplicates(world: dict) -> None:
    """No pixel source of a val clip is in any other clip, except in the planted copies of that clip."""
    content = {uri: set(ids) for uri, ids in world["content"].items()}
    val_ids = set().union(*(ids for uri, ids in content.items() if "/val/" in uri))
    planted = {d["uri"]: d["target_uri"] for d in world["near_duplicates"]}
    for uri, ids in content.items():
        if "/val/" not in uri:
            assert ids & val_ids == (content[planted[uri]] if uri in planted else set()), uri


def test_prepare_out_refuses_files_and_foreign_directories(tmp_path: Path) -> None:
    from core.errors import UserError

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        prepare_out(a_file)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        prepare_out(tmp_path / "foreign")
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_cli_rejects_a_file_as_out(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    result = subprocess.run([sys.executable, "-m", "cluster.cli", "sample-world", "--out", str(a_file)],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not a directory" in result.stderr


def _normalised(path: Path, root: Path) -> object:
    """File content with the world's root path replaced (manifests and world.json embed it)."""
    if path.suffix == ".parquet":
        table = pq.read_table(path).to_pylist()
        return [{**r, "uri": r["uri"].replace(str(root), "ROOT")} for r in table]
    if path.suffix in (".csv", ".json"):
        return path.read_text().replace(str(root), "ROOT")
    return path.read_bytes()


def test_cli_rebuild_gives_the_same_bytes(sample_world: Path, tmp_path: Path) -> None:
    """Same seed -> same bytes; an earlier world at --out is replaced; missing parents are created."""
    out = tmp_path / "missing" / "parent" / "world"
    (out / "sources").mkdir(parents=True)
    (out / ".sample_world").write_text("")
    (out / "sources" / "stale.mp4").write_bytes(b"old")
    result = subprocess.run([sys.executable, "-m", "pipelines.sample_world", "--out", str(out), "--seed", "0",
                             "--no-robot"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "sources/yt1b" in result.stderr  # progress is logged
    def video_part(root: Path) -> list[Path]:  # the robot part's determinism is tests/test_robot_sim.py's
        return sorted(p.relative_to(root) for p in root.rglob("*")
                      if p.is_file() and p.relative_to(root).parts[0] != "robot")

    files = video_part(sample_world)
    assert files == video_part(out)
    for rel in files:
        if rel.name == "world.json":  # the same, but for the robot part's record
            assert json.loads(_normalised(out / rel, out)) == {
                k: v for k, v in json.loads(_normalised(sample_world / rel, sample_world)).items() if k != "robot"}
            continue
        assert _normalised(out / rel, out) == _normalised(sample_world / rel, sample_world), rel


def test_the_robot_part_holds_twelve_simulated_episodes(sample_world: Path, world: dict) -> None:
    from pipelines.episodes.schema import read_index, read_steps

    episodes = read_index(str(sample_world / "robot"))
    assert world["robot"] == {"dataset": str(sample_world / "robot"), "seed": 0, "episodes": 12, "frames": 1212,
                              "robot_seconds": 96.0}
    assert len(episodes) == 12 and {e.fps for e in episodes} == {12.5} and {e.num_steps for e in episodes} == {101}
    assert read_steps(str(sample_world / "robot"), episodes[0].episode_id).state.shape == (101, 7)


def test_seed_changes_the_world() -> None:
    assert plan_world(0) != plan_world(1)


def test_an_identical_world_is_not_rebuilt(sample_world: Path, world: dict, tmp_path: Path) -> None:
    """``sample-world`` on a complete world of the same plan, seed and library versions returns at once
    and touches no file; a world with a file missing is not taken as up to date."""
    from pipelines.sample_world.build import build_sample_world, existing_world

    before = {p: p.stat().st_mtime_ns for p in sample_world.rglob("*") if p.is_file()}
    assert build_sample_world(sample_world, seed=0) == world
    assert {p: p.stat().st_mtime_ns for p in sample_world.rglob("*") if p.is_file()} == before
    assert existing_world(sample_world, seed=1, digest=world["plan_digest"]) is None  # another seed
    broken = {**world, "content": {**world["content"], str(tmp_path / "gone.mp4"): []}}
    (tmp_path / "world.json").write_text(json.dumps(broken))
    assert existing_world(tmp_path, seed=0, digest=world["plan_digest"]) is None
