"""Build networks from a :class:`ModelConfig`, load presets, count parameters, recognise presets from shapes.

Presets are ``configs/model/<name>.yaml`` (top-level ``model:`` section). ``count_params`` builds on the
meta device, so even ViT-g costs no memory. ``recognise_preset`` maps a bare state dict (Meta's released
files carry no architecture) to the preset with the same tensor shapes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from configs import CONFIG_ROOT, preset_path
from core.config import ConfigError, load_config
from models.ac_predictor import ACPredictor
from models.config import EncoderConfig, ModelConfig
from models.encoder import VisionTransformer
from models.predictor import Predictor

log = logging.getLogger(__name__)

# docs/reference.md R-vjepa2-9.2: released files are 16- or 64-frame models; used only to read a legacy pos_embed's
# size.
RELEASED_FRAMES = (16, 64)


@dataclass
class _ModelFile:
    """Schema of ``configs/model/<name>.yaml``."""

    model: ModelConfig = field(default_factory=ModelConfig)


def list_presets() -> list[str]:
    return sorted(p.stem for p in (CONFIG_ROOT / "model").glob("*.yaml"))


def load_model_preset(name: str) -> ModelConfig:
    """The :class:`ModelConfig` of ``configs/model/<name>.yaml``; ConfigError lists the known presets."""
    try:
        path = preset_path("model", name)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from exc
    return load_config(_ModelFile, path).model


def build_encoder(cfg: EncoderConfig) -> VisionTransformer:
    return VisionTransformer(cfg)


def build_predictor(cfg: ModelConfig) -> Predictor | ACPredictor:
    """The mask-token predictor, or the action-conditioned one when ``cfg.ac_predictor`` is set."""
    if cfg.ac_predictor is not None:
        return ACPredictor(cfg.ac_predictor, cfg.encoder)
    return Predictor(cfg.predictor, cfg.encoder)


def build_model(cfg: ModelConfig) -> tuple[VisionTransformer, Predictor | ACPredictor]:
    return build_encoder(cfg.encoder), build_predictor(cfg)


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameter counts of encoder and predictor, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        encoder, predictor = build_model(cfg)
    return {"encoder": num_params(encoder), "predictor": num_params(predictor)}


def _depth(sd: dict[str, Tensor], prefix: str) -> int:
    ids = {int(k[len(prefix):].split(".", 1)[0]) for k in sd if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0


def _shape(sd: dict[str, Tensor], key: str) -> tuple[int, ...] | None:
    return tuple(sd[key].shape) if key in sd else None


def encoder_signature(sd: dict[str, Tensor]) -> tuple[Any, ...]:
    """(width, in_chans, tubelet, patch, depth, mlp hidden) read from an encoder state dict."""
    embed = _shape(sd, "patch_embed.proj.weight")
    fc1 = _shape(sd, "blocks.0.mlp.fc1.weight")
    if embed is None or len(embed) != 5 or fc1 is None:
        return ("unknown",)
    return (embed[0], embed[1], embed[2], embed[3], _depth(sd, "blocks."), fc1[0])


def predictor_signature(sd: dict[str, Tensor]) -> tuple[Any, ...]:
    """Width, depth, MLP hidden and mask-token count (or action/state dims for the AC predictor)."""
    embed = _shape(sd, "predictor_embed.weight")
    fc1 = _shape(sd, "predictor_blocks.0.mlp.fc1.weight")
    if embed is None or fc1 is None:
        return ("unknown",)
    common = (embed[0], embed[1], _depth(sd, "predictor_blocks."), fc1[0])
    if "action_encoder.weight" in sd:
        return ("ac", *common, sd["action_encoder.weight"].shape[1], _shape(sd, "state_encoder.weight")[1])
    return ("mask", *common, _depth(sd, "mask_tokens."))


def _expected_signatures(cfg: ModelConfig) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    enc = cfg.encoder
    encoder = (enc.embed_dim, enc.in_chans, enc.tubelet_size, enc.patch_size, enc.depth, enc.mlp_hidden)
    if cfg.ac_predictor is not None:
        ac = cfg.ac_predictor
        predictor = ("ac", ac.embed_dim, enc.embed_dim, ac.depth, ac.mlp_hidden, ac.action_dim, ac.state_dim)
    else:
        pred = cfg.predictor
        predictor = ("mask", pred.embed_dim, enc.embed_dim, pred.depth, pred.mlp_hidden, pred.num_mask_tokens)
    return encoder, predictor


def _fits_pos_embed(cfg: EncoderConfig, tokens: int) -> bool:
    per_frame = (cfg.img_size // cfg.patch_size) ** 2
    return any(tokens == f // cfg.tubelet_size * per_frame for f in (cfg.num_frames, *RELEASED_FRAMES))


def recognise_preset(encoder_sd: dict[str, Tensor], predictor_sd: dict[str, Tensor] | None = None,
                     pos_embed_tokens: int | None = None) -> ModelConfig | None:
    """The preset whose tensor shapes match (None if none does).

    Shapes cannot tell ViT-g at 256 px from 384 px (same weights). A legacy ``pos_embed`` (its token count
    ``pos_embed_tokens``) settles it; without one the 256-px preset is taken and a warning says so.
    """
    enc_sig = encoder_signature(encoder_sd)
    pred_sig = predictor_signature(predictor_sd) if predictor_sd else None
    matches = []
    for name in list_presets():
        cfg = load_model_preset(name)
        want_enc, want_pred = _expected_signatures(cfg)
        if want_enc == enc_sig and (pred_sig is None or want_pred == pred_sig):
            matches.append(cfg)
    if pos_embed_tokens is not None:
        matches = [c for c in matches if _fits_pos_embed(c.encoder, pos_embed_tokens)] or matches
    # plain V-JEPA presets first, then by the (smaller) native resolution
    matches.sort(key=lambda c: (c.ac_predictor is not None, c.encoder.img_size, c.preset))
    if len(matches) > 1:
        log.warning("tensor shapes fit presets %s; using %s (pass --preset to choose)",
                    [c.preset for c in matches], matches[0].preset)
    return matches[0] if matches else None
