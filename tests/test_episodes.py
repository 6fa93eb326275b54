"""The episode schema (write, read, validate, completion markers), actions from states, the val split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from episode_fixtures import HEIGHT, WIDTH, poses
from fixtures_media import coded_frame, frame_number

from core.errors import UserError
from pipelines import decode
from pipelines.episodes import schema
from pipelines.episodes.actions import actions_from_states
from pipelines.episodes.convert import check_states, is_validation, split_episodes
from pipelines.quarantine import SampleError


def info(episode_id: str = "sim-0001", fps: float = 25.0) -> schema.EpisodeInfo:
    return schema.EpisodeInfo(episode_id, "sim", "reach", None, fps, 0, "", "front")


def written(tmp_path, steps: int = 30) -> tuple[str, schema.EpisodeInfo]:
    out = str(tmp_path / "ds")
    schema.begin_dataset(out)
    frames = np.stack([coded_frame(i, WIDTH, HEIGHT) for i in range(steps)])
    row = schema.write_episode(out, info(), poses(steps), np.arange(steps) / 25.0, frames,
                               extrinsics=np.ones((steps, 6)))
    return out, row


def test_write_and_read_round_trip(tmp_path):
    out, row = written(tmp_path)
    with pytest.raises(schema.EpisodeSchemaError, match="episode index not found"):
        schema.read_index(out)
    assert schema.finish_dataset(out, [row]) == {"parts": 1, "rows": 1}
    [back] = schema.read_index(out)
    assert back == row and row.num_steps == 30 and row.video_uri == "videos/sim-0001.mp4"
    assert schema.index_table([back]).schema == schema.INDEX_SCHEMA
    steps = schema.read_steps(out, row.episode_id, row.num_steps)
    np.testing.assert_allclose(steps.state, poses(30), atol=1e-6)
    assert steps.state.dtype == np.float32 and steps.extrinsics.shape == (30, 6)
    np.testing.assert_array_equal(steps.frame_index, np.arange(30))
    table = pq.read_table(schema.steps_uri(out, row.episode_id))
    assert table.schema.field("state").type == schema.STATE_TYPE
    assert table.schema.field("extrinsics").type == schema.EXTRINSICS_TYPE
    reader = decode.open_video(decode.fetch(schema.video_path(out, row)), backend="pyav")
    assert reader.num_frames == 30 and reader.fps == 25.0
    assert [frame_number(f) for f in reader.get_frames(np.array([0, 17, 29]))] == [0, 17, 29]
    reader.close()


def test_unfinished_dataset_is_refused(tmp_path):
    out, row = written(tmp_path)
    schema.finish_dataset(out, [row])
    schema.begin_dataset(out)  # a rerun began and was killed
    with pytest.raises(schema.EpisodeSchemaError, match="incomplete episode dataset"):
        schema.read_index(out)


def test_index_errors_name_file_and_field(tmp_path):
    out, row = written(tmp_path)
    schema.finish_dataset(out, [row])
    index = f"{out}/episodes.parquet"
    good = pq.read_table(index)
    cases = [
        (good.drop_columns(["fps"]), r"missing field\(s\) \['fps'\]"),
        (good.set_column(4, "fps", pa.array(["fast"])), "column 'fps' must be a number"),
        (good.set_column(4, "fps", pa.array([0.0])), "row 0: field 'fps' must be a positive rate"),
        (good.set_column(0, "episode_id", pa.array(["a/b"])), "episode id 'a/b'"),
        (pa.concat_tables([good, good]), r"field 'episode_id' repeats \['sim-0001'\]"),
        (good.set_column(6, "video_uri", pa.nulls(1, pa.string())), "field 'video_uri' is null"),
    ]
    for table, message in cases:
        pq.write_table(table, index)
        with pytest.raises(UserError, match=f"episodes.parquet: .*{message}"):
            schema.read_index(out)


def test_steps_errors_name_file_and_field(tmp_path):
    out, row = written(tmp_path)
    uri = schema.steps_uri(out, row.episode_id)
    good = pq.read_table(uri)
    six = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(30 * 6, np.float32)), 6)
    cases = [
        (good.drop_columns(["timestamp_s"]), r"missing field\(s\) \['timestamp_s'\]"),
        (good.set_column(2, "state", six), "column 'state' must be"),
        (good.set_column(1, "timestamp_s", pa.array(np.zeros(30))), "'timestamp_s' must be finite and strictly"),
        (good.set_column(0, "frame_index", pa.array(np.arange(30)[::-1], pa.int32())), "'frame_index' must not"),
    ]
    for table, message in cases:
        pq.write_table(table, uri)
        with pytest.raises(schema.EpisodeSchemaError, match=message) as err:
            schema.read_steps(out, row.episode_id)
        assert str(err.value).startswith(uri)
    pq.write_table(good, uri)
    with pytest.raises(schema.EpisodeSchemaError, match="30 step row.*num_steps 31"):
        schema.read_steps(out, row.episode_id, 31)
    with pytest.raises(schema.EpisodeSchemaError, match=r"'state' must be \[T, 7\]"):
        schema.write_episode(out, info("x"), np.zeros((5, 6)), np.arange(5.0), "v.mp4")
    with pytest.raises(schema.EpisodeSchemaError, match="3 frames for 5 states"):
        schema.write_episode(out, info("x"), poses(5), np.arange(5.0), np.zeros((3, 8, 8, 3), np.uint8))


def test_safe_id_and_frame_step():
    assert schema.safe_id("LAB+5d05c5aa+2023-07-07") == "LAB-5d05c5aa-2023-07-07"
    assert schema.safe_id("Sat_Nov_18_18:57:20_2023") == "Sat_Nov_18_18-57-20_2023"
    assert (schema.frame_step(15.0, 4.0), schema.frame_step(15.999999, 4.0), schema.frame_step(60.0, 4.0)) == (4, 4, 15)
    assert schema.frame_step(25.0, 4.0) == 7 and schema.frame_step(2.0, 4.0) == 1


# ---------------------------------------------------------------------------- actions

def matrix(euler: np.ndarray) -> np.ndarray:
    """Extrinsic x-y-z Euler angles as a rotation matrix, written out (R = Rz Ry Rx), not via scipy."""
    (cx, cy, cz), (sx, sy, sz) = np.cos(euler), np.sin(euler)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def test_actions_known_rotations():
    states = np.zeros((3, 7))
    states[:, 5] = [0.1, 0.3, 0.25]  # yaw only: the deltas are plain differences
    states[:, :3] = [[0, 0, 0], [0.01, -0.02, 0.03], [0.01, -0.02, 0.03]]
    states[:, 6] = [0.0, 0.4, 1.0]
    actions = actions_from_states(states)
    np.testing.assert_allclose(actions, [[0.01, -0.02, 0.03, 0, 0, 0.2, 0.4], [0, 0, 0, 0, 0, -0.05, 0.6]], atol=1e-12)
    assert actions.dtype == np.float64 and actions_from_states(states[:1]).shape == (0, 7)
    # across +-pi the delta is the short way round, not -6.2
    wrap = np.zeros((2, 7))
    wrap[:, 5] = [3.1, -3.1]
    np.testing.assert_allclose(actions_from_states(wrap)[0, 5], 2 * np.pi - 6.2, atol=1e-9)


def test_actions_rotation_composes_on_the_left():
    """Euler(R_{t+1} R_t^T), not the difference of the angles: checked against matrices built by hand."""
    start, delta = np.array([0.3, -0.2, 0.5]), np.array([0.1, 0.2, -0.15])
    states = np.zeros((2, 7))
    states[0, 3:6] = start
    states[1, 3:6] = np.array([0.412, -0.033, 0.38])  # any second pose
    got = actions_from_states(states)[0, 3:6]
    np.testing.assert_allclose(matrix(got), matrix(states[1, 3:6]) @ matrix(start).T, atol=1e-12)
    assert not np.allclose(got, states[1, 3:6] - start, atol=1e-3)
    # and R(delta) R_t as the next pose gives back delta
    from scipy.spatial.transform import Rotation

    states[1, 3:6] = Rotation.from_matrix(matrix(delta) @ matrix(start)).as_euler("xyz")
    np.testing.assert_allclose(actions_from_states(states)[0, 3:6], delta, atol=1e-12)


# ---------------------------------------------------------------------------- checks and split

def test_state_checks():
    check_states(poses(20))
    for bad, message in [(np.tile(poses(1), (20, 1)), "never changes"), (poses(20) * [1, 1, 1, 1, 1, 1, 3],
                                                                           "gripper spans")]:
        with pytest.raises(SampleError, match=message) as err:
            check_states(bad)
        assert err.value.reason == "bad_state"
    nan = poses(20)
    nan[4, 0] = np.nan
    with pytest.raises(SampleError, match="NaN or inf in 1 state row"):
        check_states(nan)


def test_validation_split_is_deterministic_by_id():
    ids = [f"ep-{i:05d}" for i in range(2000)]
    held = [i for i in ids if is_validation(i, 0.1)]
    assert 150 < len(held) < 250
    assert held[:3] == [i for i in ids if is_validation(i, 0.1)][:3]  # same answer every call
    assert held[:3] == ["ep-00011", "ep-00012", "ep-00028"]  # pinned: sha256, not Python's salted hash
    assert [i for i in ids if is_validation(i, 0.1, salt="b")] != held
    assert set(held) <= {i for i in ids if is_validation(i, 0.2)}  # growing the fraction only adds
    infos = [info(i) for i in ids[:50]]
    train, val = split_episodes(infos, 0.2)
    assert len(train) + len(val) == 50 and not {t.episode_id for t in train} & {v.episode_id for v in val}
    assert split_episodes(infos, 0.0)[1] == [] and split_episodes(infos, 1.0)[0] == []


def test_validate_data_reports_bad_episodes_by_reason(tmp_path, capsys):
    """`validate-data --episodes`: every episode through the build's checks, each bad one a reject with
    its reason; a missing index is the dataset's error (exit 2)."""
    from cluster.cli import main as cli_main
    from pipelines.quarantine import read_rejects

    out = str(tmp_path / "ds")
    schema.begin_dataset(out)
    frames = np.stack([coded_frame(i, WIDTH, HEIGHT) for i in range(60)])
    rows = []
    for name, steps in (("good", 60), ("short", 30), ("nan", 60), ("cut", 60), ("gone", 60)):
        state = poses(steps)
        if name == "nan":
            state[5, 2] = np.nan
        rows.append(schema.write_episode(out, info(name), state, np.arange(steps) / 25.0, frames[:steps]))
    schema.encode_video(schema.video_path(out, rows[3]), frames[:40], 25.0)  # 20 frames fewer than its steps
    Path(schema.steps_uri(out, "gone")).unlink()
    schema.finish_dataset(out, rows)
    rejects = tmp_path / "rejects.parquet"
    assert cli_main(["validate-data", "--episodes", out, "--rejects", str(rejects)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{out}: 5 episodes, 1 good, 4 bad")
    table = read_rejects(str(rejects)).to_pylist()
    assert {r["uri"].rsplit("/", 1)[-1]: r["reason"] for r in table} == {
        "short.parquet": "episode_too_short", "nan.parquet": "bad_state",
        "cut.parquet": "video_shorter_than_states", "gone.parquet": "missing"}
    assert cli_main(["validate-data", "--episodes", str(tmp_path / "none"), "--rejects", str(rejects)]) == 2
