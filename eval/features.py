"""Encoder features of a video, an image, or a preprocessed clip (the library behind ``vjepa2-ray embed``).

Videos get the standard eval preprocessing (``pipelines/transforms.py``), images are repeated to a static
clip (docs/reference.md R-vjepa2-5.4), a ``.npy`` is fed as is.
"""


from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from core import storage
from core.errors import UserError
from models.config import ModelConfig
from models.encoder import VisionTransformer
from pipelines.clips import eval_clip_indices
from pipelines.config import ClipConfig
from pipelines.decode import fetch, is_image, open_video, read_image
from pipelines.quarantine import SampleError
from pipelines.transforms import eval_preprocess

log = logging.getLogger(__name__)

DEFAULT_FPS = ClipConfig().fps  # docs/reference.md R-vjepa2-5.3: V-JEPA 2 samples clips at 4 fps


class EmbedInputError(UserError):
    """An input file embed cannot use; the message names the file and why."""


@torch.no_grad()
def embed_clip(encoder: VisionTransformer, clip: Tensor) -> np.ndarray:
    """``[C, T, H, W]`` -> float32 ``[N_tokens, D]`` (encoder in eval mode, fp32)."""
    encoder.eval()
    return encoder(clip.unsqueeze(0).float())[0].float().numpy()


def embed_array(encoder: VisionTransformer, array: np.ndarray, where: str = "array") -> np.ndarray:
    """A preprocessed float ``[C, T, H, W]`` clip, fed as is."""
    chans = encoder.cfg.in_chans
    if array.ndim != 4 or array.shape[0] != chans or not np.issubdtype(array.dtype, np.floating):
        raise EmbedInputError(f"{where}: expected a float array [C={chans}, T, H, W], "
                              f"got {array.dtype} {tuple(array.shape)}")
    cfg = encoder.cfg
    if array.shape[1] < cfg.tubelet_size or min(array.shape[2:]) < cfg.patch_size:
        raise EmbedInputError(f"{where}: clip {tuple(array.shape)} is smaller than one "
                              f"{cfg.tubelet_size}x{cfg.patch_size}x{cfg.patch_size} tubelet")
    return embed_clip(encoder, torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))


def embed_video(encoder: VisionTransformer, model_cfg: ModelConfig, video_path: str, frames: int | None = None,
                fps: float = DEFAULT_FPS, start: float | None = None) -> np.ndarray:
    """Features of ``frames`` (default: the preset's num_frames) frames at ``fps`` from ``start`` seconds."""
    frames = frames or model_cfg.encoder.num_frames
    try:
        reader = open_video(fetch(video_path))
        try:
            indices = eval_clip_indices(reader.num_frames, reader.fps, frames, fps, start)
            log.info("%s: frames %s of %d at %.2f fps", video_path, indices.tolist(), reader.num_frames, reader.fps)
            pixels = reader.get_frames(indices)
        finally:
            reader.close()
    except (SampleError, ValueError) as exc:
        raise EmbedInputError(f"{video_path}: cannot read video: {exc}") from exc
    return embed_clip(encoder, eval_preprocess(pixels, model_cfg.encoder.img_size))


def embed_image(encoder: VisionTransformer, model_cfg: ModelConfig, image_path: str,
                frames: int | None = None) -> np.ndarray:
    """An RGB image repeated to a static clip of ``frames`` frames (docs/reference.md R-vjepa2-5.4)."""
    try:
        image = read_image(fetch(image_path))  # [H, W, 3] uint8
    except SampleError as exc:
        raise EmbedInputError(f"{image_path}: cannot read image: {exc}") from exc
    clip = np.repeat(image[None], frames or model_cfg.encoder.num_frames, axis=0)
    return embed_clip(encoder, eval_preprocess(clip, model_cfg.encoder.img_size))


def embed_path(encoder: VisionTransformer, model_cfg: ModelConfig, path: str, frames: int | None = None,
               fps: float = DEFAULT_FPS, start: float | None = None) -> np.ndarray:
    """Dispatch on the suffix: .npy, image (Meta's suffix rule), or video."""
    if not storage.exists(path):
        raise EmbedInputError(f"{path}: input not found")
    if Path(path).suffix.lower() == ".npy":
        try:
            array = np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False)
        except ValueError as exc:
            raise EmbedInputError(f"{path}: not a .npy array ({exc})") from exc
        return embed_array(encoder, array, path)
    if is_image(path):
        return embed_image(encoder, model_cfg, path, frames)
    return embed_video(encoder, model_cfg, path, frames, fps, start)
