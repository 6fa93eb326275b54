"""What pretraining refuses in the driver, before Ray starts: malformed manifests, storage that cannot be
reached or written, secrets in ``data.worker_env``. Each is one stderr line and exit 2 (no Ray, no model)."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures_s3 import BUCKET, s3_server_fixture  # noqa: F401  (pytest fixture)
from pretrain_utils import SOURCES, TINY, small_overrides

from core.entry import module_main


@pytest.fixture
def no_ray(monkeypatch, runs_root):
    """Fail the test if pretraining gets as far as starting or attaching to Ray."""

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started before the input was checked")

    monkeypatch.setattr("train.pretrain.connect", refuse)
    return runs_root


def pretrain_exit(manifest: str, out: str, capsys, *overrides: str) -> tuple[int, str]:
    """Run ``python -m train.pretrain`` on one source (``manifest``); (exit code, stderr)."""
    others = [f"data.sources.{name}.weight=0" for name in SOURCES if name != "ssv2"]
    code = module_main("train.pretrain", ["--config", str(TINY), *small_overrides(), *others,
                                          f"data.sources.ssv2.manifest={manifest}", f"run.output_dir={out}",
                                          "trainer.num_workers=0", "tracking.enabled=false", *overrides])
    return code, capsys.readouterr().err


def _parquet(path, **columns) -> str:
    n = len(columns["uri"])
    pq.write_table(pa.table({"label": list(range(n)), "duration_s": [1.0] * n, "fps": [1.0] * n,
                             "num_frames": [1] * n, "bytes": [1] * n, **columns}), path)
    return str(path)


def test_malformed_manifests_are_one_line_and_exit_2(no_ray, tmp_path, capsys):
    (tmp_path / "three.csv").write_text("/a.mp4 1\n/b.mp4 2 3\n")
    cases = {
        _parquet(tmp_path / "label.parquet", uri=["/a.mp4", "/b.mp4"], label=["0", "x1"]):
            r"label\.parquet: column 'label' must be an integer, got string at row\(s\) 1 \('x1'\)",
        str(tmp_path / "three.csv"): r"three\.csv: 1 unparseable row\(s\): line 2: expected 2 columns",
        _parquet(tmp_path / "nouri.parquet", uri=["/a.mp4", None]): r"nouri\.parquet: column 'uri' is null at row",
        str(pq.write_table(pa.table({"uri": ["/a.mp4"]}), tmp_path / "cols.parquet") or tmp_path / "cols.parquet"):
            r"cols\.parquet: missing column",
    }
    for manifest, message in cases.items():
        code, err = pretrain_exit(manifest, str(tmp_path / "out"), capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert re.search(message, err), err


def test_secret_in_worker_env_is_refused_naming_the_key(no_ray, tmp_path, capsys):
    manifest = _parquet(tmp_path / "ok.parquet", uri=["/a.mp4"])
    code, err = pretrain_exit(manifest, str(tmp_path / "out"), capsys, "data.worker_env.AWS_SECRET_ACCESS_KEY=abc123",
                              "data.worker_env.MY_API_TOKEN=zz")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "data.worker_env: AWS_SECRET_ACCESS_KEY, MY_API_TOKEN looks like a secret" in err
    assert "abc123" not in err and "zz" not in err


def test_unreachable_and_unwritable_storage_is_one_line_and_exit_2(no_ray, s3_server, tmp_path, capsys,
                                                                   monkeypatch):
    manifest = _parquet(tmp_path / "ok.parquet", uri=["/a.mp4"])
    code, err = pretrain_exit(manifest, "s3://no-such-bucket/run", capsys)  # a missing bucket on write
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "s3://no-such-bucket/run/rejects: cannot write there:" in err and "bucket does not exist" in err, err
    code, err = pretrain_exit(manifest, str(tmp_path / "out"), capsys, f"data.rejects_dir=s3://{BUCKET}-gone/rej")
    assert code == 2 and f"s3://{BUCKET}-gone/rej" in err, err
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # nothing listens on port 9
    code, err = pretrain_exit(f"s3://{BUCKET}/m.parquet", str(tmp_path / "out"), capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"s3://{BUCKET}/m.parquet: cannot get file info" in err and "connect" in err.lower(), err
