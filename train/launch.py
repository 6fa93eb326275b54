"""The driver side of the generic loop: which checkpoint a run resumes from, and the TorchTrainer.

Every training stage (pretraining, post-training, probe training) launches through here: it refuses a
run directory kept in the other mode, builds one ``TorchTrainer`` around :func:`train.loop.
train_loop_per_worker` with the recipe's scaling, checkpoint and failure configs, and hands the
datasets to Ray Train as callables, so each (re)started worker group streams from its resume point.
"""

from __future__ import annotations

from typing import Any

from core import storage
from core.errors import UserError
from train.fsdp import backend
from train.loop import TRAIN, VAL, TrainData, TrainJob, ValData, train_loop_per_worker
from train.state import newest_complete_checkpoint, ray_checkpoint

CHECKPOINTS = "checkpoints"  # Ray Train run name: checkpoints live in <output_dir>/checkpoints/


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


def export_checkpoint(checkpoint: str, export: Any) -> str:
    """``export(local_dir) -> path`` on a (local or S3) sharded checkpoint, fetched by Ray if remote."""
    import ray.train

    fs, path = storage.filesystem_for(checkpoint)
    with ray.train.Checkpoint(path, filesystem=fs).as_directory() as local:
        return export(local)
