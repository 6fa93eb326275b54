"""``vjepa2-ray validate-data``: every row checked, bad rows counted by reason, exit 0; broken manifests exit 2."""

from __future__ import annotations

import re

import pyarrow as pa
from fixtures_media import (
    bad_media,
    media_dir_fixture,  # noqa: F401  (pytest fixture)
)
from fixtures_s3 import BUCKET, s3_server_fixture  # noqa: F401  (pytest fixture)

from cluster.cli import main as cli_main
from pipelines.manifest import write_manifest
from pipelines.quarantine import read_rejects


def mixed_manifest(media_dir, tmp_path) -> tuple[str, dict[str, str]]:
    bad = bad_media(tmp_path / "bad", media_dir / "h264.mp4")
    good = [media_dir / n for n in ("h264.mp4", "vp9.webm", "gray.mp4", "img_cmyk.jpg")]
    uris = [str(p) for p in good + list(bad.values())]
    n = len(uris)
    # scene bounds past the end of h264.mp4 (2 s long): an empty window
    uris.append(str(media_dir / "h264.mp4"))
    table = pa.table({"uri": uris, "label": list(range(n + 1)), "duration_s": [None] * (n + 1),
                      "fps": [None] * (n + 1), "num_frames": [None] * (n + 1), "bytes": [None] * (n + 1),
                      "start_s": [None] * n + [30.0], "end_s": [None] * n + [40.0]})
    path = tmp_path / "ssv2" / "manifest.parquet"
    write_manifest(table, str(path))
    return str(path), {str(p): k for k, p in bad.items()}


def test_validate_data_reports_reasons_and_writes_rejects(media_dir, tmp_path, capsys):
    manifest, bad = mixed_manifest(media_dir, tmp_path)
    out = tmp_path / "rejects.parquet"
    rc = cli_main(["validate-data", "--manifest", manifest, "--rejects", str(out), "--frames", "8"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "10 rows, 4 good, 6 bad" in printed
    for line in ("empty_window    1", "missing         1", "too_few_frames  1", "unreadable      2", "empty  "):
        assert line in printed, (line, printed)
    table = read_rejects(str(out))
    assert table.column("sample_id").to_pylist() == [4, 5, 6, 7, 8, 9]  # the manifest row numbers
    assert set(table.column("source").to_pylist()) == {"ssv2"}
    assert dict(zip(table.column("uri").to_pylist()[:5], table.column("reason").to_pylist()[:5])) == {
        uri: {"missing": "missing", "empty": "empty", "unreadable": "unreadable", "truncated": "unreadable",
              "too_few_frames": "too_few_frames"}[kind] for uri, kind in bad.items()}
    parallel = tmp_path / "rejects2.parquet"
    assert cli_main(["validate-data", "--manifest", manifest, "--rejects", str(parallel), "--frames", "8",
                     "--workers", "2", "--decoder", "pyav"]) == 0
    assert read_rejects(str(parallel)).column("reason").to_pylist() == table.column("reason").to_pylist()


def test_clean_manifest_writes_an_empty_rejects_table(media_dir, tmp_path, capsys):
    (tmp_path / "ok.csv").write_text(f"{media_dir / 'h264.mp4'} 1\n{media_dir / 'long.mp4'} 2\n")
    out = tmp_path / "r.parquet"
    assert cli_main(["validate-data", "--manifest", str(tmp_path / "ok.csv"), "--rejects", str(out)]) == 0
    assert "2 rows, 2 good, 0 bad" in capsys.readouterr().out
    assert out.is_file() and read_rejects(str(out)).num_rows == 0


def test_unparseable_manifest_exits_2_naming_lines(tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("/a.mp4 1\n/b.mp4 one\n/c.mp4 2 3\n")
    rc = cli_main(["validate-data", "--manifest", str(tmp_path / "bad.csv"), "--rejects", str(tmp_path / "r.parquet")])
    err = capsys.readouterr().err
    assert rc == 2 and "line 2" in err and "line 3" in err and "bad.csv" in err
    assert cli_main(["validate-data", "--manifest", str(tmp_path / "none.parquet"), "--rejects", "r.parquet"]) == 2
    assert not (tmp_path / "r.parquet").exists()


def test_row_rule_and_storage_failures_exit_2_with_one_line(media_dir, tmp_path, capsys):
    """Training's row rules (here a null uri and a fractional label) and an unwritable --rejects: exit 2,
    one stderr line naming the file and row or the URI, no traceback, nothing decoded."""
    good = str(media_dir / "h264.mp4")
    cases = {"null_uri.parquet": ({"uri": [good, None], "label": [1, 2]},
                                  r"null_uri\.parquet: column 'uri' is null at row\(s\) 1"),
             "frac_label.parquet": ({"uri": [good, good], "label": [1.0, 2.5]},
                                    r"frac_label\.parquet: column 'label' must be an integer")}
    for name, (columns, message) in cases.items():
        write_parquet(tmp_path / name, columns)
        rc = cli_main(["validate-data", "--manifest", str(tmp_path / name), "--rejects", str(tmp_path / "r.parquet")])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and re.search(message, err), err
    write_parquet(tmp_path / "ok.parquet", {"uri": [good], "label": [1]})
    (tmp_path / "taken.parquet").mkdir()
    rc = cli_main(["validate-data", "--manifest", str(tmp_path / "ok.parquet"),
                   "--rejects", str(tmp_path / "taken.parquet")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert f"{tmp_path / 'taken.parquet'}: cannot write: is a directory" in err, err


def write_parquet(path, columns: dict) -> None:
    """A manifest with ``columns`` and null media columns, written as given (no schema cast on the way)."""
    import pyarrow.parquet as pq

    n = len(columns["uri"])
    pq.write_table(pa.table({**columns, **{c: pa.nulls(n, pa.float64()) for c in ("duration_s", "fps")},
                             **{c: pa.nulls(n, pa.int64()) for c in ("num_frames", "bytes")}}), path)


def test_unreachable_endpoint_and_missing_bucket_exit_2_naming_the_uri(s3_server, media_dir, tmp_path, capsys,
                                                                      monkeypatch):
    write_parquet(tmp_path / "ok.parquet", {"uri": [str(media_dir / "h264.mp4")], "label": [1]})
    rc = cli_main(["validate-data", "--manifest", str(tmp_path / "ok.parquet"),
                   "--rejects", "s3://no-such-bucket/checks/r.parquet"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "s3://no-such-bucket/checks/r.parquet: cannot write:" in err and "bucket does not exist" in err, err
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # nothing listens on port 9
    rc = cli_main(["validate-data", "--manifest", f"s3://{BUCKET}/m.parquet", "--rejects", str(tmp_path / "r.parquet")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"s3://{BUCKET}/m.parquet: cannot get file info" in err, err
