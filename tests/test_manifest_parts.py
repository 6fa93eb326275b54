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


def test_a_directory_the_project_began_writing_is_refused_until_finished(tmp_path):
    from pipelines.manifest import begin_manifest_parts, finish_manifest_parts, read_manifest

    parts = tmp_path / "curated"
    begin_manifest_parts(str(parts))
    _part(parts / "part-00000.parquet", ["a", "b", "c"], 0.5)  # the writer is killed after one part
    for read in (ManifestRows, read_manifest):
        with pytest.raises(ManifestError, match=r"curated: incomplete manifest: .*1 part\(s\), 3 row\(s\) so far\); "
                                                r"rerun the stage"):
            read(str(parts))
    _part(parts / "part-00001.parquet", ["d", "e"], 0.5)
    assert finish_manifest_parts(str(parts)) == {"parts": 2, "rows": 5}
    assert ManifestRows(str(parts)).num_rows == read_manifest(str(parts)).num_rows == 5
    (parts / "part-00001.parquet").unlink()  # a part lost after the fact: the counts no longer add up
    with pytest.raises(ManifestError, match=r"_SUCCESS lists 2 part\(s\) and 5 row\(s\), the directory holds 1 and 3"):
        ManifestRows(str(parts))
    begin_manifest_parts(str(parts))  # a rerun starts: incomplete again until it finishes
    with pytest.raises(ManifestError, match="never finished"):
        ManifestRows(str(parts))


def test_user_made_directories_without_project_markers_are_read(tmp_path):
    plain, spark = tmp_path / "plain", tmp_path / "spark"
    for folder in (plain, spark):
        folder.mkdir()
        _part(folder / "part-0.parquet", ["a", "b"], 1.0)
    (spark / "_SUCCESS").write_bytes(b"")  # Spark's and Hadoop's marker is empty
    assert ManifestRows(str(plain)).num_rows == ManifestRows(str(spark)).num_rows == 2
