"""Collect simulated Franka play episodes (panda-gym on PyBullet) as a robot-episode dataset.

    vjepa2-ray collect --config collect/tiny [env=PandaPush-v3 episodes=N out=DIR ...]

Episodes run in parallel as Ray tasks (``workers`` at a time, one CPU each). Each builds its own scene,
plays exploratory primitives (random walks, reaches, pushes, grasp attempts; no rewards, no success
labels), renders the fixed exterior camera at the recording rate and writes one episode of the schema
in pipelines/episodes/schema.py: ``videos/<id>.mp4``, ``steps/<id>.parquet`` (7-D state per recorded
frame). The driver then writes ``episodes.parquet`` and ``collect.json`` (the config, robot time and the
per-clip-frame end-effector displacement that sizes a planner's ``maxnorm``). The same seed gives the same
states and frames, whichever worker runs an episode. The time base is pipelines/robot_sim/timebase.py.
The last line printed is the dataset directory.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from core import storage
from core.entry import ConfigStage, module_main
from core.errors import UserError
from core.ray_session import RayConfig, connect, warn_if_lost, worker_runtime_env
from pipelines.episodes.schema import EpisodeInfo, begin_dataset, finish_dataset, frame_step, write_episode
from pipelines.robot_sim.env import ENVS, Camera, PandaScene
from pipelines.robot_sim.policies import PlayPolicy
from pipelines.robot_sim.timebase import (
    CLIP_FPS,
    CONTROL_HZ,
    RECORD_HZ,
    control_steps_per_clip_frame,
    control_steps_per_frame,
)

log = logging.getLogger(__name__)

SUMMARY_FILE = "collect.json"
SOURCE = "panda-gym"
CLIP_FRAMES = 8  # V-JEPA 2-AC's frames per clip (docs/reference.md R-vjepa2-6.4): an episode must hold one
SIM_ENV = {"OMP_NUM_THREADS": "1"}  # one thread per simulating process: episodes, not threads, parallelize


@dataclass
class CollectConfig:
    """A simulated play dataset: which task, how many episodes of how many control steps, how recorded."""

    env: str = "PandaPickAndPlace-v3"  # PandaPickAndPlace-v3 (gripper moves) or PandaPush-v3 (gripper locked)
    episodes: int = 16
    # Control steps per episode at 25 Hz: 200 = 8 s; one 8-frame clip at 4 fps needs 56 (timebase.py)
    steps: int = 200
    record_hz: float = RECORD_HZ  # frames (and state rows) per second; must divide the 25 Hz control rate
    resolution: int = 128  # square frames at the training crop (configs/pretrain/tiny.yaml: crop_size 128)
    seed: int = 0
    out: str = "data/robot_sim/play"  # the dataset directory; relative paths resolve against data_root
    # "" -> $VJEPA2_RAY_DATA_ROOT, else the working directory (core/storage.py data_root). Absolute or s3://.
    data_root: str = ""
    workers: int = 2  # episodes simulated at once (Ray tasks in flight, one CPU each)
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass(frozen=True)
class EpisodeSpec:
    """Everything one episode needs, so a worker runs it from this alone."""

    index: int
    episode_id: str
    seed: int
    env: str
    steps: int
    record_hz: float
    resolution: int
    dataset_dir: str


@dataclass
class Recording:
    """One simulated episode in memory: one row per recorded frame."""

    states: np.ndarray  # [T, 7] float64
    timestamps: np.ndarray  # [T] float64, seconds since the episode's first frame
    frames: np.ndarray  # [T, H, W, 3] uint8
    played: list[str]  # the primitives the policy started, in order


@dataclass
class EpisodeResult:
    """What a worker sends back: the index row, and the end effector's displacement per 4 fps clip frame."""

    info: EpisodeInfo
    clip_deltas: np.ndarray  # [n, 3] float32, metres
    seconds: float  # wall time of the episode on its worker


@dataclass
class CollectResult:
    dataset_dir: str
    summary: dict


# ---------------------------------------------------------------------------- one episode


def simulate(env: str, seed: int, steps: int, record_hz: float, resolution: int) -> Recording:
    """Play one episode of ``steps`` control steps and record a frame and the state at ``record_hz``
    (the first at t = 0, the last after the final step when it falls on the grid).

    The scene and the policy draw from two children of one seed sequence, so the episode is fixed by
    ``seed`` alone: same seed, same states and frames, in any process (docs/reference.md R-robots-7).
    """
    scene_seq, policy_seq = np.random.SeedSequence(seed).spawn(2)
    every = control_steps_per_frame(record_hz)
    states, stamps, frames = [], [], []
    with PandaScene(env, int(scene_seq.generate_state(1)[0]), resolution, Camera()) as scene:
        policy = PlayPolicy(np.random.default_rng(policy_seq), scene.has_gripper)
        for step in range(steps + 1):
            if step % every == 0:
                states.append(scene.state())
                stamps.append(step / CONTROL_HZ)
                frames.append(scene.render())
            if step < steps:
                scene.step(policy.act(scene.observe()))
    return Recording(np.stack(states), np.array(stamps), np.stack(frames), policy.played)


