"""Post-train V-JEPA 2-AC on robot episodes with Ray Train; the last line printed is the exported file.

A frozen encoder (a V-JEPA 2 checkpoint, a random init, the image encoder or raw pixels) encodes each
frame; the action-conditioned predictor learns to predict the next frame's tokens from the frames so
far, the actions and the states (docs/posttrain.md, docs/reference.md R-vjepa2-6). One YAML describes a run:

    vjepa2-ray posttrain --config posttrain/tiny encoder.checkpoint=runs/pretrain-tiny/latest.pt
    ray job submit --working-dir . -- python -m train.posttrain --config configs/posttrain/vitg-droid.yaml

With ``cache.enabled`` a pre-pass first writes every frame's tokens (pipelines/episodes/cache.py) and the
trainers read those instead of running the encoder. Checkpoints, resume, fault tolerance and tracking are
the generic loop's (train/loop.py), as for pretraining. At the end the newest checkpoint is exported in
Meta's V-JEPA 2-AC layout (``module.``-prefixed ``encoder``, ``predictor``, ``target_encoder``, plus
``epoch``, ``loss``, ``batch_size``, ``world_size``, ``lr``) to ``<output_dir>/<run.name>-step_<N>.pt``,
``latest.pt`` points at it, the held-out quality check goes to ``quality.json``, and the export's path is
printed last, so commands chain.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from typing import Any

from core import storage
from core.entry import ConfigStage, module_main
from core.errors import UserError
from core.ray_session import connect, warn_if_lost
from core.tracking import config_yaml, resolve_uri, runs_root
from models.checkpoint import save_meta_checkpoint
from models.frozen import build_frozen_encoder, frame_geometry
from models.sharded import load_sharded_checkpoint
from pipelines.dataset import train_data_config
from pipelines.episodes.cache import build_feature_cache, default_dir, identity
from pipelines.episodes.clips import EpisodeSet
from pipelines.episodes.schema import INDEX_FILE, read_index
from train.launch import (
    CHECKPOINTS,
    TrainResult,
    aligned_decode_batch,
    build_trainer,
    export_newest,
    log_checkpoint,
    print_result,
)
from train.loop import TrainJob
from train.optim import plan_batch
from train.posttrain_config import PosttrainConfig
from train.posttrain_recipe import PosttrainRecipe
from train.pretrain import open_tracking, starting_point
from train.run_tracking import attach_run
from train.schedules import build_schedules
from train.state import provenance

log = logging.getLogger(__name__)

PARAMS_FILE = "params-posttrain.yaml"
QUALITY_FILE = "quality.json"
FROZEN_KEY = "vjepa2_ray_frozen_encoder"  # how to rebuild a non-V-JEPA frozen encoder (image, pixels)


def resolve(cfg: PosttrainConfig) -> PosttrainConfig:
    """Inputs under the data root, absolute outputs, the tracking URI, and ``model.encoder`` set to the
    geometry the frozen encoder's frame tokens have (:func:`models.frozen.frame_geometry`)."""
    root = storage.data_root(cfg.data_root)
    output_dir = storage.absolute(cfg.run.output_dir) or str(runs_root() / cfg.run.name)
    warn_if_lost(output_dir, "run.output_dir (checkpoints, exports)")
    data = replace(cfg.data, dataset=storage.data_path(cfg.data.dataset, root),
                   decode_batch_size=aligned_decode_batch(cfg.trainer, cfg.data.decode_batch_size),
                   rejects_dir=storage.absolute(cfg.data.rejects_dir) or storage.join(output_dir, "rejects"))
    encoder = replace(cfg.encoder, checkpoint=storage.data_path(cfg.encoder.checkpoint, root))
    model = replace(cfg.model, encoder=frame_geometry(encoder, cfg.model.encoder, data.crop_size))
    cache = replace(cfg.cache, dir=storage.absolute(cfg.cache.dir))
    tracking = replace(cfg.tracking, tracking_uri=resolve_uri(cfg.tracking) if cfg.tracking.enabled else "")
    run = replace(cfg.run, output_dir=output_dir, init_checkpoint=storage.data_path(cfg.run.init_checkpoint, root))
    return replace(cfg, data_root=root, run=run, data=data, encoder=encoder, model=model, cache=cache,
                   tracking=tracking)


