"""The run folder's step log and ``latest.pt`` on their own (train/loop.py ``StepLog``,
train/state.py ``link_latest``); a whole run's outputs are checked in ``test_pretrain_local.py``."""

from __future__ import annotations

import csv
import os

from train.state import link_latest
from train.step_log import StepLog


def _steps(path) -> list[tuple[int, str]]:
    return [(int(r["step"]), r["loss"]) for r in csv.DictReader(open(path))]


def test_step_log_appends_on_resume_and_redoes_steps_past_the_checkpoint(tmp_path):
    log = StepLog(str(tmp_path), rank=1, resume_step=0)
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 1.0 / step, "lr": 1e-3})
    log.close()
    assert _steps(tmp_path / "log_r1.csv") == [(1, "1"), (2, "0.5"), (3, "0.333333")]
    resumed = StepLog(str(tmp_path), rank=1, resume_step=2)  # the checkpoint was at step 2: step 3 is redone
    resumed.write({"step": 3, "loss": 0.25, "lr": 1e-3, "new_metric": 1.0})  # the first file's columns stay
    resumed.close()
    assert _steps(tmp_path / "log_r1.csv") == [(1, "1"), (2, "0.5"), (3, "0.25")]
    assert next(csv.reader(open(tmp_path / "log_r1.csv"))) == ["step", "loss", "lr"]


def test_latest_follows_the_newest_export_without_a_copy(tmp_path):
    first, second = tmp_path / "run-step_00000002.pt", tmp_path / "run-step_00000004.pt"
    first.write_bytes(b"2")
    second.write_bytes(b"4")
    latest = tmp_path / "latest.pt"
    link_latest(str(first), str(latest))
    link_latest(str(second), str(latest))
    assert latest.read_bytes() == b"4" and os.readlink(latest) == second.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt", first.name, second.name]

