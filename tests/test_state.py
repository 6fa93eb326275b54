"""Checkpoint bookkeeping (train/state.py, train/pretrain.py): which checkpoint a run resumes from,
architecture checks, provenance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import to_dict
from core.errors import UserError
from models.config import ModelConfig
from train.launch import existing_checkpoint
from train.state import (
    STATE_FILE,
    IncompatibleCheckpoint,
    check_compatible,
    checkpoint_dir_name,
    latest_checkpoint,
    provenance,
)


def _checkpoint(run: Path, step: int, complete: bool = True) -> Path:
    path = run / checkpoint_dir_name(step)
    path.mkdir(parents=True)
    (path / "__0_0.distcp").write_bytes(b"")
    if complete:
        (path / STATE_FILE).write_text("{}")
    return path


def _ray_record(run: Path) -> None:
    """Ray's own record of a checkpoint at step 2 in ``run`` (a real one-worker Ray Train run)."""
    import tempfile

    import ray.train
    from ray.train.torch import TorchTrainer

    def report_step_2() -> None:  # nested: pickled by value, so workers need not import this test module
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, STATE_FILE).write_text("{}")
            ray.train.report({"step": 2}, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=checkpoint_dir_name(2))

    TorchTrainer(report_step_2, scaling_config=ray.train.ScalingConfig(num_workers=1),
                 run_config=ray.train.RunConfig(name=run.name, storage_path=str(run.parent))).fit()


def test_ray_runs_resume_only_from_registered_checkpoints(ray_session, tmp_path):
    run = tmp_path / "checkpoints"
    _checkpoint(run, 2)
    assert latest_checkpoint(str(run)) is None  # uploaded, not yet registered by Ray
    _ray_record(run)
    _checkpoint(run, 4)  # rank 0's part of a checkpoint whose other ranks are still uploading
    assert latest_checkpoint(str(run)) == str(run / "step_00000002")
    # a run directory belongs to one mode: local mode refuses a directory Ray Train workers wrote
    with pytest.raises(UserError, match="written by Ray Train workers"):
        existing_checkpoint(str(run), ray_managed=False)


def test_local_runs_resume_from_the_newest_complete_checkpoint(tmp_path):
    run = tmp_path / "checkpoints"
    assert latest_checkpoint(str(run), ray_managed=False) is None
    _checkpoint(run, 2)
    _checkpoint(run, 4)
    _checkpoint(run, 6, complete=False)  # interrupted while copying: no train_state.json yet
    assert latest_checkpoint(str(run), ray_managed=False) == str(run / "step_00000004")


def test_ray_workers_refuse_a_local_mode_directory(tmp_path):
    local = tmp_path / "local"
    _checkpoint(local, 2)
    with pytest.raises(UserError, match="no record of"):
        existing_checkpoint(str(local), ray_managed=True)
    assert existing_checkpoint(str(local), ray_managed=False) == str(local / "step_00000002")
    assert existing_checkpoint(str(tmp_path / "fresh"), ray_managed=True) is None


def test_resolution_may_change_but_shapes_may_not():
    saved = json.loads(json.dumps(to_dict(ModelConfig())))
    cooldown = ModelConfig()
    cooldown.encoder.num_frames, cooldown.encoder.img_size = 64, 384
    check_compatible(saved, cooldown, "ckpt")  # progressive resolution: same weights
    wider = ModelConfig()
    wider.encoder.embed_dim = 1280
    with pytest.raises(IncompatibleCheckpoint, match=r"ckpt: .*encoder\.embed_dim: checkpoint 1024 != run 1280"):
        check_compatible(saved, wider, "ckpt")


def test_provenance_records_revision_packages_and_config():
    record = provenance({"model": {"preset": "tiny"}})
    assert record["config"] == {"model": {"preset": "tiny"}}
    assert set(record["packages"]) >= {"python", "torch", "ray", "numpy"}
    assert record["git_revision"] and record["git_revision"] != "unknown"  # this checkout is a git repo


def test_checkpoint_record_masks_secret_keys_and_keeps_model_fields():
    """train_state.json holds the resolved config in clear text: secret-looking keys are masked there too,
    and a model field that merely contains a word like "tokens" is not (the record must still load)."""
    from core.redact import MASK

    record = provenance({"tracking": {"api_token": "t0p", "password": "pw"}, "model": {"num_mask_tokens": 10}})
    assert record["config"] == {"tracking": {"api_token": MASK, "password": MASK}, "model": {"num_mask_tokens": 10}}
