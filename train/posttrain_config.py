"""The V-JEPA 2-AC post-training run config: one YAML (configs/posttrain/<preset>.yaml) describes a run.

Meta's recipe is ``configs/posttrain/vitg-droid.yaml`` (docs/reference.md R-vjepa2-6.3 to 6.5); the dataclass
defaults are that recipe's, so a preset states only what differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.ray_session import RayConfig
from core.tracking import TrackingConfig
from models.config import ACPredictorConfig, ModelConfig
from models.frozen import FrozenEncoderConfig
from pipelines.episodes.cache import CacheConfig
from pipelines.episodes.clips import EpisodeDataConfig
from train.ac_loss import ACLossConfig
from train.config import OptimConfig, RunSection, TrainerConfig


def ac_optim() -> OptimConfig:
    """docs/reference.md R-vjepa2-6.5: WSD 7.5e-5 -> 4.25e-4 over 4.5k steps, constant, linear to 0 over the
    last 4.5k of 94.5k; AdamW, WD 0.04 (biases and 1-D parameters exempt); global batch 256."""
    return OptimConfig(schedule="wsd", start_lr=7.5e-5, lr=4.25e-4, final_lr=0.0, warmup_steps=4500,
                       anneal_steps=4500, total_steps=94500, weight_decay=0.04, global_batch=256,
                       reference_global_batch=256)


def ac_model() -> ModelConfig:
    """The released V-JEPA 2-AC shapes (configs/model/vitg-ac.yaml); presets load theirs by ``_base_``."""
    return ModelConfig(preset="vitg-ac", ac_predictor=ACPredictorConfig())


@dataclass
class QualityConfig:
    """The held-out check run at every validation: rollout L1 against "copy the last frame" and against
    the same predictor fed shuffled actions, plus pictures of a few held-out episodes."""

    min_gain_vs_shuffled: float = 0.10  # the bar: shuffled actions must cost >= 10 % relative L1
    gif_episodes: int = 3  # held-out episodes drawn as GIFs at each validation (train/posttrain_pictures.py; 0: none)
    gif_frames: int = 32  # clip frames per GIF, from the episode's start (32 at 4 fps: 8 s)


@dataclass
class PosttrainConfig:
    # Relative input paths (data.dataset, encoder.checkpoint, run.init_checkpoint) resolve against this.
    data_root: str = ""
    run: RunSection = field(default_factory=lambda: RunSection(name="posttrain"))
    # The AC predictor's shapes, and the encoder geometry they are built for (model.encoder: embed dim,
    # patch and tubelet sizes of a vjepa2/random encoder; image and pixel encoders bring their own).
    model: ModelConfig = field(default_factory=ac_model)
    encoder: FrozenEncoderConfig = field(default_factory=FrozenEncoderConfig)
    data: EpisodeDataConfig = field(default_factory=EpisodeDataConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    loss: ACLossConfig = field(default_factory=ACLossConfig)
    optim: OptimConfig = field(default_factory=ac_optim)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(batch_size_per_worker=8))
    quality: QualityConfig = field(default_factory=QualityConfig)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="vjepa2-posttrain"))
    ray: RayConfig = field(default_factory=RayConfig)
