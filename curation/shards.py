"""Parquet shards: the unit of work, of resumption and of output for every curation stage.

A stage directory holds ``part-NNNNN.parquet`` files, one per input shard. A shard file exists only
when it is complete: locally it is written to a hidden temp name and renamed (rename is atomic on one
filesystem), on S3 an object becomes visible only when its upload completes. So a run killed at any
moment leaves only whole shards behind, a re-run skips every shard that exists, and a reader lists only
``part-*.parquet`` names (never the ``.part-*.tmp-PID`` leftovers of a killed writer).

Each stage directory also records the config keys its shards were made with (``_stage.json``,
curation/lineage.py), so a re-run with, say, another embedder replaces that stage's shards instead of
mixing old and new ones.
"""

from __future__ import annotations

import io
import re

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from core import storage
from core.errors import UserError

SHARD_RE = re.compile(r"^part-(\d{5,})\.parquet$")


def shard_uri(stage_dir: str, index: int) -> str:
    return storage.join(stage_dir, f"part-{index:05d}.parquet")


def write_shard(table: pa.Table, uri: str, metadata: dict[str, bytes] | None = None) -> None:
    """Write one whole shard; readers see either nothing or the complete file.

    ``metadata`` goes into the Parquet footer (e.g. per-shard sums), readable without the data.
    """
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    storage.write_bytes(uri, sink.getvalue())


def read_shard(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = storage.filesystem_for(uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


def shard_rows(uri: str) -> int:
    """Row count of a shard from its Parquet footer (no data read)."""
    fs, path = storage.filesystem_for(uri)
    with fs.open_input_file(path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def shard_metadata(uri: str) -> dict[bytes, bytes]:
    """The key-value metadata of a shard's footer (no data read)."""
    fs, path = storage.filesystem_for(uri)
    with fs.open_input_file(path) as f:
        return dict(pq.ParquetFile(f).schema_arrow.metadata or {})


def finished(stage_dir: str) -> dict[int, str]:
    """``{shard index: uri}`` of the complete shards in ``stage_dir`` (temp files are not listed)."""
    fs, path = storage.filesystem_for(stage_dir)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except FileNotFoundError:
        return {}
    done = {}
    for info in infos:
        match = SHARD_RE.match(info.base_name)
        if info.type == pafs.FileType.File and match:
            done[int(match.group(1))] = storage.join(stage_dir, info.base_name)
    return done


def read_stage(stage_dir: str, columns: list[str] | None = None) -> pa.Table:
    """All finished shards of a stage, concatenated in shard order (deterministic row order)."""
    done = finished(stage_dir)
    if not done:
        raise UserError(f"{stage_dir}: no finished shards to read")
    tables = [read_shard(done[i], columns) for i in sorted(done)]
    return pa.concat_tables(tables, promote_options="default")


def remove_dir(stage_dir: str) -> None:
    """Remove everything under ``stage_dir`` (a stage output that its changed inputs made stale)."""
    with storage.storage_errors(stage_dir, "delete"):
        fs, path = storage.filesystem_for(stage_dir)
        fs.delete_dir_contents(path, missing_dir_ok=True)
