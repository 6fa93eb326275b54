"""The one time base of simulated robot data, shared by collection, post-training and planning.

panda-gym steps its physics at 500 Hz in 20 substeps per action, so the arm takes one end-effector-delta
command every 40 ms: a 25 Hz control rate (docs/reference.md R-robots-7). Frames are rendered only at
the recording rate, a whole divisor of the control rate, and each recorded frame is one row of the
episode's steps table (as DROID's one MP4 frame per 15 Hz h5 row); the table's ``fps`` is that rate.

Clips are sampled at a nominal 4 fps with Meta's frame step ``ceil(fps / 4)``
(:func:`pipelines.episodes.schema.frame_step`). 25 Hz holds no whole number of control steps per 1/4 s,
so the step rounds up: at the default 12.5 Hz a clip frame is every 4th recorded frame, 8 control steps,
0.32 s (3.125 fps; 8 frames span 2.24 s); at 25 Hz every 7th, 0.28 s. A planner built on this data
executes one action per :func:`control_steps_per_clip_frame` control steps.

Units, as DROID's: positions in metres, angles in radians (Euler xyz, extrinsic, as scipy's ``"xyz"``
and pybullet's ``getEulerFromQuaternion``), gripper 0 = open .. 1 = closed.
"""

from __future__ import annotations

from pipelines.episodes.schema import frame_step

CONTROL_HZ = 25.0  # end-effector commands per second (panda-gym: 500 Hz physics, 20 substeps)
RECORD_HZ = 12.5  # default recording rate: one rendered frame and one state row every 2 control steps
CLIP_FPS = 4.0  # the nominal clip rate of V-JEPA 2-AC (docs/reference.md R-vjepa2-6.4)
STATE_DIM = 7  # x, y, z (m); Euler x, y, z (rad); gripper (0 open .. 1 closed)


def control_steps_per_frame(record_hz: float) -> int:
    """Control steps between two recorded frames; refuses a rate that is no whole divisor of 25 Hz,
    since a frame can only be taken between two control steps."""
    steps = round(CONTROL_HZ / record_hz) if record_hz > 0 else 0
    if steps < 1 or abs(steps * record_hz - CONTROL_HZ) > 1e-9:
        raise ValueError(f"recording rate {record_hz} Hz must divide the {CONTROL_HZ:g} Hz control rate "
                         "(25, 12.5, 8.333..., 6.25, 5, ...)")
    return steps


def control_steps_per_clip_frame(record_hz: float = RECORD_HZ) -> int:
    """Control steps between two frames of a 4 fps clip of data recorded at ``record_hz``: 8 at 12.5 Hz."""
    return frame_step(record_hz, CLIP_FPS) * control_steps_per_frame(record_hz)
