"""The held-out validation stream of the generic loop: a split of every manifest that training never
draws from, scored every ``trainer.eval_every`` steps as ``val_loss``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from pretrain_utils import world_config

from core.tracking import find_runs, local_store_uri
from pipelines.config import DataConfig, SourceConfig
from pipelines.sampling import ClipIndex
from pipelines.sources import ManifestRows, SplitRows
from train.pretrain import pretrain

ROWS_PER_GROUP = (10, 7, 1)


def _manifest(path, weighted: bool = False) -> str:
    """A manifest of 18 rows in 3 row groups (10, 7 and 1 rows); no media is touched by the index."""
    writer = None
    start = 0
    for n in ROWS_PER_GROUP:
        ids = np.arange(start, start + n)
        columns = {"uri": [f"clip_{i}.mp4" for i in ids], "label": ids, "duration_s": np.full(n, 10.0),
                   "fps": np.full(n, 30.0), "num_frames": np.full(n, 300), "bytes": np.full(n, 1000)}
        if weighted:
            columns["weight"] = np.ones(n)
        table = pa.table(columns)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
        start += n
    writer.close()
    return str(path)


def _rows_drawn(index: ClipIndex, n: int = 2000) -> set[int]:
    return set(index.resolve(index.draws(0, 0, n)).column("row").to_pylist())


@pytest.mark.parametrize("weighted", [False, True])
def test_train_and_val_draw_from_disjoint_rows(tmp_path, weighted):
    uri = _manifest(tmp_path / "m.parquet", weighted)
    rows = ManifestRows(uri)
    train, val = SplitRows(rows, "train", 0.2), SplitRows(rows, "val", 0.2)
    assert train.group_rows.tolist() == [8, 6, 1] and val.group_rows.tolist() == [2, 1, 0]
    cfg = DataConfig(sources={"only": SourceConfig(manifest=uri, weight=1.0)}, holdout_fraction=0.2)
    drawn_train = _rows_drawn(ClipIndex.build(cfg, split="train"))
    drawn_val = _rows_drawn(ClipIndex.build(cfg, split="val"))
    assert drawn_val == {8, 9, 16}  # the last 20% of each row group, by manifest row number
    assert drawn_train == set(range(18)) - drawn_val
    everything = _rows_drawn(ClipIndex.build(DataConfig(sources=cfg.sources)))
    assert everything == set(range(18))


def test_without_a_holdout_every_split_is_the_whole_manifest(tmp_path):
    uri = _manifest(tmp_path / "m.parquet")
    cfg = DataConfig(sources={"only": SourceConfig(manifest=uri, weight=1.0)})
    plain, train = ClipIndex.build(cfg), ClipIndex.build(cfg, split="train")
    assert plain.resolve(plain.draws(0, 0, 300)).equals(train.resolve(train.draws(0, 0, 300)))


def test_the_loop_reports_a_validation_loss(ray_session, sample_world, runs_root, tmp_path):
    result = pretrain(world_config(sample_world, tmp_path / "run", "trainer.num_workers=1", "optim.total_steps=4",
                                   "trainer.eval_every=2", "trainer.eval_samples=8", "data.holdout_fraction=0.25"))
    val = result.worker["val_losses"]
    assert sorted(val) == [2, 4] and all(0 < v < 2 for v in val.values())
    (run,) = find_runs(local_store_uri(runs_root), "vjepa2-ray")
    history = MlflowClient(local_store_uri(runs_root)).get_metric_history(run.info.run_id, "val_loss")
    assert {m.step: m.value for m in history} == pytest.approx(val)
    assert {m.step for m in MlflowClient(local_store_uri(runs_root)).get_metric_history(
        run.info.run_id, "val_clips")} == {2, 4}
