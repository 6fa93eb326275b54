"""The stage workers: what each curation stage does with one shard task, and the shard formats they share.

Each worker takes a :class:`~curation.execution.StageTask` (or the record the step before it made)
and its stage's typed config, writes its output shard, and returns a
:class:`~curation.execution.ShardSummary`. Functions run as Ray tasks; the classes are actors that load
a model or an index once and then take shard after shard. How they are scheduled, skipped when done,
and fed is ``curation/execution.py``; which tasks exist is the driver's (``curation/pipeline.py``).
The footer keys written here (``EMBEDDING_SUM``, ``CLEAN_ROWS``) are read back by ``pool_mean`` and
``clean_rows``, so the driver plans from footers instead of reading vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from core.errors import UserError
from curation import decontam, kmeans, shards
from curation.config import EmbedderConfig, KMeansConfig, SceneConfig
from curation.execution import RecordActor, ShardSummary, StageTask, summary, write_with_quarantine
from pipelines.quarantine import RejectRecord

SCENE_SCHEMA = pa.schema([
    ("uri", pa.string()), ("label", pa.int64()), ("duration_s", pa.float64()), ("fps", pa.float64()),
    ("num_frames", pa.int64()), ("bytes", pa.int64()), ("start_frame", pa.int64()),
    ("end_frame", pa.int64()), ("start_s", pa.float64()), ("end_s", pa.float64()),
])
MANIFEST_COLUMNS = ["uri", "label", "duration_s", "fps", "num_frames", "bytes", "start_s", "end_s",
                    "weight", "cluster_id"]
EMBEDDING_SUM = "embedding_sum"  # footer key: float64 sum of a shard's embeddings
CLEAN_ROWS = "clean_rows"  # footer key: rows of a decontam shard that are not contaminated

Error = tuple[str, str]  # (quarantine reason, detail)


def embedding_matrix(table: pa.Table) -> np.ndarray:
    """The ``embedding`` column (fixed-size list of float32) as an ``[N, dim]`` array."""
    col = table["embedding"].combine_chunks()
    if len(col) == 0:
        return np.zeros((0, col.type.list_size), np.float32)
    return col.values.to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)


# ----------------------------------------------------------------------------------------------
# Stage 1: scenes


def split_shard(task: StageTask, scenes: SceneConfig, backend: str) -> ShardSummary:
    """CPU step: the scenes of one slice of the pool manifest, and the quarantine of what was dropped."""
    from curation.scenes import split_video

    found, rejects = [], []
    for row in task.rows:
        kept, dropped = split_video(row, scenes, task.source, backend)
        found += kept
        rejects += dropped
    return write_with_quarantine(task, pa.Table.from_pylist(found, schema=SCENE_SCHEMA), rejects)


# ----------------------------------------------------------------------------------------------
# Stages 2-3: middle-frame embeddings


@dataclass
class DecodedShard:
    """A decode step's result for the embed actor: the items, their middle frames, and per item the
    error that keeps it from being embedded (None when it decoded)."""

    task: StageTask
    items: pa.Table
    frames: np.ndarray  # [N, S, S, 3] uint8, zeros where an item failed
    errors: list[Error | None]


def _video_items(rows: list[dict], backend: str) -> tuple[pa.Table, list[Error | None]]:
    """Target videos as one-scene items spanning the whole video (probing what the manifest lacks)."""
    from curation.frames import probe
    from pipelines.quarantine import SampleError

    rows = [dict(row) for row in rows]  # completed below; the task's own rows stay as read
    errors: list[Error | None] = []
    for row in rows:
        error = None
        if not row.get("num_frames") or not row.get("fps"):
            try:
                row["num_frames"], row["fps"] = probe(row["uri"], backend)
            except SampleError as exc:
                error = (exc.reason, f"{exc.stage}: {exc.detail}")
        num_frames, fps = int(row.get("num_frames") or 0), float(row.get("fps") or 0.0)
        if error is None and (num_frames <= 0 or fps <= 0):
            error = ("too_few_frames", f"{num_frames} frames at {fps} fps")
        row.update(start_frame=0, end_frame=num_frames, start_s=0.0, end_s=num_frames / fps if fps else 0.0)
        errors.append(error)
    return pa.Table.from_pylist(rows, schema=SCENE_SCHEMA), errors


def decode_shard(task: StageTask, image_size: int, backend: str) -> DecodedShard:
    """CPU step: the middle frame of every item of one shard, squared to the embedder's input size."""
    from curation.frames import middle_frame, read_middle_frames

    if task.input:
        items = shards.read_shard(task.input)
        errors: list[Error | None] = [None] * items.num_rows
    else:
        items, errors = _video_items(task.rows, backend)
    starts, ends = items["start_frame"].to_pylist(), items["end_frame"].to_pylist()
    uris = items["uri"].to_pylist()
    todo = [i for i, e in enumerate(errors) if e is None]
    frames = np.zeros((items.num_rows, image_size, image_size, 3), np.uint8)
    decoded, decode_errors = read_middle_frames([uris[i] for i in todo],
                                                [middle_frame(starts[i], ends[i]) for i in todo],
                                                image_size, backend)
    for j, i in enumerate(todo):
        frames[i], errors[i] = decoded[j], decode_errors[j]
    return DecodedShard(task, items, frames, errors)


