"""Pretrain V-JEPA 2 on Ray Train with FSDP2; the last line printed is the exported checkpoint's path.

The paper's recipe (docs/reference.md R-vjepa2-4): the main phase (warmup, then constant LR) and the cooldown (64
frames, 384 px for ViT-g, linear LR decay) that starts from the main phase's checkpoint (``run.init_checkpoint``)
and is recorded as a child of the main phase's MLflow run. One YAML describes a run:

    vjepa2-ray pretrain --config configs/pretrain/tiny.yaml trainer.num_workers=2 run.output_dir=runs/t
    ray job submit --working-dir . -- python -m train.pretrain --config configs/pretrain/vitl.yaml

Checkpoints go to ``<output_dir>/checkpoints/step_<N>/`` (DCP shards + train_state.json, the newest
``trainer.num_to_keep`` kept); rerunning the same command resumes from the newest one. At the end the
newest checkpoint is exported in Meta's layout to ``<output_dir>/<run.name>-step_<N>.pt`` (loadable by
``vjepa2-ray embed`` and Meta's loaders), ``latest.pt`` points at it, and that path is printed last, so
scripts can chain on it. The run folder also holds the resolved config (``params-pretrain.yaml``) and
each rank's step log (``log_r<rank>.csv``), as Meta's runs do; MLflow gets the export as a pyfunc model
(``train/mlflow_model.py``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from core import storage
from core.entry import ConfigStage, module_main
from core.errors import UserError
from core.ray_session import connect, warn_if_lost
from core.tracking import Run, config_yaml, resolve_uri, runs_root, start_run
from models.checkpoint import checkpoint_kind, load_meta_checkpoint
from pipelines.dataset import train_data_config
from pipelines.sources import check_data
from train.config import PretrainConfig
from train.launch import (
    CHECKPOINTS,
    TrainResult,
    aligned_decode_batch,
    build_trainer,
    existing_checkpoint,
    export_newest,
    log_checkpoint,
    print_result,
)
from train.loop import TrainJob
from train.optim import plan_batch
from train.pretrain_recipe import PretrainRecipe
from train.run_tracking import attach_run
from train.state import (
    check_compatible,
    export_meta,
    package_versions,
    provenance,
    read_record,
)

log = logging.getLogger(__name__)

PARAMS_FILE = "params-pretrain.yaml"  # the resolved config in the run folder, Meta's name for it
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")  # the pyfunc model-from-code file


def resolve(cfg: PretrainConfig) -> PretrainConfig:
    """Everything a worker on another node needs, made explicit: inputs under the data root, absolute
    output paths, the tracking URI; and a decode block size that keeps the data position exact
    (:func:`aligned_decode_batch`)."""
    root = storage.data_root(cfg.data_root)
    output_dir = storage.absolute(cfg.run.output_dir) or str(runs_root() / cfg.run.name)
    warn_if_lost(output_dir, "run.output_dir (checkpoints, exports)")
    sources = {name: replace(src, manifest=storage.data_path(src.manifest, root))
               for name, src in cfg.data.sources.items()}
    data = replace(cfg.data, sources=sources,
                   decode_batch_size=aligned_decode_batch(cfg.trainer, cfg.data.decode_batch_size),
                   rejects_dir=storage.absolute(cfg.data.rejects_dir) or storage.join(output_dir, "rejects"))
    tracking = replace(cfg.tracking, tracking_uri=resolve_uri(cfg.tracking) if cfg.tracking.enabled else "")
    run = replace(cfg.run, output_dir=output_dir, init_checkpoint=storage.data_path(cfg.run.init_checkpoint, root))
    return replace(cfg, data_root=root, run=run, data=data, tracking=tracking)


def init_record(init: str) -> dict[str, Any]:
    """The training record of ``run.init_checkpoint`` (sharded dir or our Meta-layout export), or {}."""
    if not init:
        return {}
    if checkpoint_kind(init) == "sharded":
        return read_record(init)
    return load_meta_checkpoint(init).extras.get("vjepa2_ray_train", {})


def lineage_tags(cfg: PretrainConfig, source: dict[str, Any],
                 resuming: bool = False) -> tuple[PretrainConfig, dict[str, str]]:
    """MLflow tags tying phases together (docs/reference.md R-vjepa2-4.2): a cooldown is a child run of the
    phase whose checkpoint it starts from and shares its lineage; ``source`` is that checkpoint's record
    (or, when ``resuming``, the record of this run's own latest checkpoint, which carries the lineage
    forward). An explicit ``tracking.parent_run`` (a pipeline's run) is the parent instead; the run that
    wrote the checkpoint is then still named, by ``vjepa2.init_run``."""
    tags = {"vjepa2.phase": "cooldown" if cfg.run.init_checkpoint else "main", "vjepa2.run_name": cfg.run.name}
    if cfg.run.init_checkpoint:
        tags["vjepa2.init_checkpoint"] = cfg.run.init_checkpoint
    if resuming:
        tags["vjepa2.lineage"] = source.get("lineage", "")
        return cfg, tags
    init_run = source.get("mlflow_run_id", "")
    if init_run:
        tags["vjepa2.init_run"] = init_run
        tags["vjepa2.lineage"] = source.get("lineage") or init_run
    if not cfg.tracking.parent_run and init_run:
        cfg = replace(cfg, tracking=replace(cfg.tracking, parent_run=init_run))
    return cfg, tags


def cpus_needed(cfg: PretrainConfig) -> float:
    """Logical CPUs the trainers and the decode pool take together (a local Ray gets at least that)."""
    data, trainer = cfg.data, cfg.trainer
    return max(1, trainer.num_workers) * trainer.cpus_per_worker + data.num_decode_workers * data.decode_cpus


def starting_point(cfg: PretrainConfig, run_uri: str, own_dataset: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The records of the checkpoint this run resumes from ({} for a fresh run) and of the checkpoint it
    starts from (that one, or ``run.init_checkpoint``), after every refusal: resume switched off, a
    dataset given to a resumed run, an architecture that does not fit."""
    existing = existing_checkpoint(run_uri, ray_managed=cfg.trainer.num_workers > 0)
    if existing and own_dataset:
        raise UserError(f"{existing}: a run given its own dataset cannot resume (its data position is unknown)")
    if existing and not cfg.run.resume:
        raise UserError(f"{cfg.run.output_dir} already holds checkpoints ({existing}); set run.resume=true to "
                        "continue that run, or choose another run.output_dir / run.name")
    resumed = read_record(existing) if existing else {}
    source = resumed or init_record(cfg.run.init_checkpoint)
    if source.get("config"):  # refused here, before any worker starts (workers check again)
        check_compatible(source["config"]["model"], cfg.model, existing or cfg.run.init_checkpoint)
    return resumed, source


def open_tracking(cfg: PretrainConfig, resumed: dict[str, Any], source: dict[str, Any], record: dict[str, Any],
                  global_batch: int, log_inputs: bool = True) -> tuple[PretrainConfig, str, str]:
    """Create the run's MLflow run (params and ``config.yaml``, lineage tags) or, when resuming, re-open it
    so the loss curve continues the interrupted one, recording what the resume changed
    (:meth:`core.tracking.Run.log_resumed_config`) and its git revision beside the original's. With
    ``log_inputs``, every source manifest goes in as an input dataset. Returns the config (parent run
    filled in), run id and lineage."""
    cfg, tags = lineage_tags(cfg, source, resuming=bool(resumed))
    run_id = resumed.get("mlflow_run_id", "")
    opened = attach_run(cfg.tracking, run_id, system_metrics=False) if run_id else start_run(
        cfg.tracking, cfg, tags, run_name=cfg.tracking.run_name or cfg.run.name, system_metrics=False)
    with opened as run:
        run_id = run.run_id or ""
        lineage = tags.get("vjepa2.lineage") or run_id
        revision = {"vjepa2.git_revision": record["git_revision"]}
        if run_id and resumed:
            revision = {f"vjepa2.git_revision.resume_{run.log_resumed_config(cfg)}": record["git_revision"]}
        run.set_tags({"vjepa2.lineage": lineage, **revision, "vjepa2.output_dir": cfg.run.output_dir,
                      "vjepa2.global_batch": global_batch})
        if log_inputs:
            for name, src in cfg.data.sources.items():
                if src.manifest and src.weight > 0:
                    run.log_input_manifest(src.manifest, name, "training", {"weight": src.weight, "kind": src.kind})
    return cfg, run_id, lineage


def log_export(run: Run, cfg: PretrainConfig, export_path: str) -> str:
    """The export as a pyfunc model (``train/mlflow_model.py``): uint8 clips ``[B, T, H, W, 3]`` in,
    float32 features ``[B, embed_dim]`` out; registered as ``tracking.registered_model`` if set."""
    versions = package_versions()
    requirements = [f"{name}=={versions[name]}" for name in ("vjepa2-ray", "torch", "numpy")
                    if versions[name] != "not installed"]
    signature = (("uint8", (-1, -1, -1, -1, 3)), ("float32", (-1, cfg.model.encoder.embed_dim)))
    return run.log_pyfunc_model(MODEL_CODE, export_path, "model", signature, requirements,
                                cfg.tracking.registered_model)


def check_before_ray(cfg: PretrainConfig, own_dataset: bool) -> None:
    """Refuse, in the driver and before Ray starts, what would otherwise fail inside a worker with a
    screenful of Ray tracebacks: bad manifests or data config (:func:`pipelines.sources.check_data`) and
    output or rejects storage that cannot be written (an unreachable endpoint, a missing bucket)."""
    if not own_dataset:
        check_data(cfg.data)
        storage.check_writable(cfg.data.rejects_dir)
    storage.check_writable(cfg.run.output_dir)


def pretrain(cfg: PretrainConfig, dataset: Any = None) -> TrainResult:
    """Run (or resume) one pretraining phase and export its newest checkpoint in Meta's layout.

    ``dataset``: a prepared Ray Dataset (columns of ``pipelines.dataset.build_train_dataset``) to train
    on instead of the VideoMix stream, for a fresh run only; benchmarks pass pre-decoded clips to time
    the training loop alone.
    """
    cfg = resolve(cfg)
    check_before_ray(cfg, own_dataset=dataset is not None)
    run_uri = storage.join(cfg.run.output_dir, CHECKPOINTS)
    resumed, source = starting_point(cfg, run_uri, own_dataset=dataset is not None)
    plan = plan_batch(cfg.optim, cfg.trainer)
    record = provenance(cfg)
    connect(cfg.ray, cpus_needed(cfg))
    cfg, run_id, lineage = open_tracking(cfg, resumed, source, record, plan.global_batch,
                                         log_inputs=dataset is None)
    storage.write_bytes(storage.join(cfg.run.output_dir, PARAMS_FILE), config_yaml(cfg).encode())
    recipe = PretrainRecipe(cfg)
    log.info("pretraining %s: %d workers x %d clips x %d accumulation = global batch %d, steps to %d, output %s",
             cfg.run.name, max(1, cfg.trainer.num_workers), plan.batch_per_worker, plan.grad_accum,
             plan.global_batch, recipe.stop_step(), cfg.run.output_dir)
    job = TrainJob(recipe, run_uri, run_id, {**record, "lineage": lineage})
    result = build_trainer(job, cfg.run.output_dir, plan.global_batch, train_data_config(cfg.data), dataset).fit()
    checkpoint, export_path, latest = export_newest(cfg, run_uri, lambda local, out: export_meta(local, out))
    with attach_run(cfg.tracking, run_id, system_metrics=False) as run:
        log_checkpoint(run, checkpoint, export_path, latest)
        run.set_tags({"vjepa2.model": log_export(run, cfg, export_path)})
    return TrainResult(export_path, checkpoint, cfg.run.output_dir, run_id, result.return_value or {})


def dry_run(cfg: PretrainConfig) -> None:
    """Everything :func:`pretrain` refuses before it starts Ray or opens a tracking run: data, storage,
    the checkpoint it would resume or start from, the batch plan."""
    check_before_ray(cfg, own_dataset=False)
    starting_point(cfg, storage.join(cfg.run.output_dir, CHECKPOINTS), own_dataset=False)
    plan_batch(cfg.optim, cfg.trainer)


def execute(cfg: PretrainConfig) -> int:
    result = pretrain(cfg)
    return print_result(result)


STAGE = ConfigStage(PretrainConfig, check=dry_run, execute=execute, resolve=resolve)


if __name__ == "__main__":
    raise SystemExit(module_main(__name__))
