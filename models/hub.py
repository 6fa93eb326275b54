"""Load V-JEPA 2 networks from Python by preset name and checkpoint, as users of Meta's ``hubconf.py`` and
of ``from_pretrained`` expect.

``load_model(preset, checkpoint)`` gives ``(encoder, predictor)``, as Meta's hub entry points do;
``load_encoder``, ``load_predictor`` and ``load_ac_predictor`` give one network each. ``checkpoint`` is
anything :func:`models.checkpoint.checkpoint_kind` recognises (a Meta-layout file, local or ``s3://``; a
Hugging Face directory; a local training checkpoint directory), read with ``weights_only=True`` and loaded
strictly (a missing, unexpected or misshaped key is a :class:`~models.checkpoint.CheckpointError`).
Without a checkpoint the networks are randomly initialised from ``configs/model/<preset>.yaml``; with one,
``preset`` is needed only for files that record no architecture and whose shapes fit several presets.
``vjepa2_vit_large`` and its siblings are Meta's hub names (docs/reference.md R-vjepa2-9.2 lists the
released files) bound to the matching preset.

Every network comes back in eval mode and trainable (``requires_grad`` on): freezing is the caller's
choice (``models.frozen`` builds frozen encoders). The matching preprocessing lives in
``pipelines.transforms`` (``eval_preprocess``), which ``models/`` may not import (docs/architecture.md); the
repository's ``hubconf.py`` puts both behind one ``torch.hub.load``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from core.errors import UserError
from models import checkpoint as checkpoints
from models.ac_predictor import ACPredictor
from models.build import build_encoder, build_predictor, load_model_preset
from models.checkpoint import MetaCheckpoint, encoder_of, open_checkpoint, resolve_model_cfg
from models.config import ModelConfig
from models.encoder import VisionTransformer
from models.predictor import Predictor

Checkpoint = str | Path | None
Model = tuple[VisionTransformer, Predictor | ACPredictor]

# Meta's hub entry points (their hubconf.py) and the presets with the same architecture.
META_MODELS = {
    "vjepa2_vit_large": "vitl",
    "vjepa2_vit_huge": "vith",
    "vjepa2_vit_giant": "vitg",
    "vjepa2_vit_giant_384": "vitg-384",
    "vjepa2_ac_vit_giant": "vitg-ac",
}


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed the CPU generator for one build and restore it after: a random init here leaves the caller's
    RNG as it was, and seed s builds what ``init-checkpoint --seed s`` writes (same seed, same order)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _source(preset: str | None, checkpoint: Checkpoint) -> tuple[ModelConfig, MetaCheckpoint | None]:
    """The architecture and, when a checkpoint is given, its parts."""
    if checkpoint is None:
        if not preset:
            raise UserError("hub: pass a preset (configs/model/<name>.yaml) or a checkpoint")
        return load_model_preset(preset), None
    ckpt = open_checkpoint(checkpoint)
    return resolve_model_cfg(ckpt, preset), ckpt


def _predictor(cfg: ModelConfig, ckpt: MetaCheckpoint | None, seed: int) -> Predictor | ACPredictor:
    if ckpt is not None:
        return checkpoints.load_predictor(ckpt, cfg)
    with _seeded(seed):
        return build_predictor(cfg).eval()


def _expect_ac(cfg: ModelConfig, ac: bool) -> None:
    if (cfg.ac_predictor is not None) != ac:
        have, use = ("an action-conditioned", "load_ac_predictor") if cfg.ac_predictor is not None else \
            ("a mask-token", "load_predictor")
        raise UserError(f"hub: preset {cfg.preset} has {have} predictor; use {use}")


def load_encoder(preset: str | None = None, checkpoint: Checkpoint = None, key: str = "encoder",
                 seed: int = 0) -> VisionTransformer:
    """The encoder of ``checkpoint`` (``key``: ``encoder``, as Meta's hub reads, or ``target_encoder``, as
    Meta's evals read; docs/reference.md R-vjepa2-9.2), or a random one of ``preset`` seeded with ``seed``."""
    cfg, ckpt = _source(preset, checkpoint)
    if ckpt is not None:
        return encoder_of(ckpt, cfg, key)
    with _seeded(seed):
        return build_encoder(cfg.encoder).eval()


def load_predictor(preset: str | None = None, checkpoint: Checkpoint = None, seed: int = 0) -> Predictor:
    """The mask-token predictor of ``checkpoint``, or a random one of ``preset``."""
    cfg, ckpt = _source(preset, checkpoint)
    _expect_ac(cfg, False)
    return _predictor(cfg, ckpt, seed)


def load_ac_predictor(preset: str | None = None, checkpoint: Checkpoint = None, seed: int = 0) -> ACPredictor:
    """The V-JEPA 2-AC predictor of ``checkpoint``, or a random one of an ``*-ac`` preset."""
    cfg, ckpt = _source(preset, checkpoint)
    _expect_ac(cfg, True)
    return _predictor(cfg, ckpt, seed)


def load_model(preset: str | None = None, checkpoint: Checkpoint = None, key: str = "encoder",
               seed: int = 0) -> Model:
    """``(encoder, predictor)`` from one read of ``checkpoint``, or both randomly initialised from ``preset``
    in ``init-checkpoint``'s order (encoder first), so seed s gives that command's networks."""
    cfg, ckpt = _source(preset, checkpoint)
    if ckpt is not None:
        return encoder_of(ckpt, cfg, key), checkpoints.load_predictor(ckpt, cfg)
    with _seeded(seed):
        return build_encoder(cfg.encoder).eval(), build_predictor(cfg).eval()


def _meta_entry(name: str) -> Callable[..., Model]:
    preset = META_MODELS[name]

    def entry(checkpoint: Checkpoint = None, key: str = "encoder", seed: int = 0) -> Model:
        return load_model(preset, checkpoint, key, seed)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f"Meta's hub ``{name}``: ``(encoder, predictor)`` of preset ``{preset}``, from ``checkpoint`` "
                     f"(a file or directory you have; nothing is downloaded) or randomly initialised.")
    return entry


# Spelled out, not generated in a loop, so that editors, ``torch.hub.list`` and readers all see them.
vjepa2_vit_large = _meta_entry("vjepa2_vit_large")
vjepa2_vit_huge = _meta_entry("vjepa2_vit_huge")
vjepa2_vit_giant = _meta_entry("vjepa2_vit_giant")
vjepa2_vit_giant_384 = _meta_entry("vjepa2_vit_giant_384")
vjepa2_ac_vit_giant = _meta_entry("vjepa2_ac_vit_giant")
