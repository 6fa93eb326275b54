"""Anticipation clips: annotated actions, the verb / noun / action vocabulary, the clip windows (docs/anticipation.md).

An anticipation manifest has one row per annotated action: the project's manifest columns (``uri`` is the
whole video) plus ``verb`` and ``noun`` (the dataset's class ids) and ``start_s`` / ``end_s`` (the action's
bounds in seconds); ``pipelines.builders ek100-anticipation`` writes one from EPIC-KITCHENS-100's CSVs and
``sample-world --probes`` writes the sample world's (``pipelines/sample_world/anticipation_set.py``).

The classes are those of the *training* manifest, as Meta's ``filter_annotations`` makes them (docs/reference.md
R-vjepa2-8.3): the verbs, nouns and (verb, noun) pairs seen in training, numbered in sorted order here (Meta
numbers them in set order, which is not reproducible); validation rows whose pair training never saw are
dropped and counted, so the action head only ever ranks seen pairs.

A sample is the ``frames_per_clip`` frames at ``fps`` that end ``tau`` seconds before the *anticipation
point* ``ap x start + (1 - ap) x stop`` of its action (Meta's ``decode_videos_to_clips``): the frame step
is ``int(video fps / fps)``, frames before the video's start repeat frame 0. Training draws ``tau`` and
``ap`` per sample from ranges, validation takes its own ranges (fixed by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipelines import decode
from pipelines.labelled import PARTS, REDRAW_STREAM, LabelledDataConfig, LabelledRows, read_rows, view_boxes
from pipelines.manifest import ManifestError, read_manifest
from pipelines.quarantine import Quarantine, RejectRecord, SampleError
from pipelines.transforms import random_resized_crop_box, resized_crop

ANNOTATION_COLUMNS = ("verb", "noun", "start_s", "end_s")
MAX_LISTED = 5


@dataclass
class AnticipationDataConfig(LabelledDataConfig):
    """The labelled-clip settings plus the anticipation windows. ``frame_step`` and ``num_segments`` of
    the parent are unused: the step comes from ``fps`` and the video's own rate, a sample is one clip."""

    frames_per_clip: int = 32
    fps: float = 8.0  # frames sampled per second of video (Meta: 32 frames at 8 fps, a 4 s context)
    # tau, seconds between the clip's end and the anticipation point, and the anticipation point
    # ap (the clip ends at ap x start + (1 - ap) x stop - tau): drawn uniformly per training sample.
    train_anticipation_time: tuple[float, float] = (0.25, 1.75)
    train_anticipation_point: tuple[float, float] = (0.0, 0.25)
    # Validation: tau 1 s (EK100's protocol) and ap 1, the clip ends 1 s before the action *starts* (the
    # paper's and the benchmark's definition); Meta's released code uses ap 0, 1 s before the action's
    # stop (their issue #173): set (0.0, 0.0) to reproduce it.
    val_anticipation_time: tuple[float, float] = (1.0, 1.0)
    val_anticipation_point: tuple[float, float] = (1.0, 1.0)
    hflip: bool = True  # Meta's EK100 training flips half the clips (its classification probes do not)
    verbs: str = ""  # optional JSON list of verb names by dataset id ("" -> verbs.json beside train, if any)
    nouns: str = ""

    def ranges(self, train: bool) -> tuple[tuple[float, float], tuple[float, float]]:
        """(tau range, anticipation point range) of training or validation samples."""
        if train:
            return self.train_anticipation_time, self.train_anticipation_point
        return self.val_anticipation_time, self.val_anticipation_point


@dataclass(frozen=True)
class Annotations:
    """One manifest's actions by row: dataset verb / noun ids and action bounds in seconds."""

    verb: np.ndarray
    noun: np.ndarray
    start_s: np.ndarray
    end_s: np.ndarray

    def take(self, rows: np.ndarray) -> Annotations:
        return Annotations(*(getattr(self, f)[rows] for f in ANNOTATION_COLUMNS))


