"""Curated-YT1B as a resumable Ray pipeline (docs/reference.md R-curation-1.2; issue: stages 1-7).

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
pool (docs/reference.md R-curation-1.2 step 8). Similarities are cosines around the pool's mean embedding
(``kmeans.center``; ``center: false`` turns that off).

``curated/manifest`` is a Parquet dataset directory: ``pipelines.manifest.read_manifest`` reads it
as one table (files starting with ``_`` or ``.`` are ignored), so the VideoMix ``yt1b`` source takes
it as its manifest.

Embedding runs in an actor pool (one model load per actor) fed by CPU decode tasks; actors ask for
GPUs when the cluster has them. k-means runs as one Ray task (on a GPU node when there is one) whose
two-level fine fits fan out as Ray tasks.

This module is the driver: which tasks each stage has, which config each stage's output depends on,
the order of the stages. The stage workers are ``curation/stages.py``, running a stage on Ray (typed
task records, skipping finished shards) is ``curation/execution.py``, the codebook fit ``curation/fit.py``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from core import storage
from core.config import to_dict
from core.ray_session import worker_runtime_env
from curation import decontam, kmeans, report, retrieval, shards
from curation.config import CurationConfig
from curation.execution import StageTiming, Step, chunk_tasks, cluster_gpus, run_stage, shard_tasks
from curation.fit import fit_codebook
from curation.stages import (
    AssignShards,
    DecontamShards,
    EmbedShards,
    clean_rows,
    decode_shard,
    pool_mean,
    split_shard,
    write_curated,
)
from pipelines.manifest import begin_manifest_parts, finish_manifest_parts, read_manifest

log = logging.getLogger(__name__)

POOL = "yt1b"


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
class CurationResult:
    """Where the curated manifest and report went, the report's statistics, the stage timings."""

    manifest: str
    report_dir: str
    stats: dict[str, Any]
    timings: list[StageTiming] = field(default_factory=list)


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


UPSTREAM = ("pool", "scenes", "embedder")


class Curation:
    """One build: ``Curation(cfg).run()``. Ray must be initialised by the caller."""

    def __init__(self, cfg: CurationConfig):
        cfg.check()
        self.cfg = cfg
        self.layout = Layout(cfg.output)
        self.sections = _sections(cfg)
        self.timings: list[StageTiming] = []
        self.gpus = cluster_gpus()
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
        tasks = chunk_tasks(pool.to_pylist(), cfg.scenes.videos_per_shard, POOL, lay.dir("scenes"),
                            lay.quarantine("scenes"))
        self.timings.append(run_stage("scenes", tasks, [
            Step(split_shard, {"scenes": cfg.scenes, "backend": cfg.embedder.decode_backend},
                 num_cpus=cfg.scenes.num_cpus)]))

    def embed(self) -> None:
        lay, e = self.layout, self.cfg.embedder
        self._claim(lay.embeddings(POOL), *UPSTREAM)
        tasks = shard_tasks(lay.dir("scenes"), lay.embeddings(POOL), POOL,
                            quarantine_dir=lay.quarantine("embed", POOL))
        for name, split, uri in self.target_splits():
            out_dir = lay.embeddings(name, split)
            shards.claim_stage(out_dir, {"manifest": uri, "embedder": self.sections["embedder"]})
            tasks += chunk_tasks(read_manifest(uri).to_pylist(), e.items_per_shard, name, out_dir,
                                 lay.quarantine("embed", name, split))
        self.timings.append(run_stage("embed", tasks, [
            Step(decode_shard, {"image_size": e.image_size, "backend": e.decode_backend}, num_cpus=e.decode_cpus),
            Step(EmbedShards, {"embedder": e}, num_cpus=e.actor_cpus, num_gpus=self._actor_gpus(),
                 actors=e.num_actors),
        ]))

    def target_splits(self) -> list[tuple[str, str, str]]:
        return [(name, split, uri) for name, t in self.cfg.targets.items()
                for split, uri in (("train", t.train), ("val", t.val)) if uri]

    def mean(self) -> np.ndarray | None:
        return pool_mean(self._pool_shards()) if self.cfg.center else None

    def decontaminate(self, mean: np.ndarray | None) -> None:
        cfg, lay = self.cfg, self.layout
        self._claim(lay.dir("decontam"), *UPSTREAM, "center", "targets", "decontam")
        tasks = shard_tasks(lay.embeddings(POOL), lay.dir("decontam"), POOL)
        val_dirs = [lay.embeddings(name, "val") for name, split, _ in self.target_splits() if split == "val"]
        self.timings.append(run_stage("decontam", tasks, [
            Step(DecontamShards, {"val_dirs": val_dirs, "mean": mean, "threshold": self.threshold,
                                  "kmeans_cfg": cfg.kmeans},
                 num_cpus=1, num_gpus=self._actor_gpus(), actors=cfg.embedder.num_actors)]))

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
        n = sum(clean_rows(e, d) for e, d in pairs)
        k = kmeans.choose_k(n, cfg.kmeans.scenes_per_cluster, cfg.kmeans.num_clusters)
        log.info("[kmeans] %d clean scenes -> k=%d (%s)", n, k,
                 "fixed" if cfg.kmeans.num_clusters else f"{cfg.kmeans.scenes_per_cluster:g} scenes per cluster")
        gpus = 1 if self.gpus > 0 and cfg.kmeans.gpu != "off" else 0
        task = ray.remote(num_cpus=1, num_gpus=gpus, runtime_env=worker_runtime_env())(fit_codebook)
        stats = ray.get(task.remote(pairs, mean, k, cfg.kmeans, codebook_uri, cfg.scratch))
        storage.write_bytes(stats_uri, json.dumps(stats, indent=1).encode())
        log.info("[kmeans] k=%d on %d training points, objective %.4g, %s, %.1f s", stats["k"], stats["n_train"],
                 stats["objective"], stats["backend"], time.perf_counter() - t0)
        self.timings.append(StageTiming("kmeans", time.perf_counter() - t0, 1, 1))
        return stats

    def assign(self, mean: np.ndarray | None) -> None:
        cfg, lay = self.cfg, self.layout
        for source in [POOL, *cfg.targets]:
            self._claim(lay.assignments(source), *UPSTREAM, "center", "targets", "decontam", "kmeans")
        tasks = shard_tasks(lay.embeddings(POOL), lay.assignments(POOL), POOL, aux_dir=lay.dir("decontam"))
        for name in cfg.targets:
            tasks += shard_tasks(lay.embeddings(name, "train"), lay.assignments(name), name)
        self.timings.append(run_stage("assign", tasks, [
            Step(AssignShards, {"codebook_uri": lay.dir("kmeans", "codebook.npz"), "mean": mean,
                                "kmeans_cfg": cfg.kmeans},
                 num_cpus=1, num_gpus=self._actor_gpus(), actors=cfg.embedder.num_actors)]))

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
        begin_manifest_parts(out_dir)  # readers refuse the directory until every part is written
        tasks = shard_tasks(lay.assignments(POOL), out_dir, POOL)
        scene_weight = table.scene_weight(np.arange(len(table.weight)))
        self.timings.append(run_stage("manifest", tasks, [
            Step(write_curated, {"scene_weight": scene_weight}, num_cpus=0.5)]))
        finish_manifest_parts(out_dir)
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
