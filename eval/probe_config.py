"""The probe run config: one YAML (configs/eval/<task>.yaml) describes a frozen-encoder probe run.

The dataclass defaults are Meta's SSv2 recipe (docs/reference.md R-vjepa2-8.2; docs/eval.md): a depth-4
attentive probe with 16 attention heads, 20 heads on the 5 x 4 (lr, wd) grid, AdamW, no warmup, cosine
LR to 0, constant WD, 20 epochs, 16 frames x 4, 2 segments x 3 views, 256 px. A preset states only what
differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.ray_session import RayConfig
from core.tracking import TrackingConfig
from models.frozen import FrozenEncoderConfig
from pipelines.episodes.cache import CacheConfig
from pipelines.labelled import LabelledDataConfig
from train.config import RunSection, TrainerConfig
from train.probe_optim import ProbeGrid


@dataclass
class ProbeHeadConfig:
    """The attentive classifiers of the grid, and an optional probe file to start from or evaluate."""

    depth: int = 4  # pooler depth: depth - 1 self-attention blocks, then the cross-attention block
    num_heads: int = 16  # attention heads of the pooler
    grid: ProbeGrid = field(default_factory=ProbeGrid)
    # A probe file (Meta's layout or ours) to evaluate (``eval_only``) or to start training from.
    checkpoint: str = ""


@dataclass
class ProbeOptimConfig:
    """How long the probes train. The grid's learning rates are used as given: Meta does not scale them
    with the batch, so the batch plan's reference batch is the global batch itself."""

    epochs: int = 20
    global_batch: int = 256  # Meta's SSv2 ViT-L: 4 clips x 64 GPUs
    total_steps: int = 0  # 0 -> epochs x ceil(fit rows / global_batch), set when the config is resolved

    @property
    def reference_global_batch(self) -> int:
        return self.global_batch


@dataclass
class ProbeConfig:
    # Relative input paths (data.train, data.val, data.labels, encoder.checkpoint, probe.checkpoint)
    # resolve against this (core/storage.py data_root).
    data_root: str = ""
    run: RunSection = field(default_factory=lambda: RunSection(name="probe"))
    encoder: FrozenEncoderConfig = field(default_factory=FrozenEncoderConfig)
    data: LabelledDataConfig = field(default_factory=lambda: LabelledDataConfig(num_segments=2, num_views=3))
    probe: ProbeHeadConfig = field(default_factory=ProbeHeadConfig)
    optim: ProbeOptimConfig = field(default_factory=ProbeOptimConfig)
    # When enabled, evaluation samples (and, with data.augment off, training samples) are encoded once
    # into a clip feature cache (eval/clip_cache.py) and the probes read tokens from it.
    cache: CacheConfig = field(default_factory=CacheConfig)
    # eval_every 0 -> once per epoch; the frozen encoder needs no FSDP: the probes train under DDP.
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(batch_size_per_worker=4, fsdp=False,
                                                                         activation_checkpointing=False))
    # Evaluate ``probe.checkpoint`` on data.val (top-1 / top-5 / per class) instead of training.
    eval_only: bool = False
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="vjepa2-probe"))
    ray: RayConfig = field(default_factory=RayConfig)
