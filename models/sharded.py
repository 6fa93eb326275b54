"""This project's sharded training checkpoints, read in one process without Ray or a process group.

A training checkpoint is a directory written by ``train.state.save_checkpoint``: the
torch.distributed.checkpoint (DCP) shards of ``{"model": ..., "optim": ...}`` and ``train_state.json``
(the step, the data position, provenance and the resolved config). Reading one here is plain
PyTorch, so frozen encoders, exports and conversions can use a training checkpoint directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from core import storage
from core.config import from_dict
from models.checkpoint import MODEL_KEYS, CheckpointError, MetaCheckpoint, StateDict
from models.config import ModelConfig

STATE_FILE = "train_state.json"  # written last: its presence marks a complete checkpoint


def is_sharded_checkpoint(uri: str) -> bool:
    return storage.exists(storage.join(str(uri), STATE_FILE))


def read_record(path: str | Path) -> dict[str, Any]:
    """``train_state.json`` of a checkpoint directory (local path or s3:// URI)."""
    state_uri = storage.join(str(path), STATE_FILE)
    if not storage.exists(state_uri):
        raise CheckpointError(f"{path}: not a training checkpoint (no {STATE_FILE})")
    try:
        return json.loads(storage.read_bytes(state_uri))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{state_uri}: corrupt checkpoint record: {exc}") from exc


def read_model_state(path: str | Path) -> StateDict:
    """The full (unsharded) model state of a local checkpoint directory."""
    meta = dcp.FileSystemReader(str(path)).read_metadata()
    model = {key[len("model."):]: torch.empty(entry.size, dtype=entry.properties.dtype)
             for key, entry in meta.state_dict_metadata.items()
             if key.startswith("model.") and isinstance(entry, TensorStorageMetadata)}
    dcp.load({"model": model}, checkpoint_id=str(path), no_dist=True)
    return model


def load_sharded_checkpoint(path: str | Path) -> MetaCheckpoint:
    """A local training checkpoint directory as the parts of a Meta-layout file (same key names)."""
    record = read_record(path)
    model_cfg = from_dict(ModelConfig, record["config"]["model"], origin_name=f"{path}/{STATE_FILE}")
    full = read_model_state(path)
    parts = {name: {k[len(name) + 1:]: v for k, v in full.items() if k.startswith(f"{name}.")} or None
             for name in MODEL_KEYS}
    return MetaCheckpoint(path=str(path), model_cfg=model_cfg, extras={"vjepa2_ray_train": record}, **parts)
