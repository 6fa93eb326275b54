"""Simulated robot data (pipelines/robot_sim/): determinism across processes and Ray tasks, the camera,
the hidden goal, the play policies, the time base, and datasets that the episode schema reads back.

Episodes here are tiny (32 px, 56-60 control steps): rendering is ~25 ms a frame whatever the size.
"""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from core.errors import UserError
from pipelines.episodes.schema import read_index, read_steps, video_path
from pipelines.robot_sim.collect import CollectConfig, check, collect, plan_episodes, resolve, sim_task, simulate
from pipelines.robot_sim.env import MAX_FINGER_WIDTH, PandaScene
from pipelines.robot_sim.policies import WORKSPACE_HIGH, WORKSPACE_LOW, PlayPolicy, grasp
from pipelines.robot_sim.timebase import control_steps_per_clip_frame, control_steps_per_frame

PICK = "PandaPickAndPlace-v3"
SMALL = 32


def test_time_base() -> None:
    assert control_steps_per_frame(12.5) == 2 and control_steps_per_frame(25.0) == 1
    assert control_steps_per_clip_frame(12.5) == 8  # ceil(12.5 / 4) = 4 frames of 2 steps: 0.32 s
    assert control_steps_per_clip_frame(25.0) == 7
    with pytest.raises(ValueError, match="must divide"):
        control_steps_per_frame(4.0)


def test_same_seed_same_episode_in_a_ray_task(ray_session) -> None:
    """A local run and a Ray worker give bit-identical states and frames; another seed differs."""
    args = (PICK, 7, 24, 12.5, SMALL)
    remote = sim_task(simulate).remote(*args)
    local = simulate(*args)
    there = ray_session.get(remote)
    assert np.array_equal(local.states, there.states) and np.array_equal(local.frames, there.frames)
    assert local.played == there.played
    other = simulate(PICK, 8, 24, 12.5, SMALL)
    assert not np.array_equal(local.states, other.states)


def test_camera_sees_the_arm_and_the_goal_is_hidden() -> None:
    with PandaScene(PICK, 0, SMALL) as scene:
        first = scene.render()
        assert first.shape == (SMALL, SMALL, 3) and first.dtype == np.uint8 and first.std() > 20
        # the goal target is invisible: moving it elsewhere changes no pixel; made visible again, it shows
        scene.sim.set_base_pose("target", np.array([0.1, 0.1, 0.02]), np.array([0.0, 0.0, 0.0, 1.0]))
        assert np.array_equal(scene.render(), first)
        target = scene.sim._bodies_idx["target"]
        scene.client.changeVisualShape(target, -1, rgbaColor=[0.1, 0.9, 0.1, 1.0])
        assert not np.array_equal(scene.render(), first)
        scene.client.changeVisualShape(target, -1, rgbaColor=[0, 0, 0, 0])
        for _ in range(15):  # the arm moves, so does the picture
            scene.step(np.array([0.0, 1.0, -0.5, 0.0]))
        moved = scene.render()
    assert np.abs(moved.astype(int) - first).sum(axis=-1).astype(bool).mean() > 0.01


def test_policies_move_the_end_effector_inside_the_workspace() -> None:
    with PandaScene("PandaPush-v3", 3, SMALL) as scene:
        policy = PlayPolicy(np.random.default_rng(3), scene.has_gripper)
        path = [scene.observe().ee]
        actions = []
        for _ in range(60):
            actions.append(policy.act(scene.observe()))
            scene.step(actions[-1])
            path.append(scene.observe().ee)
    path, actions = np.array(path), np.array(actions)
    assert np.linalg.norm(np.diff(path, axis=0), axis=1).sum() > 0.2  # metres travelled
    assert np.all(path >= WORKSPACE_LOW - 0.03) and np.all(path <= WORKSPACE_HIGH + 0.03)
    assert np.all(np.abs(actions) <= 1.0) and policy.played and "grasp" not in policy.played  # Push: gripper locked


def test_a_grasp_attempt_closes_on_the_cube_and_lifts_it() -> None:
    with PandaScene(PICK, 2, SMALL) as scene:
        policy = PlayPolicy(np.random.default_rng(2), scene.has_gripper)
        policy.queue.extend(grasp(scene.observe(), policy.rng))
        grips, heights = [], []
        while not policy.played:  # until the grasp's waypoints are used up and the next primitive starts
            scene.step(policy.act(scene.observe()))
            grips.append(scene.gripper())
            heights.append(scene.observe().cube[2])
    assert min(grips) < 0.05  # opened
    assert 0.3 < max(grips) < 0.7  # closed on a 4 cm cube: 1 - 0.04 / MAX_FINGER_WIDTH = 0.5
    assert MAX_FINGER_WIDTH == 0.08 and max(heights) > 0.06  # lifted off the table (resting centre 0.02 m)


def test_config_is_refused_before_anything_starts(tmp_path) -> None:
    base = CollectConfig(out=str(tmp_path / "d"))
    for bad, match in ((dict(env="PandaReach-v3"), "not one of"), (dict(record_hz=4.0), "record_hz"),
                       (dict(steps=50), "shorter than one 8-frame clip"), (dict(workers=0), "must be >= 1")):
        with pytest.raises(UserError, match=match):
            check(resolve(CollectConfig(**{**base.__dict__, **bad})))
    check(resolve(base))


def test_collect_writes_episodes_the_schema_reads(ray_session, tmp_path) -> None:
    cfg = CollectConfig(env=PICK, episodes=2, steps=60, resolution=SMALL, seed=5, out=str(tmp_path / "ds"))
    result = collect(cfg)
    infos = read_index(result.dataset_dir)
    assert [i.episode_id for i in infos] == [f"{PICK}-s5-00000", f"{PICK}-s5-00001"]
    for info in infos:
        assert info.success is None and info.fps == 12.5 and info.num_steps == 31 and info.task.startswith("play: ")
        steps = read_steps(result.dataset_dir, info.episode_id, info.num_steps)
        assert np.allclose(steps.timestamp_s, np.arange(31) * 2 / 25) and steps.state.dtype == np.float32
        xyz, euler, gripper = steps.state[:, :3], steps.state[:, 3:6], steps.state[:, 6]
        assert np.all(xyz >= WORKSPACE_LOW - 0.03) and np.all(xyz <= WORKSPACE_HIGH + 0.03)  # metres
        assert np.all(np.abs(euler) <= np.pi + 1e-6)  # radians
        assert np.allclose(np.abs(euler[:, 0]), np.pi, atol=0.1)  # the gripper points down
        assert np.all((gripper >= 0) & (gripper <= 1))
        with av.open(video_path(result.dataset_dir, info)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == info.num_steps and frames[0].shape == (SMALL, SMALL, 3)
    # what a Ray worker wrote is the episode its seed gives anywhere
    first = plan_episodes(resolve(cfg))[0]
    local = simulate(PICK, first.seed, cfg.steps, cfg.record_hz, SMALL)
    assert np.array_equal(read_steps(result.dataset_dir, first.episode_id).state, local.states.astype(np.float32))
    summary = json.loads((tmp_path / "ds" / "collect.json").read_text())
    assert summary["episodes"] == 2 and summary["frames"] == 62 and summary["clip_frame_control_steps"] == 8
    assert 0 < summary["clip_frame_delta_xyz_m"]["norm_p50"] <= summary["clip_frame_delta_xyz_m"]["norm_p95"]
