"""Curated-YT1B as a resumable Ray pipeline (curation.md 1.2; issue: stages 1-7).

Every stage is a Ray Data stage over *shard tasks*: one task reads one input shard (or a slice of a
manifest) and writes one output Parquet shard under ``output/<stage>/``. Tasks whose output shard
exists are not even scheduled, so a run killed at any point (SIGKILL included) and started again
redoes only the unfinished shards and, every step being deterministic, writes the same curated
manifest row for row. Layout of ``output``::

    scenes/part-*.parquet                       scenes >= min_scene_s of the pool videos
    embeddings/pool/part-*.parquet              middle-frame embedding per scene (footer: their sum)
    embeddings/targets/<name>/<split>/part-*    middle-frame embedding per target video
    decontam/part-*                             nearest target val video per pool scene, verdict
    kmeans/codebook.npz, kmeans/stats.json      spherical k-means codebook on the clean pool
    assign/pool/part-*, assign/targets/<name>/  nearest cluster of every scene / target train video
    curated/clusters.parquet                    N_dc, |c|, w_c, retained per cluster
    curated/manifest/part-*.parquet             the curated manifest (project schema)
    quarantine/<stage>/...                      every dropped video or scene, with its reason
    report/                                     Table-11 statistics, plots, contact sheet, HTML

Decontamination comes before clustering: the paper keeps target val videos out of the *initial*
pool (curation.md 1.2 step 8). Similarities are cosines around the pool's mean embedding
(``kmeans.center``; ``center: false`` turns that off).

``curated/manifest`` is a Parquet dataset directory: ``pipelines.manifest.read_manifest`` reads it
as one table (files starting with ``_`` or ``.`` are ignored), so the VideoMix ``yt1b`` source takes
it as its manifest.

Embedding runs in an actor pool (one model load per actor) fed by CPU decode tasks; actors ask for
GPUs when the cluster has them. k-means runs as one Ray task (on a GPU node when there is one) whose
two-level fine fits fan out as Ray tasks.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from core import storage
from core.config import to_dict
from core.errors import UserError
from core.ray_session import worker_runtime_env
from curation import decontam, kmeans, report, retrieval, shards
from curation.config import CurationConfig, EmbedderConfig, SceneConfig
from pipelines.manifest import read_manifest
from pipelines.quarantine import RejectRecord, rejects_table

log = logging.getLogger(__name__)

POOL = "yt1b"
SCENE_SCHEMA = pa.schema([
    ("uri", pa.string()), ("label", pa.int64()), ("duration_s", pa.float64()), ("fps", pa.float64()),
    ("num_frames", pa.int64()), ("bytes", pa.int64()), ("start_frame", pa.int64()),
    ("end_frame", pa.int64()), ("start_s", pa.float64()), ("end_s", pa.float64()),
])
MANIFEST_COLUMNS = ["uri", "label", "duration_s", "fps", "num_frames", "bytes", "start_s", "end_s",
                    "weight", "cluster_id"]
EMBEDDING_SUM = "embedding_sum"  # footer key: float64 sum of a shard's embeddings
CLEAN_ROWS = "clean_rows"  # footer key: rows of a decontam shard that are not contaminated


@dataclass
class Layout:
    """Where each stage writes, under one output root (local or s3://)."""

    root: str

    def dir(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    def embeddings(self, source: str, split: str = "") -> str:
        return self.dir("embeddings", "pool") if source == POOL else self.dir("embeddings", "targets", source, split)

    def assignments(self, source: str) -> str:
        return self.dir("assign", "pool") if source == POOL else self.dir("assign", "targets", source)

    def quarantine(self, stage: str, *sub: str) -> str:
        return self.dir("quarantine", stage, *sub)


@dataclass
class StageTiming:
    """How long a stage took and how many of its shards this run had to produce."""

    name: str
    seconds: float
    shards_total: int
    shards_run: int


@dataclass
class CurationResult:
    """Where the curated manifest and report went, the report's statistics, the stage timings."""

    manifest: str
    report_dir: str
    stats: dict[str, Any]
    timings: list[StageTiming] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Ray plumbing


def _cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def run_stage(name: str, tasks: list[dict[str, Any]], steps: Sequence[tuple[Any, dict[str, Any]]]) -> StageTiming:
    """Run the tasks whose ``out`` shard is missing through ``steps`` (``(fn, map_batches kwargs)``),
    one task per batch, logging progress as shards finish."""
    import ray

    t0 = time.perf_counter()
    pending = [t for t in tasks if not storage.exists(t["out"])]
    log.info("[%s] %d shards, %d already done, %d to run", name, len(tasks), len(tasks) - len(pending),
             len(pending))
    if pending:
        ds = ray.data.from_items(pending, override_num_blocks=len(pending))
        runtime_env = worker_runtime_env()
        for fn, kwargs in steps:
            extra = {"runtime_env": runtime_env} if runtime_env else {}
            ds = ds.map_batches(fn, batch_size=1, batch_format="pyarrow", **kwargs, **extra)
        for done, row in enumerate(ds.iter_rows(), start=1):
            elapsed = time.perf_counter() - t0
            log.info("[%s] %d/%d shards (%.0f%%), %d rows, %d quarantined, %.1f s elapsed, ~%.0f s left",
                     name, done, len(pending), 100 * done / len(pending), row["rows_out"], row["quarantined"],
                     elapsed, elapsed / done * (len(pending) - done))
    return StageTiming(name, time.perf_counter() - t0, len(tasks), len(pending))


def _summary(task: dict[str, Any], rows_out: int, quarantined: int) -> pa.Table:
    return pa.table({"shard": [task["shard"]], "out": [task["out"]], "rows_out": [rows_out],
                     "quarantined": [quarantined]})


def _write_with_quarantine(task: dict[str, Any], table: pa.Table, rejects: list[RejectRecord],
                           metadata: dict[str, bytes] | None = None) -> pa.Table:
    """Quarantine first, then the shard: the shard's existence is what marks the task done."""
    shards.write_shard(rejects_table(rejects), task["quarantine"])
    shards.write_shard(table, task["out"], metadata)
    return _summary(task, table.num_rows, len(rejects))


def _table_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _bytes_table(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def embedding_matrix(table: pa.Table) -> np.ndarray:
    """The ``embedding`` column (fixed-size list of float32) as an ``[N, dim]`` array."""
    col = table["embedding"].combine_chunks()
    if len(col) == 0:
        return np.zeros((0, col.type.list_size), np.float32)
    return col.values.to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)


# ----------------------------------------------------------------------------------------------
# Stage 1: scenes


def split_shard(batch: pa.Table, scene_cfg: dict[str, Any], backend: str) -> pa.Table:
    """CPU step: the scenes of one slice of the pool manifest, and the quarantine of what was dropped."""
    from curation.scenes import split_video

    task = batch.to_pylist()[0]
    cfg = SceneConfig(**scene_cfg)
    scenes, rejects = [], []
    for row in json.loads(task["rows"]):
        kept, dropped = split_video(row, cfg, task["source"], backend)
        scenes += kept
        rejects += dropped
    return _write_with_quarantine(task, pa.Table.from_pylist(scenes, schema=SCENE_SCHEMA), rejects)


def _chunk_tasks(rows: list[dict[str, Any]], per_shard: int, source: str, out_dir: str,
                 quarantine_dir: str) -> list[dict[str, Any]]:
    return [{"shard": i, "source": source, "input": "", "rows": json.dumps(rows[s : s + per_shard]),
             "out": shards.shard_uri(out_dir, i), "quarantine": shards.shard_uri(quarantine_dir, i), "aux": ""}
            for i, s in enumerate(range(0, len(rows), per_shard))]


# ----------------------------------------------------------------------------------------------
# Stages 2-3: middle-frame embeddings


def _video_items(rows: list[dict[str, Any]], backend: str) -> tuple[pa.Table, list[tuple[str, str] | None]]:
    """Target videos as one-scene items spanning the whole video (probing what the manifest lacks)."""
    from curation.frames import probe
    from pipelines.quarantine import SampleError

    errors: list[tuple[str, str] | None] = []
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


def decode_shard(batch: pa.Table, image_size: int, backend: str) -> pa.Table:
    """CPU step: the middle frame of every item of one shard, squared to the embedder's input size."""
    from curation.frames import middle_frame, read_middle_frames

    task = batch.to_pylist()[0]
    if task["input"]:
        items = shards.read_shard(task["input"])
        errors: list[tuple[str, str] | None] = [None] * items.num_rows
    else:
        items, errors = _video_items(json.loads(task["rows"]), backend)
    starts, ends = items["start_frame"].to_pylist(), items["end_frame"].to_pylist()
    uris = items["uri"].to_pylist()
    todo = [i for i, e in enumerate(errors) if e is None]
    frames = np.zeros((items.num_rows, image_size, image_size, 3), np.uint8)
    decoded, decode_errors = read_middle_frames([uris[i] for i in todo],
                                                [middle_frame(starts[i], ends[i]) for i in todo],
                                                image_size, backend)
    for j, i in enumerate(todo):
        frames[i], errors[i] = decoded[j], decode_errors[j]
    return pa.table({**{k: [v] for k, v in task.items()}, "items": [_table_bytes(items)],
                     "frames": [_npy_bytes(frames)], "errors": [json.dumps(errors)]})


class EmbedShards:
    """Actor step: one model load per actor, then embed and write shard after shard.

    Each shard's footer carries the sum of its embeddings, so the pool mean (``pool_mean``) is
    known from footers alone, without another pass over the vectors.
    """

    def __init__(self, embedder_cfg: dict[str, Any]):
        from curation.embedders import build_embedder

        self.embedder = build_embedder(EmbedderConfig(**embedder_cfg))

    def __call__(self, batch: pa.Table) -> pa.Table:
        task = batch.drop_columns(["items", "frames", "errors"]).to_pylist()[0]
        row = batch.slice(0, 1)
        items = _bytes_table(row["items"][0].as_py())
        frames = np.load(io.BytesIO(row["frames"][0].as_py()))
        errors = json.loads(row["errors"][0].as_py())
        ok = np.array([e is None for e in errors], bool)
        emb = self.embedder.embed(frames[ok])
        kept = items.filter(pa.array(ok, pa.bool_()))
        column = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float32()), self.embedder.dim)
        rejects = [RejectRecord(u, task["source"], e[0], "embed", e[1])
                   for u, e in zip(items["uri"].to_pylist(), errors) if e is not None]
        return _write_with_quarantine(task, kept.append_column("embedding", column), rejects,
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


def _val_set(val_dirs: Sequence[str], mean: np.ndarray | None) -> tuple[np.ndarray, list[str]]:
    tables = [shards.read_stage(d, ["uri", "embedding"]) for d in val_dirs if shards.finished(d)]
    if not tables:
        return np.zeros((0, 1), np.float32), []
    val = pa.concat_tables(tables)
    return kmeans.center(embedding_matrix(val), mean), val["uri"].to_pylist()


# ----------------------------------------------------------------------------------------------
# Stage 4: decontamination against the target val sets


class DecontamShards:
    """Actor step: every pool scene's highest cosine to a target val video, and the verdict.

    Runs before clustering: the paper keeps val videos out of the *initial* pool (curation.md 1.2
    step 8), so near-duplicates neither shape the clusters nor reach the manifest.
    """

    def __init__(self, val_dirs: list[str], mean: np.ndarray | None, threshold: float, gpu_policy: str,
                 batch: int):
        self.mean, self.threshold, self.batch = mean, threshold, batch
        self.ngpu = kmeans.faiss_gpus(gpu_policy)
        self.val, self.val_uri = _val_set(val_dirs, mean)

    def __call__(self, batch: pa.Table) -> pa.Table:
        task = batch.to_pylist()[0]
        emb = kmeans.center(embedding_matrix(shards.read_shard(task["input"], ["embedding"])), self.mean)
        sims, ids = decontam.nearest_val(emb, self.val, batch=self.batch, ngpu=self.ngpu)
        dirty = sims > self.threshold
        out = pa.table({"val_sim": pa.array(sims, pa.float32()),
                        "val_uri": pa.array([self.val_uri[i] if i >= 0 else None for i in ids], pa.string()),
                        "contaminated": pa.array(dirty, pa.bool_())})
        shards.write_shard(out, task["out"], {CLEAN_ROWS: str(int((~dirty).sum())).encode()})
        return _summary(task, int((~dirty).sum()), 0)


# ----------------------------------------------------------------------------------------------
# Stage 5: k-means


def _ray_map(num_gpus: float) -> kmeans.MapFn:
    def run(fn: Callable[..., Any], jobs: Sequence[tuple]) -> list[Any]:
        import ray

        remote = ray.remote(num_cpus=1, num_gpus=num_gpus)(fn)
        return ray.get([remote.remote(*job) for job in jobs])

    return run


def fit_codebook(pairs: list[tuple[str, str]], mean: np.ndarray | None, k: int, kmeans_cfg: dict[str, Any],
                 codebook_uri: str, scratch: str) -> dict[str, Any]:
    """Gather the k-means training sample of the clean pool into a local memmap, fit, save (a Ray task).

    Only the sampled rows are written (at most ``k * max_points_per_centroid``), so the scratch disk
    holds the training set, not the pool.
    """
    ngpu = kmeans.faiss_gpus(kmeans_cfg["gpu"])
    t0 = time.perf_counter()
    counts = [_clean_rows(e, d) for e, d in pairs]
    n = sum(counts)
    m = kmeans.training_size(n, k, kmeans_cfg["min_points_per_centroid"], kmeans_cfg["max_points_per_centroid"])
    rows = np.sort(np.random.default_rng(kmeans_cfg["seed"]).choice(n, size=m, replace=False)) if m < n else None
    with tempfile.TemporaryDirectory(dir=scratch or None, prefix="curate-kmeans-") as tmp:
        x = gather_memmap(pairs, counts, mean, os.path.join(tmp, "train.npy"), rows)
        gather_s = time.perf_counter() - t0
        codebook, stats = kmeans.fit(
            x, k, niter=kmeans_cfg["niter"], seed=kmeans_cfg["seed"],
            min_ppc=kmeans_cfg["min_points_per_centroid"], max_ppc=kmeans_cfg["max_points_per_centroid"],
            two_level_min_k=kmeans_cfg["two_level_min_k"], coarse_clusters=kmeans_cfg["coarse_clusters"],
            ngpu=ngpu, map_fn=_ray_map(1.0 if ngpu else 0.0))
        del x
    codebook.save(codebook_uri)
    return {**stats, "n": n, "gather_s": gather_s, "backend": f"faiss-gpu x{ngpu}" if ngpu else "faiss-cpu"}


def gather_memmap(pairs: Sequence[tuple[str, str]], counts: Sequence[int], mean: np.ndarray | None, path: str,
                  rows: np.ndarray | None = None) -> np.ndarray:
    """The centred, clean rows of ``(embedding shard, decontam shard)`` pairs in one ``.npy`` memmap.

    ``counts`` are the clean rows per pair; ``rows`` (sorted indices into the concatenated clean rows)
    selects a sample, None keeps all. ``decontam shard`` "" means no decontamination: every row is clean.
    """
    total = sum(counts) if rows is None else len(rows)
    x = None
    offset = start = 0
    for (emb_uri, dec_uri), n in zip(pairs, counts):
        pick = (np.arange(n) if rows is None
                else rows[np.searchsorted(rows, start):np.searchsorted(rows, start + n)] - start)
        start += n
        if len(pick) == 0:
            continue
        emb = kmeans.center(embedding_matrix(shards.read_shard(emb_uri, ["embedding"])), mean)
        if dec_uri:
            emb = emb[~shards.read_shard(dec_uri, ["contaminated"])["contaminated"].to_numpy(zero_copy_only=False)]
        if x is None:
            x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(total, emb.shape[1]))
        x[offset : offset + len(pick)] = emb[pick]
        offset += len(pick)
    if x is None:
        raise UserError("k-means: no clean pool scene to cluster (all quarantined or contaminated)")
    x.flush()
    return np.load(path, mmap_mode="r")


