"""Curate an uncurated video pool into Curated-YT1B: scenes, embeddings, k-means, retrieval, decontamination.

    vjepa2-ray curate --config curate/tiny [key=value ...]

Stages run as Ray Data stages writing Parquet shards under ``output``; a re-run skips finished shards
(kill it at any point and start it again). The curated manifest lands in ``<output>/curated/manifest``
(a Parquet dataset the VideoMix ``yt1b`` source reads as its manifest), the report in
``<output>/report/index.html``; stage counts, timings and the report go to MLflow.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from core import storage
from core.config import flatten
from core.entry import ConfigStage
from core.ray_session import connect, warn_if_lost
from core.storage import check_writable
from core.tracking import resolve_uri, start_run, ui_hint
from curation.config import CurationConfig
from curation.execution import StageTiming
from curation.pipeline import Curation, CurationResult
from curation.report import TrackedRun
from pipelines.sources import ManifestRows

log = logging.getLogger(__name__)


def resolve(cfg: CurationConfig) -> CurationConfig:
    """The config with every relative path under the data root (``data_root``, ``$VJEPA2_RAY_DATA_ROOT``
    or the working directory), so a job's upload, a worker on another node and the report all name the
    same files; warns when the output would land in a job's temporary upload."""
    root = storage.data_root(cfg.data_root)
    targets = {name: replace(t, train=storage.data_path(t.train, root), val=storage.data_path(t.val, root))
               for name, t in cfg.target_datasets().items()}
    output = storage.data_path(cfg.output, root)
    warn_if_lost(output, "the curation output (scenes, embeddings, manifest, report)")
    return replace(cfg, data_root=root, pool=storage.data_path(cfg.pool, root), output=output, targets=targets,
                   embedder=replace(cfg.embedder, weights=storage.data_path(cfg.embedder.weights, root)))


def check_inputs(cfg: CurationConfig) -> None:
    """Every manifest's rows and the output's writability, in the driver before Ray starts, so a bad
    input is one line naming the file and row (exit 2), not a stage failure inside Ray."""
    manifests = [cfg.pool, *(uri for t in cfg.target_datasets().values() for uri in (t.train, t.val) if uri)]
    for uri in manifests:
        ManifestRows(uri).check()
    check_writable(cfg.output)


def curate(cfg: CurationConfig) -> CurationResult:
    """Run the whole build under one MLflow run (stage counts and timings as metrics, report as artifacts).

    The config, the inputs and the reuse plan are checked before Ray starts and before the MLflow run
    opens, so a build that cannot start leaves no failed run behind.
    """
    cfg = resolve(cfg)
    curation = dry_run(cfg)
    connect(cfg.ray)
    with start_run(cfg.tracking, cfg, tags={"command": "curate"}, run_name=cfg.name) as run:

        def on_stage(timing: StageTiming) -> None:
            run.log_metrics({f"{timing.name}_seconds": timing.seconds, f"{timing.name}_shards": timing.shards_total,
                             f"{timing.name}_shards_run": timing.shards_run})

        def on_report(report_dir: Path) -> None:
            for path in sorted(report_dir.iterdir()):
                run.log_artifact(path, "report")

        tracked = None
        if run.run_id:
            uri = resolve_uri(cfg.tracking)
            tracked = TrackedRun(run.run_id, cfg.tracking.experiment, uri, ui_hint(uri))
        result = curation.run(on_stage, on_report, tracked)
        run.log_metrics(flatten({"count": result.stats["counts"]}))
        run.log_metrics({f"quarantine.{k.replace('/', '.')}": v for k, v in result.stats["quarantine"].items()})
        run.log_metrics({"weight_sum": result.stats["weight_sum"]})
        run.set_tags({"curated_manifest": result.manifest})
        # the same digest the pretraining run shows for this manifest as its yt1b input: the lineage
        run.log_input_manifest(result.manifest, f"{cfg.name}-manifest", context="curated",
                               tags={"scenes": result.stats["counts"]["scenes_curated"]})
    counts = result.stats["counts"]
    log.info("curated %d of %d scenes (%d of %d clusters retained, %d contaminated); manifest %s; report %s/index.html",
             counts["scenes_curated"], counts["scenes_embedded"], counts["clusters_retained"], counts["clusters"],
             counts["scenes_contaminated"], result.manifest, result.report_dir)
    return result


def dry_run(cfg: CurationConfig) -> Curation:
    """What :func:`curate` refuses before Ray and MLflow: the config, every manifest, the output's
    writability; then the plan of which stages would be reused (logged, nothing removed)."""
    cfg.check()
    check_inputs(cfg)
    return Curation(cfg)  # plans which stages are reused and logs why


def execute(cfg: CurationConfig) -> int:
    curate(cfg)
    return 0


STAGE = ConfigStage(CurationConfig, check=dry_run, execute=execute, resolve=resolve)


if __name__ == "__main__":
    from core.entry import module_main

    raise SystemExit(module_main(__name__))