def check(cfg: PosttrainConfig) -> None:
    """What would otherwise fail inside a worker: the config's shape, the dataset (index, and an episode
    that holds a clip in each split used), the encoder config, writable outputs."""
    if cfg.model.ac_predictor is None:
        raise UserError("model.ac_predictor is not set: post-training needs an AC model preset (e.g. "
                        "_base_: ../model/tiny-ac.yaml)")
    if not cfg.data.dataset:
        raise UserError("data.dataset: no episode dataset given (a directory holding episodes.parquet)")
    if cfg.data.frames <= cfg.loss.auto_steps:
        raise UserError(f"loss.auto_steps={cfg.loss.auto_steps} needs data.frames > {cfg.loss.auto_steps}")
    cfg.encoder.check()
    read_index(cfg.data.dataset)
    splits = ("train", "val") if cfg.trainer.eval_every > 0 and cfg.data.val_fraction > 0 else ("train",)
    for split in splits:
        EpisodeSet.build(cfg.data, split)
    storage.check_writable(cfg.run.output_dir)
    build_schedules(cfg.optim, plan_batch(cfg.optim, cfg.trainer).lr_scale)


def dry_run(cfg: PosttrainConfig) -> None:
    check(cfg)
    starting_point(cfg, storage.join(cfg.run.output_dir, CHECKPOINTS), own_dataset=False)


def cpus_needed(cfg: PosttrainConfig) -> float:
    data, trainer = cfg.data, cfg.trainer
    return max(1, trainer.num_workers) * trainer.cpus_per_worker + data.num_decode_workers * data.decode_cpus


def with_cache(cfg: PosttrainConfig) -> PosttrainConfig:
    """The run reading tokens from the feature cache, built (or reused) first, when ``cache.enabled``."""
    if not cfg.cache.enabled:
        return cfg
    root = cfg.cache.dir or default_dir(identity(cfg.data, cfg.encoder, cfg.cache.dtype), str(runs_root()))
    cache = build_feature_cache(cfg.data, cfg.encoder, cfg.cache, root)
    return replace(cfg, data=replace(cfg.data, cache_dir=cache.root), cache=replace(cfg.cache, dir=cache.root))


def export_ac(checkpoint: str, out: str, cfg: PosttrainConfig) -> str:
    """The sharded checkpoint in Meta's V-JEPA 2-AC layout (``module.`` prefixes, as Meta's
    ``app/vjepa_droid/train.py`` saves): the frozen encoder's weights as ``encoder`` and ``target_encoder``
    (empty for image and pixel encoders, whose config rides along under :data:`FROZEN_KEY`)."""
    ckpt = load_sharded_checkpoint(checkpoint)
    record = ckpt.extras["vjepa2_ray_train"]
    frozen = build_frozen_encoder(cfg.encoder)
    encoder = frozen.net.state_dict() if cfg.encoder.kind in ("vjepa2", "random") else {}
    plan = record.get("batch_plan", {})
    extra = {"epoch": record["state"]["step"], "loss": record.get("loss"), "batch_size": plan.get("batch_per_worker"),
             "world_size": record.get("world_size", plan.get("num_workers")),
             "lr": cfg.optim.lr, FROZEN_KEY: asdict(cfg.encoder),
             "vjepa2_ray_train": {k: record.get(k) for k in ("state", "git_revision", "packages", "mlflow_run_id")}}
    save_meta_checkpoint(out, encoder, ckpt.state("predictor"), encoder, model_cfg=cfg.model, extra=extra,
                         key_prefix="module.")
    log.info("exported %s -> %s (Meta V-JEPA 2-AC layout)", checkpoint, out)
    return out


def final_quality(cfg: PosttrainConfig, worker: dict[str, Any]) -> dict[str, Any]:
    """The last validation's rollout errors and gains, with the verdict of the issue's bar: beat
    copying the last frame at both horizons and shuffled actions by ``quality.min_gain_vs_shuffled``."""
    validations = worker.get("validations") or {}
    if not validations:
        return {}
    step = max(validations)
    last = validations[step]
    bar = cfg.quality.min_gain_vs_shuffled
    passed = (last["val_gain_vs_copy_1step"] > 0 and last["val_gain_vs_copy_2step"] > 0
              and last["val_gain_vs_shuffled_1step"] >= bar and last["val_gain_vs_shuffled_2step"] >= bar)
    return {"step": step, **last, "passed": passed, "min_gain_vs_shuffled": bar,
            "curves": {str(s): v for s, v in sorted(validations.items())}}


