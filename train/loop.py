"""The generic Ray Train worker loop: every duty a training run shares, around a :class:`Recipe`.

Each worker builds the recipe's networks (``Recipe.setup``), then restores, in this order of precedence,
the checkpoint Ray hands it (a restart after a failure, or a rerun of the same run), the newest checkpoint
in the run directory (local mode), or ``run.init_checkpoint`` (weights and optimizer from another run's
checkpoint with counters reset, e.g. a cooldown starting from the main phase; a Meta-layout file gives
weights only). It then runs ``Recipe.step`` until the recipe's stop step, logs from rank 0 (one line per
logged step with elapsed time, s/step and ETA), validates every ``trainer.eval_every`` steps on the
recipe's held-out stream, and checkpoints every ``trainer.checkpoint_every`` steps and at the end.

Data position: the dataset is a callable (:class:`TrainData`) that Ray calls whenever it starts a worker
group; it reads the checkpoint Ray is about to hand the workers and starts the stream at that
checkpoint's global sample index, so a restarted run neither repeats nor skips samples.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch.distributed as dist
from pyarrow import fs as pafs

from core import storage
from core.ray_logs import quiet_data_context
from core.redact import setup_logging
from models.checkpoint import checkpoint_kind
from train.health import StepTiming, Throughput, TimedIterator
from train.recipe import Recipe, StepResult
from train.run_tracking import attach_run
from train.state import (
    CHECKPOINT_PREFIX,
    STATE_FILE,
    TrainState,
    checkpoint_dir_name,
    latest_checkpoint,
    load_checkpoint,
    read_record,
    save_checkpoint,
)
from train.step_log import StepLog

log = logging.getLogger(__name__)

TRAIN, VAL = "train", "val"  # Ray Train dataset names
PICTURES = "pictures"  # where the recipe's pictures go: MLflow artifacts and <output_dir>/pictures


@dataclass
class TrainJob:
    """What the driver hands every worker (pickled by Ray; typed on both sides)."""

    recipe: Recipe
    run_uri: str  # where checkpoints live: <output_dir>/checkpoints
    mlflow_run_id: str = ""
    record: dict[str, Any] = field(default_factory=dict)  # provenance + lineage, written into every checkpoint

    @property
    def local_mode(self) -> bool:
        return self.recipe.trainer.num_workers == 0


@dataclass
class TrainData:
    """``TorchTrainer(datasets={"train": TrainData(...)})``: the training stream from the resume point on.

    Ray calls it in the controller each time a worker group starts; it reads the checkpoint Ray will
    hand to the workers and covers the samples still to be trained on.
    """

    recipe: Recipe
    run_uri: str
    global_batch: int

    def __call__(self) -> Any:
        start, step = 0, 0
        ckpt = latest_checkpoint(self.run_uri, ray_managed=self.recipe.trainer.num_workers > 0)
        if ckpt is not None:
            state = TrainState(**read_record(ckpt)["state"])
            start, step = state.samples_seen, state.step
        # one spare global batch: a sample that exhausts its redraws is dropped (and recorded)
        stop = start + (self.recipe.stop_step() - step + 1) * self.global_batch
        log.info("data stream: samples %d..%d (resuming at step %d)", start, stop, step)
        quiet_data_context()  # this runs in Ray Train's controller, whose Ray Data would draw progress bars
        return self.recipe.train_dataset(start, stop)


@dataclass
class ValData:
    """``datasets={"val": ValData(recipe)}``: the recipe's held-out stream, built by Ray's controller."""

    recipe: Recipe

    def __call__(self) -> Any:
        quiet_data_context()
        return self.recipe.val_dataset()


def _check_position(batch: dict, state: TrainState, global_batch: int) -> None:
    """The stream must start at the restored data position: the first global batch of a (re)start holds
    samples ``[samples_seen, samples_seen + global_batch)``. Catches a dataset built for another checkpoint
    than the one the workers restored."""
    if "sample_id" not in batch:
        return
    first = batch["sample_id"].min().reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(first, op=dist.ReduceOp.MIN)
    if not state.samples_seen <= int(first) < state.samples_seen + global_batch:
        raise RuntimeError(f"data stream starts at sample {int(first)}, but the restored checkpoint resumes at "
                           f"sample {state.samples_seen}: the dataset was built for another checkpoint")


def _chain(first: dict, rest: Iterator[dict]) -> Iterator[dict]:
    yield first
    yield from rest


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Worker:
    """One rank's run: restore, step, validate, log, checkpoint."""

    def __init__(self, job: TrainJob):
        import ray.train

        self.job, self.recipe = job, job.recipe
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.resume_from = self._resume_checkpoint()
        init = self.recipe.run.init_checkpoint
        meta_init = init if self.resume_from is None and init and checkpoint_kind(init) == "meta" else ""
        self.recipe.setup(self.world, self.rank, meta_init)
        self.state = self._restore()

    # ---- restore -------------------------------------------------------------------------------------
    def _resume_checkpoint(self) -> Any:
        """Ray's checkpoint for this worker group; in local mode the run directory's newest one."""
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None and self.job.local_mode and self.recipe.run.resume:
            uri = latest_checkpoint(self.job.run_uri, ray_managed=False)
            if uri is not None:
                fs, path = storage.filesystem_for(uri)
                ckpt = ray.train.Checkpoint(path, filesystem=fs)
        return ckpt

    def _load(self, checkpoint: Any) -> TrainState:
        with checkpoint.as_directory() as path:
            self.recipe.check_compatible(read_record(path), str(checkpoint.path))
            state = load_checkpoint(path, self.recipe.model, self.recipe.optimizer)
        return state

    def _restore(self) -> TrainState:
        import ray.train

        if self.resume_from is not None:
            state = self._load(self.resume_from)
            log.info("rank %d: resumed at step %d (sample %d) from %s", self.rank, state.step, state.samples_seen,
                     self.resume_from.path)
            return state
        init = self.recipe.run.init_checkpoint
        if init and checkpoint_kind(init) == "sharded":
            fs, path = storage.filesystem_for(init)
            self._load(ray.train.Checkpoint(path, filesystem=fs))
            log.info("initialised from %s (weights and optimizer; step and data reset)", init)
        return TrainState()

    # ---- data ----------------------------------------------------------------------------------------
    def _rows(self, name: str) -> Iterator[dict]:
        import ray.train

        shard = ray.train.get_dataset_shard(name)
        return shard.iter_batches(batch_size=self.recipe.plan.batch_per_worker, batch_format="numpy",
                                  drop_last=name == TRAIN, prefetch_batches=self.recipe.trainer.prefetch_batches)

    def batches(self) -> TimedIterator:
        """Collated training batches; the collate counter continues the restored one."""
        first_call = self.state.mask_step
        rows = self._rows(TRAIN)
        return TimedIterator(self.recipe.collate(batch, first_call + i) for i, batch in enumerate(rows))

    def validate(self) -> dict[str, float]:
        """One pass over the held-out stream (the same batches and masks every time)."""
        began = time.perf_counter()
        metrics = self.recipe.validate(self.recipe.collate(b, i, VAL) for i, b in enumerate(self._rows(VAL)))
        metrics["val_seconds"] = time.perf_counter() - began
        return metrics

    def log_pictures(self, run: Any) -> None:
        """Rank 0: the recipe's pictures of this validation, as MLflow artifacts under ``pictures/`` and
        as files under ``<output_dir>/pictures``."""
        with tempfile.TemporaryDirectory(prefix="pictures-") as tmp:
            root = Path(tmp)
            for path in self.recipe.pictures(root):
                relative = path.relative_to(root)
                run.log_artifact(path, str(PurePosixPath(PICTURES, relative.parent.as_posix())))
                storage.write_bytes(storage.join(self.recipe.run.output_dir, PICTURES, relative.as_posix()),
                                    path.read_bytes())

    # ---- checkpoint ----------------------------------------------------------------------------------
    def checkpoint(self, loss: float, extra: dict[str, float]) -> str:
        """Save this rank's shards and report them to Ray Train (all ranks, same directory name)."""
        import ray.train

        name = checkpoint_dir_name(self.state.step)
        uri = storage.join(self.job.run_uri, name)
        record = {**self.job.record, **self.recipe.record(), "checkpoint": uri,
                  "mlflow_run_id": self.job.mlflow_run_id, "loss": loss}
        metrics = {"step": self.state.step, "samples_seen": self.state.samples_seen, "loss": loss, **extra}
        with tempfile.TemporaryDirectory(prefix="vjepa2-ckpt-") as tmp:
            save_checkpoint(tmp, self.recipe.model, self.recipe.optimizer, self.state, record)
            if self.job.local_mode:  # Ray's local mode keeps no checkpoints: persist it where Ray would
                ray.train.report(metrics, checkpoint=self._persist_local(tmp, uri))
            else:
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=name)
        log.info("rank %d: checkpoint step %d -> %s", self.rank, self.state.step, uri)
        return uri

    def _persist_local(self, tmp: str, uri: str) -> Any:
        """Copy to the run directory, ``train_state.json`` last (it marks the checkpoint complete), then
        keep the newest ``trainer.num_to_keep``."""
        import ray.train

        fs, path = storage.filesystem_for(uri)
        fs.create_dir(path, recursive=True)
        for name in sorted(os.listdir(tmp), key=lambda n: n == STATE_FILE):
            pafs.copy_files(os.path.join(tmp, name), f"{path}/{name}", source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=fs)
        root_fs, root = storage.filesystem_for(self.job.run_uri)
        names = sorted(i.base_name for i in root_fs.get_file_info(pafs.FileSelector(root))
                       if i.type == pafs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX))
        keep = self.recipe.trainer.num_to_keep
        for old in names[:-keep] if keep > 0 else []:
            root_fs.delete_dir(f"{root}/{old}")
        return ray.train.Checkpoint(path, filesystem=fs)

    # ---- the loop ------------------------------------------------------------------------------------
    def _log_step(self, out: StepResult, stop: int, metrics: dict[str, float], began: float, first: int) -> None:
        done = self.state.step - first
        elapsed = time.perf_counter() - began
        per_step = elapsed / max(done, 1)
        log.info("step %d/%d loss %.4f %s | %.1f clips/s wait %.0f%% | %.2f s/step elapsed %s ETA %s",
                 self.state.step, stop, out.loss, out.summary, metrics["clips_per_s"],
                 100 * metrics["data_wait_frac"], per_step, _duration(elapsed),
                 _duration(per_step * (stop - self.state.step)))

    def run(self) -> dict[str, Any]:
        import ray.train

        recipe, trainer, plan = self.recipe, self.recipe.trainer, self.recipe.plan
        stop, start_step = recipe.stop_step(), self.state.step
        throughput = Throughput()
        losses: dict[int, float] = {}
        val_losses: dict[int, float] = {}
        checkpoints: list[str] = []
        batches = self.batches()
        run_began = time.perf_counter()
        step_log = StepLog(recipe.run.output_dir, self.rank, start_step)
        with attach_run(recipe.tracking, self.job.mlflow_run_id, self.rank == 0) as run, \
                contextlib.closing(step_log):
            run.set_tags({"vjepa2.world_size": self.world, "vjepa2.resumed_from_step": start_step})
            for step in range(start_step, stop):
                began, waited = time.perf_counter(), batches.wait_s
                micro: Iterator[dict] = batches
                if step == start_step:
                    first = next(batches)
                    _check_position(first, self.state, plan.global_batch)
                    micro = _chain(first, batches)
                out = recipe.step(step, micro)
                self.state.advance(plan.global_batch, plan.grad_accum)
                timing = StepTiming(time.perf_counter() - began, batches.wait_s - waited, out.clips * self.world,
                                    out.tokens * self.world)
                losses[self.state.step] = out.loss
                metrics = {"loss": out.loss, **out.metrics, "samples_seen": self.state.samples_seen,
                           **throughput.record(timing)}
                step_log.write({"step": self.state.step, "loss": out.loss, **out.metrics,
                                "samples_seen": self.state.samples_seen, "step_ms": 1000 * timing.seconds,
                                "data_wait_ms": 1000 * timing.data_wait_s})
                last = self.state.step == stop
                if self.state.step % trainer.log_every == 0 or last:
                    run.log_metrics(metrics, step=self.state.step)
                    self._log_step(out, stop, metrics, run_began, start_step)
                val: dict[str, float] = {}
                if recipe.validates() and (self.state.step % trainer.eval_every == 0 or last):
                    val = self.validate()
                    val_losses[self.state.step] = val["val_loss"]
                    run.log_metrics(val, step=self.state.step)
                    log.info("step %d/%d val_loss %.4f (%d clips, %.1f s)", self.state.step, stop, val["val_loss"],
                             val["val_clips"], val["val_seconds"])
                    if self.rank == 0:
                        self.log_pictures(run)
                if self.state.step % trainer.checkpoint_every == 0 or last:
                    step_log.sync()
                    checkpoints.append(self.checkpoint(out.loss, val))
                    run.log_text(checkpoints[-1], f"checkpoints/{checkpoint_dir_name(self.state.step)}.txt")
                elif val:  # intermediate results for schedulers (Tune's ASHA stops on val_loss)
                    ray.train.report({"step": self.state.step, "loss": out.loss, **val})
            summary = throughput.summary()
            run.log_summary(summary)
        return {"start_step": start_step, "final_step": self.state.step, "losses": losses, "val_losses": val_losses,
                "checkpoints": checkpoints, "throughput": summary, "world_size": self.world,
                "grad_accum": plan.grad_accum, **recipe.summary()}


def train_loop_per_worker(config: dict[str, TrainJob]) -> dict[str, Any]:
    """Ray Train entry point (``train_loop_config={"job": TrainJob(...)}``); rank 0's return value lands in
    ``Result.return_value``."""
    setup_logging()
    return Worker(config["job"]).run()
