"""Data configs: VideoMix sources, clip sampling, augmentation and Ray Data execution.

Defaults are the paper's VideoMix22M weights (docs/reference.md R-vjepa2-5.1) and Meta's clip sampling
(16 frames at 4 fps, docs/reference.md R-vjepa2-5.3) and augmentation (docs/reference.md R-vjepa2-5.5).
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
    """The paper's VideoMix22M mixture (docs/reference.md R-vjepa2-5.1); manifests are set per run."""
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
    decoder_threads: int = 1  # per decode actor; the pool's width is the parallelism
    seed: int = 239
    samples_per_epoch: int = 0  # 0: steps_per_epoch x global batch
    num_decode_workers: int = 2
    decode_cpus: float = 0.5
    # Calls queued into each decode actor at once: Ray Data converts one call's input and writes its output
    # blocks to the object store while the next call decodes (the UDF itself still runs one call at a time).
    # 2 instead of 1: +5-10% clips/s and CPU use 1.95 of 2 cores instead of 1.9 (bench/data_throughput.py).
    decode_calls_per_worker: int = 2
    decode_batch_size: int = 16  # most clip requests per actor call; larger amortises the per-task overhead
    # ... but one call's output stays under this size: Ray Data budgets the object store per operator, and
    # blocks over ~1/12 of the store leave a single decode task in flight (300 MB store: 30 vs 48 clips/s).
    decode_block_mb: float = 24.0
    # Samples resolved into clip requests per Ray Data read task; a stream up to this long is resolved in the
    # driver. 2^20 requests: ~100 MB, ~1.2 s over a 10M-row manifest (bench/index_scale.py).
    resolve_window: int = 1 << 20
    # Share of every manifest row group held out for validation (its last rows): training never draws
    # them, the validation stream draws only them. 0: no holdout (every row trains).
    holdout_fraction: float = 0.0
    preserve_order: bool = True  # deterministic sample order (exact resume with one consumer)
    rejects_dir: str = ""  # "" -> <run output>/rejects
    min_frames: int = 2  # videos with fewer frames are quarantined
    max_video_bytes: int = 1_000_000_000  # Meta's filter_long_videos limit (docs/reference.md R-vjepa2-5.3); 0: none
    # Images over this many pixels are quarantined (too_large) from their header, before decoding: PIL's own
    # bomb limit (2 x Image.MAX_IMAGE_PIXELS) by default; larger values lift PIL's limit to match; 0: none.
    max_image_pixels: int = 178_956_970
    # The seek check (pipelines/decode.py, docs/data.md "Seeks that decode garbage"): on a file's first use in
    # each decode worker, a few sought frames are compared with a sequential decode of at most this many
    # frames from the start; a file that seeks wrong is read another way, or quarantined (bad_seek). 0: off.
    seek_check_frames: int = 300
    max_redraws: int = 10  # redraws from the same source before a sample is given up (and recorded)
    progress_every_s: float = 30.0
    # Environment for decode actors, e.g. {AWS_ENDPOINT_URL_S3: http://minio:9000}. Not for secrets:
    # nodes get credentials from the standard AWS chain. MALLOC_ARENA_MAX=2: with Ray's call threads each
    # glibc arena kept its own freed clip buffers; actor PSS was 845 MB, and grew 14% over a 10x longer
    # run, against 738 MB and 7% with 2 arenas, at the same clips/s (bench/data_throughput.py).
    worker_env: dict[str, str] = field(default_factory=lambda: {"MALLOC_ARENA_MAX": "2"})
