"""The pretraining loop in Ray Train's local mode (trainer.num_workers=0: the loop runs in this process,
fed by the same Ray Data pipeline): CLI contract, MLflow contents, exact resume, architecture checks,
the cooldown as a child run; the run folder shaped like Meta's (``latest.pt``, ``params-pretrain.yaml``,
``log_r0.csv``) and MLflow as its users expect (experiment kind, ``config.yaml``, manifests as input
datasets with digests, the export as a registrable pyfunc model that embeds clips)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from pretrain_utils import (
    PLANTED_ENV,
    SOURCES,
    TINY,
    files_holding,
    ray_session_dir,
    world_config,
    world_overrides,
)

from core.entry import module_main
from core.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, find_runs, local_store_uri, manifest_digest
from models.checkpoint import CheckpointError, checkpoint_kind, load_encoder, load_meta_checkpoint
from pipelines.transforms import eval_preprocess
from train.pretrain import CHECKPOINTS, pretrain
from train.schedules import LinearDecay, WarmupConstant
from train.state import IncompatibleCheckpoint, read_record

STEPS = 3
PER_STEP = ("loss", "loss/mask_0", "loss/mask_1", "lr", "wd", "ema", "target_std", "clips_per_s", "tokens_per_s",
            "data_wait_frac")


@pytest.fixture(scope="module")
def main_run(ray_session, sample_world, tmp_path_factory) -> dict:
    """One local-mode run through the CLI (``python -m train.pretrain``), 3 steps, checkpoints at 2 and 3,
    with credentials planted in its environment (:func:`test_no_planted_secret_reaches_any_file`)."""
    root = tmp_path_factory.mktemp("local")
    out = root / "main"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VJEPA2_RAY_RUNS", str(root / "runs"))
        for name, value in PLANTED_ENV.items():
            mp.setenv(name, value)
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            code = module_main("train.pretrain", ["--config", str(TINY), *world_overrides(
                sample_world, out, "trainer.num_workers=0", f"optim.total_steps={STEPS}")])
    uri = local_store_uri(root / "runs")
    (run,) = find_runs(uri, "vjepa2-ray")
    return {"code": code, "stdout": stdout.getvalue(), "out": out, "uri": uri, "run": run, "root": root}


def _history(uri: str, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in MlflowClient(uri).get_metric_history(run_id, key)}


def test_cli_prints_the_exported_checkpoint_last(main_run):
    assert main_run["code"] == 0
    last = main_run["stdout"].strip().splitlines()[-1]
    assert last == str(main_run["out"] / "pretrain-tiny-step_00000003.pt")
    encoder, cfg = load_encoder(last)  # the model-core loader (and so `vjepa2-ray embed`) reads it
    assert cfg.preset == "tiny" and sum(p.numel() for p in encoder.parameters()) > 0
    ckpt = load_meta_checkpoint(last)
    assert ckpt.target_encoder is not None and ckpt.predictor is not None
    assert ckpt.extras["vjepa2_ray_train"]["state"]["step"] == STEPS
    assert sorted(p.name for p in (main_run["out"] / CHECKPOINTS).glob("step_*")) == [
        "step_00000002", "step_00000003"]


def test_no_planted_secret_reaches_any_file(main_run):
    """Run directory (checkpoints, train_state.json, export), MLflow store and artifacts, Ray's session logs."""
    assert list(main_run["out"].glob("checkpoints/step_*/train_state.json"))
    roots = [main_run["out"], main_run["root"] / "runs"] + [d for d in [ray_session_dir()] if d is not None]
    assert len(roots) == 3, "Ray's session directory is reachable"
    assert files_holding(roots, list(PLANTED_ENV.values())) == []


def test_every_checkpoint_kind_is_recognised_and_loads_the_same_encoder(main_run, tmp_path):
    sharded = main_run["out"] / CHECKPOINTS / "step_00000003"
    export = main_run["out"] / "pretrain-tiny-step_00000003.pt"
    assert checkpoint_kind(sharded) == "sharded" and checkpoint_kind(export) == "meta"
    from_shards, cfg = load_encoder(sharded, key="target_encoder")  # a training checkpoint, read without Ray
    from_export, _ = load_encoder(export, key="target_encoder")
    assert cfg.preset == "tiny"
    for (name, a), b in zip(from_shards.state_dict().items(), from_export.state_dict().values()):
        assert torch.equal(a, b), name
    (tmp_path / "stray").mkdir()
    with pytest.raises(CheckpointError, match="neither a training checkpoint"):
        checkpoint_kind(tmp_path / "stray")
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint_kind(tmp_path / "missing.pt")


