"""Actions from states, by Meta's V-JEPA 2-AC rule (docs/reference.md R-robots-1.1).

Datasets store states only; the action between two *sampled* states (frames ``step`` raw rows apart)
is their difference, so a sampler at any frame step, and any source with end-effector poses, gets
actions in the same units Meta's predictor was trained on:

- delta xyz: ``p_{t+1} - p_t`` (metres, in the robot base frame);
- delta rotation: the extrinsic Euler-xyz angles of ``R_{t+1} R_t^T`` (radians), where ``R`` is the
  rotation of the state's extrinsic Euler xyz angles; a rotation applied on the left, in the base
  frame, not the difference of the angles (which wraps at +-pi and depends on the current pose);
- delta gripper: ``g_{t+1} - g_t``.

scipy's ``Rotation`` gives the conversions (lower-case ``"xyz"`` is its extrinsic convention, the
one Meta's loader and planner use).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from pipelines.episodes.schema import STATE_DIM

EULER = "xyz"  # extrinsic x, then y, then z (scipy: lower case = extrinsic)


def actions_from_states(states: np.ndarray) -> np.ndarray:
    """``states`` [T, 7] (xyz, Euler xyz, gripper) -> actions [T - 1, 7] in float64, as Meta's loader
    computes them from the clip's sampled states (T states give T - 1 actions)."""
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 2 or states.shape[1] != STATE_DIM:
        raise ValueError(f"states must be [T, {STATE_DIM}], got {list(states.shape)}")
    if len(states) < 2:
        return np.zeros((0, STATE_DIM), dtype=np.float64)
    rot = Rotation.from_euler(EULER, states[:, 3:6])
    delta_rot = (rot[1:] * rot[:-1].inv()).as_euler(EULER)  # R_{t+1} R_t^T, composed in the base frame
    return np.concatenate([np.diff(states[:, :3], axis=0), delta_rot, np.diff(states[:, 6:7], axis=0)], axis=1)
