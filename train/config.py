"""The pretraining run config: one YAML (configs/pretrain/<preset>.yaml) describes a whole run.

Reference numbers: docs/reference.md R-vjepa2-3.1 (masks), R-vjepa2-4.1, R-vjepa2-4.2 (loss, optimiser, schedules,
phases).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from core.ray_session import RayConfig
from core.tracking import TrackingConfig
from models.config import ModelConfig
from pipelines.config import DataConfig


@dataclass
class MaskConfig:
    """One multiblock-3D mask config (docs/reference.md R-vjepa2-3.1)."""

    spatial_scale: tuple[float, float] = (0.15, 0.15)
    temporal_scale: tuple[float, float] = (1.0, 1.0)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)
    num_blocks: int = 8
    max_temporal_keep: float = 1.0


def default_masks() -> list[MaskConfig]:
    """Short-range (8 x 0.15) and long-range (2 x 0.7) configs, identical in every Meta preset."""
    return [MaskConfig(spatial_scale=(0.15, 0.15), num_blocks=8),
            MaskConfig(spatial_scale=(0.7, 0.7), num_blocks=2)]


@dataclass
class OptimConfig:
    """AdamW + schedules (docs/reference.md R-vjepa2-4.2). ``schedule``: warmup-constant (main), linear-decay
    (cooldown) or warmup-stable-decay (V-JEPA 2-AC, docs/reference.md R-vjepa2-6.5: warmup ``start_lr -> lr``,
    constant, then linear to ``final_lr`` over the last ``anneal_steps``)."""

    schedule: Literal["warmup_constant", "linear_decay", "wsd"] = "warmup_constant"
    lr: float = 5.25e-4
    start_lr: float = 1e-4
    final_lr: float = 5.25e-4
    warmup_steps: int = 12000
    anneal_steps: int = 0  # wsd only
    total_steps: int = 240000
    # docs/reference.md R-vjepa2-4.2: Meta stretches T_max by ipe_scale 1.25, so the cooldown's linear decay stops at
    # ~1.06e-4.
    ipe_scale: float = 1.25
    weight_decay: float = 0.04
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    ema: float = 0.99925
    grad_clip: float = 0.0  # 0: none, as in Meta's recipe
    global_batch: int = 3072
    reference_global_batch: int = 3072  # LR rule: lr scales linearly with global_batch / reference


@dataclass
class TrainerConfig:
    """Ray Train scale and the per-worker step."""

    num_workers: int = 1  # 0: Ray Train local mode (the loop runs in the driver, no worker actors)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    batch_size_per_worker: int = 24
    grad_accum_steps: int = 0  # 0: derived so workers x batch x accumulation reaches optim.global_batch
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    activation_checkpointing: bool = True
    compile: bool = False
    fsdp: bool = True
    checkpoint_every: int = 300
    num_to_keep: int = 2
    max_failures: int = 0
    log_every: int = 10
    stop_after: int = 0  # stop (with a checkpoint) after this step, to resume later; 0: optim.total_steps
    eval_every: int = 0  # validation loss on the held-out stream every N steps and at the end; 0: never
    eval_samples: int = 64  # clips in the held-out stream (the same clips and masks at every evaluation)
    prefetch_batches: int = 2  # Ray Data batches fetched ahead of the step
    target_std_floor: float = 0.05  # warn (log + MLflow) below this target-feature std: collapse


@dataclass
class RunSection:
    """Where a run writes and what it starts from."""

    name: str = "pretrain"
    output_dir: str = ""  # "" -> <runs root>/<name>
    init_checkpoint: str = ""  # cooldown: the main phase's checkpoint (anneal_ckpt)
    resume: bool = True
    seed: int = 239


@dataclass
class PretrainConfig:
    # Relative input paths (manifests, run.init_checkpoint) resolve against this: "" -> $VJEPA2_RAY_DATA_ROOT,
    # else the working directory (core/storage.py data_root). Absolute or s3://.
    data_root: str = ""
    run: RunSection = field(default_factory=RunSection)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    masks: list[MaskConfig] = field(default_factory=default_masks)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
