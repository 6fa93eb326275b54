"""``torch.hub`` entry points, as in Meta's repository: networks from ``models.hub``, preprocessing from
``pipelines.transforms``. Nothing is downloaded: checkpoints are files or directories you pass.

    encoder, predictor = torch.hub.load("path/to/vjepa2-ray", "vjepa2_vit_large", source="local",
                                        checkpoint="vitl.pt")
    preprocess = torch.hub.load("path/to/vjepa2-ray", "vjepa2_preprocessor", source="local", crop_size=256)

It lives at the repository root because ``torch.hub`` looks for it there, and because it is the one module
that joins ``models/`` and ``pipelines/``, which may not import each other that way (docs/architecture.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch

from models.build import load_model_preset
from models.hub import (  # noqa: F401  (re-exported: torch.hub.load finds entry points in this module)
    load_ac_predictor,
    load_encoder,
    load_model,
    load_predictor,
    vjepa2_ac_vit_giant,
    vjepa2_vit_giant,
    vjepa2_vit_giant_384,
    vjepa2_vit_huge,
    vjepa2_vit_large,
)
from pipelines.transforms import eval_preprocess

dependencies = ["torch", "numpy", "yaml"]

Preprocess = Callable[[np.ndarray], torch.Tensor]


def vjepa2_preprocessor(crop_size: int = 256) -> Preprocess:
    """Meta's hub ``vjepa2_preprocessor``: uint8 frames ``[T, H, W, 3]`` -> float ``[3, T, crop, crop]``,
    the project's eval preprocessing (``pipelines.transforms.eval_preprocess``, docs/reference.md R-vjepa2-8.2)."""
    return functools.partial(eval_preprocess, crop_size=crop_size)


def preprocessor(preset: str) -> Preprocess:
    """The eval preprocessing matching a model preset: cropped to its encoder's ``img_size``."""
    return vjepa2_preprocessor(load_model_preset(preset).encoder.img_size)
