"""Seeks that decode garbage: the seek check compares sought frames with a sequential decode; a file that
seeks wrong is read another way that matches (kept, counted), or quarantined as ``bad_seek`` if none does.

Real files first: H.264 with periodic intra refresh or open GOPs, which decord's seek reads wrong
(other frames, no error); then fake backends whose seek (and sequential read) is made wrong on purpose.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pytest
from fixtures_media import frame_number, render_video

from cluster.cli import main as cli_main
from pipelines import decode
from pipelines.config import ClipConfig, DataConfig, SourceConfig
from pipelines.dataset import iter_local_batches
from pipelines.manifest import write_manifest
from pipelines.quarantine import SampleError, read_rejects
from pipelines.validate import report, validate

FRAMES = 48
# name -> x264 settings of valid H.264 files that decord seeks wrong in (PyAV reads them right)
SEEKS_WRONG_IN_DECORD = {"intra_refresh.mp4": "intra-refresh=1:keyint=12",
                         "open_gop.mp4": "open-gop=1:keyint=12:bframes=3"}


@pytest.fixture(autouse=True)
def no_check_left_on():
    """The check is a per-process setting (decode actors, validate-data): leave it off for other tests."""
    yield
    decode.configure_seek_check(0)


@pytest.fixture(scope="module")
def wrong_seeks(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seeks")
    return {name: render_video(root / name, frames=FRAMES, gop=12, options={"x264-params": params})
            for name, params in SEEKS_WRONG_IN_DECORD.items()}


def sequential_frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def manifest(path: Path, uris: list) -> str:
    n = len(uris)
    write_manifest(pa.table({"uri": [str(u) for u in uris], "label": list(range(n)),
                             **{c: [None] * n for c in ("duration_s", "fps", "num_frames", "bytes")}}), str(path))
    return str(path)


def test_files_decord_seeks_wrong_in_are_read_right_and_kept(wrong_seeks):
    indices = np.array([40, 13, 24, 25, 3, 30])
    for name, path in wrong_seeks.items():
        reference = sequential_frames(path)
        plain = decode.open_video(str(path), "decord", fallback=False).get_frames(indices)
        assert [frame_number(f) for f in plain] != indices.tolist(), f"{name}: decord now seeks right here"
        decode.configure_seek_check(DataConfig().seek_check_frames)
        reader = decode.open_video(str(path), "decord")
        frames = reader.get_frames(indices)
        reader.close()
        assert np.abs(frames.astype(int) - reference[indices]).max() <= decode.PIXEL_TOLERANCE, name
        verdict = decode.seek_verdict(str(path))
        assert (verdict.status, verdict.backend) == ("fallback", "pyav"), verdict
        assert "decord seeks: frame" in verdict.detail and verdict.detail.endswith("read by pyav")
        again = decode.open_video(str(path), "decord")  # the verdict is kept: straight to PyAV
        assert np.array_equal(again.get_frames(indices), frames)


def test_validate_data_counts_the_fallbacks_and_keeps_the_files(wrong_seeks, tmp_path, capsys):
    good = render_video(tmp_path / "good.mp4", frames=FRAMES)
    uris = [good, *wrong_seeks.values()]
    m = manifest(tmp_path / "videos" / "manifest.parquet", uris)
    out = tmp_path / "rejects.parquet"
    assert cli_main(["validate-data", "--manifest", m, "--rejects", str(out), "--frames", "4", "--crop", "16"]) == 0
    printed = capsys.readouterr().out
    assert "3 rows, 3 good, 0 bad" in printed
    assert "seek check (video rows): 1 seek ok, 2 fallback" in printed and "0 bad_seek" in printed
    for path in wrong_seeks.values():
        assert f"  fallback  {path}: decord seeks: frame" in printed
    assert read_rejects(str(out)).num_rows == 0


GARBAGE = 255  # what a wrong seek gives here: a flat frame, like the green garbage of a broken decode
FAKE_FRAMES, FAKE_GOP = 40, 8


def fake_frame(value: int) -> np.ndarray:
    return np.full((24, 24, 3), value, np.uint8)


def frame_value(index: int) -> int:
    return 20 + 5 * index  # never GARBAGE for the fake's 40 frames


class FakeReader(decode.ForwardReader):
    """A backend whose file says how it misbehaves: ``good``; ``seek`` (random access past the first
    GOP gives garbage); ``both`` (so does every read that starts at a keyframe other than the first)."""

    name = "fake"
    behaviours = ("good", "seek", "both")

    def __init__(self, src: decode.Media, threads: int = 1):
        text = Path(src).read_text() if isinstance(src, str) else ""
        if text not in self.behaviours:
            raise SampleError("unreadable", "open", "fake: not a fake file")
        self.seeks_wrong, self.keyframes_wrong = text in ("seek", "both"), text == "both"
        self.num_frames, self.fps = FAKE_FRAMES, 8.0

    def keyframes(self) -> list[int]:
        return list(range(0, FAKE_FRAMES, FAKE_GOP))

    def frames_from(self, start: int) -> Iterator[tuple[int, np.ndarray]]:
        for index in range(start, FAKE_FRAMES):
            yield index, fake_frame(GARBAGE if self.keyframes_wrong and start else frame_value(index))

    def get_frames(self, indices: np.ndarray) -> np.ndarray:
        wrong = self.seeks_wrong
        return np.stack([fake_frame(GARBAGE if wrong and i >= FAKE_GOP else frame_value(i)) for i in indices])

    def close(self) -> None:
        pass


@pytest.fixture
def fakes(tmp_path, monkeypatch) -> dict[str, Path]:
    """One fake file per behaviour; decord and PyAV cannot open them, so only the fake backend reads them."""
    monkeypatch.setitem(decode._READERS, "fake", FakeReader)
    root = tmp_path / "fakes"
    root.mkdir()
    for behaviour in FakeReader.behaviours:
        (root / f"{behaviour}.fake").write_text(behaviour)
    return {behaviour: root / f"{behaviour}.fake" for behaviour in FakeReader.behaviours}


def test_check_points_start_past_the_first_gop():
    assert decode.check_points([0, 12, 24, 36], 48, 300).tolist() == [11, 12, 13, 18, 24]
    assert decode.check_points([0, 12, 24], 48, 20).tolist() == [11, 12, 13, 15, 19]  # bounded by the limit
    assert decode.check_points([], 11, 300).tolist() == [2, 4, 6, 8, 10]  # keyframes unknown: evenly spaced
    assert not len(decode.check_points([0], 1, 300))


def test_a_wrong_seek_falls_back_to_sequential_and_a_wrong_sequential_read_is_bad_seek(fakes, tmp_path, caplog):
    m = manifest(tmp_path / "fakes" / "manifest.parquet", list(fakes.values()))
    cfg = DataConfig(decoder="fake", clip=ClipConfig(frames_per_clip=4, fps=8.0, crop_size=16))
    rejects = tmp_path / "rejects.parquet"
    total, quarantine, checked = validate(m, str(rejects), cfg=cfg)
    assert total == 3 and quarantine.by_reason() == {"bad_seek": 1}
    assert checked.seeks == {"ok": 1, "fallback": 1, "bad_seek": 1}
    assert checked.fallbacks == {str(fakes["seek"]): "fake seeks: frame 8 differs by up to 195; "
                                                      "read by fake sequentially"}
    record = read_rejects(str(rejects)).to_pylist()[0]
    assert (record["uri"], record["reason"], record["stage"]) == (str(fakes["both"]), "bad_seek", "decode")
    assert record["detail"] == ("fake seeks: frame 8 differs by up to 195; fake reading from the previous "
                                "keyframe: frame 8 differs by up to 195")
    assert "1 seek ok, 1 fallback" in report(m, total, quarantine, str(rejects), checked)
    assert decode.seek_verdict(str(fakes["seek"])).sequential
    with pytest.raises(SampleError, match="bad_seek"):  # kept verdict: refused at open, nothing decoded
        decode.open_video(str(fakes["both"]), "fake")
    assert "seek check" in caplog.text and str(fakes["seek"]) in caplog.text


def test_training_never_trains_on_a_file_that_seeks_wrong(fakes, tmp_path):
    """The decode pool's path: the bad_seek file is quarantined and redrawn, the fallback file's clips are
    its real frames, and the run goes on; with the check off, garbage would get through."""
    sources = {"fakes": SourceConfig(manifest(tmp_path / "m.parquet", list(fakes.values())), 1.0)}
    cfg = DataConfig(sources=sources, decoder="fake", seed=3, decode_batch_size=4,
                     clip=ClipConfig(frames_per_clip=4, fps=8.0, crop_size=16, horizontal_flip=False))
    rejects_dir = tmp_path / "rejects"
    batches = list(iter_local_batches(cfg, 4, samples=24, rejects_dir=str(rejects_dir)))
    clips = np.concatenate([b["clip"] for b in batches])
    assert len(clips) == 24 and GARBAGE not in clips
    labels = np.concatenate([b["label"] for b in batches]).tolist()
    assert set(labels) == {0, 1}  # the good and the fallback file; never the bad_seek one
    reasons = set(read_rejects(str(rejects_dir)).column("reason").to_pylist())
    assert reasons == {"bad_seek"}
    cfg.seek_check_frames = 0
    unchecked = np.concatenate([b["clip"] for b in iter_local_batches(cfg, 4, samples=24)])
    assert GARBAGE in unchecked
