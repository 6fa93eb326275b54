"""Robot clips for V-JEPA 2-AC: episodes -> seeded random windows -> the Ray Data decode pool.

Sampling is Meta's (docs/reference.md R-vjepa2-6.4, R-robots-1.1): a clip is ``frames`` steps taken every
``frame_step(episode fps, fps)`` recorded steps (4 for 15 Hz DROID at 4 fps) from a random window, with
the window's end drawn from ``[frames x step, num_steps)``, so, as in Meta's loader, the last recorded
step is never sampled. The states at those steps give the clip's 7-D states and, by differencing, its
``frames - 1`` actions (:mod:`pipelines.episodes.actions`). Every frame gets the same deterministic crop
(:func:`pipelines.transforms.center_crop_box` at aspect ``crop_ratio``, resized to ``crop_size``), and
there is no flip: a mirrored frame would disagree with its actions.

Exactly like pretraining data, a sample is a pure function of ``(seed, sample_id, attempt)``: the stream
of samples ``[start, stop)`` is the same whoever decodes it, so a run resumed at step k (start =
k x global batch) neither repeats nor skips a sample. A sample whose video cannot be read is quarantined
with its reason (the pretraining reasons: ``missing``, ``unreadable``, ``decode_error``, ...) and redrawn
with the next attempt, up to ``max_redraws`` times.

With a feature cache (``cache_dir``, written by :mod:`pipelines.episodes.cache`) the pool reads each
clip's frame tokens instead of decoding pixels: column ``tokens`` replaces ``clip``, same windows.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from core.errors import UserError
from pipelines import decode, transforms
from pipelines.dataset import decode_pool_args
from pipelines.episodes.actions import actions_from_states
from pipelines.episodes.convert import split_episodes
from pipelines.episodes.schema import EpisodeInfo, EpisodeSteps, frame_step, read_index, read_steps, video_path
from pipelines.quarantine import Quarantine, RejectRecord, SampleError

log = logging.getLogger(__name__)

Split = Literal["train", "val", "all"]
STEPS_CACHE = 256  # episodes whose steps a decode actor keeps (a DROID episode's are ~20 KB)


@dataclass
class EpisodeDataConfig:
    """Which episodes post-training reads, how clips are cut, and the decode pool's budget."""

    dataset: str = ""  # an episode dataset directory (pipelines/episodes/schema.py), local or s3://
    frames: int = 8  # states per clip (frames - 1 actions); Meta's 8
    fps: float = 4.0  # sampling rate; the step is ceil(episode fps / fps) recorded steps
    crop_size: int = 256
    crop_ratio: tuple[float, float] = (0.75, 1.35)  # the centred crop's aspect bounds (Meta's DROID transform)
    val_fraction: float = 0.0  # episodes held out by a hash of their id (pipelines.episodes.convert.is_validation)
    split_salt: str = ""
    seed: int = 239
    decoder: Literal["decord", "pyav", "torchcodec"] = "pyav"
    decoder_threads: int = 1
    num_decode_workers: int = 2
    decode_cpus: float = 0.5
    decode_calls_per_worker: int = 2
    decode_batch_size: int = 8  # samples per decode call
    max_redraws: int = 10
    preserve_order: bool = True
    rejects_dir: str = ""  # "" -> <run output>/rejects
    cache_dir: str = ""  # a feature cache to read tokens from ("" -> decode and encode on the fly)
    worker_env: dict[str, str] = field(default_factory=lambda: {"MALLOC_ARENA_MAX": "2"})


@dataclass(frozen=True)
class Window:
    """One sample: which episode (position in the split), which recorded steps, after how many redraws."""

    episode: int
    steps: np.ndarray
    attempt: int


