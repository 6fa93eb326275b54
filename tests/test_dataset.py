"""The Ray Data stream: same samples as the local iterator, resume, distinct shards, the mix, collate, progress.

Ray passes are few and small (each costs seconds on 2 cores): one ordered pass, one 2-way split.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pyarrow as pa
import pytest
import ray
import torch

from core.tracking import TrackingConfig, find_runs, local_store_uri, start_run
from pipelines.config import ClipConfig, DataConfig, videomix22m_sources
from pipelines.dataset import (
    OUTPUT_COLUMNS,
    DataProgress,
    build_train_dataset,
    decode_pool_args,
    iter_local_batches,
    rows_per_call,
    train_data_config,
)
from pipelines.request_source import ClipRequestSource, window_bounds
from pipelines.sampling import ClipIndex
from pipelines.transforms import normalize
from train.collate import Collator
from train.config import default_masks
from train.masks import sample_masks


def world_config(sample_world, **kw) -> DataConfig:
    sources = videomix22m_sources()
    for name, src in sources.items():
        src.manifest = str(sample_world / "sources" / name / "manifest.parquet")
    return DataConfig(sources=sources, clip=ClipConfig(frames_per_clip=4, fps=4.0, crop_size=32), seed=11,
                      decode_batch_size=4, **kw)


def concat(batches) -> dict[str, np.ndarray]:
    return {k: np.concatenate([np.asarray(b[k]) for b in batches]) for k in batches[0]}


def test_ray_pass_equals_the_local_iterator_and_resumes_exactly(ray_session, sample_world, tmp_path):
    cfg = world_config(sample_world)
    ds = build_train_dataset(cfg, epoch=3, samples=40, start_sample=16, rejects_dir=str(tmp_path / "rejects"))
    assert set(ds.schema().names) == set(OUTPUT_COLUMNS)
    # the way Ray Train ingests it (its DataConfig re-sets the execution options, then streaming_split)
    shard = train_data_config(cfg).configure({"train": ds}, world_size=1, worker_handles=None,
                                              worker_node_ids=None)[0]["train"]
    ray_rows = concat(list(shard.iter_torch_batches(batch_size=8)))
    assert ray_rows["clip"].dtype == np.uint8 and ray_rows["clip"].shape == (24, 4, 32, 32, 3)
    uninterrupted = concat(list(iter_local_batches(cfg, 8, epoch=3, samples=40)))
    resumed = concat(list(iter_local_batches(cfg, 8, epoch=3, samples=40, start_sample=16)))
    assert ray_rows["sample_id"].tolist() == list(range(16, 40))
    for key in OUTPUT_COLUMNS:
        assert np.array_equal(ray_rows[key], resumed[key]), key
        assert np.array_equal(resumed[key], uninterrupted[key][16:]), key


def test_a_long_stream_is_resolved_by_read_tasks_not_the_driver(ray_session, sample_world, monkeypatch):
    cfg = world_config(sample_world, resolve_window=8)
    expected = concat(list(iter_local_batches(cfg, 4, epoch=2, samples=30, start_sample=6, drop_last=False)))

    def driver_resolve(*_args, **_kwargs):
        raise AssertionError("the driver resolved requests; read tasks should")

    monkeypatch.setattr(ClipIndex, "resolve", driver_resolve)  # this process only: workers import their own
    ds = build_train_dataset(cfg, epoch=2, samples=30, start_sample=6)
    rows = concat(list(ds.iter_batches(batch_size=4, batch_format="numpy")))
    assert rows["sample_id"].tolist() == list(range(6, 30))
    for key in OUTPUT_COLUMNS:
        assert np.array_equal(rows[key], expected[key]), key


def test_request_windows_cover_the_range_lazily_and_resolve_like_the_driver(sample_world):
    cfg = world_config(sample_world)
    index = ClipIndex.build(cfg)
    assert window_bounds(5, 23, 8) == [(5, 13), (13, 21), (21, 23)]
    assert window_bounds(0, 20, 10, block=4) == [(0, 8), (8, 16), (16, 20)]  # whole decode blocks
    assert window_bounds(0, 5, 2, block=4) == [(0, 4), (4, 5)]
    with pytest.raises(ValueError, match="resolve_window"):
        ClipRequestSource(index, 0, 0, 10, 0, 4)
    run = ClipRequestSource(index, 0, 0, 240_000 * 3072, 1 << 20, 8)  # the paper's ViT-g run: nothing resolved
    tasks = run.get_read_tasks(parallelism=4)
    assert len(tasks) == 704 and sum(t.metadata.num_rows for t in tasks) == 240_000 * 3072
    small = ClipRequestSource(index, 3, 10, 31, 16, 4).get_read_tasks(parallelism=1)
    blocks = [block for task in small for block in task()]
    assert [b.num_rows for b in blocks] == [4, 4, 4, 4, 4, 1]  # windows [10, 26) and [26, 31), 4 rows per call
    assert pa.concat_tables(blocks).equals(index.resolve(index.draws(3, 10, 31)))


def test_streaming_split_shards_are_distinct_and_follow_the_mix(ray_session, sample_world):
    cfg = world_config(sample_world, preserve_order=False)
    shards = build_train_dataset(cfg, epoch=0, samples=320).streaming_split(2, equal=True)
    ids: list[list[int]] = [[], []]
    progress = [DataProgress(list(cfg.sources)) for _ in range(2)]

    def consume(rank: int) -> None:  # what a Ray Train worker does with get_dataset_shard
        for batch in shards[rank].iter_batches(batch_size=8, batch_format="numpy"):
            progress[rank].update(batch)
            ids[rank].extend(batch["sample_id"].tolist())

    threads = [threading.Thread(target=consume, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids[0]) == len(ids[1]) == 160 and not set(ids[0]) & set(ids[1])
    assert sorted(ids[0] + ids[1]) == list(range(320))
    counts = progress[0].per_source + progress[1].per_source
    for count, src in zip(counts, cfg.sources.values()):  # decoded clips follow the weights within 4 sigma
        sigma = math.sqrt(320 * src.weight * (1 - src.weight))
        assert abs(count - 320 * src.weight) <= 4 * sigma, (count, src.weight)


def test_decode_pool_is_sized_by_config_and_actors_start_with_its_environment(ray_session):
    class EnvProbe:  # a stand-in decode UDF (local, so Ray pickles it by value) reporting what its actor sees
        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            import os

            return {"arenas": np.array([os.environ.get("MALLOC_ARENA_MAX", "")] * len(batch["id"]))}

    cfg = DataConfig(num_decode_workers=1, decode_cpus=0.25, decode_calls_per_worker=3)
    args = decode_pool_args(cfg)
    pool = args["compute"]
    assert (pool.min_size, pool.max_size, pool.max_concurrent_calls_per_actor, args["num_cpus"]) == (1, 1, 3, 0.25)
    seen = ray.data.range(4, override_num_blocks=2).map_batches(EnvProbe, batch_size=2, **args).take_all()
    assert [row["arenas"] for row in seen] == ["2"] * 4  # glibc reads it when the actor process starts


def test_decode_calls_stay_under_the_block_budget():
    assert rows_per_call(DataConfig(clip=ClipConfig(frames_per_clip=8, crop_size=128))) == 16
    assert rows_per_call(DataConfig(clip=ClipConfig(frames_per_clip=16, crop_size=256))) == 8
    assert rows_per_call(DataConfig(clip=ClipConfig(frames_per_clip=64, crop_size=384))) == 1


def test_collator_normalises_and_makes_masks_per_step_and_rank():
    masks = default_masks()
    cfg = DataConfig(clip=ClipConfig(frames_per_clip=4, crop_size=32))
    rng = np.random.default_rng(0)
    batch = {"clip": rng.integers(0, 256, (3, 4, 32, 32, 3), dtype=np.uint8), "source": np.array([0, 4, 2]),
             "label": np.array([5, 6, 7]), "sample_id": np.array([9, 10, 11]), "redraws": np.zeros(3, np.int64)}
    out = Collator(masks, cfg, seed=1, rank=0)(batch, step=7)
    assert out["clip"].shape == (3, 3, 4, 32, 32) and out["clip"].dtype == torch.float32
    assert torch.equal(out["clip"], normalize(torch.from_numpy(batch["clip"])))
    assert out["source"].tolist() == [0, 4, 2] and out["label"].dtype == torch.long
    enc, pred = sample_masks(masks, 3, (2, 2, 2), step=7, seed=1, rank=0)
    assert all(torch.equal(a, b) for a, b in zip(out["masks_enc"], enc))
    assert all(torch.equal(a, b) for a, b in zip(out["masks_pred"], pred))
    assert len(out["masks_enc"]) == len(out["masks_pred"]) == 2
    other_rank = Collator(masks, cfg, seed=1, rank=1)(batch, step=7)
    assert any(not torch.equal(a, b) for a, b in zip(out["masks_enc"], other_rank["masks_enc"]))
    with pytest.raises(ValueError, match="expected uint8 clips"):
        Collator(masks, cfg, seed=1, rank=0)({"clip": np.zeros((3, 4, 32, 32, 3), np.float32)}, step=0)


def test_progress_metrics_reach_mlflow(runs_root):
    progress = DataProgress(["ssv2", "kinetics"], every_s=0.0)
    for sources in ([0, 1, 1], [1, 1, 0], [0, 0, 0]):
        progress.update({"source": np.array(sources), "redraws": np.array([0, 1, 0])})
    metrics = progress.metrics()
    assert metrics["data/clips"] == 9 and metrics["data/redraws"] == 3
    assert metrics["data/source_share/ssv2"] == pytest.approx(5 / 9)
    assert metrics["data/clips_per_s"] > 0 and "ssv2=0.556" in progress.summary()
    with start_run(TrackingConfig(experiment="data-progress")) as run:
        progress.log_to(run, step=2)
    logged = find_runs(local_store_uri(), "data-progress")[0].data.metrics
    assert logged["data/source_clips/kinetics"] == 4 and logged["data/redraws"] == 3