def clip_deltas(states: np.ndarray, record_hz: float) -> np.ndarray:
    """End-effector xyz displacement between consecutive frames of a 4 fps clip, from every start phase."""
    stride = frame_step(record_hz, CLIP_FPS)
    return (states[stride:, :3] - states[:-stride, :3]).astype(np.float32)


def run_episode(spec: EpisodeSpec) -> EpisodeResult:
    """Simulate one episode and write it to the dataset (the Ray task, or a process-pool job)."""
    start = time.perf_counter()
    rec = simulate(spec.env, spec.seed, spec.steps, spec.record_hz, spec.resolution)
    info = EpisodeInfo(episode_id=spec.episode_id, source=SOURCE, task="play: " + ", ".join(rec.played),
                       success=None, fps=spec.record_hz, num_steps=len(rec.states), video_uri="",
                       camera=Camera().describe())
    row = write_episode(spec.dataset_dir, info, rec.states, rec.timestamps, rec.frames)
    return EpisodeResult(row, clip_deltas(rec.states, spec.record_hz), time.perf_counter() - start)


# ---------------------------------------------------------------------------- the dataset


def plan_episodes(cfg: CollectConfig) -> list[EpisodeSpec]:
    """Episode ids and seeds: episode ``i`` of seed ``s`` is the same episode in any run that has it."""
    return [EpisodeSpec(i, f"{cfg.env}-s{cfg.seed}-{i:05d}", int(np.random.SeedSequence([cfg.seed, i])
                                                                   .generate_state(1)[0]),
                        cfg.env, cfg.steps, cfg.record_hz, cfg.resolution, cfg.out)
            for i in range(cfg.episodes)]


def resolve(cfg: CollectConfig) -> CollectConfig:
    """The config with ``out`` under the data root, so every worker writes to the same place."""
    root = storage.data_root(cfg.data_root)
    out = storage.data_path(cfg.out, root)
    warn_if_lost(out, "the collected episodes")
    return replace(cfg, data_root=root, out=out)


def check(cfg: CollectConfig) -> None:
    """Refuse a config that cannot make a usable dataset, before Ray starts (opens nothing but a write
    probe in ``out``)."""
    if cfg.env not in ENVS:
        raise UserError(f"collect config: env {cfg.env!r} is not one of {', '.join(ENVS)}")
    if importlib.util.find_spec("panda_gym") is None or importlib.util.find_spec("pybullet") is None:
        raise UserError("collect needs panda-gym and pybullet: pip install -e '.[sim]'")
    if cfg.episodes < 1 or cfg.workers < 1:
        raise UserError(f"collect config: episodes ({cfg.episodes}) and workers ({cfg.workers}) must be >= 1")
    try:
        clip_steps = control_steps_per_clip_frame(cfg.record_hz)
    except ValueError as exc:
        raise UserError(f"collect config: record_hz: {exc}") from exc
    needed = (CLIP_FRAMES - 1) * clip_steps
    if cfg.steps < needed:
        raise UserError(f"collect config: steps={cfg.steps} is shorter than one {CLIP_FRAMES}-frame clip at "
                        f"{CLIP_FPS:g} fps ({needed} control steps at {CONTROL_HZ:g} Hz); use about 150-300")
    if not 16 <= cfg.resolution <= 1024:
        raise UserError(f"collect config: resolution {cfg.resolution} must be in 16..1024 pixels")
    if not cfg.out:
        raise UserError("collect config: key 'out' is empty")
    storage.check_writable(cfg.out)


def summarize(cfg: CollectConfig, results: list[EpisodeResult], seconds: float) -> dict:
    """The dataset's numbers: counts, robot time, collection speed and the clip-frame displacement."""
    deltas = np.concatenate([r.clip_deltas for r in results])
    axis, norm = np.abs(deltas).ravel(), np.linalg.norm(deltas, axis=1)
    frames = sum(r.info.num_steps for r in results)
    return {
        "config": {k: v for k, v in asdict(cfg).items() if k != "ray"},
        "episodes": len(results),
        "frames": frames,
        "robot_seconds": len(results) * cfg.steps / CONTROL_HZ,
        "control_hz": CONTROL_HZ,
        "record_hz": cfg.record_hz,
        "clip_frame_control_steps": control_steps_per_clip_frame(cfg.record_hz),
        "clip_frame_delta_xyz_m": {"abs_axis_p50": float(np.percentile(axis, 50)),
                                   "abs_axis_p95": float(np.percentile(axis, 95)),
                                   "norm_p50": float(np.percentile(norm, 50)),
                                   "norm_p95": float(np.percentile(norm, 95))},
        "wall_seconds": seconds,
        "episode_seconds_mean": float(np.mean([r.seconds for r in results])),
    }