class EpisodeSet:
    """The episodes of one split that hold at least one clip, and the seeded draw of a sample's window."""

    def __init__(self, cfg: EpisodeDataConfig, episodes: list[EpisodeInfo], seed: int):
        self.cfg, self.episodes, self.seed = cfg, episodes, seed
        self.steps_per_frame = np.array([frame_step(e.fps, cfg.fps) for e in episodes], np.int64)
        self.num_steps = np.array([e.num_steps for e in episodes], np.int64)

    @classmethod
    def build(cls, cfg: EpisodeDataConfig, split: Split = "train", seed: int | None = None,
              only: set[str] | None = None) -> EpisodeSet:
        """The split's episodes (``only``: those ids, e.g. the ones a feature cache holds). Episodes too
        short for one clip at this run's ``frames``/``fps`` are quarantined (``episode_too_short``) and
        counted, not drawn."""
        infos = read_index(cfg.dataset)
        train, val = split_episodes(infos, cfg.val_fraction, cfg.split_salt)
        chosen = {"train": train, "val": val, "all": infos}[split]
        if only is not None:
            chosen = [e for e in chosen if e.episode_id in only]
        quarantine = Quarantine(cfg.rejects_dir or None)
        usable = []
        for info in chosen:
            span = cfg.frames * frame_step(info.fps, cfg.fps)
            if info.num_steps > span:
                usable.append(info)
            else:
                quarantine.add(RejectRecord(info.episode_id, cfg.dataset, "episode_too_short", "open",
                                            f"{info.num_steps} steps, a clip spans {span}"))
        quarantine.flush()
        if quarantine.counts:
            log.warning("%s: %d %s episode(s) too short for %d frames at %g fps, left out (rejects: %s)",
                        cfg.dataset, len(chosen) - len(usable), split, cfg.frames, cfg.fps, cfg.rejects_dir or "-")
        if not usable:
            raise UserError(f"data.dataset: {cfg.dataset}: no {split} episode holds a clip of {cfg.frames} frames "
                            f"at {cfg.fps} fps ({len(chosen)} {split} episodes; data.val_fraction {cfg.val_fraction})")
        return cls(cfg, usable, cfg.seed if seed is None else seed)

    def __len__(self) -> int:
        return len(self.episodes)

    def window(self, sample_id: int, attempt: int = 0) -> Window:
        """Meta's draw: a uniform episode, then ``end ~ U[span, num_steps)`` and the steps
        ``end - span, end - span + step, ... < end``."""
        rng = np.random.default_rng((self.seed, sample_id, attempt))
        episode = int(rng.integers(len(self.episodes)))
        step = int(self.steps_per_frame[episode])
        span = self.cfg.frames * step
        end = int(rng.integers(span, self.num_steps[episode]))
        return Window(episode, np.arange(end - span, end, step), attempt)


def output_shapes(cfg: EpisodeDataConfig, token_shape: tuple[int, int] | None = None) -> dict[str, tuple]:
    """Per-sample column shapes: ``clip`` uint8 [T, H, W, 3] or, from a cache, ``tokens`` [T, n, D]."""
    first = ({"tokens": (cfg.frames, *token_shape)} if token_shape else
             {"clip": (cfg.frames, cfg.crop_size, cfg.crop_size, 3)})
    return {**first, "states": (cfg.frames, 7), "actions": (cfg.frames - 1, 7)}


def read_frames(uri: str, frame_index: np.ndarray, cfg: EpisodeDataConfig) -> np.ndarray:
    """Frames ``frame_index`` of a video, centre-cropped and resized: uint8 ``[len, crop, crop, 3]``."""
    reader = decode.open_video(decode.fetch(uri), cfg.decoder, cfg.decoder_threads)
    try:
        if int(frame_index.max()) >= reader.num_frames:
            raise SampleError("video_shorter_than_states", "decode",
                              f"frame {int(frame_index.max())} of {reader.num_frames}")
        frames = reader.get_frames(frame_index)
    finally:
        reader.close()
    box = transforms.center_crop_box(frames.shape[1], frames.shape[2], cfg.crop_ratio)
    return transforms.resized_crop(frames, box, cfg.crop_size, flip=False)