def _clean_rows(emb_uri: str, dec_uri: str) -> int:
    return int(shards.shard_metadata(dec_uri)[CLEAN_ROWS.encode()]) if dec_uri else shards.shard_rows(emb_uri)


# ----------------------------------------------------------------------------------------------
# Stage 6: assignment


class AssignShards:
    """Actor step: nearest cluster of every embedding; pool rows also carry their decontam verdict."""

    def __init__(self, codebook_uri: str, mean: np.ndarray | None, nprobe: int, gpu_policy: str, batch: int):
        self.codebook = kmeans.Codebook.load(codebook_uri)
        self.mean, self.nprobe, self.batch = mean, nprobe, batch
        self.ngpu = kmeans.faiss_gpus(gpu_policy)

    def __call__(self, batch: pa.Table) -> pa.Table:
        task = batch.to_pylist()[0]
        table = shards.read_shard(task["input"])
        emb = kmeans.center(embedding_matrix(table), self.mean)
        labels, sims = kmeans.assign(emb, self.codebook, ngpu=self.ngpu, batch=self.batch, nprobe=self.nprobe)
        out = table.drop_columns(["embedding"]).append_column("cluster_id", pa.array(labels, pa.int64()))
        out = out.append_column("cluster_sim", pa.array(sims, pa.float32()))
        if task["aux"]:
            verdict = shards.read_shard(task["aux"])
            for name in verdict.column_names:
                out = out.append_column(name, verdict[name])
        shards.write_shard(out, task["out"])
        return _summary(task, out.num_rows, 0)


