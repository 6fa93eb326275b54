"""Cluster-based retrieval and re-weighting (docs/reference.md R-curation-1.2 steps 5-7, Table 11).

Every target training video is assigned to its nearest pool cluster; a cluster is retained when at
least ``min_hits`` target videos land in it. Retrieval "matches the support, but not the weighting" of
the targets, so clusters are re-weighted (paper, App. 10.2):

    w_c = sum_d w_d * N_dc / N_d

with ``N_dc`` the videos of target d assigned to cluster c and ``N_d`` the embedded videos of d.
Within a cluster, scenes are uniform: a scene's weight is ``w_c / |c|`` (our reconstruction,
docs/reference.md R-curation-1.3), with ``|c|`` counted after decontamination so the scene weights of the curated
manifest sum to the retained clusters' total weight (1.0 when the target weights sum to 1 and no
retained cluster was emptied).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ClusterTable:
    """Per-cluster retrieval counts and weights, indexed by cluster id ``0..k-1``."""

    hits: dict[str, np.ndarray]  # target -> N_dc per cluster
    sizes: np.ndarray  # pool scenes per cluster, before decontamination
    clean_sizes: np.ndarray  # pool scenes per cluster that survive decontamination
    weight: np.ndarray  # w_c (0 for clusters no target hit)
    retained: np.ndarray  # bool: enough hits and at least one clean scene

    @property
    def total_hits(self) -> np.ndarray:
        return np.sum(list(self.hits.values()), axis=0)

    def scene_weight(self, cluster_ids: np.ndarray) -> np.ndarray:
        """``w_c / |c|`` for scenes of the given clusters (0 outside retained clusters)."""
        per_scene = np.where(self.retained, self.weight / np.maximum(self.clean_sizes, 1), 0.0)
        return per_scene[cluster_ids]


def target_hits(labels: np.ndarray, k: int) -> np.ndarray:
    """``N_dc``: how many of a target's videos were assigned to each of the k clusters."""
    return np.bincount(np.asarray(labels, np.int64), minlength=k)


def cluster_weights(hits: dict[str, np.ndarray], target_weights: dict[str, float]) -> np.ndarray:
    """``w_c = sum_d w_d * N_dc / N_d`` over the targets that have at least one embedded video."""
    k = len(next(iter(hits.values())))
    weight = np.zeros(k, np.float64)
    for name, n_dc in hits.items():
        n_d = n_dc.sum()
        if n_d > 0:
            weight += target_weights[name] * n_dc / n_d
    return weight


def build_table(pool_labels: np.ndarray, clean: np.ndarray, target_labels: dict[str, np.ndarray],
                target_weights: dict[str, float], k: int, min_hits: int = 1) -> ClusterTable:
    """Everything stage 5 decides, from cluster assignments of the pool and of the target videos.

    ``clean`` marks pool scenes that survived decontamination.
    """
    hits = {name: target_hits(labels, k) for name, labels in target_labels.items()}
    sizes = np.bincount(pool_labels, minlength=k)
    clean_sizes = np.bincount(pool_labels[clean], minlength=k)
    total = np.sum(list(hits.values()), axis=0)
    retained = (total >= min_hits) & (clean_sizes > 0)
    return ClusterTable(hits, sizes, clean_sizes, cluster_weights(hits, target_weights), retained)
