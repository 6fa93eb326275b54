"""MLflow through core.tracking: a real server on 127.0.0.1, the local SQLite store, redaction."""

from __future__ import annotations

import logging
from pathlib import Path

from core.redact import MASK, RedactingFilter, redact
from core.tracking import TrackingConfig, find_runs, local_store_uri, start_run


def test_run_reaches_a_real_mlflow_server(mlflow_server, tmp_path):
    cfg = TrackingConfig(tracking_uri=mlflow_server, experiment="test-server")
    config = {"trainer": {"num_workers": 2}, "s3": {"secret_access_key": "abcd1234secret"}}
    artifact = tmp_path / "note.txt"
    artifact.write_text("hello")
    with start_run(cfg, config, tags={"stage": "test"}, root=tmp_path) as run:
        run.log_metrics({"loss": 0.5}, step=3)
        run.log_artifact(artifact)
        run_id = run.run_id
    runs = find_runs(mlflow_server, "test-server")
    got = next(r for r in runs if r.info.run_id == run_id)
    assert got.data.params["trainer.num_workers"] == "2"
    assert got.data.params["s3.secret_access_key"] == MASK
    assert got.data.metrics["loss"] == 0.5
    assert got.data.tags["stage"] == "test"
    from mlflow.tracking import MlflowClient

    names = [a.path for a in MlflowClient(mlflow_server).list_artifacts(run_id)]
    assert names == ["config.yaml", "note.txt"]  # the resolved config, redacted like the params
    config_yaml = Path(MlflowClient(mlflow_server).download_artifacts(run_id, "config.yaml", str(tmp_path)))
    assert "abcd1234secret" not in config_yaml.read_text() and MASK in config_yaml.read_text()


def test_local_store_is_absolute_sqlite_under_runs_root(runs_root, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    uri = local_store_uri()
    assert uri == f"sqlite:///{runs_root / 'mlflow.db'}" and runs_root.is_absolute()
    with start_run(TrackingConfig(experiment="local"), {"a": 1}) as run:
        run.log_metrics({"x": 1.0})
    assert (runs_root / "mlflow.db").is_file()
    assert [r.info.run_id for r in find_runs(uri, "local")] == [run.run_id]


def test_disabled_tracking_is_a_no_op(runs_root):
    with start_run(TrackingConfig(enabled=False), {"a": 1}) as run:
        run.log_metrics({"x": 1.0})
        assert not run.active
    assert not (runs_root / "mlflow.db").exists()


def test_redaction_of_keys_and_env_values(monkeypatch, caplog):
    assert redact({"aws": {"aws_secret_access_key": "k", "region": "eu"}, "token": "t", "n": [{"password": "p"}]}) == {
        "aws": {"aws_secret_access_key": MASK, "region": "eu"}, "token": MASK, "n": [{"password": MASK}]}
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "verysecretvalue")
    logger = logging.getLogger("test.redact")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger="test.redact"):
        logger.info("connecting with %s", "verysecretvalue")
    assert "verysecretvalue" not in caplog.text and MASK in caplog.text


def test_stage_runs_nest_under_a_pipeline_run_in_a_model_development_experiment(runs_root):
    import mlflow
    from mlflow.tracking import MlflowClient

    from core.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, PARENT_RUN_TAG, parent_run

    uri = local_store_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("older", artifact_location=(runs_root / "mlartifacts").as_uri())  # made untagged
    with parent_run(TrackingConfig(experiment="older"), "pipeline") as parent_id:
        with start_run(TrackingConfig(experiment="older", parent_run=parent_id), {"a": 1}) as child:
            assert mlflow.active_run().info.run_id == child.run_id  # the parent never became the active run
    client = MlflowClient(uri)
    assert client.get_run(child.run_id).data.tags[PARENT_RUN_TAG] == parent_id
    assert client.get_run(parent_id).info.status == "FINISHED"
    assert client.get_experiment_by_name("older").tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_summary_is_tags_and_json_and_system_metrics_are_on_by_config(runs_root, monkeypatch):
    import time

    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    with start_run(TrackingConfig(experiment="summary", system_metrics=True)) as run:
        run.log_summary({"steps_per_s": 1.23456789, "steps_measured": 4})
        time.sleep(1.0)
    got = MlflowClient(local_store_uri()).get_run(run.run_id)
    assert got.data.tags["summary.steps_per_s"] == "1.23457" and got.data.tags["summary.steps_measured"] == "4"
    assert not any(k.startswith("summary") for k in got.data.metrics)
    assert any(k.startswith("system/") for k in got.data.metrics)
    with start_run(TrackingConfig(experiment="summary", system_metrics=False)) as quiet:
        time.sleep(0.5)
    assert not MlflowClient(local_store_uri()).get_run(quiet.run_id).data.metrics


def test_manifest_digest_follows_contents_not_location(runs_root, tmp_path):
    from mlflow.tracking import MlflowClient

    from core.tracking import manifest_digest

    for where in ("a", "b"):
        (tmp_path / where / "parts").mkdir(parents=True)
        (tmp_path / where / "parts" / "part-0.parquet").write_bytes(b"rows")
    assert manifest_digest(str(tmp_path / "a" / "parts")) == manifest_digest(str(tmp_path / "b" / "parts"))
    (tmp_path / "b" / "parts" / "part-0.parquet").write_bytes(b"other rows")
    assert manifest_digest(str(tmp_path / "a" / "parts")) != manifest_digest(str(tmp_path / "b" / "parts"))
    with start_run(TrackingConfig(experiment="inputs", system_metrics=False)) as run:
        digest = run.log_input_manifest(str(tmp_path / "a" / "parts"), "curated-yt1b", "curated", {"rows": 1})
    (got,) = MlflowClient(local_store_uri()).get_run(run.run_id).inputs.dataset_inputs
    assert got.dataset.name == "curated-yt1b" and got.dataset.digest == digest
    assert {t.key: t.value for t in got.tags} == {"mlflow.data.context": "curated", "rows": "1"}


def test_hidden_warnings_survive_a_library_that_resets_the_filters(recwarn):
    """MLflow calls ``warnings.simplefilter("once")`` inside its own code, which defeats filters; the
    warnings are dropped where they are shown instead, and others still show."""
    import warnings

    from core.tracking import hidden_warnings

    def library_code() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("once", category=UserWarning)
            warnings.warn("\x1b[33mAdd type hints to the `predict` method\x1b[0m", UserWarning, stacklevel=1)
            warnings.warn("something that matters", UserWarning, stacklevel=1)

    with hidden_warnings("Add type hints to the `predict` method"):
        library_code()
    shown = [str(w.message) for w in recwarn]
    assert "something that matters" in shown and not any("Add type hints" in m for m in shown)
