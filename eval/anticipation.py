"""Action anticipation (EK100-style) with 3-head probes over a frozen encoder and predictor, on Ray Train.

The context clip ends ``tau`` seconds before the action; the frozen V-JEPA 2 encoder encodes it, the
frozen predictor adds the tokens of the tubelet ``tau`` ahead, and a grid of attentive probes with verb,
noun and action heads learns from them with a sigmoid focal loss; the head with the best action
recall@5 on a held-out share of the training rows is reported on ``val`` (docs/anticipation.md):

    vjepa2-ray anticipate --config eval/tiny-anticipation
    vjepa2-ray anticipate --config eval/tiny-anticipation encoder.kind=vjepa2 \\
        encoder.checkpoint=runs/pretrain-tiny/latest.pt
    vjepa2-ray anticipate --config eval/ek100 encoder.checkpoint=vitl.pt \\
        data.train=ek100/train.parquet data.val=ek100/val.parquet

Checkpoints, resume and tracking are the generic loop's. At the end the newest checkpoint is exported
in Meta's EK100 probe layout (``{"classifiers": [...]}``, ``module.`` prefixes, ``pooler.*`` and
``verb_classifier`` / ``noun_classifier`` / ``action_classifier``, plus ``vjepa2_ray_anticipation``: shapes,
the classes as dataset ids, the chosen head, the clip geometry) to ``<output_dir>/<run.name>-step_<N>.pt``,
``latest.pt`` points at it, the result (recall@5 of verb, noun and action, per class) goes to
``result.json``, and the export's path is printed last.
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
from core.tracking import resolve_uri, runs_root
from eval.anticipation_config import AnticipationConfig
from eval.anticipation_recipe import AnticipationParts, AnticipationRecipe
from eval.labels import load_label_map
from eval.probe import cpus_needed, export_heads, fit_probes, open_run, starting_point, with_epoch_schedule
from models.anticipation import TASKS, AnticipationBank
from pipelines.anticipation import Vocabulary, read_annotations, read_part
from pipelines.labelled import FIT, VAL, split_select
from train.launch import CHECKPOINTS, TrainResult, export_newest, print_result
from train.optim import plan_batch
from train.run_tracking import attach_run

log = logging.getLogger(__name__)

PARAMS_FILE = "params-anticipation.yaml"
RESULT_FILE = "result.json"
ANTICIPATION_KEY = "vjepa2_ray_anticipation"  # our entry in the probe file
NAME_MAPS = {"verb": "verbs.json", "noun": "nouns.json"}  # optional, beside the training manifest


def name_maps(cfg: AnticipationConfig) -> dict[str, list[str]]:
    """The verb and noun name maps that are given (or lie beside the training manifest)."""
    return {task: load_label_map(uri) for task, uri in (("verb", cfg.data.verbs), ("noun", cfg.data.nouns)) if uri}


def build_parts(cfg: AnticipationConfig) -> AnticipationParts:
    """The classes from the training manifest; fit and select from it (stratified by action, seeded),
    val from the validation manifest without the pairs training never saw."""
    vocab = Vocabulary.of(read_annotations(cfg.data.train), name_maps(cfg))
    train, _ = read_part(cfg.data.train, FIT, vocab)
    fit_rows, select_rows = split_select(train.rows, cfg.data.select_fraction, cfg.data.seed)
    val, unseen = read_part(cfg.data.val, VAL, vocab)
    return AnticipationParts(train.subset(fit_rows), train.subset(select_rows), val, vocab, unseen)


def resolve(cfg: AnticipationConfig) -> AnticipationConfig:
    """Inputs under the data root (name maps default to ``verbs.json`` / ``nouns.json`` beside the train
    manifest when they exist), absolute outputs, the tracking URI, ``optim.total_steps`` from the number
    of ``fit`` rows and ``trainer.eval_every`` to once per epoch when unset."""
    root = storage.data_root(cfg.data_root)
    output_dir = storage.absolute(cfg.run.output_dir) or str(runs_root() / cfg.run.name)
    warn_if_lost(output_dir, "run.output_dir (checkpoints, probe files)")
    train, val = storage.data_path(cfg.data.train, root), storage.data_path(cfg.data.val, root)

    def names(given: str, task: str) -> str:
        beside = storage.join(train.rsplit("/", 1)[0], NAME_MAPS[task]) if train else ""
        return storage.data_path(given, root) or (beside if beside and storage.exists(beside) else "")

    data = replace(cfg.data, train=train, val=val, verbs=names(cfg.data.verbs, "verb"),
                   nouns=names(cfg.data.nouns, "noun"),
                   rejects_dir=storage.absolute(cfg.data.rejects_dir) or storage.join(output_dir, "rejects"))
    cfg = replace(cfg, data_root=root, run=replace(cfg.run, output_dir=output_dir), data=data,
                  encoder=replace(cfg.encoder, checkpoint=storage.data_path(cfg.encoder.checkpoint, root)),
                  predictor=replace(cfg.predictor, checkpoint=storage.data_path(cfg.predictor.checkpoint, root)),
                  probe=replace(cfg.probe, checkpoint=storage.data_path(cfg.probe.checkpoint, root)),
                  tracking=replace(cfg.tracking,
                                   tracking_uri=resolve_uri(cfg.tracking) if cfg.tracking.enabled else ""))
    if not train or not storage.exists(train) or not val:
        return cfg  # check() names what is missing
    return with_epoch_schedule(cfg, len(build_parts(cfg).fit))


def check_ranges(cfg: AnticipationConfig) -> None:
    data = cfg.data
    for key in ("frames_per_clip", "crop_size"):
        if getattr(data, key) < 1:
            raise UserError(f"data.{key}: must be >= 1, got {getattr(data, key)}")
    if data.fps <= 0:
        raise UserError(f"data.fps: must be > 0, got {data.fps}")
    for key in ("train_anticipation_time", "val_anticipation_time", "train_anticipation_point",
                "val_anticipation_point"):
        low, high = getattr(data, key)
        if not 0 <= low <= high or (key.endswith("point") and high > 1):
            raise UserError(f"data.{key}: a range [low, high] with 0 <= low <= high"
                            f"{' <= 1' if key.endswith('point') else ''}, got {[low, high]}")
    if not 0 <= data.select_fraction < 1:
        raise UserError(f"data.select_fraction: must be in [0, 1), got {data.select_fraction}")


def check(cfg: AnticipationConfig) -> AnticipationParts:
    """What would otherwise fail inside a worker: the encoder and predictor configs, both manifests'
    annotations (columns, class ids, bounds), rows left to train and to report, the clip geometry,
    writable outputs. Returns the parts."""
    cfg.encoder.check()
    if not cfg.data.train:
        raise UserError("data.train: no training manifest given (an anticipation manifest)")
    if not cfg.data.val:
        raise UserError("data.val: no validation manifest given (an anticipation manifest)")
    if cfg.predictor.enabled and (cfg.encoder.kind not in ("vjepa2", "random") or cfg.encoder.out_layers):
        raise UserError(f"predictor.enabled: the predictor reads a V-JEPA 2 encoder's last-layer tokens, not "
                        f"encoder.kind={cfg.encoder.kind} out_layers={cfg.encoder.out_layers}; set "
                        "predictor.enabled=false")
    check_ranges(cfg)
    for uri in (cfg.predictor.checkpoint, cfg.probe.checkpoint):
        if uri and not storage.exists(uri):
            raise UserError(f"{uri}: checkpoint not found")
    parts = build_parts(cfg)
    if not len(parts.fit):
        raise UserError(f"{cfg.data.train}: no training rows left after holding out data.select_fraction")
    if not len(parts.val):
        raise UserError(f"{cfg.data.val}: no row whose (verb, noun) pair the training manifest has "
                        f"({parts.val_unseen} left out)")
    storage.check_writable(cfg.run.output_dir)
    return parts


def dry_run(cfg: AnticipationConfig) -> None:
    check(cfg)
    starting_point(cfg)


def probe_extra(cfg: AnticipationConfig, parts: AnticipationParts, shape: dict[str, Any], metrics: dict[str, float],
                step: int) -> dict[str, Any]:
    """What our probe files carry beside Meta's keys: enough to rebuild the heads, map their outputs to
    the dataset's verb / noun ids and cut a clip as the probe was trained."""
    data = cfg.data
    geometry = {"frames_per_clip": data.frames_per_clip, "fps": data.fps, "crop_size": data.crop_size,
                "val_anticipation_time": data.val_anticipation_time,
                "val_anticipation_point": data.val_anticipation_point}
    vocab = parts.vocab
    return {"epoch": step, ANTICIPATION_KEY: {
        "shape": shape, "verbs": vocab.verbs, "nouns": vocab.nouns, "actions": [list(a) for a in vocab.actions],
        "best_head": int(metrics.get("best_head", 0)), "grid": cfg.probe.grid.pairs(), "geometry": geometry,
        "encoder": asdict(cfg.encoder), "predictor": asdict(cfg.predictor), "metrics": metrics}}


