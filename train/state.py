"""Sharded training checkpoints (torch.distributed.checkpoint) and their export to Meta's layout.

A checkpoint is one directory ``step_<8 digits>/`` holding
- the DCP shards of ``{"model": encoder/predictor/target_encoder, "optim": AdamW}``, addressed by fully
  qualified parameter names, so it loads on any number of ranks (DCP reshards) or in one process;
- ``train_state.json``: the step, the data position (global sample index), the mask-sampler counter, the
  schedules' state and config, plus provenance: git revision, package versions, the resolved config.

Every rank writes its shards to a local directory and hands it to ``ray.train.report``, which merges
them into one directory in the run's storage and keeps ``num_to_keep`` of them (docs/reference.md R-ray-2.6,
R-ray-2.7). The LR, WD and EMA schedules are pure functions of the step (train/schedules.py), so restoring the step
restores them. Resuming checks the architecture first and refuses a mismatch with a message naming the fields.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import warnings
from dataclasses import asdict, dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from pyarrow import fs as pafs
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from core import storage
from core.config import flatten, to_dict
from core.errors import UserError
from core.redact import redact
from models.checkpoint import save_meta_checkpoint
from models.config import ModelConfig
from models.sharded import (
    STATE_FILE,
    check_dcp_metadata,
    is_sharded_checkpoint,
    load_dcp,
    load_sharded_checkpoint,
    read_record,
)

log = logging.getLogger(__name__)
# DCP warns on every save/load without a process group; local mode and exports do that on purpose.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")

CHECKPOINT_PREFIX = "step_"
FORMAT_VERSION = 1
GIT_REVISION_ENV = "VJEPA2_RAY_GIT_REVISION"
PACKAGES = ("torch", "ray", "numpy", "mlflow", "pyarrow", "vjepa2-ray")
# Fields that may change between phases without touching a weight: RoPE has no position table, so frames
# and resolution change in the cooldown (progressive resolution, docs/reference.md R-vjepa2-4.2).
RESOLUTION_FIELDS = {"preset", "encoder.img_size", "encoder.num_frames", "predictor.square_grid"}


class IncompatibleCheckpoint(UserError):
    """A checkpoint whose architecture differs from the run's model config."""


@dataclass
class TrainState:
    """Counters that, with the weights and the optimizer, define where a run stands."""

    step: int = 0  # optimizer steps done
    samples_seen: int = 0  # data position: global index of the next sample
    # collate calls per rank so far: seeds per-batch randomness (the masks); the name predates other recipes
    mask_step: int = 0

    def advance(self, global_batch: int, grad_accum: int) -> None:
        self.step += 1
        self.samples_seen += global_batch
        self.mask_step += grad_accum


def checkpoint_dir_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def git_revision(repo: Path | None = None) -> str:
    """``<sha>`` (``+dirty`` with local changes) of the source tree, ``$VJEPA2_RAY_GIT_REVISION`` where
    there is no git checkout (a ``ray job submit`` working dir), else ``unknown``."""
    if os.environ.get(GIT_REVISION_ENV):
        return os.environ[GIT_REVISION_ENV]
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}+dirty" if dirty else sha


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def provenance(config: Any) -> dict[str, Any]:
    """What produced a checkpoint: source revision, package versions, the resolved config.

    The config is redacted (secret-looking keys masked, as in MLflow params): the record is written in
    clear text into every checkpoint's ``train_state.json`` and copied to MLflow as an artifact.
    """
    return {"git_revision": git_revision(), "packages": package_versions(),
            "config": redact(config if isinstance(config, dict) else to_dict(config))}


def architecture(model_cfg: ModelConfig | dict[str, Any]) -> dict[str, Any]:
    """The model config fields that decide tensor shapes (flattened, resolution fields left out)."""
    data = model_cfg if isinstance(model_cfg, dict) else to_dict(model_cfg)
    data = json.loads(json.dumps(data))  # the form a saved record has (tuples become lists)
    return {k: v for k, v in flatten(data).items() if k not in RESOLUTION_FIELDS}


