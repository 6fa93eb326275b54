"""Stage 5: fit the k-means codebook on the clean pool, as one Ray task that fans out its fine fits.

``curation/kmeans.py`` is the algorithm, on arrays, without Ray or shards. This module connects it to the
pipeline: it reads the training sample out of the embedding and decontam shards into a local memmap,
runs ``kmeans.fit`` with the two-level fine fits as Ray tasks, and saves the codebook.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from core.errors import UserError
from curation import kmeans, shards
from curation.config import KMeansConfig
from curation.stages import clean_rows, embedding_matrix


def ray_map(num_gpus: float) -> kmeans.MapFn:
    """A ``kmeans.MapFn`` that runs every job as a Ray task (one CPU, ``num_gpus`` GPUs)."""

    def run(fn: Callable[..., Any], jobs: Sequence[tuple]) -> list[Any]:
        import ray

        remote = ray.remote(num_cpus=1, num_gpus=num_gpus)(fn)
        return ray.get([remote.remote(*job) for job in jobs])

    return run


def fit_codebook(pairs: list[tuple[str, str]], mean: np.ndarray | None, k: int, cfg: KMeansConfig,
                 codebook_uri: str, scratch: str) -> dict[str, Any]:
    """Gather the k-means training sample of the clean pool into a local memmap, fit, save (a Ray task).

    Only the sampled rows are written (at most ``k * max_points_per_centroid``), so the scratch disk
    holds the training set, not the pool.
    """
    ngpu = kmeans.faiss_gpus(cfg.gpu)
    t0 = time.perf_counter()
    counts = [clean_rows(e, d) for e, d in pairs]
    n = sum(counts)
    m = kmeans.training_size(n, k, cfg.min_points_per_centroid, cfg.max_points_per_centroid)
    rows = np.sort(np.random.default_rng(cfg.seed).choice(n, size=m, replace=False)) if m < n else None
    with tempfile.TemporaryDirectory(dir=scratch or None, prefix="curate-kmeans-") as tmp:
        x = gather_memmap(pairs, counts, mean, os.path.join(tmp, "train.npy"), rows)
        gather_s = time.perf_counter() - t0
        codebook, stats = kmeans.fit(
            x, k, niter=cfg.niter, seed=cfg.seed, min_ppc=cfg.min_points_per_centroid,
            max_ppc=cfg.max_points_per_centroid, two_level_min_k=cfg.two_level_min_k,
            coarse_clusters=cfg.coarse_clusters, ngpu=ngpu, map_fn=ray_map(1.0 if ngpu else 0.0))
        del x
    codebook.save(codebook_uri)
    return {**stats, "n": n, "gather_s": gather_s, "backend": f"faiss-gpu x{ngpu}" if ngpu else "faiss-cpu"}


def gather_memmap(pairs: Sequence[tuple[str, str]], counts: Sequence[int], mean: np.ndarray | None, path: str,
                  rows: np.ndarray | None = None) -> np.ndarray:
    """The centred, clean rows of ``(embedding shard, decontam shard)`` pairs in one ``.npy`` memmap.

    ``counts`` are the clean rows per pair; ``rows`` (sorted indices into the concatenated clean rows)
    selects a sample, None keeps all. ``decontam shard`` "" means no decontamination: every row is clean.
    """
    total = sum(counts) if rows is None else len(rows)
    x = None
    offset = start = 0
    for (emb_uri, dec_uri), n in zip(pairs, counts):
        pick = (np.arange(n) if rows is None
                else rows[np.searchsorted(rows, start):np.searchsorted(rows, start + n)] - start)
        start += n
        if len(pick) == 0:
            continue
        emb = kmeans.center(embedding_matrix(shards.read_shard(emb_uri, ["embedding"])), mean)
        if dec_uri:
            emb = emb[~shards.read_shard(dec_uri, ["contaminated"])["contaminated"].to_numpy(zero_copy_only=False)]
        if x is None:
            x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(total, emb.shape[1]))
        x[offset : offset + len(pick)] = emb[pick]
        offset += len(pick)
    if x is None:
        raise UserError("k-means: no clean pool scene to cluster (all quarantined or contaminated)")
    x.flush()
    return np.load(path, mmap_mode="r")
