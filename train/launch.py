"""The driver side of the generic loop: which checkpoint a run resumes from, and the TorchTrainer.

Every training stage (pretraining, post-training, probe training) launches through here: it refuses a
run directory kept in the other mode, builds one ``TorchTrainer`` around :func:`train.loop.
train_loop_per_worker` with the recipe's scaling, checkpoint and failure configs, and hands the
datasets to Ray Train as callables, so each (re)started worker group streams from its resume point.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import storage
from core.errors import UserError
from train.config import TrainerConfig
from train.fsdp import backend
from train.loop import TRAIN, VAL, TrainData, TrainJob, ValData, train_loop_per_worker
from train.state import latest_checkpoint, link_latest, newest_complete_checkpoint, ray_checkpoint, read_record

log = logging.getLogger(__name__)

LATEST = "latest.pt"  # Meta's name; here a link to the newest export
CHECKPOINTS = "checkpoints"  # Ray Train run name: checkpoints live in <output_dir>/checkpoints/


def aligned_decode_batch(trainer: TrainerConfig, block: int) -> int:
    """The decode block size (``block`` rows asked for) to use: Ray Train deals the stream's blocks to the
    workers in turn, so with several workers each step consumes exactly its share of samples only if every
    micro-batch is made of whole blocks; otherwise a checkpoint's sample count would not be the prefix of
    the stream that was trained on, and a resume would repeat some samples and skip others."""
    per_worker = trainer.batch_size_per_worker
    if trainer.num_workers <= 1 or per_worker % block == 0:
        return block
    aligned = math.gcd(per_worker, block)
    log.info("decode_batch_size %d -> %d so that whole blocks make up each worker's batch of %d",
             block, aligned, per_worker)
    return aligned


@dataclass
class TrainResult:
    """What a finished (or stopped) training run (pretraining, post-training) left behind."""

    export_path: str  # Meta-layout file of the newest checkpoint
    checkpoint: str  # the newest sharded checkpoint
    output_dir: str
    mlflow_run_id: str
    worker: dict[str, Any]  # rank 0's summary: start/final step, per-step losses, throughput


def print_result(result: TrainResult) -> int:
    """A training stage's last lines: the MLflow run and checkpoint, then the export alone, so commands chain."""
    print(f"MLflow run {result.mlflow_run_id}; checkpoint {result.checkpoint}")
    print(result.export_path)
    return 0


def log_checkpoint(run: Any, checkpoint: str, export_path: str, latest: str) -> None:
    """The final checkpoint's record and where it and its export are, into a tracking run."""
    run.log_text(json.dumps(read_record(checkpoint), indent=1, default=str), "checkpoint/train_state.json")
    run.log_text(json.dumps({"checkpoint": checkpoint, "export": export_path, "latest": latest}, indent=1),
                 "checkpoint/locations.json")
    run.set_tags({"vjepa2.checkpoint": checkpoint, "vjepa2.export": export_path})


def existing_checkpoint(run_uri: str, ray_managed: bool) -> str | None:
    """The checkpoint this run would resume from. Refuses a run directory kept in the other mode: Ray
    Train workers resume from Ray's checkpoint record, which local mode neither reads nor updates."""
    recorded, unrecorded = ray_checkpoint(run_uri), newest_complete_checkpoint(run_uri)
    if not ray_managed and recorded:
        raise UserError(f"{run_uri} was written by Ray Train workers; continue it with trainer.num_workers >= 1")
    if ray_managed and not recorded and unrecorded:
        raise UserError(f"{run_uri} holds checkpoints Ray Train has no record of ({unrecorded}: written in local "
                        "mode, or by a run stopped before its first checkpoint registered); continue it with "
                        "trainer.num_workers=0 or choose another run.output_dir")
    return recorded if ray_managed else unrecorded


def build_trainer(job: TrainJob, output_dir: str, global_batch: int, dataset_config: Any, dataset: Any = None) -> Any:
    """The TorchTrainer for ``job``, keeping Ray's run record in ``<output_dir>/checkpoints``.

    ``dataset_config``: Ray Train's ingest options (``pipelines.dataset.train_data_config``); ``dataset``:
    a prepared training Dataset instead of the recipe's stream (benchmarks time the loop alone with it).
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    recipe, trainer = job.recipe, job.recipe.trainer
    fs, path = storage.filesystem_for(output_dir)
    datasets: dict[str, Any] = {TRAIN: dataset or TrainData(recipe, job.run_uri, global_batch)}
    if recipe.validates():
        datasets[VAL] = ValData(recipe)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
        torch_config=TorchConfig(backend=backend(trainer.use_gpu)),
        scaling_config=ray.train.ScalingConfig(num_workers=trainer.num_workers, use_gpu=trainer.use_gpu,
                                               resources_per_worker={"CPU": trainer.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=CHECKPOINTS, storage_path=path, storage_filesystem=fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=trainer.num_to_keep or None),
            failure_config=ray.train.FailureConfig(max_failures=trainer.max_failures)),
        datasets=datasets,
        dataset_config=dataset_config,
    )


def export_newest(cfg: Any, run_uri: str, export: Any) -> tuple[str, str, str]:
    """Export the newest checkpoint of the run ``cfg`` describes with ``export(local_dir, out) -> path`` to
    ``<run.output_dir>/<run.name>-step_<N>.pt`` and point ``latest.pt`` at it; (checkpoint, export, latest)."""
    output_dir, name = cfg.run.output_dir, cfg.run.name
    checkpoint = latest_checkpoint(run_uri, ray_managed=cfg.trainer.num_workers > 0)
    if checkpoint is None:
        raise UserError(f"run finished without a checkpoint in {run_uri}")
    out = storage.join(output_dir, f"{name}-{Path(checkpoint).name}.pt")
    export_path = export_checkpoint(checkpoint, lambda local: export(local, out))
    return checkpoint, export_path, link_latest(export_path, storage.join(output_dir, LATEST))


def export_checkpoint(checkpoint: str, export: Any) -> str:
    """``export(local_dir) -> path`` on a (local or S3) sharded checkpoint, fetched by Ray if remote."""
    import ray.train

    fs, path = storage.filesystem_for(checkpoint)
    with ray.train.Checkpoint(path, filesystem=fs).as_directory() as local:
        return export(local)
