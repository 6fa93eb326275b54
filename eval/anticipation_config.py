"""The anticipation run config: one YAML (configs/eval/ek100.yaml, tiny-anticipation.yaml) describes a run.

The defaults are Meta's EK100 recipe (docs/reference.md R-vjepa2-8.3; ``configs/eval/vitl/ek100.yaml`` at
commit c2963a4): 32 frames at 8 fps, 256 px, the pretrained predictor adding one future tubelet, a depth-4
pooler with 16 attention heads and three queries, 20 heads on lr {5e-3 .. 1e-4} x wd {1e-4 .. 0.1}, 20
epochs, sigmoid focal loss, RandAugment + random resized crop + erasing + flips. The validation clip ends
1 s before the action *starts* by default (docs/anticipation.md says why and how to get Meta's convention).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.ray_session import RayConfig
from core.tracking import TrackingConfig
from eval.probe_config import ProbeHeadConfig, ProbeOptimConfig
from models.frozen import FrozenEncoderConfig
from pipelines.anticipation import AnticipationDataConfig
from train.config import RunSection, TrainerConfig
from train.probe_optim import ProbeGrid


@dataclass
class PredictorSection:
    """The frozen predictor that adds the future tubelet (Meta's ``AnticipativeWrapper``)."""

    enabled: bool = True  # False: the probe reads the encoder tokens alone (Meta's ``no_predictor``)
    # The checkpoint holding key ``predictor`` ("" -> encoder.checkpoint); with encoder.kind=random, a
    # random predictor of encoder.preset seeded with encoder.seed, as init-checkpoint builds it.
    checkpoint: str = ""
    mask_index: int = 1  # Meta calls the predictor directly: its default mask token 1
    num_output_frames: int = 2  # frames predicted: max(this, tubelet) / tubelet tubelets (Meta: 2 -> one)


@dataclass
class AnticipationConfig:
    # Relative input paths (data.train, data.val, data.verbs, data.nouns, the checkpoints) resolve against
    # this (core/storage.py data_root).
    data_root: str = ""
    run: RunSection = field(default_factory=lambda: RunSection(name="anticipation"))
    encoder: FrozenEncoderConfig = field(default_factory=FrozenEncoderConfig)
    predictor: PredictorSection = field(default_factory=PredictorSection)
    data: AnticipationDataConfig = field(default_factory=AnticipationDataConfig)
    probe: ProbeHeadConfig = field(default_factory=lambda: ProbeHeadConfig(
        grid=ProbeGrid(wds=[1e-4, 1e-3, 1e-2, 0.1])))
    # Meta: 2 clips per GPU x 64 GPUs
    optim: ProbeOptimConfig = field(default_factory=lambda: ProbeOptimConfig(global_batch=128))
    # eval_every 0 -> once per epoch; the probes train under DDP, the frozen networks on every rank.
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(batch_size_per_worker=2, fsdp=False,
                                                                         activation_checkpointing=False))
    # Focal loss (Meta's sigmoid_focal_loss defaults); summed over clips and classes, then over the tasks.
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="vjepa2-anticipation"))
    ray: RayConfig = field(default_factory=RayConfig)
