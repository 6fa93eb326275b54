"""Checkpoints in Meta's layout (docs/reference.md R-vjepa2-9.2): load released files, save files Meta's loaders accept.

A file is a dict with ``encoder`` / ``target_encoder`` / ``predictor`` state dicts plus training extras
(``opt``, ``epoch``, ...). Loading strips the ``module.`` / ``backbone.`` prefixes (DDP, MultiSeqWrapper),
drops the legacy ``pos_embed`` / ``predictor_pos_embed`` (RoPE models never use them) and keeps every other
top-level key as an extra. Saving writes bare keys and records the architecture under ``vjepa2_ray``, a key
Meta's loaders never read, so files this project writes need no ``--preset``.
Every load uses ``torch.load(weights_only=True)``; local paths and ``s3://`` URIs both work.
"""

from __future__ import annotations

import io
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from core import storage
from core.config import ConfigError, from_dict, to_dict
from core.errors import UserError
from models.build import build_encoder, build_predictor, load_model_preset, recognise_preset
from models.config import ModelConfig
from models.encoder import VisionTransformer

log = logging.getLogger(__name__)

MODEL_KEYS = ("encoder", "target_encoder", "predictor")
ARCH_KEY = "vjepa2_ray"
FORMAT_VERSION = 1
# DDP, Meta's MultiSeqWrapper, and torch.compile wrap the modules; Meta's loaders strip the first two.
WRAPPER_PREFIXES = ("module.", "backbone.", "_orig_mod.")
LEGACY_KEYS = ("pos_embed", "predictor_pos_embed")  # docs/reference.md R-vjepa2-9.2: sincos tables unused with RoPE
MAX_LISTED_KEYS = 8

StateDict = dict[str, Tensor]


class CheckpointError(UserError):
    """A file that is not a usable checkpoint; the message names the file and the offending keys."""


@dataclass
class MetaCheckpoint:
    """The parts of one checkpoint file, keys already stripped of wrapper prefixes."""

    path: str
    model_cfg: ModelConfig | None
    encoder: StateDict | None
    target_encoder: StateDict | None
    predictor: StateDict | None
    extras: dict[str, Any] = field(default_factory=dict)
    legacy: dict[str, tuple[int, ...]] = field(default_factory=dict)  # dropped tensors: "encoder.pos_embed"

    def state(self, key: str) -> StateDict:
        """``encoder`` / ``target_encoder`` / ``predictor``, or a CheckpointError naming what the file has."""
        sd = getattr(self, key) if key in MODEL_KEYS else None
        if sd is None:
            present = [k for k in MODEL_KEYS if getattr(self, k) is not None]
            raise CheckpointError(f"{self.path}: no '{key}' state dict (file has: {present})")
        return sd


def _listed(keys: list[str]) -> str:
    more = len(keys) - MAX_LISTED_KEYS
    return ", ".join(keys[:MAX_LISTED_KEYS]) + (f", ... (+{more} more)" if more > 0 else "")