def export_probe(checkpoint: str, out: str, cfg: AnticipationConfig, parts: AnticipationParts,
                 metrics: dict[str, float]) -> str:
    """The sharded checkpoint's heads as Meta's EK100 probe file."""
    return export_heads(checkpoint, out, AnticipationBank,
                        lambda shape, step: probe_extra(cfg, parts, shape, metrics, step), "Meta's EK100 probe layout")


def result_of(cfg: AnticipationConfig, parts: AnticipationParts, metrics: dict[str, float],
              summary: dict[str, Any]) -> dict[str, Any]:
    head, pairs = int(metrics["best_head"]), cfg.probe.grid.pairs()
    per_class = {task: [{"class": i, "name": name, "recall5": recall} for i, (name, recall) in
                        enumerate(zip(parts.vocab.class_names(task), summary["per_class"][task]))] for task in TASKS}
    return {"best_head": head, "lr_wd": pairs[head] if head < len(pairs) else None,
            **{k: v for k, v in metrics.items() if not k.startswith("head_")},
            "head_action_recall5": {k: v for k, v in metrics.items() if k.startswith("head_")},
            "classes": parts.vocab.sizes, "per_class": per_class, "val_action_hits": summary["val_action_hits"]}


def anticipate(cfg: AnticipationConfig) -> TrainResult:
    """Train (or resume) the probe grid and export the newest checkpoint as a probe file; the result's
    ``worker`` holds rank 0's summary and ``result`` the final evaluation."""
    cfg = resolve(cfg)
    resumed = starting_point(cfg)
    parts = check(cfg)
    connect(cfg.ray, cpus_needed(cfg))
    run_uri = storage.join(cfg.run.output_dir, CHECKPOINTS)
    plan = plan_batch(cfg.optim, cfg.trainer)
    run_id = open_run(cfg, "anticipation", "anticipation", PARAMS_FILE, resumed)
    recipe = AnticipationRecipe(cfg, parts)  # type: ignore[arg-type]
    log.info("anticipation %s: %d heads over %s encoder tokens%s; %s classes; fit %d / select %d / val %d "
             "clips (%d val rows of unseen pairs left out); global batch %d, steps to %d, output %s", cfg.run.name,
             len(cfg.probe.grid.pairs()), cfg.encoder.kind, " + predicted tubelet" if cfg.predictor.enabled else "",
             parts.vocab.sizes, len(parts.fit), len(parts.select), len(parts.val), parts.val_unseen,
             plan.global_batch, recipe.stop_step(), cfg.run.output_dir)
    summary, metrics = fit_probes(cfg, recipe, run_uri, run_id, plan.global_batch)  # type: ignore[arg-type]
    checkpoint, export_path, latest = export_newest(
        cfg, run_uri, lambda local, out: export_probe(local, out, cfg, parts, metrics))
    result = result_of(cfg, parts, metrics, summary)
    text = json.dumps(result, indent=1, default=str)
    storage.write_bytes(storage.join(cfg.run.output_dir, RESULT_FILE), text.encode())
    with attach_run(cfg.tracking, run_id, system_metrics=False) as run:
        run.log_text(text, RESULT_FILE)
        run.log_metrics({f"final/{k}": float(v) for k, v in result.items() if isinstance(v, int | float)})
        run.set_tags({"vjepa2.probe": export_path, "vjepa2.val_action_recall5": f"{metrics['val_action_recall5']:.4f}"})
    log.info("%s: head %d (lr %g, wd %g) select action R@5 %.1f%%; val R@5 verb %.1f%% noun %.1f%% action %.1f%% "
             "(best head on val %.1f%%); %d val clips, %d quarantined; probe %s, latest %s", cfg.run.name,
             result["best_head"], *result["lr_wd"], 100 * metrics["select_action_recall5"],
             100 * metrics["val_verb_recall5"], 100 * metrics["val_noun_recall5"], 100 * metrics["val_action_recall5"],
             100 * metrics["val_action_recall5_max"], metrics["val_clips"], metrics["val_missing"], export_path, latest)
    return TrainResult(export_path, checkpoint, cfg.run.output_dir, run_id, {**summary, "result": result})


def execute(cfg: AnticipationConfig) -> int:
    return print_result(anticipate(cfg))


STAGE = ConfigStage(AnticipationConfig, check=dry_run, execute=execute, resolve=resolve)

if __name__ == "__main__":
    raise SystemExit(module_main(__name__))
