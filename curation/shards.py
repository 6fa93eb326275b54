"""Parquet shards: the unit of work, of resumption and of output for every curation stage.

A stage directory holds ``part-NNNNN.parquet`` files, one per input shard. A shard file exists only
when it is complete: locally it is written to a hidden temp name and renamed (rename is atomic on one
filesystem), on S3 an object becomes visible only when its upload completes. So a run killed at any
moment leaves only whole shards behind, a re-run skips every shard that exists, and a reader lists only
``part-*.parquet`` names (never the ``.part-*.tmp-PID`` leftovers of a killed writer).

Each stage directory also records the fingerprint of the config that produced it (``_stage.json``),
so a re-run with, say, another embedder fails loudly instead of mixing old and new shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from core import storage
from core.errors import UserError

SHARD_RE = re.compile(r"^part-(\d{5,})\.parquet$")
FINGERPRINT_FILE = "_stage.json"


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


def fingerprint(sections: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(sections, sort_keys=True, default=str).encode()).hexdigest()[:16]


def claim_stage(stage_dir: str, sections: dict[str, Any]) -> None:
    """Record (first run) or check (re-run) the config that this stage's shards were made with."""
    uri = storage.join(stage_dir, FINGERPRINT_FILE)
    record = {"fingerprint": fingerprint(sections), "config": sections}
    if storage.exists(uri):
        old = json.loads(storage.read_bytes(uri))
        if old["fingerprint"] != record["fingerprint"]:
            changed = sorted(k for k in set(old["config"]) | set(sections)
                             if json.dumps(old["config"].get(k), sort_keys=True, default=str)
                             != json.dumps(sections.get(k), sort_keys=True, default=str))
            raise UserError(f"{stage_dir}: made with a different config (changed: {', '.join(changed)}); "
                            "use a new output directory or delete this stage")
        return
    storage.write_bytes(uri, json.dumps(record, indent=1, sort_keys=True, default=str).encode())
