"""Spherical k-means with FAISS: backend check, k policy, training subsample, flat and two-level fits.

The paper clusters 316M DINOv2 scene embeddings into 1.5M clusters "as DINOv2 does" (docs/reference.md R-curation-1.2
step 4); the algorithm details are our reconstruction (docs/reference.md R-curation-1.3):

* spherical (cosine) k-means, because the embeddings are L2-normalised and retrieval uses cosine;
* the training set is a uniform subsample of at most ``k * max_points_per_centroid`` points, FAISS's
  own rule (docs/reference.md R-curation-5.1), drawn here by sorted row index so a memory-mapped array is read in one
  forward pass instead of being loaded whole;
* for large k, two levels: ``k1 ~ sqrt(k)`` coarse clusters, then every coarse cluster is split into a
  number of fine clusters proportional to its share of the sample; the fine fits are independent jobs
  (``map_fn``), which the pipeline runs as Ray tasks. Assignment against a two-level codebook searches
  the ``nprobe`` nearest coarse lists (an IVF index over the fine centroids) instead of all k.

GPU use is decided explicitly (docs/reference.md R-curation-5.2): the faiss-gpu wheel imports fine without a driver and
``faiss.Kmeans(gpu=True)`` then silently runs on CPU, so we count GPUs with ``faiss.get_num_gpus()``
and look for ``StandardGpuResources`` ourselves.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core import storage
from core.errors import UserError

log = logging.getLogger(__name__)

MapFn = Callable[[Callable[..., Any], Sequence[tuple]], list[Any]]


def serial_map(fn: Callable[..., Any], jobs: Sequence[tuple]) -> list[Any]:
    return [fn(*job) for job in jobs]


def faiss_gpus(policy: str = "auto") -> int:
    """How many GPUs FAISS should use: 0 on faiss-cpu or a box without a CUDA device."""
    import faiss

    has_gpu_build = hasattr(faiss, "StandardGpuResources")
    ngpu = faiss.get_num_gpus() if has_gpu_build else 0
    if policy == "off":
        return 0
    if policy == "require" and ngpu == 0:
        why = "this faiss build has no GPU support (faiss-cpu)" if not has_gpu_build else "no CUDA device"
        raise UserError(f"kmeans.gpu=require but {why}; install faiss-gpu on a GPU node or set kmeans.gpu=auto")
    return ngpu


def center(x: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    """``normalize(x - mean)`` as float32: cosine around the pool mean instead of the origin.

    Image features share a large common component (every cosine between natural images is high);
    removing the pool mean spreads them over the sphere, so clusters split on content and copies stand
    out from look-alikes. ``mean=None`` returns ``x`` as float32.
    """
    x = np.asarray(x, dtype=np.float32)
    if mean is None:
        return x
    y = x - mean.astype(np.float32)
    return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


def choose_k(n: int, scenes_per_cluster: float, num_clusters: int = 0) -> int:
    """k for ``n`` pool scenes: ``num_clusters`` if set, else ``round(n / scenes_per_cluster)``, within [1, n]."""
    if n <= 0:
        raise UserError("k-means: the pool has no embedded scenes")
    k = num_clusters if num_clusters > 0 else round(n / scenes_per_cluster)
    return int(min(max(k, 1), n))


def training_size(n: int, k: int, min_ppc: int, max_ppc: int) -> int:
    """FAISS's rule: at most ``k * max_ppc`` training points; fewer than ``k * min_ppc`` only warns."""
    if n < k * min_ppc:
        log.warning("k-means: %d points for %d centroids is below %d points per centroid", n, k, min_ppc)
    return min(n, k * max_ppc)


def sample_rows(x: np.ndarray, m: int, seed: int, chunk: int = 65536) -> np.ndarray:
    """A uniform sample of ``m`` rows of ``x`` (all rows if ``m >= len(x)``) as a float32 array.

    Row indices are sorted so a memmap is read front to back, ``chunk`` rows at a time.
    """
    n = len(x)
    if m >= n:
        return np.ascontiguousarray(x, dtype=np.float32)
    idx = np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))
    out = np.empty((m, x.shape[1]), np.float32)
    for start in range(0, m, chunk):
        part = idx[start : start + chunk]
        out[start : start + len(part)] = x[part]
    return out


def fit_flat(x: np.ndarray, k: int, niter: int, seed: int, ngpu: int = 0) -> tuple[np.ndarray, float]:
    """Spherical k-means on all of ``x`` (already subsampled): unit-norm centroids and the objective."""
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, gpu=ngpu or False,
                      max_points_per_centroid=max(1, math.ceil(len(x) / k)), min_points_per_centroid=1)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    obj = float(km.obj[-1]) if len(km.obj) else 0.0
    return np.ascontiguousarray(km.centroids, dtype=np.float32), obj


def allocate(sizes: np.ndarray, k: int) -> np.ndarray:
    """Split ``k`` fine clusters over coarse clusters proportionally to ``sizes`` (largest remainder).

    Every non-empty coarse cluster gets at least 1 and at most its size; the total is ``k``
    (or the total size, if smaller).
    """
    sizes = np.asarray(sizes, np.int64)
    k = int(min(k, sizes.sum()))
    share = sizes / sizes.sum() * k
    alloc = np.clip(np.floor(share).astype(np.int64), (sizes > 0).astype(np.int64), sizes)
    while (missing := k - int(alloc.sum())) != 0:
        step = 1 if missing > 0 else -1
        room = alloc < sizes if step > 0 else alloc > 1
        gap = np.where(room, (share - alloc) * step, -np.inf)
        alloc[int(np.argmax(gap))] += step
    return alloc


