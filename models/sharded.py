"""This project's sharded training checkpoints, read in one process without Ray or a process group.

A training checkpoint is a directory written by ``train.state.save_checkpoint``: the
torch.distributed.checkpoint (DCP) shards of ``{"model": ..., "optim": ...}`` and ``train_state.json``
(the step, the data position, provenance and the resolved config). Reading one here is plain
PyTorch, so frozen encoders, exports and conversions can use a training checkpoint directly.

DCP unpickles a checkpoint's ``.metadata`` with plain ``pickle`` and its non-tensor entries with
``torch.load(weights_only=False)`` (torch 2.14: ``torch/distributed/checkpoint/filesystem.py``
``FileSystemReader.read_metadata``, ``default_planner.py`` ``DefaultLoadPlanner.load_bytes``): a crafted
directory could run code on load. Every DCP read here goes through :class:`CheckedReader` and
:class:`CheckedLoadPlanner`: the metadata is first unpickled by :func:`check_dcp_metadata`, which admits
only the classes DCP metadata is made of, and every non-tensor entry is first loaded with
``weights_only=True``; anything else is a :class:`CheckpointError` before DCP touches it.
"""

from __future__ import annotations

import io
import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

from core import storage
from core.config import from_dict
from models.checkpoint import MODEL_KEYS, CheckpointError, MetaCheckpoint, StateDict
from models.config import ModelConfig

STATE_FILE = "train_state.json"  # written last: its presence marks a complete checkpoint
METADATA_FILE = ".metadata"  # DCP's (torch.distributed.checkpoint.filesystem)
# What DCP metadata pickles reference (torch 2.14): its own dataclasses and enums, the file reader's
# _StorageInfo, torch.Size, dtypes, layouts by name, and a pathlib path (StorageMeta.checkpoint_id).
METADATA_GLOBALS: dict[str, set[str]] = {
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


def _metadata_global(module: str, name: str) -> bool:
    """Whether DCP metadata may reference ``module.name``: an allow-listed name, a class defined in
    ``torch.distributed.checkpoint.metadata``, or a torch dtype."""
    if "." in name:
        return False
    if name in METADATA_GLOBALS.get(module, ()):
        return True
    if module == dcp_metadata.__name__:
        value = getattr(dcp_metadata, name, None)
        return isinstance(value, type) and value.__module__ == module
    return module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)


class _Refused(pickle.UnpicklingError):
    """A global that DCP metadata never references (as opposed to a corrupt pickle)."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if not _metadata_global(module, name):
            raise _Refused(f"it references {module}.{name}, which DCP metadata never holds")
        return super().find_class(module, name)


def check_dcp_metadata(path: str | Path, name: str = METADATA_FILE) -> Metadata:
    """The DCP metadata of checkpoint directory ``path``, unpickled admitting only what DCP metadata is
    made of; a :class:`CheckpointError` for anything else (the payload never runs) or a corrupt file."""
    meta_path = Path(path, name)
    try:
        data = meta_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: no readable DCP metadata ({name}): {exc}") from exc
    try:
        meta = _MetadataUnpickler(io.BytesIO(data)).load()
    except _Refused as exc:
        raise CheckpointError(f"{meta_path}: refused to load: {exc} (a crafted checkpoint could run code); "
                              "use a checkpoint written by this project") from exc
    except Exception as exc:  # truncated or garbled pickles raise EOFError, ValueError, ...
        raise CheckpointError(f"{meta_path}: corrupt DCP metadata: {type(exc).__name__}: {exc}") from exc
    if not isinstance(meta, Metadata):
        raise CheckpointError(f"{meta_path}: not DCP metadata (holds a {type(meta).__name__})")
    return meta


class CheckedReader(dcp.FileSystemReader):
    """DCP's file reader, with the metadata checked by :func:`check_dcp_metadata` before DCP unpickles it."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        check_dcp_metadata(self.path, METADATA_FILE if rank is None else f"__{rank}{METADATA_FILE}")
        return super().read_metadata(*args, **kwargs)


class CheckedLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, whose non-tensor entries must load with ``weights_only=True`` first
    (DCP itself loads them with ``weights_only=False``)."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        data = value.read()
        try:
            torch.load(io.BytesIO(data), weights_only=True)
        except Exception as exc:  # pickle.UnpicklingError for a refused global, others for garbage
            text = " ".join(str(exc).split())
            found = re.search(r"(unsupported|Unsupported global:) GLOBAL [\w.]+", text)
            raise CheckpointError(f"checkpoint entry {read_item.dest_index.fqn}: refused to load: "
                                  f"{found.group(0) if found else text[:200]} (a crafted checkpoint could run "
                                  "code); use a checkpoint written by this project") from exc
        super().load_bytes(read_item, io.BytesIO(data))


def load_dcp(state: dict[str, Any], path: str | Path, no_dist: bool = True) -> None:
    """``dcp.load`` of local checkpoint directory ``path`` into ``state``, through the checks above; a
    refusal comes out as its :class:`CheckpointError`, not wrapped in DCP's per-rank report."""
    try:
        dcp.load(state, storage_reader=CheckedReader(str(path)), planner=CheckedLoadPlanner(), no_dist=no_dist)
    except CheckpointException as exc:
        refused = [error for error, _ in exc.failures.values() if isinstance(error, CheckpointError)]
        if refused:
            raise refused[0] from None
        raise


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
    meta = check_dcp_metadata(path)
    model = {key[len("model."):]: torch.empty(entry.size, dtype=entry.properties.dtype)
             for key, entry in meta.state_dict_metadata.items()
             if key.startswith("model.") and isinstance(entry, TensorStorageMetadata)}
    load_dcp({"model": model}, path)
    return model


def load_sharded_checkpoint(path: str | Path) -> MetaCheckpoint:
    """A local training checkpoint directory as the parts of a Meta-layout file (same key names)."""
    record = read_record(path)
    model_cfg = from_dict(ModelConfig, record["config"]["model"], origin_name=f"{path}/{STATE_FILE}")
    full = read_model_state(path)
    parts = {name: {k[len(name) + 1:]: v for k, v in full.items() if k.startswith(f"{name}.")} or None
             for name in MODEL_KEYS}
    return MetaCheckpoint(path=str(path), model_cfg=model_cfg, extras={"vjepa2_ray_train": record}, **parts)
