"""The clip index: exact, seeded, i.i.d. weighted draws of (source, row, window seed) per virtual epoch.

Meta's ``DistributedWeightedSampler`` (docs/reference.md R-vjepa2-5.1) gives each sample the weight
dataset_weight / dataset_size and draws ``choice(n, size, p, replace=True)`` per epoch. This index
draws from the same distribution in two exact steps: a source by its config weight, then a row inside
it, uniformly, or by the manifest's ``weight`` column when it has one (the curated YT1B manifest).
The row is drawn through the manifest's Parquet row groups (a group by its share of the weight, then
a row inside it), so building the index reads only the metadata (and the ``weight`` column, one group
at a time) and its memory is O(row groups), not O(rows).

Sample ``i`` of epoch ``e`` is a pure function of (seed, e, i): the draws come in fixed chunks, each
from its own generator, so resuming at sample ``k`` reproduces exactly the samples from ``k`` on
without drawing the prefix. A quarantined sample is replaced by redraw ``j`` from the same source,
again a pure function of (seed, e, i, j).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipelines.config import DataConfig
from pipelines.manifest import ManifestError
from pipelines.sources import RECORD_COLUMNS, ManifestRows, SourceRegistry, Split, SplitRows, split_rows

log = logging.getLogger(__name__)

CHUNK = 1 << 16  # draws per generator; part of the sampling definition, changing it changes every epoch
REDRAW_STREAM = 0x5EED  # separates redraw generators from the main chunk generators
MAX_SEED = 2**63 - 1


@dataclass
class Draws:
    """A contiguous range of the clip index, one entry per sample."""

    sample_id: np.ndarray  # int64, global sample index inside the epoch
    source: np.ndarray  # int64 source id (position in data.sources)
    group: np.ndarray  # int64 row group of the source's manifest
    u: np.ndarray  # float64 in [0, 1): the row's position inside its group
    window_seed: np.ndarray  # int64 seed for window, crop and flip
    attempt: np.ndarray  # int64: 0 for the original draw, j for redraw j

    def __len__(self) -> int:
        return len(self.sample_id)

    def take(self, where: np.ndarray | slice) -> Draws:
        return Draws(*(getattr(self, f)[where] for f in self.__dataclass_fields__))


@dataclass
class SourceIndex:
    """What the index keeps of one active source: its row groups and their weights."""

    name: str
    source_id: int
    kind: str
    weight: float
    rows: ManifestRows | SplitRows
    group_weight: np.ndarray  # float64 per group: rows count (uniform) or the sum of the weight column
    weighted: bool

    def locate(self, group: int, u: np.ndarray, group_table: pa.Table) -> np.ndarray:
        """Row offsets inside ``group`` for positions ``u``: uniform, or by the group's weight column."""
        size = int(self.rows.group_rows[group])
        if not self.weighted:
            return np.minimum((u * size).astype(np.int64), size - 1)
        cumulative = np.cumsum(group_table.column("weight").to_numpy(zero_copy_only=False).astype(np.float64))
        return np.minimum(np.searchsorted(cumulative, u * cumulative[-1], side="right"), size - 1)