# ----------------------------------------------------------------------------------------------
# Stage 7: curated manifest


def write_curated(batch: pa.Table, scene_weight: np.ndarray) -> pa.Table:
    """Keep the clean scenes of retained clusters, with weight ``w_c / |c|`` (0 marks dropped)."""
    task = batch.to_pylist()[0]
    table = shards.read_shard(task["input"])
    weight = scene_weight[table["cluster_id"].to_numpy()]
    keep = (weight > 0) & ~table["contaminated"].to_numpy(zero_copy_only=False)
    out = table.append_column("weight", pa.array(weight, pa.float64())).filter(pa.array(keep))
    out = out.select(MANIFEST_COLUMNS)
    shards.write_shard(out, task["out"])
    return _summary(task, out.num_rows, 0)


# ----------------------------------------------------------------------------------------------
# The driver


def _sections(cfg: CurationConfig) -> dict[str, Any]:
    """The config that each stage's output depends on (execution knobs such as CPUs left out)."""
    d = to_dict(cfg)
    drop = {"scenes": ("num_cpus",), "embedder": ("num_actors", "decode_cpus", "actor_cpus", "gpus_per_actor",
                                                  "batch_size", "decode_backend"),
            "kmeans": ("gpu", "assign_batch")}
    for section, keys in drop.items():
        for key in keys:
            d[section].pop(key)
    d["decontam"]["threshold"] = decontam.threshold_for(cfg.embedder.kind, cfg.decontam.threshold)
    return {"pool": cfg.pool, "scenes": d["scenes"], "embedder": d["embedder"], "center": cfg.center,
            "kmeans": d["kmeans"], "targets": d["targets"], "retrieval": d["retrieval"], "decontam": d["decontam"]}