@dataclass
class Codebook:
    """Fine centroids, and for a two-level fit the coarse centroids and each fine centroid's coarse id."""

    centroids: np.ndarray
    coarse: np.ndarray | None = None
    coarse_of: np.ndarray | None = None

    @property
    def k(self) -> int:
        return len(self.centroids)

    def save(self, uri: str) -> None:
        buf = io.BytesIO()
        arrays = {"centroids": self.centroids}
        if self.coarse is not None:
            arrays.update(coarse=self.coarse, coarse_of=self.coarse_of)
        np.savez(buf, **arrays)
        storage.write_bytes(uri, buf.getvalue())

    @classmethod
    def load(cls, uri: str) -> Codebook:
        with np.load(io.BytesIO(storage.read_bytes(uri))) as z:
            return cls(z["centroids"], z["coarse"] if "coarse" in z else None,
                       z["coarse_of"] if "coarse_of" in z else None)


def fit(x: np.ndarray, k: int, *, niter: int, seed: int, min_ppc: int = 39, max_ppc: int = 256,
        two_level_min_k: int = 65536, coarse_clusters: int = 0, ngpu: int = 0,
        map_fn: MapFn = serial_map) -> tuple[Codebook, dict[str, Any]]:
    """Train a spherical k-means codebook of ``k`` centroids on (a subsample of) ``x``."""
    t0 = time.perf_counter()
    m = training_size(len(x), k, min_ppc, max_ppc)
    sample = sample_rows(x, m, seed)
    t_sample = time.perf_counter() - t0
    stats: dict[str, Any] = {"k": k, "n": len(x), "n_train": m, "ngpu": ngpu, "sample_s": t_sample}
    if k < two_level_min_k:
        centroids, obj = fit_flat(sample, k, niter, seed, ngpu)
        stats.update(two_level=False, objective=obj, fit_s=time.perf_counter() - t0)
        return Codebook(centroids), stats

    k1 = coarse_clusters or max(2, round(math.sqrt(k)))
    coarse_sample = sample_rows(sample, training_size(m, k1, min_ppc, max_ppc), seed + 1)
    coarse, _ = fit_flat(coarse_sample, k1, niter, seed, ngpu)
    labels, _ = assign(sample, Codebook(coarse), ngpu=ngpu)
    sizes = np.bincount(labels, minlength=k1)
    alloc = allocate(sizes, k)
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    jobs = [(sample[order[bounds[c] : bounds[c + 1]]], int(alloc[c]), niter, seed + c, ngpu)
            for c in range(k1) if alloc[c] > 0]
    log.info("k-means: two-level, %d coarse clusters -> %d fine jobs for k=%d", k1, len(jobs), int(alloc.sum()))
    results = map_fn(fit_flat, jobs)
    owners = [c for c in range(k1) if alloc[c] > 0]
    centroids = np.concatenate([r[0] for r in results])
    coarse_of = np.concatenate([np.full(len(r[0]), c, np.int64) for c, r in zip(owners, results)])
    stats.update(two_level=True, k1=k1, objective=float(sum(r[1] for r in results)),
                 fit_s=time.perf_counter() - t0)
    return Codebook(centroids, coarse, coarse_of), stats


def _index(codebook: Codebook, ngpu: int, nprobe: int) -> Any:
    import faiss

    d = codebook.centroids.shape[1]
    if codebook.coarse is None:
        index = faiss.IndexFlatIP(d)
        index.add(codebook.centroids)
    else:
        from faiss.contrib.ivf_tools import add_preassigned

        quantizer = faiss.IndexFlatIP(d)
        quantizer.add(codebook.coarse)
        index = faiss.IndexIVFFlat(quantizer, d, len(codebook.coarse), faiss.METRIC_INNER_PRODUCT)
        add_preassigned(index, codebook.centroids, codebook.coarse_of, np.arange(codebook.k, dtype=np.int64))
        index.nprobe = nprobe
    if ngpu > 0:
        index = faiss.index_cpu_to_all_gpus(index, ngpu=ngpu)
    return index


def assign(x: np.ndarray, codebook: Codebook, *, ngpu: int = 0, batch: int = 65536,
           nprobe: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (by cosine) of every row of ``x``: ``(labels int64, similarity float32)``.

    Reads ``x`` (possibly a memmap) ``batch`` rows at a time, so memory stays flat in ``len(x)``.
    """
    index = _index(codebook, ngpu, nprobe)
    labels = np.empty(len(x), np.int64)
    sims = np.empty(len(x), np.float32)
    for start in range(0, len(x), batch):
        part = np.ascontiguousarray(x[start : start + batch], dtype=np.float32)
        d, i = index.search(part, 1)
        labels[start : start + len(part)] = i[:, 0]
        sims[start : start + len(part)] = d[:, 0]
    return labels, sims
