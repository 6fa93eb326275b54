"""The clip index: exact weighted i.i.d. draws (docs/reference.md R-vjepa2-5.1), row weights, resume, redraws, bad
manifests."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.errors import UserError
from pipelines.config import DataConfig, SourceConfig, videomix22m_sources
from pipelines.manifest import ManifestError
from pipelines.sampling import CHUNK, ClipIndex
from pipelines.sources import ManifestRows


def write_parquet(path, n: int, prefix: str, weights=None, row_group_size: int | None = None) -> str:
    columns = {"uri": [f"/{prefix}/{i}.mp4" for i in range(n)], "label": list(range(n)),
               "duration_s": [4.0] * n, "fps": [25.0] * n, "num_frames": [100] * n, "bytes": [10] * n}
    if weights is not None:
        columns["weight"] = weights
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return str(path)


def videomix(tmp_path, weights: dict[str, float] | None = None) -> DataConfig:
    sources = videomix22m_sources()
    for i, (name, src) in enumerate(sources.items()):
        if name == "ssv2":  # Meta's CSV format for one source
            (tmp_path / "ssv2.csv").write_text("".join(f"/ssv2/{k}.webm {k}\n" for k in range(30)))
            src.manifest = str(tmp_path / "ssv2.csv")
        else:
            src.manifest = write_parquet(tmp_path / f"{name}.parquet", 20 + 10 * i, name)
        if weights and name in weights:
            src.weight = weights[name]
    return DataConfig(sources=sources, seed=7)


def assert_shares_within_4_sigma(source_ids: np.ndarray, expected: dict[int, float]) -> None:
    n = len(source_ids)
    counts = np.bincount(source_ids, minlength=max(expected) + 1)
    for source_id, p in expected.items():
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(counts[source_id] - n * p) <= 4 * sigma, (source_id, counts[source_id], n * p, sigma)


def test_source_shares_over_100k_draws_are_within_4_sigma(tmp_path):
    cfg = videomix(tmp_path)
    index = ClipIndex.build(cfg)
    draws = index.draws(epoch=0, start=0, stop=100_000)
    weights = {i: s.weight for i, s in enumerate(cfg.sources.values())}
    assert_shares_within_4_sigma(draws.source, weights)
    assert np.array_equal(draws.sample_id, np.arange(100_000))
    other_epoch = index.draws(epoch=1, start=0, stop=1000)
    assert not np.array_equal(other_epoch.source, draws.source[:1000])


def test_weight_zero_removes_a_source_and_keeps_ids(tmp_path):
    cfg = videomix(tmp_path, {"howto100m": 0.0, "kinetics": 0.5})
    index = ClipIndex.build(cfg)
    draws = index.draws(0, 0, 20_000)
    names = list(cfg.sources)
    assert names.index("howto100m") not in set(draws.source.tolist())
    assert index.names == names  # ids are config positions, weight-0 sources included
    total = sum(s.weight for s in cfg.sources.values())
    assert_shares_within_4_sigma(draws.source, {i: s.weight / total for i, s in enumerate(cfg.sources.values())})
    requests = index.resolve(draws.take(slice(0, 500)))
    for source, uri in zip(requests.column("source").to_pylist(), requests.column("uri").to_pylist()):
        assert uri.split("/")[1] == names[source]


def test_row_weights_across_row_groups(tmp_path):
    n = 40
    weights = [float(i % 4) for i in range(n)]  # rows 0, 4, 8, ... never drawn
    path = write_parquet(tmp_path / "yt1b.parquet", n, "yt1b", weights, row_group_size=7)
    assert len(ManifestRows(path).group_rows) == 6
    cfg = DataConfig(sources={"yt1b": SourceConfig(path, 1.0)}, seed=3)
    index = ClipIndex.build(cfg)
    requests = index.resolve(index.draws(0, 0, 30_000))
    rows = requests.column("row").to_numpy()
    assert [f"/yt1b/{r}.mp4" for r in rows[:50]] == requests.column("uri").to_pylist()[:50]
    assert np.array_equal(requests.column("label").to_numpy(), rows)
    counts = np.bincount(rows, minlength=n)
    p = np.array(weights) / sum(weights)
    sigma = np.sqrt(len(rows) * p * (1 - p))
    assert np.all(counts[p == 0] == 0)
    assert np.all(np.abs(counts - len(rows) * p) <= 4 * sigma + 1e-9)


def test_resume_at_k_reproduces_the_uninterrupted_samples(tmp_path):
    index = ClipIndex.build(videomix(tmp_path))
    full = index.draws(2, 0, CHUNK + 500)
    for k in (0, 17, CHUNK - 3, CHUNK + 100):
        tail = index.draws(2, k, CHUNK + 500)
        for field in ("sample_id", "source", "group", "u", "window_seed"):
            assert np.array_equal(getattr(tail, field), getattr(full, field)[k:]), (k, field)
    a = index.resolve(full.take(slice(CHUNK - 10, CHUNK + 10)))
    b = index.resolve(index.draws(2, CHUNK - 10, CHUNK + 10))
    assert a.equals(b)


def test_redraws_are_deterministic_and_stay_in_the_source(tmp_path):
    cfg = videomix(tmp_path)
    index = ClipIndex.build(cfg)
    kinetics = list(cfg.sources).index("kinetics")
    first = [index.resolve(index.redraw(0, 123, kinetics, j)).to_pylist()[0] for j in (1, 2, 3)]
    again = [index.resolve(index.redraw(0, 123, kinetics, j)).to_pylist()[0] for j in (1, 2, 3)]
    assert first == again
    assert all(r["source"] == kinetics and r["uri"].startswith("/kinetics/") and r["sample_id"] == 123 for r in first)
    assert [r["attempt"] for r in first] == [1, 2, 3]
    assert len({(r["row"], r["window_seed"]) for r in first}) == 3


@pytest.mark.parametrize("bad", [-1.0, float("nan"), None])
def test_bad_row_weights_fail_naming_the_row(tmp_path, bad):
    weights = [1.0] * 10
    weights[5] = bad
    path = write_parquet(tmp_path / "w.parquet", 10, "w", weights, row_group_size=4)
    with pytest.raises(ManifestError, match=r"w.parquet: column 'weight' .* at row\(s\) 5\)"):
        ClipIndex.build(DataConfig(sources={"w": SourceConfig(path, 1.0)}))


def test_registry_errors_name_the_source(tmp_path):
    with pytest.raises(UserError, match="data.sources.ssv2: weight 0.056 but no manifest"):
        ClipIndex.build(DataConfig())
    zero = write_parquet(tmp_path / "z.parquet", 3, "z", [0.0, 0.0, 0.0])
    with pytest.raises(ManifestError, match="sums to 0"):
        ClipIndex.build(DataConfig(sources={"z": SourceConfig(zero, 1.0)}))
    with pytest.raises(UserError, match="every source has weight 0"):
        ClipIndex.build(DataConfig(sources={"z": SourceConfig(zero, 0.0)}))
    with pytest.raises(UserError, match="data.sources.z.weight"):
        ClipIndex.build(DataConfig(sources={"z": SourceConfig(zero, -1.0)}))
    with pytest.raises(ManifestError, match="missing column"):
        pq.write_table(pa.table({"uri": ["a"]}), tmp_path / "cols.parquet")
        ClipIndex.build(DataConfig(sources={"c": SourceConfig(str(tmp_path / "cols.parquet"), 1.0)}))
    (tmp_path / "bad.csv").write_text("/a.mp4 1\n/b.mp4 x\n")
    with pytest.raises(ManifestError, match="line 2"):
        ClipIndex.build(DataConfig(sources={"c": SourceConfig(str(tmp_path / "bad.csv"), 1.0)}))
