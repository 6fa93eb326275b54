"""The frozen-encoder feature cache: every recorded frame's tokens, written once, read by training.

The encoder is frozen and the crop deterministic, so a frame's tokens never change during a run. A
pre-pass (a Ray Data actor pool, GPU or CPU) encodes every recorded frame of every episode once, as
V-JEPA 2-AC encodes frames (alone, tubelet filled by copies, layer-normed: ``FrozenEncoder.frame_tokens``),
and training reads the tokens of each sampled window instead of decoding and encoding pixels.

Layout (local or ``s3://``)::

    frames/<episode_id>.npy   tokens [num_steps, n, D] of every recorded step, in ``dtype``
    rejects/                  episodes the pre-pass could not read, with their reason
    cache.json                what the tokens depend on (:func:`identity`) and what is inside; written
                              last, so a cache without it is incomplete (``_pending.json`` marks one in
                              progress, and a rerun keeps the shards it already wrote)

It caches *every* recorded frame, so training keeps Meta's random windows exactly (any window, any
phase of the frame step) and the loss equals on-the-fly encoding up to the cache dtype's rounding
(float32 caches are exact to float tolerance: tests/test_posttrain.py). The price is size: all of DROID
at 15 Hz is 3.35M frames x 256 tokens x 1408 dims x 2 bytes, about 2.4 TB; a cache of one fixed 4 fps
phase would be a quarter of that (0.64 TB) but would restrict windows to start on that phase
(docs/posttrain.md "Feature cache"). ``bfloat16`` shards are stored as their raw 16 bits (numpy has no
bfloat16) and widened by :func:`to_float`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from core import storage
from core.errors import UserError
from pipelines.episodes.clips import EpisodeDataConfig, read_frames
from pipelines.episodes.schema import INDEX_FILE, EpisodeInfo, read_index, read_steps, video_path
from pipelines.quarantine import Quarantine, RejectRecord, SampleError

log = logging.getLogger(__name__)

CACHE_FILE = "cache.json"
PENDING_FILE = "_pending.json"
FRAMES_DIR = "frames"
CacheDtype = Literal["float16", "bfloat16", "float32"]
STORED = {"float16": "float16", "bfloat16": "uint16", "float32": "float32"}  # numpy dtype on disk
OPEN_SHARDS = 64  # shards a reader keeps (memory-mapped when local, whole when fetched from S3)


@dataclass
class CacheConfig:
    """Whether and where post-training (and probe training) read frozen-encoder tokens from a cache."""

    enabled: bool = False
    dir: str = ""  # "" -> <runs root>/feature_cache/<first 12 hex digits of the identity digest>
    dtype: CacheDtype = "float16"
    num_workers: int = 1  # encoder actors of the pre-pass
    use_gpu: bool = False  # one GPU per pre-pass actor
    cpus_per_worker: float = 1.0
    frames_per_batch: int = 64  # frames per encoder forward in the pre-pass


def weights_identity(uri: str) -> dict[str, Any]:
    """Size and modification time of a weights file (or a checkpoint directory's record): what tells a
    retrained checkpoint at the same path from the one a cache was built with, without hashing gigabytes."""
    if not uri:
        return {}
    target = storage.join(uri, "train_state.json") if storage.is_dir(uri) else uri
    fs, path = storage.filesystem_for(target)
    info = fs.get_file_info(path)
    return {"uri": uri, "size": info.size, "mtime_ns": info.mtime_ns}


def identity(data: EpisodeDataConfig, encoder: Any, dtype: str) -> dict[str, Any]:
    """Everything the cached tokens depend on: the encoder (config and weights file), the crop, the
    storage dtype and the dataset's index (its bytes' digest: a rebuilt index is a new cache)."""
    index_digest = hashlib.sha256(storage.read_bytes(storage.join(data.dataset, INDEX_FILE))).hexdigest()
    return {"encoder": asdict(encoder), "weights": weights_identity(getattr(encoder, "checkpoint", "")),
            "crop_size": data.crop_size, "crop_ratio": list(data.crop_ratio), "dtype": dtype,
            "dataset": data.dataset, "index_sha256": index_digest}


def digest(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def to_float(tokens: Any, dtype: str) -> Any:
    """Stored tokens (numpy or torch, as read) -> a float32 torch tensor."""
    import torch

    tensor = torch.as_tensor(tokens)
    if dtype == "bfloat16":
        return tensor.view(torch.bfloat16).float()
    return tensor.float()


def clip_tokens(encoder: Any, clips: Any) -> Any:
    """uint8 clips ``[B, T, H, W, 3]`` (torch, on the encoder's device) -> layer-normed frame tokens
    ``[B, T, n, D]`` float32: the one preprocessing both the cache and on-the-fly training use."""
    from pipelines.transforms import normalize

    batch, frames = clips.shape[:2]
    tokens = encoder.frame_tokens(normalize(clips)).tokens
    return tokens.reshape(batch, frames, -1, tokens.size(-1))


def stored_tokens(tokens: Any, dtype: str) -> np.ndarray:
    import torch

    if dtype == "bfloat16":
        return tokens.to(torch.bfloat16).view(torch.uint16).cpu().numpy()
    return tokens.to(getattr(torch, dtype)).cpu().numpy()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def read_cache_meta(root: str, what: str) -> dict[str, Any]:
    """A finished cache's ``cache.json`` (written last by its pre-pass), or a clear error naming ``root``."""
    uri = storage.join(root, CACHE_FILE)
    if not storage.exists(uri):
        raise UserError(f"{root}: no {CACHE_FILE}: not a {what}, or its pre-pass has not finished")
    return json.loads(storage.read_bytes(uri))


class FeatureCache:
    """A complete cache, opened for reading (``read`` the tokens of some steps of an episode)."""

    def __init__(self, root: str, meta: dict[str, Any]):
        self.root, self.meta = root, meta
        self.dtype: str = meta["identity"]["dtype"]
        self.token_shape: tuple[int, int] = tuple(meta["token_shape"])
        self.episodes: dict[str, int] = meta["episodes"]
        self._open: OrderedDict[str, np.ndarray] = OrderedDict()

    @classmethod
    def open(cls, root: str) -> FeatureCache:
        return cls(root, read_cache_meta(root, "feature cache"))

    def shard_uri(self, episode_id: str) -> str:
        return storage.join(self.root, FRAMES_DIR, f"{episode_id}.npy")

    def shard(self, episode_id: str) -> np.ndarray:
        if episode_id not in self.episodes:
            raise SampleError("not_cached", "fetch", f"{episode_id} is not in the feature cache {self.root}")
        if episode_id not in self._open:
            uri = self.shard_uri(episode_id)
            array = (np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False) if storage.is_s3(uri)
                     else np.load(uri, mmap_mode="r", allow_pickle=False))
            self._open[episode_id] = array
            if len(self._open) > OPEN_SHARDS:
                self._open.popitem(last=False)
        self._open.move_to_end(episode_id)
        return self._open[episode_id]

    def read(self, episode_id: str, steps: np.ndarray) -> np.ndarray:
        """Tokens ``[len(steps), n, D]`` of those recorded steps, in the stored dtype."""
        return np.ascontiguousarray(self.shard(episode_id)[steps])