def test_mlflow_run_has_config_recipe_metrics_and_checkpoint_locations(main_run):
    run, uri = main_run["run"], main_run["uri"]
    assert run.data.params["optim.weight_decay"] == "0.04" and run.data.params["trainer.num_workers"] == "0"
    assert run.data.tags["vjepa2.phase"] == "main" and run.data.tags["vjepa2.lineage"] == run.info.run_id
    for key in PER_STEP:
        assert sorted(_history(uri, run.info.run_id, key)) == [1, 2, 3], key
    lr = _history(uri, run.info.run_id, "lr")
    warmup = WarmupConstant(1e-4, 1e-3, 5)
    assert [lr[s] for s in (1, 2, 3)] == pytest.approx([warmup(0), warmup(1), warmup(2)])
    assert set(_history(uri, run.info.run_id, "ema").values()) == {0.99925}
    assert 0.05 < min(_history(uri, run.info.run_id, "target_std").values()) <= 1.0
    assert all(0 <= v <= 1 for v in _history(uri, run.info.run_id, "data_wait_frac").values())
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id, "checkpoint")}
    assert artifacts == {"checkpoint/locations.json", "checkpoint/train_state.json"}
    assert not any(key.startswith("summary") for key in run.data.metrics)  # no one-point charts
    assert float(run.data.tags["summary.steps_measured"]) >= 1
    listed = {a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id, "checkpoints")}
    assert listed == {"checkpoints/step_00000002.txt", "checkpoints/step_00000003.txt"}
    record = read_record(str(main_run["out"] / CHECKPOINTS / "step_00000003"))
    assert record["mlflow_run_id"] == run.info.run_id and record["config"]["optim"]["lr"] == 1e-3