def strip_prefixes(sd: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in sd.items():
        bare = key
        while bare.startswith(WRAPPER_PREFIXES):
            bare = bare.split(".", 1)[1]
        out[bare] = value
    return out


def _load_error_reason(exc: Exception) -> str:
    """The informative line of torch.load's (long, ANSI-coloured) error, e.g. 'Unsupported global: ...'."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if ln.strip()]
    reason = next((ln for ln in lines if "Unsupported global" in ln), lines[0] if lines else "")
    return reason[:300]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a local path or ``s3://`` URI; CheckpointError if it is no dict."""
    path = str(path)
    if not storage.exists(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    if storage.is_s3(path):
        source: Any = io.BytesIO(storage.read_bytes(path))
        head = source.getvalue()[:2]
    else:
        source = path
        with open(path, "rb") as f:
            head = f.read(2)
    if head not in (b"PK", b"\x80\x02"):  # torch.save's zip archive, or its legacy pickle (protocol 2)
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither torch.save's zip archive nor its "
                              f"legacy format)")
    try:
        data = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors all mean "not a loadable checkpoint"
        raise CheckpointError(f"{path}: not a PyTorch checkpoint loadable with weights_only=True "
                              f"({type(exc).__name__}: {_load_error_reason(exc)})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(data).__name__}")
    return data


def _state_dict(path: str, key: str, value: Any, legacy: dict[str, tuple[int, ...]]) -> StateDict:
    if not isinstance(value, dict) or not all(isinstance(v, Tensor) for v in value.values()):
        raise CheckpointError(f"{path}: '{key}' is not a state dict of tensors")
    sd = strip_prefixes(value)
    for name in LEGACY_KEYS:
        if name in sd:
            legacy[f"{key}.{name}"] = tuple(sd.pop(name).shape)
            log.info("%s: dropped legacy %s.%s (RoPE models have no position table)", path, key, name)
    return sd


def _arch(path: str, data: dict[str, Any]) -> ModelConfig | None:
    arch = data.get(ARCH_KEY)
    if arch is None:
        return None
    try:
        return from_dict(ModelConfig, arch["model_cfg"], origin_name=f"{path}:{ARCH_KEY}")
    except (KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{path}: unreadable '{ARCH_KEY}' architecture record: {exc}") from exc


def load_meta_checkpoint(path: str | Path) -> MetaCheckpoint:
    """Read a checkpoint in Meta's layout (released files, Meta training files, or this project's)."""
    path = str(path)
    data = read_checkpoint(path)
    if not any(k in data for k in MODEL_KEYS):
        raise CheckpointError(f"{path}: none of {list(MODEL_KEYS)} in the checkpoint "
                              f"(top-level keys: {_listed(sorted(map(str, data)))})")
    legacy: dict[str, tuple[int, ...]] = {}
    parts = {k: _state_dict(path, k, data[k], legacy) if k in data else None for k in MODEL_KEYS}
    extras = {k: v for k, v in data.items() if k not in MODEL_KEYS and k != ARCH_KEY}
    return MetaCheckpoint(path=path, model_cfg=_arch(path, data), extras=extras, legacy=legacy, **parts)


def _tensors(sd: dict[str, Tensor]) -> StateDict:
    return {k: v.detach().cpu() for k, v in strip_prefixes(sd).items()}


def save_meta_checkpoint(path: str | Path, encoder_sd: StateDict, predictor_sd: StateDict,
                         target_encoder_sd: StateDict | None = None, model_cfg: ModelConfig | None = None,
                         extra: dict[str, Any] | None = None, key_prefix: str = "") -> None:
    """Write Meta's layout; ``model_cfg`` goes under ``vjepa2_ray``, ``extra`` at top level. Keys are bare,
    or carry ``key_prefix`` (``"module."``, as Meta's AC training writes them; every loader strips it).

    State dicts must be plain tensors (gather FSDP2 DTensors into a full state dict first). The write is
    atomic for local paths (temp file + rename).
    """
    def tensors(sd: StateDict) -> StateDict:
        return {key_prefix + k: v for k, v in _tensors(sd).items()}

    data: dict[str, Any] = {"encoder": tensors(encoder_sd), "predictor": tensors(predictor_sd)}
    if target_encoder_sd is not None:
        data["target_encoder"] = tensors(target_encoder_sd)
    clash = sorted(set(extra or {}) & {*MODEL_KEYS, ARCH_KEY})
    if clash:
        raise ValueError(f"extra keys {clash} would overwrite model entries")
    data.update(extra or {})
    if model_cfg is not None:
        data[ARCH_KEY] = {"format": FORMAT_VERSION, "model_cfg": to_dict(model_cfg)}
    write_torch(path, data)


def write_torch(path: str | Path, data: dict[str, Any]) -> None:
    """``torch.save`` to a local path (atomic: temp file + rename) or an ``s3://`` URI."""
    path = str(path)
    if storage.is_s3(path):
        buffer = io.BytesIO()
        torch.save(data, buffer)
        storage.write_bytes(path, buffer.getvalue())
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    torch.save(data, tmp)
    os.replace(tmp, target)


# ---------------------------------------------------------------------------------------------------
# Probe files: Meta's ``evals/video_classification_frozen`` save ``{"classifiers": [state dict per head],
# "opt", "scaler", "epoch", ...}`` with ``module.``-prefixed keys (DDP); its demo uses ``classifiers[0]``
# (docs/reference.md R-vjepa2-9.2).

PROBE_KEY = "classifiers"


def save_probe_checkpoint(path: str | Path, heads: list[nn.Module], extra: dict[str, Any] | None = None,
                          key_prefix: str = "module.") -> None:
    """Write ``heads`` (each an attentive classifier) as Meta's probe file; ``extra`` at top level."""
    if PROBE_KEY in (extra or {}):
        raise ValueError(f"extra key {PROBE_KEY!r} would overwrite the heads")
    heads_sd = [{key_prefix + k: v for k, v in _tensors(head.state_dict()).items()} for head in heads]
    write_torch(path, {PROBE_KEY: heads_sd, **(extra or {})})


def load_probe_checkpoint(path: str | Path, heads: list[nn.Module]) -> dict[str, Any]:
    """Load a probe file (Meta's or ours) strictly into ``heads``, one state dict each, and return its
    other entries. A file that is no probe file, holds another number of heads, or heads of another
    width or class count is a CheckpointError naming the file and the field."""
    path = str(path)
    data = read_checkpoint(path)
    stored = data.get(PROBE_KEY)
    if not isinstance(stored, list | tuple) or not stored:
        raise CheckpointError(f"{path}: no '{PROBE_KEY}' list of head state dicts: not a probe file")
    if len(stored) != len(heads):
        raise CheckpointError(f"{path}: '{PROBE_KEY}' holds {len(stored)} heads, the probe is configured with "
                              f"{len(heads)}")
    for i, (head, sd) in enumerate(zip(heads, stored, strict=True)):
        if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
            raise CheckpointError(f"{path}: '{PROBE_KEY}[{i}]' is not a state dict of tensors")
        load_state(head, strip_prefixes(sd), f"{PROBE_KEY}[{i}]", path)
    return {k: v for k, v in data.items() if k != PROBE_KEY}


def probe_file_shape(data: dict[str, Any], num_heads: int, path: str) -> dict[str, int]:
    """The shapes of a probe file's heads read off its tensors (Meta's files record none): head count,
    pooler depth (1 + the self-attention blocks), token width and classes; ``num_heads`` (attention
    heads) is not visible in the weights and is given."""
    stored = data.get(PROBE_KEY)
    if not isinstance(stored, list | tuple) or not stored or not isinstance(stored[0], dict):
        raise CheckpointError(f"{path}: no '{PROBE_KEY}' list of head state dicts: not a probe file")
    head = strip_prefixes(stored[0])
    if "linear.weight" not in head:
        raise CheckpointError(f"{path}: '{PROBE_KEY}[0]' has no 'linear.weight': not an attentive classifier")
    blocks = {key.split(".")[2] for key in head if key.startswith("pooler.blocks.")}
    classes, dim = head["linear.weight"].shape
    return {"heads": len(stored), "depth": len(blocks) + 1, "num_heads": num_heads, "dim": int(dim),
            "classes": int(classes)}


def resolve_model_cfg(ckpt: MetaCheckpoint, preset: str | None = None) -> ModelConfig:
    """``--preset`` if given, else the file's own record, else the preset its tensor shapes match."""
    if preset:
        return load_model_preset(preset)
    if ckpt.model_cfg is not None:
        return ckpt.model_cfg
    encoder_sd = ckpt.encoder if ckpt.encoder is not None else ckpt.target_encoder
    pos = ckpt.legacy.get("encoder.pos_embed") or ckpt.legacy.get("target_encoder.pos_embed")
    cfg = recognise_preset(encoder_sd or {}, ckpt.predictor, pos_embed_tokens=pos[1] if pos else None)
    if cfg is None:
        raise CheckpointError(f"{ckpt.path}: tensor shapes match no preset in configs/model/ and the file "
                              f"records no architecture; pass --preset NAME")
    log.info("%s: recognised preset %s from tensor shapes", ckpt.path, cfg.preset)
    return cfg


def load_state(module: nn.Module, sd: StateDict, what: str, path: str) -> None:
    """Strict load; CheckpointError naming missing, unexpected and wrongly shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(f"{k} {tuple(sd[k].shape)} != {tuple(own[k].shape)}"
                    for k in set(own) & set(sd) if sd[k].shape != own[k].shape)
    problems = [f"{label}: {_listed(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes)) if keys]
    if problems:
        raise CheckpointError(f"{path}: '{what}' does not fit the architecture: " + "; ".join(problems))
    module.load_state_dict(sd, strict=True)


CheckpointKind = Literal["sharded", "meta", "hf"]


def checkpoint_kind(uri: str | Path) -> CheckpointKind:
    """What a checkpoint path is; the one place that decides it.

    ``sharded``: a training checkpoint directory of this project (DCP shards + ``train_state.json``;
    Ray Train keeps the same directories); ``hf``: a Hugging Face model directory (``config.json``);
    ``meta``: a single file in Meta's layout (a release, Meta's training files, this project's exports).
    """
    from models.hf import is_hf_dir
    from models.sharded import is_sharded_checkpoint

    uri = str(uri)
    if is_sharded_checkpoint(uri):
        return "sharded"
    if is_hf_dir(uri):
        return "hf"
    if storage.is_dir(uri):
        raise CheckpointError(f"{uri}: a directory that is neither a training checkpoint (no train_state.json) "
                              "nor a Hugging Face model (no config.json)")
    if not storage.exists(uri):
        raise CheckpointError(f"{uri}: checkpoint not found")
    return "meta"


def open_checkpoint(uri: str | Path) -> MetaCheckpoint:
    """Any checkpoint this project loads, as Meta-layout parts (a sharded one must be local: use
    ``ray.train.Checkpoint(...).as_directory()`` for one on S3)."""
    kind = checkpoint_kind(uri)
    if kind == "sharded":
        from models.sharded import load_sharded_checkpoint

        return load_sharded_checkpoint(uri)
    if kind == "hf":
        from models.hf import load_hf

        cfg, encoder, predictor = load_hf(uri)
        return MetaCheckpoint(path=str(uri), model_cfg=cfg, encoder=encoder, target_encoder=None, predictor=predictor)
    return load_meta_checkpoint(uri)


def load_encoder(path: str | Path, key: str = "encoder",
                 preset: str | None = None) -> tuple[VisionTransformer, ModelConfig]:
    """An eval-mode encoder from ``key`` (``encoder`` or ``target_encoder``) of any checkpoint
    :func:`checkpoint_kind` recognises."""
    _check_encoder_key(key)
    ckpt = open_checkpoint(path)
    ckpt.state(key)  # a missing key is named before any question about the architecture
    cfg = resolve_model_cfg(ckpt, preset)
    return encoder_of(ckpt, cfg, key), cfg


def _check_encoder_key(key: str) -> None:
    if key not in ("encoder", "target_encoder"):
        raise CheckpointError(f"--key must be encoder or target_encoder, got '{key}'")


def encoder_of(ckpt: MetaCheckpoint, cfg: ModelConfig, key: str = "encoder") -> VisionTransformer:
    """The eval-mode encoder ``key`` of a loaded checkpoint, built for ``cfg`` and loaded strictly."""
    _check_encoder_key(key)
    encoder = build_encoder(cfg.encoder)
    load_state(encoder, ckpt.state(key), key, ckpt.path)
    return encoder.eval()


def load_predictor(ckpt: MetaCheckpoint, cfg: ModelConfig) -> nn.Module:
    """The (mask-token or AC) predictor of a loaded checkpoint, built for ``cfg``."""
    predictor = build_predictor(cfg)
    load_state(predictor, ckpt.state("predictor"), "predictor", ckpt.path)
    return predictor.eval()
