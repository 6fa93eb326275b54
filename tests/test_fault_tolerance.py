"""A training worker SIGKILLed mid-run is replaced by Ray Train (FailureConfig); the new worker group
resumes from the latest checkpoint (step > 0, data position and masks restored) and the losses from
there on equal those of an uninterrupted run: for pretraining and for V-JEPA 2-AC post-training (two
FSDP2 workers each)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from pretrain_utils import TOTAL_STEPS, uninterrupted_losses, world_config

from configs import preset_path
from core.config import load_config
from train.launch import TrainResult
from train.posttrain import posttrain
from train.posttrain_config import PosttrainConfig
from train.pretrain import CHECKPOINTS, pretrain
from train.state import latest_checkpoint

TIMEOUT_S = 300


def _train_workers() -> list[psutil.Process]:
    """This session's Ray Train worker processes (descendants of this pytest process only)."""
    workers = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                workers.append(proc)
        except psutil.NoSuchProcess:
            continue
    return workers


def run_killing_one_worker(train: Callable[[], TrainResult], checkpoints: Path) -> tuple[TrainResult, int]:
    """Run ``train`` in a thread; as soon as Ray has registered a checkpoint under ``checkpoints``,
    SIGKILL one of its Ray Train workers. Returns the run's result and the killed pid."""
    outcome: dict[str, TrainResult | BaseException] = {}

    def target() -> None:
        try:
            outcome["result"] = train()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread below
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT_S
    killed = None
    while killed is None and time.monotonic() < deadline and thread.is_alive():
        if latest_checkpoint(str(checkpoints)) is not None:  # Ray registered >= 1 checkpoint
            workers = _train_workers()
            if workers:
                killed = workers[-1].pid
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.1)
    thread.join(TIMEOUT_S)
    assert killed is not None, "no checkpoint and live worker seen before the run ended"
    if "error" in outcome:
        raise outcome["error"]
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE
    return outcome["result"], killed


def assert_resumed_like(result: TrainResult, reference: dict[int, float], total_steps: int) -> None:
    start = result.worker["start_step"]
    assert 0 < start < total_steps and result.worker["final_step"] == total_steps
    assert result.worker["losses"] == pytest.approx({s: reference[s] for s in range(start + 1, total_steps + 1)},
                                                    abs=1e-5)
    assert Path(result.export_path).is_file()


@pytest.mark.slow
def test_sigkilled_worker_is_replaced_and_resumes(ray_session, sample_world, runs_root, tmp_path, tmp_path_factory):
    reference = uninterrupted_losses(str(sample_world), str(tmp_path_factory.getbasetemp()))
    out = tmp_path / "run"
    cfg = world_config(sample_world, out, "trainer.num_workers=2", "trainer.max_failures=1")
    result, _ = run_killing_one_worker(lambda: pretrain(cfg), out / CHECKPOINTS)
    assert_resumed_like(result, reference, TOTAL_STEPS)


POSTTRAIN_STEPS = 6


def posttrain_config(robot: Path, out: Path, *overrides: str) -> PosttrainConfig:
    """Two FSDP2 workers of the tiny AC preset, 64 px, a checkpoint every 2 of 6 steps, no validation."""
    return load_config(PosttrainConfig, preset_path("posttrain", "tiny"), [
        f"data.dataset={robot}", "data.crop_size=64", f"optim.total_steps={POSTTRAIN_STEPS}", "optim.warmup_steps=1",
        "optim.anneal_steps=2", "optim.global_batch=4", "optim.reference_global_batch=4",
        "trainer.batch_size_per_worker=2", "trainer.num_workers=2", "trainer.checkpoint_every=2",
        "trainer.eval_every=0", "trainer.log_every=1", "data.num_decode_workers=1", f"run.output_dir={out}",
        *overrides])


@pytest.mark.slow
def test_sigkilled_posttrain_worker_is_replaced_and_resumes(ray_session, sample_world, runs_root, tmp_path):
    robot = sample_world / "robot"
    # The reference runs in this process (local mode): the same global batches of the same stream, since
    # each of the two workers' micro-batches is one whole decode block (train.launch.aligned_decode_batch).
    reference = posttrain(posttrain_config(robot, tmp_path / "reference", "tracking.enabled=false",
                                           "trainer.num_workers=0", "trainer.batch_size_per_worker=4"))
    assert reference.worker["world_size"] == 1 and reference.worker["start_step"] == 0
    out = tmp_path / "run"
    cfg = posttrain_config(robot, out, "trainer.max_failures=1")
    result, _ = run_killing_one_worker(lambda: posttrain(cfg), out / CHECKPOINTS)
    assert_resumed_like(result, reference.worker["losses"], POSTTRAIN_STEPS)