class EpisodeEncoder:
    """The pre-pass actor: episode ids -> one token shard each (or a quarantined reason)."""

    def __init__(self, data: EpisodeDataConfig, encoder: Any, cache: CacheConfig, root: str,
                 infos: dict[str, EpisodeInfo]):
        import torch

        from models.frozen import build_frozen_encoder

        self.device = torch.device("cuda" if cache.use_gpu and torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, int(cache.cpus_per_worker)))
        self.data, self.cache, self.root, self.infos = data, cache, root, infos
        self.encoder = build_frozen_encoder(encoder, self.device)
        self.quarantine = Quarantine(storage.join(root, "rejects"))

    def encode(self, info: EpisodeInfo) -> np.ndarray:
        import torch

        steps = read_steps(self.data.dataset, info.episode_id, info.num_steps)
        frames = read_frames(video_path(self.data.dataset, info), steps.frame_index, self.data)
        chunks = []
        for at in range(0, len(frames), self.cache.frames_per_batch):
            part = torch.from_numpy(frames[at:at + self.cache.frames_per_batch]).to(self.device)
            chunks.append(clip_tokens(self.encoder, part[None])[0])
        return stored_tokens(torch.cat(chunks), self.cache.dtype)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        written, shapes = [], []
        for episode_id in batch["episode_id"].tolist():
            info = self.infos[episode_id]
            try:
                tokens = self.encode(info)
            except SampleError as err:
                self.quarantine.add(RejectRecord.from_error(err, info.video_uri, episode_id))
                written.append(0)
                shapes.append(np.zeros(2, np.int64))
                continue
            storage.write_bytes(storage.join(self.root, FRAMES_DIR, f"{episode_id}.npy"), npy_bytes(tokens))
            written.append(len(tokens))
            shapes.append(np.asarray(tokens.shape[1:], np.int64))
        self.quarantine.flush()
        return {"episode_id": batch["episode_id"], "frames": np.asarray(written, np.int64), "shape": np.stack(shapes)}


