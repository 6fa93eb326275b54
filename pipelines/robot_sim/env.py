"""A panda-gym Franka Panda scene for collecting play data: end-effector-delta control, a fixed exterior
camera, the goal target hidden, every reset seeded (docs/reference.md R-robots-7).

One :class:`PandaScene` is one episode: it is built, reset with the episode's seed, stepped and closed,
so nothing (object velocity, solver warm starts) carries over from a previous episode and an episode's
bytes do not depend on which worker ran it or what that worker ran before.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.robot_sim.timebase import CONTROL_HZ, STATE_DIM

# The tasks with a cube to play with; Push locks the gripper closed, PickAndPlace actuates it.
ENVS = ("PandaPush-v3", "PandaPickAndPlace-v3")
EE_LINK = 11  # panda-gym's end-effector link (between the fingertips)
MAX_FINGER_WIDTH = 0.08  # m: each Panda finger joint travels 0..0.04 m
CUBE_SIZE = 0.04  # m: panda-gym's object cube edge


@dataclass(frozen=True)
class Camera:
    """The fixed exterior camera; this view shows the arm, gripper, cube and table (docs/reference.md
    R-robots-7). Square images at the training resolution, no shadows (half the render time)."""

    target: tuple[float, float, float] = (-0.15, 0.0, 0.08)
    distance: float = 1.0
    yaw: float = 60.0
    pitch: float = -35.0
    fov: float = 60.0

    def describe(self) -> str:
        """The camera as the episode index names it."""
        return f"exterior yaw{self.yaw:g} pitch{self.pitch:g} dist{self.distance:g}"


@dataclass(frozen=True)
class Observation:
    """What the play policies see: the end effector, the cube and the gripper."""

    ee: np.ndarray  # xyz, m
    cube: np.ndarray  # xyz of the cube's centre, m
    gripper: float  # 0 open .. 1 closed
    has_gripper: bool  # False where the task locks the fingers (Push)


@contextlib.contextmanager
def quiet_native_output() -> Iterator[None]:
    """pybullet's C code prints its build time (to stderr) and its connection options (to stdout) when it
    is imported and connects: four lines per episode that Ray forwards to the driver. This drops what C
    code writes to file descriptors 1 and 2 inside the block; Python exceptions still propagate. The C
    library's buffers are flushed before the descriptors come back, or they would print later anyway."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in (1, 2)]
    try:
        with open(os.devnull, "wb") as devnull:
            for fd in (1, 2):
                os.dup2(devnull.fileno(), fd)
        yield
    finally:
        libc.fflush(None)
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


class PandaScene:
    """One seeded episode of a panda-gym task, driven by 4-D actions ``(dx, dy, dz, grip)`` in [-1, 1].

    ``dx, dy, dz`` command an end-effector displacement of up to 5 cm per control step, which panda-gym
    turns into joint targets with PyBullet's inverse kinematics (gripper pointing down); ``grip`` > 0
    opens the fingers, < 0 closes them, and is ignored where the task locks them.
    """

    def __init__(self, env_name: str, seed: int, resolution: int, camera: Camera = Camera()) -> None:
        if env_name not in ENVS:
            raise ValueError(f"unknown simulated env {env_name!r}; choose one of {', '.join(ENVS)}")
        with quiet_native_output():
            import gymnasium
            import panda_gym  # noqa: F401  (registers the Panda*-v3 ids with gymnasium)
            import pybullet

            # unwrapped: no 50-step TimeLimit, and stepping on after the (ignored) success is allowed
            self.env: Any = gymnasium.make(env_name, render_mode="rgb_array").unwrapped
        self.sim = self.env.sim
        if abs(self.sim.dt * CONTROL_HZ - 1.0) > 1e-9:
            raise RuntimeError(f"panda-gym steps {1 / self.sim.dt:g} Hz, the time base assumes {CONTROL_HZ:g} Hz")
        self.client = self.sim.physics_client
        self.has_gripper = not self.env.robot.block_gripper
        self.resolution = resolution
        # the translucent goal cube renders opaque, like the object: invisible from now on (resets keep it)
        self.client.changeVisualShape(self.sim._bodies_idx["target"], -1, rgbaColor=[0, 0, 0, 0])
        self._view = self.client.computeViewMatrixFromYawPitchRoll(
            cameraTargetPosition=list(camera.target), distance=camera.distance, yaw=camera.yaw,
            pitch=camera.pitch, roll=0.0, upAxisIndex=2)
        self._projection = self.client.computeProjectionMatrixFOV(fov=camera.fov, aspect=1.0, nearVal=0.1,
                                                                  farVal=100.0)
        self._renderer = pybullet.ER_TINY_RENDERER
        # an unseeded reset draws from OS entropy (docs/reference.md R-robots-7): always the episode's seed
        self.env.reset(seed=seed)

    def observe(self) -> Observation:
        return Observation(self.env.robot.get_ee_position(), self.sim.get_base_position("object"),
                           self.gripper(), self.has_gripper)

    def gripper(self) -> float:
        """Finger closure, 0 open .. 1 closed (DROID's convention); 1 where the task locks the fingers."""
        width = self.env.robot.get_fingers_width()
        return float(np.clip(1.0 - width / MAX_FINGER_WIDTH, 0.0, 1.0))

    def state(self) -> np.ndarray:
        """The 7-D state: end-effector xyz (m), its Euler xyz (rad, extrinsic), gripper (0 open .. 1 closed).

        The gripper points down, so the x angle sits near +-pi and may flip sign between steps; actions
        taken from rotation matrices (R_{t+1} R_t^T) are unaffected by that.
        """
        position, quaternion = self.client.getLinkState(self.sim._bodies_idx["panda"], EE_LINK)[:2]
        euler = self.client.getEulerFromQuaternion(quaternion)
        return np.array([*position, *euler, self.gripper()], dtype=np.float64).reshape(STATE_DIM)

    def step(self, action: np.ndarray) -> None:
        """One 40 ms control step; panda-gym's reward and success flag are ignored (play data)."""
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        self.env.step(action if self.has_gripper else action[:3])

    def render(self) -> np.ndarray:
        """The exterior camera's RGB frame, ``[resolution, resolution, 3]`` uint8."""
        side = self.resolution
        _, _, rgba, _, _ = self.client.getCameraImage(side, side, self._view, self._projection, shadow=False,
                                                      renderer=self._renderer)
        return np.asarray(rgba, dtype=np.uint8).reshape(side, side, 4)[..., :3].copy()

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> PandaScene:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
