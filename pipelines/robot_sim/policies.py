"""Exploratory "play" policies: what a teleoperator does with no task, as in DROID's play data.

An episode is a chain of primitives drawn at random: a random walk, a reach to a random point, a reach
toward the cube, a push of the cube toward a random spot and (where the gripper moves) a grasp attempt
that lifts and drops the cube. Each primitive is planned, when it starts, as a few waypoints from the
current observation, and followed with a speed-capped proportional controller plus teleoperation-like
jitter. There are no rewards and no success labels: a grasp that misses is as good data as one that
lifts. Everything random comes from one ``numpy`` generator, so a seed gives the same actions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipelines.robot_sim.env import CUBE_SIZE, Observation

# Where the end effector may go (m): over the table and inside the camera's view; z stays above the table.
WORKSPACE_LOW = np.array([-0.25, -0.25, 0.015])
WORKSPACE_HIGH = np.array([0.2, 0.25, 0.3])
CUBE_AREA = 0.15  # push goals lie in |x|, |y| <= this, where panda-gym places the cube: it stays in view
ACTION_METRES = 0.05  # panda-gym: an action of 1 commands 5 cm per control step (docs/reference.md R-robots-7)
SPEED = (0.1, 0.3)  # speed cap per primitive, in action units: 0.125-0.375 m/s commanded at 25 Hz
JITTER = 0.02  # std of the per-step action noise (action units), a hand's tremor
OPEN, CLOSE, HOLD = 1.0, -1.0, 0.0


@dataclass(frozen=True)
class Waypoint:
    """Move the end effector to ``xyz`` while commanding ``grip``; done within ``tolerance`` metres or after
    ``max_steps`` control steps (a blocked move gives up, as a person would)."""

    xyz: np.ndarray
    grip: float = HOLD
    max_steps: int = 40
    tolerance: float = 0.01


def _clip(xyz: np.ndarray) -> np.ndarray:
    return np.clip(xyz, WORKSPACE_LOW, WORKSPACE_HIGH)


def random_walk(obs: Observation, rng: np.random.Generator) -> list[Waypoint]:
    """A few short random hops around the current position, sometimes pausing, the gripper toggled now
    and then: the undirected motion that fills teleoperated play."""
    points, here = [], obs.ee
    for _ in range(int(rng.integers(3, 7))):
        here = _clip(here + rng.normal(0.0, 0.05, 3))
        grip = rng.choice([OPEN, CLOSE]) if obs.has_gripper and rng.random() < 0.3 else HOLD
        points.append(Waypoint(here, grip, max_steps=int(rng.integers(5, 15)), tolerance=0.005))
    return points


def reach_point(obs: Observation, rng: np.random.Generator) -> list[Waypoint]:
    """A reach to a random point of the workspace."""
    return [Waypoint(rng.uniform(WORKSPACE_LOW, WORKSPACE_HIGH))]


def reach_cube(obs: Observation, rng: np.random.Generator) -> list[Waypoint]:
    """A reach to just above the cube, then a short hover."""
    above = _clip(obs.cube + [*rng.normal(0.0, 0.01, 2), rng.uniform(0.04, 0.12)])
    return [Waypoint(above), Waypoint(above, max_steps=int(rng.integers(3, 10)), tolerance=0.0)]


def push(obs: Observation, rng: np.random.Generator) -> list[Waypoint]:
    """A push of the cube toward a random spot of the cube area: up and behind it, down to its mid
    height, through it, and back up."""
    goal = rng.uniform(-CUBE_AREA, CUBE_AREA, 2)
    offset = goal - obs.cube[:2]
    direction = offset / max(float(np.linalg.norm(offset)), 1e-6)
    distance = min(float(np.linalg.norm(offset)), rng.uniform(0.05, 0.15))
    low = CUBE_SIZE / 2
    behind = obs.cube[:2] - direction * (CUBE_SIZE / 2 + 0.03)
    through = obs.cube[:2] + direction * distance
    return [Waypoint(_clip(np.array([*behind, 0.08]))),
            Waypoint(_clip(np.array([*behind, low]))),
            Waypoint(_clip(np.array([*through, low])), max_steps=60),
            Waypoint(_clip(np.array([*through, 0.1])))]


def grasp(obs: Observation, rng: np.random.Generator) -> list[Waypoint]:
    """A grasp attempt: open above the cube, descend, close, lift, carry a little, let go."""
    aim = obs.cube[:2] + rng.normal(0.0, 0.008, 2)  # an imprecise aim; some attempts miss
    low = CUBE_SIZE / 2
    lift = _clip(np.array([*aim, rng.uniform(0.08, 0.2)]))
    carry = _clip(np.array([*rng.uniform(-CUBE_AREA, CUBE_AREA, 2), lift[2]]))
    return [Waypoint(_clip(np.array([*aim, 0.1])), OPEN),
            Waypoint(_clip(np.array([*aim, low])), OPEN),
            Waypoint(_clip(np.array([*aim, low])), CLOSE, max_steps=10, tolerance=0.0),
            Waypoint(lift, CLOSE),
            Waypoint(carry, CLOSE),
            Waypoint(carry, OPEN, max_steps=8, tolerance=0.0)]


Primitive = Callable[[Observation, np.random.Generator], list[Waypoint]]
# How often each primitive starts, with the gripper locked (Push) and moving (PickAndPlace).
PRIMITIVES: dict[str, Primitive] = {"walk": random_walk, "reach": reach_point, "reach_cube": reach_cube,
                                    "push": push, "grasp": grasp}
WEIGHTS_LOCKED = {"walk": 0.3, "reach": 0.2, "reach_cube": 0.15, "push": 0.35}
WEIGHTS_GRIPPER = {"walk": 0.2, "reach": 0.15, "reach_cube": 0.1, "push": 0.25, "grasp": 0.3}


class PlayPolicy:
    """Chains random primitives for a whole episode; :meth:`act` maps an observation to a 4-D action
    ``(dx, dy, dz, grip)`` in [-1, 1] and :attr:`played` names the primitives started, in order."""

    def __init__(self, rng: np.random.Generator, has_gripper: bool) -> None:
        self.rng = rng
        weights = WEIGHTS_GRIPPER if has_gripper else WEIGHTS_LOCKED
        self.names = list(weights)
        self.probs = np.array(list(weights.values())) / sum(weights.values())
        self.queue: deque[Waypoint] = deque()
        self.steps_on_waypoint = 0
        self.speed = SPEED[1]
        self.played: list[str] = []

    def _next_primitive(self, obs: Observation) -> None:
        name = self.names[int(self.rng.choice(len(self.names), p=self.probs))]
        self.played.append(name)
        self.speed = float(self.rng.uniform(*SPEED))
        self.queue.extend(PRIMITIVES[name](obs, self.rng))

    def act(self, obs: Observation) -> np.ndarray:
        while True:
            if not self.queue:
                self._next_primitive(obs)
            waypoint = self.queue[0]
            error = waypoint.xyz - obs.ee
            if self.steps_on_waypoint < waypoint.max_steps and (
                    waypoint.tolerance <= 0 or np.linalg.norm(error) > waypoint.tolerance):
                break
            self.queue.popleft()
            self.steps_on_waypoint = 0
        self.steps_on_waypoint += 1
        move = error / ACTION_METRES
        norm = float(np.linalg.norm(move))
        if norm > self.speed:
            move *= self.speed / norm
        move = move + self.rng.normal(0.0, JITTER, 3)
        return np.clip(np.array([*move, waypoint.grip]), -1.0, 1.0)
