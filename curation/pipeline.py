"""Curated-YT1B as a resumable Ray pipeline (docs/reference.md R-curation-1.2; issue: stages 1-7).

Every stage is a Ray Data stage over *shard tasks*: one task reads one input shard (or a slice of a
manifest) and writes one output Parquet shard under ``output/<stage>/``. Tasks whose output shard
exists are not even scheduled, so a run killed at any point (SIGKILL included) and started again
redoes only the unfinished shards and, every step being deterministic, writes the same curated
manifest row for row. A run with changed settings on the same output re-runs only the outputs made
from a changed key and what follows them, and reuses the rest (curation/lineage.py). Layout of ``output``::

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

This module is the driver: which tasks each stage has, which config keys and upstream outputs each
output is made from (``Curation.nodes``), the order of the stages. The stage workers are
``curation/stages.py``, running a stage on Ray (typed task records, skipping finished shards) is
``curation/execution.py``, the codebook fit ``curation/fit.py``, reuse decisions ``curation/lineage.py``.
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
from core.config import flatten, to_dict
from core.ray_session import worker_runtime_env
from curation import decontam, kmeans, lineage, report, retrieval, shards
from curation.config import POOL_SOURCE, CurationConfig
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

POOL = POOL_SOURCE


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


# Knobs that change how a stage runs, not what it writes: they are no stage's inputs (lineage.Node.keys).
EXECUTION_KEYS = frozenset({
    "scenes.num_cpus", "embedder.num_actors", "embedder.decode_cpus", "embedder.actor_cpus",
    "embedder.gpus_per_actor", "embedder.batch_size", "embedder.decode_backend", "kmeans.gpu",
    "kmeans.assign_batch",
})


def config_values(cfg: CurationConfig) -> dict[str, Any]:
    """The resolved config as dotted keys, with the decontamination threshold the stage actually uses
    (``0`` means the embedder's default, so a new default counts as a change)."""
    values = flatten(to_dict(cfg))
    values["decontam.threshold"] = decontam.threshold_for(cfg.embedder.kind, cfg.decontam.threshold)
    return values


def _section(values: dict[str, Any], section: str, *exclude: str) -> tuple[str, ...]:
    return tuple(k for k in values if k.startswith(f"{section}.") and k not in EXECUTION_KEYS and k not in exclude)


class Curation:
    """One build: ``Curation(cfg).run()``. Ray must be initialised by the caller before ``run``.

    Constructing it plans the build without Ray (which outputs are reused, which re-run and why) and
    logs that plan, so a caller can show it before opening a tracking run.
    """

    def __init__(self, cfg: CurationConfig):
        cfg.check()
        self.cfg = cfg
        self.layout = Layout(cfg.output)
        self.timings: list[StageTiming] = []
        self.gpus = 0.0
        self.threshold = (decontam.threshold_for(cfg.embedder.kind, cfg.decontam.threshold)
                          if cfg.decontam.enabled else float("inf"))
        self.decisions = lineage.plan(self.nodes(), config_values(cfg))
        self.notices = lineage.stage_notices(self.decisions)
        lineage.log_notices(self.notices)

    def nodes(self) -> list[lineage.Node]:
        """Every output of the build, with the config keys and upstream outputs it is made from."""
        lay, values = self.layout, config_values(self.cfg)
        embed_keys = _section(values, "embedder")
        nodes = [lineage.Node("scenes", "scenes", (lay.dir("scenes"), lay.quarantine("scenes")),
                              ("pool", *_section(values, "scenes"))),
                 lineage.Node(f"embed/{POOL}", "embed", (lay.embeddings(POOL), lay.quarantine("embed", POOL)),
                              tuple(k for k in embed_keys if k != "embedder.items_per_shard"), ("scenes",))]
        nodes += [lineage.Node(f"embed/{name}/{split}", "embed",
                               (lay.embeddings(name, split), lay.quarantine("embed", name, split)),
                               (f"targets.{name}.{split}", *embed_keys))
                  for name, split, _ in self.target_splits()]
        val_nodes = tuple(f"embed/{name}/val" for name, split, _ in self.target_splits() if split == "val")
        targets = list(self.cfg.target_datasets())
        nodes += [
            lineage.Node("decontam", "decontam", (lay.dir("decontam"),),
                         ("center", "decontam.enabled", "decontam.threshold"), (f"embed/{POOL}", *val_nodes)),
            lineage.Node("kmeans", "kmeans", (lay.dir("kmeans"),), _section(values, "kmeans", "kmeans.nprobe"),
                         ("decontam",)),
            lineage.Node(f"assign/{POOL}", "assign", (lay.assignments(POOL),), ("kmeans.nprobe",), ("kmeans",)),
            *[lineage.Node(f"assign/{name}", "assign", (lay.assignments(name),), ("kmeans.nprobe",),
                           ("kmeans", f"embed/{name}/train")) for name in targets],
            lineage.Node("manifest", "manifest", (lay.dir("curated", "manifest"),),
                         ("retrieval.min_hits", *(f"targets.{name}.weight" for name in targets)),
                         (f"assign/{POOL}", *(f"assign/{name}" for name in targets))),
        ]
        return nodes

    def _prepare(self, stage: str) -> None:
        """When ``stage`` starts: remove its stale outputs and record the inputs of those that run, so a
        run killed earlier leaves later stages as they were."""
        lineage.prepare([d for d in self.decisions if d.node.stage == stage])

    def _actor_gpus(self) -> float:
        return self.cfg.embedder.gpus_per_actor if self.gpus > 0 else 0.0

    def _pool_shards(self) -> list[str]:
        return [u for _, u in sorted(shards.finished(self.layout.embeddings(POOL)).items())]

    def scenes(self) -> None:
        cfg, lay = self.cfg, self.layout
        self._prepare("scenes")
        pool = read_manifest(cfg.pool)
        tasks = chunk_tasks(pool.to_pylist(), cfg.scenes.videos_per_shard, POOL, lay.dir("scenes"),
                            lay.quarantine("scenes"))
        self.timings.append(run_stage("scenes", tasks, [
            Step(split_shard, {"scenes": cfg.scenes, "backend": cfg.embedder.decode_backend},
                 num_cpus=cfg.scenes.num_cpus)], unit="scenes"))

    def embed(self) -> None:
        lay, e = self.layout, self.cfg.embedder
        self._prepare("embed")
        tasks = shard_tasks(lay.dir("scenes"), lay.embeddings(POOL), POOL,
                            quarantine_dir=lay.quarantine("embed", POOL))
        for name, split, uri in self.target_splits():
            tasks += chunk_tasks(read_manifest(uri).to_pylist(), e.items_per_shard, name, lay.embeddings(name, split),
                                 lay.quarantine("embed", name, split))
        self.timings.append(run_stage("embed", tasks, [
            Step(decode_shard, {"image_size": e.image_size, "backend": e.decode_backend}, num_cpus=e.decode_cpus),
            Step(EmbedShards, {"embedder": e}, num_cpus=e.actor_cpus, num_gpus=self._actor_gpus(),
                 actors=e.num_actors),
        ], unit="items embedded"))

    def target_splits(self) -> list[tuple[str, str, str]]:
        return [(name, split, uri) for name, t in self.cfg.target_datasets().items()
                for split, uri in (("train", t.train), ("val", t.val)) if uri]

    def mean(self) -> np.ndarray | None:
        return pool_mean(self._pool_shards()) if self.cfg.center else None

    def decontaminate(self, mean: np.ndarray | None) -> None:
        cfg, lay = self.cfg, self.layout
        self._prepare("decontam")
        tasks = shard_tasks(lay.embeddings(POOL), lay.dir("decontam"), POOL)
        val_dirs = [lay.embeddings(name, "val") for name, split, _ in self.target_splits() if split == "val"]
        self.timings.append(run_stage("decontam", tasks, [
            Step(DecontamShards, {"val_dirs": val_dirs, "mean": mean, "threshold": self.threshold,
                                  "kmeans_cfg": cfg.kmeans},
                 num_cpus=1, num_gpus=self._actor_gpus(), actors=cfg.embedder.num_actors)],
            unit="clean scenes"))

    def cluster(self, mean: np.ndarray | None) -> dict[str, Any]:
        import ray

        cfg, lay = self.cfg, self.layout
        self._prepare("kmeans")
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
        self._prepare("assign")
        tasks = shard_tasks(lay.embeddings(POOL), lay.assignments(POOL), POOL, aux_dir=lay.dir("decontam"))
        for name in cfg.target_datasets():
            tasks += shard_tasks(lay.embeddings(name, "train"), lay.assignments(name), name)
        self.timings.append(run_stage("assign", tasks, [
            Step(AssignShards, {"codebook_uri": lay.dir("kmeans", "codebook.npz"), "mean": mean,
                                "kmeans_cfg": cfg.kmeans},
                 num_cpus=1, num_gpus=self._actor_gpus(), actors=cfg.embedder.num_actors)],
            unit="assigned"))

    def retrieve(self, k: int) -> retrieval.ClusterTable:
        cfg, lay = self.cfg, self.layout
        t0 = time.perf_counter()
        pool = shards.read_stage(lay.assignments(POOL), ["cluster_id", "contaminated"])
        targets = {name: (shards.read_stage(lay.assignments(name), ["cluster_id"])["cluster_id"].to_numpy()
                          if shards.finished(lay.assignments(name)) else np.zeros(0, np.int64))
                   for name in cfg.target_datasets()}
        weights = {n: float(t.weight or 0) for n, t in cfg.target_datasets().items()}  # check(): all > 0
        table = retrieval.build_table(pool["cluster_id"].to_numpy(),
                                      ~pool["contaminated"].to_numpy(zero_copy_only=False), targets, weights, k,
                                      cfg.retrieval.min_hits)
        columns = {"cluster_id": np.arange(k), "size": table.sizes, "clean_size": table.clean_sizes,
                   **{f"hits_{n}": h for n, h in table.hits.items()}, "weight": table.weight,
                   "retained": table.retained}
        shards.write_shard(pa.table(columns), lay.dir("curated", "clusters.parquet"))
        self.timings.append(StageTiming("retrieve", time.perf_counter() - t0, 1, 1))
        return table

    def write_manifest(self, table: retrieval.ClusterTable) -> str:
        lay = self.layout
        out_dir = lay.dir("curated", "manifest")
        self._prepare("manifest")
        begin_manifest_parts(out_dir)  # readers refuse the directory until every part is written
        tasks = shard_tasks(lay.assignments(POOL), out_dir, POOL)
        scene_weight = table.scene_weight(np.arange(len(table.weight)))
        self.timings.append(run_stage("manifest", tasks, [
            Step(write_curated, {"scene_weight": scene_weight}, num_cpus=0.5)], unit="curated scenes"))
        finish_manifest_parts(out_dir)
        return out_dir

    def stage_rows(self) -> list[dict[str, Any]]:
        """Per stage run so far: what the plan said (reused / re-run and why), seconds, shards run."""
        return [{"stage": t.name, "plan": self.notices.get(t.name, "always runs"), "seconds": round(t.seconds, 1),
                 "shards run": f"{t.shards_run} of {t.shards_total}"} for t in self.timings]

    def run(self, on_stage: Callable[[StageTiming], None] | None = None,
            on_report: Callable[[Path], None] | None = None,
            tracked: report.TrackedRun | None = None) -> CurationResult:
        """All stages in order. ``on_stage(timing)`` follows each stage; ``on_report(dir)`` sees the
        report while it is still a local directory (it is then copied under ``output/report``);
        ``tracked`` is the MLflow run the report links to."""

        def done() -> None:
            if on_stage:
                on_stage(self.timings[-1])

        self.gpus = cluster_gpus()
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
            stats = report.build_report(self.cfg, self.layout, table, km, self.threshold, Path(tmp),
                                        self.stage_rows(), tracked)
            self.timings.append(StageTiming("report", time.perf_counter() - t0, 1, 1))
            stats["timings_s"] = {t.name: round(t.seconds, 3) for t in self.timings}
            (Path(tmp) / "stats.json").write_text(json.dumps(stats, indent=1))
            for path in sorted(Path(tmp).iterdir()):
                storage.write_bytes(self.layout.dir("report", path.name), path.read_bytes())
            if on_report:
                on_report(Path(tmp))
        done()
        return CurationResult(manifest, self.layout.dir("report"), stats, self.timings)