class EpisodeClipDecoder:
    """Sample ids -> clips (or cached tokens), states and actions. A Ray Data actor, and the local
    iterator's worker; keeps the steps of recently used episodes."""

    def __init__(self, cfg: EpisodeDataConfig, episodes: EpisodeSet, rejects_dir: str | None = None):
        from pipelines.episodes.cache import FeatureCache  # only actors of a cached run open one

        self.cfg, self.set = cfg, episodes
        self.quarantine = Quarantine(rejects_dir or cfg.rejects_dir or None)
        self.cache = FeatureCache.open(cfg.cache_dir) if cfg.cache_dir else None
        self._steps: OrderedDict[str, EpisodeSteps] = OrderedDict()

    def steps(self, info: EpisodeInfo) -> EpisodeSteps:
        if info.episode_id not in self._steps:
            self._steps[info.episode_id] = read_steps(self.cfg.dataset, info.episode_id, info.num_steps)
            if len(self._steps) > STEPS_CACHE:
                self._steps.popitem(last=False)
        self._steps.move_to_end(info.episode_id)
        return self._steps[info.episode_id]

    def pixels_or_tokens(self, info: EpisodeInfo, steps: EpisodeSteps, window: Window) -> np.ndarray:
        if self.cache is not None:
            return self.cache.read(info.episode_id, window.steps)
        return read_frames(video_path(self.cfg.dataset, info), steps.frame_index[window.steps], self.cfg)

    def row(self, info: EpisodeInfo, steps: EpisodeSteps, window: Window, first: np.ndarray) -> dict[str, Any]:
        states = steps.state[window.steps].astype(np.float32)
        return {"tokens" if self.cache is not None else "clip": first, "states": states,
                "actions": actions_from_states(states).astype(np.float32), "episode": window.episode}

    def sample(self, sample_id: int) -> dict[str, Any] | None:
        """One sample with its redraws; None (recorded) if every attempt failed."""
        for attempt in range(self.cfg.max_redraws + 1):
            window = self.set.window(sample_id, attempt)
            info = self.set.episodes[window.episode]
            try:
                steps = self.steps(info)
                first = self.pixels_or_tokens(info, steps, window)
            except SampleError as err:
                self.quarantine.add(RejectRecord.from_error(err, info.video_uri, info.episode_id, sample_id))
                continue
            return {**self.row(info, steps, window, first), "sample_id": sample_id, "redraws": attempt}
        self.quarantine.add(RejectRecord("", self.cfg.dataset, "redraws_exhausted", "sample",
                                         f"{self.cfg.max_redraws} redraws failed", sample_id))
        return None

    def episode_start(self, index: int, frames: int) -> dict[str, Any]:
        """Episode ``index`` from its start: the clip frames at recorded steps 0, step, 2 step, ... (at most
        ``frames``), as a sample plus its decoded ``pixels`` (decoded with a cache too), for pictures.
        Raises :class:`SampleError` for a broken episode."""
        info = self.set.episodes[index]
        step = int(self.set.steps_per_frame[index])
        window = Window(index, np.arange(0, min(frames * step, int(self.set.num_steps[index])), step), 0)
        steps = self.steps(info)
        pixels = read_frames(video_path(self.cfg.dataset, info), steps.frame_index[window.steps], self.cfg)
        first = self.cache.read(info.episode_id, window.steps) if self.cache is not None else pixels
        return {**self.row(info, steps, window, first), "pixels": pixels, "episode_id": info.episode_id}

    def empty(self) -> dict[str, np.ndarray]:
        """A block of no samples, with the columns and dtypes of a full one (Ray concatenates blocks)."""
        token_shape, dtype = (self.cache.token_shape, self.cache.dtype) if self.cache is not None else (None, "uint8")
        shapes = output_shapes(self.cfg, token_shape)
        first = next(iter(shapes))
        return {first: np.empty((0, *shapes[first]), dtype),
                **{k: np.empty((0, *shapes[k]), np.float32) for k in ("states", "actions")},
                **{k: np.empty(0, np.int64) for k in ("episode", "sample_id", "redraws")}}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [row for row in map(self.sample, batch["sample_id"].tolist()) if row is not None]
        self.quarantine.flush()
        if not rows:
            return self.empty()
        return {name: np.stack([row[name] for row in rows]) for name in rows[0]}


def build_episode_dataset(cfg: EpisodeDataConfig, episodes: EpisodeSet, start: int, stop: int):
    """Samples ``[start, stop)`` as a Ray Dataset: columns ``clip`` (or ``tokens``), ``states``,
    ``actions``, ``episode``, ``sample_id``, ``redraws``; one block of sample ids per decode call."""
    import ray

    ids = np.arange(start, stop, dtype=np.int64)
    # One block per decode call, built here: no read or projection tasks, which would need CPUs the
    # trainers and the decode pool already hold.
    blocks = [pa.table({"sample_id": ids[i:i + cfg.decode_batch_size]})
              for i in range(0, len(ids), cfg.decode_batch_size)]
    ds = ray.data.from_arrow(blocks or [pa.table({"sample_id": ids})])
    ds = ds.map_batches(EpisodeClipDecoder, fn_constructor_kwargs={"cfg": cfg, "episodes": episodes},
                        batch_size=cfg.decode_batch_size, batch_format="numpy", **decode_pool_args(cfg))
    ds.context.execution_options.preserve_order = cfg.preserve_order
    return ds


def iter_local_batches(cfg: EpisodeDataConfig, episodes: EpisodeSet, start: int, stop: int,
                       batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The same samples as :func:`build_episode_dataset`, decoded in this process, without Ray, in
    batches of ``batch_size`` (the last one may be short)."""
    decoder = EpisodeClipDecoder(cfg, episodes)
    for at in range(start, stop, batch_size):
        yield decoder({"sample_id": np.arange(at, min(at + batch_size, stop), dtype=np.int64)})
