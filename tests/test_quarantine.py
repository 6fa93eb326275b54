"""Bad input is quarantined (record + counter) and redrawn from its source; nothing good is lost, nothing is fatal."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from fixtures_media import (
    bad_media,
    media_dir_fixture,  # noqa: F401  (pytest fixture)
)

from pipelines.clips import ClipRequest, make_clip
from pipelines.config import ClipConfig, DataConfig, SourceConfig
from pipelines.dataset import iter_local_batches
from pipelines.manifest import write_manifest
from pipelines.quarantine import Quarantine, RejectRecord, SampleError, read_rejects
from pipelines.sampling import ClipIndex

EXPECTED = {"missing": ("missing", "fetch"), "empty": ("empty", "fetch"), "unreadable": ("unreadable", "open"),
            "truncated": ("unreadable", "open"), "too_few_frames": ("too_few_frames", "open")}


def manifest(path, uris) -> str:
    n = len(uris)
    write_manifest(pa.table({"uri": [str(u) for u in uris], "label": list(range(n)), "duration_s": [None] * n,
                             "fps": [None] * n, "num_frames": [None] * n, "bytes": [None] * n}), str(path))
    return str(path)


@pytest.fixture
def mixed(media_dir, tmp_path):
    bad = bad_media(tmp_path / "bad", media_dir / "h264.mp4")
    good = [media_dir / "h264.mp4", media_dir / "long.mp4", media_dir / "vp9.webm"]
    cfg = DataConfig(
        sources={"clean": SourceConfig(manifest(tmp_path / "clean.parquet", good), 0.5),
                 "mixed": SourceConfig(manifest(tmp_path / "mixed.parquet", good * 2 + list(bad.values())), 0.5)},
        clip=ClipConfig(frames_per_clip=4, fps=8.0, crop_size=32), seed=5, decode_batch_size=4)
    return cfg, bad


def test_bad_samples_are_quarantined_redrawn_and_nothing_good_is_lost(mixed, tmp_path):
    cfg, bad = mixed
    reason_of = {str(path): EXPECTED[kind] for kind, path in bad.items()}
    rejects_dir = str(tmp_path / "rejects")
    batches = list(iter_local_batches(cfg, 6, samples=60, rejects_dir=rejects_dir))
    got = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    assert got["sample_id"].tolist() == list(range(60))  # every sample delivered, in order

    index = ClipIndex.build(cfg)
    drawn = index.resolve(index.draws(0, 0, 60)).to_pylist()
    assert got["source"].tolist() == [r["source"] for r in drawn]  # the redraw stays in the source
    rejects = read_rejects(rejects_dir).to_pylist()
    bad_draws = [r for r in drawn if r["uri"] in reason_of]
    assert bad_draws, "the seed must draw some bad rows"
    for i, row in enumerate(drawn):
        if row["uri"] in reason_of:
            assert got["redraws"][i] >= 1
            first = next(rec for rec in rejects if rec["sample_id"] == i)
            assert (first["uri"], first["source"]) == (row["uri"], "mixed")
            assert (first["reason"], first["stage"]) == reason_of[row["uri"]]
        else:
            assert got["redraws"][i] == 0 and got["label"][i] == row["label"]
            request = ClipRequest(row["uri"], row["window_seed"])
            assert np.array_equal(got["clip"][i], make_clip(request, cfg))
    assert len(rejects) == int(got["redraws"].sum())
    assert {r["reason"] for r in rejects} <= {"missing", "empty", "unreadable", "too_few_frames"}


def test_a_source_with_no_good_file_is_skipped_but_the_run_goes_on(mixed, tmp_path):
    cfg, bad = mixed
    cfg.sources["mixed"] = SourceConfig(manifest(tmp_path / "broken.parquet", list(bad.values())), 0.3)
    cfg.max_redraws = 2
    batches = list(iter_local_batches(cfg, 5, samples=30, rejects_dir=str(tmp_path / "r"), drop_last=False))
    got = np.concatenate([b["source"] for b in batches])
    index = ClipIndex.build(cfg)
    drawn = index.draws(0, 0, 30).source
    broken = list(cfg.sources).index("mixed")
    assert (drawn == broken).sum() > 0
    assert sorted(got.tolist()) == sorted(drawn[drawn != broken].tolist())
    rejects = read_rejects(str(tmp_path / "r"))
    exhausted = [r for r in rejects.to_pylist() if r["reason"] == "redraws_exhausted"]
    assert len(exhausted) == (drawn == broken).sum()
    assert all(r["source"] == "mixed" and r["stage"] == "sample" for r in exhausted)


def test_quarantine_counts_and_writes_file_or_directory(tmp_path):
    single = Quarantine(str(tmp_path / "one.parquet"))
    parts = Quarantine(str(tmp_path / "parts"))
    for q in (single, parts):
        q.add(RejectRecord.from_error(SampleError("missing", "fetch", "x"), "/a.mp4", "ssv2", 3))
        q.flush()
        q.add(RejectRecord.from_error(SampleError("decode_error", "decode", "y" * 900), "/b.mp4", "yt1b", 4))
        q.add(RejectRecord.from_error(SampleError("missing", "fetch"), "/c.mp4", "ssv2", 5))
        assert q.flush() is not None and q.flush() is None
        assert q.total == 3 and q.by_reason() == {"missing": 2, "decode_error": 1}
        assert q.counts[("ssv2", "missing")] == 2
    for uri in (tmp_path / "one.parquet", tmp_path / "parts"):
        table = read_rejects(str(uri))
        assert table.column("uri").to_pylist() == ["/a.mp4", "/b.mp4", "/c.mp4"], uri
        assert len(table.column("detail")[1].as_py()) == 500
    assert len(list((tmp_path / "parts").iterdir())) == 2
    assert read_rejects(str(tmp_path / "none")).num_rows == 0
    with pytest.raises(ValueError, match="unknown reject reason"):
        SampleError("bad_luck", "fetch")
