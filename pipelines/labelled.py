"""Labelled clips for frozen-encoder probes: splits, the epoch stream, multi-clip decoding (docs/eval.md).

A probe run reads two labelled manifests (``train`` and ``val``; Parquet or Meta's ``<path> <label>``
lists) and makes three parts of them:

- ``fit``: the training rows the probes learn from;
- ``select``: a stratified ``select_fraction`` of the training rows (per class, chosen by the seed),
  never trained on, on which the best head of the grid is chosen;
- ``val``: the validation manifest, reported with the head chosen on ``select`` (so the reported number
  is not selected on the data it reports; Meta reports the best head on val itself).

The training stream is epochs over ``fit``: sample ``i`` is position ``i % n`` of a seeded permutation of
epoch ``i // n``, a pure function of (seed, i), so a resumed run continues exactly. Each sample is
``num_segments`` clips of ``frames_per_clip`` frames ``frame_step`` apart, one from each of the video's
equal parts (Meta's ``frames_per_clip x frame_step``), cut to ``crop_size``:

- training (``augment``): a random window in each part, one random-resized-crop box (scale
  [0.08, 1], ratio [3/4, 4/3]) for the whole sample, no flip, then RandAugment and random erasing
  sampled once per clip (:mod:`pipelines.video_augment`): Meta's probe recipe, made clip-consistent;
- evaluation (and training without ``augment``): the window centred in each part, and ``num_views``
  square crops of the short side, evenly spaced along the long side, resized to ``crop_size`` (Meta's
  eval views; one view is the centre crop).

A row's ``clip`` is uint8 ``[K, T, crop, crop, 3]`` with ``K = num_views x num_segments`` (view-major).
A training sample that fails is quarantined with its reason and replaced by a seeded redraw of
another ``fit`` row; an evaluation row that fails is quarantined and counted (it has no replacement:
its accuracy would be another clip's).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from pipelines import decode
from pipelines.clips import clip_indices
from pipelines.manifest import read_manifest
from pipelines.quarantine import Quarantine, RejectRecord, SampleError
from pipelines.transforms import CropBox, random_resized_crop_box, resized_crop

log = logging.getLogger(__name__)

PARTS = ("fit", "select", "val")  # the ``part`` column: 0, 1, 2
FIT, SELECT, VAL = range(3)
REDRAW_STREAM = 0x5EED
OUTPUT_COLUMNS = ("clip", "label", "sample_id", "part")


@dataclass
class LabelledDataConfig:
    """Which labelled manifests a probe reads, how its clips are cut, and the decode pool's budget."""

    train: str = ""  # labelled manifest (Parquet or Meta CSV), local or s3://
    val: str = ""
    labels: str = ""  # the label map (JSON list of class names); "" -> labels.json beside the train manifest
    select_fraction: float = 0.2  # training rows held out (per class) to choose the best head
    frames_per_clip: int = 16
    frame_step: int = 4  # source frames between sampled frames (Meta's probes count frames, not fps)
    num_segments: int = 1  # clips per sample, one from each equal part of the video
    num_views: int = 1  # spatial views at evaluation
    crop_size: int = 256
    augment: bool = True  # training clips: random crop + RandAugment + erasing (False: as evaluation)
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    rrc_ratio: tuple[float, float] = (0.75, 4.0 / 3.0)
    randaugment: str = "rand-m7-n4-mstd0.5-inc1"  # timm notation; "" -> none
    erase_prob: float = 0.25
    seed: int = 0
    decoder: Literal["decord", "pyav", "torchcodec"] = "decord"
    decoder_threads: int = 1
    num_decode_workers: int = 2
    decode_cpus: float = 0.5
    decode_calls_per_worker: int = 2
    decode_batch_size: int = 8  # samples per decode call
    max_redraws: int = 10
    min_frames: int = 2
    max_video_bytes: int = 1_000_000_000
    max_image_pixels: int = 178_956_970
    seek_check_frames: int = 300  # pipelines/decode.py's seek check, as data.seek_check_frames
    preserve_order: bool = True
    rejects_dir: str = ""  # "" -> <run output>/rejects
    cache_dir: str = ""  # a clip feature cache to read tokens from (eval/clip_cache.py); "" -> encode on the fly
    worker_env: dict[str, str] = field(default_factory=lambda: {"MALLOC_ARENA_MAX": "2"})

    @property
    def clips_per_sample(self) -> int:
        """Clips a training sample holds (one view)."""
        return self.num_segments

    @property
    def clips_per_eval_sample(self) -> int:
        return self.num_segments * self.num_views


