"""The one manifest schema every stage reads and writes (data pipeline, curation, validation).

A manifest is Parquet with the columns of :data:`MANIFEST_SCHEMA` (``start_s``/``end_s``/``weight``
optional) plus whatever a stage adds (``cluster_id`` ...). Meta's CSV format (``<path> <int label>``,
space separated, no header, ``::`` as the fallback delimiter; docs/reference.md R-vjepa2-5.2) is read and written too;
its rows leave the media columns null.

A manifest that cannot be parsed is a defect of the manifest itself: :class:`ManifestError` names the
file and the offending line numbers or column, so it fails fast before any GPU hour is spent.

A manifest may also be a directory of Parquet parts. When this project writes one, it brackets the
writing with :func:`begin_manifest_parts` (a ``_STARTED`` marker) and :func:`finish_manifest_parts` (a
``_SUCCESS`` marker holding the part and row counts); :func:`check_complete` refuses a directory whose
writer began but never finished (a killed stage) or whose parts no longer add up to the marker. A
directory without ``_STARTED`` (made by a user, Spark, pyarrow) is read as it is; an empty ``_SUCCESS``
(Spark's and Hadoop's) counts as complete without counts.
"""

from __future__ import annotations

import io
import json
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core import storage
from core.errors import UserError
from core.ray_session import missing_path_hint

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
TYPE_WORDS = {pa.int64(): "an integer", pa.float64(): "a number", pa.string(): "a string"}
STARTED_FILE = "_STARTED"
SUCCESS_FILE = "_SUCCESS"


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


def conform(table: pa.Table, uri: str = "<table>", first_row: int = 0) -> pa.Table:
    """Check and cast a table to the manifest schema; extra columns are kept as they are.

    ``first_row``: the manifest row number of the table's first row, for messages (:func:`conform_columns`
    checks a row group read with a column subset, where the required columns need not all be there).
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ManifestError(
            f"{uri}: missing column(s) {missing}; a manifest needs {list(REQUIRED_COLUMNS)}"
        )
    return conform_columns(table, uri, first_row)


def conform_columns(table: pa.Table, uri: str, first_row: int = 0) -> pa.Table:
    """Cast the manifest columns ``table`` has to their types and check their values: every row needs a
    ``uri``; a value that does not cast (label ``abc`` or 2.5) fails naming its row (``first_row`` +
    its position: manifest row numbers, counted from 0 as in the rejects table)."""
    types = {**REQUIRED_COLUMNS, **OPTIONAL_COLUMNS}
    columns = {name: cast_column(table[name], types[name], uri, name, first_row) if name in types else table[name]
               for name in table.column_names}
    if "uri" in columns and columns["uri"].null_count:
        nulls = np.flatnonzero(columns["uri"].is_null().to_numpy(zero_copy_only=False))
        raise ManifestError(f"{uri}: column 'uri' is null at row(s) {_rows(first_row + nulls)}; every row "
                            "needs a media path")
    return pa.table(columns)


def _rows(rows) -> str:
    shown = ", ".join(str(int(r)) for r in list(rows)[:MAX_LINES_IN_ERROR])
    return shown + (f" (+{len(rows) - MAX_LINES_IN_ERROR} more)" if len(rows) > MAX_LINES_IN_ERROR else "")


def cast_column(column: pa.ChunkedArray, want: pa.DataType, uri: str, name: str, first_row: int = 0):
    """``column`` as ``want`` with Arrow's safe cast (no truncation: 2.5 is not an integer), or a
    :class:`ManifestError` naming the rows and values that do not convert."""
    if column.type == want:
        return column
    try:
        return column.cast(want)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        bad = []
        for at, value in enumerate(column.to_pylist()):
            try:
                pa.array([value], column.type).cast(want)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                bad.append(f"{first_row + at} ({value!r})")
                if len(bad) == MAX_LINES_IN_ERROR:
                    break
        where = f" at row(s) {', '.join(bad)}" if bad else f": {' '.join(str(exc).split())}"
        raise ManifestError(f"{uri}: column '{name}' must be {TYPE_WORDS.get(want, str(want))}, got "
                            f"{column.type}{where}") from exc


def is_csv(uri: str) -> bool:
    return PurePosixPath(str(uri)).suffix.lower() in CSV_SUFFIXES


def read_manifest(uri: str) -> pa.Table:
    """Read a manifest (Parquet, or Meta CSV by suffix) from a local path or ``s3://``."""
    uri = str(uri)
    if not storage.exists(uri):
        raise ManifestError(f"{uri}: manifest not found{missing_path_hint(uri)}")
    try:
        if is_csv(uri):
            # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first path
            return parse_meta_csv(storage.read_bytes(uri).decode("utf-8-sig"), uri)
        fs, path = storage.filesystem_for(uri)
        table = conform(pq.read_table(path, filesystem=fs), uri)
        if storage.is_dir(uri):
            check_complete(uri, storage.list_files(uri, ".parquet"), table.num_rows)
        return table
    except (ManifestError, storage.StorageError):
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


def begin_manifest_parts(directory: str) -> None:
    """Mark ``directory`` as a manifest this project is writing part by part; readers refuse it until
    :func:`finish_manifest_parts`. Call it before the first part is written (a rerun calls it again)."""
    storage.write_bytes(storage.join(directory, STARTED_FILE), b"{}\n")
    storage.delete(storage.join(directory, SUCCESS_FILE))


def finish_manifest_parts(directory: str) -> dict[str, int]:
    """Write the ``_SUCCESS`` marker of a complete parts directory: its part and row counts (from the
    footers), which readers compare with what they find. Returns the counts."""
    parts = storage.list_files(directory, ".parquet")
    rows = 0
    for part in parts:
        fs, path = storage.filesystem_for(part)
        with fs.open_input_file(path) as f:
            rows += pq.ParquetFile(f).metadata.num_rows
    counts = {"parts": len(parts), "rows": rows}
    storage.write_bytes(storage.join(directory, SUCCESS_FILE), (json.dumps(counts) + "\n").encode())
    return counts


def check_complete(directory: str, parts: list[str], rows: int) -> None:
    """Refuse a parts directory this project began writing and did not finish, or whose ``_SUCCESS``
    counts differ from the ``parts`` and ``rows`` found; accept directories it did not write."""
    rerun = "rerun the stage that writes it (a rerun with the same config resumes where it stopped)"
    success = storage.join(directory, SUCCESS_FILE)
    if not storage.exists(success):
        if storage.exists(storage.join(directory, STARTED_FILE)):
            raise ManifestError(f"{directory}: incomplete manifest: its writer began ({STARTED_FILE}) but never "
                                f"finished (no {SUCCESS_FILE}; {len(parts)} part(s), {rows} row(s) so far); {rerun}")
        return
    text = storage.read_bytes(success).decode("utf-8", "replace").strip()
    if not text:
        return  # Spark / Hadoop: an empty marker
    try:
        want = json.loads(text)
        want_parts, want_rows = int(want["parts"]), int(want["rows"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ManifestError(f"{success}: unreadable completion marker ({exc}); {rerun}") from exc
    if (want_parts, want_rows) != (len(parts), rows):
        raise ManifestError(f"{directory}: incomplete manifest: {SUCCESS_FILE} lists {want_parts} part(s) and "
                            f"{want_rows} row(s), the directory holds {len(parts)} and {rows}; {rerun}")
