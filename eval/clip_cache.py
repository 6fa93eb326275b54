"""The probe's clip feature cache: a frozen encoder's tokens of every evaluation sample, written once.

A probe grid trains 20 small heads on a frozen encoder; without training augmentation (and always for
evaluation) a row's sample is deterministic (``pipelines.labelled.eval_sample``), so its tokens never
change and the encoder, by far the costliest part, needs to see each row once, not once per epoch.
A pre-pass (a Ray Data actor pool, GPU or CPU, as the post-training cache's: ``pipelines/episodes/cache.py``,
whose :class:`~pipelines.episodes.cache.CacheConfig` it takes) encodes every row of the parts it is
asked for; the probe then reads tokens instead of decoding and encoding. Tokens equal on-the-fly
encoding up to the storage dtype's rounding (float32: exactly, tests/test_probe_stage.py).

Layout (local or ``s3://``)::

    tokens/<part>/<position>.npy   [views, segments x N, D]: one row's tokens (position in its part)
    rejects/                       rows the pre-pass could not decode, with their reason
    cache.json                     what the tokens depend on (:func:`identity`) and which rows are inside;
                                   written last (a cache without it is incomplete and is rebuilt)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from core import storage
from core.errors import UserError
from pipelines.episodes.cache import (
    CACHE_FILE,
    CacheConfig,
    digest,
    npy_bytes,
    read_cache_meta,
    stored_tokens,
    weights_identity,
)
from pipelines.labelled import PARTS, REDRAW_STREAM, LabelledDataConfig, LabelledRows, eval_sample
from pipelines.quarantine import Quarantine, RejectRecord, SampleError

log = logging.getLogger(__name__)

TOKENS_DIR = "tokens"


def sample_tokens(encoder: Any, clips: Any, views: int) -> Any:
    """uint8 samples ``[B, views x S, T, H, W, 3]`` (torch, on the encoder's device) -> tokens
    ``[B, views, S x N, D]`` float32: each clip encoded alone, a view's segments concatenated along the
    token axis (Meta's multi-clip probe input). The one preprocessing both the cache and on-the-fly
    training use."""
    from pipelines.transforms import normalize

    batch, clips_per_sample = clips.shape[:2]
    tokens = encoder(normalize(clips.reshape(batch * clips_per_sample, *clips.shape[2:]))).tokens
    segments = clips_per_sample // views
    return tokens.reshape(batch, views, segments * tokens.size(1), tokens.size(2))


def identity(data: LabelledDataConfig, encoder: Any, dtype: str, parts: dict[str, LabelledRows]) -> dict[str, Any]:
    """Everything the cached tokens depend on: the encoder (config and weights file), how samples are
    cut, the storage dtype and the rows of every part (their URIs' digest)."""
    rows = {name: hashlib.sha256("\n".join(p.uris).encode()).hexdigest() for name, p in parts.items()}
    geometry = {k: getattr(data, k) for k in ("frames_per_clip", "frame_step", "num_segments", "num_views",
                                              "crop_size", "decoder")}
    return {"encoder": asdict(encoder), "weights": weights_identity(getattr(encoder, "checkpoint", "")),
            "geometry": geometry, "dtype": dtype, "rows": rows}


class ClipCache:
    """A complete cache, opened for reading."""

    def __init__(self, root: str, meta: dict[str, Any]):
        self.root, self.meta = root, meta
        self.dtype: str = meta["identity"]["dtype"]
        self.positions = {part: set(ids) for part, ids in meta["positions"].items()}

    @classmethod
    def open(cls, root: str) -> ClipCache:
        return cls(root, read_cache_meta(root, "clip feature cache"))

    def has(self, part: str, position: int) -> bool:
        return position in self.positions.get(part, ())

    def read(self, part: str, position: int) -> np.ndarray:
        """Tokens ``[views, S x N, D]`` in the stored dtype."""
        if not self.has(part, position):
            raise SampleError("not_cached", "fetch", f"{part} row {position} is not in the clip cache {self.root}")
        return np.load(io.BytesIO(storage.read_bytes(token_uri(self.root, part, position))), allow_pickle=False)


def token_uri(root: str, part: str, position: int) -> str:
    return storage.join(root, TOKENS_DIR, part, f"{position}.npy")


class ClipEncoder:
    """The pre-pass actor: rows -> their tokens written to the cache (or a quarantined reason)."""

    def __init__(self, data: LabelledDataConfig, encoder: Any, cache: CacheConfig, root: str, views: dict[str, int]):
        import torch

        from models.frozen import build_frozen_encoder

        self.device = torch.device("cuda" if cache.use_gpu and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, int(cache.cpus_per_worker)))
        self.data, self.cache, self.root, self.views = data, cache, root, views
        self.encoder = build_frozen_encoder(encoder, self.device)
        self.quarantine = Quarantine(storage.join(root, "rejects"))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        written = []
        for uri, part_id, position in zip(batch["uri"].tolist(), batch["part"].tolist(), batch["position"].tolist()):
            part = PARTS[part_id]
            try:
                sample = eval_sample(uri, self.data, self.views[part])
            except SampleError as err:
                self.quarantine.add(RejectRecord.from_error(err, uri, part, position))
                written.append(False)
                continue
            clips = torch.from_numpy(sample).to(self.device)[None]
            tokens = sample_tokens(self.encoder, clips, self.views[part])[0]
            stored = stored_tokens(tokens, self.cache.dtype)
            storage.write_bytes(token_uri(self.root, part, position), npy_bytes(stored))
            written.append(True)
        self.quarantine.flush()
        return {"part": batch["part"], "position": batch["position"], "written": np.asarray(written)}


def build_clip_cache(data: LabelledDataConfig, encoder: Any, cache: CacheConfig, root: str,
                     parts: dict[str, LabelledRows], views: dict[str, int]) -> ClipCache:
    """The cache at ``root`` of every row of ``parts`` (by name; ``views[name]`` spatial views each) for
    ``encoder`` (a ``models.frozen.FrozenEncoderConfig``): reused if complete with the same identity, else
    written by the Ray Data actor pool."""
    import ray

    ident = identity(data, encoder, cache.dtype, parts)
    done_uri = storage.join(root, CACHE_FILE)
    if storage.exists(done_uri):
        meta = json.loads(storage.read_bytes(done_uri))
        if meta["identity"] == json.loads(json.dumps(ident, default=str)):
            log.info("clip cache %s: reused (%s)", root,
                     ", ".join(f"{p} {len(v)}" for p, v in meta["positions"].items()))
            return ClipCache(root, meta)
        log.info("clip cache %s: built for another encoder, geometry or rows; rebuilding", root)
        storage.delete(done_uri)
    items = [{"uri": uri, "part": rows.part, "position": i}
             for rows in parts.values() for i, uri in enumerate(rows.uris)]
    began = time.perf_counter()
    log.info("clip cache %s: encoding %d rows (%s) on %d actor(s)", root, len(items),
             ", ".join(f"{p} {len(r)}" for p, r in parts.items()), cache.num_workers)
    ds = ray.data.from_items(items).map_batches(
        ClipEncoder, fn_constructor_kwargs={"data": data, "encoder": encoder, "cache": cache, "root": root,
                                            "views": views},
        batch_size=4, batch_format="numpy", num_cpus=cache.cpus_per_worker, num_gpus=1 if cache.use_gpu else 0,
        compute=ray.data.ActorPoolStrategy(size=cache.num_workers))
    positions: dict[str, list[int]] = {p: [] for p in parts}
    for row in ds.iter_rows():
        if row["written"]:
            positions[PARTS[int(row["part"])]].append(int(row["position"]))
    if not any(positions.values()):
        raise UserError(f"{root}: the clip cache pre-pass encoded no row (reasons in {root}/rejects)")
    meta = {"identity": ident, "positions": {p: sorted(v) for p, v in positions.items()},
            "missing": {p: len(parts[p]) - len(v) for p, v in positions.items()},
            "seconds": round(time.perf_counter() - began, 2)}
    text = json.dumps(meta, indent=1, default=str)
    storage.write_bytes(done_uri, text.encode())
    log.info("clip cache %s: %d rows in %.1f s", root, sum(map(len, positions.values())), meta["seconds"])
    return ClipCache(root, json.loads(text))  # as a reader will see it (tuples as lists)


def default_dir(ident: dict[str, Any], runs_root: str) -> str:
    return storage.join(runs_root, "feature_cache", "clips-" + digest(ident)[:12])


class CachedSamples:
    """Decode requests -> cached tokens (a Ray Data map over the request blocks): columns ``tokens``
    ``[views, S x N, D]`` (stored dtype), ``label``, ``sample_id``, ``part``. A training row the pre-pass
    could not encode is replaced by a seeded redraw among the cached ``fit`` rows (it is in the cache's
    rejects already); an evaluation row without tokens is left out (counted by the cache as missing)."""

    def __init__(self, root: str, fit: LabelledRows | None = None, seed: int = 0):
        self.cache, self.fit, self.seed = ClipCache.open(root), fit, seed
        self.cached_fit = np.asarray(sorted(self.cache.positions.get("fit", ())), np.int64)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tokens, labels, keep = [], [], []
        for i, (part_id, position) in enumerate(zip(batch["part"].tolist(), batch["position"].tolist())):
            part, label = PARTS[part_id], int(batch["label"][i])
            if not self.cache.has(part, position):
                if self.fit is None or not len(self.cached_fit):
                    continue
                rng = np.random.default_rng([self.seed, int(batch["sample_id"][i]), REDRAW_STREAM])
                position = int(self.cached_fit[rng.integers(len(self.cached_fit))])
                label = int(self.fit.labels[position])
            tokens.append(self.cache.read(part, position))
            labels.append(label)
            keep.append(i)
        kept = np.asarray(keep, np.int64)
        return {"tokens": np.stack(tokens) if tokens else np.zeros((0, 1, 1, 1), np.float16),
                "label": np.asarray(labels, np.int64), "sample_id": batch["sample_id"][kept],
                "part": batch["part"][kept]}


def cached_dataset(requests: Any, root: str, batch_rows: int, fit: LabelledRows | None = None, seed: int = 0,
                   preserve_order: bool = True) -> Any:
    """The Ray Dataset of cached tokens for ``requests`` (``pipelines.labelled`` request tables)."""
    import ray

    from pipelines.request_source import split_blocks

    blocks = list(split_blocks(requests, batch_rows))
    ds = ray.data.from_arrow(blocks or [requests]).map_batches(
        CachedSamples, fn_constructor_kwargs={"root": root, "fit": fit, "seed": seed}, batch_size=batch_rows,
        batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.25)
    ds.context.execution_options.preserve_order = preserve_order
    return ds