@dataclass(frozen=True)
class LabelledRows:
    """The rows of one part: media URI, label and row number in its manifest."""

    part: int
    uris: list[str]
    labels: np.ndarray  # int64
    rows: np.ndarray  # int64, row numbers in the manifest

    def __len__(self) -> int:
        return len(self.uris)

    def requests(self, sample_ids: np.ndarray, positions: np.ndarray, seeds: np.ndarray) -> pa.Table:
        """Decode requests for ``positions`` of this part (one row each)."""
        return pa.table({"sample_id": pa.array(sample_ids, pa.int64()),
                         "uri": pa.array([self.uris[p] for p in positions], pa.string()),
                         "label": pa.array(self.labels[positions], pa.int64()),
                         "row": pa.array(self.rows[positions], pa.int64()),
                         "position": pa.array(positions, pa.int64()),
                         "window_seed": pa.array(seeds, pa.int64()),
                         "part": pa.array(np.full(len(positions), self.part), pa.int64())})

    def all_requests(self, first_sample: int = 0) -> pa.Table:
        """Every row once, in manifest order (evaluation)."""
        positions = np.arange(len(self), dtype=np.int64)
        return self.requests(first_sample + positions, positions, np.zeros(len(self), np.int64))


def read_rows(manifest: str, part: int) -> LabelledRows:
    """A labelled manifest's rows (``eval.labels.check_labels`` has refused unlabelled ones)."""
    table = read_manifest(manifest)
    labels = table.column("label").to_numpy(zero_copy_only=False)
    return LabelledRows(part, table.column("uri").to_pylist(), labels.astype(np.int64),
                        np.arange(table.num_rows, dtype=np.int64))


def split_select(rows: LabelledRows, fraction: float, seed: int) -> tuple[LabelledRows, LabelledRows]:
    """(fit, select): per class, ``round(fraction x n)`` rows chosen by the seed go to ``select`` (at
    least one for a class of two or more rows when ``fraction`` > 0), the rest to ``fit``."""
    rng = np.random.default_rng([seed, 0x5E1EC7])
    chosen = np.zeros(len(rows), bool)
    if fraction > 0:
        for label in np.unique(rows.labels):
            members = np.flatnonzero(rows.labels == label)
            take = min(len(members) - 1, max(1, round(fraction * len(members))))
            chosen[rng.permutation(members)[:take]] = True

    def pick(mask: np.ndarray, part: int) -> LabelledRows:
        where = np.flatnonzero(mask)
        return LabelledRows(part, [rows.uris[i] for i in where], rows.labels[where], rows.rows[where])

    return pick(~chosen, FIT), pick(chosen, SELECT)