def read_annotations(manifest: str, names: dict[str, list[str]] | None = None) -> Annotations:
    """The annotation columns of an anticipation manifest, checked: each present, no nulls, class ids
    non-negative integers (and inside the name maps when given), ``0 <= start_s <= end_s``. A problem is
    one ManifestError naming the file, the column and the first rows."""
    table = read_manifest(manifest)
    missing = [c for c in ANNOTATION_COLUMNS if c not in table.column_names]
    if missing:
        raise ManifestError(f"{manifest}: missing column(s) {missing}: an anticipation manifest needs "
                            f"{list(ANNOTATION_COLUMNS)} (pipelines.builders ek100-anticipation writes them)")
    values = {c: table.column(c).to_numpy(zero_copy_only=False).astype(float) for c in ANNOTATION_COLUMNS}

    def refuse(column: str, bad: np.ndarray, why: str) -> None:
        if len(bad):
            raise ManifestError(f"{manifest}: column '{column}': {len(bad)} row(s) {why} (first rows "
                                f"{bad[:MAX_LISTED].tolist()})")

    for column, col in values.items():
        refuse(column, np.flatnonzero(~np.isfinite(col)), "without a value")
    for column in ("verb", "noun"):
        col = values[column]
        refuse(column, np.flatnonzero((col < 0) | (col != np.round(col))), "not a class id (an integer >= 0)")
        known = (names or {}).get(column)
        if known is not None:
            refuse(column, np.flatnonzero(col >= len(known)), f"outside the {column} map ({len(known)} names)")
    refuse("start_s", np.flatnonzero(values["start_s"] < 0), "negative")
    refuse("end_s", np.flatnonzero(values["end_s"] < values["start_s"]), "ending before start_s")
    return Annotations(values["verb"].astype(np.int64), values["noun"].astype(np.int64), values["start_s"],
                       values["end_s"])


@dataclass(frozen=True)
class Vocabulary:
    """The classes of the training manifest: its verb ids, noun ids and (verb, noun) pairs, sorted; the
    probe's class ``i`` of a task is entry ``i``. ``names`` maps dataset ids to names where known."""

    verbs: list[int]
    nouns: list[int]
    actions: list[tuple[int, int]]
    names: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, train: Annotations, names: dict[str, list[str]] | None = None) -> Vocabulary:
        pairs = sorted(set(zip(train.verb.tolist(), train.noun.tolist())))
        return cls(sorted(set(train.verb.tolist())), sorted(set(train.noun.tolist())), pairs, names or {})

    @property
    def sizes(self) -> dict[str, int]:
        return {"verb": len(self.verbs), "noun": len(self.nouns), "action": len(self.actions)}

    def classes(self, ann: Annotations) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Per row its class index of each task (-1 where unseen in training) and whether its pair was seen."""
        index = {"verb": {v: i for i, v in enumerate(self.verbs)}, "noun": {n: i for i, n in enumerate(self.nouns)},
                 "action": {a: i for i, a in enumerate(self.actions)}}
        keys = {"verb": ann.verb.tolist(), "noun": ann.noun.tolist(),
                "action": list(zip(ann.verb.tolist(), ann.noun.tolist()))}
        labels = {task: np.asarray([index[task].get(k, -1) for k in keys[task]], np.int64) for task in index}
        return labels, labels["action"] >= 0

    def class_names(self, task: str) -> list[str]:
        """Display names of a task's classes (dataset ids where no name map was given)."""
        verbs, nouns = self.names.get("verb"), self.names.get("noun")

        def name(ids: list[str] | None, i: int) -> str:
            return ids[i] if ids else str(i)

        if task == "verb":
            return [name(verbs, v) for v in self.verbs]
        if task == "noun":
            return [name(nouns, n) for n in self.nouns]
        return [f"{name(verbs, v)} {name(nouns, n)}" for v, n in self.actions]


