"""An exported checkpoint as an MLflow pyfunc model, logged from code (MLflow's models-from-code).

MLflow runs this file when it logs or loads the model; the model it hands over embeds clips with the
checkpoint's target encoder (the one Meta's evaluations read, docs/reference.md R-vjepa2-9.2). The
checkpoint travels as the model's weights artifact (``core.tracking.MODEL_WEIGHTS_ARTIFACT``), a
Meta-layout file, and ``load_context`` reads it with ``torch.load(weights_only=True)``
(``models.checkpoint``): no pickled module is ever loaded, unlike MLflow's PyTorch flavour, so the
model loads with any version of this code that reads the layout.

    model = mlflow.pyfunc.load_model("models:/<name>/<version>")
    features = model.predict(clips)  # uint8 [B, T, H, W, 3] frames -> float32 [B, D], mean over tokens

Loading needs this project importable (``pip install vjepa2-ray``); the logged requirements say so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from core.tracking import MODEL_WEIGHTS_ARTIFACT, set_pyfunc_model
from models.checkpoint import load_encoder
from pipelines.transforms import eval_preprocess


class ClipEmbedder:
    """Raw clips in, one mean-pooled feature vector per clip out, with the eval preprocessing
    (``pipelines.transforms.eval_preprocess``: resize, center crop, ImageNet normalisation)."""

    def load_context(self, context: Any) -> None:
        self.encoder, self.cfg = load_encoder(context.artifacts[MODEL_WEIGHTS_ARTIFACT], key="target_encoder")

    @torch.no_grad()
    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        clips = np.asarray(model_input, dtype=np.uint8)
        if clips.ndim != 5 or clips.shape[-1] != 3:
            raise ValueError(f"expected uint8 clips [B, T, H, W, 3], got {clips.dtype} {clips.shape}")
        batch = torch.stack([eval_preprocess(clip, self.cfg.encoder.img_size) for clip in clips])
        return self.encoder(batch).mean(dim=1).float().numpy()


set_pyfunc_model(ClipEmbedder())
