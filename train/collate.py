"""Per trainer batch: uint8 clips -> normalised float [B, 3, T, H, W], plus the masks of every mask config.

Meta makes masks in the DataLoader's collate (docs/reference.md R-vjepa2-3.2), once per trainer batch. Ray Data
re-batches rows, so no Data stage sees the trainer's batch; the collator runs on the train worker
instead, seeded by (seed, global step, rank): block sizes are shared by all ranks at a step, block
positions differ per rank, and a resumed run makes the same masks from the same step on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipelines.config import DataConfig
from pipelines.transforms import normalize
from train.config import MaskConfig
from train.masks import sample_masks, token_grid


class Collator:
    """``collator(batch, step)`` on a numpy (or torch) batch from the dataset or the local iterator.

    Returns ``{"clip": float32 [B, 3, T, H, W], "source", "label", "sample_id": LongTensor [B],
    "masks_enc": [LongTensor [B, Kc] per mask config], "masks_pred": [LongTensor [B, Kt] per config]}``.
    """

    def __init__(self, mask_cfgs: list[MaskConfig], data_cfg: DataConfig, seed: int, rank: int,
                 patch_size: int = 16, tubelet_size: int = 2):
        self.mask_cfgs = list(mask_cfgs)
        self.seed = seed
        self.rank = rank
        self.grid = token_grid(data_cfg.clip.frames_per_clip, data_cfg.clip.crop_size, patch_size, tubelet_size)

    def __call__(self, batch: dict[str, Any], step: int) -> dict[str, Any]:
        clips = _tensor(batch["clip"])  # stays on its device: iter_torch_batches may have moved it to the GPU
        if clips.dtype != torch.uint8 or clips.dim() != 5:
            raise ValueError(f"expected uint8 clips [B, T, H, W, 3], got {tuple(clips.shape)} {clips.dtype}")
        masks_enc, masks_pred = sample_masks(self.mask_cfgs, clips.shape[0], self.grid, step, self.seed, self.rank)
        out: dict[str, Any] = {"clip": normalize(clips), "masks_enc": masks_enc, "masks_pred": masks_pred}
        for name in ("source", "label", "sample_id"):
            if name in batch:
                out[name] = _tensor(batch[name]).long()
        return out


def _tensor(value: Any) -> torch.Tensor:
    """Ray hands batches over as read-only arrays; torch needs writable memory (copied only if not)."""
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.require(value, requirements="W"))