@dataclass(frozen=True)
class AnticipationRows:
    """One part's rows (``rows.labels`` are action classes, so the held-out split is stratified by
    action), each row's verb and noun classes, and its action bounds."""

    rows: LabelledRows
    verb: np.ndarray
    noun: np.ndarray
    start_s: np.ndarray
    end_s: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, rows: LabelledRows) -> AnticipationRows:
        """The rows of ``rows`` (a split of these rows, found by manifest row number)."""
        at = np.searchsorted(self.rows.rows, rows.rows)
        return AnticipationRows(rows, self.verb[at], self.noun[at], self.start_s[at], self.end_s[at])

    def annotate(self, requests: pa.Table) -> pa.Table:
        """Decode requests of this part (``position`` column) with the columns a decoder needs."""
        at = requests.column("position").to_numpy()
        for name in ("verb", "noun", "start_s", "end_s"):
            requests = requests.append_column(name, pa.array(getattr(self, name)[at]))
        return requests


def read_part(manifest: str, part: int, vocab: Vocabulary) -> tuple[AnticipationRows, int]:
    """A manifest as one part in ``vocab``'s classes; rows whose (verb, noun) pair training never saw are
    left out. Returns (rows, rows left out)."""
    base, ann = read_rows(manifest, part), read_annotations(manifest, vocab.names)
    labels, seen = vocab.classes(ann)
    keep = np.flatnonzero(seen)
    rows = LabelledRows(part, [base.uris[i] for i in keep], labels["action"][keep], base.rows[keep])
    return AnticipationRows(rows, labels["verb"][keep], labels["noun"][keep], ann.start_s[keep],
                            ann.end_s[keep]), int(len(seen) - len(keep))


def clip_end_s(start_s: float, end_s: float, tau: float, point: float) -> float:
    """Where the context clip ends: ``tau`` seconds before ``point x start + (1 - point) x stop``."""
    return point * start_s + (1.0 - point) * end_s - tau


def clip_frames(video_fps: float, num_frames: int, end_s: float, cfg: AnticipationDataConfig) -> np.ndarray:
    """The ``frames_per_clip`` frame ids ``step`` apart that end just before ``end_s`` (Meta: the frames
    ``[end - frames x step, end)``, step ``int(video fps / fps)``); ids before 0 repeat frame 0, ids past
    the video's end its last frame."""
    step = max(1, int(video_fps / cfg.fps))
    end = int(math.floor(end_s * video_fps))
    ids = np.arange(end - cfg.frames_per_clip * step, end, step, dtype=np.int64)
    return np.clip(ids, 0, max(num_frames - 1, 0))


def draw(bounds: tuple[float, float], rng: np.random.Generator) -> float:
    return float(bounds[0]) if bounds[0] == bounds[1] else float(rng.uniform(*bounds))