def default_dir(ident: dict[str, Any], runs_root: str) -> str:
    return storage.join(runs_root, "feature_cache", digest(ident)[:12])


def build_feature_cache(data: EpisodeDataConfig, encoder: Any, cache: CacheConfig, root: str) -> FeatureCache:
    """The cache at ``root`` for ``data``'s episodes (every split) and ``encoder`` (a
    ``models.frozen.FrozenEncoderConfig``): reused if complete with the same identity, else written by
    the Ray Data actor pool (shards of an interrupted pre-pass with the same identity are kept)."""
    import ray

    ident = identity(data, encoder, cache.dtype)
    done_uri, pending_uri = storage.join(root, CACHE_FILE), storage.join(root, PENDING_FILE)
    if storage.exists(done_uri):
        meta = json.loads(storage.read_bytes(done_uri))
        if meta["identity"] == ident:
            log.info("feature cache %s: reused (%d episodes)", root, len(meta["episodes"]))
            return FeatureCache(root, meta)
        log.info("feature cache %s: built for another encoder, crop or index; rebuilding", root)
        storage.delete(done_uri)
    pending = json.loads(storage.read_bytes(pending_uri)) if storage.exists(pending_uri) else None
    infos = {info.episode_id: info for info in read_index(data.dataset)}
    kept = set()
    if pending == ident:
        kept = {uri.rsplit("/", 1)[-1].removesuffix(".npy")
                for uri in storage.list_files(storage.join(root, FRAMES_DIR), ".npy")} & set(infos)
    storage.write_bytes(pending_uri, json.dumps(ident, default=str).encode())
    todo = sorted(set(infos) - kept)
    began = time.perf_counter()
    log.info("feature cache %s: encoding %d episodes (%d kept from an earlier pass) on %d actor(s)", root,
             len(todo), len(kept), cache.num_workers)
    rows = []
    if todo:
        ds = ray.data.from_items([{"episode_id": e} for e in todo]).map_batches(
            EpisodeEncoder, fn_constructor_kwargs={"data": data, "encoder": encoder, "cache": cache, "root": root,
                                                   "infos": infos},
            batch_size=1, batch_format="numpy", num_cpus=cache.cpus_per_worker, num_gpus=1 if cache.use_gpu else 0,
            compute=ray.data.ActorPoolStrategy(size=cache.num_workers))
        rows = ds.take_all()
    episodes = {e: infos[e].num_steps for e in kept}
    episodes |= {str(r["episode_id"]): int(r["frames"]) for r in rows if int(r["frames"])}
    if not episodes:
        raise UserError(f"{root}: the feature cache pre-pass encoded no episode (reasons in {root}/rejects)")
    shape = next((tuple(int(x) for x in r["shape"]) for r in rows if int(r["frames"])), None)
    if shape is None:  # every shard came from the interrupted pass: read one header
        shape = FeatureCache(root, {"identity": ident, "token_shape": (0, 0), "episodes": episodes}).shard(
            next(iter(episodes))).shape[1:]
    meta = {"identity": ident, "token_shape": list(shape), "episodes": episodes,
            "frames": sum(episodes.values()), "seconds": round(time.perf_counter() - began, 2)}
    storage.write_bytes(done_uri, json.dumps(meta, indent=1, default=str).encode())
    storage.delete(pending_uri)
    log.info("feature cache %s: %d episodes, %d frames, %s tokens per frame in %.1f s", root, len(episodes),
             meta["frames"], "x".join(map(str, shape)), meta["seconds"])
    return FeatureCache(root, meta)
