"""Train attentive probes over a frozen encoder on Ray Train, or evaluate a probe file; prints the probe file last.

The encoder (a V-JEPA 2 checkpoint, ours or Meta's, key ``target_encoder``; a random init; the image
encoder; raw pixels) stays frozen; a grid of attentive probes (one per (lr, wd) pair) trains on its
tokens, the head with the best top-1 on a held-out share of the training rows (``select``) is reported
on ``val`` (docs/eval.md). One YAML describes a run:

    vjepa2-ray probe --config eval/tiny-motion encoder.checkpoint=runs/pretrain-tiny/latest.pt
    vjepa2-ray probe --config eval/ssv2 encoder.checkpoint=vitl.pt data.train=ssv2/train.csv data.val=ssv2/val.csv
    vjepa2-ray probe --config eval/tiny-motion eval_only=true probe.checkpoint=runs/probe-tiny-motion/latest.pt
    ray job submit --working-dir . -- python -m eval.probe --config configs/eval/ssv2.yaml ...

Checkpoints, resume, fault tolerance and tracking are the generic loop's (train/loop.py). At the end
the newest checkpoint is exported in Meta's probe layout (``{"classifiers": [...]}``, ``module.``
prefixes, plus ``vjepa2_ray_probe``: the shapes, label names, the chosen head and the clip geometry,
which ``vjepa2-ray classify`` reads) to ``<output_dir>/<run.name>-step_<N>.pt``, ``latest.pt`` points at
it, the result (top-1 / top-5 / per class) goes to ``result.json`` and ``per_class.csv``, and the
export's path is printed last, so commands chain.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from core import storage
from core.entry import ConfigStage, module_main
from core.errors import UserError
from core.ray_session import connect, warn_if_lost
from core.tracking import config_yaml, resolve_uri, runs_root, start_run
from eval.clip_cache import build_clip_cache, default_dir, identity
from eval.labels import check_labels, load_label_map
from eval.probe_config import ProbeConfig
from eval.probe_metrics import per_class_accuracy
from eval.probe_recipe import ProbeParts, ProbeRecipe
from models.checkpoint import save_probe_checkpoint
from models.probe import ProbeBank
from pipelines.labelled import FIT, VAL, read_rows, split_select
from train.launch import CHECKPOINTS, TrainResult, build_trainer, existing_checkpoint, export_newest, print_result
from train.loop import TrainJob
from train.optim import plan_batch
from train.run_tracking import attach_run
from train.state import provenance, read_record

log = logging.getLogger(__name__)

PARAMS_FILE = "params-probe.yaml"
RESULT_FILE = "result.json"
PER_CLASS_FILE = "per_class.csv"
PROBE_KEY = "vjepa2_ray_probe"  # our entry in the probe file: shapes, labels, chosen head, clip geometry
LABELS_FILE = "labels.json"


def resolve(cfg: ProbeConfig) -> ProbeConfig:
    """Inputs under the data root (the label map defaults to ``labels.json`` beside the train manifest),
    absolute outputs, the tracking URI, and, for training, ``optim.total_steps`` from the number of
    ``fit`` rows and ``trainer.eval_every`` to once per epoch when unset."""
    root = storage.data_root(cfg.data_root)
    output_dir = storage.absolute(cfg.run.output_dir) or str(runs_root() / cfg.run.name)
    warn_if_lost(output_dir, "run.output_dir (checkpoints, probe files)")
    train, val = storage.data_path(cfg.data.train, root), storage.data_path(cfg.data.val, root)
    beside = storage.join(train.rsplit("/", 1)[0], LABELS_FILE) if train else ""
    labels = storage.data_path(cfg.data.labels, root) or beside
    data = replace(cfg.data, train=train, val=val, labels=labels,
                   rejects_dir=storage.absolute(cfg.data.rejects_dir) or storage.join(output_dir, "rejects"))
    encoder = replace(cfg.encoder, checkpoint=storage.data_path(cfg.encoder.checkpoint, root))
    probe = replace(cfg.probe, checkpoint=storage.data_path(cfg.probe.checkpoint, root))
    tracking = replace(cfg.tracking, tracking_uri=resolve_uri(cfg.tracking) if cfg.tracking.enabled else "")
    run = replace(cfg.run, output_dir=output_dir)
    cfg = replace(cfg, data_root=root, run=run, data=data, encoder=encoder, probe=probe,
                  cache=replace(cfg.cache, dir=storage.absolute(cfg.cache.dir)), tracking=tracking)
    if cfg.eval_only or not train or not storage.exists(train):
        return cfg  # nothing to train (or check() names the missing manifest)
    fit, _ = split_select(read_rows(train, FIT), cfg.data.select_fraction, cfg.data.seed)
    return with_epoch_schedule(cfg, len(fit))


def with_epoch_schedule(cfg: Any, fit_rows: int) -> Any:
    """A probe-like config with ``optim.total_steps`` (when unset) ``epochs`` passes over ``fit_rows`` rows
    and ``trainer.eval_every`` (when unset) once per epoch."""
    steps_per_epoch = max(1, math.ceil(max(fit_rows, 1) / plan_batch(cfg.optim, cfg.trainer).global_batch))
    optim = replace(cfg.optim, total_steps=cfg.optim.total_steps or cfg.optim.epochs * steps_per_epoch)
    trainer = replace(cfg.trainer, eval_every=cfg.trainer.eval_every or steps_per_epoch)
    return replace(cfg, optim=optim, trainer=trainer)


def check(cfg: ProbeConfig) -> list[str]:
    """What would otherwise fail inside a worker: the encoder config, the label map and both manifests'
    labels, the probe file an evaluation needs, the clip geometry, writable outputs. Returns the class
    names."""
    data = cfg.data
    cfg.encoder.check()
    if not data.val:
        raise UserError("data.val: no validation manifest given (a labelled manifest)")
    if not cfg.eval_only and not data.train:
        raise UserError("data.train: no training manifest given (a labelled manifest); or set eval_only=true")
    if cfg.eval_only and not cfg.probe.checkpoint:
        raise UserError("eval_only=true needs probe.checkpoint (a probe file)")
    if not data.labels:
        raise UserError("data.labels: no label map given (a JSON list of class names)")
    for key in ("frames_per_clip", "frame_step", "num_segments", "num_views", "crop_size"):
        if getattr(data, key) < 1:
            raise UserError(f"data.{key}: must be >= 1, got {getattr(data, key)}")
    if not 0 <= data.select_fraction < 1:
        raise UserError(f"data.select_fraction: must be in [0, 1), got {data.select_fraction}")
    names = load_label_map(data.labels)
    if not cfg.eval_only:
        check_labels(data.train, names, data.labels, require_every_class=True)
    check_labels(data.val, names, data.labels, require_every_class=False)
    if cfg.probe.checkpoint and not storage.exists(cfg.probe.checkpoint):
        raise UserError(f"probe.checkpoint {cfg.probe.checkpoint}: not found")
    storage.check_writable(cfg.run.output_dir)
    return names


def dry_run(cfg: ProbeConfig) -> None:
    check(cfg)
    if not cfg.eval_only:
        starting_point(cfg)


def starting_point(cfg: ProbeConfig) -> dict[str, Any]:
    """The record of the checkpoint this run resumes from ({} for a fresh run), after the refusals."""
    run_uri = storage.join(cfg.run.output_dir, CHECKPOINTS)
    existing = existing_checkpoint(run_uri, ray_managed=cfg.trainer.num_workers > 0)
    if existing and not cfg.run.resume:
        raise UserError(f"{cfg.run.output_dir} already holds checkpoints ({existing}); set run.resume=true to "
                        "continue that run, or choose another run.output_dir / run.name")
    return read_record(existing) if existing else {}


def build_parts(cfg: ProbeConfig, names: list[str]) -> ProbeParts:
    """fit and select from the training manifest (stratified, seeded), val from the validation one."""
    val = read_rows(cfg.data.val, VAL)
    if cfg.eval_only:
        empty = replace(val, part=FIT, uris=[], labels=val.labels[:0], rows=val.rows[:0])
        return ProbeParts(empty, replace(empty, part=1), val, names)
    fit, select = split_select(read_rows(cfg.data.train, FIT), cfg.data.select_fraction, cfg.data.seed)
    return ProbeParts(fit, select, val, names)


def with_cache(cfg: ProbeConfig, parts: ProbeParts) -> tuple[ProbeConfig, ProbeParts]:
    """With ``cache.enabled``: the evaluation parts (and ``fit`` when training is not augmented) encoded
    once into the clip feature cache, built or reused, and the run reading tokens from it."""
    if not cfg.cache.enabled:
        return cfg, parts
    wanted = {"select": parts.select, "val": parts.val}
    if not cfg.data.augment and not cfg.eval_only:
        wanted["fit"] = parts.fit
    wanted = {name: rows for name, rows in wanted.items() if len(rows)}
    views = {name: 1 if name == "fit" else cfg.data.num_views for name in wanted}
    root = cfg.cache.dir or default_dir(identity(cfg.data, cfg.encoder, cfg.cache.dtype, wanted), str(runs_root()))
    cache = build_clip_cache(cfg.data, cfg.encoder, cfg.cache, root, wanted, views)
    dim = int(cache.read(*next((p, sorted(v)[0]) for p, v in cache.positions.items() if v)).shape[-1])
    cfg = replace(cfg, data=replace(cfg.data, cache_dir=root), cache=replace(cfg.cache, dir=root))
    return cfg, replace(parts, cached=tuple(wanted), token_dim=dim)


def cpus_needed(cfg: ProbeConfig) -> float:
    data, trainer = cfg.data, cfg.trainer
    return max(1, trainer.num_workers) * trainer.cpus_per_worker + data.num_decode_workers * data.decode_cpus


def probe_extra(cfg: ProbeConfig, parts: ProbeParts, shape: dict[str, int], metrics: dict[str, float],
                step: int) -> dict[str, Any]:
    """What our probe files carry beside Meta's keys: enough to rebuild the heads, name the classes and
    cut a clip as the probe was trained (``vjepa2-ray classify``)."""
    geometry = {k: getattr(cfg.data, k) for k in ("frames_per_clip", "frame_step", "num_segments", "num_views",
                                                   "crop_size")}
    return {"epoch": step, PROBE_KEY: {"shape": shape, "class_names": parts.class_names,
                                       "best_head": int(metrics.get("best_head", 0)), "grid": cfg.probe.grid.pairs(),
                                       "geometry": geometry, "encoder": asdict(cfg.encoder), "metrics": metrics}}


def export_heads(checkpoint: str, out: str, bank_type: Any, extra: Callable[[dict[str, Any], int], dict[str, Any]],
                 layout: str) -> str:
    """A sharded probe checkpoint's heads (a ``bank_type`` of the recorded shape) as a probe file in Meta's
    layout (``module.`` prefixes, as Meta's DDP-wrapped classifiers are saved) plus ``extra(shape, step)``."""
    from models.sharded import read_model_state

    record = read_record(checkpoint)
    shape = record["probe_shape"]
    bank = bank_type(shape["heads"], shape["dim"], shape["num_heads"], shape["classes"], shape["depth"])
    bank.load_state_dict(read_model_state(checkpoint), strict=True)
    save_probe_checkpoint(out, list(bank.classifiers), extra(shape, record["state"]["step"]))
    log.info("exported %s -> %s (%s, %d heads)", checkpoint, out, layout, shape["heads"])
    return out


def export_probe(checkpoint: str, out: str, cfg: ProbeConfig, parts: ProbeParts, metrics: dict[str, float]) -> str:
    return export_heads(checkpoint, out, ProbeBank, lambda shape, step: probe_extra(cfg, parts, shape, metrics, step),
                        "Meta probe layout")


def result_of(cfg: ProbeConfig, parts: ProbeParts, metrics: dict[str, float], matrix: np.ndarray,
              val_correct: np.ndarray) -> dict[str, Any]:
    accuracy = per_class_accuracy(matrix)
    head = int(metrics["best_head"])
    per_class = [{"label": i, "class": name, "clips": int(matrix[i].sum()),
                  "accuracy": None if np.isnan(accuracy[i]) else float(accuracy[i])}
                 for i, name in enumerate(parts.class_names)]
    return {"best_head": head, "lr_wd": cfg.probe.grid.pairs()[head] if head < len(cfg.probe.grid.pairs()) else None,
            **{k: v for k, v in metrics.items() if not k.startswith("head_")},
            "head_top1": {k: v for k, v in metrics.items() if k.startswith("head_")}, "per_class": per_class,
            "val_correct": "".join(map(str, np.asarray(val_correct).tolist()))}  # the chosen head, per val row


def write_result(cfg: ProbeConfig, result: dict[str, Any], run: Any) -> None:
    """``result.json`` and ``per_class.csv`` under the output directory and as MLflow artifacts."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=["label", "class", "clips", "accuracy"])
    writer.writeheader()
    writer.writerows(result["per_class"])
    text = json.dumps(result, indent=1, default=str)
    storage.write_bytes(storage.join(cfg.run.output_dir, RESULT_FILE), text.encode())
    storage.write_bytes(storage.join(cfg.run.output_dir, PER_CLASS_FILE), table.getvalue().encode())
    run.log_text(text, RESULT_FILE)
    run.log_text(table.getvalue(), PER_CLASS_FILE)
    run.log_metrics({f"final/{k}": float(v) for k, v in result.items() if isinstance(v, int | float)})


def prepare(cfg: ProbeConfig) -> tuple[ProbeConfig, ProbeParts]:
    """Checks, the parts, Ray, and the clip cache."""
    names = check(cfg)
    parts = build_parts(cfg, names)
    connect(cfg.ray, cpus_needed(cfg))
    return with_cache(cfg, parts)


def open_run(cfg: Any, stage: str, kind: str, params_file: str, resumed: dict[str, Any]) -> str:
    """The MLflow run of a probe-like stage (a resumed run's own, else a new one with both manifests as
    its inputs), and the resolved config written beside the checkpoints; returns the run id."""
    run_id = resumed.get("mlflow_run_id", "")
    opened = attach_run(cfg.tracking, run_id, system_metrics=False) if run_id else start_run(
        cfg.tracking, cfg, {"vjepa2.stage": stage, "vjepa2.output_dir": cfg.run.output_dir},
        run_name=cfg.tracking.run_name or cfg.run.name, system_metrics=False)
    with opened as run:
        run_id = run.run_id or ""
        if not resumed:
            for split, manifest in (("training", cfg.data.train), ("validation", cfg.data.val)):
                run.log_input_manifest(manifest, split, split, {"kind": kind})
    storage.write_bytes(storage.join(cfg.run.output_dir, params_file), config_yaml(cfg).encode())
    return run_id


def fit_probes(cfg: Any, recipe: ProbeRecipe, run_uri: str, run_id: str,
               global_batch: int) -> tuple[dict[str, Any], dict[str, float]]:
    """Run a probe recipe on Ray Train; (rank 0's summary, the last validation's metrics)."""
    from pipelines.dataset import train_data_config

    job = TrainJob(recipe, run_uri, run_id, provenance(cfg))
    worker = build_trainer(job, cfg.run.output_dir, global_batch, train_data_config(cfg.data)).fit()
    summary = worker.return_value or {}
    validations = summary.get("validations") or {}
    if not validations:
        raise UserError(f"{cfg.run.name}: the run ended without an evaluation")
    return summary, validations[max(validations)]


def probe(cfg: ProbeConfig) -> TrainResult:
    """Train (or resume) the probe grid and export the newest checkpoint as a probe file; the result's
    ``worker`` holds rank 0's summary and ``result`` the final evaluation."""
    cfg = resolve(cfg)
    resumed = starting_point(cfg) if not cfg.eval_only else {}
    cfg, parts = prepare(cfg)
    run_uri = storage.join(cfg.run.output_dir, CHECKPOINTS)
    plan = plan_batch(cfg.optim, cfg.trainer)
    run_id = open_run(cfg, "probe", "labelled", PARAMS_FILE, resumed)
    recipe = ProbeRecipe(cfg, parts)
    log.info("probing %s: %d heads over %s encoder tokens%s; fit %d / select %d / val %d clips of %d classes; "
             "%d workers x %d clips x %d accumulation = global batch %d, steps to %d, output %s", cfg.run.name,
             len(cfg.probe.grid.pairs()), cfg.encoder.kind,
             f" (cached in {cfg.data.cache_dir})" if parts.cached else "", len(parts.fit), len(parts.select),
             len(parts.val), len(parts.class_names), max(1, cfg.trainer.num_workers),
             plan.batch_per_worker, plan.grad_accum, plan.global_batch, recipe.stop_step(), cfg.run.output_dir)
    summary, metrics = fit_probes(cfg, recipe, run_uri, run_id, plan.global_batch)
    checkpoint, export_path, latest = export_newest(
        cfg, run_uri, lambda local, out: export_probe(local, out, cfg, parts, metrics))
    result = result_of(cfg, parts, metrics, np.asarray(summary["confusion"]), summary["val_correct"])
    with attach_run(cfg.tracking, run_id, system_metrics=False) as run:
        write_result(cfg, result, run)
        run.set_tags({"vjepa2.probe": export_path, "vjepa2.val_top1": f"{metrics['val_top1']:.4f}"})
    log.info("%s: head %d (lr %g, wd %g) select top-1 %.1f%%, val top-1 %.1f%% top-5 %.1f%% (best head on val "
             "%.1f%%); %d val clips, %d quarantined; probe %s, latest %s", cfg.run.name, result["best_head"],
             *result["lr_wd"], 100 * metrics["select_top1"], 100 * metrics["val_top1"], 100 * metrics["val_top5"],
             100 * metrics["val_top1_max"], metrics["val_clips"], metrics["val_missing"], export_path, latest)
    return TrainResult(export_path, checkpoint, cfg.run.output_dir, run_id, {**summary, "result": result})


def evaluate(cfg: ProbeConfig) -> dict[str, Any]:
    """``eval_only``: the probe file's heads on every ``val`` row (top-1, top-5, per class), in this process
    over the same Ray Data stream and decode pool; the head reported is the one the file names."""
    from models.checkpoint import read_checkpoint

    cfg = resolve(cfg)
    cfg, parts = prepare(cfg)
    stored = read_checkpoint(cfg.probe.checkpoint).get(PROBE_KEY) or {}
    parts = replace(parts, best_head=int(stored.get("best_head", 0)))
    recipe = ProbeRecipe(cfg, parts)
    recipe.setup(1, 0)
    rows = recipe.val_dataset().iter_batches(batch_size=cfg.trainer.batch_size_per_worker, batch_format="numpy")
    metrics = recipe.validate(recipe.collate(b, i, "val") for i, b in enumerate(rows))
    result = result_of(cfg, parts, metrics, recipe.last["confusion"], recipe.last["val_correct"])
    with start_run(cfg.tracking, cfg, {"vjepa2.stage": "probe-eval", "vjepa2.probe": cfg.probe.checkpoint},
                   run_name=cfg.tracking.run_name or f"{cfg.run.name}-eval", system_metrics=False) as run:
        write_result(cfg, result, run)
    return result


def execute(cfg: ProbeConfig) -> int:
    if cfg.eval_only:
        result = evaluate(cfg)
        print(f"{cfg.probe.checkpoint}: head {result['best_head']} on {int(result['val_clips'])} clips: top-1 "
              f"{100 * result['val_top1']:.2f}% top-5 {100 * result['val_top5']:.2f}% ({RESULT_FILE} and "
              f"{PER_CLASS_FILE} in {cfg.run.output_dir})")
        return 0
    return print_result(probe(cfg))


STAGE = ConfigStage(ProbeConfig, check=dry_run, execute=execute, resolve=resolve)

if __name__ == "__main__":
    raise SystemExit(module_main(__name__))
