"""Resume with 2 Ray Train workers, FSDP2 and the Ray Data pipeline: stop at step k, resume, and the loss
curve continues the uninterrupted one (1e-5); then continue the same run on 1 worker (DCP resharding)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from pretrain_utils import TOTAL_STEPS, uninterrupted_losses, world_config

from core.tracking import find_runs, local_store_uri
from train.pretrain import CHECKPOINTS, pretrain
from train.state import read_record

STOP = 3  # odd on purpose: checkpoints between two checkpoint_every steps, blocks must still align


@pytest.mark.slow
def test_stop_resume_and_reshard(ray_session, sample_world, runs_root, tmp_path, tmp_path_factory):
    reference = uninterrupted_losses(str(sample_world), str(tmp_path_factory.getbasetemp()))
    out = tmp_path / "run"

    first = pretrain(world_config(sample_world, out, "trainer.num_workers=2", f"trainer.stop_after={STOP}",
                                  "trainer.num_to_keep=1"))
    assert (first.worker["start_step"], first.worker["final_step"]) == (0, STOP)
    assert first.worker["losses"] == pytest.approx({s: reference[s] for s in range(1, STOP + 1)}, abs=1e-5)

    second = pretrain(world_config(sample_world, out, "trainer.num_workers=2", "trainer.num_to_keep=1"))
    assert (second.worker["start_step"], second.worker["final_step"]) == (STOP, TOTAL_STEPS)
    expected = {s: reference[s] for s in range(STOP + 1, TOTAL_STEPS + 1)}
    assert second.worker["losses"] == pytest.approx(expected, abs=1e-5)
    assert second.mlflow_run_id == first.mlflow_run_id  # one metric history across the interruption
    assert sorted(p.name for p in (out / CHECKPOINTS).glob("step_*")) == ["step_00000006"]  # num_to_keep
    record = read_record(second.checkpoint)
    assert record["state"] == {"step": 6, "samples_seen": 48, "mask_step": 6} and record["world_size"] == 2
    assert record["git_revision"] and record["packages"]["torch"] and record["config"]["model"]["preset"] == "tiny"

    # same run, one worker: the 2-rank shards load into 1 rank; accumulation keeps the global batch at 8. Its
    # stream is resolved window by window in Ray Data read tasks (as a whole run's is), not in the driver.
    third = pretrain(world_config(sample_world, out, "trainer.num_workers=1", "optim.total_steps=8",
                                  "data.resolve_window=4"))
    assert (third.worker["start_step"], third.worker["final_step"]) == (6, 8)
    assert third.worker["grad_accum"] == 2 and third.worker["world_size"] == 1
    assert all(0 < loss < 2 for loss in third.worker["losses"].values())
    assert read_record(third.checkpoint)["state"] == {"step": 8, "samples_seen": 64, "mask_step": 10}
    assert Path(third.export_path).is_file()

    (run,) = find_runs(local_store_uri(runs_root), "vjepa2-ray")
    history = MlflowClient(local_store_uri(runs_root)).get_metric_history(run.info.run_id, "loss")
    assert sorted({m.step for m in history}) == list(range(1, 9))
