"""Data configs: VideoMix sources, clip sampling, augmentation and Ray Data execution.

Defaults are the paper's VideoMix22M weights (vjepa2.md 5.1) and Meta's clip sampling
(16 frames at 4 fps, vjepa2.md 5.3) and augmentation (vjepa2.md 5.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class SourceConfig:
    """One source of the mix. ``manifest`` is a local path or s3:// URI (Parquet or Meta CSV)."""

    manifest: str = ""
    weight: float = 0.0
    kind: Literal["video", "image"] = "video"


def videomix22m_sources() -> dict[str, SourceConfig]:
    """The paper's VideoMix22M mixture (vjepa2.md 5.1); manifests are set per run."""
    return {
        "ssv2": SourceConfig(weight=0.056),
        "kinetics": SourceConfig(weight=0.188),
        "howto100m": SourceConfig(weight=0.318),
        "yt1b": SourceConfig(weight=0.188),
        "imagenet": SourceConfig(weight=0.250, kind="image"),
    }


@dataclass
class ClipConfig:
    """How one training clip is cut and augmented."""

    frames_per_clip: int = 16
    fps: float = 4.0
    crop_size: int = 256
    rrc_scale: tuple[float, float] = (0.3, 1.0)
    rrc_ratio: tuple[float, float] = (0.75, 1.35)
    horizontal_flip: bool = True


@dataclass
class DataConfig:
    """Sources, clip sampling and the Ray Data execution budget."""

    sources: dict[str, SourceConfig] = field(default_factory=videomix22m_sources)
    clip: ClipConfig = field(default_factory=ClipConfig)
    decoder: Literal["decord", "pyav", "torchcodec"] = "decord"
    seed: int = 239
    samples_per_epoch: int = 0  # 0: steps_per_epoch x global batch
    num_decode_workers: int = 2
    decode_cpus: float = 0.5
    read_cpus: float = 0.25
    rejects_dir: str = ""  # "" -> <run output>/rejects