def epoch_requests(fit: LabelledRows, seed: int, start: int, stop: int) -> pa.Table:
    """Training samples ``[start, stop)``: epochs over ``fit``, each a seeded permutation; every sample's
    window seed is its own."""
    n = len(fit)
    sample_ids = np.arange(start, stop, dtype=np.int64)
    positions = np.empty(len(sample_ids), np.int64)
    seeds = np.empty(len(sample_ids), np.int64)
    for epoch in np.unique(sample_ids // n) if n else []:
        rng = np.random.default_rng([seed, int(epoch)])
        order, epoch_seeds = rng.permutation(n), rng.integers(0, 2**63 - 1, n, dtype=np.int64)
        here = sample_ids // n == epoch
        at = sample_ids[here] % n
        positions[here], seeds[here] = order[at], epoch_seeds[at]
    return fit.requests(sample_ids, positions, seeds)


def segment_windows(num_frames: int, cfg: LabelledDataConfig, rng: np.random.Generator | None) -> np.ndarray:
    """Frame ids ``[num_segments, frames_per_clip]``: one clip in each equal part of the video, a random
    window there (``rng``; Meta's rule, short parts padded with their last frame) or the centred one."""
    part = max(1, num_frames // cfg.num_segments)
    span = cfg.frames_per_clip * cfg.frame_step
    out = []
    for s in range(cfg.num_segments):
        start = min(s * part, num_frames - 1)
        stop = min(start + part, num_frames)
        if rng is not None or stop - start <= span:
            out.append(clip_indices(start, stop, cfg.frame_step, cfg.frames_per_clip, rng or np.random.default_rng(0)))
        else:
            begin = start + (stop - start - span + 1) // 2  # one frame of 16: frame 8, the middle
            out.append(begin + np.arange(cfg.frames_per_clip, dtype=np.int64) * cfg.frame_step)
    return np.stack(out)


def view_boxes(height: int, width: int, views: int) -> list[CropBox]:
    """``views`` squares of the short side, evenly spaced along the long side (one: the centre)."""
    side = min(height, width)
    offsets = [(max(height, width) - side) // 2] if views == 1 else np.linspace(0, max(height, width) - side, views)
    if height >= width:
        return [CropBox(int(round(o)), 0, side, side) for o in offsets]
    return [CropBox(0, int(round(o)), side, side) for o in offsets]


def read_source(uri: str, cfg: LabelledDataConfig, windows: Any) -> tuple[np.ndarray, int]:
    """Decoded frames ``[S x T, H, W, 3]`` of ``uri`` at the frame ids ``windows(num_frames)`` gives; an
    image is repeated. Returns (frames, segments)."""
    media = decode.fetch(uri, cfg.max_video_bytes)
    if decode.is_image(uri):
        image = decode.read_image(media, cfg.max_image_pixels)
        return np.repeat(image[None], cfg.num_segments * cfg.frames_per_clip, axis=0), cfg.num_segments
    reader = decode.open_video(media, cfg.decoder, cfg.decoder_threads)
    try:
        if reader.num_frames < cfg.min_frames:
            raise SampleError("too_few_frames", "open", f"{reader.num_frames} frame(s) < {cfg.min_frames}")
        indices = windows(reader.num_frames)
        return reader.get_frames(indices.reshape(-1)), len(indices)
    finally:
        reader.close()


def train_sample(uri: str, cfg: LabelledDataConfig, augment: Any, seed: int) -> np.ndarray:
    """One augmented training sample ``[S, T, crop, crop, 3]`` (every random choice from ``seed``);
    ``augment`` is the run's ``pipelines.video_augment.VideoAugmentConfig``."""
    from pipelines.video_augment import augment_clip

    rng = np.random.default_rng(seed)
    frames, segments = read_source(uri, cfg, lambda n: segment_windows(n, cfg, rng))
    box = random_resized_crop_box(frames.shape[1], frames.shape[2], cfg.rrc_scale, cfg.rrc_ratio, rng)
    clip = resized_crop(frames, box, cfg.crop_size, False)
    clip = augment_clip(clip, augment, rng)
    return clip.reshape(segments, cfg.frames_per_clip, *clip.shape[1:])


def eval_sample(uri: str, cfg: LabelledDataConfig, views: int) -> np.ndarray:
    """The deterministic sample ``[views x S, T, crop, crop, 3]``: centred windows, evenly spaced views."""
    frames, segments = read_source(uri, cfg, lambda n: segment_windows(n, cfg, None))
    crops = [resized_crop(frames, box, cfg.crop_size, False) for box in view_boxes(*frames.shape[1:3], views)]
    return np.stack(crops).reshape(views * segments, cfg.frames_per_clip, cfg.crop_size, cfg.crop_size, 3)


class LabelledClipDecoder:
    """Decode requests -> samples (a Ray Data actor). ``train``: augmented training samples, a failed one
    redrawn from ``fit``; otherwise evaluation samples of ``views`` views, a failed row quarantined."""

    def __init__(self, cfg: LabelledDataConfig, train: bool, views: int, fit: LabelledRows | None = None,
                 rejects_dir: str | None = None):
        from pipelines.video_augment import VideoAugmentConfig

        decode.configure_seek_check(cfg.seek_check_frames)
        self.cfg, self.train, self.views, self.fit = cfg, train, views, fit
        self.augment = VideoAugmentConfig(randaugment=cfg.randaugment, erase_prob=cfg.erase_prob)
        self.quarantine = Quarantine(rejects_dir or cfg.rejects_dir or None)

    def sample(self, uri: str, seed: int) -> np.ndarray:
        if self.train and self.cfg.augment:
            return train_sample(uri, self.cfg, self.augment, seed)
        return eval_sample(uri, self.cfg, self.views)

    def one(self, record: dict[str, Any]) -> tuple[np.ndarray | None, int]:
        """(sample, label) of a request, after redraws for training; (None, -1) if it is given up."""
        uri, label, seed = str(record["uri"]), int(record["label"]), int(record["window_seed"])
        part = PARTS[int(record["part"])]
        attempts = self.cfg.max_redraws + 1 if self.train else 1
        for attempt in range(attempts):
            try:
                return self.sample(uri, seed), label
            except SampleError as err:
                self.quarantine.add(RejectRecord.from_error(err, uri, part, int(record["sample_id"])))
            if self.train:
                uri, label, seed = self.redraw(int(record["sample_id"]), attempt + 1)
        if self.train:
            self.quarantine.add(RejectRecord("", part, "redraws_exhausted", "sample",
                                             f"{self.cfg.max_redraws} redraws failed", int(record["sample_id"])))
        return None, -1

    def redraw(self, sample_id: int, attempt: int) -> tuple[str, int, int]:
        """Replacement ``attempt`` of a training sample: a seeded ``fit`` row and window seed."""
        rng = np.random.default_rng([self.cfg.seed, sample_id, attempt, REDRAW_STREAM])
        at = int(rng.integers(len(self.fit)))
        return self.fit.uris[at], int(self.fit.labels[at]), int(rng.integers(0, 2**63 - 1))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        samples, keep, labels = [], [], []
        for i in range(len(batch["sample_id"])):
            sample, label = self.one({k: batch[k][i] for k in ("uri", "label", "window_seed", "part", "sample_id")})
            if sample is not None:
                samples.append(sample)
                keep.append(i)
                labels.append(label)
        self.quarantine.flush()
        c = self.cfg
        clips = (np.stack(samples) if samples else
                 np.zeros((0, c.clips_per_sample if self.train else c.clips_per_eval_sample, c.frames_per_clip,
                           c.crop_size, c.crop_size, 3), np.uint8))
        kept = np.asarray(keep, np.int64)
        return {"clip": clips, "label": np.asarray(labels, np.int64),
                "sample_id": np.asarray(batch["sample_id"], np.int64)[kept],
                "part": np.asarray(batch["part"], np.int64)[kept]}


def labelled_dataset(requests: pa.Table, cfg: LabelledDataConfig, train: bool, views: int,
                     fit: LabelledRows | None = None) -> Any:
    """The Ray Dataset of decoded samples for ``requests`` (columns of :data:`OUTPUT_COLUMNS`), through
    the decode actor pool of the pretraining stream (``pipelines.dataset.decode_pool_args``)."""
    import ray

    from pipelines.dataset import decode_pool_args
    from pipelines.request_source import split_blocks

    blocks = list(split_blocks(requests, cfg.decode_batch_size))
    ds = ray.data.from_arrow(blocks or [requests]).map_batches(
        LabelledClipDecoder, fn_constructor_kwargs={"cfg": cfg, "train": train, "views": views, "fit": fit},
        batch_size=cfg.decode_batch_size, batch_format="numpy", **decode_pool_args(cfg))
    ds.context.execution_options.preserve_order = cfg.preserve_order
    return ds
