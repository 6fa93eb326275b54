"""Every kind of video a source may hold, made here with PyAV: the decoder chain reads each one (decord or
PyAV, whichever can), with the same frames for the same indices, rotated phone videos the same way in
both backends; and validate-data's verdict for every kind of input, good and bad (docs/data.md's table)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from fixtures_media import bad_media, frame_number, odd_images, png_header, render_video

from cluster.cli import main as cli_main
from pipelines import decode
from pipelines.manifest import write_manifest
from pipelines.quarantine import SampleError, read_rejects

FRAMES = 24
# name -> render_video arguments; every one is a valid video that some backend reads
KINDS: dict[str, dict] = {
    "anim.gif": {"codec": "gif", "pix_fmt": "rgb8"},  # decord: "Failed to measure duration"
    "av1.mp4": {"codec": "libsvtav1"},  # decord: "cannot find video stream" (its FFmpeg has no AV1)
    "h264.ts": {"container": "mpegts"},  # decord: EOF error; PyAV needed dts seeks
    "mpeg2.ts": {"codec": "mpeg2video"},  # decord: frames 12 late, silently
    "mpeg1.mpg": {"codec": "mpeg1video", "container": "mpeg"},  # decord: frame 0 twice, the rest shifted
    "tiny16.mp4": {"width": 16, "height": 16},  # decord opens it, then every decode fails
    "narrow48.mp4": {"width": 48, "height": 16},
    "rot90.mp4": {"rotation": 90},  # a display matrix: shown portrait
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kinds")
    # PyAV's wheel (pinned by pyproject) bundles every encoder used here: a missing one is a failure, not a skip
    return {name: render_video(root / name, frames=FRAMES, gop=8, bframes=0, **kwargs)
            for name, kwargs in KINDS.items()}


def _readable_code(name: str) -> bool:
    return not name.startswith("tiny")  # 16 px is too small for the frame code's cells


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_every_video_kind_reads_the_asked_for_frames_in_either_backend(videos, backend):
    indices = np.array([0, 9, FRAMES - 1, 5])
    for name, path in videos.items():
        reader = decode.open_video(str(path), backend)
        frames = reader.get_frames(indices)
        reader.close()
        assert reader.num_frames == FRAMES, name
        width, height = KINDS[name].get("width", 96), KINDS[name].get("height", 64)
        if KINDS[name].get("rotation") == 90:  # applied: portrait, as a player shows it
            assert frames.shape[1:] == (width, height, 3), name
            frames = np.rot90(frames, -1, axes=(1, 2))
        assert frames.shape == (4, height, width, 3), name
        if _readable_code(name):
            assert [frame_number(f) for f in frames] == indices.tolist(), (name, backend)


def test_rotated_frames_agree_between_backends(videos):
    path = str(videos["rot90.mp4"])
    decord_frames, pyav_frames = (decode.open_video(path, b, fallback=False).get_frames(np.arange(4))
                                  for b in ("decord", "pyav"))
    assert decord_frames.shape == pyav_frames.shape == (4, 96, 64, 3)
    assert np.abs(decord_frames.astype(int) - pyav_frames).max() <= 2


def test_an_unsupported_codec_is_named_as_such(videos):
    with pytest.raises(SampleError, match=r"unreadable.*no video stream its bundled FFmpeg 4\.1 can decode "
                                          r"\(unsupported codec\?\)"):
        decode.open_video(str(videos["av1.mp4"]), "decord", fallback=False)


def test_validate_data_verdict_for_every_input_kind(videos, tmp_path, capsys):
    """The table in docs/data.md: every kind kept, or quarantined with its reason; nothing kills the run."""
    root = tmp_path
    good = render_video(root / "good.mp4", frames=FRAMES)
    bad = bad_media(root / "bad", good)
    images = odd_images(root / "images")
    bomb = png_header(root / "bomb.png", 15000, 15000)
    expected = {**{str(p): "kept" for p in [good, *videos.values(), *images.values()]},
                **{str(bad[k]): k for k in ("missing", "empty", "unreadable", "too_few_frames")},
                str(bad["truncated"]): "unreadable", str(bomb): "too_large"}
    uris = list(expected)
    n = len(uris)
    manifest = root / "mixed" / "manifest.parquet"
    write_manifest(pa.table({"uri": uris, "label": list(range(n)), **{c: [None] * n for c in (
        "duration_s", "fps", "num_frames", "bytes")}}), str(manifest))
    out = root / "rejects.parquet"
    assert cli_main(["validate-data", "--manifest", str(manifest), "--rejects", str(out), "--frames", "4",
                     "--crop", "16"]) == 0
    rejects = read_rejects(str(out))
    verdict = {uri: "kept" for uri in uris} | dict(zip(rejects["uri"].to_pylist(), rejects["reason"].to_pylist()))
    assert verdict == expected
    assert f"{n} rows, {sum(v == 'kept' for v in expected.values())} good" in capsys.readouterr().out
