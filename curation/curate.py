"""Curate an uncurated video pool into Curated-YT1B: scenes, embeddings, k-means, retrieval, decontamination.

    vjepa2-ray curate --config configs/curate/tiny.yaml [key=value ...]

Stages run as Ray Data stages writing Parquet shards under ``output``; a re-run skips finished shards
(kill it at any point and start it again). The curated manifest lands in ``<output>/curated/manifest``
(a Parquet dataset the VideoMix ``yt1b`` source reads as its manifest), the report in
``<output>/report/index.html``; stage counts, timings and the report go to MLflow.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from core.config import flatten, load_config
from core.ray_session import connect
from core.redact import setup_logging
from core.storage import check_writable
from core.tracking import start_run
from curation.config import CurationConfig
from curation.execution import StageTiming
from curation.pipeline import Curation, CurationResult
from pipelines.sources import ManifestRows

log = logging.getLogger(__name__)


def check_inputs(cfg: CurationConfig) -> None:
    """Every manifest's rows and the output's writability, in the driver before Ray starts, so a bad
    input is one line naming the file and row (exit 2), not a stage failure inside Ray."""
    manifests = [cfg.pool, *(uri for t in cfg.targets.values() if t.weight > 0 for uri in (t.train, t.val) if uri)]
    for uri in manifests:
        ManifestRows(uri).check()
    check_writable(cfg.output)


def curate(cfg: CurationConfig) -> CurationResult:
    """Run the whole build under one MLflow run (stage counts and timings as metrics, report as artifacts)."""
    cfg.check()
    check_inputs(cfg)
    connect(cfg.ray)
    with start_run(cfg.tracking, cfg, tags={"command": "curate"}, run_name=cfg.name) as run:

        def on_stage(timing: StageTiming) -> None:
            run.log_metrics({f"{timing.name}_seconds": timing.seconds, f"{timing.name}_shards": timing.shards_total,
                             f"{timing.name}_shards_run": timing.shards_run})

        def on_report(report_dir: Path) -> None:
            for path in sorted(report_dir.iterdir()):
                run.log_artifact(path, "report")

        result = Curation(cfg).run(on_stage, on_report)
        run.log_metrics(flatten({"count": result.stats["counts"]}))
        run.log_metrics({f"quarantine.{k.replace('/', '.')}": v for k, v in result.stats["quarantine"].items()})
        run.log_metrics({"weight_sum": result.stats["weight_sum"]})
        run.set_tags({"curated_manifest": result.manifest})
    counts = result.stats["counts"]
    log.info("curated %d of %d scenes (%d of %d clusters retained, %d contaminated); manifest %s; report %s/index.html",
             counts["scenes_curated"], counts["scenes_embedded"], counts["clusters_retained"], counts["clusters"],
             counts["scenes_contaminated"], result.manifest, result.report_dir)
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="curation YAML (configs/curate/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. output=s3://bucket/curated kmeans.seed=1")


def run(args: argparse.Namespace) -> int:
    setup_logging()
    curate(load_config(CurationConfig, args.config, args.overrides))
    return 0


if __name__ == "__main__":
    from core.entry import module_main

    raise SystemExit(module_main(__name__))