class ClipIndex:
    """Weighted i.i.d. clip requests over the active sources of a :class:`DataConfig`."""

    def __init__(self, sources: list[SourceIndex], names: list[str], kinds: list[str], seed: int):
        self.sources = {s.source_id: s for s in sources}
        self.names = names  # all configured sources by id
        self.kinds = kinds
        self.seed = seed
        weights = np.array([s.weight for s in sources], np.float64)
        self._ids = np.array([s.source_id for s in sources], np.int64)
        self._cum_weight = np.cumsum(weights / weights.sum())
        self._cum_groups = {s.source_id: np.cumsum(s.group_weight) for s in sources}

    @classmethod
    def build(cls, cfg: DataConfig, split: Split = "all") -> ClipIndex:
        """Read each active source's manifest metadata (and weight column, streamed); no media is touched.

        ``split``: with ``data.holdout_fraction`` > 0, ``train`` leaves the held-out rows of every manifest
        out and ``val`` draws only from them (:class:`pipelines.sources.SplitRows`); a source with no
        held-out row sits out of ``val``. ``all``: every row (the same draws as without a holdout).
        """
        registry = SourceRegistry.from_config(cfg)
        sources = []
        for src in registry.active:
            t0 = time.perf_counter()
            rows = split_rows(src.manifest, split, cfg.holdout_fraction)
            if rows.num_rows == 0:
                log.info("source %s: no %s rows (holdout %.3f), left out of this split", src.name, split,
                         cfg.holdout_fraction)
                continue
            group_weights = rows.group_weights()
            weighted = group_weights is not None
            if not weighted:
                group_weights = rows.group_rows.astype(np.float64)
            sources.append(SourceIndex(src.name, src.source_id, src.kind, src.weight, rows, group_weights, weighted))
            log.info("source %s: %d rows in %d group(s)%s, weight %.3f (%.2f s)", src.name, rows.num_rows,
                     len(rows.group_rows), ", row weights" if weighted else "", src.weight, time.perf_counter() - t0)
        if not sources:
            raise ManifestError(f"no source has {split} rows with data.holdout_fraction={cfg.holdout_fraction}")
        return cls(sources, registry.names, [s.kind for s in registry.sources], cfg.seed)

    def shares(self) -> dict[str, float]:
        total = sum(s.weight for s in self.sources.values())
        return {s.name: s.weight / total for s in self.sources.values()}

    def _pick(self, source_ids: np.ndarray, u_group: np.ndarray) -> np.ndarray:
        groups = np.zeros(len(source_ids), np.int64)
        for source_id, cumulative in self._cum_groups.items():
            mask = source_ids == source_id
            if mask.any():
                at = np.searchsorted(cumulative, u_group[mask] * cumulative[-1], side="right")
                groups[mask] = np.minimum(at, len(cumulative) - 1)
        return groups

    def _chunk(self, epoch: int, chunk: int) -> Draws:
        rng = np.random.default_rng([self.seed, epoch, chunk])
        u_source, u_group, u_row = rng.random(CHUNK), rng.random(CHUNK), rng.random(CHUNK)
        seeds = rng.integers(0, MAX_SEED, CHUNK, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._cum_weight, u_source, side="right"), len(self._ids) - 1)
        source_ids = self._ids[at]
        sample_ids = np.arange(chunk * CHUNK, (chunk + 1) * CHUNK, dtype=np.int64)
        return Draws(sample_ids, source_ids, self._pick(source_ids, u_group), u_row, seeds,
                     np.zeros(CHUNK, np.int64))

    def draws(self, epoch: int, start: int, stop: int) -> Draws:
        """Samples ``[start, stop)`` of ``epoch``; the same numbers whatever range they are asked in."""
        if not 0 <= start <= stop:
            raise ValueError(f"bad sample range [{start}, {stop})")
        parts = []
        for chunk in range(start // CHUNK, -(-stop // CHUNK)):
            part = self._chunk(epoch, chunk)
            lo, hi = max(start - chunk * CHUNK, 0), min(stop - chunk * CHUNK, CHUNK)
            parts.append(part.take(slice(lo, hi)))
        if not parts:
            return self._chunk(epoch, 0).take(slice(0, 0))
        return Draws(*(np.concatenate([getattr(p, f) for p in parts]) for f in Draws.__dataclass_fields__))

    def redraw(self, epoch: int, sample_id: int, source_id: int, attempt: int) -> Draws:
        """Replacement ``attempt`` (1, 2, ...) for a quarantined sample, from the same source."""
        rng = np.random.default_rng([self.seed, epoch, sample_id, attempt, REDRAW_STREAM])
        u_group, u_row = rng.random(1), rng.random(1)
        seed = rng.integers(0, MAX_SEED, 1, dtype=np.int64)
        ids = np.array([source_id], np.int64)
        return Draws(np.array([sample_id], np.int64), ids, self._pick(ids, u_group), u_row, seed,
                     np.array([attempt], np.int64))

    def resolve(self, draws: Draws) -> pa.Table:
        """The clip requests for ``draws`` in draw order: each needed row group is read once, streamed.

        Columns: sample_id, source, row, attempt, window_seed, uri, label, fps, num_frames, start_s, end_s.
        """
        order = np.lexsort((draws.group, draws.source))
        pieces: list[pa.Table] = []
        bounds = np.flatnonzero(np.diff(draws.source[order]) | np.diff(draws.group[order])) + 1
        for run in np.split(order, bounds) if len(order) else []:
            src = self.sources[int(draws.source[run[0]])]
            group = int(draws.group[run[0]])
            table = src.rows.read_group(group, list(RECORD_COLUMNS) + (["weight"] if src.weighted else []))
            local = src.locate(group, draws.u[run], table)
            picked = table.select(list(RECORD_COLUMNS)).take(pa.array(local))
            pieces.append(picked.append_column("row", pa.array(src.rows.group_offsets[group] + local, pa.int64()))
                          .append_column("position", pa.array(run, pa.int64())))
        if not pieces:
            return REQUESTS_SCHEMA.empty_table()
        table = pa.concat_tables(pieces)
        table = table.take(pa.array(np.argsort(table.column("position").to_numpy(), kind="stable")))
        columns = {"sample_id": draws.sample_id, "source": draws.source, "row": table.column("row"),
                   "attempt": draws.attempt, "window_seed": draws.window_seed,
                   "label": table.column("label").fill_null(-1)}
        columns.update({c: table.column(c) for c in RECORD_COLUMNS if c != "label"})
        return pa.table({f.name: columns[f.name] for f in REQUESTS_SCHEMA}, schema=REQUESTS_SCHEMA)


REQUESTS_SCHEMA = pa.schema([
    ("sample_id", pa.int64()), ("source", pa.int64()), ("row", pa.int64()), ("attempt", pa.int64()),
    ("window_seed", pa.int64()), ("uri", pa.string()), ("label", pa.int64()), ("fps", pa.float64()),
    ("num_frames", pa.int64()), ("start_s", pa.float64()), ("end_s", pa.float64()),
])
