"""A training worker SIGKILLed mid-run is replaced by Ray Train (FailureConfig); the new worker group
resumes from the latest checkpoint (step > 0, data position and masks restored) and the losses from
there on equal those of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from pretrain_utils import TOTAL_STEPS, uninterrupted_losses, world_config

from train.launch import TrainResult
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


@pytest.mark.slow
def test_sigkilled_worker_is_replaced_and_resumes(ray_session, sample_world, runs_root, tmp_path, tmp_path_factory):
    reference = uninterrupted_losses(str(sample_world), str(tmp_path_factory.getbasetemp()))
    out = tmp_path / "run"
    cfg = world_config(sample_world, out, "trainer.num_workers=2", "trainer.max_failures=1")
    outcome: dict[str, TrainResult | BaseException] = {}

    def target() -> None:
        try:
            outcome["result"] = pretrain(cfg)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread below
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT_S
    killed = None
    while killed is None and time.monotonic() < deadline and thread.is_alive():
        if latest_checkpoint(str(out / CHECKPOINTS)) is not None:  # Ray registered >= 1 checkpoint
            workers = _train_workers()
            if workers:
                killed = workers[-1].pid
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.1)
    thread.join(TIMEOUT_S)
    assert killed is not None, "no checkpoint and live worker seen before the run ended"
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE
    start = result.worker["start_step"]
    assert 0 < start < TOTAL_STEPS and result.worker["final_step"] == TOTAL_STEPS
    assert result.worker["losses"] == pytest.approx({s: reference[s] for s in range(start + 1, TOTAL_STEPS + 1)},
                                                    abs=1e-5)
    assert Path(result.export_path).is_file()
