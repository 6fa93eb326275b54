"""Run the end-to-end demo on local defaults: local Ray, the sample world on disk, MLflow in SQLite.

Steps (each prints what it did and where its results are):
  1. sample world      -> <workdir>/data/sample_world (manifests in Parquet and Meta CSV)
  2. VideoMix data pass -> one virtual epoch of the tiny preset through the Ray Data decode pool,
                          clips per source logged to MLflow
  3. curation          -> Curated-YT1B over the sample world's yt1b pool (configs/curate/tiny.yaml):
                          curated manifest + report (HTML, plots, contact sheets)
  4. pretraining       -> a short tiny V-JEPA 2 run on Ray Train (FSDP2 on gloo) over the VideoMix stream
                          with the curated yt1b source; sharded checkpoints + a Meta-layout export
  5. probe             -> attentive probes (eval/tiny-motion, a shorter schedule) over the frozen encoder
                          just exported, on the sample world's motion set: val top-1 against chance
  6. post-training     -> a tiny V-JEPA 2-AC predictor on the sample world's simulated Franka episodes,
                          over the frozen encoder just exported (Ray Train); held-out rollout L1 against
                          copying the last frame and against shuffled actions; a Meta AC-layout export
  7. embed             -> encoder features of one sample-world clip from the exported checkpoint
Everything goes through the same functions the CLI subcommands and a cluster run use. In MLflow the
demo is one parent run (``demo-pipeline``) with the data pass, curation, the trainings and the probe nested under it
(``tracking.parent_run``); the parent holds the step summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from configs import preset_path
from core.config import load_config
from core.entry import module_main
from core.ray_session import RayConfig, connect
from core.redact import setup_logging
from core.tracking import RUNS_ROOT_ENV, TrackingConfig, parent_run, resolve_uri, runs_root, start_run, ui_hint
from train.run_tracking import attach_run

log = logging.getLogger("vjepa2_ray.demo")

DEMO_EXPERIMENT = "vjepa2-ray-demo"
# The demo's probe trains 5 of the preset's 20 epochs: a 10-step encoder is not worth more, and the step
# stays about a minute (the cached tokens make an epoch a few seconds).
DEMO_PROBE_EPOCHS = 5


@dataclass
class DemoContext:
    """What the steps share: where things go, and what each step reported."""

    workdir: Path
    seed: int
    data_samples: int
    results: dict[str, dict] = field(default_factory=dict)
    train_steps: int = 10
    curated_manifest: str = ""
    checkpoint: str = ""
    parent_run: str = ""  # the demo's MLflow run; every step's run nests under it

    @property
    def tracking(self) -> TrackingConfig:
        return TrackingConfig(experiment=DEMO_EXPERIMENT, parent_run=self.parent_run)

    def tracking_overrides(self) -> list[str]:
        """The same tracking, for the stages configured by YAML plus overrides."""
        return [f"tracking.experiment={DEMO_EXPERIMENT}", f"tracking.parent_run={self.parent_run}"]

    @property
    def world(self) -> Path:
        return self.workdir / "data" / "sample_world"

    @property
    def curated_dir(self) -> Path:
        return self.workdir / "data" / "curated"

    def source_overrides(self) -> list[str]:
        """Point the tiny preset's sources at this demo's sample world (absolute paths)."""
        from pipelines.sample_world import SOURCES

        return [f"data.sources.{name}.manifest={self.world / 'sources' / name / 'manifest.parquet'}"
                for name in SOURCES]


def step_sample_world(ctx: DemoContext) -> dict:
    from pipelines.sample_world import build_sample_world

    info = build_sample_world(ctx.world, seed=ctx.seed, probes=True)
    return {"path": str(ctx.world), "files": sum(info["counts"].values()) if "counts" in info else None}


def step_data_pass(ctx: DemoContext) -> dict:
    from pipelines.dataset import DataProgress, build_train_dataset
    from train.config import PretrainConfig

    cfg = load_config(PretrainConfig, preset_path("pretrain", "tiny"), ctx.source_overrides())
    names = list(cfg.data.sources)
    rejects = ctx.workdir / "runs" / "demo" / "rejects"
    ds = build_train_dataset(cfg.data, epoch=0, samples=ctx.data_samples, rejects_dir=str(rejects))
    progress = DataProgress(names, every_s=10.0)
    with start_run(ctx.tracking, cfg.data, tags={"demo_step": "data"}, run_name="demo-data") as run:
        for batch in ds.iter_batches(batch_size=cfg.trainer.batch_size_per_worker, batch_format="numpy"):
            progress.update(batch)
        progress.log_to(run)
        run_id = run.run_id
    counts = {n: int(c) for n, c in zip(names, progress.per_source.tolist())}
    return {"clips": progress.clips, "per_source": counts, "rejected_draws": progress.redraws,
            "clips_per_s": round(progress.steady_clips_per_s(), 2), "mlflow_run": run_id,
            "rejects_dir": str(rejects)}


def step_curation(ctx: DemoContext) -> dict:
    from curation.config import CurationConfig
    from curation.curate import curate
    from pipelines.sample_world import TARGETS

    overrides = [f"pool={ctx.world / 'sources' / 'yt1b' / 'manifest.parquet'}",
                 f"output={ctx.curated_dir}", *ctx.tracking_overrides()]
    overrides += [f"targets.{name}.{split}={ctx.world / 'targets' / name / split / 'manifest.parquet'}"
                  for name in TARGETS for split in ("train", "val")]
    result = curate(load_config(CurationConfig, preset_path("curate", "tiny"), overrides))
    ctx.curated_manifest = result.manifest
    counts = result.stats["counts"]
    return {"manifest": result.manifest, "report": str(Path(result.report_dir) / "index.html"),
            "scenes_embedded": counts["scenes_embedded"], "scenes_curated": counts["scenes_curated"],
            "clusters_retained": f"{counts['clusters_retained']}/{counts['clusters']}",
            "scenes_contaminated": counts["scenes_contaminated"]}


def step_pretrain(ctx: DemoContext) -> dict:
    from train.config import PretrainConfig
    from train.pretrain import pretrain

    overrides = ctx.source_overrides() + [
        f"data.sources.yt1b.manifest={ctx.curated_manifest}",
        f"run.output_dir={ctx.workdir / 'runs' / 'demo' / 'pretrain'}",
        f"optim.total_steps={ctx.train_steps}", f"trainer.checkpoint_every={ctx.train_steps}",
        *ctx.tracking_overrides(),
    ]
    result = pretrain(load_config(PretrainConfig, preset_path("pretrain", "tiny"), overrides))
    ctx.checkpoint = result.export_path
    losses = [loss for _, loss in sorted((result.worker.get("losses") or {}).items())]
    return {"export": result.export_path, "checkpoint": result.checkpoint, "mlflow_run": result.mlflow_run_id,
            "steps": ctx.train_steps, "loss_first_last": [losses[0], losses[-1]] if losses else None}


def step_probe(ctx: DemoContext) -> dict:
    from eval.probe import probe
    from eval.probe_config import ProbeConfig

    motion = ctx.world / "probes" / "motion"
    overrides = [f"data.train={motion / 'train.parquet'}", f"data.val={motion / 'val.parquet'}",
                 "encoder.kind=vjepa2", f"encoder.checkpoint={ctx.checkpoint}",
                 f"run.output_dir={ctx.workdir / 'runs' / 'demo' / 'probe'}", f"optim.epochs={DEMO_PROBE_EPOCHS}",
                 "trainer.eval_every=0", *ctx.tracking_overrides()]  # validate once per epoch: a curve per head
    result = probe(load_config(ProbeConfig, preset_path("eval", "tiny-motion"), overrides))
    scores = result.worker["result"]
    return {"probe": result.export_path, "mlflow_run": result.mlflow_run_id, "epochs": DEMO_PROBE_EPOCHS,
            "val_clips": int(scores["val_clips"]), "val_top1": round(scores["val_top1"], 4),
            "chance": round(1 / len(scores["per_class"]), 4), "result": str(Path(result.output_dir) / "result.json")}


def step_posttrain(ctx: DemoContext) -> dict:
    from train.posttrain import posttrain
    from train.posttrain_config import PosttrainConfig

    overrides = [f"data.dataset={ctx.world / 'robot'}", "encoder.kind=vjepa2", f"encoder.checkpoint={ctx.checkpoint}",
                 f"run.output_dir={ctx.workdir / 'runs' / 'demo' / 'posttrain'}", *ctx.tracking_overrides()]
    result = posttrain(load_config(PosttrainConfig, preset_path("posttrain", "tiny"), overrides))
    quality = result.worker.get("quality") or {}
    return {"export": result.export_path, "mlflow_run": result.mlflow_run_id,
            "pictures": str(Path(result.output_dir) / "pictures"),
            **{k: round(quality[k], 4) for k in ("val_l1_1step", "val_copy_l1_1step", "val_shuffled_l1_1step")
               if k in quality}}


def step_embed(ctx: DemoContext) -> dict:
    import numpy as np

    from eval.features import embed_path
    from models.checkpoint import load_encoder
    from pipelines.manifest import read_manifest

    encoder, model_cfg = load_encoder(ctx.checkpoint, key="target_encoder")
    clip = read_manifest(str(ctx.world / "sources" / "kinetics" / "manifest.parquet"))["uri"][0].as_py()
    feats = embed_path(encoder, model_cfg, clip, frames=model_cfg.encoder.num_frames)
    out = ctx.workdir / "runs" / "demo" / "features.npy"
    np.save(out, feats)
    return {"input": clip, "features": str(out), "shape": list(feats.shape)}


STEPS: list[tuple[str, Callable[[DemoContext], dict]]] = [
    ("sample world", step_sample_world),
    ("VideoMix data pass (Ray Data)", step_data_pass),
    ("Curated-YT1B", step_curation),
    ("V-JEPA 2 pretraining (Ray Train)", step_pretrain),
    ("attentive probe on the motion set (Ray Train)", step_probe),
    ("V-JEPA 2-AC post-training (Ray Train)", step_posttrain),
    ("embed with the exported checkpoint", step_embed),
]


# A local Ray sized for a laptop: logical CPUs above the cores so decode actors and a trainer fit together
# (docs/reference.md R-ray-3.1), a small object store, never a remote cluster. Workers' lines reach the
# terminal (the training step lines); Ray's own chatter is filtered out (core/ray_logs.py).
DEMO_RAY = RayConfig(address="local", num_cpus=max(4, os.cpu_count() or 1), object_store_mb=512)


def run_demo(workdir: Path, seed: int = 0, data_samples: int = 64, train_steps: int = 10) -> DemoContext:
    """Run every demo step in order; returns what each reported."""
    workdir = workdir.resolve()
    os.environ.setdefault(RUNS_ROOT_ENV, str(workdir / "runs"))
    ctx = DemoContext(workdir=workdir, seed=seed, data_samples=data_samples, train_steps=train_steps)
    connect(DEMO_RAY)
    demo_tracking = TrackingConfig(experiment=DEMO_EXPERIMENT)
    with parent_run(demo_tracking, "demo-pipeline", tags={"vjepa2.pipeline": "demo"}) as parent_id:
        ctx.parent_run = parent_id
        for number, (title, step) in enumerate(STEPS, start=1):
            print(f"[demo {number}/{len(STEPS)}] {title} ...", flush=True)
            start = time.perf_counter()
            result = step(ctx)
            result["seconds"] = round(time.perf_counter() - start, 1)
            ctx.results[title] = result
            print(f"[demo {number}/{len(STEPS)}] {title}: {json.dumps(result)}", flush=True)
        with attach_run(demo_tracking, parent_id, system_metrics=False) as run:
            run.log_text(json.dumps(ctx.results, indent=2), "demo/summary.json")
    return ctx


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", type=Path, default=Path("."),
                        help="where data/ and runs/ go (default: the current directory)")
    parser.add_argument("--seed", type=int, default=0, help="sample-world seed")
    parser.add_argument("--data-samples", type=int, default=64, help="clips in the data pass")
    parser.add_argument("--train-steps", type=int, default=10, help="tiny pretraining steps")


def run(args: argparse.Namespace) -> int:
    setup_logging()
    ctx = run_demo(args.workdir, seed=args.seed, data_samples=args.data_samples, train_steps=args.train_steps)
    summary = ctx.workdir / "runs" / "demo" / "summary.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps(ctx.results, indent=2))
    uri = resolve_uri(TrackingConfig(), runs_root())
    print("\nDemo finished.")
    print(f"  sample world:   {ctx.world}")
    print(f"  curated YT1B:   {ctx.curated_manifest} (report {ctx.curated_dir / 'report' / 'index.html'})")
    print(f"  checkpoint:     {ctx.checkpoint} (Meta layout)")
    print(f"  step summary:   {summary}")
    print(f"  MLflow store:   {uri} (experiment '{DEMO_EXPERIMENT}')")
    print(f"  open the UI:    {ui_hint(uri)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(module_main(__name__))