def posttrain(cfg: PosttrainConfig, dataset: Any = None) -> TrainResult:
    """Run (or resume) V-JEPA 2-AC post-training and export the newest checkpoint in Meta's AC layout;
    the result's ``worker`` holds rank 0's summary and ``quality`` the held-out check.

    ``dataset``: a prepared Ray Dataset (the columns of ``pipelines.episodes.clips.build_episode_dataset``)
    to train on instead of the episode stream, for a fresh run only; the benchmark times the loop alone
    with it.
    """
    cfg = resolve(cfg)
    check(cfg)
    run_uri = storage.join(cfg.run.output_dir, CHECKPOINTS)
    resumed, source = starting_point(cfg, run_uri, own_dataset=dataset is not None)
    plan = plan_batch(cfg.optim, cfg.trainer)
    connect(cfg.ray, cpus_needed(cfg))
    cfg = with_cache(cfg)
    record = provenance(cfg)
    cfg, run_id, lineage = open_tracking(cfg, resumed, source, record, plan.global_batch, log_inputs=False)
    with attach_run(cfg.tracking, run_id, system_metrics=False) as run:
        if not resumed:
            run.log_input_manifest(storage.join(cfg.data.dataset, INDEX_FILE), "episodes", "training",
                                   {"frames": cfg.data.frames, "fps": cfg.data.fps, "kind": "robot"})
    storage.write_bytes(storage.join(cfg.run.output_dir, PARAMS_FILE), config_yaml(cfg).encode())
    recipe = PosttrainRecipe(cfg)
    log.info("post-training %s: %d workers x %d clips x %d accumulation = global batch %d, steps to %d, encoder %s%s, "
             "output %s", cfg.run.name, max(1, cfg.trainer.num_workers), plan.batch_per_worker, plan.grad_accum,
             plan.global_batch, recipe.stop_step(), cfg.encoder.kind,
             f" (tokens from {cfg.data.cache_dir})" if cfg.data.cache_dir else "", cfg.run.output_dir)
    job = TrainJob(recipe, run_uri, run_id, {**record, "lineage": lineage})
    result = build_trainer(job, cfg.run.output_dir, plan.global_batch, train_data_config(cfg.data), dataset).fit()
    checkpoint, export_path, latest = export_newest(cfg, run_uri, lambda local, out: export_ac(local, out, cfg))
    worker = result.return_value or {}
    quality = final_quality(cfg, worker)
    with attach_run(cfg.tracking, run_id, system_metrics=False) as run:
        log_checkpoint(run, checkpoint, export_path, latest)
        if quality:
            storage.write_bytes(storage.join(cfg.run.output_dir, QUALITY_FILE),
                                json.dumps(quality, indent=1).encode())
            run.log_text(json.dumps(quality, indent=1), QUALITY_FILE)
            run.set_tags({"vjepa2.quality_passed": quality["passed"]})
    return TrainResult(export_path, checkpoint, cfg.run.output_dir, run_id, {**worker, "quality": quality})


def execute(cfg: PosttrainConfig) -> int:
    result = posttrain(cfg)
    quality = result.worker.get("quality")
    if quality:
        log.info("held-out rollout L1 at step %d: 1-step %.4f (copy %.4f, shuffled actions %.4f), 2-step %.4f "
                 "(copy %.4f, shuffled %.4f): %s", quality["step"], quality["val_l1_1step"],
                 quality["val_copy_l1_1step"], quality["val_shuffled_l1_1step"], quality["val_l1_2step"],
                 quality["val_copy_l1_2step"], quality["val_shuffled_l1_2step"],
                 "passes" if quality["passed"] else "does NOT pass the quality bar")
    return print_result(result)


STAGE = ConfigStage(PosttrainConfig, check=dry_run, execute=execute, resolve=resolve)


if __name__ == "__main__":
    raise SystemExit(module_main(__name__))
