"""core/storage.py data_root and core/ray_session.py's job awareness: where relative data paths point,
and what a run inside ``ray job submit`` says about paths in its temporary upload."""

from __future__ import annotations

import json
import logging

import pytest

from core import ray_session, storage


def test_relative_paths_resolve_against_config_then_env_then_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(storage.DATA_ROOT_ENV, raising=False)
    assert storage.data_path("data/m.parquet") == str(tmp_path / "data" / "m.parquet")
    monkeypatch.setenv(storage.DATA_ROOT_ENV, "/env/root")
    assert storage.data_path("data/m.parquet") == "/env/root/data/m.parquet"
    assert storage.data_path("data/m.parquet", "s3://bucket/root/") == "s3://bucket/root/data/m.parquet"
    assert storage.data_path("/abs/m.parquet", "/cfg") == "/abs/m.parquet"
    assert storage.data_path("s3://b/m.parquet", "/cfg") == "s3://b/m.parquet"
    assert storage.data_path("", "/cfg") == ""


@pytest.fixture
def inside_a_job(tmp_path, monkeypatch):
    """This process as the entrypoint of a job whose working dir is an uploaded copy at ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ray_session.JOB_CONFIG_ENV, json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"}}))
    return tmp_path


def test_outside_a_job_nothing_is_said(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(ray_session.JOB_CONFIG_ENV, raising=False)
    assert ray_session.missing_path_hint("data/x") == ""
    with caplog.at_level(logging.WARNING):
        ray_session.warn_if_lost(str(tmp_path / "runs"), "the runs root")
    assert not caplog.records


def test_inside_a_job_missing_data_and_lost_outputs_are_explained(inside_a_job, caplog):
    hint = ray_session.missing_path_hint("data/x")
    assert "without data/" in hint and "VJEPA2_RAY_DATA_ROOT" in hint
    with caplog.at_level(logging.WARNING):
        ray_session.warn_if_lost(str(inside_a_job / "runs"), "the runs root")
        ray_session.warn_if_lost("/shared/runs", "the runs root")  # outside the upload: fine
    (record,) = caplog.records
    assert "LOST" in record.getMessage() and str(inside_a_job / "runs") in record.getMessage()