def _shard_tasks(in_dir: str, out_dir: str, source: str, aux_dir: str = "") -> list[dict[str, Any]]:
    """One task per finished shard of ``in_dir`` (``aux``: the same-numbered shard of ``aux_dir``)."""
    return [{"shard": i, "source": source, "input": uri, "rows": "", "out": shards.shard_uri(out_dir, i),
             "quarantine": "", "aux": shards.shard_uri(aux_dir, i) if aux_dir else ""}
            for i, uri in sorted(shards.finished(in_dir).items())]


def _actor_pool(size: int) -> Any:
    import ray.data

    return ray.data.ActorPoolStrategy(size=size)


UPSTREAM = ("pool", "scenes", "embedder")


class Curation:
    """One build: ``Curation(cfg).run()``. Ray must be initialised by the caller."""

    def __init__(self, cfg: CurationConfig):
        cfg.check()
        self.cfg = cfg
        self.layout = Layout(cfg.output)
        self.sections = _sections(cfg)
        self.timings: list[StageTiming] = []
        self.gpus = _cluster_gpus()
        self.threshold = (decontam.threshold_for(cfg.embedder.kind, cfg.decontam.threshold)
                          if cfg.decontam.enabled else float("inf"))

    def _claim(self, stage_dir: str, *keys: str) -> None:
        shards.claim_stage(stage_dir, {k: self.sections[k] for k in keys})

    def _actor_gpus(self) -> float:
        return self.cfg.embedder.gpus_per_actor if self.gpus > 0 else 0.0

    def _pool_shards(self) -> list[str]:
        return [u for _, u in sorted(shards.finished(self.layout.embeddings(POOL)).items())]

    def scenes(self) -> None:
        cfg, lay = self.cfg, self.layout
        self._claim(lay.dir("scenes"), "pool", "scenes")
        pool = read_manifest(cfg.pool)
        tasks = _chunk_tasks(pool.to_pylist(), cfg.scenes.videos_per_shard, POOL, lay.dir("scenes"),
                             lay.quarantine("scenes"))
        self.timings.append(run_stage("scenes", tasks, [(split_shard, {
            "fn_kwargs": {"scene_cfg": dataclasses.asdict(cfg.scenes), "backend": cfg.embedder.decode_backend},
            "num_cpus": cfg.scenes.num_cpus})]))

    def embed(self) -> None:
        lay, e = self.layout, self.cfg.embedder
        self._claim(lay.embeddings(POOL), *UPSTREAM)
        tasks = [{**t, "quarantine": shards.shard_uri(lay.quarantine("embed", POOL), t["shard"])}
                 for t in _shard_tasks(lay.dir("scenes"), lay.embeddings(POOL), POOL)]
        for name, split, uri in self.target_splits():
            out_dir = lay.embeddings(name, split)
            shards.claim_stage(out_dir, {"manifest": uri, "embedder": self.sections["embedder"]})
            tasks += _chunk_tasks(read_manifest(uri).to_pylist(), e.items_per_shard, name, out_dir,
                                  lay.quarantine("embed", name, split))
        self.timings.append(run_stage("embed", tasks, [
            (decode_shard, {"fn_kwargs": {"image_size": e.image_size, "backend": e.decode_backend},
                            "num_cpus": e.decode_cpus}),
            (EmbedShards, {"fn_constructor_kwargs": {"embedder_cfg": dataclasses.asdict(e)},
                           "compute": _actor_pool(e.num_actors), "num_cpus": e.actor_cpus,
                           "num_gpus": self._actor_gpus()}),
        ]))

    def target_splits(self) -> list[tuple[str, str, str]]:
        return [(name, split, uri) for name, t in self.cfg.targets.items()
                for split, uri in (("train", t.train), ("val", t.val)) if uri]

    def mean(self) -> np.ndarray | None:
        return pool_mean(self._pool_shards()) if self.cfg.center else None

    def decontaminate(self, mean: np.ndarray | None) -> None:
        cfg, lay = self.cfg, self.layout
        self._claim(lay.dir("decontam"), *UPSTREAM, "center", "targets", "decontam")
        tasks = _shard_tasks(lay.embeddings(POOL), lay.dir("decontam"), POOL)
        val_dirs = [lay.embeddings(name, "val") for name, split, _ in self.target_splits() if split == "val"]
        self.timings.append(run_stage("decontam", tasks, [(DecontamShards, {
            "fn_constructor_kwargs": {"val_dirs": val_dirs, "mean": mean, "threshold": self.threshold,
                                      "gpu_policy": cfg.kmeans.gpu, "batch": cfg.kmeans.assign_batch},
            "compute": _actor_pool(cfg.embedder.num_actors), "num_cpus": 1, "num_gpus": self._actor_gpus()})]))

    def cluster(self, mean: np.ndarray | None) -> dict[str, Any]:
        import ray

        cfg, lay = self.cfg, self.layout
        self._claim(lay.dir("kmeans"), *UPSTREAM, "center", "targets", "decontam", "kmeans")
        codebook_uri, stats_uri = lay.dir("kmeans", "codebook.npz"), lay.dir("kmeans", "stats.json")
        if storage.exists(stats_uri):  # written after the codebook: both are complete
            log.info("[kmeans] codebook already fitted")
            self.timings.append(StageTiming("kmeans", 0.0, 1, 0))
            return json.loads(storage.read_bytes(stats_uri))
        t0 = time.perf_counter()
        pairs = [(u, shards.shard_uri(lay.dir("decontam"), i))
                 for i, u in sorted(shards.finished(lay.embeddings(POOL)).items())]
        n = sum(_clean_rows(e, d) for e, d in pairs)
        k = kmeans.choose_k(n, cfg.kmeans.scenes_per_cluster, cfg.kmeans.num_clusters)
        log.info("[kmeans] %d clean scenes -> k=%d (%s)", n, k,
                 "fixed" if cfg.kmeans.num_clusters else f"{cfg.kmeans.scenes_per_cluster:g} scenes per cluster")
        gpus = 1 if self.gpus > 0 and cfg.kmeans.gpu != "off" else 0
        task = ray.remote(num_cpus=1, num_gpus=gpus, runtime_env=worker_runtime_env())(fit_codebook)
        stats = ray.get(task.remote(pairs, mean, k, dataclasses.asdict(cfg.kmeans), codebook_uri, cfg.scratch))
        storage.write_bytes(stats_uri, json.dumps(stats, indent=1).encode())
        log.info("[kmeans] k=%d on %d training points, objective %.4g, %s, %.1f s", stats["k"], stats["n_train"],
                 stats["objective"], stats["backend"], time.perf_counter() - t0)
        self.timings.append(StageTiming("kmeans", time.perf_counter() - t0, 1, 1))
        return stats

    def assign(self, mean: np.ndarray | None) -> None:
        cfg, lay = self.cfg, self.layout
        for source in [POOL, *cfg.targets]:
            self._claim(lay.assignments(source), *UPSTREAM, "center", "targets", "decontam", "kmeans")
        tasks = _shard_tasks(lay.embeddings(POOL), lay.assignments(POOL), POOL, lay.dir("decontam"))
        for name in cfg.targets:
            tasks += _shard_tasks(lay.embeddings(name, "train"), lay.assignments(name), name)
        self.timings.append(run_stage("assign", tasks, [(AssignShards, {
            "fn_constructor_kwargs": {"codebook_uri": lay.dir("kmeans", "codebook.npz"), "mean": mean,
                                      "nprobe": cfg.kmeans.nprobe, "gpu_policy": cfg.kmeans.gpu,
                                      "batch": cfg.kmeans.assign_batch},
            "compute": _actor_pool(cfg.embedder.num_actors), "num_cpus": 1, "num_gpus": self._actor_gpus()})]))

    def retrieve(self, k: int) -> retrieval.ClusterTable:
        cfg, lay = self.cfg, self.layout
        t0 = time.perf_counter()
        pool = shards.read_stage(lay.assignments(POOL), ["cluster_id", "contaminated"])
        targets = {name: (shards.read_stage(lay.assignments(name), ["cluster_id"])["cluster_id"].to_numpy()
                          if shards.finished(lay.assignments(name)) else np.zeros(0, np.int64))
                   for name in cfg.targets}
        table = retrieval.build_table(pool["cluster_id"].to_numpy(),
                                      ~pool["contaminated"].to_numpy(zero_copy_only=False), targets,
                                      {n: t.weight for n, t in cfg.targets.items()}, k, cfg.retrieval.min_hits)
        columns = {"cluster_id": np.arange(k), "size": table.sizes, "clean_size": table.clean_sizes,
                   **{f"hits_{n}": h for n, h in table.hits.items()}, "weight": table.weight,
                   "retained": table.retained}
        shards.write_shard(pa.table(columns), lay.dir("curated", "clusters.parquet"))
        self.timings.append(StageTiming("retrieve", time.perf_counter() - t0, 1, 1))
        return table

    def write_manifest(self, table: retrieval.ClusterTable) -> str:
        lay = self.layout
        out_dir = lay.dir("curated", "manifest")
        self._claim(out_dir, *UPSTREAM, "center", "targets", "decontam", "kmeans", "retrieval")
        tasks = _shard_tasks(lay.assignments(POOL), out_dir, POOL)
        scene_weight = table.scene_weight(np.arange(len(table.weight)))
        self.timings.append(run_stage("manifest", tasks, [(write_curated, {
            "fn_kwargs": {"scene_weight": scene_weight}, "num_cpus": 0.5})]))
        return out_dir

    def run(self, on_stage: Callable[[StageTiming], None] | None = None,
            on_report: Callable[[Path], None] | None = None) -> CurationResult:
        """All stages in order. ``on_stage(timing)`` follows each stage; ``on_report(dir)`` sees the
        report while it is still a local directory (it is then copied under ``output/report``)."""

        def done() -> None:
            if on_stage:
                on_stage(self.timings[-1])

        self.scenes()
        done()
        self.embed()
        done()
        mean = self.mean()
        self.decontaminate(mean)
        done()
        km = self.cluster(mean)
        done()
        self.assign(mean)
        done()
        table = self.retrieve(km["k"])
        done()
        manifest = self.write_manifest(table)
        done()
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="curate-report-") as tmp:
            stats = report.build_report(self.cfg, self.layout, table, km, self.threshold, Path(tmp))
            self.timings.append(StageTiming("report", time.perf_counter() - t0, 1, 1))
            stats["timings_s"] = {t.name: round(t.seconds, 3) for t in self.timings}
            (Path(tmp) / "stats.json").write_text(json.dumps(stats, indent=1))
            for path in sorted(Path(tmp).iterdir()):
                storage.write_bytes(self.layout.dir("report", path.name), path.read_bytes())
            if on_report:
                on_report(Path(tmp))
        done()
        return CurationResult(manifest, self.layout.dir("report"), stats, self.timings)