def check_compatible(saved_model: dict[str, Any], model_cfg: ModelConfig, where: str) -> None:
    """Raise :class:`IncompatibleCheckpoint` naming every architecture field that differs."""
    saved, wanted = architecture(saved_model), architecture(model_cfg)
    diffs = [f"{k}: checkpoint {saved.get(k)!r} != run {wanted.get(k)!r}"
             for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
    if diffs:
        raise IncompatibleCheckpoint(f"{where}: checkpoint architecture does not match this run's model "
                                     f"config ({'; '.join(diffs)}); use the model preset it was trained with "
                                     "or start a new run (another run.name / output_dir)")


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _is_distributed() else 0


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
                    record: dict[str, Any]) -> None:
    """Collective: every rank writes its shards to its own local ``path``; rank 0 adds ``train_state.json``.

    ``record`` is :func:`provenance` plus whatever the caller adds (schedules, batch plan, MLflow run id).
    """
    Path(path).mkdir(parents=True, exist_ok=True)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path), no_dist=not _is_distributed())
    if _rank() == 0:
        payload = {"format": FORMAT_VERSION, "state": asdict(state),
                   "world_size": dist.get_world_size() if _is_distributed() else 1, **record}
        Path(path, STATE_FILE).write_text(json.dumps(payload, indent=1, sort_keys=True, default=str))


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> TrainState:
    """Collective: restore weights and AdamW state into the (possibly sharded) ``model``; DCP reshards.

    Returns the saved :class:`TrainState`. Check the architecture first (the recipe's ``check_compatible``).
    """
    record = read_record(str(path))
    model_sd, optim_sd = get_state_dict(model, optimizer)
    # get_state_dict gives a fresh AdamW state for every parameter, but parameters that never had a gradient
    # (the unused mask tokens, docs/reference.md R-vjepa2-2) have none in the checkpoint: ask only for what was saved.
    saved = check_dcp_metadata(path).state_dict_metadata
    optim_sd["state"] = {fqn: value for fqn, value in optim_sd["state"].items()
                         if f"optim.state.{fqn}.step" in saved}
    state = {"model": model_sd, "optim": optim_sd}
    load_dcp(state, path, no_dist=not _is_distributed())
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"], options=StateDictOptions(strict=False))
    return TrainState(**record["state"])


def export_meta(path: str | Path, out: str, model_cfg: ModelConfig | None = None) -> str:
    """Write checkpoint ``path`` in Meta's release layout (encoder, predictor, target_encoder) to ``out``.

    The result loads with ``models.checkpoint.load_encoder`` / ``vjepa2-ray embed``; the training record
    (step, git revision, config) rides along under ``vjepa2_ray_train``, a key Meta's loaders ignore.
    """
    ckpt = load_sharded_checkpoint(path)
    record = ckpt.extras["vjepa2_ray_train"]
    extra = {"epoch": record["state"]["step"], "vjepa2_ray_train": {
        k: record.get(k) for k in ("state", "git_revision", "packages", "mlflow_run_id", "lineage", "world_size")}}
    save_meta_checkpoint(out, ckpt.state("encoder"), ckpt.state("predictor"), ckpt.state("target_encoder"),
                         model_cfg=model_cfg or ckpt.model_cfg, extra=extra)
    log.info("exported %s -> %s (Meta layout)", path, out)
    return out


def link_latest(export: str, latest: str) -> str:
    """Point ``latest`` (Meta's ``latest.pt``, weights only here) at the newest export: a relative
    symlink in a local run folder (replaced atomically, no second copy of the weights), a server-side
    copy on S3, which has no links. Returns ``latest``."""
    if storage.is_s3(latest):
        with storage.storage_errors(latest, "copy the export to"):
            fs, src = storage.filesystem_for(export)
            fs.copy_file(src, storage.filesystem_for(latest)[1])
        return latest
    target = Path(latest)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(Path(export).resolve(), target.parent.resolve()))
    os.replace(tmp, target)
    return latest


def ray_checkpoint(run_uri: str) -> str | None:
    """The checkpoint Ray Train registered last in run directory ``run_uri`` (the one it hands restarted
    workers), through Ray's public ``Result.from_path``; None when Ray has no record of the run there.
    A ``step_*`` directory that exists but is not registered yet (some rank's upload still running)
    does not count."""
    import ray.train

    fs, path = storage.filesystem_for(run_uri)
    try:
        result = ray.train.Result.from_path(path, storage_filesystem=fs)
    except RuntimeError:  # no run directory, or no checkpoint record in it
        return None
    return storage.join(run_uri, Path(result.checkpoint.path).name) if result.checkpoint else None


def newest_complete_checkpoint(run_uri: str) -> str | None:
    """The newest ``step_*`` directory with a ``train_state.json`` (written after its shards): the
    checkpoint of a local-mode run, which keeps no Ray record."""
    fs, root = storage.filesystem_for(run_uri)
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory
                   and i.base_name.startswith(CHECKPOINT_PREFIX))
    for name in reversed(names):
        candidate = storage.join(run_uri, name)
        if is_sharded_checkpoint(candidate):
            return candidate
    return None


def latest_checkpoint(run_uri: str, *, ray_managed: bool = True) -> str | None:
    """The checkpoint a (re)started run resumes from: Ray's record for Ray Train workers, the newest
    complete directory in local mode."""
    return ray_checkpoint(run_uri) if ray_managed else newest_complete_checkpoint(run_uri)
