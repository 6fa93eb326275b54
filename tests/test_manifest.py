"""The one manifest schema: Parquet and Meta CSV round trips; broken manifests fail naming lines."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.manifest import ManifestError, parse_meta_csv, read_manifest, write_manifest


def _table() -> pa.Table:
    return pa.table({
        "uri": ["/d/a.mp4", "/d/b.mp4"], "label": [3, 7], "duration_s": [2.0, 10.5], "fps": [25.0, 30.0],
        "num_frames": [50, 315], "bytes": [1000, 9000], "start_s": [0.0, 4.0], "end_s": [2.0, 9.0],
        "cluster_id": [11, 12],
    })


def test_parquet_round_trip_keeps_optional_and_extra_columns(tmp_path):
    path = tmp_path / "m.parquet"
    write_manifest(_table(), str(path))
    back = read_manifest(str(path))
    assert back.column("uri").to_pylist() == ["/d/a.mp4", "/d/b.mp4"]
    assert back.column("cluster_id").to_pylist() == [11, 12]
    assert back.schema.field("start_s").type == pa.float64()
    assert not list(tmp_path.glob(".*tmp*")), "atomic write leaves no temp file"


def test_meta_csv_round_trip_and_double_colon_fallback(tmp_path):
    path = tmp_path / "m.csv"
    write_manifest(_table(), str(path))
    assert path.read_text().splitlines() == ["/d/a.mp4 3", "/d/b.mp4 7"]
    back = read_manifest(str(path))
    assert back.column("label").to_pylist() == [3, 7]
    assert back.column("fps").null_count == 2
    fallback = parse_meta_csv("/data/with space/x.mp4::4\n")
    assert fallback.column("uri").to_pylist() == ["/data/with space/x.mp4"]


def test_bad_csv_rows_are_named_by_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("/a.mp4 1\n/b.mp4 one\n\n/c.mp4 2 extra\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(str(path))
    msg = str(err.value)
    assert "bad.csv" in msg and "line 2" in msg and "not an integer" in msg and "line 4" in msg


def test_bad_parquet_schema_names_column(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"uri": ["a"], "label": ["x"], "duration_s": [1.0], "fps": [1.0],
                             "num_frames": [1], "bytes": [1]}), path)
    with pytest.raises(ManifestError, match="column 'label'"):
        read_manifest(str(path))
    pq.write_table(pa.table({"uri": ["a"]}), path)
    with pytest.raises(ManifestError, match="missing column"):
        read_manifest(str(path))


def test_missing_and_unreadable_manifest(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(str(tmp_path / "none.parquet"))
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(ManifestError, match="junk.parquet: unreadable"):
        read_manifest(str(junk))


def test_meta_csv_with_byte_order_mark_and_crlf_line_ends(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeff/d/a.mp4 3\r\n/d/b c.mp4::7\r\n".encode())
    back = read_manifest(str(path))
    assert back.column("uri").to_pylist() == ["/d/a.mp4", "/d/b c.mp4"]
    assert back.column("label").to_pylist() == [3, 7]


def _rows_table(**columns) -> pa.Table:
    n = len(columns["uri"])
    base = {"uri": columns.pop("uri"), "label": [0] * n, "duration_s": [1.0] * n, "fps": [1.0] * n,
            "num_frames": [1] * n, "bytes": [1] * n}
    return pa.table({**base, **columns})


@pytest.mark.parametrize(("columns", "message"), [
    ({"uri": ["/a.mp4", None, "/c.mp4"]}, r"column 'uri' is null at row\(s\) 1; every row needs a media path"),
    ({"uri": ["/a", "/b"], "label": ["1", "abc"]}, r"'label' must be an integer, got string at row\(s\) 1 \('abc'\)"),
    ({"uri": ["/a", "/b"], "label": [1.0, 2.5]}, r"'label' must be an integer, got double at row\(s\) 1 \(2\.5\)"),
    ({"uri": ["/a", "/b"], "weight": [1.0, -0.5]}, r"column 'weight' must be finite and >= 0 .*row\(s\) 1"),
    ({"uri": ["/a", "/b"], "weight": [None, 1.0]}, r"column 'weight' must be finite and >= 0 .*row\(s\) 0"),
])
def test_row_rules_name_the_file_and_row(tmp_path, columns, message):
    """The rules training applies to each row, checked by ManifestRows.check (validate-data, the driver)."""
    from pipelines.sources import ManifestRows

    path = tmp_path / "m.parquet"
    pq.write_table(_rows_table(**columns), path)
    with pytest.raises(ManifestError, match=rf"m\.parquet: .*{message}"):
        ManifestRows(str(path)).check()