def write_dataset(cfg: CollectConfig, run_all: Callable[[list[EpisodeSpec]], list[EpisodeResult]]) -> CollectResult:
    """Mark the dataset begun, run every episode with ``run_all``, then write the index and summary.

    A rerun rewrites every episode of the plan (the same bytes for the same config)."""
    begin_dataset(cfg.out)
    start = time.perf_counter()
    results = sorted(run_all(plan_episodes(cfg)), key=lambda r: r.info.episode_id)
    finish_dataset(cfg.out, [r.info for r in results])
    summary = summarize(cfg, results, time.perf_counter() - start)
    storage.write_bytes(storage.join(cfg.out, SUMMARY_FILE), (json.dumps(summary, indent=1) + "\n").encode())
    delta = summary["clip_frame_delta_xyz_m"]
    log.info("collected %d episodes (%.1f min of robot time) in %.1f s to %s; per clip frame |dxyz| p50 %.3f "
             "p95 %.3f m", len(results), summary["robot_seconds"] / 60, summary["wall_seconds"], cfg.out,
             delta["norm_p50"], delta["norm_p95"])
    return CollectResult(cfg.out, summary)


def sim_task(fn: Callable) -> Any:
    """``fn`` as a Ray task of one CPU in a simulating worker's environment (:data:`SIM_ENV` on top of the
    storage variables); Ray keeps such workers for later tasks of the same environment."""
    import ray

    return ray.remote(num_cpus=1, runtime_env=worker_runtime_env(SIM_ENV))(fn)


def run_on_ray(cfg: CollectConfig) -> Callable[[list[EpisodeSpec]], list[EpisodeResult]]:
    """Episodes as Ray tasks, at most ``cfg.workers`` in flight (so 1 and 2 workers compare honestly)."""

    def run_all(specs: list[EpisodeSpec]) -> list[EpisodeResult]:
        import ray

        task = sim_task(run_episode)
        pending, done = [], []
        for spec in specs:
            if len(pending) >= cfg.workers:
                finished, pending = ray.wait(pending, num_returns=1)
                done += _log_done(ray.get(finished), len(done), len(specs))
            pending.append(task.remote(spec))
        return done + _log_done(ray.get(pending), len(done), len(specs))

    return run_all


def _log_done(results: list[EpisodeResult], before: int, total: int) -> list[EpisodeResult]:
    for n, result in enumerate(results, before + 1):
        log.info("episode %d/%d %s: %d frames in %.1f s", n, total, result.info.episode_id, result.info.num_steps,
                 result.seconds)
    return results


def collect(cfg: CollectConfig) -> CollectResult:
    """Collect the configured episodes on Ray (attaching to ``ray.address`` or starting a local instance)."""
    cfg = resolve(cfg)
    check(cfg)
    connect(cfg.ray, cpus_needed=cfg.workers)
    return write_dataset(cfg, run_on_ray(cfg))


@contextlib.contextmanager
def _sim_environment() -> Iterator[None]:
    """:data:`SIM_ENV` in this process's environment while a process pool spawns its workers."""
    saved = {name: os.environ.get(name) for name in SIM_ENV}
    os.environ.update(SIM_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# The sample world's robot part: 12 PickAndPlace episodes of 8 s (1.6 min of robot time, 1212 frames).
SAMPLE_EPISODES, SAMPLE_STEPS = 12, 200


def build_robot_sample(out_dir: str | Path, seed: int) -> CollectResult:
    """The sample world's robot part: :data:`SAMPLE_EPISODES` play episodes of :data:`SAMPLE_STEPS` control
    steps at 128 px into ``out_dir``, on a 2-process pool (no Ray, so the caller's Ray session, or its
    absence, is left alone)."""
    cfg = resolve(CollectConfig(episodes=SAMPLE_EPISODES, steps=SAMPLE_STEPS, seed=seed, out=str(out_dir)))
    check(cfg)

    def run_all(specs: list[EpisodeSpec]) -> list[EpisodeResult]:
        with _sim_environment(), ProcessPoolExecutor(cfg.workers, mp_context=get_context("spawn")) as pool:
            return list(pool.map(run_episode, specs))

    return write_dataset(cfg, run_all)


def execute(cfg: CollectConfig) -> int:
    result = collect(cfg)
    print(result.dataset_dir)
    return 0


STAGE = ConfigStage(CollectConfig, check=check, execute=execute, resolve=resolve)


if __name__ == "__main__":
    raise SystemExit(module_main(__name__))
