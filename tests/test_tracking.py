"""MLflow through core.tracking: a real server on 127.0.0.1, the local SQLite store, redaction."""

from __future__ import annotations

import logging

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
    assert names == ["note.txt"]


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
