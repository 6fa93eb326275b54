"""The one manifest schema every stage reads and writes (data pipeline, curation, validation).

A manifest is Parquet with the columns of :data:`MANIFEST_SCHEMA` (``start_s``/``end_s``/``weight``
optional) plus whatever a stage adds (``cluster_id`` ...). Meta's CSV format (``<path> <int label>``,
space separated, no header, ``::`` as the fallback delimiter; docs/reference.md R-vjepa2-5.2) is read and written too;
its rows leave the media columns null.

A manifest that cannot be parsed is a defect of the manifest itself: :class:`ManifestError` names the
file and the offending line numbers or column, so it fails fast before any GPU hour is spent.
"""

from __future__ import annotations

import io
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from core import storage
from core.errors import UserError

REQUIRED_COLUMNS: dict[str, pa.DataType] = {
    "uri": pa.string(),
    "label": pa.int64(),
    "duration_s": pa.float64(),
    "fps": pa.float64(),
    "num_frames": pa.int64(),
    "bytes": pa.int64(),
}
OPTIONAL_COLUMNS: dict[str, pa.DataType] = {
    "start_s": pa.float64(),
    "end_s": pa.float64(),
    "weight": pa.float64(),
}
MANIFEST_SCHEMA = pa.schema([pa.field(name, tp) for name, tp in REQUIRED_COLUMNS.items()])
CSV_SUFFIXES = (".csv", ".txt")
MAX_LINES_IN_ERROR = 10


class ManifestError(UserError, ValueError):
    """A manifest whose rows or schema cannot be parsed."""


def _lines_msg(uri: str, bad: list[tuple[int, str]]) -> str:
    shown = "; ".join(f"line {n}: {why}" for n, why in bad[:MAX_LINES_IN_ERROR])
    more = f" (+{len(bad) - MAX_LINES_IN_ERROR} more)" if len(bad) > MAX_LINES_IN_ERROR else ""
    return f"{uri}: {len(bad)} unparseable row(s): {shown}{more}"


def _parse_row(parts: list[str]) -> tuple[str, int] | None:
    if len(parts) != 2:
        return None
    try:
        return parts[0], int(parts[1])
    except ValueError:
        return None


def parse_meta_csv(text: str, uri: str = "<csv>") -> pa.Table:
    """Parse Meta's ``<path> <int label>`` list; a row that does not parse on spaces is tried on ``::``."""
    uris: list[str] = []
    labels: list[int] = []
    bad: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parsed = _parse_row(line.split()) or ("::" in line and _parse_row(line.strip().split("::")))
        if parsed:
            uris.append(parsed[0])
            labels.append(parsed[1])
            continue
        parts = line.split()
        why = (f"label {parts[1]!r} is not an integer" if len(parts) == 2
               else f"expected 2 columns '<path> <label>', got {len(parts)}")
        bad.append((number, why))
    if bad:
        raise ManifestError(_lines_msg(uri, bad))
    n = len(uris)
    return pa.table(
        {
            "uri": pa.array(uris, pa.string()),
            "label": pa.array(labels, pa.int64()),
            "duration_s": pa.nulls(n, pa.float64()),
            "fps": pa.nulls(n, pa.float64()),
            "num_frames": pa.nulls(n, pa.int64()),
            "bytes": pa.nulls(n, pa.int64()),
        }
    )


def conform(table: pa.Table, uri: str = "<table>") -> pa.Table:
    """Check and cast a table to the manifest schema; extra columns are kept as they are."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ManifestError(
            f"{uri}: missing column(s) {missing}; a manifest needs {list(REQUIRED_COLUMNS)}"
        )
    columns = {}
    for name in table.column_names:
        want = REQUIRED_COLUMNS.get(name) or OPTIONAL_COLUMNS.get(name)
        col = table[name]
        if want is not None and col.type != want:
            try:
                col = col.cast(want)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ManifestError(
                    f"{uri}: column '{name}' has type {col.type}, expected {want}: {exc}"
                ) from exc
        columns[name] = col
    null_uris = columns["uri"].null_count
    if null_uris:
        raise ManifestError(f"{uri}: column 'uri' has {null_uris} null value(s)")
    return pa.table(columns)


def is_csv(uri: str) -> bool:
    return PurePosixPath(str(uri)).suffix.lower() in CSV_SUFFIXES


def read_manifest(uri: str) -> pa.Table:
    """Read a manifest (Parquet, or Meta CSV by suffix) from a local path or ``s3://``."""
    uri = str(uri)
    if not storage.exists(uri):
        raise ManifestError(f"{uri}: manifest not found")
    try:
        if is_csv(uri):
            return parse_meta_csv(storage.read_bytes(uri).decode("utf-8"), uri)
        fs, path = storage.filesystem_for(uri)
        return conform(pq.read_table(path, filesystem=fs), uri)
    except ManifestError:
        raise
    except (OSError, pa.ArrowException, UnicodeDecodeError) as exc:
        raise ManifestError(f"{uri}: unreadable manifest: {exc}") from exc


def write_manifest(table: pa.Table, uri: str) -> None:
    """Write Parquet (or Meta CSV by suffix) atomically."""
    table = conform(table, uri)
    if is_csv(uri):
        lines = [f"{u} {lbl if lbl is not None else 0}" for u, lbl in
                 zip(table["uri"].to_pylist(), table["label"].to_pylist())]
        storage.write_bytes(uri, ("\n".join(lines) + "\n").encode())
        return
    sink = io.BytesIO()
    pq.write_table(table, sink)
    storage.write_bytes(uri, sink.getvalue())
