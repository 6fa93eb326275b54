"""The training data stream: clip index -> decode actor pool (Ray Data) -> batches for Ray Train.

::

    ClipIndex.draws(epoch, start, stop)   seeded weighted i.i.d. (source, row group, u, window seed)
      -> ClipIndex.resolve                one streamed pass over the needed manifest row groups: in the
                                          driver for up to ``resolve_window`` samples, else one Ray Data read
                                          task per window (pipelines.request_source), lazily
      -> blocks of ``rows_per_call`` requests (~1 KB each), one per decode call
      -> map_batches(ClipDecoder)         ActorPoolStrategy(size=num_decode_workers), num_cpus=decode_cpus,
                                          decode_calls_per_worker calls queued per actor (one runs at a time):
                                          fetch, decode, crop, flip; bad samples quarantined and redrawn
      -> Dataset {clip uint8 [T,H,W,3], source, label, sample_id, redraws}

The decode pool has its own CPU budget (``num_decode_workers x decode_cpus``); Ray Train excludes
its workers' resources from Ray Data's budget and hands each worker a ``streaming_split`` shard, so
every rank sees distinct samples. Masks are not made here: Ray re-batches rows, so a Data stage never
sees the trainer's batch; :class:`train.collate.Collator` makes them per trainer batch.

:func:`iter_local_batches` runs the very same index and :class:`ClipDecoder` in-process, without Ray,
for debugging and benchmarks. :class:`DataProgress` measures what the consumer receives (clips/s,
per-source counts, redraws) and logs it periodically and to MLflow.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from core.ray_session import worker_runtime_env
from pipelines import decode
from pipelines.clips import ClipRequest, make_clip
from pipelines.config import DataConfig
from pipelines.quarantine import Quarantine, RejectRecord, SampleError
from pipelines.sampling import ClipIndex

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = ("clip", "source", "label", "sample_id", "redraws")
LOCAL_RESOLVE_ROWS = 4096


class ClipDecoder:
    """Clip requests -> augmented uint8 clips. A Ray Data actor, and the local iterator's worker.

    A request that fails at any stage is quarantined (record + counter) and replaced by a
    deterministic redraw from the same source (``ClipIndex.redraw``), up to ``max_redraws`` times,
    so the source mix holds and a good sample is never dropped.

    The seek check (``data.seek_check_frames``) is on in the process: a file's first clip here first
    verifies that seeking in it gives the frames a sequential decode gives; one that seeks wrong is
    read another way from then on (logged), or quarantined as ``bad_seek`` and redrawn.
    """

    def __init__(self, cfg: DataConfig, index: ClipIndex, epoch: int, rejects_dir: str | None = None):
        decode.configure_seek_check(cfg.seek_check_frames)
        self.cfg = cfg
        self.index = index
        self.epoch = epoch
        self.quarantine = Quarantine(rejects_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["sample_id"])
        c = self.cfg.clip
        clips = np.empty((n, c.frames_per_clip, c.crop_size, c.crop_size, 3), np.uint8)  # decoded in place
        keep, labels, redraws = [], [], []
        for i in range(n):
            record = {name: batch[name][i] for name in ("sample_id", "source", "uri", "label", "window_seed",
                                                        "start_s", "end_s")}
            label, attempts = self.decode_one(record, clips[i])
            redraws.append(attempts)
            if label is not None:
                keep.append(i)
                labels.append(label)
        self.quarantine.flush()
        kept = np.asarray(keep, np.int64)
        return {
            "clip": clips if len(keep) == n else clips[kept],
            "source": np.asarray(batch["source"], np.int64)[kept],
            "label": np.asarray(labels, np.int64),
            "sample_id": np.asarray(batch["sample_id"], np.int64)[kept],
            "redraws": np.asarray(redraws, np.int64)[kept],
        }

    def decode_one(self, record: dict[str, Any], out: np.ndarray) -> tuple[int | None, int]:
        """Decode ``record`` (or its redraws) into ``out``; (label, or None if every redraw failed; redraws)."""
        sample_id, source = int(record["sample_id"]), int(record["source"])
        name = self.index.names[source]
        for attempt in range(self.cfg.max_redraws + 1):
            if attempt:
                record = self.index.resolve(self.index.redraw(self.epoch, sample_id, source, attempt)).to_pylist()[0]
            request = ClipRequest(str(record["uri"]), int(record["window_seed"]), self.index.kinds[source],
                                  _bound(record["start_s"]), _bound(record["end_s"]))
            try:
                make_clip(request, self.cfg, out)
                return int(record["label"]), attempt
            except SampleError as err:
                self.quarantine.add(RejectRecord.from_error(err, request.uri, name, sample_id))
        self.quarantine.add(RejectRecord("", name, "redraws_exhausted", "sample",
                                         f"{self.cfg.max_redraws} redraws failed", sample_id))
        return None, self.cfg.max_redraws


def _bound(value: Any) -> float | None:
    return None if value is None or np.isnan(value) else float(value)


def rows_per_call(cfg: DataConfig) -> int:
    """Clip requests per decode call: ``decode_batch_size``, fewer if the output would pass ``decode_block_mb``."""
    c = cfg.clip
    clip_bytes = c.frames_per_clip * c.crop_size * c.crop_size * 3
    return max(1, min(cfg.decode_batch_size, int(cfg.decode_block_mb * 2**20 // clip_bytes)))


def decode_pool_args(cfg: DataConfig) -> dict[str, Any]:
    """``map_batches`` arguments of the decode actor pool: its size, CPU budget, queued calls, environment.
    Robot episode clips (``pipelines.episodes.clips.EpisodeDataConfig``) have the same knobs and use it too."""
    import ray

    args: dict[str, Any] = {
        "compute": ray.data.ActorPoolStrategy(size=cfg.num_decode_workers,
                                              max_concurrent_calls_per_actor=cfg.decode_calls_per_worker),
        "num_cpus": cfg.decode_cpus,
    }
    runtime_env = worker_runtime_env(cfg.worker_env)
    if runtime_env:
        args["runtime_env"] = runtime_env
    return args


def decode_dataset(requests: pa.Table, cfg: DataConfig, index: ClipIndex, epoch: int,
                   rejects_dir: str | None = None):
    """Ray Dataset of decoded clips for resolved ``requests`` (the output of ``ClipIndex.resolve``)."""
    import ray

    from pipelines.request_source import split_blocks

    # One block per decode call, built here: no read tasks, so no extra worker processes (~115 MB each)
    # on the decode nodes.
    blocks = list(split_blocks(requests, rows_per_call(cfg)))
    return _decode(ray.data.from_arrow(blocks or [requests]), cfg, index, epoch, rejects_dir)


def _decode(requests, cfg: DataConfig, index: ClipIndex, epoch: int, rejects_dir: str | None):
    """The decode actor pool over a Dataset of request blocks (``rows_per_call`` rows each)."""
    ds = requests.map_batches(
        ClipDecoder,
        fn_constructor_kwargs={"cfg": cfg, "index": index, "epoch": epoch, "rejects_dir": rejects_dir},
        batch_size=rows_per_call(cfg),
        batch_format="numpy",
        **decode_pool_args(cfg),
    )
    ds.context.execution_options.preserve_order = cfg.preserve_order
    return ds


def build_train_dataset(data_cfg: DataConfig, *, epoch: int, samples: int, start_sample: int = 0,
                        rejects_dir: str | None = None, index: ClipIndex | None = None):
    """The decoded clips of samples ``[start_sample, samples)`` of virtual epoch ``epoch``, as a Ray Dataset.

    Columns (numeric only, ready for ``iter_torch_batches``): clip uint8 [T, H, W, 3], source, label,
    sample_id, redraws. Resume after ``k`` global steps with ``start_sample = k x global_batch``.
    A stream of up to ``data.resolve_window`` samples is resolved here, in the driver; a longer one
    (a whole run) window by window in Ray Data read tasks (:mod:`pipelines.request_source`).
    """
    import ray

    from pipelines.request_source import ClipRequestSource

    index = index or ClipIndex.build(data_cfg)
    rejects_dir = rejects_dir or data_cfg.rejects_dir or None
    log.info("epoch %d: samples %d..%d over %s", epoch, start_sample, samples,
             ", ".join(f"{k} {v:.3f}" for k, v in index.shares().items()))
    source = ClipRequestSource(index, epoch, start_sample, samples, data_cfg.resolve_window, rows_per_call(data_cfg))
    if len(source.windows) <= 1:
        return decode_dataset(index.resolve(index.draws(epoch, start_sample, samples)), data_cfg, index, epoch,
                              rejects_dir)
    log.info("%d request windows of %d samples, resolved by read tasks as the stream advances",
             len(source.windows), data_cfg.resolve_window)
    requests = ray.data.read_datasource(source, num_cpus=data_cfg.decode_cpus,
                                        override_num_blocks=len(source.windows))
    return _decode(requests, data_cfg, index, epoch, rejects_dir)


def train_data_config(data_cfg: DataConfig):
    """``TorchTrainer(dataset_config=...)``: Ray Train's ingest options, keeping ``data.preserve_order``.

    Ray Train replaces a dataset's execution options with its own, taking ``preserve_order`` from the
    global DataContext (default False); without this the stream's order would not survive into Train.
    """
    import ray.train

    with warnings.catch_warnings():  # Ray 2.60's own default passes its deprecated exclude_resources on
        warnings.filterwarnings("ignore", message=".*exclude_resources.*deprecated")
        options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = data_cfg.preserve_order
    return ray.train.DataConfig(execution_options=options)


def iter_local_batches(data_cfg: DataConfig, batch_size: int, *, epoch: int = 0, samples: int | None = None,
                       start_sample: int = 0, rejects_dir: str | None = None, index: ClipIndex | None = None,
                       collator: Callable[[dict[str, np.ndarray], int], dict[str, Any]] | None = None,
                       drop_last: bool = True) -> Iterator[dict[str, Any]]:
    """The same samples as :func:`build_train_dataset`, decoded in this process, in order, without Ray.

    Yields numpy batches of ``batch_size`` rows, or ``collator(batch, step)`` with
    ``step = start_sample // batch_size + i`` when a collator is given.
    """
    samples = samples if samples is not None else data_cfg.samples_per_epoch
    if samples <= 0:
        raise ValueError("iter_local_batches needs samples > 0 (or data.samples_per_epoch)")
    index = index or ClipIndex.build(data_cfg)
    decoder = ClipDecoder(data_cfg, index, epoch, rejects_dir or data_cfg.rejects_dir or None)
    step = start_sample // batch_size
    pending: list[dict[str, np.ndarray]] = []
    have = 0
    for chunk in range(start_sample, samples, LOCAL_RESOLVE_ROWS):
        requests = index.resolve(index.draws(epoch, chunk, min(chunk + LOCAL_RESOLVE_ROWS, samples)))
        for at in range(0, requests.num_rows, rows_per_call(data_cfg)):
            part = requests.slice(at, rows_per_call(data_cfg))
            out = decoder({name: part.column(name).to_numpy(zero_copy_only=False) for name in part.column_names})
            pending.append(out)
            have += len(out["sample_id"])
            while have >= batch_size:
                batch, pending, have = _take_rows(pending, batch_size)
                yield collator(batch, step) if collator else batch
                step += 1
    if have and not drop_last:
        batch, _, _ = _take_rows(pending, have)
        yield collator(batch, step) if collator else batch


def _take_rows(parts: list[dict[str, np.ndarray]], n: int) -> tuple[dict[str, np.ndarray], list, int]:
    """The first ``n`` rows of ``parts`` as one batch, and the rest."""
    merged = {k: np.concatenate([p[k] for p in parts]) for k in OUTPUT_COLUMNS}
    batch = {k: v[:n] for k, v in merged.items()}
    rest = {k: v[n:] for k, v in merged.items()}
    left = len(rest["sample_id"])
    return batch, ([rest] if left else []), left


class DataProgress:
    """What the consumer receives: clips, steady clips/s, per-source counts, redraws (rejected draws).

    ``update`` per batch; a log line every ``every_s`` seconds; ``metrics()`` for MLflow
    (``log_to(run, step)`` with a :class:`core.tracking.Run`).
    """

    def __init__(self, names: list[str], every_s: float = 30.0, warmup_batches: int = 1):
        self.names = names
        self.every_s = every_s
        self.warmup_batches = warmup_batches
        self.start = time.perf_counter()
        self.first_batch_s: float | None = None
        self.batches = 0
        self.clips = 0
        self.redraws = 0
        self.per_source = np.zeros(len(names), np.int64)
        self._steady_t0: float | None = None
        self._steady_clips = 0
        self._last_log = self.start

    def update(self, batch: dict[str, Any]) -> None:
        now = time.perf_counter()
        source = np.asarray(batch["source"]).astype(np.int64)
        n = len(source)
        if self.first_batch_s is None:
            self.first_batch_s = now - self.start
        self.batches += 1
        self.clips += n
        self.per_source += np.bincount(source, minlength=len(self.names))[: len(self.names)]
        if "redraws" in batch:
            self.redraws += int(np.asarray(batch["redraws"]).sum())
        if self.batches == self.warmup_batches:
            self._steady_t0 = now
        elif self._steady_t0 is not None:
            self._steady_clips += n
        if now - self._last_log >= self.every_s:
            self._last_log = now
            log.info("data: %s", self.summary())

    def steady_clips_per_s(self) -> float:
        if self._steady_t0 is None or not self._steady_clips:
            return 0.0
        return self._steady_clips / max(time.perf_counter() - self._steady_t0, 1e-9)

    def metrics(self) -> dict[str, float]:
        out = {"data/clips": float(self.clips), "data/clips_per_s": self.steady_clips_per_s(),
               "data/redraws": float(self.redraws), "data/first_batch_s": float(self.first_batch_s or 0.0)}
        for name, count in zip(self.names, self.per_source.tolist()):
            if count:
                out[f"data/source_clips/{name}"] = float(count)
                out[f"data/source_share/{name}"] = count / max(self.clips, 1)
        return out

    def summary(self) -> str:
        shares = " ".join(f"{n}={c / max(self.clips, 1):.3f}" for n, c in zip(self.names, self.per_source) if c)
        return (f"{self.clips} clips, {self.steady_clips_per_s():.1f} clips/s, {self.redraws} rejected draws "
                f"redrawn; shares {shares}")

    def log_to(self, run: Any, step: int | None = None) -> None:
        run.log_metrics(self.metrics(), step=step)
