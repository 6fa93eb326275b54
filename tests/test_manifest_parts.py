"""A directory of Parquet parts (the curated YT1B manifest) reads as one manifest, row group by row group."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.manifest import ManifestError
from pipelines.sources import ManifestRows

COLUMNS = ["uri", "label", "fps", "num_frames", "start_s", "end_s"]


def _part(path, uris, weight):
    pq.write_table(pa.table({"uri": uris, "label": [0] * len(uris), "duration_s": [9.0] * len(uris),
                             "fps": [25.0] * len(uris), "num_frames": [225] * len(uris), "bytes": [1] * len(uris),
                             "start_s": [1.0] * len(uris), "end_s": [6.0] * len(uris),
                             "weight": [weight] * len(uris)}), path, row_group_size=2)


def test_directory_of_parts_reads_in_order_across_files(tmp_path):
    parts = tmp_path / "manifest"
    parts.mkdir()
    _part(parts / "part-000.parquet", ["a", "b", "c"], 0.5)
    _part(parts / "part-001.parquet", ["d", "e"], 0.25)
    (parts / ".part-002.parquet.tmp").write_bytes(b"partial write, never read")
    rows = ManifestRows(str(parts))
    assert rows.num_rows == 5 and list(rows.group_rows) == [2, 1, 2]
    uris = [u for g in range(len(rows.group_rows)) for u in rows.read_group(g, COLUMNS)["uri"].to_pylist()]
    assert uris == ["a", "b", "c", "d", "e"]
    assert list(rows.group_weights()) == [1.0, 0.5, 0.5]


def test_empty_directory_and_bad_part_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no .parquet"):
        ManifestRows(str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.table({"uri": ["x"]}), bad / "p.parquet")
    with pytest.raises(ManifestError, match=r"p\.parquet.*missing column"):
        ManifestRows(str(bad))