class EmbedShards(RecordActor):
    """Actor step: one model load per actor, then embed and write shard after shard.

    Each shard's footer carries the sum of its embeddings, so the pool mean (``pool_mean``) is
    known from footers alone, without another pass over the vectors.
    """

    def __init__(self, embedder: EmbedderConfig):
        from curation.embedders import build_embedder

        self.embedder = build_embedder(embedder)

    def process(self, decoded: DecodedShard) -> ShardSummary:
        task, items, errors = decoded.task, decoded.items, decoded.errors
        ok = np.array([e is None for e in errors], bool)
        emb = self.embedder.embed(decoded.frames[ok])
        kept = items.filter(pa.array(ok, pa.bool_()))
        column = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float32()), self.embedder.dim)
        rejects = [RejectRecord(u, task.source, e[0], "embed", e[1])
                   for u, e in zip(items["uri"].to_pylist(), errors) if e is not None]
        return write_with_quarantine(task, kept.append_column("embedding", column), rejects,
                                     {EMBEDDING_SUM: emb.astype(np.float64).sum(axis=0).tobytes()})


def pool_mean(shard_uris: Sequence[str]) -> np.ndarray:
    """Mean pool embedding from the per-shard sums in the shard footers."""
    total, count = None, 0
    for uri in shard_uris:
        part = np.frombuffer(shards.shard_metadata(uri)[EMBEDDING_SUM.encode()], np.float64)
        total = part.copy() if total is None else total + part
        count += shards.shard_rows(uri)
    if total is None or count == 0:
        raise UserError("no pool scene was embedded: nothing to curate (see the quarantine)")
    return (total / count).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Stage 4: decontamination against the target val sets


def _val_set(val_dirs: Sequence[str], mean: np.ndarray | None) -> tuple[np.ndarray, list[str]]:
    tables = [shards.read_stage(d, ["uri", "embedding"]) for d in val_dirs if shards.finished(d)]
    if not tables:
        return np.zeros((0, 1), np.float32), []
    val = pa.concat_tables(tables)
    return kmeans.center(embedding_matrix(val), mean), val["uri"].to_pylist()


class DecontamShards(RecordActor):
    """Actor step: every pool scene's highest cosine to a target val video, and the verdict.

    Runs before clustering: the paper keeps val videos out of the *initial* pool (docs/reference.md R-curation-1.2
    step 8), so near-duplicates neither shape the clusters nor reach the manifest. The search runs
    with the k-means section's GPU policy and batch size.
    """

    def __init__(self, val_dirs: list[str], mean: np.ndarray | None, threshold: float, kmeans_cfg: KMeansConfig):
        self.mean, self.threshold, self.batch = mean, threshold, kmeans_cfg.assign_batch
        self.ngpu = kmeans.faiss_gpus(kmeans_cfg.gpu)
        self.val, self.val_uri = _val_set(val_dirs, mean)

    def process(self, task: StageTask) -> ShardSummary:
        emb = kmeans.center(embedding_matrix(shards.read_shard(task.input, ["embedding"])), self.mean)
        sims, ids = decontam.nearest_val(emb, self.val, batch=self.batch, ngpu=self.ngpu)
        dirty = sims > self.threshold
        out = pa.table({"val_sim": pa.array(sims, pa.float32()),
                        "val_uri": pa.array([self.val_uri[i] if i >= 0 else None for i in ids], pa.string()),
                        "contaminated": pa.array(dirty, pa.bool_())})
        shards.write_shard(out, task.out, {CLEAN_ROWS: str(int((~dirty).sum())).encode()})
        return summary(task, int((~dirty).sum()))


def clean_rows(emb_uri: str, dec_uri: str) -> int:
    """Rows of an embedding shard that its decontam shard (its footer) keeps; all of them when "" ."""
    return int(shards.shard_metadata(dec_uri)[CLEAN_ROWS.encode()]) if dec_uri else shards.shard_rows(emb_uri)


# ----------------------------------------------------------------------------------------------
# Stage 6: assignment


class AssignShards(RecordActor):
    """Actor step: nearest cluster of every embedding; pool rows also carry their decontam verdict."""

    def __init__(self, codebook_uri: str, mean: np.ndarray | None, kmeans_cfg: KMeansConfig):
        self.codebook = kmeans.Codebook.load(codebook_uri)
        self.mean, self.nprobe, self.batch = mean, kmeans_cfg.nprobe, kmeans_cfg.assign_batch
        self.ngpu = kmeans.faiss_gpus(kmeans_cfg.gpu)

    def process(self, task: StageTask) -> ShardSummary:
        table = shards.read_shard(task.input)
        emb = kmeans.center(embedding_matrix(table), self.mean)
        labels, sims = kmeans.assign(emb, self.codebook, ngpu=self.ngpu, batch=self.batch, nprobe=self.nprobe)
        out = table.drop_columns(["embedding"]).append_column("cluster_id", pa.array(labels, pa.int64()))
        out = out.append_column("cluster_sim", pa.array(sims, pa.float32()))
        if task.aux:
            verdict = shards.read_shard(task.aux)
            for name in verdict.column_names:
                out = out.append_column(name, verdict[name])
        shards.write_shard(out, task.out)
        return summary(task, out.num_rows)


# ----------------------------------------------------------------------------------------------
# Stage 7: curated manifest


def write_curated(task: StageTask, scene_weight: np.ndarray) -> ShardSummary:
    """Keep the clean scenes of retained clusters, with weight ``w_c / |c|`` (0 marks dropped)."""
    table = shards.read_shard(task.input)
    weight = scene_weight[table["cluster_id"].to_numpy()]
    keep = (weight > 0) & ~table["contaminated"].to_numpy(zero_copy_only=False)
    out = table.append_column("weight", pa.array(weight, pa.float64())).filter(pa.array(keep))
    out = out.select(MANIFEST_COLUMNS)
    shards.write_shard(out, task.out)
    return summary(task, out.num_rows)
