"""The source registry (which manifests feed the mix, at which weight) and row-group access to manifests.

Sources come from ``DataConfig.sources`` alone: the five VideoMix22M sources by default (docs/reference.md
R-vjepa2-5.1), any other by adding ``{name: {manifest, weight, kind}}``. A source's id is its position in the
config, weight-0 sources included, so ids (the ``source`` column of batches) do not shift when a
sweep turns a source off.

:class:`ManifestRows` reads a manifest one Parquet row group at a time (``s3://`` reads are ranged
GETs), so the sampling index over a 10M-row manifest never holds the manifest in memory. Meta CSV
lists are small by nature; they are parsed whole and cut into virtual groups of the same size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core import storage
from core.errors import UserError
from core.ray_session import missing_path_hint, worker_env
from pipelines.config import DataConfig
from pipelines.manifest import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    ManifestError,
    check_complete,
    conform,
    conform_columns,
    is_csv,
    read_manifest,
)

CSV_GROUP_ROWS = 65536
RECORD_COLUMNS = ("uri", "label", "fps", "num_frames", "start_s", "end_s")


@dataclass(frozen=True)
class Source:
    name: str
    source_id: int
    kind: str
    weight: float
    manifest: str


class SourceRegistry:
    """All configured sources by id, and the active ones (weight > 0) that the mix draws from."""

    def __init__(self, sources: list[Source]):
        self.sources = sources
        self.names = [s.name for s in sources]
        self.active = [s for s in sources if s.weight > 0]

    @classmethod
    def from_config(cls, cfg: DataConfig) -> SourceRegistry:
        sources = []
        for source_id, (name, sc) in enumerate(cfg.sources.items()):
            if not math.isfinite(sc.weight) or sc.weight < 0:
                raise UserError(f"data.sources.{name}.weight: must be a finite number >= 0, got {sc.weight}")
            if sc.weight > 0 and not sc.manifest:
                raise UserError(f"data.sources.{name}: weight {sc.weight} but no manifest; set "
                                f"data.sources.{name}.manifest=URI or weight=0 to leave it out")
            sources.append(Source(name, source_id, sc.kind, float(sc.weight), sc.manifest))
        registry = cls(sources)
        if not registry.active:
            raise UserError("data.sources: every source has weight 0; nothing to sample")
        return registry

    def shares(self) -> dict[str, float]:
        """The normalised mixing weights of the active sources."""
        total = sum(s.weight for s in self.active)
        return {s.name: s.weight / total for s in self.active}


class ManifestRows:
    """One manifest, read a row group at a time; picklable (handles reopen lazily on each process)."""

    def __init__(self, uri: str):
        self.uri = str(uri)
        self._files: dict[int, pq.ParquetFile] = {}
        self._csv: pa.Table | None = None
        if is_csv(self.uri):
            table = self._csv_table()
            self.group_rows = _virtual_groups(table.num_rows)
            self.columns = set(table.column_names)
        else:
            if not storage.exists(self.uri):
                raise ManifestError(f"{self.uri}: manifest not found{missing_path_hint(self.uri)}")
            # A directory of Parquet parts (e.g. the curated YT1B manifest) reads as one manifest.
            directory = storage.is_dir(self.uri)
            self.parts = storage.list_files(self.uri, ".parquet") if directory else [self.uri]
            if not self.parts:
                raise ManifestError(f"{self.uri}: directory holds no .parquet manifest parts")
            rows, self.group_part, self.group_local = [], [], []
            for part in range(len(self.parts)):
                meta = self._parquet(part).metadata
                conform(self._parquet(part).schema_arrow.empty_table(), self.parts[part])  # fail before any row
                for group in range(meta.num_row_groups):
                    rows.append(meta.row_group(group).num_rows)
                    self.group_part.append(part)
                    self.group_local.append(group)
            self.group_rows = np.array(rows, np.int64)
            self.columns = set(self._parquet(0).schema_arrow.names)
            if directory:
                check_complete(self.uri, self.parts, int(self.group_rows.sum()))
        self.num_rows = int(self.group_rows.sum())
        if self.num_rows == 0:
            raise ManifestError(f"{self.uri}: manifest has no rows")
        self.group_offsets = np.concatenate([[0], np.cumsum(self.group_rows)])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}, "_csv": None}

    def _csv_table(self) -> pa.Table:
        if self._csv is None:
            self._csv = read_manifest(self.uri)
        return self._csv

    def _parquet(self, part: int) -> pq.ParquetFile:
        if part not in self._files:
            uri = self.parts[part]
            fs, path = storage.filesystem_for(uri)
            try:
                self._files[part] = pq.ParquetFile(fs.open_input_file(path))
            except (OSError, pa.ArrowException) as exc:
                raise ManifestError(f"{uri}: unreadable manifest: {exc}") from exc
        return self._files[part]

    def read_group(self, group: int, columns: list[str]) -> pa.Table:
        """Row group ``group`` with ``columns`` (optional ones missing from the file come back null)."""
        present = [c for c in columns if c in self.columns]
        if is_csv(self.uri):
            start = int(self.group_offsets[group])
            table = self._csv_table().slice(start, int(self.group_rows[group])).select(present)
        else:
            part = self.group_part[group]
            table = self._parquet(part).read_row_group(self.group_local[group], columns=present)
            table = conform_columns(table, self.parts[part], int(self.group_offsets[group]))
        for name in columns:
            if name not in present:
                table = table.append_column(name, pa.nulls(table.num_rows, pa.float64()))
        return table.select(columns)

    def check(self) -> None:
        """Apply every row rule that training applies (non-null ``uri``, integer ``label``, numeric scene
        bounds, finite weights >= 0), streamed a group at a time: a :class:`ManifestError` naming the file
        and row now, not inside a decode actor later. Columns whose Parquet type and statistics already
        prove them valid are not read (a 10M-row manifest's ``uri`` column is ~1 GB)."""
        for group in range(len(self.group_rows)):
            columns = self._columns_to_check(group)
            if columns:
                self.read_group(group, columns)
            if "weight" in self.columns:
                self.row_weights(group)

    def _columns_to_check(self, group: int) -> list[str]:
        wanted = [c for c in ("uri", "label", "start_s", "end_s") if c in self.columns]
        if is_csv(self.uri):
            return []  # parsed and checked whole when opened
        file = self._parquet(self.group_part[group])
        chunk = file.metadata.row_group(self.group_local[group])
        stats = {chunk.column(i).path_in_schema: chunk.column(i).statistics for i in range(chunk.num_columns)}
        types = {**REQUIRED_COLUMNS, **OPTIONAL_COLUMNS}
        out = []
        for name in wanted:
            known = stats.get(name)
            no_nulls = known is not None and known.has_null_count and known.null_count == 0
            if file.schema_arrow.field(name).type != types[name] or (name == "uri" and not no_nulls):
                out.append(name)
        return out

    def group_weights(self) -> np.ndarray | None:
        """Per-group sums of the ``weight`` column, streamed a group at a time; None without the column.

        A null, negative or non-finite weight is a manifest defect and fails naming the row.
        """
        if "weight" not in self.columns:
            return None
        sums = np.array([self.row_weights(group).sum() for group in range(len(self.group_rows))])
        if sums.sum() <= 0:
            raise ManifestError(f"{self.uri}: column 'weight' sums to 0; no row can be drawn")
        return sums

    def row_weights(self, group: int) -> np.ndarray:
        column = self.read_group(group, ["weight"]).column("weight")
        weights = column.to_numpy(zero_copy_only=False).astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
        if len(bad):
            rows = ", ".join(str(int(self.group_offsets[group] + b)) for b in bad[:10])
            raise ManifestError(f"{self.uri}: column 'weight' must be finite and >= 0 (null/negative/NaN at "
                                f"row(s) {rows})")
        return weights


def _virtual_groups(num_rows: int) -> np.ndarray:
    full, rest = divmod(num_rows, CSV_GROUP_ROWS)
    return np.array([CSV_GROUP_ROWS] * full + ([rest] if rest else []), np.int64)


Split = Literal["all", "train", "val"]


class SplitRows:
    """The ``train`` or ``val`` part of a manifest, with the interface of :class:`ManifestRows`.

    The last ``floor(holdout x rows)`` rows of every row group are held out for validation and the rest
    train, so the split is a pure function of the manifest's layout (no row is read to decide it) and
    the index stays O(row groups). Rows keep their manifest row numbers in requests and errors.
    """

    def __init__(self, rows: ManifestRows, split: Split, holdout: float):
        self.rows, self.uri, self.columns = rows, rows.uri, rows.columns
        held = np.floor(rows.group_rows * holdout).astype(np.int64)
        self.group_start = rows.group_rows - held if split == "val" else np.zeros_like(held)
        self.group_rows = held if split == "val" else rows.group_rows - held
        self.group_offsets = rows.group_offsets[:-1] + self.group_start
        self.num_rows = int(self.group_rows.sum())

    def read_group(self, group: int, columns: list[str]) -> pa.Table:
        return self.rows.read_group(group, columns).slice(int(self.group_start[group]), int(self.group_rows[group]))

    def group_weights(self) -> np.ndarray | None:
        if "weight" not in self.columns:
            return None
        sums = np.array([self.rows.row_weights(g)[self.group_start[g]:][:self.group_rows[g]].sum()
                         for g in range(len(self.group_rows))])
        return sums if sums.sum() > 0 else None


def check_data(cfg: DataConfig) -> SourceRegistry:
    """Everything about the data config that can fail, checked in the driver before Ray starts, so a bad
    manifest, unreachable storage or a secret in ``data.worker_env`` is one line and exit 2 instead of
    an error deep inside a trainer or decode actor: the source registry, each active source's manifest
    (opened, complete, every row rule), and the decode actors' environment."""
    worker_env(cfg.worker_env)  # refuses secret-looking keys
    registry = SourceRegistry.from_config(cfg)
    for src in registry.active:
        ManifestRows(src.manifest).check()
    return registry


def split_rows(uri: str, split: Split, holdout: float) -> ManifestRows | SplitRows:
    """A source manifest's rows for ``split`` (``all``: every row, as without a holdout)."""
    rows = ManifestRows(uri)
    return rows if split == "all" or holdout <= 0 else SplitRows(rows, split, holdout)