def test_local_resume_continues_the_loss_curve(main_run, sample_world, runs_root, tmp_path, monkeypatch):
    """A resume with a longer run (optim.total_steps 2 -> 3) from another git revision: the same losses,
    the change recorded beside the logged params, the original revision kept, no step logged twice."""
    reference = _history(main_run["uri"], main_run["run"].info.run_id, "loss")
    out = tmp_path / "resumed"
    monkeypatch.setenv("VJEPA2_RAY_GIT_REVISION", "first-rev")
    first = pretrain(world_config(sample_world, out, "trainer.num_workers=0", "optim.total_steps=2",
                                  "trainer.stop_after=1", "trainer.checkpoint_every=1"))
    with (out / "log_r0.csv").open("a") as f:  # step 2 done but never checkpointed: it is done again
        f.write("2,9.99\n")
    monkeypatch.setenv("VJEPA2_RAY_GIT_REVISION", "second-rev")
    second = pretrain(world_config(sample_world, out, "trainer.num_workers=0", f"optim.total_steps={STEPS}"))
    assert first.worker["final_step"] == 1 and second.worker["start_step"] == 1
    assert {**first.worker["losses"], **second.worker["losses"]} == pytest.approx(reference, abs=1e-5)
    (run,) = find_runs(local_store_uri(runs_root), "vjepa2-ray")
    assert run.data.params["optim.total_steps"] == "2" and run.data.params["resumed.1.optim.total_steps"] == "3"
    assert "resumed.1.optim.lr" not in run.data.params  # only what changed
    assert run.data.tags["vjepa2.git_revision"] == "first-rev"
    assert run.data.tags["vjepa2.git_revision.resume_1"] == "second-rev"
    resumed = MlflowClient(local_store_uri(runs_root)).download_artifacts(run.info.run_id, "resumed/1/config.yaml",
                                                                          str(tmp_path))
    assert "total_steps: 3" in Path(resumed).read_text()
    rows = list(csv.DictReader((out / "log_r0.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert [float(r["loss"]) for r in rows] == pytest.approx([reference[s] for s in (1, 2, 3)], rel=1e-5)


def test_incompatible_architecture_is_refused(main_run, sample_world, runs_root):
    cfg = world_config(sample_world, main_run["out"], "trainer.num_workers=0", "model.encoder.depth=2",
                       "model.predictor.num_mask_tokens=4")
    with pytest.raises(IncompatibleCheckpoint, match=r"encoder\.depth: checkpoint 4 != run 2.*num_mask_tokens"):
        pretrain(cfg)


def test_resume_false_refuses_an_existing_run(main_run, sample_world, runs_root):
    with pytest.raises(Exception, match="run.resume=true"):
        pretrain(world_config(sample_world, main_run["out"], "trainer.num_workers=0", "run.resume=false"))


def test_cooldown_is_a_child_run_with_its_own_schedule(main_run, sample_world, tmp_path):
    main_id = main_run["run"].info.run_id
    cooldown = ["trainer.num_workers=0", "optim.schedule=linear_decay", "optim.warmup_steps=0",
                "optim.total_steps=2", "optim.lr=1.0e-3", "optim.final_lr=1.0e-6"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VJEPA2_RAY_RUNS", str(main_run["root"] / "runs"))
        # from the sharded checkpoint: weights, EMA target and AdamW state; step and data position reset
        sharded = pretrain(world_config(sample_world, tmp_path / "cool", *cooldown, "run.name=cooldown-tiny",
                                        f"run.init_checkpoint={main_run['out'] / CHECKPOINTS / 'step_00000003'}"))
        # from the Meta-layout export with a zero LR: the encoder must come out exactly as it went in
        frozen = pretrain(world_config(sample_world, tmp_path / "frozen", *cooldown, "optim.lr=0.0",
                                       "optim.final_lr=0.0", "run.name=frozen-tiny",
                                       f"run.init_checkpoint={main_run['out'] / 'pretrain-tiny-step_00000003.pt'}"))
    assert sharded.worker["start_step"] == 0 and read_record(sharded.checkpoint)["state"]["samples_seen"] == 16
    runs = {r.info.run_id: r for r in find_runs(main_run["uri"], "vjepa2-ray")}
    for child in (sharded, frozen):
        tags = runs[child.mlflow_run_id].data.tags
        assert tags["mlflow.parentRunId"] == main_id and tags["vjepa2.lineage"] == main_id
        assert tags["vjepa2.phase"] == "cooldown"
    decay = LinearDecay(1e-3, 1e-6, 2 * 1.25)  # docs/reference.md R-vjepa2-4.2: T_max x ipe_scale
    lr = _history(main_run["uri"], sharded.mlflow_run_id, "lr")
    assert [lr[1], lr[2]] == pytest.approx([decay(0), decay(1)]) and lr[2] > 1e-6 * 10
    before = load_meta_checkpoint(main_run["out"] / "pretrain-tiny-step_00000003.pt").state("encoder")
    after = load_meta_checkpoint(frozen.export_path).state("encoder")
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, msg=key)
    assert json.loads(Path(sharded.checkpoint, "train_state.json").read_text())["lineage"] == main_id


def test_run_folder_holds_latest_params_and_step_log(main_run):
    out = main_run["out"]
    export = out / f"pretrain-tiny-step_{STEPS:08d}.pt"
    latest = out / "latest.pt"
    assert latest.resolve() == export.resolve()
    data = torch.load(latest, map_location="cpu", weights_only=True)  # weights only: no optimizer state
    assert {"encoder", "predictor", "target_encoder"} <= set(data) and "opt" not in data
    params = yaml.safe_load((out / "params-pretrain.yaml").read_text())
    assert params["optim"]["total_steps"] == STEPS and params["run"]["output_dir"] == str(out)
    rows = list(csv.DictReader((out / "log_r0.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    assert {"loss", "lr", "wd", "step_ms", "data_wait_ms", "samples_seen"} <= set(rows[0])
    assert all(float(r["step_ms"]) > 0 for r in rows)


def test_mlflow_run_has_kind_config_inputs_and_nothing_secret(main_run, tmp_path):
    client, run = MlflowClient(main_run["uri"]), main_run["run"]
    assert client.get_experiment(run.info.experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    config = yaml.safe_load(open(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))))
    assert config["optim"]["total_steps"] == STEPS
    inputs = {i.dataset.name: i for i in client.get_run(run.info.run_id).inputs.dataset_inputs}
    assert sorted(inputs) == sorted(SOURCES)
    manifest = config["data"]["sources"]["kinetics"]["manifest"]
    assert inputs["kinetics"].dataset.digest == manifest_digest(manifest)
    assert {t.key: t.value for t in inputs["kinetics"].tags}["mlflow.data.context"] == "training"


def test_export_is_a_registrable_pyfunc_model_that_embeds_clips(main_run):
    mlflow.set_tracking_uri(main_run["uri"])
    model_uri = main_run["run"].data.tags["vjepa2.model"]
    model = mlflow.pyfunc.load_model(model_uri)
    clips = np.random.default_rng(0).integers(0, 256, (2, 4, 72, 80, 3), dtype=np.uint8)
    features = model.predict(clips)
    encoder, cfg = load_encoder(main_run["out"] / "latest.pt", key="target_encoder")
    with torch.no_grad():
        expected = encoder(torch.stack([eval_preprocess(c, cfg.encoder.img_size) for c in clips])).mean(1)
    assert features.shape == (2, cfg.encoder.embed_dim)
    np.testing.assert_allclose(features, expected.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="uint8|shape|dtype"):
        model.predict(clips[..., :2].astype(np.float32))
    version = mlflow.register_model(model_uri, "vjepa2-tiny")
    assert version.run_id == main_run["run"].info.run_id
    registered = mlflow.pyfunc.load_model(f"models:/vjepa2-tiny/{version.version}")
    np.testing.assert_array_equal(registered.predict(clips), features)
