"""Architecture configs for the V-JEPA 2 networks (plain dataclasses, no torch import).

The numbers of the released models live in ``configs/model/<preset>.yaml``; these dataclasses give the
schema and the ViT-L defaults (``docs/reference.md`` R-vjepa2-1.1 and R-vjepa2-2).
"""

from __future__ import annotations

from dataclasses import dataclass, field


class TransformerWidths:
    """Derived widths shared by every transformer config (a mixin, not a dataclass: adds no fields)."""

    embed_dim: int
    num_heads: int
    mlp_ratio: float

    @property
    def mlp_hidden(self) -> int:
        # round, not int: ViT-g's ratio 48/11 is not exact in binary floating point (MLP must be 6144).
        return round(self.embed_dim * self.mlp_ratio)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


@dataclass
class EncoderConfig(TransformerWidths):
    """Video ViT with a Conv3d tubelet embedding and 3D RoPE (docs/reference.md R-vjepa2-1.1, R-vjepa2-1.2,
    R-vjepa2-1.3, R-vjepa2-1.4)."""

    img_size: int = 256
    num_frames: int = 16
    patch_size: int = 16
    tubelet_size: int = 2
    in_chans: int = 3
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    # docs/reference.md R-vjepa2-1.4: released weights use the tiled RoPE frequency layout; True selects the
    # corrected interleaved layout (V-JEPA 2.1 / HF ``use_rope_interleave``).
    rope_interleave: bool = False


@dataclass
class PredictorConfig(TransformerWidths):
    """Mask-token predictor (docs/reference.md R-vjepa2-2)."""

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_mask_tokens: int = 10
    # docs/reference.md R-vjepa2-1.4: Meta's predictor decodes token positions on a square img_size/patch grid even for
    # non-square inputs; False uses the real input grid instead.
    square_grid: bool = True


@dataclass
class ACPredictorConfig(TransformerWidths):
    """V-JEPA 2-AC action-conditioned predictor (docs/reference.md R-vjepa2-6.1); its token grid is the encoder's
    img_size/patch."""

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    action_dim: int = 7
    state_dim: int = 7
    extrinsics_dim: int = 6
    # docs/reference.md R-vjepa2-6.1: the released model builds extrinsics_encoder but never feeds it (use_extrinsics:
    # false).
    use_extrinsics: bool = False


@dataclass
class ModelConfig:
    """Encoder + predictor of one V-JEPA 2 model; ``preset`` names it (tiny, vitl, vith, vitg, vitg-384).

    ``ac_predictor`` set means a V-JEPA 2-AC model: the checkpoint's ``predictor`` is then the
    action-conditioned predictor and ``predictor`` is unused.
    """

    preset: str = "vitl"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    ac_predictor: ACPredictorConfig | None = None
