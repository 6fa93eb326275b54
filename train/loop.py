"""The Ray Train worker side of pretraining: ``train_loop_per_worker`` and the resumable data stream.

Each worker builds the networks from the same seed, applies FSDP2 (train/fsdp.py), builds AdamW, then
restores, in this order of precedence, the checkpoint Ray hands it (a restart after a failure, or a rerun
of the same run), the newest checkpoint in the run directory (local mode), or ``run.init_checkpoint``
(a cooldown starting from the main phase: weights and optimizer, counters reset, vjepa2.md 4.2). It then
runs :func:`train.step.train_step` until ``trainer.stop_after`` / ``optim.total_steps``, logs to MLflow
from rank 0, and checkpoints every ``trainer.checkpoint_every`` steps and at the end.

Data position: the dataset is a callable (:class:`TrainData`) that Ray calls whenever it starts a worker
group; it reads the checkpoint Ray is about to hand the workers and starts the stream at that
checkpoint's global sample index, so a restarted run neither repeats nor skips samples.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from pyarrow import fs as pafs

from core import storage
from core.config import from_dict
from core.redact import setup_logging
from models.checkpoint import load_meta_checkpoint, load_state
from pipelines.config import DataConfig
from pipelines.dataset import build_train_dataset
from train.collate import Collator
from train.config import PretrainConfig
from train.fsdp import compute_dtype, data_parallel_mesh, parallelize, training_device
from train.health import CollapseMonitor, StepTiming, Throughput, TimedIterator
from train.optim import BatchPlan, build_optimizer, plan_batch
from train.run_tracking import attach_run
from train.schedules import Schedules, build_schedules
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
from train.step import JEPA, StepOutput, build_jepa, train_step

log = logging.getLogger(__name__)

DATASET = "train"


def stop_step(cfg: PretrainConfig) -> int:
    return min(cfg.trainer.stop_after or cfg.optim.total_steps, cfg.optim.total_steps)


@dataclass
class TrainData:
    """``TorchTrainer(datasets={"train": TrainData(...)})``: the clip stream from the resume point on.

    Ray calls it in the controller each time a worker group starts; it reads the checkpoint Ray will
    hand to the workers (train.state.latest_checkpoint) and covers the samples still to be trained on.
    """

    data_cfg: DataConfig
    run_uri: str
    stop_step: int
    global_batch: int
    ray_managed: bool  # False in local mode (see train.state.latest_checkpoint)

    def __call__(self) -> Any:
        start, step = 0, 0
        ckpt = latest_checkpoint(self.run_uri, ray_managed=self.ray_managed)
        if ckpt is not None:
            state = TrainState(**read_record(ckpt)["state"])
            start, step = state.samples_seen, state.step
        # one spare global batch: a sample that exhausts its redraws is dropped (and recorded)
        stop = start + (self.stop_step - step + 1) * self.global_batch
        log.info("data stream: samples %d..%d (resuming at step %d)", start, stop, step)
        return build_train_dataset(self.data_cfg, epoch=0, samples=stop, start_sample=start)


def _collated(batches: Iterator[dict], collator: Collator, first_call: int) -> Iterator[dict]:
    """Mask-sampler counter ``first_call + i`` for the i-th batch, so masks continue across a resume."""
    for i, batch in enumerate(batches):
        yield collator(batch, first_call + i)


def _check_position(batch: dict, state: TrainState, global_batch: int) -> None:
    """The stream must start at the restored data position: the first global batch of a (re)start holds
    samples ``[samples_seen, samples_seen + global_batch)``. Catches a dataset built for another checkpoint
    than the one the workers restored."""
    first = batch["sample_id"].min().reshape(1)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(first, op=dist.ReduceOp.MIN)
    if not state.samples_seen <= int(first) < state.samples_seen + global_batch:
        raise RuntimeError(f"data stream starts at sample {int(first)}, but the restored checkpoint resumes at "
                           f"sample {state.samples_seen}: the dataset was built for another checkpoint")


@dataclass
class Training:
    """Everything one rank trains with; the same in a Ray Train worker and in a plain process."""

    cfg: PretrainConfig
    jepa: JEPA
    optimizer: torch.optim.Optimizer
    plan: BatchPlan
    schedules: Schedules
    device: torch.device
    dtype: torch.dtype

    def step(self, step: int, micro_batches: Iterator[dict]) -> StepOutput:
        """Optimizer step ``step`` (0-based) over ``plan.grad_accum`` micro-batches."""
        return train_step(self.jepa, self.optimizer, micro_batches, self.schedules.at(step),
                          grad_accum=self.plan.grad_accum, device=self.device, dtype=self.dtype,
                          grad_clip=self.cfg.optim.grad_clip)


def setup_training(cfg: PretrainConfig, world_size: int, meta_init: str = "") -> Training:
    """Seeded networks (the same on every rank), optional Meta-layout weights, parallelism, AdamW."""
    trainer = cfg.trainer
    if not trainer.use_gpu:
        torch.set_num_threads(max(1, int(trainer.cpus_per_worker)))
    device = training_device(trainer.use_gpu)
    dtype = compute_dtype(trainer.precision, device)
    plan = plan_batch(cfg.optim, trainer, world_size)
    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank before sharding
    jepa = build_jepa(cfg.model)
    if meta_init:
        _load_meta_init(jepa, meta_init)
    jepa.to(device)
    mesh = data_parallel_mesh(device)
    for module, blocks, trainable in ((jepa.encoder, jepa.encoder.blocks, True),
                                      (jepa.predictor, jepa.predictor.predictor_blocks, True),
                                      (jepa.target_encoder, jepa.target_encoder.blocks, False)):
        parallelize(module, blocks, trainer, mesh, dtype, trainable=trainable)
    optimizer = build_optimizer(jepa.encoder, jepa.predictor, cfg.optim)
    return Training(cfg, jepa, optimizer, plan, build_schedules(cfg.optim, plan.lr_scale), device, dtype)


def _load_meta_init(jepa: JEPA, path: str) -> None:
    """A Meta-layout file (ours or a released one): encoder, predictor and target encoder weights."""
    ckpt = load_meta_checkpoint(path)
    load_state(jepa.encoder, ckpt.state("encoder"), "encoder", ckpt.path)
    load_state(jepa.predictor, ckpt.state("predictor"), "predictor", ckpt.path)
    target = ckpt.target_encoder if ckpt.target_encoder is not None else ckpt.state("encoder")
    load_state(jepa.target_encoder, target, "target_encoder", ckpt.path)
    log.info("initialised from %s (Meta layout; fresh optimizer)", ckpt.path)


class _Worker:
    """One rank's training state and its duties (restore, step, log, checkpoint)."""

    def __init__(self, loop_cfg: dict[str, Any]):
        import ray.train

        self.cfg: PretrainConfig = from_dict(PretrainConfig, loop_cfg["config"], origin_name="train_loop_config")
        self.loop_cfg = loop_cfg
        self.local_mode = self.cfg.trainer.num_workers == 0
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.resume_from = self._resume_checkpoint()
        meta_init = self.cfg.run.init_checkpoint if self.resume_from is None and self._init_is_meta_file() else ""
        self.training = setup_training(self.cfg, self.world, meta_init)
        self.state = self._restore()

    # ---- restore -------------------------------------------------------------------------------------
    def _resume_checkpoint(self) -> Any:
        """Ray's checkpoint for this worker group; in local mode the run directory's newest one."""
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None and self.local_mode and self.cfg.run.resume:
            uri = latest_checkpoint(self.loop_cfg["run_uri"], ray_managed=False)
            if uri is not None:
                fs, path = storage.filesystem_for(uri)
                ckpt = ray.train.Checkpoint(path, filesystem=fs)
        return ckpt

    def _init_is_meta_file(self) -> bool:
        init = self.cfg.run.init_checkpoint
        return bool(init) and not storage.exists(storage.join(init, STATE_FILE))

    def _restore(self) -> TrainState:
        import ray.train

        if self.resume_from is not None:
            with self.resume_from.as_directory() as path:
                state, _ = load_checkpoint(path, self.training.jepa, self.training.optimizer, self.cfg.model)
            log.info("rank %d: resumed at step %d (sample %d) from %s", self.rank, state.step, state.samples_seen,
                     self.resume_from.path)
            return state
        init = self.cfg.run.init_checkpoint
        if init and not self._init_is_meta_file():
            fs, path = storage.filesystem_for(init)
            with ray.train.Checkpoint(path, filesystem=fs).as_directory() as local:
                load_checkpoint(local, self.training.jepa, self.training.optimizer, self.cfg.model)
            log.info("initialised from %s (weights and optimizer; step and data reset)", init)
        return TrainState()

    # ---- data ----------------------------------------------------------------------------------------
    def batches(self) -> TimedIterator:
        import ray.train

        shard = ray.train.get_dataset_shard(DATASET)
        rows = shard.iter_batches(batch_size=self.training.plan.batch_per_worker, batch_format="numpy", drop_last=True,
                                  prefetch_batches=self.cfg.trainer.prefetch_batches)
        enc = self.cfg.model.encoder
        collator = Collator(self.cfg.masks, self.cfg.data, self.cfg.run.seed, self.rank, enc.patch_size,
                            enc.tubelet_size)
        return TimedIterator(_collated(rows, collator, self.state.mask_step))

    # ---- checkpoint ----------------------------------------------------------------------------------
    def checkpoint(self, out: StepOutput) -> str:
        """Save this rank's shards and report them to Ray Train (all ranks, same directory name)."""
        import ray.train

        name = checkpoint_dir_name(self.state.step)
        uri = storage.join(self.loop_cfg["run_uri"], name)
        schedules = vars(self.training.schedules)
        record = {**self.loop_cfg["record"], "batch_plan": asdict(self.training.plan), "checkpoint": uri,
                  "schedules": {k: {"type": type(v).__name__, **asdict(v)} for k, v in schedules.items()},
                  "mlflow_run_id": self.loop_cfg.get("mlflow_run_id", ""), "loss": out.loss}
        metrics = {"step": self.state.step, "samples_seen": self.state.samples_seen, "loss": out.loss}
        with tempfile.TemporaryDirectory(prefix="vjepa2-ckpt-") as tmp:
            save_checkpoint(tmp, self.training.jepa, self.training.optimizer, self.state, record)
            if self.local_mode:  # Ray's local mode keeps no checkpoints: persist it where Ray would
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
        root_fs, root = storage.filesystem_for(self.loop_cfg["run_uri"])
        names = sorted(i.base_name for i in root_fs.get_file_info(pafs.FileSelector(root))
                       if i.type == pafs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX))
        keep = self.cfg.trainer.num_to_keep
        for old in names[:-keep] if keep > 0 else []:
            root_fs.delete_dir(f"{root}/{old}")
        return ray.train.Checkpoint(path, filesystem=fs)

    # ---- the loop ------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        stop = stop_step(self.cfg)
        start_step = self.state.step
        training, trainer = self.training, self.cfg.trainer
        throughput = Throughput()
        collapse = CollapseMonitor(trainer.target_std_floor)
        curves: dict[str, dict[int, float]] = {"losses": {}, "target_std": {}}
        checkpoints: list[str] = []
        batches = self.batches()
        with attach_run(self.cfg.tracking, self.loop_cfg.get("mlflow_run_id", ""), self.rank == 0) as run:
            run.set_tags({"vjepa2.world_size": self.world, "vjepa2.resumed_from_step": start_step})
            for step in range(start_step, stop):
                began, waited = time.perf_counter(), batches.wait_s
                micro: Iterator[dict] = batches
                if step == start_step:
                    first = next(batches)
                    _check_position(first, self.state, training.plan.global_batch)
                    micro = _chain(first, batches)
                out = training.step(step, micro)
                self.state.advance(training.plan.global_batch, training.plan.grad_accum)
                timing = StepTiming(time.perf_counter() - began, batches.wait_s - waited, out.clips * self.world,
                                    out.tokens * self.world)
                curves["losses"][self.state.step] = out.loss
                curves["target_std"][self.state.step] = out.target_std
                hp = training.schedules.at(step)
                metrics = {"loss": out.loss, **{f"loss/mask_{i}": v for i, v in enumerate(out.per_cfg)},
                           "lr": hp.lr, "wd": hp.weight_decay, "ema": hp.ema, "target_std": out.target_std,
                           "collapse_warning": float(collapse.check(self.state.step, out.target_std)),
                           "samples_seen": self.state.samples_seen, **throughput.record(timing)}
                if self.state.step % trainer.log_every == 0 or self.state.step == stop:
                    run.log_metrics(metrics, step=self.state.step)
                    log.info("step %d/%d loss %.4f lr %.3g std %.3f %.1f clips/s wait %.0f%%", self.state.step,
                             stop, out.loss, hp.lr, out.target_std, metrics["clips_per_s"],
                             100 * metrics["data_wait_frac"])
                if self.state.step % trainer.checkpoint_every == 0 or self.state.step == stop:
                    checkpoints.append(self.checkpoint(out))
                    run.log_text(checkpoints[-1], f"checkpoints/{checkpoint_dir_name(self.state.step)}.txt")
            summary = throughput.summary()
            run.log_metrics({f"summary/{k}": v for k, v in summary.items()})
        return {"start_step": start_step, "final_step": self.state.step, **curves, "checkpoints": checkpoints,
                "throughput": summary, "world_size": self.world, "grad_accum": training.plan.grad_accum,
                "collapsed": collapse.collapsed}


def _chain(first: dict, rest: Iterator[dict]) -> Iterator[dict]:
    yield first
    yield from rest


def train_loop_per_worker(loop_cfg: dict[str, Any]) -> dict[str, Any]:
    """Ray Train entry point; rank 0's return value lands in ``Result.return_value``."""
    setup_logging()
    return _Worker(loop_cfg).run()