class AnticipationClipDecoder:
    """Annotated requests -> context clips ``[1, T, crop, crop, 3]`` with their ``tau`` (a Ray Data actor).
    Training: tau and ap drawn from the window seed, random resized crop, optional flip, RandAugment and
    erasing (the probe presets' augmentation); a failed sample is redrawn from ``fit``. Evaluation: the
    validation ranges (fixed by default) and the centre crop; a failed row is quarantined and counted."""

    def __init__(self, cfg: AnticipationDataConfig, train: bool, fit: AnticipationRows | None = None):
        from pipelines.video_augment import VideoAugmentConfig

        decode.configure_seek_check(cfg.seek_check_frames)
        self.cfg, self.train, self.fit = cfg, train, fit
        self.augment = VideoAugmentConfig(randaugment=cfg.randaugment, erase_prob=cfg.erase_prob)
        self.quarantine = Quarantine(cfg.rejects_dir or None)

    def sample(self, uri: str, start_s: float, end_s: float, seed: int) -> tuple[np.ndarray, float]:
        """(clip ``[1, T, crop, crop, 3]``, tau) of one action."""
        from pipelines.video_augment import augment_clip

        cfg, rng = self.cfg, np.random.default_rng(seed)
        tau_range, point_range = cfg.ranges(self.train)
        tau = draw(tau_range, rng)
        ends = clip_end_s(start_s, end_s, tau, draw(point_range, rng))
        reader = decode.open_video(decode.fetch(uri, cfg.max_video_bytes), cfg.decoder, cfg.decoder_threads)
        try:
            if reader.num_frames < cfg.min_frames or not reader.fps:
                raise SampleError("too_few_frames", "open", f"{reader.num_frames} frame(s), fps {reader.fps}")
            frames = reader.get_frames(clip_frames(reader.fps, reader.num_frames, ends, cfg))
        finally:
            reader.close()
        if self.train and cfg.augment:
            box = random_resized_crop_box(frames.shape[1], frames.shape[2], cfg.rrc_scale, cfg.rrc_ratio, rng)
            clip = augment_clip(resized_crop(frames, box, cfg.crop_size, cfg.hflip and rng.random() < 0.5),
                                self.augment, rng)
        else:
            clip = resized_crop(frames, view_boxes(*frames.shape[1:3], 1)[0], cfg.crop_size, False)
        return clip[None], tau

    def redraw(self, sample_id: int, attempt: int) -> tuple[int, int]:
        """Replacement ``attempt`` of a training sample: a seeded ``fit`` position and window seed."""
        rng = np.random.default_rng([self.cfg.seed, sample_id, attempt, REDRAW_STREAM])
        return int(rng.integers(len(self.fit))), int(rng.integers(0, 2**63 - 1))

    def one(self, batch: dict[str, np.ndarray], i: int) -> dict[str, Any] | None:
        """Row ``i`` of the batch decoded (after redraws for training), or None if given up."""
        row = {k: batch[k][i] for k in ("uri", "label", "verb", "noun", "start_s", "end_s", "window_seed")}
        part, sample_id = PARTS[int(batch["part"][i])], int(batch["sample_id"][i])
        for attempt in range(self.cfg.max_redraws + 1 if self.train else 1):
            try:
                clip, tau = self.sample(str(row["uri"]), float(row["start_s"]), float(row["end_s"]),
                                        int(row["window_seed"]))
                return {"clip": clip, "tau": tau, "label": int(row["label"]), "verb": int(row["verb"]),
                        "noun": int(row["noun"])}
            except SampleError as err:
                self.quarantine.add(RejectRecord.from_error(err, str(row["uri"]), part, sample_id))
            if self.train:
                at, seed = self.redraw(sample_id, attempt + 1)
                fit = self.fit
                row = {"uri": fit.rows.uris[at], "label": fit.rows.labels[at], "verb": fit.verb[at],
                       "noun": fit.noun[at], "start_s": fit.start_s[at], "end_s": fit.end_s[at], "window_seed": seed}
        return None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done = [(i, s) for i in range(len(batch["sample_id"])) if (s := self.one(batch, i)) is not None]
        self.quarantine.flush()
        cfg, kept = self.cfg, np.asarray([i for i, _ in done], np.int64)
        empty = np.zeros((0, 1, cfg.frames_per_clip, cfg.crop_size, cfg.crop_size, 3), np.uint8)
        out = {"clip": np.stack([s["clip"] for _, s in done]) if done else empty,
               "tau": np.asarray([s["tau"] for _, s in done], np.float32)}
        for key in ("label", "verb", "noun"):
            out[key] = np.asarray([s[key] for _, s in done], np.int64)
        return {**out, "sample_id": np.asarray(batch["sample_id"], np.int64)[kept],
                "part": np.asarray(batch["part"], np.int64)[kept]}


def anticipation_dataset(requests: pa.Table, cfg: AnticipationDataConfig, train: bool,
                         fit: AnticipationRows | None = None) -> Any:
    """The Ray Dataset of decoded context clips for annotated ``requests`` (:meth:`AnticipationRows.annotate`),
    through the decode actor pool of the pretraining stream."""
    import ray

    from pipelines.dataset import decode_pool_args
    from pipelines.request_source import split_blocks

    blocks = list(split_blocks(requests, cfg.decode_batch_size))
    ds = ray.data.from_arrow(blocks or [requests]).map_batches(
        AnticipationClipDecoder, fn_constructor_kwargs={"cfg": cfg, "train": train, "fit": fit},
        batch_size=cfg.decode_batch_size, batch_format="numpy", **decode_pool_args(cfg))
    ds.context.execution_options.preserve_order = cfg.preserve_order
    return ds
